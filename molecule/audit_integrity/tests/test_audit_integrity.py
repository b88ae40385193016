# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After side_effect tampered with the log server's copy of app's archive (one byte, size and mtime restored) and
deleted an hour from app2's own archive: the playbook and the hourly timer must find both, keep both versions
without touching the originals, and page. Everything is real: sshd with the forced receiver, systemd timers, the
loopback receiver standing in for Alertmanager records what it got."""
from __future__ import annotations

import json

import pytest

from conftest import eventually, other, playbook, received_alerts  # pylint: disable=import-error

testinfra_hosts = ["app"]

EDITED = "2026/10/01/05.jsonl"
DELETED = "2026/10/02/10.jsonl"
ARCHIVE = "/var/lib/whatsapp-mcp/audit-archive"
EVIDENCE = "/var/lib/runbooks-incident/evidence/MOLECULE-AUDIT-TAMPER/audit-integrity"


@pytest.fixture(scope="module", name="tampered_run")
def tampered_run_fixture():
    """(rc, output) of the audit integrity playbook after the tampering."""
    return playbook("audit_integrity.yml", "incident_id=MOLECULE-AUDIT-TAMPER", "pager_url=http://offhost:9099/api/v2/alerts")


def test_the_playbook_fails_naming_each_tampered_path(tampered_run):
    rc, out = tampered_run
    assert rc == 2, out[-3000:]
    assert f"{EDITED} (content)" in out
    assert f"{DELETED} (missing_local)" in out


def test_both_versions_are_kept_with_digests_and_the_originals_are_untouched(tampered_run, host):
    assert tampered_run[0] == 2
    log_server = other("offhost")
    local_copy = host.file(f"{EVIDENCE}/app/local/{EDITED}")
    remote_copy = log_server.file(f"{EVIDENCE}/app/remote/{EDITED}")
    assert local_copy.mode == 0o400 and remote_copy.mode == 0o400
    assert local_copy.size == remote_copy.size and local_copy.sha256sum != remote_copy.sha256sum
    assert local_copy.sha256sum == host.file(f"{ARCHIVE}/{EDITED}").sha256sum
    original = log_server.file(f"/srv/audit-archive/app/{EDITED}")
    assert original.sha256sum == remote_copy.sha256sum and original.mode == 0o440
    sums = log_server.check_output(f"cat {EVIDENCE}/app/remote/SHA256SUMS")
    assert sums == f"{remote_copy.sha256sum}  {EDITED}"
    # app2's deleted hour: only the log server still has it, and keeps its copy as evidence.
    assert log_server.file(f"{EVIDENCE}/app2/remote/{DELETED}").sha256sum == log_server.file(f"/srv/audit-archive/app2/{DELETED}").sha256sum


def test_a_page_lists_the_paths_of_each_host(tampered_run):
    assert tampered_run[0] == 2
    pages = [alert for alert in received_alerts() if alert["annotations"]["summary"].startswith("Audit archive of")]
    assert {alert["labels"]["instance"] for alert in pages} == {"app", "app2"}
    details = json.dumps([alert["annotations"] for alert in pages])
    assert EDITED in details and DELETED in details


def test_the_clean_run_kept_no_evidence(host):
    assert not host.file("/var/lib/runbooks-incident/evidence/MOLECULE-AUDIT-CLEAN").exists


@pytest.mark.parametrize("timer", ["runbooks-audit-integrity.timer", "runbooks-audit-integrity-full.timer"])
def test_the_checks_are_scheduled(host, timer):
    assert host.service(timer).is_enabled and host.service(timer).is_running


@pytest.mark.parametrize("unit", ["runbooks-audit-integrity.service", "runbooks-audit-integrity-full.service"])
def test_the_unattended_check_fails_and_pages(host, unit):
    result = host.run(f"systemctl start {unit}")
    assert result.rc != 0
    journal = host.check_output(f"journalctl -u {unit} --no-pager -n 20")
    assert f"{EDITED} (content)" in journal
    # OnFailure= starts the pager after systemctl returned: wait for what the receiver got.
    assert eventually(lambda: any(f"{unit} failed on app" in alert["annotations"]["summary"] for alert in received_alerts()))


def test_the_log_server_computed_its_own_manifest_of_each_copy():
    log_server = other("offhost")
    cache = json.loads(log_server.check_output("cat /var/lib/audit-recv/manifest-cache/app.json"))
    edited = log_server.check_output(f"sha256sum /srv/audit-archive/app/{EDITED}").split()[0]
    assert cache["entries"][EDITED][4] == edited  # the tampered content, hashed there, not reported by app
