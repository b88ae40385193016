# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an incident's timeline renders to. PRIVATE to the collection: no compatibility promise.

- `postmortem.md`: the post-mortem template of the secure-messenger runbook filled with what the runs recorded,
  the post-incident checklist (quicprochat) and the war-room checklist, each item ticked only when the timeline shows
  that a run did it, and the incident's metrics;
- `timeline.html`: one self-contained page (inline CSS, no script, nothing from the network), the runs as a Gantt
  chart, one row (`data-row`) per task and host;
- `<dir>/metrics.json` (_timeline.metrics), across incidents.

render() writes the three; the callback calls it at the end of every run, a person can call it on a directory.
"""
from __future__ import annotations

import html

from ansible_collections.runbooks.incident.plugins.module_utils import _timeline

POSTMORTEM = "postmortem.md"
GANTT = "timeline.html"
TODO = "_to complete_"
UPDATE_GAP_S = 30 * 60


# --- helpers -------------------------------------------------------------------------------------------------------

def inline(value):
    """Markdown text on one line; HTML in it shown as text, not rendered."""
    return " ".join(html.escape(str(value), quote=False).split())


def cell(value):
    """A Markdown table cell: inline(), backslashes and pipes escaped."""
    return inline(str(value).replace("\\", "\\\\")).replace("|", "\\|")


def clock(value):
    """`2026-12-06 07:31:52Z` from a stored time."""
    moment = _timeline.parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "?"


def human(seconds):
    if seconds is None:
        return "n/a"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "%dh %02dmin" % (hours, minutes)
    return "%dmin %02ds" % (minutes, secs) if minutes else "%ds" % secs


def run_label(run):
    operator = run.get("operator") or {}
    who = operator.get("user") or "unknown"
    if operator.get("awx_job_id"):
        who += " (AWX job %s)" % operator["awx_job_id"]
    return "%s (%s, run %s, by %s)" % (run.get("playbook"), run.get("mode"), run.get("run_id"), who)


# --- what the timeline shows ---------------------------------------------------------------------------------------

def timeline_rows(timeline):
    """(time, event) of the post-mortem's table: runs started and ended, failed and unreachable tasks, the collection's
    tasks that changed something, and every event (declared, updates, notifications, journal markers...)."""
    rows = []
    for run in timeline["runs"]:
        rows.append((run.get("start"), "Run started: %s" % run_label(run)))
        for task in run.get("tasks", []):
            where = "%s: %s" % (task.get("host"), task.get("task"))
            if task.get("status") == "failed":
                ignored = " (ignored)" if task.get("ignored") else ""
                rows.append((task.get("end"), "Task failed%s: %s%s" % (ignored, where, " — %s" % task["msg"] if task.get("msg") else "")))
            elif task.get("status") == "unreachable":
                rows.append((task.get("end"), "Host unreachable: %s%s" % (where, " — %s" % task["msg"] if task.get("msg") else "")))
            elif _timeline.changed_by_collection(task):
                verb = "Would change (check mode)" if run.get("mode") == "check" else "Changed"
                rows.append((task.get("end"), "%s: %s (%s)" % (verb, where, task.get("action"))))
        if run.get("end"):
            rows.append((run["end"], "Run ended: %s, outcome %s" % (run_label(run), run.get("outcome"))))
        else:
            rows.append((run.get("start"), "Run %s has no end recorded (interrupted, or still running)" % run.get("run_id")))
    for event in timeline["events"]:
        rows.append((event.get("time"), event_text(event)))
    rows.sort(key=lambda row: str(row[0] or ""))
    return rows


def event_text(event):
    kind = event.get("kind")
    details = [event[key] for key in ("severity", "status") if event.get(key)]
    if kind == "notification":
        state = "sent" if event.get("ok") else "FAILED" if event.get("ok") is False else "attempted"
        head = "Notification %s (%s)" % (state, event.get("channel") or "unknown channel")
    elif kind == "journal":
        head = "Journal marker on %s" % event.get("host")
    else:
        head = {"declared": "Incident declared", "updated": "Incident updated", "resolved": "Incident resolved",
                "outcome": "Outcome recorded", "recovery": "Service recovered"}.get(kind, str(kind))
    suffix = " [%s]" % ", ".join(details) if details else ""
    return "%s%s: %s" % (head, suffix, event.get("summary", ""))


def notified(timeline, channels):
    return [event for event in _timeline.events_of(timeline, "notification") if event.get("ok") is True and event.get("channel") in channels]


def regular_updates(timeline):
    """The declared, updated and resolved (or last) times, when updates came at most every 30 minutes."""
    moments = [event["time"] for event in timeline["events"] if event.get("kind") in ("declared", "updated", "resolved")]
    if not _timeline.events_of(timeline, "updated") or len(moments) < 2:
        return None
    gaps = [_timeline.seconds_between(first, second) for first, second in zip(moments, moments[1:])]
    return moments if all(gap is not None and gap <= UPDATE_GAP_S for gap in gaps) else None


def checklists(timeline):
    """(post-incident checklist, war-room checklist): [(done, item, evidence)]."""
    declared = _timeline.events_of(timeline, "declared")
    resolved = _timeline.events_of(timeline, "resolved")
    statuspage = notified(timeline, ("statuspage",))
    stakeholders = notified(timeline, _timeline.NOTIFY_CHANNELS)
    mitigation = _timeline.mitigating_run(timeline)
    verified = [(run, task) for run in timeline["runs"] if run.get("mode") == "apply" and run.get("outcome") == "ok"
                for task in run.get("tasks", []) if (task.get("results") or {}).get("verified") is True]
    updates = regular_updates(timeline)

    def first(events, what):
        return "%s at %s" % (what, clock(events[0]["time"])) if events else ""

    post_incident = [
        (False, "**Document** the incident: timeline, root cause, resolution steps",
         "the timeline above is recorded by the runs; the root cause is for a person to write"),
        (bool(verified), "**Verify** the service is fully operational (check metrics, test client connections)",
         "%s verified on %s (run %s)" % (verified[0][1]["task"], verified[0][1]["host"], verified[0][0]["run_id"]) if verified else ""),
        (False, "**Review** whether monitoring would have caught this earlier", ""),
        (False, "**Update** alerts and thresholds based on findings", ""),
        (bool(statuspage), "**Communicate** with affected users if there was data exposure or service disruption",
         first(statuspage, "status page updated")),
        (False, "**Schedule** follow-up actions (e.g., add monitoring, improve automation)", ""),
    ]
    war_room = [
        (bool(declared), "Incident logged in tracker", first(declared, "declared")),
        (bool(statuspage), "Status page updated", first(statuspage, "statuspage notification")),
        (bool(stakeholders), "Stakeholders notified",
         "%s notification at %s" % (stakeholders[0].get("channel"), clock(stakeholders[0]["time"])) if stakeholders else ""),
        (bool(timeline["runs"]), "Investigation started",
         "first run at %s" % clock(timeline["runs"][0].get("start")) if timeline["runs"] else ""),
        (bool(updates), "Regular updates (every 15-30 min)", "%d updates, none more than 30 min apart" % len(updates) if updates else ""),
        (bool(mitigation), "Mitigation deployed",
         "apply run %s ended ok at %s" % (mitigation["run_id"], clock(mitigation.get("end"))) if mitigation else ""),
        (bool(resolved), "Resolution confirmed", first(resolved, "resolved")),
        (False, "Post-mortem scheduled", ""),
    ]
    return post_incident, war_room


def measured_impact(timeline):
    """Lines of what the collection's modules measured in apply runs (downtime, durations, row counts)."""
    lines = []
    for run in timeline["runs"]:
        if run.get("mode") != "apply":
            continue
        for task in run.get("tasks", []):
            results = task.get("results") or {}
            for key, what in (("app_downtime_s", "application downtime"), ("downtime_s", "downtime"), ("duration_s", "duration")):
                if isinstance(results.get(key), (int, float)) and not isinstance(results.get(key), bool):
                    lines.append("%s: %.1f s — %s on %s (run %s)" % (what, results[key], task.get("task"), task.get("host"), run["run_id"]))
            if isinstance(results.get("row_counts"), dict):
                total = sum(value for value in results["row_counts"].values() if isinstance(value, int))
                lines.append("rows: %d in %d tables — %s on %s" % (total, len(results["row_counts"]), task.get("task"), task.get("host")))
    return lines


# --- post-mortem ---------------------------------------------------------------------------------------------------

def postmortem(timeline, metrics=None):
    """The post-mortem draft (Markdown) of a timeline; `metrics` is metrics.json's content, if computed."""
    incident_id = timeline["incident_id"]
    declared = _timeline.events_of(timeline, "declared")
    start, end, how = _timeline.duration(timeline)
    span = _timeline.seconds_between(start, end) if start and end else None
    severity = _timeline.severity_of(timeline) or "unknown"
    title = "%s: %s" % (incident_id, inline(declared[0]["summary"])) if declared else "Incident %s" % incident_id
    out = [
        "<!-- Rendered by runbooks.incident from %s/timeline.json: every run of this incident replaces this file. -->" % incident_id,
        "<!-- Edit a copy (e.g. postmortem-final.md), not this file. -->",
        "",
        "# Post-Mortem: %s" % title,
        "",
        "**Date**: %s" % (clock(start)[:10] if start else "unknown"),
        "**Duration**: %s (%s%s)" % (human(span), how, ", %s → %s" % (clock(start), clock(end)) if start and end else ""),
        "**Severity**: %s" % inline(severity),
        "**Impact**: %s" % TODO,
        "",
        "## Summary",
        "",
        "%s Brief description of what happened." % TODO,
        "",
        "## Timeline",
        "",
        "All times UTC, as the runs recorded them.",
        "",
        "| Time | Event |",
        "|------|-------|",
    ]
    out += ["| %s | %s |" % (cell(clock(moment)), cell(what)) for moment, what in timeline_rows(timeline)]
    out += ["", "## Root Cause", "", "%s Detailed explanation of what caused the incident." % TODO, "", "## Resolution", ""]
    steps = [(run, task) for run in timeline["runs"] if run.get("mode") == "apply"
             for task in run.get("tasks", []) if _timeline.is_remediation(task)]
    if steps:
        out.append("What the runs changed (the collection's tasks that changed something, apply mode):")
        out.append("")
        out += ["- %s — %s on %s (%s, run %s)" % (clock(task.get("end")), inline(task.get("task")), inline(task.get("host")),
                                                  task.get("action"), run["run_id"]) for run, task in steps]
    else:
        out.append("No run changed anything through the collection's modules in apply mode. %s" % TODO)
    out += ["", "## Impact", "",
            "- Users affected: %s" % TODO,
            "- Duration: %s (%s)" % (human(span), how),
            "- Data lost: %s" % TODO,
            "- Revenue impact: %s" % TODO]
    out += ["- Measured by the runs: %s" % inline(line) for line in measured_impact(timeline)]
    out += ["", "## Metrics", "", "| Measure | This incident | Mean for severity %s |" % cell(severity), "|---|---|---|"]
    mine = (metrics or {}).get("incidents", {}).get(incident_id) or _timeline.incident_metrics(timeline)
    peers = (metrics or {}).get("by_severity", {}).get(severity if severity != "unknown" else "unknown", {})
    for label, key, mean in (("Time to detect", "time_to_detect_s", "mttd_s"), ("Time to mitigate", "time_to_mitigate_s", "mttm_s"),
                             ("Time to resolve", "time_to_resolve_s", "mttr_s")):
        out.append("| %s | %s | %s |" % (label, human(mine.get(key)), human(peers.get(mean))))
    out += ["", "Measured from %s; mitigated = the end of the first apply run that ended ok and changed something."
            % ("the declaration" if mine.get("measured_from") == "declared" else "the first run (no declared event)")]
    out += ["", "## Action Items", "",
            "- [ ] Fix XYZ (Owner: %s, Due: %s)" % (TODO, TODO),
            "- [ ] Improve monitoring for ABC (Owner: %s)" % TODO,
            "- [ ] Update runbook with learnings (Owner: %s)" % TODO,
            "- [ ] Add tests to prevent recurrence (Owner: %s)" % TODO,
            "", "## Lessons Learned", "",
            "What went well:", "- %s" % TODO, "",
            "What could be improved:", "- %s" % TODO]
    post_incident, war_room = checklists(timeline)
    out += ["", "## Post-Incident Checklist", "", "Ticked only where the timeline shows a run did it.", ""]
    out += ["%d. [%s] %s%s" % (number, "x" if done else " ", item, " — %s" % inline(evidence) if evidence else "")
            for number, (done, item, evidence) in enumerate(post_incident, 1)]
    out += ["", "## War Room Checklist", ""]
    out += ["- [%s] %s%s" % ("x" if done else " ", item, " — %s" % inline(evidence) if evidence else "") for done, item, evidence in war_room]
    out += ["", "## Follow-up", "", "Next review: %s" % TODO, ""]
    return "\n".join(out)


# --- Gantt chart ---------------------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.3em}h2{font-size:1.05em;margin:1.4em 0 .4em;padding-top:.6em;border-top:3px solid #444}
.run.check h2{border-top-style:dashed;border-color:#888}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:1.2em;height:.8em;margin-right:.3em;vertical-align:middle}
.row{display:flex;align-items:center;height:20px;border-bottom:1px solid #eee;font-size:12px}
.label{width:34%;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;padding-right:.5em}
.track{position:relative;flex:1;height:14px;background:#f6f6f6}
.bar{position:absolute;top:0;height:14px;min-width:3px;border-radius:2px}
.mark{width:1.5em;text-align:center;font-weight:bold}
.ok{background:#4caf50}.changed{background:#ff9800}.failed{background:#e53935}.skipped{background:#bdbdbd}
.unreachable{background:#6a1b9a}.censored{background:repeating-linear-gradient(45deg,#999,#999 3px,#ddd 3px,#ddd 6px)}
table.events{border-collapse:collapse;font-size:12px;margin-top:.5em}table.events td{border-bottom:1px solid #eee;padding:2px 8px}
"""
MARKS = {"ok": "✓", "changed": "Δ", "failed": "✗", "skipped": "–", "unreachable": "⊘"}


def _position(run, task):
    start, end = run.get("start"), run.get("end") or max((t.get("end") or "" for t in run.get("tasks", [])), default=None)
    total = _timeline.seconds_between(start, end) or 0.0
    offset = _timeline.seconds_between(start, task.get("start")) or 0.0
    length = _timeline.seconds_between(task.get("start"), task.get("end")) or 0.0
    if total <= 0:
        return 0.0, 100.0
    left = min(max(offset / total * 100, 0.0), 100.0)
    return left, min(max(length / total * 100, 0.2), 100.0 - left)


def gantt(timeline):
    """The self-contained HTML page of a timeline's runs."""
    esc = html.escape
    incident_id = timeline["incident_id"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>Timeline of incident %s</title>" % esc(incident_id), "<style>%s</style></head><body>" % STYLE,
           "<h1>Timeline of incident %s</h1>" % esc(incident_id),
           '<p class="legend">' + "".join('<span><i class="%s"></i>%s %s</span>' % (status, MARKS.get(status, ""), status)
                                          for status in _timeline.STATUSES + ("censored",)) + "</p>",
           "<p>Times UTC. Each run is drawn on its own scale, from its start to its end.</p>"]
    number = 0
    for run in timeline["runs"]:
        out.append('<section class="run %s" data-run="%s" data-mode="%s">' % (esc(str(run.get("mode"))), esc(run["run_id"]), esc(str(run.get("mode")))))
        out.append("<h2>%s — %s mode — %s → %s — outcome %s</h2>" % (
            esc(str(run.get("playbook"))), esc(str(run.get("mode"))), esc(clock(run.get("start"))),
            esc(clock(run.get("end")) if run.get("end") else "no end recorded"), esc(str(run.get("outcome")))))
        for task in run.get("tasks", []):
            number += 1
            status = task.get("status") if task.get("status") in _timeline.STATUSES else "ok"
            style = "censored" if task.get("censored") else status
            left, width = _position(run, task)
            title = "%s · %s (%s) %s → %s: %s%s%s" % (
                task.get("host"), task.get("task"), task.get("action"), clock(task.get("start")), clock(task.get("end")), status,
                " (ignored)" if task.get("ignored") else "", " — %s" % task["msg"] if task.get("msg") else "")
            out.append('<div class="row" data-row="%d" data-status="%s" title="%s"><span class="mark">%s</span>'
                       '<span class="label">%s · %s</span><span class="track"><span class="bar %s" style="left:%.2f%%;width:%.2f%%">'
                       "</span></span></div>" % (number, esc(status), esc(title), esc(MARKS[status]), esc(str(task.get("host"))),
                                                 esc(str(task.get("task"))), esc(style), left, width))
        out.append("</section>")
    if timeline["events"]:
        out.append('<h2>Events</h2><table class="events">')
        out += ["<tr><td>%s</td><td>%s</td></tr>" % (esc(clock(event.get("time"))), esc(event_text(event))) for event in timeline["events"]]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- files ---------------------------------------------------------------------------------------------------------

def write_at(base_fd, incident_fd, timeline):
    """Write the incident's postmortem.md and timeline.html and the base's metrics.json (descriptors from
    _timeline.incident_dir; the caller holds the incident's lock)."""
    metrics = _timeline.write_metrics_at(base_fd)
    _timeline.write_text_at(incident_fd, POSTMORTEM, postmortem(timeline, metrics))
    _timeline.write_text_at(incident_fd, GANTT, gantt(timeline))


def render(base, incident_id):
    """Render an incident's post-mortem, Gantt chart and the directory's metrics from its stored timeline (for a
    person: after editing nothing, after copying a timeline from elsewhere). Returns False when there is none."""
    with _timeline.incident_dir(base, incident_id, create=False) as (base_fd, fd):
        with _timeline.locked(fd, _timeline.LOCK):
            data = _timeline.read_json_at(fd, _timeline.TIMELINE)
            if not _timeline.is_timeline(data, incident_id):
                return False
            write_at(base_fd, fd, data)
    return True
