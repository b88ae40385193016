# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.incident_lifecycle and the incident_lifecycle role, against loopback stand-ins of PagerDuty
(Events API v2), a Slack webhook, Statuspage and an SMTP relay. Each stand-in checks every request against the
provider's documented schema and answers as the provider does; a request that breaks the schema is recorded as a
problem (and answered 400), and every test ends with no problem recorded."""
from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from email import message_from_string
from pathlib import Path

import pytest
import yaml

from conftest import COLLECTIONS, REPO_ROOT, planted_link, start_module  # pylint: disable=import-error

ROUTING_KEY = "R0UT1NGKEYlifecycle0123456789abc"
SLACK_TOKEN = "xoxWEBHOOKt0kenLifecycle0123456789"
STATUSPAGE_KEY = "statuspage-api-key-5ecret-0123456789"
SMTP_PASSWORD = "smtp-pa55word-l1fecycle-secret"
SECRETS = (ROUTING_KEY, SLACK_TOKEN, STATUSPAGE_KEY, SMTP_PASSWORD, base64.b64encode(b"\0alerts\0" + SMTP_PASSWORD.encode()).decode())
PAGE_ID = "kctbh9vrtdwd"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PD_ACTIONS = ("trigger", "acknowledge", "resolve")
PD_SEVERITIES = ("critical", "error", "warning", "info")
STATUSPAGE_STATUSES = ("investigating", "identified", "monitoring", "resolved")
STATUSPAGE_IMPACTS = ("none", "minor", "major", "critical")


class Providers(http.server.ThreadingHTTPServer):
    """PagerDuty at /v2/enqueue, a Slack webhook at /services/..., Statuspage at /v1/pages/...: one loopback server."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ProviderHandler)
        self.requests, self.problems = [], []
        self.fail = {}  # provider name -> HTTP status to answer instead
        self.created = 0
        self.lock = threading.Lock()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def of(self, provider):
        return [request for request in self.requests if request["provider"] == provider]


class ProviderHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self, status, body):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):  # pylint: disable=too-many-branches
        server = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        problems = []
        try:
            body = json.loads(raw)
        except ValueError:
            body, problems = None, ["not JSON"]
        if self.headers.get("Content-Type") != "application/json":
            problems.append("Content-Type is %r" % self.headers.get("Content-Type"))
        path = self.path
        if path == "/v2/enqueue":
            provider = "pagerduty"
            problems += pagerduty_problems(self.command, body)
        elif path.startswith("/services/"):
            provider = "slack"
            if self.command != "POST" or path != "/services/T0001/B0001/" + SLACK_TOKEN:
                problems.append("%s %s is not the webhook" % (self.command, path))
            if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
                problems.append("a Slack message needs a text")
            elif not isinstance(body.get("blocks", []), list):
                problems.append("blocks must be a list")
        elif path.startswith("/v1/pages/"):
            provider = "statuspage"
            problems += statuspage_problems(self.command, path, self.headers.get("Authorization"), body)
        else:
            provider, problems = "unknown", problems + ["unknown path %s" % path]
        with server.lock:
            server.requests.append(dict(provider=provider, method=self.command, path=path, body=body,
                                        authorization=self.headers.get("Authorization")))
            server.problems += ["%s %s: %s" % (self.command, path, problem) for problem in problems]
        if problems:
            return self._answer(400, {"status": "invalid event", "errors": problems})
        if provider in server.fail:
            return self._answer(server.fail[provider], {"error": "unavailable"})
        if provider == "pagerduty":
            return self._answer(202, {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]})
        if provider == "slack":
            return self._answer(200, b"ok")
        incident = dict(body["incident"], page_id=PAGE_ID, updated_at="2026-12-06T03:05:00.000Z")
        if self.command == "POST":
            with server.lock:
                server.created += 1
                incident["id"] = "sp%04d" % server.created
            return self._answer(201, incident)
        incident["id"] = path.rsplit("/", 1)[1]
        return self._answer(200, incident)

    do_POST = _handle
    do_PATCH = _handle
    do_PUT = _handle
    do_GET = _handle

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


def pagerduty_problems(method, body):
    """Events API v2 (developer.pagerduty.com, "Send Alert Event"): what a request must be."""
    if method != "POST":
        return ["PagerDuty takes POST, not %s" % method]
    if not isinstance(body, dict):
        return ["the event is not an object"]
    problems = []
    if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
        problems.append("routing_key missing")
    if body.get("event_action") not in PD_ACTIONS:
        problems.append("event_action %r" % body.get("event_action"))
    if not isinstance(body.get("dedup_key"), str) or not 0 < len(body["dedup_key"]) <= 255:
        problems.append("dedup_key missing or longer than 255")
    if body.get("event_action") == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return problems + ["a trigger needs a payload"]
        if not isinstance(payload.get("summary"), str) or not 0 < len(payload["summary"]) <= 1024:
            problems.append("payload.summary missing or longer than 1024")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            problems.append("payload.source missing")
        if payload.get("severity") not in PD_SEVERITIES:
            problems.append("payload.severity %r" % payload.get("severity"))
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            problems.append("payload.custom_details must be an object")
    return problems


def statuspage_problems(method, path, authorization, body):
    """Statuspage API (developer.statuspage.io): create an incident, update an incident."""
    problems = []
    if authorization != "OAuth " + STATUSPAGE_KEY:
        problems.append("Authorization is not the OAuth API key")
    create = "/v1/pages/%s/incidents" % PAGE_ID
    if not ((method == "POST" and path == create) or (method == "PATCH" and re.match(re.escape(create) + r"/[A-Za-z0-9]+$", path))):
        return problems + ["%s %s is neither creating nor updating an incident" % (method, path)]
    incident = body.get("incident") if isinstance(body, dict) else None
    if not isinstance(incident, dict):
        return problems + ["no incident object"]
    if method == "POST" and (not isinstance(incident.get("name"), str) or not incident["name"]):
        problems.append("a new incident needs a name")
    if incident.get("status") not in STATUSPAGE_STATUSES:
        problems.append("incident.status %r" % incident.get("status"))
    if "impact_override" in incident and incident["impact_override"] not in STATUSPAGE_IMPACTS:
        problems.append("incident.impact_override %r" % incident["impact_override"])
    if "component_ids" in incident and not all(isinstance(item, str) for item in incident["component_ids"]):
        problems.append("incident.component_ids must be strings")
    return problems


class SmtpSink(socketserver.ThreadingTCPServer):
    """An SMTP relay on loopback (RFC 5321, the commands smtplib sends; AUTH PLAIN): keeps each message."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls_context=None):
        super().__init__(("127.0.0.1", 0), SmtpHandler)
        self.messages, self.logins, self.tls_context = [], [], tls_context

    @property
    def port(self):
        return self.server_address[1]


class SmtpHandler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        self.reply("220 sink ESMTP")
        envelope = {"from": None, "to": []}
        while True:
            line = self.rfile.readline().decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                return
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                offer = b"250-STARTTLS\r\n" if self.server.tls_context and not isinstance(self.connection, ssl.SSLSocket) else b""
                self.wfile.write(b"250-sink\r\n" + offer + b"250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            elif verb == "STARTTLS":
                self.reply("220 2.0.0 Ready to start TLS")
                self.connection = self.server.tls_context.wrap_socket(self.connection, server_side=True)
                self.rfile, self.wfile = self.connection.makefile("rb"), self.connection.makefile("wb", buffering=0)
            elif verb == "AUTH" and self.server.tls_context and not isinstance(self.connection, ssl.SSLSocket):
                self.reply("530 5.7.0 Must issue a STARTTLS command first")
            elif verb == "HELO":
                self.reply("250 sink")
            elif verb == "AUTH":
                user, password = base64.b64decode(line.split()[2]).split(b"\0")[1:]
                self.server.logins.append((user.decode(), password.decode()))
                self.reply("235 2.7.0 Authentication successful")
            elif verb == "MAIL":
                envelope = {"from": line[10:].strip("<>"), "to": []}
                self.reply("250 OK")
            elif verb == "RCPT":
                envelope["to"].append(line[8:].strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                data = []
                while (chunk := self.rfile.readline().decode("utf-8", "replace")) not in (".\r\n", ""):
                    data.append(chunk[1:] if chunk.startswith("..") else chunk)
                self.server.messages.append(dict(envelope, message=message_from_string("".join(data))))
                self.reply("250 OK queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # RSET, NOOP
                self.reply("250 OK")


@contextlib.contextmanager
def serving(server):
    """`server` answering on a daemon thread for the block; shut down and closed after it, however it ends."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(name="providers")
def providers_fixture():
    with serving(Providers()) as server:
        yield server
    assert not server.problems, "requests that break the providers' schemas:\n" + "\n".join(server.problems)


@pytest.fixture(name="smtp")
def smtp_fixture():
    with serving(SmtpSink()) as server:
        yield server


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def channels(providers, smtp, **overrides):
    """The module's channel options, every channel on (a stand-in each); `overrides` replace some."""
    found = dict(
        pagerduty_url=providers.base + "/v2/enqueue", pagerduty_routing_key=ROUTING_KEY,
        slack_webhook_url="%s/services/T0001/B0001/%s" % (providers.base, SLACK_TOKEN),
        statuspage_url=providers.base + "/v1", statuspage_page_id=PAGE_ID, statuspage_api_key=STATUSPAGE_KEY,
        statuspage_component_ids=["c0mp0nent1"],
        email_host="127.0.0.1", email_port=smtp.port, email_sender="runbooks@example.test", email_recipients=["oncall@example.test"],
        email_username="alerts", email_password=SMTP_PASSWORD,
    )
    found.update(overrides)
    return found


def assert_no_secret(*texts):
    for text in texts:
        text = text if isinstance(text, str) else json.dumps(text)
        for secret in SECRETS:
            assert secret not in text, "a secret leaked: %s..." % secret[:6]


def files_text(directory: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in directory.rglob("*") if path.is_file())


def test_declare_join_escalate_outcome_resolve(run_module, providers, smtp, tmp_path):
    incidents = tmp_path / "incidents"
    base = dict(incident_id="INC-2026-0042", incident_dir=str(incidents), **channels(providers, smtp))

    declared = run_module("incident_lifecycle", dict(base, event="declare", severity="P1", summary="Messages are not delivered",
                                                     detected="2026-12-06T03:02:00+00:00"))
    assert declared["changed"] and not declared.get("failed"), declared
    assert declared["failed_notifications"] == 0 and declared["warnings"] == []
    assert [(item["channel"], item["action"], item["ok"], item["status"]) for item in declared["notifications"]] == [
        ("pagerduty", "trigger", True, 202), ("slack", "message", True, 200), ("statuspage", "create", True, 201), ("email", "send", True, 250)]
    trigger = providers.of("pagerduty")[0]["body"]
    assert trigger["dedup_key"] == "INC-2026-0042" and trigger["routing_key"] == ROUTING_KEY
    assert trigger["payload"]["severity"] == "error" and "Messages are not delivered" in trigger["payload"]["summary"]
    created = providers.of("statuspage")[0]
    assert created["method"] == "POST" and created["body"]["incident"]["status"] == "investigating"
    assert created["body"]["incident"]["impact_override"] == "major" and created["body"]["incident"]["component_ids"] == ["c0mp0nent1"]
    assert "INC-2026-0042" in providers.of("slack")[0]["body"]["text"]
    mail = smtp.messages[0]
    assert mail["to"] == ["oncall@example.test"] and "[P1] INC-2026-0042 declared" in mail["message"]["Subject"]
    assert smtp.logins == [("alerts", SMTP_PASSWORD)]
    incident = declared["incident"]
    assert incident["severity"] == "P1" and incident["status"] == "investigating" and incident["statuspage_incident_id"] == "sp0001"
    assert incident["detected"] == "2026-12-06T03:02:00Z" and TIME.match(incident["declared"])
    assert incident["response_target_minutes"] == 60
    events = declared["timeline_events"]
    assert events[0] == {"kind": "declared", "time": incident["declared"], "summary": "Messages are not delivered", "severity": "P1",
                         "status": "investigating", "detected": "2026-12-06T03:02:00Z"}
    assert [(event["kind"], event["channel"], event["ok"]) for event in events[1:]] == [
        ("notification", "pagerduty", True), ("notification", "slack", True), ("notification", "statuspage", True), ("notification", "email", True)]
    assert all(TIME.match(event["time"]) and event["summary"] for event in events)
    state_file = incidents / "INC-2026-0042" / "incident.json"
    assert oct(state_file.stat().st_mode & 0o777) == "0o600" and oct(state_file.parent.stat().st_mode & 0o777) == "0o700"
    assert json.loads(state_file.read_text())["history"][0]["notifications"][0]["status"] == 202

    sent = len(providers.requests)
    joined = run_module("incident_lifecycle", dict(base, event="declare", severity="P1", summary="Messages are not delivered"))
    assert not joined["changed"] and joined["notifications"] == [] and joined["timeline_events"] == []
    assert joined["incident"]["declared"] == incident["declared"] and len(providers.requests) == sent and len(smtp.messages) == 1
    assert not run_module("incident_lifecycle", dict(base, event="declare"))["changed"]  # joining needs no severity

    escalated = run_module("incident_lifecycle", dict(base, event="update", severity="P0", status="identified",
                                                      summary="The database is corrupt; restoring"))
    assert escalated["changed"] and escalated["failed_notifications"] == 0
    assert [(item["channel"], item["action"]) for item in escalated["notifications"]] == [
        ("pagerduty", "trigger"), ("slack", "message"), ("statuspage", "update"), ("email", "send")]
    assert providers.of("pagerduty")[-1]["body"]["payload"]["severity"] == "critical"
    patch = providers.of("statuspage")[-1]
    assert patch["method"] == "PATCH" and patch["path"].endswith("/incidents/sp0001")
    assert patch["body"]["incident"]["status"] == "identified" and patch["body"]["incident"]["impact_override"] == "critical"
    change = escalated["incident"]["severity_changes"]
    assert [(item["from"], item["to"], item["escalation"]) for item in change] == [("P1", "P0", True)]
    assert escalated["timeline_events"][0]["kind"] == "updated" and escalated["timeline_events"][0]["severity"] == "P0"
    assert "P1 -> P0" in providers.of("slack")[-1]["body"]["text"]

    same = run_module("incident_lifecycle", dict(base, event="update", status="identified"))
    assert not same["changed"] and same["notifications"] == []

    monitoring = run_module("incident_lifecycle", dict(base, event="update", status="monitoring"))
    assert [(item["channel"], item["action"]) for item in monitoring["notifications"]][0] == ("pagerduty", "acknowledge")
    assert providers.of("pagerduty")[-1]["body"]["event_action"] == "acknowledge" and monitoring["incident"]["pagerduty_acknowledged"]

    mails = len(smtp.messages)
    statuspage = len(providers.of("statuspage"))
    outcome = run_module("incident_lifecycle", dict(base, event="outcome", outcome="failed", playbook="restore_database"))
    assert outcome["changed"] and [(item["channel"], item["ok"]) for item in outcome["notifications"]] == [("slack", True)]
    assert outcome["timeline_events"][0] == {"kind": "outcome", "time": outcome["timeline_events"][0]["time"], "ok": False,
                                             "summary": "restore_database ended failed"}
    assert "restore_database" in providers.of("slack")[-1]["body"]["text"]
    assert len(smtp.messages) == mails and len(providers.of("statuspage")) == statuspage and outcome["incident"]["status"] == "monitoring"

    resolved = run_module("incident_lifecycle", dict(base, event="resolve", summary="Restored and verified"))
    assert resolved["changed"] and resolved["failed_notifications"] == 0
    assert [(item["channel"], item["action"]) for item in resolved["notifications"]] == [
        ("pagerduty", "resolve"), ("slack", "message"), ("statuspage", "update"), ("email", "send")]
    assert providers.of("pagerduty")[-1]["body"] == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "INC-2026-0042"}
    assert providers.of("statuspage")[-1]["body"]["incident"]["status"] == "resolved"
    final = resolved["incident"]
    assert final["status"] == "resolved" and TIME.match(final["resolved"])
    assert final["metrics"]["detect_to_declare_seconds"] >= 0 and final["metrics"]["declare_to_resolve_seconds"] >= 0
    assert [entry["event"] for entry in final["history"]] == ["declare", "update", "update", "outcome", "resolve"]

    sent = len(providers.requests)
    again = run_module("incident_lifecycle", dict(base, event="resolve"))
    assert not again["changed"] and again["notifications"] == [] and len(providers.requests) == sent
    assert run_module("incident_lifecycle", dict(base, event="update", status="identified"))["failed"]

    results = [declared, joined, escalated, same, monitoring, outcome, resolved, again]
    for result in results:
        result.pop("invocation", None)
    assert_no_secret(results, files_text(incidents))


def test_check_mode_sends_and_writes_nothing(run_module, providers, smtp, tmp_path):
    incidents = tmp_path / "incidents"
    base = dict(incident_id="INC-CHECK-1", incident_dir=str(incidents), **channels(providers, smtp))
    predicted = run_module("incident_lifecycle", dict(base, event="declare", severity="P2", summary="Backups failed"), check_mode=True)
    assert predicted["changed"] and predicted["timeline_events"] == []
    assert [(item["channel"], item["action"], item["would_send"]) for item in predicted["notifications"]] == [
        ("pagerduty", "trigger", True), ("slack", "message", True), ("statuspage", "create", True), ("email", "send", True)]
    assert predicted["incident"]["severity"] == "P2" and predicted["incident"]["status"] == "investigating"
    assert not incidents.exists() and providers.requests == [] and smtp.messages == []

    run_module("incident_lifecycle", dict(base, event="declare", severity="P2", summary="Backups failed"))
    state_file = incidents / "INC-CHECK-1" / "incident.json"
    before, sent = state_file.read_bytes(), len(providers.requests)
    for params in (dict(event="update", severity="P1"), dict(event="resolve"), dict(event="outcome", outcome="ok")):
        result = run_module("incident_lifecycle", dict(base, **params), check_mode=True)
        assert result["changed"] and result["notifications"] and result["timeline_events"] == [], result
    assert state_file.read_bytes() == before and len(providers.requests) == sent and len(smtp.messages) == 1
    assert sorted(path.name for path in state_file.parent.iterdir()) == [".incident.lock", "incident.json"]


def test_failing_notifiers_are_recorded_and_never_fail_the_change(run_module, providers, smtp, tmp_path):
    """A webhook answering 500, PagerDuty on a closed port, a Statuspage that never answers: the incident is declared."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never answers
    providers.fail["slack"] = 500
    incidents = tmp_path / "incidents"
    broken = channels(providers, smtp, pagerduty_url="http://127.0.0.1:%d/v2/enqueue" % closed_port(),
                      statuspage_url="http://127.0.0.1:%d/v1" % silent.getsockname()[1])
    try:
        result = run_module("incident_lifecycle", dict(incident_id="INC-FAIL-1", incident_dir=str(incidents), **broken, timeout=2,
                                                       event="declare", severity="P0", summary="Everything is down"))
    finally:
        silent.close()
    assert not result.get("failed") and result["changed"], result
    assert result["failed_notifications"] == 3
    outcome = {item["channel"]: item for item in result["notifications"]}
    assert not outcome["pagerduty"]["ok"] and "Connection refused" in outcome["pagerduty"]["error"]
    assert not outcome["slack"]["ok"] and "HTTP 500" in outcome["slack"]["error"]
    assert not outcome["statuspage"]["ok"] and "within 2 s" in outcome["statuspage"]["error"]
    assert outcome["email"]["ok"]
    assert len(result["warnings"]) == 3 and all("notification failed" in warning for warning in result["warnings"])
    assert [event["ok"] for event in result["timeline_events"][1:]] == [False, False, False, True]
    state = json.loads((incidents / "INC-FAIL-1" / "incident.json").read_text())
    assert state["declared"] and [item["ok"] for item in state["history"][0]["notifications"]] == [False, False, False, True]
    assert state["statuspage_incident_id"] is None
    assert "/services/" not in json.dumps(result["notifications"])  # the webhook's path is its token
    result.pop("invocation")
    assert_no_secret(result, files_text(incidents))

    # Statuspage back: the next update creates the incident the declaration could not.
    providers.fail.clear()
    updated = run_module("incident_lifecycle", dict(incident_id="INC-FAIL-1", incident_dir=str(incidents), event="update", status="identified",
                                                    **channels(providers, smtp)))
    assert ("statuspage", "create", True) in [(item["channel"], item["action"], item["ok"]) for item in updated["notifications"]]
    assert updated["incident"]["statuspage_incident_id"] == "sp0001"


def test_a_symlinked_incident_directory_is_refused(run_module, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    incidents = tmp_path / "incidents"
    incidents.mkdir()
    (incidents / "INC-LINK-1").symlink_to(elsewhere)
    for event in ("declare", "outcome"):
        result = run_module("incident_lifecycle", dict(incident_id="INC-LINK-1", incident_dir=str(incidents), event=event, severity="P1",
                                                       outcome="ok"))
        assert result["failed"] and "symlink" in result["msg"] and "nothing was sent or changed" in result["msg"], result
    assert list(elsewhere.iterdir()) == []

    planted = planted_link(tmp_path, "incidents")
    result = run_module("incident_lifecycle", dict(incident_id="INC-LINK-2", incident_dir=str(planted), event="declare", severity="P1"))
    assert result["failed"] and "symlink" in result["msg"], result
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_corrupt_state_file_is_kept_unless_forced(run_module, providers, smtp, tmp_path):
    directory = tmp_path / "incidents" / "INC-BAD-1"
    directory.mkdir(parents=True)
    (directory / "incident.json").write_text("{not json")
    base = dict(incident_id="INC-BAD-1", incident_dir=str(tmp_path / "incidents"), **channels(providers, smtp))
    for params in (dict(event="declare", severity="P1"), dict(event="update", status="identified"), dict(event="outcome", outcome="ok")):
        result = run_module("incident_lifecycle", dict(base, **params))
        assert result["failed"] and "not an incident state" in result["msg"] and "force=true" in result["msg"], result
    (directory / "other.json").write_text(json.dumps({"id": "INC-OTHER", "history": []}))
    (directory / "other.json").replace(directory / "incident.json")
    result = run_module("incident_lifecycle", dict(base, event="declare", severity="P1"))
    assert result["failed"] and "not the state of incident INC-BAD-1" in result["msg"]
    assert json.loads((directory / "incident.json").read_text())["id"] == "INC-OTHER"
    assert providers.requests == [] and smtp.messages == []

    forced = run_module("incident_lifecycle", dict(base, event="declare", severity="P1", force=True))
    assert forced["changed"] and any("moved aside" in warning for warning in forced["warnings"])
    kept = [path for path in directory.iterdir() if path.name.startswith("incident.json.corrupt-")]
    assert len(kept) == 1 and json.loads(kept[0].read_text())["id"] == "INC-OTHER"
    assert json.loads((directory / "incident.json").read_text())["id"] == "INC-BAD-1"


@pytest.mark.parametrize("params, message", [
    (dict(event="declare", severity="P9"), "value of severity must be one of: P0, P1, P2, P3"),
    (dict(event="declare"), "declaring an incident needs its severity"),
    (dict(event="declare", severity="P1", incident_id="../escape"), "is not letters, digits and ._:-"),
    (dict(event="declare", severity="P1", incident_id="INC-1\n"), "is not letters, digits and ._:-"),
    (dict(event="declare", severity="P1", status="resolved"), "resolve it with event=resolve"),
    (dict(event="declare", severity="P1", detected="yesterday"), "is not an ISO-8601 time"),
    (dict(event="declare", severity="P1", severity_levels={"P7": {}}), "severity_levels: 'P7' is not one of"),
    (dict(event="declare", severity="P1", severity_levels={"P1": {"pagerduty_severity": "urgent"}}), "pagerduty_severity must be one of"),
    (dict(event="declare", severity="P1", timeout=0), "timeout must be"),
    (dict(event="declare", severity="P1", slack_webhook_url="ftp://hooks.example/" + SLACK_TOKEN), "not shown: it holds a token"),
    (dict(event="update", status="identified"), "is not declared: declare it first"),
    (dict(event="resolve"), "is not declared: declare it first"),
    (dict(event="outcome"), "event is outcome but all of the following are missing: outcome"),
])
def test_invalid_input_fails_clearly_and_changes_nothing(run_module, tmp_path, params, message):
    incidents = tmp_path / "incidents"
    result = run_module("incident_lifecycle", dict(dict(incident_id="INC-BAD-2", incident_dir=str(incidents)), **params))
    assert result["failed"] and message in result["msg"], result
    assert SLACK_TOKEN not in json.dumps({key: value for key, value in result.items() if key != "invocation"})
    assert not incidents.exists() or not any(path.name == "incident.json" for path in incidents.rglob("*"))


def run_playbook(name, tmp_path, extra_vars, vars_file=None, check=False, env=None):
    """A playbook of playbooks/ as an operator runs it (-vvv), the secrets in a vars file as AWX hands them over."""
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-vvv",
               str(REPO_ROOT / "playbooks" / name), "-e", json.dumps(extra_vars)]
    if vars_file:
        command += ["-e", "@%s" % vars_file]
    if check:
        command.append("--check")
    run_env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
                   ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_NOCOLOR="1", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, env=run_env, cwd=tmp_path, check=False)


def test_the_playbooks_declare_update_and_resolve_without_leaking(providers, smtp, tmp_path):
    incidents = tmp_path / "incidents"
    secrets_file = tmp_path / "credentials.yml"
    secrets_file.write_text(yaml.safe_dump({
        "incident_lifecycle_pagerduty_url": providers.base + "/v2/enqueue",
        "incident_lifecycle_pagerduty_routing_key": ROUTING_KEY,
        "incident_lifecycle_slack_webhook_url": "%s/services/T0001/B0001/%s" % (providers.base, SLACK_TOKEN),
        "incident_lifecycle_statuspage_url": providers.base + "/v1",
        "incident_lifecycle_statuspage_page_id": PAGE_ID,
        "incident_lifecycle_statuspage_api_key": STATUSPAGE_KEY,
        "incident_lifecycle_email_host": "127.0.0.1",
        "incident_lifecycle_email_port": smtp.port,
        "incident_lifecycle_email_recipients": ["oncall@example.test"],
        "incident_lifecycle_email_username": "alerts",
        "incident_lifecycle_email_password": SMTP_PASSWORD,
        "incident_lifecycle_escalation": {"L2": {"description": "DevOps/SRE", "severities": ["P0", "P1"],
                                                 "contacts": ["devops-oncall@example.test"]}},
    }))
    env = {"RUNBOOKS_INCIDENT_DIR": str(incidents)}
    declare = {"incident_id": "INC-2026-0099", "severity": "P1", "summary": "Messages are not delivered"}
    outputs = []

    dry = run_playbook("incident_declare.yml", tmp_path, declare, secrets_file, check=True, env=env)
    outputs.append(dry)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    # Nothing declared, sent or recorded in the lifecycle; the timeline (ansible.cfg enables it) keeps the dry run.
    assert not (incidents / "INC-2026-0099" / "incident.json").exists() and providers.requests == [] and smtp.messages == []
    assert [run["mode"] for run in json.loads((incidents / "INC-2026-0099" / "timeline.json").read_text())["runs"]] == ["check"]

    run = run_playbook("incident_declare.yml", tmp_path, declare, secrets_file, env=env)
    outputs.append(run)
    assert run.returncode == 0, run.stdout + run.stderr
    said = " ".join(run.stdout.split())  # the YAML callback folds long lines
    assert "INC-2026-0099 is P1 High (Major degradation): respond within 60 min. Call L2 DevOps/SRE: devops-oncall@example.test." in said
    assert [request["provider"] for request in providers.requests] == ["pagerduty", "slack", "statuspage"] and len(smtp.messages) == 1

    # Dry runs of update and resolve on the declared incident: the lifecycle's records stay byte for byte, no provider
    # hears of them; the timeline only gains each dry run (mode check) and no event.
    record = incidents / "INC-2026-0099"
    lifecycle_files = ("incident.json", ".incident.lock")
    before = {name: (record / name).read_bytes() for name in lifecycle_files}
    names = sorted(path.name for path in record.iterdir())
    events_before = json.loads((record / "timeline.json").read_text())["events"]
    sent = (list(providers.requests), len(smtp.messages))
    for name, extra in (("incident_update.yml", {"incident_id": "INC-2026-0099", "status": "identified", "severity": "P0"}),
                        ("incident_resolve.yml", {"incident_id": "INC-2026-0099", "summary": "Fixed"})):
        dry = run_playbook(name, tmp_path, extra, secrets_file, check=True, env=env)
        outputs.append(dry)
        assert dry.returncode == 0 and "changed=1" in dry.stdout, dry.stdout + dry.stderr
    assert {name: (record / name).read_bytes() for name in lifecycle_files} == before
    assert sorted(path.name for path in record.iterdir()) == names
    assert (list(providers.requests), len(smtp.messages)) == sent
    timeline = json.loads((record / "timeline.json").read_text())
    assert timeline["events"] == events_before
    assert [(run["playbook"], run["mode"]) for run in timeline["runs"]][-2:] == [("incident_update.yml", "check"), ("incident_resolve.yml", "check")]

    update = run_playbook("incident_update.yml", tmp_path, {"incident_id": "INC-2026-0099", "status": "identified", "severity": "P0"},
                          secrets_file, env=env)
    outputs.append(update)
    assert update.returncode == 0, update.stdout + update.stderr
    resolve = run_playbook("incident_resolve.yml", tmp_path, {"incident_id": "INC-2026-0099", "summary": "Fixed"}, secrets_file, env=env)
    outputs.append(resolve)
    again = run_playbook("incident_resolve.yml", tmp_path, {"incident_id": "INC-2026-0099"}, secrets_file, env=env)
    outputs.append(again)
    assert resolve.returncode == 0 and again.returncode == 0, resolve.stdout + again.stdout
    assert "changed=1" in resolve.stdout and "changed=0" in again.stdout
    state = json.loads((incidents / "INC-2026-0099" / "incident.json").read_text())
    assert [entry["event"] for entry in state["history"]] == ["declare", "update", "resolve"] and state["status"] == "resolved"
    assert [request["body"]["event_action"] for request in providers.of("pagerduty")] == ["trigger", "trigger", "resolve"]

    refused = run_playbook("incident_resolve.yml", tmp_path, {"incident_id": "INC-NEVER"}, secrets_file, env=env)
    outputs.append(refused)
    assert refused.returncode != 0 and "is not declared: declare it first" in " ".join(refused.stdout.split())

    # The timeline callback (enabled in ansible.cfg) kept the lifecycle's events from the real runs, and the
    # post-mortem ticks what they did.
    timeline = json.loads((incidents / "INC-2026-0099" / "timeline.json").read_text())
    kinds = [event["kind"] for event in timeline["events"]]
    assert kinds.count("declared") == 1 and kinds.count("resolved") == 1 and "updated" in kinds
    sent = {(event["channel"], event["ok"]) for event in timeline["events"] if event["kind"] == "notification"}
    assert {("pagerduty", True), ("slack", True), ("statuspage", True), ("email", True)} <= sent
    postmortem = (incidents / "INC-2026-0099" / "postmortem.md").read_text()
    for item in ("Incident logged in tracker", "Status page updated", "Stakeholders notified", "Resolution confirmed"):
        assert "- [x] " + item in postmortem, item
    assert "- [ ] Mitigation deployed" in postmortem  # no remediation ran: the declare, update and resolve runs only

    for result in outputs:
        assert_no_secret(result.stdout, result.stderr)
    assert_no_secret(files_text(incidents))  # incident.json, the timeline, the post-mortem, the Gantt page


def test_the_outcome_entry_point(ansible_play, providers, smtp, tmp_path):
    incidents = tmp_path / "incidents"
    role = {"name": "runbooks.incident.incident_lifecycle", "tasks_from": "outcome"}
    tasks = [{"name": "Record the outcome", "ansible.builtin.include_role": role,
              "vars": {"incident_lifecycle_incident_id": "INC-OUT-1", "incident_lifecycle_outcome": "failed",
                       "incident_lifecycle_dir": str(incidents),
                       "incident_lifecycle_slack_webhook_url": "%s/services/T0001/B0001/%s" % (providers.base, SLACK_TOKEN),
                       "incident_lifecycle_pagerduty_routing_key": ROUTING_KEY, "incident_lifecycle_email_host": "127.0.0.1",
                       "incident_lifecycle_email_port": smtp.port, "incident_lifecycle_email_recipients": ["oncall@example.test"]}}]
    result = ansible_play(tasks, verbosity=3)
    assert result.rc == 0, result.stdout + result.stderr
    assert [request["provider"] for request in providers.requests] == ["slack"] and smtp.messages == []
    state = json.loads((incidents / "INC-OUT-1" / "incident.json").read_text())
    assert state["declared"] is None and state["history"][0]["outcome"] == "failed" and state["history"][0]["playbook"] == "test"
    assert_no_secret(result.stdout, result.stderr)


def test_email_through_starttls(run_module, tmp_path):
    """The relay wants STARTTLS before AUTH (a self-signed certificate: validate_certs=false)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with serving(SmtpSink(context)) as sink:
        params = dict(incident_id="INC-TLS-1", incident_dir=str(tmp_path / "incidents"), event="declare", severity="P3", summary="Cosmetic",
                      email_host="127.0.0.1", email_port=sink.port, email_recipients=["oncall@example.test"], email_starttls=True,
                      email_username="alerts", email_password=SMTP_PASSWORD)
        verified = run_module("incident_lifecycle", params)
        assert verified["failed_notifications"] == 1 and "CERTIFICATE_VERIFY_FAILED" in verified["notifications"][0]["error"]
        assert sink.messages == [] and sink.logins == []
        sent = run_module("incident_lifecycle", dict(params, incident_id="INC-TLS-2", validate_certs=False))
        assert sent["failed_notifications"] == 0 and sink.logins == [("alerts", SMTP_PASSWORD)]
        assert "[P3] INC-TLS-2 declared" in sink.messages[0]["message"]["Subject"]


class SlowProviders(Providers):
    """Each answer comes after a second: two concurrent declarations overlap for sure."""

    def finish_request(self, request, client_address):
        threading.Event().wait(1)
        super().finish_request(request, client_address)


def test_two_concurrent_declarations_page_once(tmp_path):
    """Two jobs declare the same incident at once (an AWX retry, two operators): the lock makes one the declaration
    and the other a join."""
    with serving(SlowProviders()) as slow:
        params = dict(incident_id="INC-RACE-1", incident_dir=str(tmp_path / "incidents"), event="declare", severity="P1", summary="Down",
                      pagerduty_url=slow.base + "/v2/enqueue", pagerduty_routing_key=ROUTING_KEY)
        procs = []
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            procs.append(start_module("incident_lifecycle", params, tmp_path / name))
        results = [json.loads(proc.communicate(timeout=60)[0].decode()) for proc in procs]
    assert sorted(result["changed"] for result in results) == [False, True], results
    assert [request["body"]["event_action"] for request in slow.requests] == ["trigger"] and not slow.problems
