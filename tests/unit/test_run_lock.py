# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.run_lock: one run per host, a clear refusal, stale locks taken over, races decided once."""
from __future__ import annotations

import json
import multiprocessing
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _run_lock


def lock_params(path, run_id="run-1", **extra):
    return dict(path=str(path), incident_id="INC-1", run_id=run_id, playbook="restore_database", **extra)


def test_acquire_records_the_holder_and_never_reports_changed(run_module, tmp_path):
    path = tmp_path / "lock"
    result = run_module("run_lock", lock_params(path))
    assert not result.get("failed") and result["changed"] is False
    holder = json.loads(path.read_text())
    assert holder["run_id"] == "run-1" and holder["incident_id"] == "INC-1" and holder["playbook"] == "restore_database"
    again = run_module("run_lock", lock_params(path))
    assert not again.get("failed") and again["holder"]["run_id"] == "run-1"


def test_second_run_is_refused_with_the_holder_named(run_module, tmp_path):
    path = tmp_path / "lock"
    run_module("run_lock", lock_params(path))
    refused = run_module("run_lock", lock_params(path, run_id="run-2"))
    assert refused["failed"]
    assert "incident INC-1" in refused["msg"] and "playbook restore_database" in refused["msg"]
    assert "incident_run_break_lock=true" in refused["msg"]
    assert json.loads(path.read_text())["run_id"] == "run-1"


def test_lock_is_taken_in_check_mode_too(run_module, tmp_path):
    path = tmp_path / "lock"
    result = run_module("run_lock", lock_params(path), check_mode=True)
    assert result["changed"] is False and path.exists()


def test_stale_lock_is_taken_over_with_a_warning(run_module, tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"run_id": "dead", "incident_id": "INC-0", "playbook": "x", "started_epoch": time.time() - 7200}))
    result = run_module("run_lock", lock_params(path, stale_after=3600))
    assert not result.get("failed")
    assert result["displaced"]["run_id"] == "dead"
    assert any("took over" in warning for warning in result["warnings"])
    assert json.loads(path.read_text())["run_id"] == "run-1"


def test_unreadable_lock_counts_as_stale(tmp_path):
    path = tmp_path / "lock"
    path.write_text("{half written")
    acquired, displaced = _run_lock.acquire(str(path), {"run_id": "run-1"}, stale_after=60)
    assert acquired and displaced["run_id"] is None


def test_break_lock_takes_a_live_lock(run_module, tmp_path):
    path = tmp_path / "lock"
    run_module("run_lock", lock_params(path, run_id="other"))
    result = run_module("run_lock", lock_params(path, break_lock=True))
    assert not result.get("failed") and result["displaced"]["run_id"] == "other"


def test_release_only_removes_our_own_lock(run_module, tmp_path):
    path = tmp_path / "lock"
    run_module("run_lock", lock_params(path, run_id="other"))
    foreign = run_module("run_lock", lock_params(path, state="absent"))
    assert foreign["released"] is False and path.exists()
    assert any("held by another run" in warning for warning in foreign["warnings"])
    own = run_module("run_lock", lock_params(path, run_id="other", state="absent"))
    assert own["released"] is True and not path.exists()
    absent = run_module("run_lock", lock_params(path, state="absent"))
    assert absent["released"] is False and not absent.get("failed")


def test_invalid_incident_id_fails_and_creates_nothing(run_module, tmp_path):
    path = tmp_path / "lock"
    result = run_module("run_lock", dict(lock_params(path), incident_id="INC-1; rm -rf /"))
    assert result["failed"] and "not valid" in result["msg"] and not path.exists()


def _race(path, run_id, start, results):
    start.wait()
    try:
        _run_lock.acquire(path, {"run_id": run_id}, stale_after=3600)
        results.put(run_id)
    except _run_lock.LockHeld:
        results.put(None)


def test_concurrent_runs_exactly_one_wins(tmp_path):
    path = str(tmp_path / "lock")
    start, results = multiprocessing.Event(), multiprocessing.Queue()
    racers = [multiprocessing.Process(target=_race, args=(path, f"run-{n}", start, results)) for n in range(8)]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(10)
    winners = [winner for winner in (results.get(timeout=5) for _racer in racers) if winner]
    assert len(winners) == 1
    assert json.loads(open(path, encoding="utf-8").read())["run_id"] == winners[0]


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"run_id": "dead", "started_epoch": 0}))
    start, results = multiprocessing.Event(), multiprocessing.Queue()
    racers = [multiprocessing.Process(target=_race, args=(str(path), f"run-{n}", start, results)) for n in range(8)]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(10)
    winners = [winner for winner in (results.get(timeout=5) for _racer in racers) if winner]
    assert len(winners) == 1 and json.loads(path.read_text())["run_id"] == winners[0]
