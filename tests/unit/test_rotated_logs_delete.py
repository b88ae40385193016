# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rotated_logs_delete on real files: it deletes exactly what storage_info counts as rotated logs (the same bytes, the
files find selects), never a current log, a directory, a symlink or its target, never a file on another filesystem
mounted below (a tmpfs; skipped only as non-root), follows a log directory that is itself a symlink but nothing below
it, never a directory swapped for a symlink during the walk; check mode deletes nothing; a second run changes
nothing; a file it cannot delete (chattr +i; skipped only as non-root) is named and the others still go."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import require  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _rotated_logs, _storage

MIB = 1 << 20
ROTATED = ["syslog.1", "syslog.2.gz", "kern.log.3.xz", "app.log-20260101", "app.log.old", "auth.log.12", "trace.zst",
           "old.tar.bz2", "nginx/access.log.1.gz", "nginx/error.log.1", "dir.1/deeper.log.2"]
CURRENT = ["syslog", "messages", "app.log", "nginx/access.log", "notes.txt", "app.log.1.d/inner.log", "dpkg.log-2026"]


def write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def tree(root):
    """A log directory: rotated logs, current logs, a hard link, a symlink named like a rotated log pointing out, a
    directory named like one. Returns the file that must survive outside it."""
    for index, name in enumerate(ROTATED):
        write(root / name, (index + 1) * 8192)
    for name in CURRENT:
        write(root / name, 64 * 1024)
    os.link(root / "syslog.1", root / "syslog.1.again.1")
    outside = write(root.parent / "elsewhere" / "precious.1", MIB)
    (root / "link.1").symlink_to(outside)
    (root / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    return outside


def remaining(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() or path.is_symlink())


def storage_info_candidate(run_module, paths):
    result = run_module("storage_info", dict(paths=[paths[0]], largest=0, candidates=dict(rotated_logs=paths)))
    [found] = result["candidates"]
    return found


def test_it_deletes_exactly_what_storage_info_counts_and_nothing_else(tmp_path, run_module):
    logs = tmp_path / "log"
    outside = tree(logs)
    counted = storage_info_candidate(run_module, [str(logs)])

    planned = run_module("rotated_logs_delete", dict(paths=[str(logs)]), check_mode=True)
    assert planned["changed"] is True and planned["bytes"] == counted["bytes"] and planned["bytes"] > 0, planned
    assert "would delete 12 rotated log files" in planned["msg"]
    assert len(remaining(logs)) == len(ROTATED) + len(CURRENT) + 3  # check mode: nothing deleted

    # find with the test storage_info names in `how` selects the same files (both names of the hard link).
    argv = counted["how"].split(" -delete")[0]
    selected = subprocess.run(["sh", "-c", argv + " -print0"], capture_output=True, check=True).stdout
    assert sorted(planned["files"]) == sorted(os.fsdecode(path) for path in selected.split(b"\0") if path)

    result = run_module("rotated_logs_delete", dict(paths=[str(logs)]))
    assert not result.get("failed"), result
    assert (result["changed"], result["count"], result["bytes"]) == (True, 12, counted["bytes"]), result
    assert sorted(result["files"]) == sorted(planned["files"])
    assert result["not_deleted"] == [] and result["missing"] == [] and result["truncated"] is False
    assert remaining(logs) == sorted(CURRENT + ["link.1", "linkdir"])
    assert outside.read_bytes() == b"x" * MIB and (outside.parent / "precious.1").exists()
    assert storage_info_candidate(run_module, [str(logs)])["count"] == 0

    again = run_module("rotated_logs_delete", dict(paths=[str(logs)]))
    assert (again["changed"], again["count"], again["bytes"]) == (False, 0, 0), again


def test_a_log_directory_that_is_a_symlink_is_followed_but_nothing_below_it(tmp_path, run_module):
    real = tmp_path / "disk" / "log"
    write(real / "syslog.1", 4096)
    write(tmp_path / "other" / "keep.1", 4096)
    (real / "sub").symlink_to(tmp_path / "other", target_is_directory=True)
    (tmp_path / "var-log").symlink_to(real, target_is_directory=True)
    result = run_module("rotated_logs_delete", dict(paths=[str(tmp_path / "var-log"), str(tmp_path / "absent")]))
    assert result["files"] == [str(tmp_path / "var-log" / "syslog.1")] and result["missing"] == [str(tmp_path / "absent")], result
    assert not (real / "syslog.1").exists() and (tmp_path / "other" / "keep.1").exists()
    assert "not a directory: %s" % (tmp_path / "absent") in result["msg"]


def test_another_filesystem_mounted_below_is_never_entered(tmp_path, mount, run_module):
    logs = tmp_path / "log"
    write(logs / "syslog.1", 4096)
    other = mount(logs / "mnt", "-t", "tmpfs", "-o", "size=8m", "tmpfs")
    write(other / "other.log.1", MIB)
    result = run_module("rotated_logs_delete", dict(paths=[str(logs)]))
    assert result["files"] == [str(logs / "syslog.1")], result
    assert (other / "other.log.1").exists()


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_not_followed(tmp_path, monkeypatch):
    logs = tmp_path / "log"
    write(logs / "app" / "app.log.1", 4096)
    victim = write(tmp_path / "victim" / "data.1", 4096)
    real_stat = os.stat

    def stat_then_swap(name, *args, **kwargs):
        """`app` is listed as a directory, then replaced by a symlink to the victim's before the walk opens it."""
        info = real_stat(name, *args, **kwargs)
        if name == "app" and not (tmp_path / "app-moved").exists():
            (logs / "app").rename(tmp_path / "app-moved")
            (logs / "app").symlink_to(tmp_path / "victim", target_is_directory=True)
        return info

    monkeypatch.setattr(os, "stat", stat_then_swap)
    result = _rotated_logs.run(dict(paths=[str(logs)], max_entries=1000, timeout=60))
    monkeypatch.undo()
    assert (tmp_path / "app-moved").exists() and (logs / "app").is_symlink()
    assert result["files"] == [] and result["unreadable"] == 1, result
    assert victim.exists() and (tmp_path / "app-moved" / "app.log.1").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root (CAP_LINUX_IMMUTABLE)")
def test_a_file_that_cannot_be_deleted_is_named_and_the_others_still_go(tmp_path, run_module):
    logs = tmp_path / "log"
    write(logs / "a.log.1", 4096)
    write(logs / "locked" / "b.log.1", 4096)
    write(logs / "z.log.1", 4096)
    subprocess.run(["chattr", "+i", str(logs / "locked" / "b.log.1")], check=False, capture_output=True)
    immutable = subprocess.run(["lsattr", str(logs / "locked" / "b.log.1")], capture_output=True, text=True, check=False).stdout
    require(immutable and "i" in immutable.split()[0], "chattr +i to make a file immutable here (CAP_LINUX_IMMUTABLE, a filesystem with the flag)",
            "run as root outside an unprivileged container, as make test does")
    try:
        result = run_module("rotated_logs_delete", dict(paths=[str(logs)]))
    finally:
        subprocess.run(["chattr", "-i", str(logs / "locked" / "b.log.1")], check=False, capture_output=True)
    assert result["failed"] is True and result["not_deleted"] == [dict(path=str(logs / "locked" / "b.log.1"), error="Operation not permitted")], result
    assert sorted(result["files"]) == [str(logs / "a.log.1"), str(logs / "z.log.1")]
    assert "could not be deleted" in result["msg"] and (logs / "locked" / "b.log.1").exists()


def test_max_entries_cuts_the_walk_short_and_says_so(tmp_path, run_module):
    logs = tmp_path / "log"
    for index in range(20):
        write(logs / ("f%02d.log.1" % index), 4096)
    result = run_module("rotated_logs_delete", dict(paths=[str(logs)], max_entries=5))
    assert result["truncated"] is True and result["count"] == 5 and "cut short" in result["msg"], result


@pytest.mark.parametrize("params, refused", [
    (dict(paths=[]), "paths is empty"),
    (dict(paths=["var/log"]), "'var/log' is not an absolute path"),
    (dict(paths=["/"]), "/ is not a log directory"),
    (dict(paths=["/var/log"], max_entries=0), "max_entries is 0"),
])
def test_refused_options_delete_nothing(params, refused, run_module):
    result = run_module("rotated_logs_delete", params)
    assert result["failed"] is True and refused in result["msg"] and "nothing was deleted" in result["msg"], result


def test_the_names_are_the_ones_storage_info_knows():
    assert all(_storage.ROTATED.fullmatch(Path(name).name) for name in ROTATED)
    assert not any(_storage.ROTATED.fullmatch(Path(name).name) for name in CURRENT)
