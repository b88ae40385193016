# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/awxstandin.py against the real ansible-rulebook: a throwaway rulebook's rule runs run_job_template and
run_workflow_template with extra_vars and a limit; the stand-in records both launches, ansible-rulebook logs both
jobs successful, and the job's artifacts come back as an event (post_events) that a second rule matches to shut the
rulebook down. Also: no token is a 401, and an unknown name an empty page (the action fails, as against AWX)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from awxstandin import AwxStandIn, ansible_rulebook  # pylint: disable=import-error

JOB = "Runbook: Renew the TLS certificate"
WORKFLOW = "Workflow: Restore the database"
RULEBOOK = f"""
- name: stand-in check
  hosts: all
  sources:
    - eda.builtin.generic:
        payload:
          - alert: certificate_expiring
        shutdown_after: 300  # keeps the source open: the rulebook ends by the shutdown action below
  rules:
    - name: launch both
      condition: event.alert == "certificate_expiring"
      actions:
        - run_job_template:
            name: "{JOB}"
            organization: Default
            job_args:
              extra_vars: {{incident_id: INC-2026-0042, force: "false"}}
              limit: web1
            post_events: true
        - run_workflow_template:
            name: "{WORKFLOW}"
            organization: Default
            job_args:
              extra_vars: {{incident_id: INC-2026-0042}}
              limit: db1
    - name: the artifacts came back
      condition: event.renewed == "yes" and event.meta.source.name == "run_job_template"
      action:
        shutdown:
          message: artifacts received
"""


def test_rulebook_launches_through_the_stand_in(tmp_path):
    binary = ansible_rulebook()
    (tmp_path / "rulebook.yml").write_text(RULEBOOK)
    (tmp_path / "inventory.yml").write_text("all:\n  hosts:\n    web1:\n    db1:\n")
    # ansible-rulebook wants ansible-galaxy on PATH. Its job monitor sleeps EDA_JOB_TEMPLATE_REFRESH_DELAY (10s)
    # after each poll, and a job launched meanwhile waits for it: 0.1s lets the second action follow at once.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", EDA_JOB_TEMPLATE_REFRESH_DELAY="0.1")
    with AwxStandIn([JOB], [WORKFLOW], artifacts={JOB: {"renewed": "yes"}}) as awx:
        proc = subprocess.Popen([binary, "-r", "rulebook.yml", "-i", "inventory.yml", "-v", "--controller-url", awx.url,  # pylint: disable=consider-using-with
                                 "--controller-token", "t", "--controller-ssl-verify", "no"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            try:
                output = proc.communicate(timeout=120)[0]
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"ansible-rulebook still running after 120s; launches {awx.launches}\n{proc.communicate()[0][-5000:]}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        launches, requests = awx.launches, awx.requests

    assert proc.returncode == 0, output[-5000:]
    assert [(launch["kind"], launch["name"], launch["limit"]) for launch in launches] == [("job_template", JOB, "web1"), ("workflow", WORKFLOW, "db1")]
    for launch, extra_vars in zip(launches, ({"incident_id": "INC-2026-0042", "force": "false"}, {"incident_id": "INC-2026-0042"})):
        eda = launch["extra_vars"].pop("ansible_eda")  # ansible-rulebook adds the rule and its event (include_events)
        assert launch["extra_vars"] == extra_vars
        assert (eda["ruleset"], eda["rule"], eda["event"]["alert"]) == ("stand-in check", "launch both", "certificate_expiring")
    assert f"Job template '{JOB}' completed successfully (job_id: 1)" in output
    assert f"Workflow template '{WORKFLOW}' completed successfully (job_id: 2)" in output
    assert "Message: artifacts received" in output  # the second rule matched the job's artifacts, posted as an event
    assert [(r["method"], r["path"]) for r in requests] == [
        ("GET", "/api/v2/config/"),
        ("GET", "/api/v2/unified_job_templates/"), ("POST", "/api/v2/job_templates/1/launch/"), ("GET", "/api/v2/jobs/"),
        ("GET", "/api/v2/unified_job_templates/"), ("POST", "/api/v2/workflow_job_templates/2/launch/"), ("GET", "/api/v2/workflow_jobs/")]
    assert {r["token"] for r in requests} == {"t"}


def test_no_token_is_refused_and_an_unknown_name_is_an_empty_page():
    with AwxStandIn([JOB], [WORKFLOW]) as awx:
        url = awx.url + "api/v2/unified_job_templates/?name=Runbook:+Nope"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)  # pylint: disable=consider-using-with
        assert refused.value.code == 401
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer x"}), timeout=10) as response:
            assert json.load(response) == {"count": 0, "next": None, "previous": None, "results": []}
        assert [r["token"] for r in awx.requests] == [None, "x"]
    with pytest.raises(ValueError, match="only for job templates"):
        AwxStandIn([JOB], [WORKFLOW], artifacts={WORKFLOW: {"restored": True}})
