# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""extensions/eda/rulebooks/alertmanager.yml run by the real ansible-rulebook with the collection's event source,
fed Alertmanager's notifications over HTTP as Alertmanager posts them: which job templates and workflows it
launches, with which limit and extra vars, how often, and that the guardrails hold. The AWX it launches them on is
a stand-in on loopback (tests/awxstandin.py): a real AWX needs Kubernetes."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from alertmanager import alert, notification  # pylint: disable=import-error
from awxdata import definitions  # pylint: disable=import-error
from awxstandin import AwxStandIn, ansible_rulebook  # pylint: disable=import-error
from conftest import COLLECTIONS  # pylint: disable=import-error

REPO_ROOT = Path(__file__).resolve().parents[2]
RULEBOOK = REPO_ROOT / "extensions" / "eda" / "rulebooks" / "alertmanager.yml"
RENEW, BACKUP_FAILED, BACKUP_NOW = "Runbook: Renew the TLS certificate", "Runbook: Backup failed", "Runbook: Back up the database now"
EVIDENCE, TRIAGE, RESTART = "Runbook: Preserve evidence", "Runbook: Triage the service", "Runbook: Service not starting"
DECLARE, RESTORE = "Runbook: Declare an incident", "Workflow: Restore the database"
TRIAGE_INCIDENT = "AM-triaged0000000001"


def listening(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Alerts:
    """The rulebook's webhook, as Alertmanager reaches it."""

    def __init__(self, port, token):
        self.url, self.token = "http://127.0.0.1:%d/alerts" % port, token

    def post(self, payload, token=None):
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": "Bearer " + (self.token if token is None else token)})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


@pytest.fixture(name="rulebook")
def rulebook_fixture(tmp_path, free_port):
    """The rulebook running against the AWX stand-in: (Alerts, the stand-in)."""
    binary = ansible_rulebook()
    defined = definitions()
    port, token = free_port(), secrets.token_hex(16)
    (tmp_path / "vars.yml").write_text(yaml.safe_dump({"awx_organization": "Default", "eda_port": port, "eda_window": 3600,
                                                       "eda_max_hosts_per_alert": 3, "eda_max_runs_per_hour": 10}))
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"app-%02d" % n: {} for n in range(10)}}}))
    # The triage job's artifacts, as AWX keeps its set_stats: app-02's findings name service_not_starting.yml.
    artifacts = {TRIAGE: {"triage_restart": ["app-02"], "triage_incident_id": TRIAGE_INCIDENT}}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               RUNBOOKS_EDA_TOKEN=token, EDA_JOB_TEMPLATE_REFRESH_DELAY="0.1")  # the job monitor's pause between polls
    with AwxStandIn([item["name"] for item in defined["controller_templates"]], [item["name"] for item in defined["controller_workflows"]],
                    artifacts=artifacts) as awx:
        with open(tmp_path / "rulebook.log", "w+", encoding="utf-8") as log:
            proc = subprocess.Popen([binary, "-r", str(RULEBOOK), "-i", "inventory.yml", "--vars", "vars.yml", "-v",  # pylint: disable=consider-using-with
                                     "--controller-url", awx.url, "--controller-token", "t", "--controller-ssl-verify", "no"],
                                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.monotonic() + 120
                while not listening(port):  # the source listens once the rules are loaded
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "rulebook.log").read_text()[-5000:]
                    time.sleep(0.1)
                yield Alerts(port, token), awx
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def launched(awx):
    return [(item["name"], item["limit"], item["extra_vars"]) for item in awx.launches]


def test_alerts_start_the_safe_runbooks_within_the_guardrails(rulebook):
    alerts, awx = rulebook

    # A certificate expiring on app-01: renewed there, in the alert's incident.
    certificate = alert("CertificateExpiring", "app-01")
    assert alerts.post(notification(certificate)) == {"events": 1}
    awx.wait_for_launches(1, timeout=60)
    [(name, limit, extra_vars)] = launched(awx)
    assert (name, limit) == (RENEW, "app-01") and extra_vars["incident_id"].startswith("AM-") and set(extra_vars) == {"incident_id"}
    incident = extra_vars["incident_id"]

    # Alertmanager repeats it (repeat_interval), then resolves it: neither runs anything.
    alerts.post(notification(certificate))
    alerts.post(notification(dict(certificate, status="resolved")))

    # A service down on app-02: triaged; triage names app-02 for service_not_starting.yml, which restarts it there.
    alerts.post(notification(alert("ServiceDown", "app-02")))
    awx.wait_for_launches(3, timeout=60)
    assert launched(awx)[1][:2] == (TRIAGE, "app-02")
    assert launched(awx)[2] == (RESTART, "app-02", {"incident_id": TRIAGE_INCIDENT, "confirm": "true"})

    # A corrupt database never restores from an alert: it opens the workflow, whose dry run waits for an approval.
    alerts.post(notification(alert("DatabaseCorrupt", "app-01")))
    awx.wait_for_launches(4, timeout=60)
    assert launched(awx)[3] == (RESTORE, "app-01", {"incident_id": launched(awx)[3][2]["incident_id"], "backup": "latest",
                                                    "source": "local", "confirm": "true"})
    assert launched(awx)[3][2]["incident_id"] not in (incident, TRIAGE_INCIDENT)

    # A storm: 50 alerts across 10 hosts, grouped by alert name as Alertmanager's route does. 3 runs so far; the
    # circuit breaker allows 10 an hour, the blast radius 3 hosts per alert name. CertificateExpiring: app-01's is a
    # repeat, app-00 and app-02 run, the rest is capped (a page). BackupFailed: 3 hosts run (2 runbooks each), the
    # rest capped (a page). AuditLogMismatch: 2 hosts run, which makes 10; the next trips the breaker (a page), and
    # everything after it is tripped, DiskFilling and DatabaseCorrupt included.
    for name in ("CertificateExpiring", "BackupFailed", "AuditLogMismatch", "DiskFilling", "DatabaseCorrupt"):
        assert alerts.post(notification(*[alert(name, "app-%02d" % n) for n in range(10)])) == {"events": 10}
    expected = Counter({RENEW: 2, BACKUP_FAILED: 3, BACKUP_NOW: 3, EVIDENCE: 2, DECLARE: 3})
    awx.wait_for_launches(4 + sum(expected.values()), timeout=120)
    time.sleep(3)  # a window for launches beyond the guardrails to show: none may come
    storm = launched(awx)[4:]
    assert Counter(name for name, _limit, _vars in storm) == expected, storm
    assert sorted(limit for name, limit, _vars in storm if name == RENEW) == ["app-00", "app-02"]
    assert sorted(limit for name, limit, _vars in storm if name == BACKUP_FAILED) == ["app-00", "app-01", "app-02"]
    assert sorted(limit for name, limit, _vars in storm if name == EVIDENCE) == ["app-00", "app-01"]
    assert all(extra_vars["severity"] == "P1" for name, _limit, extra_vars in storm if name == EVIDENCE)
    pages = [extra_vars for name, _limit, extra_vars in storm if name == DECLARE]
    assert sorted(page["summary"].split(":")[0] for page in pages) == [
        "Alerts not acted on (capped)", "Alerts not acted on (capped)", "Alerts not acted on (tripped)"]
    assert any("10 runs started in the last hour" in page["summary"] for page in pages)
    assert all(page["severity"] == "P2" for page in pages)
    assert not [item for item in storm if item[0] in (RESTORE, TRIAGE, "Runbook: Storage full")]  # tripped: nothing more


def test_the_webhook_refuses_a_client_without_the_token_and_what_is_not_a_notification(rulebook):
    alerts, awx = rulebook
    for token in ("", "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            alerts.post(notification(alert("CertificateExpiring", "app-01")), token=token)
        assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        alerts.post({"alerts": "everything"})
    assert refused.value.code == 400
    time.sleep(2)  # a window for a launch to show: none may come
    assert not awx.launches
