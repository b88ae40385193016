# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.recovery_report and _recovery: a host's recovery timed step by step (RTO) from marks as a
playbook writes them with now(utc=true), the data loss its backup bounds (RPO) from the backup's time in any of the
shapes it comes in, refusals of marks that cannot make a report, and the report as the timeline keeps it and the
post-mortem shows it."""
from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _postmortem, _recovery, _timeline

# As `now(utc=true, fmt='%Y-%m-%dT%H:%M:%S.%fZ')` writes them: microseconds and a Z.
MARKS = [
    {"step": "start", "at": "2026-12-06T03:10:00.123456Z"},
    {"step": "deployed", "at": "2026-12-06T03:12:10.323456Z"},      # 130.2 s
    {"step": "data restored", "at": "2026-12-06T03:13:40.323456Z"},  # 90.0 s
    {"step": "verified", "at": "2026-12-06T03:14:02.123456Z"},       # 21.8 s; 242.0 s in all
]
# The snapshot 39m56.123456s before the start, in the three shapes a playbook may have it in.
BACKUP_TIMES = ["2026-12-06T02:30:04Z", "2026-12-06T03:30:04+01:00", "2026-12-06T023004Z"]
AT = "2026-12-06T03:15:00.000Z"


def utc(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc)


def report(run_module, **params):
    return run_module("recovery_report", dict(dict(marks=MARKS), **params))


# --- the report ----------------------------------------------------------------------------------------------------

def test_a_realistic_recovery_is_timed_step_by_step(run_module):
    result = report(run_module, backup_time=BACKUP_TIMES[0], goal_s=300)
    assert not result.get("failed") and result["changed"] is False, result
    assert result["rto_s"] == 242.0
    assert result["step_durations"] == {"deployed": 130.2, "data restored": 90.0, "verified": 21.8}
    assert result["steps"] == [{"step": "deployed", "duration_s": 130.2}, {"step": "data restored", "duration_s": 90.0},
                               {"step": "verified", "duration_s": 21.8}]
    assert result["started"] == "2026-12-06T03:10:00Z" and result["verified"] == "2026-12-06T03:14:02Z"
    assert result["within_goal"] is True
    lines = result["lines"]
    assert lines[0] == "Recovery time (RTO): 4min 02s, from 2026-12-06T03:10:00Z to verified at 2026-12-06T03:14:02Z."
    assert result["msg"] == lines[0]
    for step, shown in (("deployed", "2min 10s"), ("data restored", "1min 30s"), ("verified", "22s")):
        assert [line for line in lines if line.strip().startswith(step) and line.rstrip().endswith(shown)], (step, lines)
    assert "Goal 5min 00s: met." in lines
    assert lines[-1] == ("Data restored as of 2026-12-06T02:30:04Z: what was written after it is lost "
                         "(at most 39min 56s before this recovery began).")
    assert result["summary"] == ("Recovered in 4min 02s (RTO); data as of 2026-12-06T02:30:04Z. "
                                 "deployed 2min 10s, data restored 1min 30s, verified 22s")


def test_a_missed_goal_says_by_how_much(run_module):
    result = report(run_module, goal_s=200)
    assert result["within_goal"] is False
    assert "Goal 3min 20s: missed by 42s." in result["lines"]
    assert "Goal 4min 02s: met." in report(run_module, goal_s=242)["lines"]  # reached exactly is met
    assert "within_goal" not in report(run_module)


@pytest.mark.parametrize("backup_time", BACKUP_TIMES)
def test_the_data_loss_is_from_the_snapshot_to_the_start(run_module, backup_time):
    result = report(run_module, backup_time=backup_time)
    assert result["rpo_s"] == 2396.1 and result["backup_time"] == "2026-12-06T02:30:04Z"
    assert "(at most 39min 56s before this recovery began)." in result["lines"][-1]


def test_a_backup_newer_than_the_start_is_no_loss_not_a_negative_one(run_module):
    """Clocks of the backup host and the controller disagree by a few seconds: the loss is 0, never below."""
    result = report(run_module, backup_time="2026-12-06T03:10:05Z")
    assert result["rpo_s"] == 0 and result["backup_time"] == "2026-12-06T03:10:05Z"
    assert _recovery.report(MARKS, "2026-12-06T04:00:00Z")["rpo_s"] == 0.0


@pytest.mark.parametrize("backup_time", [None, ""])
def test_without_a_backup_there_is_no_rpo(run_module, backup_time):
    params = {} if backup_time is None else {"backup_time": backup_time}
    result = report(run_module, **params)
    assert "rpo_s" not in result and "backup_time" not in result
    assert result["lines"][-1] == "No backup was restored: the service starts without its earlier data."
    assert result["summary"].startswith("Recovered in 4min 02s (RTO); no data restored. ")
    assert set(result["timeline_events"][0]) == {"kind", "summary", "time", "rto_s"}


def test_check_mode_gives_the_same_report_but_records_no_recovery(run_module):
    params = dict(backup_time=BACKUP_TIMES[2], goal_s=300)
    applied = report(run_module, **params)
    dry = run_module("recovery_report", dict(params, marks=MARKS), check_mode=True)
    assert applied["timeline_events"] and dry.pop("timeline_events") == []
    applied.pop("timeline_events")
    assert dry == applied


# --- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    (dict(marks=MARKS[:1]), "a report needs the start and at least one step's end (marks: 1)"),
    (dict(marks=[]), "a report needs the start and at least one step's end (marks: 0)"),
    (dict(marks=[MARKS[0], {"at": "2026-12-06T03:12:10Z"}]), "mark 2 has no step name"),
    (dict(marks=[MARKS[0], {"step": "", "at": "2026-12-06T03:12:10Z"}]), "mark 2 has no step name"),
    (dict(marks=[MARKS[0], {"step": "deployed", "at": "soon"}]), "the time of mark 'deployed' is not an ISO 8601 time: 'soon'"),
    (dict(marks=[MARKS[0], {"step": "deployed"}]), "the time of mark 'deployed' is not an ISO 8601 time: None"),
    (dict(marks=[MARKS[0], MARKS[3], MARKS[1]]), "mark 'deployed' is earlier than the one before it"),
    (dict(marks=MARKS, goal_s=0), "goal_s must be more than 0 seconds, not 0.0"),
    (dict(marks=MARKS, goal_s=-300), "goal_s must be more than 0 seconds, not -300.0"),
    (dict(marks=MARKS, goal_s="nan"), "goal_s must be more than 0 seconds, not nan"),
    (dict(marks=MARKS, goal_s="inf"), "goal_s must be more than 0 seconds, not inf"),
    (dict(marks=MARKS, backup_time="last night"), "the backup's time is not an ISO 8601 time: 'last night'"),
])
def test_what_cannot_make_a_report_fails_saying_why(run_module, params, message):
    result = run_module("recovery_report", params)
    assert result["failed"] and result["changed"] is False, result
    assert result["msg"] == "cannot report the recovery: " + message
    assert "timeline_events" not in result and "rto_s" not in result


def test_a_step_that_took_no_time_is_kept():
    found = _recovery.report([MARKS[0], dict(MARKS[0], step="nothing to do"), MARKS[1]])
    assert found["steps"][0] == {"step": "nothing to do", "duration_s": 0.0} and found["rto_s"] == 130.2


def test_report_refuses_what_is_not_a_list_of_marks():
    for marks in (None, "start", {"step": "start"}, [MARKS[0], "deployed"]):
        with pytest.raises(_recovery.ReportError):
            _recovery.report(marks)


# --- times and durations -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, moment", [
    ("2026-12-06T03:10:00.123456Z", utc(2026, 12, 6, 3, 10, 0, 123456)),
    ("2026-12-06T03:10:00.123Z", utc(2026, 12, 6, 3, 10, 0, 123000)),
    ("2026-12-06T03:10:00Z", utc(2026, 12, 6, 3, 10)),
    ("2026-12-06T04:10:00+01:00", utc(2026, 12, 6, 3, 10)),
    ("2026-12-05T22:10:00-05:00", utc(2026, 12, 6, 3, 10)),
    ("2026-12-06T03:10:00", utc(2026, 12, 6, 3, 10)),  # naive is UTC, as in the timeline
    (" 2026-12-06T031000Z\n", utc(2026, 12, 6, 3, 10)),  # a backup set's stamp, as a file name gives it
])
def test_parse_time_gives_aware_utc(value, moment):
    parsed = _recovery.parse_time(value, "x")
    assert parsed == moment and parsed.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize("value", ["", None, 1765000000, "yesterday", "2026-12-06T253004Z", "2026-12-06T3004Z"])
def test_parse_time_refuses_what_is_not_a_time(value):
    with pytest.raises(_recovery.ReportError, match="^the backup's time is not"):
        _recovery.parse_time(value, "the backup's time")


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_outside_the_years_of_utc_is_refused(run_module, value):
    result = report(run_module, backup_time=value)
    assert result["failed"] and result["changed"] is False and "Traceback" not in result["msg"], result
    assert result["msg"] == "cannot report the recovery: the backup's time is out of range: %r" % value


def test_a_short_stamp_is_not_read_as_a_backup_stamp():
    """strptime('%H%M%S') alone takes '1234' as 12:03:04; ISO's basic form means 12:34 (Python 3.11+) or nothing."""
    try:
        parsed = _recovery.parse_time("2026-12-06T1234Z", "x")
    except _recovery.ReportError:
        return
    assert parsed == utc(2026, 12, 6, 12, 34)


# --- the timeline and the post-mortem ------------------------------------------------------------------------------

def test_the_recovery_event_is_kept_by_the_timeline(run_module):
    result = report(run_module, backup_time=BACKUP_TIMES[1], goal_s=300)
    assert len(result["timeline_events"]) == 1
    entry = result["timeline_events"][0]
    event = _timeline.event_from(entry, AT, "RUN", "db1", "Report the recovery")
    assert event == {"run_id": "RUN", "kind": "recovery", "summary": result["summary"], "time": "2026-12-06T03:14:02.000Z",
                     "rto_s": 242.0, "rpo_s": 2396.1, "backup_time": "2026-12-06T02:30:04.000Z", "host": "db1",
                     "task": "Report the recovery"}
    assert _timeline.module_events("runbooks.incident.recovery_report", result, AT, "RUN", "db1", "Report the recovery") == [event]
    text = _postmortem.event_text(event)
    assert text.startswith("Service recovered") and text == "Service recovered: " + result["summary"]


def test_an_event_s_times_of_the_wrong_type_are_dropped(run_module):
    entry = report(run_module, backup_time=BACKUP_TIMES[0])["timeline_events"][0]
    event = _timeline.event_from(dict(entry, rto_s=True, rpo_s="2396", backup_time="last night"), AT, "RUN")
    assert event["kind"] == "recovery" and not {"rto_s", "rpo_s", "backup_time"} & set(event)
    assert _timeline.event_from(dict(entry, rto_s=False, rpo_s=0), AT, "RUN")["rpo_s"] == 0
    assert "rto_s" not in _timeline.event_from(dict(entry, rto_s=False), AT, "RUN")


def test_the_timeline_keeps_the_report_s_key_results(run_module):
    result = report(run_module, backup_time=BACKUP_TIMES[0])
    kept = _timeline.key_results("runbooks.incident.recovery_report", result)
    assert kept["rto_s"] == 242.0 and kept["rpo_s"] == 2396.1 and kept["backup_time"] == "2026-12-06T02:30:04Z"
    assert kept["step_durations"] == result["step_durations"]
    assert "lines" not in kept and "summary" not in kept
