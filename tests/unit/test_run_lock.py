# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.run_lock: one run per host, a clear refusal, stale locks taken over, races decided once."""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import pwd
import stat
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.runbooks.incident.plugins.module_utils import _run_lock

REPO = Path(__file__).resolve().parents[2]


def lock_params(path, run_id="run-1", **extra):
    return dict(path=str(path), incident_id="INC-1", run_id=run_id, playbook="restore_database", **extra)


def test_acquire_records_the_holder_and_never_reports_changed(run_module, tmp_path):
    path = tmp_path / "run.lock"
    result = run_module("run_lock", lock_params(path))
    assert not result.get("failed") and result["changed"] is False
    holder = json.loads(path.read_text())
    assert holder["run_id"] == "run-1" and holder["incident_id"] == "INC-1" and holder["playbook"] == "restore_database"
    again = run_module("run_lock", lock_params(path))
    assert not again.get("failed") and again["holder"]["run_id"] == "run-1"


def test_second_run_is_refused_with_the_holder_named(run_module, tmp_path):
    path = tmp_path / "run.lock"
    run_module("run_lock", lock_params(path))
    refused = run_module("run_lock", lock_params(path, run_id="run-2"))
    assert refused["failed"]
    assert "incident INC-1" in refused["msg"] and "playbook restore_database" in refused["msg"]
    assert "incident_run_break_lock=true" in refused["msg"]
    assert json.loads(path.read_text())["run_id"] == "run-1"


def test_lock_is_taken_in_check_mode_too(run_module, tmp_path):
    path = tmp_path / "run.lock"
    result = run_module("run_lock", lock_params(path), check_mode=True)
    assert result["changed"] is False and path.exists()


def test_stale_lock_is_taken_over_with_a_warning(run_module, tmp_path):
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"run_id": "dead", "incident_id": "INC-0", "playbook": "x", "started_epoch": time.time() - 7200}))
    result = run_module("run_lock", lock_params(path, stale_after=3600))
    assert not result.get("failed")
    assert result["displaced"]["run_id"] == "dead"
    assert any("took over" in warning for warning in result["warnings"])
    assert json.loads(path.read_text())["run_id"] == "run-1"


def test_an_unreadable_lock_is_taken_over_once_the_file_is_stale(tmp_path):
    path = tmp_path / "run.lock"
    path.write_text("{half written")
    with pytest.raises(_run_lock.LockHeld) as held:
        _run_lock.acquire(str(path), {"run_id": "run-1"}, stale_after=60)
    assert held.value.holder["problem"] == "is not JSON"
    os.utime(path, (time.time() - 120, time.time() - 120))
    acquired, displaced, _holder = _run_lock.acquire(str(path), {"run_id": "run-1"}, stale_after=60)
    assert acquired and displaced["problem"] == "is not JSON"


def test_break_lock_takes_a_live_lock(run_module, tmp_path):
    path = tmp_path / "run.lock"
    run_module("run_lock", lock_params(path, run_id="other"))
    result = run_module("run_lock", lock_params(path, break_lock=True))
    assert not result.get("failed") and result["displaced"]["run_id"] == "other"


def test_release_only_removes_our_own_lock(run_module, tmp_path):
    path = tmp_path / "run.lock"
    run_module("run_lock", lock_params(path, run_id="other"))
    foreign = run_module("run_lock", lock_params(path, state="absent"))
    assert foreign["released"] is False and path.exists()
    assert any("held by another run" in warning for warning in foreign["warnings"])
    own = run_module("run_lock", lock_params(path, run_id="other", state="absent"))
    assert own["released"] is True and not path.exists()
    absent = run_module("run_lock", lock_params(path, state="absent"))
    assert absent["released"] is False and not absent.get("failed")


def test_invalid_incident_id_fails_and_creates_nothing(run_module, tmp_path):
    path = tmp_path / "run.lock"
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
    path = str(tmp_path / "run.lock")
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
    path = tmp_path / "run.lock"
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


# ------------------------------------------------------------------------------------------------ hostile lock files
def hours_ago(hours):
    return time.time() - hours * 3600


BAD_LOCKS = {
    "a list": (b"[]", "holds [] not a lock record"),
    "a string": (b'"s"', 'holds "s" not a lock record'),
    "a number": (b"42", "holds 42 not a lock record"),
    "null": (b"null", "holds null not a lock record"),
    "no run_id": (b'{"started_epoch": 1}', "has no run_id string"),
    "a numeric run_id": (b'{"run_id": 7, "started_epoch": 1}', "has no run_id string"),
    "a word for the epoch": (b'{"run_id": "x", "started_epoch": "soon"}', "started_epoch is not a number"),
    "a boolean epoch": (b'{"run_id": "x", "started_epoch": true}', "started_epoch is not a number"),
    "NaN": (b'{"run_id": "x", "started_epoch": NaN}', "started_epoch is not finite"),
    "Infinity": (b'{"run_id": "x", "started_epoch": -Infinity}', "started_epoch is not finite"),
    "a future epoch": (b'{"run_id": "x", "started_epoch": %d}' % (time.time() + 10 * 86400), "started_epoch in the future"),
    "binary": (b"\xff\xfe\x00garbage", "is not UTF-8 text"),
    "nothing": (b"", "is empty"),
}


@pytest.fixture(name="bad_lock", params=sorted(BAD_LOCKS))
def bad_lock_fixture(request, tmp_path):
    """(lock path, what the refusal must say) of a lock file that is not a lock record, written 2 hours ago."""
    content, problem = BAD_LOCKS[request.param]
    path = tmp_path / "run.lock"
    path.write_bytes(content)
    os.utime(path, (hours_ago(2), hours_ago(2)))
    return path, problem


def test_an_unreadable_lock_is_refused_with_what_is_wrong_until_it_is_stale(run_module, bad_lock):
    path, problem = bad_lock
    before = path.read_bytes()
    refused = run_module("run_lock", lock_params(path, stale_after=3 * 3600))
    assert refused["failed"] and problem in refused["msg"] and "incident_run_break_lock=true" in refused["msg"]
    assert path.read_bytes() == before
    taken = run_module("run_lock", lock_params(path, stale_after=3600))
    assert not taken.get("failed"), taken
    assert any(problem in warning for warning in taken["warnings"]) and problem in taken["displaced"]["problem"]
    assert json.loads(path.read_text())["run_id"] == "run-1"


def test_break_lock_takes_over_an_unreadable_lock_and_says_what_was_wrong(run_module, bad_lock):
    path, problem = bad_lock
    taken = run_module("run_lock", lock_params(path, break_lock=True))
    assert not taken.get("failed"), taken
    assert any(problem in warning for warning in taken["warnings"])
    assert json.loads(path.read_text())["run_id"] == "run-1"


def test_releasing_never_removes_an_unreadable_lock_and_never_fails(run_module, bad_lock):
    path, problem = bad_lock
    before = path.read_bytes()
    released = run_module("run_lock", lock_params(path, state="absent"))
    assert not released.get("failed"), released
    assert released["released"] is False and path.read_bytes() == before
    assert any(problem in warning for warning in released["warnings"])


def test_a_future_epoch_in_a_file_dated_in_the_future_is_stale_at_once(run_module, tmp_path):
    """Nothing on this host can have written the file in the future: its dates cannot hold a run off."""
    path = tmp_path / "run.lock"
    future = time.time() + 30 * 86400
    path.write_text(json.dumps({"run_id": "x", "started_epoch": future}))
    os.utime(path, (future, future))
    taken = run_module("run_lock", lock_params(path))
    assert not taken.get("failed"), taken
    assert any("started_epoch in the future" in warning for warning in taken["warnings"])
    # A clock stepped back a little (NTP) is not the future: that lock is live and a second run is refused.
    path.write_text(json.dumps({"run_id": "other", "incident_id": "INC-0", "started_epoch": time.time() + 20}))
    refused = run_module("run_lock", lock_params(path, run_id="run-2"))
    assert refused["failed"] and "another run holds the lock" in refused["msg"]


# ------------------------------------------------------------------------------------------------ where the lock lives
def test_the_default_lock_lives_in_a_root_owned_directory_of_its_own():
    module = importlib.import_module("ansible_collections.runbooks.incident.plugins.modules.run_lock")
    default = yaml.safe_load(module.DOCUMENTATION)["options"]["path"]["default"]
    assert os.path.dirname(default) not in ("/run/lock", "/var/lock", "/tmp", "/var/tmp", "/run", "/dev/shm")
    role_default = yaml.safe_load((REPO / "roles/incident_run/defaults/main.yml").read_text())["incident_run_lock_path"]
    specs = yaml.safe_load((REPO / "roles/incident_run/meta/argument_specs.yml").read_text())["argument_specs"]
    assert role_default == default
    assert {specs[entry]["options"]["incident_run_lock_path"]["default"] for entry in ("begin", "end")} == {default}


def test_a_missing_lock_directory_is_created_for_root_alone_whatever_the_umask(run_module, tmp_path):
    path = tmp_path / "runbooks-incident" / "run.lock"
    previous = os.umask(0)
    try:
        result = run_module("run_lock", lock_params(path))
    finally:
        os.umask(previous)
    assert not result.get("failed"), result
    info = path.parent.stat()
    assert info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@pytest.mark.parametrize("mode", [0o1777, 0o775, 0o757], ids=["1777", "775", "757"])
def test_a_lock_directory_others_can_write_to_is_refused(run_module, tmp_path, mode):
    shared = tmp_path / "lock-dir"
    shared.mkdir()
    shared.chmod(mode)
    result = run_module("run_lock", lock_params(shared / "run.lock"))
    assert result["failed"] and "writable by others" in result["msg"]
    assert list(shared.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")
def test_a_lock_directory_owned_by_another_user_is_refused(run_module, tmp_path):
    theirs = tmp_path / "lock-dir"
    theirs.mkdir()
    os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
    result = run_module("run_lock", lock_params(theirs / "run.lock"))
    assert result["failed"] and "belongs to" in result["msg"] and "nobody" in result["msg"]
    assert list(theirs.iterdir()) == []


def test_a_symlink_planted_at_the_guard_is_never_followed(run_module, tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    target = tmp_path / "victim"
    (lock_dir / "run.lock.guard").symlink_to(target)
    for state in ("present", "absent"):
        result = run_module("run_lock", lock_params(lock_dir / "run.lock", state=state, break_lock=True))
        assert result["failed"] and "is a symlink" in result["msg"] and "nothing was changed" in result["msg"]
        assert not target.exists() and not (lock_dir / "run.lock").exists()


def test_a_directory_at_the_lock_path_fails_clearly(run_module, tmp_path):
    (tmp_path / "run.lock").mkdir()
    result = run_module("run_lock", lock_params(tmp_path / "run.lock", break_lock=True))
    assert result["failed"] and "is a directory" in result["msg"] and "nothing was changed" in result["msg"]


def test_a_newline_in_the_incident_id_is_refused(run_module, tmp_path):
    result = run_module("run_lock", dict(lock_params(tmp_path / "run.lock"), incident_id="INC-1\n"))
    assert result["failed"] and "not valid" in result["msg"] and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("state", ["present", "absent"])
def test_a_path_that_names_another_file_never_replaces_it(run_module, tmp_path, state):
    """A lock that is not a record is taken over: a mistyped path must never make that /etc/passwd."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.utime(passwd, (hours_ago(24), hours_ago(24)))
    result = run_module("run_lock", lock_params(passwd, state=state, break_lock=True))
    assert result["failed"] and "does not end in .lock" in result["msg"] and "nothing was changed" in result["msg"]
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/bash\n" and sorted(tmp_path.iterdir()) == [passwd]
