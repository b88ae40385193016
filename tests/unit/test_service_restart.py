# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_restart: the units restarted in order, /health awaited until it reports what the change expects.

systemd does not run here: a `systemctl` script first on PATH records what it is asked (a stand-in, said so); the
health endpoint is a loopback server whose answers the test sets. molecule/secret_rotation restarts the real units of
the real service through the same module (pepper, access token, key compromise)."""
from __future__ import annotations

import http.server
import json
import os
import threading

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _service


@pytest.mark.parametrize("document, expect, unmet", [
    ({"status": "ok"}, {}, []),
    ({"status": "ok", "pepper_fingerprint": "aa"}, {"status": "ok", "pepper_fingerprint": "aa"}, []),
    ({"pepper_fingerprint": "bb"}, {"pepper_fingerprint": "aa"}, ['pepper_fingerprint is "bb", not "aa"']),
    ({"previous_pepper": {"fingerprint": "cc"}}, {"previous_pepper.fingerprint": "cc"}, []),
    ({"previous_pepper": None}, {"previous_pepper.fingerprint": None}, []),
    ({}, {"previous_pepper.fingerprint": None}, []),
    ({"previous_pepper": {"fingerprint": "cc"}}, {"previous_pepper.fingerprint": None}, ['previous_pepper.fingerprint is "cc", not absent']),
    ({"phone_ids": ["1", "2"]}, {"phone_ids": "2"}, []),
    ({"phone_ids": ["1"]}, {"phone_ids": "2"}, ['phone_ids does not hold "2"']),
    ({"checks": {"db": "ok"}}, {"checks.db_credential": "current"}, ['checks.db_credential is absent, not "current"']),
    ({"status": "degraded"}, {"status": "ok"}, ['status is "degraded", not "ok"']),
])
def test_what_health_must_report(document, expect, unmet):
    assert _service.unmet(document, expect) == unmet


@pytest.fixture(name="health")
def health_fixture():
    """A loopback /health: answers[0] until the test pops it, then the next; the requests it got are counted."""
    state = {"answers": [(200, {"status": "ok"})], "requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            state["requests"] += 1
            status, document = state["answers"][0] if len(state["answers"]) == 1 else state["answers"].pop(0)
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, "http://127.0.0.1:%d/health" % server.server_address[1]
    server.shutdown()


@pytest.fixture(name="systemctl")
def systemctl_fixture(tmp_path, monkeypatch):
    """A stand-in for systemctl, first on PATH: it records its arguments, and fails for a unit named `broken.service`."""
    log = tmp_path / "systemctl.log"
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho \"$*\" >> %s\n[ \"$2\" != broken.service ] || { echo 'Job failed, see journalctl' >&2; exit 1; }\n" % log)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (script.parent, os.environ["PATH"]))
    return lambda: log.read_text().splitlines() if log.exists() else []


UNITS = ["wa-secrets.service", "wa.service"]


def test_restarts_the_units_in_order_and_waits_for_what_the_change_expects(run_module, health, systemctl):
    state, url = health
    state["answers"] = [(503, {"status": "degraded"}), (200, {"status": "ok", "pepper_fingerprint": "old"}),
                        (200, {"status": "ok", "pepper_fingerprint": "new", "previous_pepper": {"fingerprint": "old"}})]
    result = run_module("service_restart", dict(units=UNITS, health_url=url, timeout=30,
                                                expect={"status": "ok", "pepper_fingerprint": "new", "previous_pepper.fingerprint": "old"}))
    assert not result.get("failed") and result["changed"] and result["restarted"] == UNITS, result
    assert systemctl() == ["restart wa-secrets.service", "restart wa.service"]
    assert result["health"]["pepper_fingerprint"] == "new" and state["requests"] >= 3


def test_without_restart_it_only_waits_and_changes_nothing(run_module, health, systemctl):
    _state, url = health
    result = run_module("service_restart", dict(units=UNITS, restart=False, health_url=url, timeout=5))
    assert not result.get("failed") and not result["changed"] and result["restarted"] == [] and systemctl() == []


def test_check_mode_restarts_nothing_and_predicts_the_restart(run_module, health, systemctl):
    state, url = health
    result = run_module("service_restart", dict(units=UNITS, health_url=url), check_mode=True)
    assert result["changed"] and result["restarted"] == [] and systemctl() == [] and state["requests"] == 0


def test_a_service_that_never_reports_the_change_fails_saying_what_it_last_reported(run_module, health, systemctl):
    state, url = health
    state["answers"] = [(200, {"status": "ok", "pepper_fingerprint": "old", "token": "do-not-show-me"})]
    result = run_module("service_restart", dict(units=UNITS, health_url=url, timeout=2, expect={"pepper_fingerprint": "new"}))
    assert result["failed"] and result["changed"]
    assert 'did not report what was expected within 2 s (last: pepper_fingerprint is "old", not "new")' in result["msg"]
    assert "do-not-show-me" not in json.dumps(result)


def test_a_health_endpoint_that_does_not_answer_is_named(run_module, systemctl):
    result = run_module("service_restart", dict(units=UNITS, restart=False, health_url="http://127.0.0.1:9/health", timeout=1))
    assert result["failed"] and "http://127.0.0.1:9/health did not report what was expected within 1 s (last: " in result["msg"]


def test_a_unit_that_fails_to_restart_is_named_and_nothing_after_it_runs(run_module, health, systemctl):
    _state, url = health
    result = run_module("service_restart", dict(units=["broken.service", "wa.service"], health_url=url, timeout=5))
    assert result["failed"] and "restarting broken.service failed: Job failed, see journalctl" in result["msg"]
    assert systemctl() == ["restart broken.service"]


@pytest.mark.parametrize("params, message", [
    (dict(health_url="file:///etc/passwd"), "is not an http:// or https:// URL"),
    (dict(timeout=0), "timeout must be at least 1 second"),
    (dict(units=[]), "units is empty"),
])
def test_bad_input_is_refused_before_anything_restarts(run_module, systemctl, params, message):
    result = run_module("service_restart", dict(dict(units=UNITS, health_url="http://127.0.0.1/health"), **params))
    assert result["failed"] and message in result["msg"] and systemctl() == []
