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
