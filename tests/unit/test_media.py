# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""media_snapshot (rsync --link-dest snapshots, on real files) and media_verify (against a real PostgreSQL 15).

Space sharing is proven on the inodes themselves: an unchanged file is the same inode in consecutive snapshots,
and the blocks of the unique inodes of both snapshots exceed the first's by exactly the changed files.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error
from servicedb import populate_sql  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

DAY1, DAY2, DAY3 = "2026-11-20", "2026-11-21", "2026-11-22"
KIB = 1024


# ------------------------------------------------------------------------------------------------ helpers
def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def blob(seed, size):
    """Deterministic, incompressible-looking content."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%s-%d" % (seed.encode(), counter)).digest()
        counter += 1
    return out[:size]


def bump_mtime(path, seconds=10):
    info = os.stat(path)
    os.utime(path, (info.st_atime + seconds, info.st_mtime + seconds))


@pytest.fixture(name="media")
def media_fixture(tmp_path):
    """A media directory (spaces, unicode, a nested dir, a hard link inside) and an empty backup directory."""
    src, dest = tmp_path / "media", tmp_path / "backups"
    dest.mkdir()
    write(src / "keep.bin", blob("keep", 64 * KIB))
    write(src / "change.bin", blob("change", 32 * KIB))
    write(src / "delete.bin", blob("delete", 16 * KIB))
    write(src / "7" / "2026" / "11" / "nested.bin", blob("nested", 8 * KIB))
    write(src / "with space.bin", blob("space", 4 * KIB))
    write(src / "ünïcødé ✓ фото.jpg", blob("unicode", 4 * KIB))
    os.link(src / "keep.bin", src / "keep-hardlink.bin")
    return src, dest


def params(src, dest, stamp, **extra):
    return dict(src=str(src), dest=str(dest), stamp=stamp, **extra)


def inodes(root):
    """{relative path: inode} of the regular files under root."""
    return {rel: os.stat(os.path.join(root, rel)).st_ino for rel in _fileio.tree_files(root)}


def usage(*paths):
    """du-style disk usage of regular files (paths are files or trees): each distinct inode's blocks counted once."""
    seen = {}
    for path in paths:
        for rel in _fileio.tree_files(path) if os.path.isdir(path) else [""]:
            info = os.lstat(os.path.join(path, rel) if rel else path)
            seen[(info.st_dev, info.st_ino)] = info.st_blocks * 512
    return sum(seen.values())


def entries(directory):
    return sorted(entry.name for entry in directory.iterdir())


def state(directory):
    """What must not change: every entry below `directory` with its inode, mode, size and mtime."""
    found = {}
    for current, dirs, files in os.walk(directory):
        for name in dirs + files:
            info = os.lstat(os.path.join(current, name))
            found[os.path.relpath(os.path.join(current, name), directory)] = (info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def fake_rsync(tmp_path, monkeypatch, exit_status):
    """Put an rsync first in PATH that does the real work, then exits with `exit_status`."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    script = fake_bin / "rsync"
    script.write_text('#!/bin/sh\n%s "$@"\nexit %d\n' % (shutil.which("rsync"), exit_status))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (fake_bin, os.environ["PATH"]))


# ---------------------------------------------------------------------------------------------- media_snapshot
def test_unchanged_files_are_hard_links_check_run_check_run(run_module, media):
    src, dest = media
    first, second = dest / ("media-" + DAY1), dest / ("media-" + DAY2)

    check = run_module("media_snapshot", params(src, dest, DAY1), check_mode=True)
    assert not check.get("failed") and check["changed"] is True, check
    assert check["link_dest"] is None and entries(dest) == []
    # 7 names, 6 inodes (keep.bin and its hard link are copied once).
    assert (check["files_total"], check["files_transferred"]) == (7, 6)
    assert check["bytes_transferred"] == (64 + 32 + 16 + 8 + 4 + 4) * KIB

    run = run_module("media_snapshot", params(src, dest, DAY1))
    assert not run.get("failed") and run["changed"] is True, run
    assert run["path"] == str(first) and run["link_dest"] is None
    assert {k: run[k] for k in ("files_total", "files_transferred", "bytes_transferred")} == \
           {k: check[k] for k in ("files_total", "files_transferred", "bytes_transferred")}
    assert entries(dest) == [first.name]  # no partial left
    assert _fileio.sha256_tree(first) == _fileio.sha256_tree(src)
    # -H: the hard link inside the media directory is one inode in the snapshot too.
    assert os.stat(first / "keep.bin").st_ino == os.stat(first / "keep-hardlink.bin").st_ino

    assert run_module("media_snapshot", params(src, dest, DAY1), check_mode=True)["changed"] is False
    before = state(first)
    again = run_module("media_snapshot", params(src, dest, DAY1))
    assert again["changed"] is False and again["files_total"] == 7 and again["files_transferred"] == 0
    assert state(first) == before

    # The next day: one file changed, one deleted, one added.
    write(src / "change.bin", blob("change-v2", 40 * KIB))
    bump_mtime(src / "change.bin")
    (src / "delete.bin").unlink()
    write(src / "new.bin", blob("new", 12 * KIB))

    check = run_module("media_snapshot", params(src, dest, DAY2), check_mode=True)
    assert check["changed"] is True and check["link_dest"] == str(first)
    assert (check["files_total"], check["files_transferred"], check["bytes_transferred"]) == (7, 2, (40 + 12) * KIB)
    assert entries(dest) == [first.name]

    run = run_module("media_snapshot", params(src, dest, DAY2))
    assert run["changed"] is True and run["link_dest"] == str(first)
    assert (run["files_total"], run["files_transferred"], run["bytes_transferred"]) == (7, 2, (40 + 12) * KIB)
    assert _fileio.sha256_tree(second) == _fileio.sha256_tree(src)
    assert state(first) == before  # yesterday's snapshot untouched

    old, new = inodes(first), inodes(second)
    for rel in ("keep.bin", "keep-hardlink.bin", "7/2026/11/nested.bin", "with space.bin", "ünïcødé ✓ фото.jpg"):
        assert new[rel] == old[rel], rel
        assert os.stat(second / rel).st_nlink >= 2
    assert new["change.bin"] != old["change.bin"] and os.stat(second / "change.bin").st_nlink == 1
    assert "delete.bin" not in new and "new.bin" in new
    growth = usage(first, second) - usage(first)
    assert growth == usage(second / "change.bin") + usage(second / "new.bin")
    assert growth < usage(second) / 2

    assert run_module("media_snapshot", params(src, dest, DAY2), check_mode=True)["changed"] is False
    assert run_module("media_snapshot", params(src, dest, DAY2))["changed"] is False
    assert entries(dest) == [first.name, second.name]


def test_a_missing_day_links_to_the_latest_older_snapshot(run_module, media):
    src, dest = media
    run_module("media_snapshot", params(src, dest, DAY1))
    # Not candidates: a newer snapshot, a partial, a name without a stamp, a file named like a snapshot.
    (dest / ("media-" + DAY3)).mkdir()
    (dest / (".media-" + DAY2 + ".partial")).mkdir()
    (dest / "media-latest").mkdir()
    write(dest / "media-2026-11-19", b"not a directory")

    check = run_module("media_snapshot", params(src, dest, DAY2), check_mode=True)
    assert check["link_dest"] == str(dest / ("media-" + DAY1)) and check["files_transferred"] == 0
    run = run_module("media_snapshot", params(src, dest, DAY2))
    assert run["link_dest"] == str(dest / ("media-" + DAY1)) and run["files_transferred"] == 0
    assert inodes(dest / ("media-" + DAY2)) == inodes(dest / ("media-" + DAY1))

    # A timed extra snapshot the same day comes after the daily one.
    timed = run_module("media_snapshot", params(src, dest, DAY2 + "T031500Z"))
    assert timed["link_dest"] == str(dest / ("media-" + DAY2)) and timed["files_transferred"] == 0


def test_link_dest_none_or_an_explicit_snapshot(run_module, media, tmp_path):
    src, dest = media
    run_module("media_snapshot", params(src, dest, DAY1))
    full = run_module("media_snapshot", params(src, dest, DAY2, link_dest="none"))
    assert full["link_dest"] is None and full["files_transferred"] == 6
    assert set(inodes(dest / ("media-" + DAY2)).values()).isdisjoint(inodes(dest / ("media-" + DAY1)).values())

    explicit = run_module("media_snapshot", params(src, dest, DAY3, link_dest=str(dest / ("media-" + DAY1))))
    assert explicit["link_dest"] == str(dest / ("media-" + DAY1)) and explicit["files_transferred"] == 0
    missing = run_module("media_snapshot", params(src, dest, "2026-11-23", link_dest=str(tmp_path / "nowhere")))
    assert missing["failed"] and "is not a directory" in missing["msg"]
    assert not (dest / "media-2026-11-23").exists()
    itself = run_module("media_snapshot", params(src, dest, DAY3, force=True, link_dest=str(dest / ("media-" + DAY3))))
    assert itself["failed"] and "is the snapshot being written" in itself["msg"]


def test_a_crash_leftover_partial_is_removed_and_the_previous_snapshot_never_altered(run_module, media):
    src, dest = media
    first = dest / ("media-" + DAY1)
    run_module("media_snapshot", params(src, dest, DAY1))
    # What a crashed run leaves: hard links into yesterday's snapshot, a half-written rsync temp file.
    partial = dest / (".media-" + DAY2 + ".partial")
    subprocess.run(["cp", "-al", str(first), str(partial)], check=True)
    write(partial / ".change.bin.Xy12ab", b"half")
    # Since then a file's mode changed: rsync into the leftover would chmod the shared inode, in DAY1 as well.
    (src / "keep.bin").chmod(0o600)
    before = state(first)

    run = run_module("media_snapshot", params(src, dest, DAY2))
    assert not run.get("failed") and run["changed"] is True, run
    assert entries(dest) == [first.name, "media-" + DAY2]
    assert state(first) == before and stat.S_IMODE(os.stat(first / "keep.bin").st_mode) == 0o644
    second = dest / ("media-" + DAY2)
    assert stat.S_IMODE(os.stat(second / "keep.bin").st_mode) == 0o600
    assert not (second / ".change.bin.Xy12ab").exists()
    assert _fileio.sha256_tree(second) == _fileio.sha256_tree(src)


def test_refusals_change_nothing(run_module, media, tmp_path):
    src, dest = media
    run_module("media_snapshot", params(src, dest, DAY1))
    before = state(dest)
    for bad, words in ((params(tmp_path / "no-media", dest, DAY2), "does not exist"),
                       (params(src / "keep.bin", dest, DAY2), "is not a directory"),
                       (params(src, tmp_path / "no-backups", DAY2), "does not exist"),
                       (params(src, src / "7", DAY2), "inside the media directory"),
                       (params(src, dest, "2026-11-31"), "is not YYYY-MM-DD"),
                       (params(src, dest, "yesterday"), "is not YYYY-MM-DD"),
                       (params(src, dest, DAY2, prefix="a/b"), "prefix"),
                       (params(src, dest, DAY2, prefix=""), "prefix")):
        for check_mode in (True, False):
            res = run_module("media_snapshot", bad, check_mode=check_mode)
            assert res.get("failed") and words in res["msg"] and "no snapshot was changed" in res["msg"], (bad, res)
    assert state(dest) == before and not (src / "7" / ("media-" + DAY2)).exists()

    write(dest / ("media-" + DAY3), b"a file")
    res = run_module("media_snapshot", params(src, dest, DAY3, force=True))
    assert res["failed"] and "is not a snapshot directory" in res["msg"]
    assert (dest / ("media-" + DAY3)).read_bytes() == b"a file"


@pytest.mark.parametrize("mode", [0o1777, 0o775, 0o757], ids=["1777", "775", "757"])
def test_a_backup_directory_others_can_write_to_is_refused(run_module, media, mode):
    """Root's rsync writes into <dest>/.<prefix><stamp>.partial by name: in a directory others can write to, a
    symlink planted there would redirect the whole snapshot."""
    src, dest = media
    dest.chmod(mode)
    for check_mode in (True, False):
        res = run_module("media_snapshot", params(src, dest, DAY1), check_mode=check_mode)
        assert res.get("failed") and "writable by others" in res["msg"] and "no snapshot was changed" in res["msg"], res
    assert entries(dest) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")
def test_a_backup_directory_owned_by_another_user_is_refused(run_module, media):
    src, dest = media
    os.chown(dest, pwd.getpwnam("nobody").pw_uid, -1)
    res = run_module("media_snapshot", params(src, dest, DAY1))
    assert res.get("failed") and "belongs to" in res["msg"] and "no snapshot was changed" in res["msg"], res
    assert entries(dest) == []


@pytest.mark.parametrize("prefix", ["nul\x00", ".hidden-", "line\nbreak-", "tab\t"], ids=["nul", "hidden", "newline", "tab"])
def test_a_prefix_that_cannot_name_a_snapshot_is_refused(run_module, media, prefix):
    src, dest = media
    res = run_module("media_snapshot", params(src, dest, DAY1, prefix=prefix))
    expected = "holds a NUL byte" if "\0" in prefix else "no snapshot was changed"
    assert res.get("failed") and "prefix" in res["msg"] and expected in res["msg"], res
    assert entries(dest) == []


def test_a_failed_rsync_removes_the_partial_and_keeps_the_snapshots(run_module, media, tmp_path, monkeypatch):
    src, dest = media
    run_module("media_snapshot", params(src, dest, DAY1))
    before = state(dest)
    fake_rsync(tmp_path, monkeypatch, 23)  # rsync copied everything, then reported an error
    res = run_module("media_snapshot", params(src, dest, DAY2))
    assert res["failed"] and "status 23" in res["msg"] and "partial snapshot was removed" in res["msg"]
    forced = run_module("media_snapshot", params(src, dest, DAY1, force=True))
    assert forced["failed"]
    assert state(dest) == before


def test_files_vanishing_during_the_snapshot_warn(run_module, media, tmp_path, monkeypatch):
    src, dest = media
    fake_rsync(tmp_path, monkeypatch, 24)
    res = run_module("media_snapshot", params(src, dest, DAY1))
    assert not res.get("failed") and res["changed"] is True
    assert any("vanished" in warning for warning in res["warnings"])
    assert entries(dest) == ["media-" + DAY1]


def test_force_takes_the_snapshot_again_then_swaps_it_in(run_module, media):
    src, dest = media
    run_module("media_snapshot", params(src, dest, DAY1))
    run_module("media_snapshot", params(src, dest, DAY2))
    write(src / "late.bin", blob("late", 8 * KIB))
    before = state(dest)

    check = run_module("media_snapshot", params(src, dest, DAY2, force=True), check_mode=True)
    assert check["changed"] is True and check["link_dest"] == str(dest / ("media-" + DAY1))
    assert (check["files_transferred"], check["bytes_transferred"]) == (1, 8 * KIB)
    assert state(dest) == before

    run = run_module("media_snapshot", params(src, dest, DAY2, force=True))
    assert run["changed"] is True and run["files_transferred"] == 1
    assert entries(dest) == ["media-" + DAY1, "media-" + DAY2]  # nothing set aside is left
    assert _fileio.sha256_tree(dest / ("media-" + DAY2)) == _fileio.sha256_tree(src)
    assert inodes(dest / ("media-" + DAY2))["keep.bin"] == inodes(dest / ("media-" + DAY1))["keep.bin"]


# ------------------------------------------------------------------------------------------------ media_verify
@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


@pytest.fixture(name="media_db")
def media_db_fixture(pg_server, tmp_path):
    """Database media_verify_test with 8 media_objects rows and their true files in tmp_path/media."""
    media_dir = tmp_path / "media"
    files = {"%d/2026/11/%032x" % (n % 3 + 1, n): blob("file-%d" % n, 1000 + 700 * n) for n in range(1, 8)}
    files["2/2026/11/phötø ✓ 1.jpg"] = blob("unicode", 2048)
    conn = pg_server.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS media_verify_test WITH (FORCE)")
            cur.execute("CREATE DATABASE media_verify_test")
    finally:
        conn.close()
    conn = pg_server.connect("media_verify_test")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(populate_sql(clients=3, messages=10, audit_rows=10, media=0))
            for rel, data in files.items():
                write(media_dir / rel, data)
                cur.execute("INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type) "
                            "VALUES (1, %s, %s, %s, 'image/jpeg')", (rel, hashlib.sha256(data).hexdigest(), len(data)))
    finally:
        conn.close()

    def add_row(storage_path, data=b"x"):
        conn = pg_server.connect("media_verify_test")
        try:
            with conn, conn.cursor() as cur:
                cur.execute("INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type) "
                            "VALUES (1, %s, %s, %s, 'text/plain')", (storage_path, hashlib.sha256(data).hexdigest(), len(data)))
        finally:
            conn.close()

    return media_dir, list(files), add_row  # in id order


def verify_params(conn, media_dir, **extra):
    return dict(conn, db="media_verify_test", media_dir=str(media_dir), **extra)


def test_verify_all_good_in_check_mode_and_run(run_module, conn, media_db):
    media_dir, paths, _unused = media_db
    for check_mode in (True, False):
        res = run_module("media_verify", verify_params(conn, media_dir, sample="all"), check_mode=check_mode)
        assert not res.get("failed") and res["changed"] is False, res
        assert (res["sample"], res["total_rows"], res["checked"], res["ok"]) == ("all", len(paths), len(paths), len(paths))
        assert res["problems"] == [] and res["problems_total"] == 0
    default = run_module("media_verify", verify_params(conn, media_dir))
    assert default["sample"] == 100 and default["checked"] == len(paths) and default["ok"] == len(paths)


def test_verify_detects_each_kind_of_problem(run_module, conn, media_db, tmp_path):
    media_dir, paths, add_row = media_db
    (media_dir / paths[0]).unlink()
    truncated = media_dir / paths[1]
    truncated.write_bytes(truncated.read_bytes()[:-1])
    flipped = media_dir / paths[2]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    add_row("../../etc/passwd")
    add_row("/etc/passwd")
    write(tmp_path / "outside" / "secret", b"x")
    os.symlink(tmp_path / "outside", media_dir / "escape")
    add_row("escape/secret")  # right size and digest, but outside media_dir through a symlink
    expected = {paths[0]: "missing", paths[1]: "size", paths[2]: "sha256", "../../etc/passwd": "unsafe_path",
                "/etc/passwd": "unsafe_path", "escape/secret": "unsafe_path"}

    res = run_module("media_verify", verify_params(conn, media_dir, sample="all"))
    assert res["failed"] and "6 of 11 media files" in res["msg"] and paths[0] in res["msg"]
    assert {p["storage_path"]: p["problem"] for p in res["problems"]} == expected
    assert (res["checked"], res["ok"], res["problems_total"]) == (11, 5, 6)

    report = run_module("media_verify", verify_params(conn, media_dir, sample="all", fail_on_mismatch=False))
    assert not report.get("failed") and report["changed"] is False
    assert {p["storage_path"]: p["problem"] for p in report["problems"]} == expected


def test_verify_seeded_sample_is_reproducible(run_module, conn, media_db, tmp_path):
    _media_dir, paths, _unused = media_db
    empty = tmp_path / "empty"  # every row is then a `missing` problem, which names the rows sampled
    empty.mkdir()

    def sampled(**extra):
        res = run_module("media_verify", verify_params(conn, empty, fail_on_mismatch=False, **extra))
        assert not res.get("failed") and res["checked"] == len(res["problems"]), res
        return [p["storage_path"] for p in res["problems"]]

    first = sampled(sample="2", seed=1)
    assert len(first) == 2 and set(first) <= set(paths)
    assert sampled(sample=2, seed=1) == first
    assert len({tuple(sampled(sample=2, seed=seed)) for seed in range(1, 8)}) > 1
    assert sampled(sample="all") == paths and sampled(sample="all", seed=5) == paths  # every row, in id order
    assert len(sampled(sample=500)) == len(paths)


def test_verify_refuses_bad_input(run_module, conn, media_db, tmp_path):
    media_dir, _paths, _unused = media_db
    for extra, words in ((dict(sample="0"), "positive integer"), (dict(sample="some"), "positive integer"),
                         (dict(sample=-3), "positive integer"), (dict(seed=2 ** 32), "out of range"),
                         (dict(media_dir=str(tmp_path / "nowhere")), "does not exist"),
                         (dict(db="no_such_db"), "cannot read media_objects")):
        res = run_module("media_verify", dict(verify_params(conn, media_dir), **extra))
        assert res.get("failed") and words in res["msg"], (extra, res)


def test_verify_lists_at_most_100_problems(run_module, conn, media_db, pg_server, tmp_path):
    _media_dir, paths, _unused = media_db
    conn_db = pg_server.connect("media_verify_test")
    try:
        with conn_db, conn_db.cursor() as cur:
            cur.execute("INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type) "
                        "SELECT 1, 'gone/' || g, repeat('0', 64), 1, 'image/jpeg' FROM generate_series(1, 120) g")
    finally:
        conn_db.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_module("media_verify", verify_params(conn, empty, sample="all"))
    assert res["failed"] and res["problems_total"] == 120 + len(paths) and len(res["problems"]) == 100
    assert res["msg"].endswith("and %d more" % (120 + len(paths) - 10))


def test_verify_reports_rows_it_cannot_check_never_a_traceback(run_module, conn, media_db, pg_server):
    """A restored database need not have the service's constraints: rows with NULLs or values that are no digest."""
    media_dir, paths, _unused = media_db
    conn_db = pg_server.connect("media_verify_test")
    try:
        with conn_db, conn_db.cursor() as cur:
            cur.execute("ALTER TABLE media_objects DROP CONSTRAINT IF EXISTS media_objects_sha256_check, "
                        "DROP CONSTRAINT IF EXISTS media_objects_size_bytes_check, ALTER COLUMN sha256 DROP NOT NULL, "
                        "ALTER COLUMN size_bytes DROP NOT NULL, ALTER COLUMN storage_path DROP NOT NULL")
            for storage_path, sha256, size in (("bad/1", None, 1000), ("bad/2", "a" * 64, None), ("bad/3", "not hex", 5),
                                               (None, "a" * 64, 1), ("bad/4", "a" * 64, -1)):
                cur.execute("INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type) "
                            "VALUES (1, %s, %s, %s, 'image/jpeg')", (storage_path, sha256, size))
    finally:
        conn_db.close()
    res = run_module("media_verify", verify_params(conn, media_dir, sample="all", fail_on_mismatch=False))
    assert not res.get("failed"), res
    assert res["checked"] == len(paths) + 5 and res["ok"] == len(paths) and res["problems_total"] == 5
    assert [problem["problem"] for problem in res["problems"]] == ["invalid_row"] * 5
