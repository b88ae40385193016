# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The recovery report of a re-bootstrapped host: how long each step took, the recovery time (start to verified), and
the data loss the restored backup bounds. PRIVATE to the collection: no compatibility promise.

A step is timed from the mark before it: marks are (step, UTC time) in order, the first one the start. The data
lost is what was written after the restored dump's snapshot (its manifest's `started_at`): `rpo_s` is from then to
the start of the recovery, an upper bound (the host died in between).

Standard library, _timeline (the timeline's reading of times) and _postmortem (its way of writing durations); no
Ansible imports.
"""
from __future__ import annotations

import datetime
import math
import re

from ansible_collections.runbooks.incident.plugins.module_utils import _postmortem, _timeline

# A backup set's stamp (its name), when no manifest gives the snapshot's time.
BACKUP_STAMP = "%Y-%m-%dT%H%M%SZ"
# strptime alone would also take fewer digits ("T1234Z" as 12:03:04): only the stamp's exact shape is one.
BACKUP_STAMP_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{6}Z")


class ReportError(ValueError):
    """Marks or times that cannot make a report."""


def parse_time(value, what):
    """An aware UTC datetime from ISO 8601 (naive means UTC, as in the timeline) or a backup stamp
    (YYYY-MM-DDTHHMMSSZ)."""
    text = value.strip() if isinstance(value, str) else ""
    if BACKUP_STAMP_SHAPE.fullmatch(text):
        try:
            return datetime.datetime.strptime(text, BACKUP_STAMP).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise ReportError("%s is not a time: %r" % (what, value)) from None
    moment = _timeline.parse_time(text)
    if moment is None:
        raise ReportError("%s is not an ISO 8601 time: %r" % (what, value))
    try:
        return moment.astimezone(datetime.timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise ReportError("%s is out of range: %r" % (what, value)) from None


def report(marks, backup_time=None, goal_s=None):
    """The report of `marks` [{step, at}] (the first is the start, the last the end of verification)."""
    if goal_s is not None and not (math.isfinite(goal_s) and goal_s > 0):  # nan and inf cannot be written as a duration
        raise ReportError("goal_s must be more than 0 seconds, not %s" % goal_s)
    if not isinstance(marks, list) or len(marks) < 2:
        raise ReportError("a report needs the start and at least one step's end (marks: %d)" % (len(marks) if isinstance(marks, list) else 0))
    times = []
    for index, mark in enumerate(marks):
        if not isinstance(mark, dict) or not isinstance(mark.get("step"), str) or not mark["step"]:
            raise ReportError("mark %d has no step name" % (index + 1))
        times.append((mark["step"], parse_time(mark.get("at"), "the time of mark %r" % mark["step"])))
    steps = []
    for (_name, before), (name, at) in zip(times, times[1:]):
        if at < before:
            raise ReportError("mark %r is earlier than the one before it" % name)
        steps.append(dict(step=name, duration_s=round((at - before).total_seconds(), 1)))
    started, ended = times[0][1], times[-1][1]
    rto_s = round((ended - started).total_seconds(), 1)
    result = dict(rto_s=rto_s, started=_iso(started), verified=_iso(ended), steps=steps,
                  step_durations={step["step"]: step["duration_s"] for step in steps})
    lines = ["Recovery time (RTO): %s, from %s to verified at %s." % (_postmortem.human(rto_s), _iso(started), _iso(ended))]
    lines += ["  %-28s %s" % (step["step"], _postmortem.human(step["duration_s"])) for step in steps]
    if goal_s is not None:
        result["within_goal"] = rto_s <= goal_s
        lines.append("Goal %s: %s." % (_postmortem.human(goal_s), "met" if result["within_goal"] else "missed by %s" % _postmortem.human(rto_s - goal_s)))
    if backup_time:
        snapshot = parse_time(backup_time, "the backup's time")
        result.update(backup_time=_iso(snapshot), rpo_s=round(max((started - snapshot).total_seconds(), 0.0), 1))
        lines.append("Data restored as of %s: what was written after it is lost (at most %s before this recovery began)."
                     % (_iso(snapshot), _postmortem.human(result["rpo_s"])))
    else:
        lines.append("No backup was restored: the service starts without its earlier data.")
    result["lines"] = lines
    summary = "Recovered in %s (RTO)%s" % (
        _postmortem.human(rto_s), "; data as of %s" % result["backup_time"] if backup_time else "; no data restored")
    result["summary"] = summary + ". " + ", ".join("%s %s" % (step["step"], _postmortem.human(step["duration_s"])) for step in steps)
    return result


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
