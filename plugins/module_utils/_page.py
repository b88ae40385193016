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
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

FORMATS = ("alertmanager", "pagerduty")
SEVERITIES = ("critical", "error", "warning", "info")
JOB_LABEL = "runbooks.incident"
MASK = "********"
BODY_EXCERPT = 200
JOURNAL_LINES = 20
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


def send(url, payload, timeout=10, validate_certs=True, secret=None):
    """POST `payload` as JSON to `url`; the HTTP status when it is 2xx, PageError otherwise. `secret` is never shown."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PageError("url %r is not an http or https URL" % url)
    if parts.username is not None or parts.password is not None:
        raise PageError("url must not carry credentials (they would show in logs and results)")
    handlers = [_NoRedirect()]
    if parts.scheme == "https":
        context = ssl.create_default_context()
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": JOB_LABEL})
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(4 * BODY_EXCERPT).decode("utf-8", errors="replace")
        except (OSError, HTTPException):
            body = ""
        raise PageError("%s answered HTTP %d, the alert was not accepted: %s"
                        % (url, exc.code, _hide(body, secret)[:BODY_EXCERPT] or "(empty body)")) from None
    except urllib.error.URLError as exc:
        raise PageError("could not reach %s, no alert was delivered: %s" % (url, _hide(str(exc.reason), secret))) from None
    except (OSError, HTTPException) as exc:
        # Timeouts while reading the answer and broken connections after the request went out.
        raise PageError("no answer from %s, the alert may not have been delivered: %s" % (url, _hide(str(exc), secret))) from None


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
    if not UNIT_NAME.match(unit) or len(unit) > 255:
        raise PageError("%r is not a systemd unit name" % unit)
    if not config.get("url"):
        raise PageError("the configuration has no url")
    source = config.get("source") or socket.gethostname()
    fmt = config.get("format", "alertmanager")
    summary = "%s failed on %s" % (unit, source)
    dedup_key = default_dedup_key(summary, source)
    payload = build(fmt, summary, source, dedup_key, severity=config.get("severity", "critical"),
                    details={"unit": unit, "journal": journal_tail(unit)}, routing_key=config.get("routing_key"))
    status = send(config["url"], payload, timeout=config.get("timeout", 10),
                  validate_certs=config.get("validate_certs", True), secret=config.get("routing_key"))
    return dict(job="page", unit=unit, format=fmt, status=status, dedup_key=dedup_key)
