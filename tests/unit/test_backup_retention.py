# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.backup_retention: count-based GFS pruning of real backup files, sets kept or removed whole."""
from __future__ import annotations

import datetime
import os
import time

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _retention

TODAY = datetime.date(2026, 11, 22)


def make_dump(directory, stamp, prefix="db-"):
    """A dump and its manifest, as the nightly backup writes them."""
    for suffix in (".sql.gz", ".manifest.json"):
        (directory / f"{prefix}{stamp}{suffix}").write_text(f"{stamp}{suffix}\n")


def names(directory):
    return {entry.name for entry in directory.iterdir()}


def params(directory, **extra):
    return dict(path=str(directory), **extra)


def age(path, hours):
    """Set the modification time of `path` to `hours` ago (without following a symlink)."""
    moment = time.time() - hours * 3600
    os.utime(path, (moment, moment), follow_symlinks=False)


def expected_gfs_days(days, keep_daily, keep_monthly):
    """The days the GFS policy keeps, computed independently of the module: newest days, newest of each month."""
    newest_first = sorted(days, reverse=True)
    kept = set(newest_first[:keep_daily])
    newest_of_month = {}
    for day in newest_first:
        newest_of_month.setdefault((day.year, day.month), day)
    kept.update(sorted(newest_of_month.values(), reverse=True)[:keep_monthly])
    return kept


def test_400_nightly_dumps_keep_30_daily_and_12_monthly_check_run_check_run(run_module, tmp_path):
    days = [TODAY - datetime.timedelta(days=n) for n in range(400)]
    for day in days:
        make_dump(tmp_path, day.isoformat())
    kept_days = expected_gfs_days(days, 30, 12)
    assert len(kept_days) > 30  # monthlies beyond the daily window do exist

    check = run_module("backup_retention", params(tmp_path), check_mode=True)
    assert not check.get("failed") and check["changed"] is True
    assert len(names(tmp_path)) == 800

    run = run_module("backup_retention", params(tmp_path))
    assert not run.get("failed") and run["changed"] is True
    assert run["removed"] == check["removed"] == sorted(run["removed"])
    expected = {f"db-{day.isoformat()}{suffix}" for day in kept_days for suffix in (".sql.gz", ".manifest.json")}
    assert names(tmp_path) == expected
    assert len(run["removed"]) == 800 - len(expected)
    removed = set(run["removed"])
    for path in removed:
        assert not os.path.exists(path)
        if path.endswith(".sql.gz"):
            assert path[:-len(".sql.gz")] + ".manifest.json" in removed
    assert [kept["stamp"] for kept in run["kept"]] == sorted((day.isoformat() for day in kept_days), reverse=True)
    assert run["kept"][0]["reasons"] == ["daily", "monthly", "newest"]
    assert run["ignored"] == [] and run["removed_partials"] == []

    for check_mode in (True, False):
        again = run_module("backup_retention", params(tmp_path), check_mode=check_mode)
        assert not again.get("failed") and again["changed"] is False and again["removed"] == []
        assert names(tmp_path) == expected


def test_a_manual_backup_beside_the_nightly_is_kept_within_the_daily_window(run_module, tmp_path):
    for n in range(10):
        make_dump(tmp_path, (TODAY - datetime.timedelta(days=n)).isoformat())
    make_dump(tmp_path, "2026-11-20T031500Z")
    result = run_module("backup_retention", params(tmp_path, keep_daily=5, keep_monthly=0))
    remaining = names(tmp_path)
    assert {"db-2026-11-20.sql.gz", "db-2026-11-20T031500Z.sql.gz", "db-2026-11-20T031500Z.manifest.json"} <= remaining
    assert {day["stamp"] for day in result["kept"]} == {
        "2026-11-22", "2026-11-21", "2026-11-20T031500Z", "2026-11-20", "2026-11-19", "2026-11-18"}
    assert "db-2026-11-17.sql.gz" not in remaining


def test_backups_that_stopped_long_ago_are_not_all_deleted(run_module, tmp_path):
    last = TODAY - datetime.timedelta(days=100)
    days = [last - datetime.timedelta(days=n) for n in range(20)]
    for day in days:
        make_dump(tmp_path, day.isoformat())
    before = names(tmp_path)

    defaults = run_module("backup_retention", params(tmp_path))
    assert defaults["changed"] is False and names(tmp_path) == before

    tight = run_module("backup_retention", params(tmp_path, keep_daily=7, keep_monthly=2))
    assert tight["changed"] is True
    kept_days = expected_gfs_days(days, 7, 2)
    assert names(tmp_path) == {f"db-{day.isoformat()}{suffix}" for day in kept_days for suffix in (".sql.gz", ".manifest.json")}
    assert tight["kept"][0] == {"stamp": last.isoformat(), "reasons": ["daily", "monthly", "newest"]}


def test_directory_sets_with_hard_links_are_removed_whole(run_module, tmp_path):
    snapshots = []
    for n in range(3):
        snapshot = tmp_path / f"media-2026-11-{20 + n}"
        (snapshot / "photos").mkdir(parents=True)
        (snapshot / "photos" / f"new-{n}.jpg").write_bytes(b"x" * 10)
        snapshots.append(snapshot)
    shared = snapshots[2] / "photos" / "shared.jpg"
    shared.write_bytes(b"shared")
    for snapshot in snapshots[:2]:  # rsync --link-dest style: unchanged files are hard links into the newest snapshot
        os.link(shared, snapshot / "photos" / "shared.jpg")
    make_dump(tmp_path, "2026-11-01")

    result = run_module("backup_retention", params(tmp_path, prefix="media-", keep_daily=1, keep_monthly=0))
    assert not result.get("failed")
    assert result["removed"] == [str(snapshots[0]), str(snapshots[1])]
    assert names(tmp_path) == {"media-2026-11-22", "db-2026-11-01.sql.gz", "db-2026-11-01.manifest.json"}
    assert shared.read_bytes() == b"shared" and shared.stat().st_nlink == 1


def test_a_symlink_entry_is_unlinked_without_touching_its_target(run_module, tmp_path):
    backups, outside = tmp_path / "backups", tmp_path / "outside"
    backups.mkdir()
    (outside / "tree").mkdir(parents=True)
    (outside / "dump.sql.gz").write_text("precious")
    (outside / "tree" / "file").write_text("precious too")
    (backups / "db-2026-01-01.sql.gz").symlink_to(outside / "dump.sql.gz")
    (backups / "db-2026-01-02.dir").symlink_to(outside / "tree")
    make_dump(backups, "2026-11-22")

    result = run_module("backup_retention", params(backups, keep_daily=1, keep_monthly=0))
    assert not result.get("failed")
    assert result["removed"] == [str(backups / "db-2026-01-01.sql.gz"), str(backups / "db-2026-01-02.dir")]
    assert names(backups) == {"db-2026-11-22.sql.gz", "db-2026-11-22.manifest.json"}
    assert (outside / "dump.sql.gz").read_text() == "precious"
    assert (outside / "tree" / "file").read_text() == "precious too"


def test_stale_partials_are_removed_and_fresh_ones_kept(run_module, tmp_path):
    make_dump(tmp_path, "2026-11-22")
    stale_hidden, stale_dir = tmp_path / ".db-2026-11-20.sql.gz.tmp", tmp_path / "db-2026-11-19.dir.partial"
    fresh, other = tmp_path / "db-2026-11-22T031500Z.sql.gz.partial", tmp_path / "media-2026-11-01.partial"
    stale_hidden.write_text("half")
    (stale_dir / "sub").mkdir(parents=True)
    for path in (fresh, other):
        path.write_text("half")
    for path in (stale_hidden, stale_dir, other):
        age(path, 48)

    check = run_module("backup_retention", params(tmp_path), check_mode=True)
    assert check["changed"] is True and stale_hidden.exists() and stale_dir.exists()
    result = run_module("backup_retention", params(tmp_path))
    assert result["changed"] is True and result["removed"] == []
    assert result["removed_partials"] == check["removed_partials"] == sorted([str(stale_hidden), str(stale_dir)])
    assert not stale_hidden.exists() and not stale_dir.exists()
    assert fresh.exists() and other.exists()  # running backup; another prefix's file
    assert [kept["stamp"] for kept in result["kept"]] == ["2026-11-22"]  # a partial is never a set


def test_unparsable_names_are_ignored_and_left_alone(run_module, tmp_path):
    odd = ["db-latest.sql.gz", "db-2026-02-30.sql.gz", "db-2026-11-21T2500Z.sql.gz", "db-2026-11-21T0315.sql.gz"]
    for name in odd:
        (tmp_path / name).write_text("?")
    make_dump(tmp_path, "2026-11-22")
    make_dump(tmp_path, "2026-11-21")
    (tmp_path / "unrelated.txt").write_text("not ours")
    result = run_module("backup_retention", params(tmp_path, keep_daily=1, keep_monthly=0))
    assert result["ignored"] == sorted(odd)
    assert names(tmp_path) == set(odd) | {"unrelated.txt", "db-2026-11-22.sql.gz", "db-2026-11-22.manifest.json"}


@pytest.mark.parametrize("bad, message", [
    (dict(keep_daily=0), "keep_daily must be at least 1"),
    (dict(keep_monthly=-1), "keep_monthly must not be negative"),
    (dict(keep_yearly=-1), "keep_yearly must not be negative"),
    (dict(stale_partial_hours=-1), "stale_partial_hours must not be negative"),
    (dict(prefix=""), "prefix '' is not valid"),
    (dict(path="missing"), "does not exist"),
    (dict(path="db-2020-01-01.sql.gz"), "is not a directory"),
])
def test_bad_inputs_fail_and_remove_nothing(run_module, tmp_path, bad, message):
    for n in range(40):
        make_dump(tmp_path, (TODAY - datetime.timedelta(days=n)).isoformat())
    (tmp_path / ".db-old.partial").write_text("half")
    age(tmp_path / ".db-old.partial", 48)
    make_dump(tmp_path, "2020-01-01")
    before = names(tmp_path)
    if "path" in bad:
        bad = dict(bad, path=str(tmp_path / bad["path"]))
    result = run_module("backup_retention", dict(params(tmp_path, keep_daily=1, keep_monthly=0), **bad))
    assert result["failed"] and message in result["msg"] and "nothing was removed" in result["msg"]
    assert names(tmp_path) == before


def test_a_failed_removal_does_not_stop_the_others(run_module, tmp_path, monkeypatch):
    for stamp in ("2026-11-20", "2026-11-21", "2026-11-22"):
        make_dump(tmp_path, stamp)
    stuck = str(tmp_path / "db-2026-11-20.sql.gz")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # root may remove anything: the refusal is simulated (removal is by name in its directory)
        if os.path.basename(str(path)) == os.path.basename(stuck):
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(_retention.os, "unlink", unlink)
    result = run_module("backup_retention", params(tmp_path, keep_daily=1, keep_monthly=0))
    assert result["failed"] and result["changed"] is True
    assert f"{stuck} (Permission denied)" in result["msg"] and "could not remove 1 of 4 entries" in result["msg"]
    assert names(tmp_path) == {"db-2026-11-20.sql.gz", "db-2026-11-22.sql.gz", "db-2026-11-22.manifest.json"}
    assert stuck not in result["removed"] and len(result["removed"]) == 3


def test_diff_lists_set_stamps_before_and_after(run_module, tmp_path):
    for stamp in ("2026-09-15", "2026-10-31", "2026-11-21", "2026-11-22T031500Z", "2026-11-22"):
        make_dump(tmp_path, stamp)
    result = run_module("backup_retention", params(tmp_path, keep_daily=1, keep_monthly=2), check_mode=True, diff=True)
    assert result["diff"] == {
        "before": "2026-09-15\n2026-10-31\n2026-11-21\n2026-11-22\n2026-11-22T031500Z",
        "after": "2026-10-31\n2026-11-22\n2026-11-22T031500Z",
    }
    assert len(names(tmp_path)) == 10


def test_keep_yearly_keeps_the_newest_set_of_each_year(run_module, tmp_path):
    days = [datetime.date(year, month, 1) for year in range(2021, 2027) for month in range(1, 13)]
    for day in days:
        make_dump(tmp_path, day.isoformat())
    result = run_module("backup_retention", params(tmp_path, keep_daily=1, keep_monthly=3, keep_yearly=4))
    assert not result.get("failed")
    assert [(kept["stamp"], kept["reasons"]) for kept in result["kept"]] == [
        ("2026-12-01", ["daily", "monthly", "yearly", "newest"]),
        ("2026-11-01", ["monthly"]),
        ("2026-10-01", ["monthly"]),
        ("2025-12-01", ["yearly"]),
        ("2024-12-01", ["yearly"]),
        ("2023-12-01", ["yearly"]),
    ]
    assert len(names(tmp_path)) == 12


# The selection itself, directly.

def test_select_counts_only_days_months_and_years_that_have_a_backup():
    stamps = ["2020-03-05", "2020-03-01", "2019-12-31", "2018-06-01"]
    assert _retention.select(stamps, keep_daily=1, keep_monthly=2, keep_yearly=3) == [
        ("2020-03-05", ["daily", "monthly", "yearly", "newest"]),
        ("2019-12-31", ["monthly", "yearly"]),
        ("2018-06-01", ["yearly"]),
    ]


def test_select_keeps_every_set_of_a_daily_day_and_the_newest_set_of_a_month():
    stamps = ["2026-11-22", "2026-11-22T031500Z", "2026-11-22T0900Z", "2026-10-31", "2026-10-31T2359Z", "2026-10-01"]
    kept = dict(_retention.select(stamps, keep_daily=1, keep_monthly=2, keep_yearly=0))
    assert kept == {"2026-11-22T0900Z": ["daily", "monthly", "newest"], "2026-11-22T031500Z": ["daily"],
                    "2026-11-22": ["daily"], "2026-10-31T2359Z": ["monthly"]}


def test_select_of_nothing_keeps_nothing():
    assert _retention.select([], keep_daily=30, keep_monthly=12, keep_yearly=0) == []


@pytest.mark.parametrize("text, stamp", [
    ("2026-11-22.sql.gz", ("2026-11-22", None)),
    ("2026-11-22T031500Z.sql.gz", ("2026-11-22T031500Z", 3 * 3600 + 15 * 60)),
    ("2026-11-22T0315Z", ("2026-11-22T0315Z", 3 * 3600 + 15 * 60)),
    ("2024-02-29_full.dump", ("2024-02-29", None)),
    ("2026-02-30.sql.gz", None),
    ("2026-11-22T246000Z.sql.gz", None),
    ("2026-11-221.sql.gz", None),
    ("latest.sql.gz", None),
])
def test_parse_stamp(text, stamp):
    parsed = _retention.parse_stamp(text)
    assert (parsed if parsed is None else (parsed.text, parsed.seconds)) == stamp


def test_a_backup_directory_swapped_for_a_symlink_by_another_user_is_refused(run_module, tmp_path):
    """The service user owns the data directory and replaces backups/ with a link to someone else's files: root's
    retention must not prune there."""
    data, victim = tmp_path / "data", tmp_path / "victim"
    data.mkdir()
    data.chmod(0o777)
    victim.mkdir()
    for day in ("2026-01-01", "2026-01-02", "2026-11-22"):
        make_dump(victim, day)
    (data / "backups").symlink_to(victim)
    result = run_module("backup_retention", params(data / "backups", keep_daily=1, keep_monthly=0))
    assert result.get("failed") and "refusing to follow the symlink backups" in result["msg"], result
    assert len(names(victim)) == 6
