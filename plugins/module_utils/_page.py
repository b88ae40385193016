# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paging: Alertmanager and PagerDuty Events v2 payloads and their delivery. PRIVATE to the collection.

Standard library only, no Ansible import: the `page` module and the host-side job run by runbooks-page@.service
when a unit fails (`_cli page --unit NAME`) build and send the very same payloads.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

FORMATS = ("alertmanager", "pagerduty")
SEVERITIES = ("critical", "error", "warning", "info")
JOB_LABEL = "runbooks.incident"
MASK = "********"
BODY_EXCERPT = 200
# What is kept of a 2xx answer (a Statuspage incident's id is in it).
MAX_ANSWER = 1 << 16
JOURNAL_LINES = 20
# A page that cannot be delivered within an hour is not a page; longer bounds only hide a stuck receiver.
MAX_TIMEOUT = 3600
# systemd unit names (letters, digits and :-_.\, an @ before a template's instance), never starting with a dash.
UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\][A-Za-z0-9:_.\\-]*(@[A-Za-z0-9:_.\\@-]*)?\.[a-z]+$")


class PageError(Exception):
    pass


def default_dedup_key(summary, source):
    """The same summary from the same source is the same alert (so a resolve finds its trigger)."""
    return "rbi-" + hashlib.sha256(("%s\n%s" % (source, summary)).encode("utf-8")).hexdigest()[:16]


def _timestamp(now):
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(fmt, summary, source, dedup_key, severity="critical", details=None, routing_key=None, resolve=False, now=None):
    """The JSON document (list or dict) to POST for this alert."""
    if fmt not in FORMATS:
        raise PageError("format %r is not one of %s" % (fmt, ", ".join(FORMATS)))
    if severity not in SEVERITIES:
        raise PageError("severity %r is not one of %s" % (severity, ", ".join(SEVERITIES)))
    if not summary:
        raise PageError("the summary is empty")
    details = details or {}
    if fmt == "pagerduty":
        if not routing_key:
            raise PageError("the pagerduty format needs a routing_key")
        return {"routing_key": routing_key, "event_action": "resolve" if resolve else "trigger", "dedup_key": dedup_key,
                "payload": {"summary": summary, "source": source, "severity": severity, "custom_details": details}}
    now = _timestamp(now or datetime.datetime.now(datetime.timezone.utc))
    # Alertmanager identifies an alert by its labels: the dedup key is its alertname, and a resolve must carry the
    # same labels (summary/source or dedup_key, and severity) as the trigger.
    alert = {"labels": {"alertname": dedup_key, "severity": severity, "instance": source, "job": JOB_LABEL},
             "annotations": {"summary": summary, "description": json.dumps(details, sort_keys=True)},
             "startsAt": now}
    if resolve:
        alert["endsAt"] = now
    return [alert]


def masked(payload):
    """`payload` with its routing key (PagerDuty) replaced by a mask: what results may show."""
    if isinstance(payload, dict) and payload.get("routing_key"):
        return dict(payload, routing_key=MASK)
    return payload


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be replayed as a GET: a 3xx answer is a failure instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _hide(text, secret):
    return text.replace(secret, MASK) if secret else text


def check_url(url):
    """The parts of `url`, an http(s) URL with a host and no credentials, or PageError saying what is wrong with it."""
    if not isinstance(url, str):
        raise PageError("url must be a string, not %s" % type(url).__name__)
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        raise PageError("url %r holds spaces or control characters (percent-encode them)" % url)
    if not url.isascii():
        raise PageError("url %r is not ASCII: give the host in its ASCII (punycode) form and percent-encode the path" % url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PageError("url %r is not a valid URL: %s" % (url, exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PageError("url %r is not an http or https URL with a host" % url)
    if port == 0:
        raise PageError("url %r names port 0, which nothing listens on" % url)
    if parts.username is not None or parts.password is not None:
        raise PageError("url must not carry credentials (they would show in logs and results)")
    return parts


def check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise PageError("timeout must be a number of seconds above 0 and at most %d, not %r" % (MAX_TIMEOUT, timeout))
    return timeout


def _unanswered(shown, timeout):
    return "no complete answer from %s within %s s, the alert may not have been delivered" % (shown, timeout)


def _exchange(opener, request, shown, timeout, secret):
    """One request through urllib, each read bounded by `timeout`; (the 2xx status, the answer's first bytes), or
    PageError naming the receiver as `shown`."""
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(4 * BODY_EXCERPT).decode("utf-8", errors="replace")
        except (OSError, HTTPException):
            body = ""
        raise PageError("%s answered HTTP %d, the alert was not accepted: %s"
                        % (shown, exc.code, _hide(body, secret)[:BODY_EXCERPT] or "(empty body)")) from None
    except urllib.error.URLError as exc:
        raise PageError("could not reach %s, no alert was delivered: %s" % (shown, _hide(str(exc.reason), secret))) from None
    except TimeoutError:
        # The same words whichever clock ran out first: this read's or the caller's bound on the whole exchange.
        raise PageError(_unanswered(shown, timeout)) from None
    except (OSError, HTTPException, ValueError) as exc:
        # Broken connections after the request went out.
        raise PageError("no answer from %s, the alert may not have been delivered: %s" % (shown, _hide(str(exc), secret))) from None


def send(url, payload, timeout=10, validate_certs=True, secret=None):
    """POST `payload` as JSON to `url`; the HTTP status when it is 2xx, PageError otherwise. `secret` is never shown."""
    return exchange(url, payload, timeout=timeout, validate_certs=validate_certs, secret=secret)[0]


def exchange(url, payload, timeout=10, validate_certs=True, secret=None, method="POST", headers=None, shown=None):
    """Send `payload` as JSON to `url` with `method` and extra `headers`; (HTTP status, the answer's first
    MAX_ANSWER bytes) when the status is 2xx, PageError otherwise. `secret` is never shown; messages name the
    receiver as `shown` (default `url`: a URL holding a token, such as a Slack webhook's, is shown by its host).

    `timeout` bounds the whole request (name lookup, connect, send, the answer's status and headers, an error's
    body): socket timeouts bound each read only, and a receiver sending a byte now and then would hold a read open
    for ever. The request runs in a thread the caller stops waiting for at the deadline; the thread dies with the
    process, or when its own per-read timeout ends it.
    """
    parts = check_url(url)
    check_timeout(timeout)
    shown = shown or url
    handlers = [_NoRedirect()]
    if parts.scheme == "https":
        context = ssl.create_default_context()
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method=method,
                                     headers=dict(headers or {}, **{"Content-Type": "application/json", "User-Agent": JOB_LABEL}))
    outcome = {}

    def attempt():
        try:
            outcome["answer"] = _exchange(urllib.request.build_opener(*handlers), request, shown, timeout, secret)
        except PageError as exc:
            outcome["error"] = exc
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # The thread's boundary: whatever went wrong is reported by the caller, not printed by the thread.
            outcome["error"] = PageError("sending to %s failed, the alert may not have been delivered: %s"
                                         % (shown, _hide(str(exc), secret)))

    worker = threading.Thread(target=attempt, name="page-request", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise PageError(_unanswered(shown, timeout))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]


def journal_tail(unit, lines=JOURNAL_LINES, journalctl="journalctl"):
    """The last `lines` journal lines of `unit` as text, or a sentence saying why there is none."""
    try:
        res = subprocess.run([journalctl, "--unit", unit, "--lines", str(lines), "--no-pager", "--quiet",
                              "--output", "short-iso"], capture_output=True, text=True, errors="replace", timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "no journal available (%s)" % exc
    if res.returncode != 0:
        return "no journal available (journalctl exited %d: %s)" % (res.returncode, res.stderr.strip()[:BODY_EXCERPT])
    return res.stdout.rstrip("\n") or "no journal available (no entries for %s)" % unit


def page_job(config, unit):
    """Host-side job: page that systemd unit `unit` failed, with its last journal lines (they hold no secrets).

    `config` (the job's JSON file, 0600 as it may hold a routing key): url, format, routing_key, severity, source,
    timeout, validate_certs.
    """
    if not unit:
        raise PageError("no failed unit was named (--unit)")
    if not isinstance(unit, str) or not UNIT_NAME.match(unit) or len(unit) > 255:
        raise PageError("%r is not a systemd unit name" % (unit,))
    if not isinstance(config, dict):
        raise PageError("the configuration must be a mapping, not %s" % type(config).__name__)
    if not config.get("url"):
        raise PageError("the configuration has no url")
    for name in ("url", "source", "routing_key"):
        if config.get(name) is not None and not isinstance(config[name], str):
            raise PageError("%s must be a string, not %s" % (name, type(config[name]).__name__))
    source = config.get("source") or socket.gethostname()
    fmt = config.get("format", "alertmanager")
    summary = "%s failed on %s" % (unit, source)
    dedup_key = default_dedup_key(summary, source)
    payload = build(fmt, summary, source, dedup_key, severity=config.get("severity", "critical"),
                    details={"unit": unit, "journal": journal_tail(unit)}, routing_key=config.get("routing_key"))
    status = send(config["url"], payload, timeout=config.get("timeout", 10),
                  validate_certs=config.get("validate_certs", True), secret=config.get("routing_key"))
    return dict(job="page", unit=unit, format=fmt, status=status, dedup_key=dedup_key)
