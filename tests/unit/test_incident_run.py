# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident_run role through ansible-playbook: incident id required, lock around the run, confirmation gate."""
from __future__ import annotations

import base64
import json
import time


def role(tasks_from, name=None):
    return {"name": name or tasks_from, "ansible.builtin.include_role": {"name": "runbooks.incident.incident_run", "tasks_from": tasks_from}}


def guarded(body, lock):
    """The shape every playbook of the collection has: begin, block with rescue, end in always."""
    return [role("begin"), {"name": "work", "block": body, "rescue": [role("failed")], "always": [role("end")]}]


def test_a_run_without_incident_id_stops_before_acting(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    result = ansible_play(guarded([{"name": "act", "ansible.builtin.debug": {"msg": "acting"}}], lock),
                          extra_vars={"incident_run_lock_path": str(lock)})
    assert result.rc != 0
    assert "Give the incident or change id" in result.stdout
    assert "act" not in result.tasks() and not lock.exists()


def test_an_incident_id_with_a_trailing_newline_stops_before_acting(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    result = ansible_play(guarded([{"name": "act", "ansible.builtin.debug": {"msg": "acting"}}], lock),
                          extra_vars={"incident_id": "INC-1\n", "incident_run_lock_path": str(lock)})
    assert result.rc != 0 and "Give the incident or change id" in result.stdout
    assert "act" not in result.tasks() and not lock.exists()


def test_lock_is_held_during_the_run_and_released_after(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    body = [{"name": "read lock", "ansible.builtin.slurp": {"src": str(lock)}, "register": "held"}]
    result = ansible_play(guarded(body, lock), extra_vars={"incident_id": "INC-7", "incident_run_lock_path": str(lock)})
    assert result.rc == 0, result.stdout
    holder = json.loads(base64.b64decode(result["read lock"]["content"]))
    assert holder["incident_id"] == "INC-7" and holder["playbook"] == "test"
    assert not lock.exists()


def test_second_concurrent_run_is_refused_and_leaves_the_lock(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"run_id": "other-run", "incident_id": "INC-1", "playbook": "restore_database",
                                "started": "now", "started_epoch": time.time()}))
    result = ansible_play(guarded([{"name": "act", "ansible.builtin.debug": {"msg": "acting"}}], lock),
                          extra_vars={"incident_id": "INC-2", "incident_run_lock_path": str(lock)})
    assert result.rc != 0
    assert "another run holds the lock" in result.stdout and "incident INC-1" in result.stdout
    assert json.loads(lock.read_text())["run_id"] == "other-run"


def test_a_failing_step_still_releases_the_lock_and_fails_the_run(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    body = [{"name": "broken step", "ansible.builtin.fail": {"msg": "disk on fire"}}]
    result = ansible_play(guarded(body, lock), extra_vars={"incident_id": "INC-3", "incident_run_lock_path": str(lock)})
    assert result.rc != 0
    assert "broken step failed: disk on fire" in result.stdout
    assert not lock.exists()


def test_destructive_step_needs_confirmation_except_in_check_mode(ansible_play, tmp_path):
    gate = [{"name": "gate", "ansible.builtin.include_role": {"name": "runbooks.incident.incident_run", "tasks_from": "confirm"},
             "vars": {"incident_run_destroys": "replace the live database wa_mcp"}},
            {"name": "destroy", "ansible.builtin.debug": {"msg": "destroying"}}]
    refused = ansible_play(gate)
    assert refused.rc != 0 and "would replace the live database wa_mcp" in refused.stdout and "destroy" not in refused.tasks()
    assert ansible_play(gate, check=True).rc == 0
    confirmed = ansible_play(gate, extra_vars={"confirm": True})
    assert confirmed.rc == 0 and confirmed["destroy"]["msg"] == "destroying"


def with_timeline(tmp_path):
    """The environment of a run with the timeline callback on, keeping incidents in tmp_path/incidents."""
    return {"ANSIBLE_CALLBACKS_ENABLED": "runbooks.incident.timeline", "RUNBOOKS_INCIDENT_DIR": str(tmp_path / "incidents")}


def records(tmp_path, incident_id):
    """(the lifecycle state or None, the timeline) the run left for the incident."""
    directory = tmp_path / "incidents" / incident_id
    state = directory / "incident.json"
    return (json.loads(state.read_text()) if state.exists() else None), json.loads((directory / "timeline.json").read_text())


def test_a_run_with_a_severity_declares_the_incident_and_records_its_outcome(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    body = [{"name": "remediate", "ansible.builtin.command": "true"}]
    result = ansible_play(guarded(body, lock), extra_vars={"incident_id": "INC-8", "severity": "P1", "incident_run_lock_path": str(lock)},
                          env=dict(with_timeline(tmp_path), ANSIBLE_SHOW_CUSTOM_STATS="true"))
    assert result.rc == 0, result.stdout
    state, timeline = records(tmp_path, "INC-8")
    assert state["severity"] == "P1" and state["declared"] and state["status"] == "investigating"
    assert [entry["event"] for entry in state["history"]] == ["declare", "outcome"]
    assert state["history"][-1]["outcome"] == "ok" and state["history"][-1]["playbook"] == "test"
    kinds = [event["kind"] for event in timeline["events"]]
    assert kinds.count("declared") == 1 and kinds.count("outcome") == 1 and kinds.count("journal") == 2
    assert [event["ok"] for event in timeline["events"] if event["kind"] == "outcome"] == [True]
    (run,) = timeline["runs"]
    assert run["mode"] == "apply" and run["outcome"] == "ok"
    assert any(task["task"] == "remediate" and task["status"] == "changed" for task in run["tasks"])
    # Recording the outcome is a log entry: a run that changed nothing stays unchanged (molecule's idempotence).
    assert result["runbooks.incident.incident_lifecycle : Record the incident event outcome"]["changed"] is False
    assert json.loads(result.stdout)["stats"]["localhost"]["changed"] == 2  # `remediate` and the declaration
    stats = json.loads(result.stdout)["global_custom_stats"]  # what AWX shows as the job's artifacts
    assert stats["incident_id"] == "INC-8" and stats["outcome"] == "success" and stats["mode"] == "apply"
    assert stats["playbook"] == "test" and stats["run_id"]

    # A second run of the same incident joins it: no second declaration, a second outcome, one timeline.
    again = ansible_play(guarded(body, lock), extra_vars={"incident_id": "INC-8", "severity": "P1", "incident_run_lock_path": str(lock)},
                         env=with_timeline(tmp_path))
    assert again.rc == 0, again.stdout
    state, timeline = records(tmp_path, "INC-8")
    assert [entry["event"] for entry in state["history"]] == ["declare", "outcome", "outcome"]
    assert len(timeline["runs"]) == 2 and [event["kind"] for event in timeline["events"]].count("declared") == 1


def test_a_failed_run_without_severity_records_a_failed_outcome_and_declares_nothing(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    body = [{"name": "broken step", "ansible.builtin.fail": {"msg": "disk on fire"}}]
    result = ansible_play(guarded(body, lock), extra_vars={"incident_id": "CHG-9", "incident_run_lock_path": str(lock)},
                          env=with_timeline(tmp_path))
    assert result.rc != 0 and "broken step failed: disk on fire" in result.stdout
    state, timeline = records(tmp_path, "CHG-9")
    assert state["declared"] is None and [entry["outcome"] for entry in state["history"]] == ["failed"]
    assert [event["ok"] for event in timeline["events"] if event["kind"] == "outcome"] == [False]
    assert "declared" not in [event["kind"] for event in timeline["events"]]
    assert timeline["runs"][0]["outcome"] == "failed" and not lock.exists()


def test_a_check_run_declares_and_records_nothing_but_its_timeline(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    body = [{"name": "remediate", "ansible.builtin.command": "true"}]
    result = ansible_play(guarded(body, lock), check=True, env=with_timeline(tmp_path),
                          extra_vars={"incident_id": "INC-10", "severity": "P0", "incident_run_lock_path": str(lock)})
    assert result.rc == 0, result.stdout
    state, timeline = records(tmp_path, "INC-10")
    assert state is None  # the lifecycle only predicts in check mode
    assert timeline["runs"][0]["mode"] == "check"
    assert not [event for event in timeline["events"] if event["kind"] != "journal"]


def test_a_broken_incident_record_never_fails_the_run(ansible_play, tmp_path):
    lock = tmp_path / "run.lock"
    (tmp_path / "incidents" / "INC-11").mkdir(parents=True)
    (tmp_path / "incidents" / "INC-11" / "incident.json").write_text("{ not json")
    body = [{"name": "remediate", "ansible.builtin.command": "true"}]
    result = ansible_play(guarded(body, lock), extra_vars={"incident_id": "INC-11", "incident_run_lock_path": str(lock)},
                          env=with_timeline(tmp_path))
    assert result.rc == 0, result.stdout
    assert "the outcome could not be recorded in incident INC-11" in result.stdout
    assert (tmp_path / "incidents" / "INC-11" / "incident.json").read_text() == "{ not json"
    assert not lock.exists()
