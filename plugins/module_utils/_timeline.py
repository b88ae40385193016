# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An incident's timeline as the runs themselves recorded it. PRIVATE to the collection: no compatibility promise.

The callback `runbooks.incident.timeline` feeds a Run with what Ansible reports; this module decides what is kept and
stores it. `<dir>/<incident id>/timeline.json`:

    {"format": 1, "incident_id": ..., "runs": [run, ...], "events": [event, ...]}

A run: run_id, playbook, mode (check/apply), severity, operator, start, end, outcome (running/ok/failed), hosts
(Ansible's per-host stats), tasks: one record per task and host (play, task, action, host, start, end, status,
and ignored, msg, results, items, censored when they apply). An event: run_id, kind, summary, time, and host, task,
severity, status, channel, ok, detected when given. Times are UTC ISO 8601 with a Z.

Nothing secret is kept: never a task's arguments or registered variables; results only from the collection's own
modules and only for the keys in KEY_RESULTS, scalars or small collections of scalars; a no_log task is recorded as
censored, without results, message or events.

Several runs of one incident (a dry run, the real run, a retry) share the file: each write takes a lock in the
incident's directory, reads the file again, replaces its own run and events (by run id) and writes it atomically
(0600, directories 0700). The incident's directory is never a symlink. A file that does not parse as a timeline is
moved aside (timeline.json.corrupt-<stamp>), never overwritten.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import stat

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

FORMAT = 1
TIMELINE = "timeline.json"
LOCK = ".timeline.lock"
METRICS = "metrics.json"
METRICS_LOCK = ".metrics.lock"
NAMESPACE = "runbooks.incident."
JOURNAL_ACTIONS = frozenset(["community.general.syslogger"])
INCIDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SEVERITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")
STATUSES = ("ok", "changed", "failed", "skipped", "unreachable")
EVENT_KINDS = ("declared", "updated", "resolved", "outcome", "notification", "recovery")
NOTIFY_CHANNELS = ("slack", "email", "pagerduty")
# Result keys of the collection's modules (their RETURN blocks) that are never secret: durations, verdicts, names of
# kept databases and copies, fingerprints (never the value), counts. `timeline_events` is read apart (events).
KEY_RESULTS = frozenset([
    "app_downtime_s", "downtime_s", "duration_s", "verified", "previous_db", "db", "dropped", "copy", "kept",
    "fingerprint", "previous_fingerprint", "replaced_fingerprint", "row_counts", "counts", "count", "rows",
    "revoked", "restarted", "renewed", "pushed", "signed", "steps", "ok", "cause", "problems_total", "checked",
    "files_transferred", "bytes_uploaded", "shares", "threshold", "rotated_at", "change_id", "mismatches",
    "outcome", "restored", "rotated", "backup", "changed", "rto_s", "rpo_s", "step_durations", "backup_time",
])
MAX_TEXT = 300
MAX_SUMMARY = 500
MAX_NAME = 200
MAX_COLLECTION = 20
MAX_EVENTS = 50
MAX_ITEM_RESULTS = 10
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TimelineError(Exception):
    """A timeline that cannot be written (the incident's directory refused)."""


# --- values --------------------------------------------------------------------------------------------------------

def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(moment):
    """UTC ISO 8601 with milliseconds and a Z."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(value):
    """A timezone-aware datetime from an ISO 8601 string (naive = UTC), or None."""
    if not isinstance(value, str) or not value or len(value) > 40:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def normal_time(value):
    """`value` as stamp() writes it, or None when it is not a time."""
    moment = parse_time(value)
    return stamp(moment) if moment else None


def seconds_between(start, end):
    first, last = parse_time(start), parse_time(end)
    return round((last - first).total_seconds(), 3) if first and last else None


def valid_incident_id(value):
    return isinstance(value, str) and INCIDENT_ID.fullmatch(value) is not None


def valid_severity(value):
    return isinstance(value, str) and SEVERITY.fullmatch(value) is not None


def new_run_id(moment=None):
    return (moment or utc_now()).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def text(value, limit=MAX_TEXT):
    """A string of at most `limit` characters, control characters (but newlines and tabs) removed."""
    value = CONTROL.sub("", str(value))
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _scalar(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return text(value, MAX_NAME)
    raise ValueError("not a scalar")


def bounded(value):
    """A scalar, or a list or dict of at most MAX_COLLECTION scalars; anything else raises ValueError."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_COLLECTION:
            raise ValueError("too long")
        return [_scalar(item) for item in value]
    if isinstance(value, dict):
        if len(value) > MAX_COLLECTION:
            raise ValueError("too long")
        return {text(key, MAX_NAME): _scalar(item) for key, item in value.items()}
    return _scalar(value)


def key_results(action, result):
    """The whitelisted results of one of the collection's modules (others: none)."""
    if not isinstance(action, str) or not action.startswith(NAMESPACE) or not isinstance(result, dict):
        return {}
    kept = {}
    for key in sorted(KEY_RESULTS.intersection(result)):
        with contextlib.suppress(ValueError):
            kept[key] = bounded(result[key])
    return kept


def failure_message(result):
    """The short message of a failed or unreachable result (the first failed item's in a loop)."""
    if not isinstance(result, dict):
        return None
    msg = result.get("msg")
    if not msg:
        for item in result.get("results") or []:
            if isinstance(item, dict) and item.get("failed") and item.get("msg"):
                msg = item["msg"]
                break
    return text(msg) if msg else None


def censored(result):
    """Whether Ansible hid this result (no_log), or any of its items."""
    if not isinstance(result, dict):
        return False
    if result.get("_ansible_no_log") or "censored" in result:
        return True
    return any(isinstance(item, dict) and (item.get("_ansible_no_log") or "censored" in item) for item in result.get("results") or [])


def module_events(action, result, at, run_id, host, task):
    """The `timeline_events` a module of the collection returned (in a loop: each item's), validated."""
    if not isinstance(action, str) or not action.startswith(NAMESPACE) or not isinstance(result, dict):
        return []
    raw = list(result.get("timeline_events") or []) if isinstance(result.get("timeline_events"), list) else []
    for item in result.get("results") or []:
        if isinstance(item, dict) and isinstance(item.get("timeline_events"), list):
            raw.extend(item["timeline_events"])
    events = []
    for entry in raw[:MAX_EVENTS]:
        event = event_from(entry, at, run_id, host, task)
        if event:
            events.append(event)
    return events


def event_from(entry, at, run_id, host=None, task=None):
    """A valid event from a module's dict (unknown keys dropped, strings bounded), or None."""
    if not isinstance(entry, dict) or entry.get("kind") not in EVENT_KINDS or not isinstance(entry.get("summary"), str):
        return None
    event = {"run_id": run_id, "kind": entry["kind"], "summary": text(entry["summary"], MAX_SUMMARY),
             "time": normal_time(entry.get("time")) or at}
    for key in ("severity", "status", "channel"):
        if isinstance(entry.get(key), str) and entry[key]:
            event[key] = text(entry[key], 32)
    if isinstance(entry.get("ok"), bool):
        event["ok"] = entry["ok"]
    if normal_time(entry.get("detected")):
        event["detected"] = normal_time(entry["detected"])
    if normal_time(entry.get("backup_time")):
        event["backup_time"] = normal_time(entry["backup_time"])
    for key in ("rto_s", "rpo_s"):  # a recovery's times (recovery_report)
        if isinstance(entry.get(key), (int, float)) and not isinstance(entry[key], bool):
            event[key] = entry[key]
    if host:
        event["host"] = text(host, MAX_NAME)
    if task:
        event["task"] = text(task, MAX_NAME)
    return event


def journal_event(message, at, run_id, host, task):
    return {"run_id": run_id, "kind": "journal", "summary": text(message, MAX_SUMMARY), "time": at,
            "host": text(host, MAX_NAME), "task": text(task, MAX_NAME)}


def item_counts(result):
    """{total, ok, changed, failed, skipped} of a loop's items, or None for a task without a loop."""
    items = result.get("results") if isinstance(result, dict) else None
    if not isinstance(items, list):
        return None
    counts = {"total": len(items), "ok": 0, "changed": 0, "failed": 0, "skipped": 0}
    for item in items:
        if not isinstance(item, dict):
            counts["ok"] += 1
        elif item.get("failed"):
            counts["failed"] += 1
        elif item.get("skipped"):
            counts["skipped"] += 1
        elif item.get("changed"):
            counts["changed"] += 1
        else:
            counts["ok"] += 1
    return counts


# --- a run ---------------------------------------------------------------------------------------------------------

class Run:
    """One playbook run of an incident, as the callback reports it (no Ansible objects here)."""

    def __init__(self, incident_id, playbook, mode, operator, severity=None, start=None, run_id=None):
        moment = start or utc_now()
        self.incident_id = incident_id
        self.data = {"run_id": run_id or new_run_id(moment), "playbook": text(playbook, MAX_NAME), "mode": mode,
                     "severity": severity, "operator": operator, "start": stamp(moment), "end": None,
                     "outcome": "running", "hosts": {}, "tasks": []}
        self.events = []
        self._task_starts = {}
        self._host_starts = {}

    @property
    def run_id(self):
        return self.data["run_id"]

    def task_started(self, task_key, moment=None):
        self._task_starts[task_key] = stamp(moment or utc_now())

    def host_started(self, task_key, host, moment=None):
        self._host_starts[(task_key, host)] = stamp(moment or utc_now())

    def host_done(self, task_key, host, status, *, play, task, action, result, no_log=False, ignored=False,
                  journal_message=None, moment=None):
        """Record one task's result on one host; returns the record."""
        end = stamp(moment or utc_now())
        start = self._host_starts.pop((task_key, host), None) or self._task_starts.get(task_key) or end
        record = {"play": text(play or "", MAX_NAME), "task": text(task or action or "", MAX_NAME),
                  "action": text(action or "", MAX_NAME), "host": text(host, MAX_NAME), "start": start, "end": end,
                  "status": status}
        if no_log or censored(result):
            record["censored"] = True
            self.data["tasks"].append(record)
            return record
        if ignored:
            record["ignored"] = True
        if status in ("failed", "unreachable"):
            msg = failure_message(result)
            if msg:
                record["msg"] = msg
        counts = item_counts(result)
        if counts:
            record["items"] = counts
            per_item = [key_results(action, item) for item in result["results"] if isinstance(item, dict)]
            per_item = [kept for kept in per_item if kept]
            if per_item:
                record["item_results"] = per_item[:MAX_ITEM_RESULTS]
        else:
            kept = key_results(action, result)
            if kept:
                record["results"] = kept
        self.data["tasks"].append(record)
        if status in ("ok", "changed"):
            self.events.extend(module_events(action, result, end, self.run_id, host, record["task"]))
            if journal_message and action in JOURNAL_ACTIONS:
                self.events.append(journal_event(journal_message, end, self.run_id, host, record["task"]))
        return record

    def finish_without_stats(self, moment=None):
        """The run ended before Ansible's stats (the next playbook of one ansible-playbook command began): the outcome
        from its records, failed when a task failed (not ignored) or a host was unreachable."""
        self.data["end"] = stamp(moment or utc_now())
        failed = any(task["status"] == "unreachable" or (task["status"] == "failed" and not task.get("ignored")) for task in self.data["tasks"])
        self.data["outcome"] = "failed" if failed else "ok"

    def finish(self, host_stats, moment=None):
        """The run ended: per-host stats ({host: {ok, changed, failures, unreachable, ...}}) decide the outcome."""
        self.data["end"] = stamp(moment or utc_now())
        self.data["hosts"] = {text(host, MAX_NAME): {key: int(value) for key, value in counts.items() if isinstance(value, int)}
                              for host, counts in host_stats.items()}
        failed = any(counts.get("failures") or counts.get("unreachable") for counts in self.data["hosts"].values())
        self.data["outcome"] = "failed" if failed else "ok"


# --- storage -------------------------------------------------------------------------------------------------------

def empty(incident_id):
    return {"format": FORMAT, "incident_id": incident_id, "runs": [], "events": []}


def is_timeline(data, incident_id):
    return (isinstance(data, dict) and data.get("format") == FORMAT and data.get("incident_id") == incident_id
            and isinstance(data.get("runs"), list) and isinstance(data.get("events"), list)
            and all(isinstance(run, dict) and isinstance(run.get("run_id"), str) for run in data["runs"])
            and all(isinstance(event, dict) for event in data["events"]))


def merge(timeline, run, events):
    """`timeline` with `run` (a run's dict) and its `events` in place of what it held of that run id."""
    run_id = run["run_id"]
    runs = [other for other in timeline["runs"] if other.get("run_id") != run_id] + [run]
    kept = [event for event in timeline["events"] if event.get("run_id") != run_id] + list(events)
    runs.sort(key=lambda other: (str(other.get("start") or ""), other["run_id"]))
    kept.sort(key=lambda event: str(event.get("time") or ""))
    return dict(timeline, runs=runs, events=kept)


@contextlib.contextmanager
def incident_dir(base, incident_id, create=True):
    """(base descriptor, incident descriptor) of `<base>/<incident_id>`: the base reached safely (_fileio), the
    incident's own directory never a symlink; created (0700) when missing with `create`."""
    if not valid_incident_id(incident_id):
        raise TimelineError("incident id %r is not letters, digits and ._:- (at most 64)" % (incident_id,))
    mode = 0o700 if create else None
    base_fd = _fileio.open_dir(os.path.abspath(base), create_mode=mode)
    try:
        fd = _fileio.subdir(base_fd, incident_id, create_mode=mode)
        try:
            yield base_fd, fd
        finally:
            os.close(fd)
    finally:
        os.close(base_fd)


@contextlib.contextmanager
def locked(dir_fd, name):
    """An exclusive flock on the file `name` in the directory of `dir_fd` (created 0600, never a symlink)."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_json_at(dir_fd, name):
    """The parsed JSON of the regular file `name` (never through a symlink); None when there is none. Raises
    ValueError when it does not parse."""
    try:
        fd = os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _fileio.UnsafePathError(errno.ELOOP, "is a symlink: refusing to follow it", name) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _fileio.UnsafePathError(errno.EINVAL, "not a regular file", name)
        return json.loads(handle.read().decode("utf-8"))


def write_json_at(dir_fd, name, data):
    with _fileio.atomic_writer_at(dir_fd, name, 0o600) as handle:
        handle.write((json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def write_text_at(dir_fd, name, content):
    with _fileio.atomic_writer_at(dir_fd, name, 0o600) as handle:
        handle.write(content.encode("utf-8"))


def read_timeline_at(dir_fd, incident_id, warn=None):
    """The incident's timeline (held under the lock); a file that is not one is moved aside with a warning."""
    try:
        data = read_json_at(dir_fd, TIMELINE)
    except (ValueError, UnicodeDecodeError):
        data = False
    if data is None:
        return empty(incident_id)
    if data is not False and is_timeline(data, incident_id):
        return data
    aside = "%s.corrupt-%s" % (TIMELINE, utc_now().strftime("%Y%m%dT%H%M%S%fZ"))
    os.rename(TIMELINE, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if warn:
        warn("the timeline of incident %s was not a timeline this version reads: moved aside to %s, a new one begins"
             % (incident_id, aside))
    return empty(incident_id)


def save_run(base, run, warn=None, after=None):
    """Merge `run` (a Run) into its incident's timeline under the lock; `after(base_fd, incident_fd, timeline)` is
    called still under the lock (the renderers). Returns the merged timeline."""
    with incident_dir(base, run.incident_id) as (base_fd, fd):
        with locked(fd, LOCK):
            timeline = merge(read_timeline_at(fd, run.incident_id, warn), run.data, run.events)
            write_json_at(fd, TIMELINE, timeline)
            if after:
                after(base_fd, fd, timeline)
    return timeline


def load(base, incident_id):
    """The incident's timeline as stored (read under its lock; None when there is none)."""
    with incident_dir(base, incident_id, create=False) as (_base_fd, fd):
        with locked(fd, LOCK):
            data = read_json_at(fd, TIMELINE)
    return data if is_timeline(data, incident_id) else None


# --- what the timeline says ----------------------------------------------------------------------------------------

# The collection's bookkeeping: what they change is the run's own record (the incident, a step done, the lock, the
# evidence chain, the evidence collected), never the service, so they mitigate nothing.
BOOKKEEPING = frozenset(NAMESPACE + name for name in ("incident_lifecycle", "incident_steps", "run_lock", "evidence_log",
                                                      "evidence_bundle"))


def changed_by_collection(record):
    """A task of the collection that changed something (or would, in check mode)."""
    return record.get("status") == "changed" and str(record.get("action", "")).startswith(NAMESPACE) and not record.get("censored")


def is_remediation(record):
    """A task of the collection that changed something on the service, not only its bookkeeping."""
    return changed_by_collection(record) and record.get("action") not in BOOKKEEPING


def mitigating_run(timeline):
    """The first apply run that ended ok and changed something through the collection's modules, or None."""
    for run in timeline["runs"]:
        if run.get("mode") == "apply" and run.get("outcome") == "ok" and any(is_remediation(task) for task in run.get("tasks", [])):
            return run
    return None


def events_of(timeline, kind):
    return [event for event in timeline["events"] if event.get("kind") == kind]


def severity_of(timeline):
    """The declared severity, else the last one an event or a run gave; None when none did."""
    for event in events_of(timeline, "declared"):
        if event.get("severity"):
            return event["severity"]
    found = None
    for event in timeline["events"]:
        found = event.get("severity") or found
    for run in timeline["runs"]:
        found = run.get("severity") or found
    return found


def duration(timeline):
    """(start, end, how): declared → resolved when the events say so, else first run start → last run end."""
    declared, resolved = events_of(timeline, "declared"), events_of(timeline, "resolved")
    if declared and resolved:
        return declared[0]["time"], resolved[-1]["time"], "declared to resolved"
    runs = timeline["runs"]
    if not runs:
        return None, None, "no run recorded"
    ends = [run["end"] for run in runs if run.get("end")]
    return runs[0].get("start"), max(ends) if ends else None, "first run start to last run end: no declared and resolved events"


def incident_metrics(timeline):
    """Severity, declared, detected, mitigated, resolved and the times between them (seconds) of one incident."""
    declared, resolved = events_of(timeline, "declared"), events_of(timeline, "resolved")
    first_run = timeline["runs"][0].get("start") if timeline["runs"] else None
    start = declared[0]["time"] if declared else first_run
    detected = next((event["detected"] for event in declared if event.get("detected")), None)
    mitigation = mitigating_run(timeline)
    mitigated = mitigation.get("end") if mitigation else None
    resolved_at = resolved[-1]["time"] if resolved else None
    return {
        "severity": severity_of(timeline), "declared": declared[0]["time"] if declared else None, "detected": detected,
        "first_run": first_run, "mitigated": mitigated, "resolved": resolved_at,
        "measured_from": "declared" if declared else "first_run",
        "time_to_detect_s": seconds_between(detected, declared[0]["time"]) if detected and declared else None,
        "time_to_mitigate_s": seconds_between(start, mitigated) if mitigated else None,
        "time_to_resolve_s": seconds_between(start, resolved_at) if resolved_at else None,
        "runs": len(timeline["runs"]),
    }


def _mean(values):
    values = [value for value in values if value is not None]
    return round(sum(values) / len(values), 3) if values else None


def metrics(timelines):
    """metrics.json from {incident id: timeline}: per incident, and mean times (MTTD, MTTM, MTTR) per severity."""
    incidents = {incident_id: incident_metrics(timeline) for incident_id, timeline in sorted(timelines.items())}
    by_severity = {}
    for found in incidents.values():
        by_severity.setdefault(found["severity"] or "unknown", []).append(found)
    aggregate = {}
    for severity, group in sorted(by_severity.items()):
        aggregate[severity] = {
            "incidents": len(group),
            "mttd_s": _mean(found["time_to_detect_s"] for found in group),
            "mttm_s": _mean(found["time_to_mitigate_s"] for found in group),
            "mttr_s": _mean(found["time_to_resolve_s"] for found in group),
            "mitigated": sum(1 for found in group if found["time_to_mitigate_s"] is not None),
            "resolved": sum(1 for found in group if found["time_to_resolve_s"] is not None),
        }
    return {"format": FORMAT, "generated": stamp(utc_now()), "incidents": incidents, "by_severity": aggregate}


def read_all_at(base_fd):
    """{incident id: timeline} of every incident directory under the base (symlinks and non-timelines skipped).

    Read without their locks: a timeline is replaced by a rename, so a read sees a whole one, and a run that holds
    its incident's lock while it updates the metrics must not wait for another incident's lock (nor deadlock)."""
    found = {}
    for name in sorted(_fileio.listdir_at(base_fd)):
        if not valid_incident_id(name):
            continue
        try:
            fd = _fileio.subdir(base_fd, name)
        except OSError:
            continue
        try:
            data = read_json_at(fd, TIMELINE)
        except (OSError, ValueError, UnicodeDecodeError):
            data = None
        finally:
            os.close(fd)
        if is_timeline(data, name):
            found[name] = data
    return found


def write_metrics_at(base_fd):
    """Recompute `<base>/metrics.json` from every timeline under the base's lock; returns it."""
    with locked(base_fd, METRICS_LOCK):
        data = metrics(read_all_at(base_fd))
        write_json_at(base_fd, METRICS, data)
    return data
