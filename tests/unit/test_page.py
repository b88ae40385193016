# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.page and the host-side page job, against a loopback HTTP(S) receiver that records every request."""
from __future__ import annotations

import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from conftest import COLLECTIONS  # pylint: disable=import-error
from ansible_collections.runbooks.incident.plugins.module_utils import _page

ROUTING_KEY = "R0UT1NGKEYabcdef0123456789abcdef"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Receiver(http.server.ThreadingHTTPServer):
    """Records (method, path, headers, JSON body) of each request and answers `status` with `body`."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.requests = []
        self.status, self.body, self.headers = 200, b"", {}

    @property
    def url(self):
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}/api/v2/alerts"

    def answer(self, status, body=b"", headers=None):
        self.status, self.body, self.headers = status, body, headers or {}


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # pylint: disable=invalid-name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(dict(method=self.command, path=self.path, headers=dict(self.headers), body=json.loads(body)))
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    do_GET = do_POST

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


def serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(name="receiver")
def receiver_fixture():
    server = serve(Receiver())
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(name="tls_receiver")
def tls_receiver_fixture(tmp_path):
    """The receiver behind a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


def test_alertmanager_trigger_payload(run_module, receiver):
    details = {"incident_id": "INC-7", "step": "restore"}
    result = run_module("page", dict(url=receiver.url, summary="restore failed", source="wa-prod-1", details=details))
    assert not result.get("failed"), result
    assert result["changed"] and result["status"] == 200
    [request] = receiver.requests
    assert request["method"] == "POST" and request["path"] == "/api/v2/alerts"
    assert request["headers"]["Content-Type"] == "application/json"
    assert result["payload"] == request["body"]
    [alert] = request["body"]
    assert TIMESTAMP.match(alert.pop("startsAt"))
    dedup_key = _page.default_dedup_key("restore failed", "wa-prod-1")
    assert alert == {"labels": {"alertname": dedup_key, "severity": "critical", "instance": "wa-prod-1", "job": "runbooks.incident"},
                     "annotations": {"summary": "restore failed", "description": '{"incident_id": "INC-7", "step": "restore"}'}}
    assert result["dedup_key"] == dedup_key


def test_alertmanager_resolve_carries_the_trigger_labels_and_ends_now(run_module, receiver):
    params = dict(url=receiver.url, summary="disk full", source="wa-prod-1", severity="warning", dedup_key="disk-full")
    assert not run_module("page", params).get("failed")
    assert not run_module("page", dict(params, resolve=True)).get("failed")
    [trigger], [resolve] = (request["body"] for request in receiver.requests)
    assert "endsAt" not in trigger and TIMESTAMP.match(resolve["endsAt"]) and resolve["endsAt"] == resolve["startsAt"]
    assert trigger["labels"] == resolve["labels"] == {"alertname": "disk-full", "severity": "warning", "instance": "wa-prod-1",
                                                      "job": "runbooks.incident"}
    assert resolve["annotations"] == {"summary": "disk full", "description": "{}"}


def test_pagerduty_trigger_and_resolve_payloads(run_module, receiver):
    receiver.answer(202, b'{"status":"success","message":"Event processed","dedup_key":"x"}', {"Content-Type": "application/json"})
    params = dict(url=receiver.url, format="pagerduty", routing_key=ROUTING_KEY, summary="backup failed", source="wa-prod-1",
                  severity="error", details={"unit": "runbooks-backup-db.service"})
    trigger = run_module("page", params)
    resolve = run_module("page", dict(params, resolve=True))
    assert trigger["status"] == 202 and resolve["status"] == 202 and trigger["changed"]
    dedup_key = _page.default_dedup_key("backup failed", "wa-prod-1")
    expected = {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup_key,
                "payload": {"summary": "backup failed", "source": "wa-prod-1", "severity": "error",
                            "custom_details": {"unit": "runbooks-backup-db.service"}}}
    assert [r["body"] for r in receiver.requests] == [expected, dict(expected, event_action="resolve")]
    assert trigger["payload"] == dict(expected, routing_key="********")
    assert ROUTING_KEY not in json.dumps([trigger, resolve])


def test_pagerduty_needs_a_routing_key(run_module, receiver):
    result = run_module("page", dict(url=receiver.url, format="pagerduty", summary="x"))
    assert result["failed"] and "routing_key" in result["msg"] and receiver.requests == []


def test_an_error_answer_fails_with_status_and_the_start_of_the_body(run_module, receiver):
    receiver.answer(500, ("E" * 200 + "TAIL-NOT-SHOWN").encode())
    result = run_module("page", dict(url=receiver.url, summary="x"))
    assert result["failed"] and "answered HTTP 500" in result["msg"] and "E" * 200 in result["msg"] and "TAIL" not in result["msg"]
    assert len(receiver.requests) == 1


def test_an_error_body_echoing_the_routing_key_is_masked(run_module, receiver):
    receiver.answer(400, f'{{"status":"invalid event","errors":["bad key {ROUTING_KEY}"]}}'.encode())
    result = run_module("page", dict(url=receiver.url, format="pagerduty", routing_key=ROUTING_KEY, summary="x"))
    assert result["failed"] and "answered HTTP 400" in result["msg"] and "bad key" in result["msg"]
    assert ROUTING_KEY not in json.dumps(result)


def test_a_redirect_is_not_followed(run_module, receiver):
    receiver.answer(307, headers={"Location": receiver.url + "/elsewhere"})
    result = run_module("page", dict(url=receiver.url, summary="x"))
    assert result["failed"] and "answered HTTP 307" in result["msg"] and len(receiver.requests) == 1


def test_an_unreachable_receiver_fails_clearly(run_module, free_port):
    result = run_module("page", dict(url=f"http://127.0.0.1:{free_port()}/api/v2/alerts", summary="x", timeout=3))
    assert result["failed"] and "could not reach http://127.0.0.1:" in result["msg"] and "no alert was delivered" in result["msg"]


def test_credentials_in_the_url_are_refused(run_module, receiver):
    result = run_module("page", dict(url=receiver.url.replace("://", "://user:pw@"), summary="x"))
    assert result["failed"] and "must not carry credentials" in result["msg"] and receiver.requests == []


def test_check_mode_sends_nothing_and_masks_the_routing_key(run_module, receiver):
    result = run_module("page", dict(url=receiver.url, format="pagerduty", routing_key=ROUTING_KEY, summary="x", source="h"), check_mode=True)
    assert not result.get("failed") and result["changed"] and receiver.requests == [] and "status" not in result
    assert result["payload"]["routing_key"] == "********" and result["payload"]["payload"]["summary"] == "x"
    assert ROUTING_KEY not in json.dumps(result)


def test_validate_certs(run_module, tls_receiver):
    verified = run_module("page", dict(url=tls_receiver.url, summary="x"))
    assert verified["failed"] and "CERTIFICATE_VERIFY_FAILED" in verified["msg"] and tls_receiver.requests == []
    unverified = run_module("page", dict(url=tls_receiver.url, summary="x", validate_certs=False))
    assert not unverified.get("failed") and unverified["status"] == 200 and len(tls_receiver.requests) == 1


def fake_journalctl(directory, output, rc=0):
    """A journalctl on PATH that records its argv and prints `output`."""
    script = directory / "journalctl"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {directory}/argv\nprintf '{output}'\nexit {rc}\n")
    script.chmod(0o755)
    return directory


def test_journal_tail_reads_the_last_lines_and_tolerates_no_journal(tmp_path, monkeypatch):
    bin_dir = fake_journalctl(tmp_path, "line 1\\nline 2\\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert _page.journal_tail("runbooks-backup-db.service") == "line 1\nline 2"
    assert (tmp_path / "argv").read_text().split() == ["--unit", "runbooks-backup-db.service", "--lines", "20", "--no-pager", "--quiet",
                                                       "--output", "short-iso"]
    fake_journalctl(tmp_path, "", rc=1)
    assert _page.journal_tail("x.service").startswith("no journal available (journalctl exited 1")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _page.journal_tail("x.service").startswith("no journal available (")


def run_page_job(config, unit, path_env):
    """page_job as the host runs it: no Ansible importable, only the copied package tree on sys.path."""
    code = ("import json, sys; sys.modules['ansible'] = None\n"
            "from ansible_collections.runbooks.incident.plugins.module_utils import _page\n"
            "print(json.dumps(_page.page_job(json.loads(sys.argv[1]), sys.argv[2])))")
    return subprocess.run([sys.executable, "-c", code, json.dumps(config), unit], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=str(COLLECTIONS), PATH=path_env))


def test_page_job_pages_a_failed_unit_with_its_journal(receiver, tmp_path):
    receiver.answer(202)
    config = dict(url=receiver.url, format="pagerduty", routing_key=ROUTING_KEY, severity="error", source="wa-prod-1")
    bin_dir = fake_journalctl(tmp_path, "backup-db: pg_dump failed\\n")
    res = run_page_job(config, "runbooks-backup-db.service", str(bin_dir))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    dedup_key = _page.default_dedup_key("runbooks-backup-db.service failed on wa-prod-1", "wa-prod-1")
    assert summary == dict(job="page", unit="runbooks-backup-db.service", format="pagerduty", status=202, dedup_key=dedup_key)
    assert receiver.requests[0]["body"] == {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup_key,
        "payload": {"summary": "runbooks-backup-db.service failed on wa-prod-1", "source": "wa-prod-1", "severity": "error",
                    "custom_details": {"unit": "runbooks-backup-db.service", "journal": "backup-db: pg_dump failed"}}}
    assert ROUTING_KEY not in res.stdout + res.stderr


def test_page_job_without_a_journal_still_pages(receiver, tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_page_job(dict(url=receiver.url), "runbooks-backup-db.service", str(tmp_path / "empty"))
    assert res.returncode == 0, res.stderr
    [alert] = receiver.requests[0]["body"]
    assert alert["labels"]["severity"] == "critical" and alert["annotations"]["summary"].startswith("runbooks-backup-db.service failed on ")
    assert json.loads(alert["annotations"]["description"])["journal"].startswith("no journal available (")


def test_page_job_refuses_what_is_not_a_unit_name_and_reports_delivery_failures(receiver):
    for unit in ("--help", "a b.service", "x" * 300 + ".service"):
        with pytest.raises(_page.PageError, match="is not a systemd unit name"):
            _page.page_job(dict(url=receiver.url), unit)
    with pytest.raises(_page.PageError, match="no failed unit was named"):
        _page.page_job(dict(url=receiver.url), None)
    receiver.answer(503, ROUTING_KEY.encode())
    with pytest.raises(_page.PageError, match="answered HTTP 503") as failure:
        _page.page_job(dict(url=receiver.url, format="pagerduty", routing_key=ROUTING_KEY), "runbooks-backup-db.service")
    assert ROUTING_KEY not in str(failure.value)
    with pytest.raises(_page.PageError, match="no url"):
        _page.page_job({}, "runbooks-backup-db.service")
    assert len(receiver.requests) == 1


class Trickler:
    """A receiver on 127.0.0.1 that reads the request, sends `head` at once, then `answer` one byte per second (a stuck
    or hostile receiver: each read gets a byte well within any timeout, the whole answer takes len(answer) seconds)."""

    def __init__(self, answer=b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", head=b""):
        self.head, self.answer, self.finished = head, answer, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/api/v2/alerts" % self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            conn, _address = self.listener.accept()
        except OSError:
            return
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(self.head)
            for byte in self.answer:
                if self.stop.wait(1):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
            self.finished.set()

    def close(self):
        self.stop.set()
        self.listener.close()


@pytest.fixture(name="trickler")
def trickler_fixture():
    server = Trickler()
    yield server
    server.close()


def test_the_timeout_bounds_the_whole_request_not_each_read(run_module, trickler):
    result = run_module("page", dict(url=trickler.url, summary="x", timeout=2))
    assert not trickler.finished.is_set()  # it would have needed len(answer) seconds to give its status
    assert result.get("failed"), result
    assert "no complete answer from %s within 2 s" % trickler.url in result["msg"]
    assert "the alert may not have been delivered" in result["msg"]


def test_the_page_job_has_the_same_bound(trickler):
    with pytest.raises(_page.PageError, match="no complete answer from .* within 1 s"):
        _page.page_job(dict(url=trickler.url, timeout=1), "runbooks-backup-db.service")
    assert not trickler.finished.is_set()


def test_a_trickled_error_body_is_bounded_too(run_module):
    server = Trickler(b"E" * 60, head=b"HTTP/1.1 500 Oops\r\nContent-Length: 60\r\n\r\n")
    try:
        result = run_module("page", dict(url=server.url, summary="x", timeout=2))
    finally:
        server.close()
    assert not server.finished.is_set()
    assert result.get("failed") and "no complete answer from %s within 2 s" % server.url in result["msg"], result


@pytest.mark.parametrize("url,message", [
    ("http://[::1/", "is not a valid URL"),
    ("http://:80/api", "is not an http or https URL with a host"),
    ("http://host:99999/", "is not a valid URL"),
    ("http://host:0/", "port 0"),
    ("http://host:abc/", "is not a valid URL"),
    ("file:///etc/passwd", "is not an http or https URL"),
    ("ftp://host/x", "is not an http or https URL"),
    ("http://host/a b", "spaces or control characters"),
    ("http://host/\r\nX-Injected: 1", "spaces or control characters"),
    ("http://h\u00e9st/", "not ASCII"),
    ("", "is not an http or https URL"),
])
def test_malformed_urls_fail_clearly_and_send_nothing(run_module, receiver, url, message):
    for check_mode in (True, False):
        result = run_module("page", dict(url=url, summary="x"), check_mode=check_mode)
        assert result.get("failed") and message in result["msg"] and "nothing was sent" in result["msg"], result
    assert receiver.requests == []


@pytest.mark.parametrize("config,message", [
    (dict(url=["http://127.0.0.1/"]), "url must be a string"),
    (dict(url=8080), "url must be a string"),
    (dict(url="http://[::1/"), "is not a valid URL"),
    (dict(url="http://127.0.0.1/", timeout="soon"), "timeout must be a number of seconds"),
    (dict(url="http://127.0.0.1/", timeout=0), "timeout must be a number of seconds"),
    (dict(url="http://127.0.0.1/", timeout=True), "timeout must be a number of seconds"),
    (dict(url="http://127.0.0.1/", timeout=10 ** 12), "timeout must be a number of seconds"),
    (dict(url="http://127.0.0.1/", format="pagerduty", routing_key=12345), "routing_key must be a string"),
    (dict(url="http://127.0.0.1/", severity=["critical"]), "severity"),
    (dict(url="http://127.0.0.1/", format={"a": 1}), "format"),
    (dict(url="http://127.0.0.1/", source=["a"]), "source must be a string"),
])
def test_the_page_job_refuses_bad_configuration_clearly(config, message):
    with pytest.raises(_page.PageError, match=re.escape(message)):
        _page.page_job(config, "runbooks-backup-db.service")
    with pytest.raises(_page.PageError, match="configuration must be a mapping"):
        _page.page_job(["http://127.0.0.1/"], "runbooks-backup-db.service")
