# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An incident's lifecycle: declare, update, resolve, and the outcomes of the runs under it. PRIVATE to the collection.

The state is `<incident dir>/<incident id>/incident.json`, on the controller: written atomically (0600, directories
0700) through _fileio, so it is whole or absent and no symlink is followed; the incident's own directory must not be
a symlink at all. One change at a time: an fcntl lock on `.incident.lock` beside it is held from reading the state
to writing it, notifications included, so two jobs declaring the same incident page once. A state file that cannot
be read as one is reported and kept; `force` moves it aside (`incident.json.corrupt-<stamp>`) and starts anew.

Notifications go to the channels that are configured (PagerDuty Events API v2, a Slack-compatible webhook,
Statuspage, e-mail). A channel that fails is recorded with the error and reported; it never fails the change: a
remediation must not stop because a chat webhook is down. No secret (routing key, webhook URL, API key, SMTP
password) is ever written to the state or put in a result or message; a Slack webhook is named by its host only,
its path being its token.

PagerDuty, by event: declare triggers (dedup key = the incident id); an update that raises the severity triggers
again with the new severity (PagerDuty folds it into the same alert); the first update to `identified` or
`monitoring` acknowledges (someone is on it: the escalation policy stops re-paging); resolve resolves. Statuspage:
declare creates the incident, update and resolve change it (an update creates it if the creation had failed).
Slack: every change and every outcome. E-mail: every change, no outcome. A declare of an incident already declared
joins it: nothing is sent, unless its severity differs, which is an update.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import fcntl
import json
import os
import smtplib
import ssl
import stat
import urllib.parse
from email.message import EmailMessage

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _page, _run_lock

EVENTS = ("declare", "update", "resolve", "outcome")
STATUSES = ("investigating", "identified", "monitoring", "resolved")
OUTCOMES = ("ok", "failed")
SEVERITY_NAMES = ("P0", "P1", "P2", "P3")  # P0 the most severe
PD_SEVERITIES = ("critical", "error", "warning", "info")
STATUSPAGE_IMPACTS = ("none", "minor", "major", "critical")
STATE_FILE = "incident.json"
LOCK_FILE = ".incident.lock"
STATE_VERSION = 1
PD_SUMMARY_MAX = 1024  # Events API v2: payload.summary is truncated by PagerDuty beyond this
SOURCE = "runbooks.incident"
TIMELINE_KINDS = {"declare": "declared", "update": "updated", "resolve": "resolved", "outcome": "outcome"}

# Severity levels of the seeds (secure-messenger runbook: impact, examples, response SLA; Statuspage's impact and
# PagerDuty's severity as each level maps to them).
DEFAULT_SEVERITY_LEVELS = {
    "P0": {"name": "Critical", "meaning": "Service down or data lost",
           "examples": ["application unreachable", "database corrupt", "security breach"],
           "response_minutes": 15, "pagerduty_severity": "critical", "statuspage_impact": "critical"},
    "P1": {"name": "High", "meaning": "Major degradation",
           "examples": ["high latency", "a feature broken", "WebSocket disconnections"],
           "response_minutes": 60, "pagerduty_severity": "error", "statuspage_impact": "major"},
    "P2": {"name": "Medium", "meaning": "Minor degradation",
           "examples": ["backup failed", "UI bugs", "slowdowns", "non-critical error rate"],
           "response_minutes": 240, "pagerduty_severity": "warning", "statuspage_impact": "minor"},
    "P3": {"name": "Low", "meaning": "Minimal impact",
           "examples": ["errors in logs", "cosmetic issues"],
           "response_minutes": 1440, "pagerduty_severity": "info", "statuspage_impact": "none"},
}


class LifecycleError(Exception):
    """The change was refused; nothing was sent and nothing written."""


def utc_text(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text, what):
    """An ISO-8601 time as UTC text with Z; a time without a zone is taken as UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        raise LifecycleError("%s %r is not an ISO-8601 time such as 2026-12-06T03:10:00Z" % (what, text)) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return utc_text(moment)


def _seconds_between(start, end):
    if not start or not end:
        return None
    parse = datetime.datetime.fromisoformat
    return int((parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds())


def check_incident_id(incident_id):
    if not isinstance(incident_id, str) or not _run_lock.INCIDENT_ID.match(incident_id):
        raise LifecycleError("incident id %r is not letters, digits and ._:- (at most 64, starting with a letter or digit)"
                             % (incident_id,))


def severity_levels(overrides):
    """The seeds' levels with `overrides` ({P0: {response_minutes: 10, ...}}) merged in, each checked."""
    levels = copy.deepcopy(DEFAULT_SEVERITY_LEVELS)
    for name, level in (overrides or {}).items():
        if name not in levels:
            raise LifecycleError("severity_levels: %r is not one of %s" % (name, ", ".join(SEVERITY_NAMES)))
        if not isinstance(level, dict):
            raise LifecycleError("severity_levels: %s must be a mapping, not %s" % (name, type(level).__name__))
        levels[name].update(level)
    for name, level in levels.items():
        minutes = level.get("response_minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 0:
            raise LifecycleError("severity_levels: %s.response_minutes must be a whole number of minutes" % name)
        if level.get("pagerduty_severity") not in PD_SEVERITIES:
            raise LifecycleError("severity_levels: %s.pagerduty_severity must be one of %s" % (name, ", ".join(PD_SEVERITIES)))
        if level.get("statuspage_impact") not in STATUSPAGE_IMPACTS:
            raise LifecycleError("severity_levels: %s.statuspage_impact must be one of %s" % (name, ", ".join(STATUSPAGE_IMPACTS)))
        for key in ("name", "meaning"):
            if not isinstance(level.get(key), str):
                raise LifecycleError("severity_levels: %s.%s must be a string" % (name, key))
    return levels


def default_dir():
    return os.environ.get("RUNBOOKS_INCIDENT_DIR") or os.path.join(os.getcwd(), "incidents")


# --- channels --------------------------------------------------------------------------------------------------------

CHANNEL_OPTIONS = {
    "pagerduty": ("url", "routing_key", "source"),
    "slack": ("webhook_url",),
    "statuspage": ("url", "page_id", "api_key", "component_ids"),
    "email": ("host", "port", "sender", "recipients", "starttls", "username", "password"),
}


def channels_of(params):
    """{channel: {setting: value}} from the module's flat options (pagerduty_routing_key, ...)."""
    return {channel: {name: params.get("%s_%s" % (channel, name)) for name in names} for channel, names in CHANNEL_OPTIONS.items()}


def configured_channels(channels):
    """{channel: settings} of the channels that are configured: a channel without its key settings is off."""
    channels = channels or {}
    found = {}
    pagerduty = channels.get("pagerduty") or {}
    if pagerduty.get("routing_key"):
        found["pagerduty"] = pagerduty
    slack = channels.get("slack") or {}
    if slack.get("webhook_url"):
        found["slack"] = slack
    statuspage = channels.get("statuspage") or {}
    if statuspage.get("page_id") and statuspage.get("api_key"):
        found["statuspage"] = statuspage
    email = channels.get("email") or {}
    if email.get("host") and email.get("recipients"):
        found["email"] = email
    for name, settings in found.items():
        _check_channel(name, settings)
    return found


def _check_channel(name, settings):
    try:
        if name == "pagerduty":
            _page.check_url(settings.get("url") or "")
        elif name == "statuspage":
            _page.check_url(settings.get("url") or "")
            if "/" in settings["page_id"] or not settings["page_id"].strip():
                raise LifecycleError("statuspage_page_id %r is not a page id" % settings["page_id"])
        elif name == "email":
            if not settings.get("sender"):
                raise LifecycleError("email_sender is empty")
            if any(not isinstance(item, str) or "@" not in item or "\n" in item or "\r" in item for item in settings["recipients"]):
                raise LifecycleError("email_recipients must be e-mail addresses")
    except _page.PageError as exc:
        raise LifecycleError("%s_url: %s" % (name, exc)) from None
    if name == "slack":
        try:
            _page.check_url(settings["webhook_url"])
        except _page.PageError:
            # The message would quote the URL, whose path is the webhook's token.
            raise LifecycleError("slack_webhook_url is not an http or https URL with a host (not shown: it holds a token)") from None


def secrets_of(channels):
    """Every secret value the channels hold, and the parts of the webhook URL that are its token."""
    channels = channels or {}
    found = [(channels.get("pagerduty") or {}).get("routing_key"), (channels.get("statuspage") or {}).get("api_key"),
             (channels.get("email") or {}).get("password")]
    webhook = (channels.get("slack") or {}).get("webhook_url")
    if webhook:
        found.append(webhook)
        with contextlib.suppress(ValueError):
            parts = urllib.parse.urlsplit(webhook)
            found += [parts.path, parts.query] + [segment for segment in parts.path.split("/") if len(segment) >= 8]
    return sorted({value for value in found if isinstance(value, str) and len(value) >= 4}, key=len, reverse=True)


def scrub(text, secrets):
    text = str(text)
    for value in secrets:
        text = text.replace(value, _page.MASK)
    return text


def webhook_host(url):
    """How a webhook is named in messages: scheme and host, never the path (the token)."""
    try:
        parts = urllib.parse.urlsplit(url)
        return "%s://%s/..." % (parts.scheme, parts.hostname)
    except ValueError:
        return "the webhook"


class Notifier:
    """Sends one incident change to each configured channel; every outcome recorded, none raised."""

    def __init__(self, channels, timeout, validate_certs=True):
        self.channels = configured_channels(channels)
        self.secrets = secrets_of(channels)
        self.timeout = timeout
        self.validate_certs = validate_certs

    def plan(self, event, incident, previous):
        """[(channel, action)] this change sends, in order."""
        actions = []
        escalated = previous is not None and _more_severe(incident.get("severity"), previous.get("severity"))
        if "pagerduty" in self.channels:
            if event == "declare":
                actions.append(("pagerduty", "trigger"))
            elif event == "update" and escalated:
                actions.append(("pagerduty", "trigger"))
            elif event == "update" and incident.get("status") in ("identified", "monitoring") \
                    and not incident.get("pagerduty_acknowledged"):
                actions.append(("pagerduty", "acknowledge"))
            elif event == "resolve":
                actions.append(("pagerduty", "resolve"))
        if "slack" in self.channels:
            actions.append(("slack", "message"))
        if "statuspage" in self.channels and event != "outcome":
            known = incident.get("statuspage_incident_id")
            if event == "declare" or (event == "update" and not known):
                actions.append(("statuspage", "create"))
            elif known:
                actions.append(("statuspage", "update"))
        if "email" in self.channels and event != "outcome":
            actions.append(("email", "send"))
        return actions

    def send(self, action_plan, event, incident, levels, now):
        results = []
        for channel, action in action_plan:
            entry = {"channel": channel, "action": action, "time": now}
            try:
                status = getattr(self, "_" + channel)(action, event, incident, levels)
                entry.update(ok=True, status=status)
            except (_page.PageError, LifecycleError, OSError, smtplib.SMTPException, ValueError) as exc:
                entry.update(ok=False, error=scrub(exc, self.secrets)[:500])
            results.append(entry)
        return results

    def _http(self, url, payload, method="POST", headers=None, shown=None):
        return _page.exchange(url, payload, timeout=self.timeout, validate_certs=self.validate_certs, method=method,
                              headers=headers, shown=shown, secret=None)

    def _pagerduty(self, action, _event, incident, levels):
        settings = self.channels["pagerduty"]
        body = {"routing_key": settings["routing_key"], "event_action": action, "dedup_key": incident["id"]}
        if action == "trigger":
            level = levels[incident["severity"]]
            body["payload"] = {
                "summary": ("[%s] %s" % (incident["severity"], incident["summary"]))[:PD_SUMMARY_MAX],
                "source": settings.get("source") or SOURCE,
                "severity": level["pagerduty_severity"],
                "custom_details": {"incident_id": incident["id"], "severity": incident["severity"], "level": level["name"],
                                   "status": incident["status"], "response_target_minutes": level["response_minutes"],
                                   "detected": incident.get("detected")},
            }
        status, _answer = self._http(settings["url"], body)
        if action == "acknowledge":
            incident["pagerduty_acknowledged"] = True
        return status

    def _slack(self, _action, event, incident, levels):
        settings = self.channels["slack"]
        text = message_line(event, incident, levels)
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        context = "status *%s*" % incident.get("status") if incident.get("status") else ""
        if incident.get("severity"):
            level = levels[incident["severity"]]
            context += " | %s %s, response target %d min" % (incident["severity"], level["name"], level["response_minutes"])
        if context:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context.strip(" |")}]})
        status, _answer = self._http(settings["webhook_url"], {"text": text, "blocks": blocks}, shown=webhook_host(settings["webhook_url"]))
        return status

    def _statuspage(self, action, _event, incident, levels):
        settings = self.channels["statuspage"]
        base = settings["url"].rstrip("/") + "/pages/" + urllib.parse.quote(settings["page_id"], safe="")
        body = {"status": incident["status"], "body": incident["summary"]}
        if incident.get("severity"):
            body["impact_override"] = levels[incident["severity"]]["statuspage_impact"]
        if settings.get("component_ids"):
            body["component_ids"] = list(settings["component_ids"])
        headers = {"Authorization": "OAuth %s" % settings["api_key"]}
        if action == "create":
            body["name"] = incident.get("title") or incident["summary"]
            status, answer = self._http(base + "/incidents", {"incident": body}, headers=headers)
            try:
                created = json.loads(answer.decode("utf-8"))
                incident["statuspage_incident_id"] = str(created["id"])
            except (ValueError, KeyError, TypeError):
                raise LifecycleError("Statuspage answered HTTP %d without the new incident's id" % status) from None
            return status
        target = base + "/incidents/" + urllib.parse.quote(incident["statuspage_incident_id"], safe="")
        status, _answer = self._http(target, {"incident": body}, method="PATCH", headers=headers)
        return status

    def _email(self, _action, event, incident, levels):
        settings = self.channels["email"]
        message = EmailMessage()
        message["Subject"] = message_line(event, incident, levels, plain=True)[:200]
        message["From"] = settings["sender"]
        message["To"] = ", ".join(settings["recipients"])
        message.set_content(email_body(event, incident, levels))
        with smtplib.SMTP(settings["host"], settings.get("port") or 25, timeout=self.timeout) as client:
            if settings.get("starttls"):
                context = ssl.create_default_context()
                if not self.validate_certs:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                client.starttls(context=context)
            if settings.get("username"):
                client.login(settings["username"], settings.get("password") or "")
            refused = client.send_message(message)
        if refused:
            raise LifecycleError("the relay refused %d of the recipients" % len(refused))
        return 250


def _more_severe(new, old):
    return bool(new and old and SEVERITY_NAMES.index(new) < SEVERITY_NAMES.index(old))


def message_line(event, incident, levels, plain=False):
    """One line saying what changed, for chat and the e-mail subject."""
    bold = "%s" if plain else "*%s*"
    what = {"declare": "declared", "update": "updated", "resolve": "resolved"}.get(event)
    severity = incident.get("severity")
    prefix = "[%s] " % severity if severity else ""
    if event == "outcome":
        last = incident["history"][-1] if incident.get("history") else {}
        ended = "ended ok" if last.get("outcome") == "ok" else "FAILED"
        return "%s%s: %s %s (incident %s)" % (prefix, bold % incident["id"], last.get("playbook") or "a playbook", ended,
                                              incident.get("status") or "not declared")
    line = "%s%s %s: %s" % (prefix, bold % incident["id"], what, incident.get("summary") or "")
    if event == "update" and incident.get("severity_changes") and incident["severity_changes"][-1].get("time") == incident.get("updated"):
        change = incident["severity_changes"][-1]
        line += " (severity %s -> %s)" % (change["from"], change["to"])
    if severity and event == "declare":
        line += " - %s, response target %d min" % (levels[severity]["name"], levels[severity]["response_minutes"])
    return line


def email_body(event, incident, levels):
    lines = [message_line(event, incident, levels, plain=True), ""]
    for key in ("id", "severity", "status", "title", "summary", "detected", "declared", "resolved"):
        if incident.get(key):
            lines.append("%-9s %s" % (key + ":", incident[key]))
    if incident.get("severity"):
        level = levels[incident["severity"]]
        examples = ", ".join(level.get("examples") or [])
        about = (incident["severity"], level["name"], level["meaning"], examples, level["response_minutes"])
        lines += ["", "%s %s: %s (e.g. %s); response target %d min." % about]
    lines += ["", "Sent by %s." % SOURCE]
    return "\n".join(lines) + "\n"


# --- state -----------------------------------------------------------------------------------------------------------

class StateStore:
    """The incident's directory and state file, reached without following a symlink, under a lock."""

    def __init__(self, incident_dir, incident_id):
        check_incident_id(incident_id)
        self.base = incident_dir
        self.directory = os.path.join(incident_dir, incident_id)
        self.path = os.path.join(self.directory, STATE_FILE)
        self.incident_id = incident_id
        self._lock_fd = None

    def _check_not_linked(self):
        try:
            info = _fileio.lstat(self.directory)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(info.st_mode):
            raise _fileio.UnsafePathError(errno.ELOOP, "the incident's directory is a symlink: refusing to follow it", self.directory)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", self.directory)
        return True

    def exists(self):
        """Whether the incident's directory is there (checked safely: a symlink raises)."""
        with contextlib.suppress(FileNotFoundError):
            os.close(_fileio.open_dir(self.base))
            return self._check_not_linked()
        return False

    @contextlib.contextmanager
    def locked(self, create):
        """Hold the incident's lock (its directory created when `create`); without the directory, no lock is needed."""
        if create:
            _fileio.makedirs(self.base, 0o700)
            self._check_not_linked()
            _fileio.makedirs(self.directory, 0o700)
        if not self.exists():
            yield
            return
        fd = _fileio.open_file(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self):
        """The state, or None when there is none. LifecycleError for a file that is not one (it is kept)."""
        if not self.exists():
            return None
        try:
            fd = _fileio.open_file(self.path)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        try:
            state = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise CorruptState("%s is not an incident state (not JSON)" % self.path) from None
        if not isinstance(state, dict) or state.get("id") != self.incident_id or not isinstance(state.get("history"), list):
            raise CorruptState("%s is not the state of incident %s (not an object with its id and history)" % (self.path, self.incident_id))
        return state

    def set_aside(self, now):
        """Move a state file that is not one out of the way (force): it is kept, renamed."""
        with _fileio.parent_dir(self.path) as (dir_fd, name):
            aside = "%s.corrupt-%s" % (name, now.replace(":", ""))
            os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return os.path.join(self.directory, aside)

    def write(self, state):
        _fileio.write_json(self.path, state, mode=0o600)


class CorruptState(LifecycleError):
    pass


# --- the change ------------------------------------------------------------------------------------------------------

def _new_state(incident_id):
    return {"version": STATE_VERSION, "id": incident_id, "severity": None, "severity_changes": [], "status": None,
            "title": None, "summary": None, "detected": None, "declared": None, "resolved": None, "updated": None,
            "statuspage_incident_id": None, "pagerduty_acknowledged": False, "response_target_minutes": None,
            "history": []}


def _metrics(state):
    """Seconds from detection to declaration (MTTD's part) and to resolution, and from declaration to resolution."""
    return {"detect_to_declare_seconds": _seconds_between(state.get("detected"), state.get("declared")),
            "declare_to_resolve_seconds": _seconds_between(state.get("declared"), state.get("resolved")),
            "detect_to_resolve_seconds": _seconds_between(state.get("detected"), state.get("resolved"))}


def _plan_change(state, params, levels, now):
    """(event as applied or None for a join, the new state, warnings) for the requested change, or LifecycleError."""
    event = params["event"]
    severity, status, summary = params.get("severity"), params.get("status"), params.get("summary")
    detected = parse_time(params["detected"], "detected") if params.get("detected") else None
    warnings = []
    declared = state is not None and state.get("declared") is not None
    new = copy.deepcopy(state) if state is not None else _new_state(params["incident_id"])
    if event == "declare":
        if status == "resolved":
            raise LifecycleError("an incident is declared with a status before resolved; resolve it with event=resolve")
        if declared:
            if new.get("resolved"):
                warnings.append("incident %s was resolved at %s: joined, not reopened (declare a new id for a new incident)"
                                % (new["id"], new["resolved"]))
                return None, new, warnings
            if not severity or severity == new["severity"]:
                return None, new, warnings
            event, status = "update", status or new["status"]
        else:
            if not severity:
                raise LifecycleError("declaring an incident needs its severity (%s)" % ", ".join(SEVERITY_NAMES))
            new.update(severity=severity, status=status or "investigating",
                       title=summary or "Incident %s (%s %s)" % (new["id"], severity, levels[severity]["name"]),
                       detected=detected or new.get("detected"), declared=now,
                       response_target_minutes=levels[severity]["response_minutes"])
            new["summary"] = new["title"]
    if event in ("update", "resolve") and not declared:
        raise LifecycleError("incident %s is not declared: declare it first (event=declare with its severity)" % params["incident_id"])
    if event == "update":
        if new.get("resolved"):
            raise LifecycleError("incident %s was resolved at %s; declare a new id for a new incident" % (new["id"], new["resolved"]))
        if status == "resolved":
            raise LifecycleError("an update cannot resolve the incident: use event=resolve (the on-call engineer decides it is over)")
        changes = {}
        if severity and severity != new["severity"]:
            new["severity_changes"].append({"time": now, "from": new["severity"], "to": severity,
                                            "escalation": _more_severe(severity, new["severity"])})
            changes["severity"] = severity
        if status and status != new["status"]:
            changes["status"] = status
        if summary and summary != new["summary"]:
            changes["summary"] = summary
        if detected and detected != new.get("detected"):
            changes["detected"] = detected
        if not changes:
            return None, new, warnings
        new.update(changes)
    if event == "resolve":
        if status and status != "resolved":
            raise LifecycleError("resolve sets the status resolved; status %r contradicts it" % status)
        if new.get("resolved"):
            return None, new, warnings
        new.update(status="resolved", resolved=now, summary=summary or new["summary"])
        if detected:
            new["detected"] = detected
    if event == "outcome":
        if not params.get("outcome"):
            raise LifecycleError("event=outcome needs outcome (%s)" % ", ".join(OUTCOMES))
    new["updated"] = now
    return event, new, warnings


def _history_entry(event, new, params, now):
    entry = {"event": event, "time": now}
    if event == "outcome":
        entry.update(outcome=params["outcome"], playbook=params.get("playbook"))
        if params.get("summary"):
            entry["summary"] = params["summary"]
    else:
        entry.update(severity=new["severity"], status=new["status"], summary=new["summary"])
        if new.get("detected"):
            entry["detected"] = new["detected"]
    return entry


def timeline_events(event, new, entry, notifications):
    """The events the timeline callback records: one for the change, one per notification sent."""
    events = []
    if event == "outcome":
        events.append({"kind": "outcome", "time": entry["time"], "ok": entry["outcome"] == "ok",
                       "summary": "%s ended %s" % (entry.get("playbook") or "a playbook", entry["outcome"])})
    else:
        item = {"kind": TIMELINE_KINDS[event], "time": entry["time"], "summary": new["summary"],
                "severity": new["severity"], "status": new["status"]}
        if new.get("detected"):
            item["detected"] = new["detected"]
        events.append(item)
    for sent in notifications:
        outcome = "HTTP %s" % sent["status"] if sent.get("ok") else "failed: %s" % sent.get("error")
        events.append({"kind": "notification", "time": sent["time"], "channel": sent["channel"], "ok": sent["ok"],
                       "summary": "%s %s: %s" % (sent["channel"], sent["action"], outcome)})
    return events


def apply(params, check_mode=False, now=None):
    """Apply the change `params` asks for (module options). A dict: changed, incident, notifications,
    failed_notifications, timeline_events, warnings and state_file; LifecycleError or OSError when refused."""
    now = utc_text(now or datetime.datetime.now(datetime.timezone.utc))
    if params["event"] not in EVENTS:
        raise LifecycleError("event %r is not one of %s" % (params["event"], ", ".join(EVENTS)))
    check_incident_id(params["incident_id"])
    levels = severity_levels(params.get("severity_levels"))
    timeout = 10 if params.get("timeout") is None else params["timeout"]
    try:
        _page.check_timeout(timeout)
    except _page.PageError as exc:
        raise LifecycleError(str(exc)) from None
    notifier = Notifier(channels_of(params), timeout, params.get("validate_certs", True))
    store = StateStore(params.get("incident_dir") or default_dir(), params["incident_id"])
    result = {"changed": False, "notifications": [], "failed_notifications": 0, "timeline_events": [], "warnings": [],
              "state_file": store.path}

    def read_state():
        """(state or None, why the file there is not one or None)."""
        try:
            return store.read(), None
        except CorruptState as exc:
            if not params.get("force"):
                raise LifecycleError("%s; it is kept as it is (force=true moves it aside and starts the incident anew)" % exc) from None
            return None, exc

    # A refusal comes before anything is created (the directories, the lock); the change is planned again under the
    # lock, on the state as it is then.
    _plan_change(read_state()[0], params, levels, now)
    with store.locked(create=not check_mode and params["event"] in ("declare", "outcome")):
        state, corrupt = read_state()
        if corrupt and check_mode:
            result["warnings"].append("%s; force would move it aside" % corrupt)
        elif corrupt:
            result["warnings"].append("%s; moved aside to %s" % (corrupt, store.set_aside(now)))
        previous = copy.deepcopy(state)
        event, new, warnings = _plan_change(state, params, levels, now)
        result["warnings"] += warnings
        if event is None:
            result["incident"] = _returned(new)
            return result
        entry = _history_entry(event, new, params, now)
        plan = notifier.plan(event, new, previous if previous and previous.get("declared") else None) if params.get("notify", True) else []
        result["changed"] = True
        if check_mode:
            result["notifications"] = [{"channel": channel, "action": action, "time": now, "would_send": True} for channel, action in plan]
            new["history"].append(dict(entry, notifications=result["notifications"]))
            new["metrics"] = _metrics(new)
            result["incident"] = _returned(new)
            return result
        new["history"].append(entry)
        # Sending records in `new` what it learns: the Statuspage incident's id, PagerDuty acknowledged.
        sent = notifier.send(plan, event, new, levels, now)
        entry["notifications"] = sent
        new["metrics"] = _metrics(new)
        store.write(new)
        result.update(notifications=sent, failed_notifications=sum(1 for item in sent if not item["ok"]),
                      timeline_events=timeline_events(event, new, entry, sent), incident=_returned(new))
        for item in sent:
            if not item["ok"]:
                result["warnings"].append("%s %s notification failed (recorded in the incident; the change stands): %s"
                                          % (item["channel"], item["action"], item["error"]))
    return result


def _returned(state):
    """The state as results show it (it holds no secret; a copy, so the caller cannot change what was written)."""
    shown = copy.deepcopy(state)
    shown.setdefault("metrics", _metrics(shown))
    return shown
