# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""storage_info against real files and real filesystems: trees written under tmp_path (written files next to sparse
ones, hard links, a symlink to a big file outside, odd names), checked against `du -x -B1` and `df -B1` on the same
tree; a tmpfs mounted inside a tree (never crossed), a bind mount of the same filesystem (counted once), a tmpfs
holding the whole tree so that the module's walk from the mount point sees only it, a 16 MiB ext4 on a loop device
filled to its last inode and its last block. A directory that cannot be listed is a real one: mode 000, read by the
module run without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), which root otherwise has.

The mounts need root and mount(2): as non-root each test that needs them is skipped; as root, a mount refused fails
it. docker is never run: its candidate is checked skipped without docker on PATH, and parsed from a stand-in printing
the JSON `docker system df -v --format '{{json .}}'` prints. journalctl is also the real one (systemd's)."""
from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require, run_module_under  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _storage

MIB = 1 << 20
FAR = 3600  # seconds: a deadline no test reaches


def tmpfs(mount, target, size="64m"):
    return mount(target, "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs")


def write(path, size):
    """A file of `size` real bytes (allocated, unlike a sparse one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def allocated(path):
    return os.lstat(path).st_blocks * 512


def du(top):
    """{path: bytes} of every directory under `top` (included), as `du -x -B1` counts them."""
    out = subprocess.run(["du", "-x", "-B1", "-0", str(top)], capture_output=True, check=True).stdout
    found = {}
    for record in out.split(b"\0"):
        if record:
            size, path = record.split(b"\t", 1)
            found[os.fsdecode(path)] = int(size)
    return found


def walk(top, largest=100, max_entries=10 ** 6, exclude=frozenset()):
    return _storage.walk(str(top), largest, _storage.Budget(max_entries, time.monotonic() + FAR), exclude)


def build_tree(root):
    """A loop-free tree: written and sparse files, a hard link in the same directory, a symlink to a big file
    outside, nested directories."""
    write(root / "big.bin", 3 * MIB)
    with open(root / "sparse.bin", "wb") as handle:
        handle.truncate(100 * MIB)  # 100 MiB long, nothing allocated
    write(root / "a" / "b" / "c" / "deep.bin", MIB)
    write(root / "a" / "small.txt", 100)
    original = write(root / "links" / "original.bin", 2 * MIB)
    os.link(original, root / "links" / "again.bin")
    outside = write(root.parent / "outside.bin", 5 * MIB)
    (root / "to-outside").symlink_to(outside)
    (root / "empty").mkdir()
    return root


def test_sizes_are_allocated_bytes_as_du_counts_them_and_hard_links_and_symlinks_are_not_counted_twice(tmp_path):
    tree = build_tree(tmp_path / "tree")
    found = walk(tree)
    assert not found["truncated"] and found["unreadable"] == 0
    dirs = {item["path"]: item["bytes"] for item in found["largest_dirs"]}
    assert dirs == du(tree)  # every directory, each as du -x counts it
    files = [(Path(item["path"]).name, item["bytes"]) for item in found["largest_files"]]
    assert files[0] == ("big.bin", 3 * MIB)
    assert [name for name, _size in files].count("original.bin") + [name for name, _size in files].count("again.bin") == 1
    assert ("deep.bin", MIB) in files
    assert dict(files)["sparse.bin"] < MIB  # its length is 100 MiB, but it holds nothing
    assert "outside.bin" not in dict(files) and "to-outside" not in dict(files)  # a symlink is no regular file
    assert dirs[str(tree)] < 3 * MIB + 2 * MIB + MIB + MIB  # neither the second link nor the symlink's target
    assert found["largest_dirs"][0]["path"] == str(tree) and found["largest_dirs"][0]["bytes_human"].endswith("MiB")
    assert found["largest_files"][0]["mtime"].endswith("Z")


def test_a_file_linked_from_two_directories_counts_once_in_the_total(tmp_path):
    tree = tmp_path / "tree"
    original = write(tree / "one" / "data.bin", 4 * MIB)
    (tree / "two").mkdir()
    os.link(original, tree / "two" / "data.bin")
    found = walk(tree)
    assert found["largest_dirs"][0] == dict(path=str(tree), bytes=du(tree)[str(tree)], bytes_human=_storage.human(du(tree)[str(tree)]))
    assert 4 * MIB <= found["largest_dirs"][0]["bytes"] < 5 * MIB
    assert len([item for item in found["largest_files"] if item["path"].endswith("data.bin")]) == 1


def test_only_the_n_largest_are_named_largest_first(tmp_path):
    tree = tmp_path / "tree"
    for index in range(1, 8):
        write(tree / ("d%d" % index) / "f.bin", index * 64 * 1024)
    found = walk(tree, largest=3)
    assert [Path(item["path"]).parent.name for item in found["largest_files"]] == ["d7", "d6", "d5"]
    assert [Path(item["path"]).name for item in found["largest_dirs"]] == ["tree", "d7", "d6"]


def test_a_mount_inside_the_tree_is_never_crossed(tmp_path, mount):
    tree = build_tree(tmp_path / "tree")
    before = walk(tree)["largest_dirs"][0]["bytes"]
    inner = tmpfs(mount, tree / "a" / "mnt")
    write(inner / "inside.bin", 4 * MIB)
    found = walk(tree)
    assert not any("inside.bin" in item["path"] for item in found["largest_files"])
    assert not any(item["path"].startswith(str(inner)) for item in found["largest_dirs"])
    assert found["largest_dirs"][0]["bytes"] == du(tree)[str(tree)]
    assert found["largest_dirs"][0]["bytes"] - before <= 4096  # the mount point's own directory at most


def test_a_directory_reached_twice_through_a_bind_mount_counts_once(tmp_path, mount):
    tree = build_tree(tmp_path / "tree")
    before = walk(tree)["largest_dirs"][0]["bytes"]
    mount(tree / "again", "--bind", tree / "a")  # the same filesystem: the same st_dev, the same directory inode
    found = walk(tree)
    assert found["largest_dirs"][0]["bytes"] - before <= 4096
    assert len([item for item in found["largest_files"] if item["path"].endswith("deep.bin")]) == 1


def test_exclude_is_neither_entered_nor_counted(tmp_path):
    tree = build_tree(tmp_path / "tree")
    found = walk(tree, exclude=frozenset({str(tree / "links")}))
    assert not any("links" in item["path"] for item in found["largest_dirs"] + found["largest_files"])
    assert found["largest_dirs"][0]["bytes"] < du(tree)[str(tree)] - 2 * MIB


def test_max_entries_stops_the_walk_and_says_truncated(tmp_path):
    tree = tmp_path / "tree"
    for index in range(30):
        write(tree / ("d%d" % (index % 3)) / ("f%02d" % index), 4096)
    whole = walk(tree)
    assert not whole["truncated"] and whole["entries"] == 33
    cut = walk(tree, max_entries=10)
    assert cut["truncated"] and cut["entries"] == 10
    assert 0 < cut["largest_dirs"][0]["bytes"] < whole["largest_dirs"][0]["bytes"]


def test_a_spent_timeout_stops_the_walk_and_says_truncated(tmp_path):
    tree = build_tree(tmp_path / "tree")
    found = _storage.walk(str(tree), 5, _storage.Budget(10 ** 6, time.monotonic() - 1))
    assert found["truncated"] and found["entries"] == 0
    assert found["largest_dirs"] == [dict(path=str(tree), bytes=allocated(tree), bytes_human=_storage.human(allocated(tree)))]


def test_a_directory_that_cannot_be_listed_is_counted_unreadable(tmp_path, mount):
    """Root reads a mode-000 directory through CAP_DAC_OVERRIDE: the module runs without it (and without
    CAP_DAC_READ_SEARCH), as a process of its own, on a tmpfs holding only this tree."""
    require(shutil.which("setpriv"), "setpriv (util-linux)", "make deps installs it (tests/sandbox/sandbox.py APT_PACKAGES)")
    fs = tmpfs(mount, tmp_path / "fs")
    write(fs / "open" / "seen.bin", MIB)
    write(fs / "locked" / "hidden.bin", 2 * MIB)
    (fs / "locked").chmod(0)
    try:
        result = run_module_under(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"], "storage_info",
                                  dict(paths=[str(fs)]), tmpdir=str(tmp_path))
    finally:
        (fs / "locked").chmod(0o755)
    assert not result.get("failed"), result
    [found] = result["filesystems"]
    assert found["unreadable"] == 1 and not found["truncated"]
    names = [Path(item["path"]).name for item in found["largest_files"]]
    assert names == ["seen.bin"]
    assert str(fs / "locked") in [item["path"] for item in found["largest_dirs"]]  # its own directory still counts


def test_odd_names_are_returned_as_on_disk(tmp_path, mount, run_module):
    fs = tmpfs(mount, tmp_path / "fs")
    write(fs / "new\nline.bin", 2 * MIB)
    odd_dir = os.path.join(os.fsencode(fs), b"dir\xfe")
    os.mkdir(odd_dir)
    with open(os.path.join(odd_dir, b"bad\xff.bin"), "wb") as handle:
        handle.write(b"x" * MIB)
    result = run_module("storage_info", dict(paths=[str(fs)]))
    assert not result.get("failed"), result
    [found] = result["filesystems"]
    files = [item["path"] for item in found["largest_files"]]
    assert files == [str(fs / "new\nline.bin"), str(fs) + "/dir\\xfe/bad\\xff.bin"]
    assert str(fs) + "/dir\\xfe" in [item["path"] for item in found["largest_dirs"]]
    assert "\n" not in result["msg"]


def test_the_module_describes_the_filesystem_and_walks_it_from_its_mount_point(tmp_path, mount, run_module):
    fs = tmpfs(mount, tmp_path / "fs", size="32m")
    build_tree(fs / "tree")
    params = dict(paths=[str(fs / "tree" / "a"), str(fs), str(tmp_path / "nowhere")], largest=4)
    result = run_module("storage_info", params)
    assert not result.get("failed") and result["changed"] is False, result
    [found] = result["filesystems"]  # two paths on one filesystem: described once
    assert result["missing"] == [str(tmp_path / "nowhere")]
    assert (found["path"], found["mount"], found["device"], found["fstype"]) == (str(fs / "tree" / "a"), str(fs), "tmpfs", "tmpfs")
    assert found["size_bytes"] == 32 * MIB
    assert found["available_bytes"] + found["used_bytes"] == found["size_bytes"]  # tmpfs reserves nothing
    assert found["used_percent"] == round(100.0 * found["used_bytes"] / found["size_bytes"], 1)
    assert found["inodes"] > found["inodes_used"] >= 10 and found["full"] is False
    assert found["largest_dirs"][0] == dict(path=str(fs), bytes=du(fs)[str(fs)], bytes_human=_storage.human(du(fs)[str(fs)]))
    assert len(found["largest_dirs"]) == len(found["largest_files"]) == 4
    assert found["used_human"] == _storage.human(found["used_bytes"])
    assert result["candidates"] == [] and result["reclaimable_bytes"] == 0 and result["full"] == []
    assert result["msg"].startswith("%s " % fs) and "missing: %s" % (tmp_path / "nowhere") in result["msg"]
    assert run_module("storage_info", params, check_mode=True)["filesystems"] == result["filesystems"]


def df(path, *fields):
    out = subprocess.run(["df", "-B1", "--output=%s" % ",".join(fields), str(path)], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[1].split()


@pytest.mark.parametrize("threshold, full", [(0, True), (100, False)])
def test_the_threshold_is_judged_on_the_real_filesystem_of_tmp_path(tmp_path, run_module, threshold, full):
    result = run_module("storage_info", dict(paths=[str(tmp_path)], largest=0, threshold_percent=threshold))
    [found] = result["filesystems"]
    size, target, fstype = df(tmp_path, "size", "target", "fstype")
    assert (found["size_bytes"], found["mount"], found["fstype"]) == (int(size), target, fstype)
    assert found["full"] is full and result["full"] == ([target] if full else [])
    assert found["largest_dirs"] == [] and found["entries"] == 0
    assert result["msg"].startswith("FULL: %s; " % target) is full


def test_a_small_ext4_filled_to_its_last_inode_then_its_last_block_is_full(tmp_path, mount, run_module):
    require(shutil.which("mkfs.ext4"), "mkfs.ext4 (e2fsprogs)", "Debian and Ubuntu install it with the base system")
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(16 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-N", "64", str(image)], check=True)  # 64 inodes: few enough to use them all
    fs = mount(tmp_path / "disk", "-o", "loop", image)

    def storage():
        [found] = run_module("storage_info", dict(paths=[str(fs)], largest=3))["filesystems"]
        return found

    fresh = storage()
    assert (fresh["mount"], fresh["fstype"], fresh["inodes"]) == (str(fs), "ext4", 64)
    assert fresh["device"].startswith("/dev/loop") and not fresh["full"]
    assert [int(value) for value in df(fs, "size", "used", "avail")] == [fresh["size_bytes"], fresh["used_bytes"], fresh["available_bytes"]]

    made = 0
    with pytest.raises(OSError) as no_inode:
        while True:
            (fs / ("empty%03d" % made)).touch()
            made += 1
    assert no_inode.value.errno == errno.ENOSPC
    by_inodes = storage()
    assert by_inodes["inodes_used"] == 64 and by_inodes["inodes_used_percent"] == 100.0
    assert by_inodes["used_percent"] < 50 and by_inodes["full"] is True  # full by its inodes alone

    (fs / "empty000").unlink()  # one inode for the file that fills the blocks
    with pytest.raises(OSError) as no_space:
        with open(fs / "filler", "wb") as handle:
            while True:
                handle.write(b"x" * 65536)
                handle.flush()
                os.fsync(handle.fileno())
    assert no_space.value.errno == errno.ENOSPC
    by_space = storage()
    assert by_space["available_bytes"] == 0 and by_space["used_percent"] == 100.0 and by_space["full"] is True
    assert by_space["largest_files"][0]["path"] == str(fs / "filler")
    assert by_space["largest_files"][0]["bytes"] > 12 * MIB


LOGS_COUNTED = ["syslog.1", "syslog.2.gz", "kern.log.3.xz", "app.log-20260101", "app.log.old", "auth.log.12", "trace.zst",
                "old.tar.bz2", "nginx/access.log.1.gz", "nginx/error.log.1"]
LOGS_NOT_COUNTED = ["syslog", "messages", "app.log", "nginx/access.log", "notes.txt", "app.log.1.d/inner.log", "dpkg.log-2026"]


@pytest.mark.parametrize("name", [Path(name).name for name in LOGS_COUNTED] + ["x.9", "y.0.gz", "wtmp.1"])
def test_rotated_log_names(name):
    assert _storage.ROTATED.fullmatch(name)


@pytest.mark.parametrize("name", [Path(name).name for name in LOGS_NOT_COUNTED] + [".1", ".gz", "lastlog", "btmp", "x.log.1.swp"])
def test_current_log_names_are_never_rotated_ones(name):
    assert not _storage.ROTATED.fullmatch(name)


def test_rotated_logs_are_counted_by_name_on_their_filesystem_and_find_selects_the_same(tmp_path, mount, run_module):
    logs = tmp_path / "log"
    for index, name in enumerate(LOGS_COUNTED):
        write(logs / name, (index + 1) * 8192)
    for name in LOGS_NOT_COUNTED:
        write(logs / name, 64 * 1024)
    os.link(logs / "syslog.1", logs / "syslog.1.again.1")  # a hard link: its blocks once
    outside = write(tmp_path / "elsewhere" / "huge.1", 4 * MIB)
    (logs / "link.1").symlink_to(outside)  # a symlink is never followed nor counted
    (logs / "dir.1").mkdir()  # a directory named like a rotated log is entered, not counted
    write(logs / "dir.1" / "deeper.log.2", 4096)
    expected = LOGS_COUNTED + ["dir.1/deeper.log.2"]
    other = tmpfs(mount, logs / "mnt")
    write(other / "other.log.1", MIB)  # another filesystem below the directory: not counted
    result = run_module("storage_info", dict(paths=[str(tmp_path)], largest=0, candidates=dict(rotated_logs=[str(logs), str(tmp_path / "none")])))
    [found] = result["candidates"]
    assert found["name"] == "rotated_logs" and found["skipped"] is None
    assert found["count"] == len(expected)
    assert found["bytes"] == sum(allocated(logs / name) for name in expected) == result["reclaimable_bytes"]
    assert "not a directory: %s" % (tmp_path / "none") in found["detail"] and "the largest %s" % (logs / "nginx" / "error.log.1") in found["detail"]
    # The command in `how`, run with -print0 instead of -delete, selects the same files (find names both links).
    argv = shlex.split(found["how"])
    assert argv[0] == "find" and argv[-1] == "-delete"
    out = subprocess.run(argv[:-1] + ["-print0"], capture_output=True, check=True).stdout
    selected = sorted(os.fsdecode(path) for path in out.split(b"\0") if path)
    assert selected == sorted([str(logs / name) for name in expected] + [str(logs / "syslog.1.again.1")])


def test_docker_and_the_journal_are_skipped_with_the_reason_when_their_tools_are_not_on_path(tmp_path, monkeypatch, run_module):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = run_module("storage_info", dict(paths=[str(tmp_path)], largest=0, candidates=dict(docker=True, journal="yes")))
    assert not result.get("failed"), result
    assert [(item["name"], item["bytes"], item["skipped"]) for item in result["candidates"]] == [
        ("docker_dangling_images", 0, "docker is not on PATH"), ("docker_build_cache", 0, "docker is not on PATH"),
        ("journal", 0, "journalctl is not on PATH")]
    assert result["reclaimable_bytes"] == 0 and "docker_build_cache skipped" in result["msg"]


DOCKER_DF = {
    "Images": [
        {"Containers": "0", "Repository": "<none>", "Tag": "<none>", "ID": "sha256:aa", "Size": "1.2GB", "SharedSize": "1GB", "UniqueSize": "200MB"},
        {"Containers": "0", "Repository": "<none>", "Tag": "<none>", "ID": "sha256:bb", "Size": "50MB", "SharedSize": "0B", "UniqueSize": "50MB"},
        {"Containers": "1", "Repository": "<none>", "Tag": "<none>", "ID": "sha256:cc", "Size": "80MB", "SharedSize": "0B", "UniqueSize": "80MB"},
        {"Containers": "0", "Repository": "ghcr.io/x/app", "Tag": "1.2", "ID": "sha256:dd", "Size": "300MB", "SharedSize": "0B", "UniqueSize": "300MB"},
        {"Containers": "2", "Repository": "postgres", "Tag": "17", "ID": "sha256:ee", "Size": "450MB", "SharedSize": "0B", "UniqueSize": "450MB"},
    ],
    "Containers": [], "Volumes": [],
    "BuildCache": [
        {"ID": "a1", "CacheType": "regular", "Size": "1e+03kB", "InUse": "false", "Shared": "false", "UsageCount": "1"},
        {"ID": "a2", "CacheType": "regular", "Size": "2.5GB", "InUse": "false", "Shared": "false", "UsageCount": "3"},
        {"ID": "a3", "CacheType": "regular", "Size": "700MB", "InUse": "true", "Shared": "false", "UsageCount": "3"},
        {"ID": "a4", "CacheType": "regular", "Size": "90MB", "InUse": "false", "Shared": "true", "UsageCount": "2"},
    ],
}


def stand_in(directory, name, stdout, code=0):
    """A program `name` in `directory` that records its arguments and prints `stdout`."""
    program = directory / name
    program.write_text("#!/bin/sh\nprintf '%%s\\n' \"$@\" > '%s'\ncat <<'EOF'\n%s\nEOF\nexit %d\n" % (directory / (name + ".args"), stdout, code))
    program.chmod(0o755)
    return program


def test_docker_dangling_images_and_unused_build_cache_are_read_from_system_df(tmp_path, monkeypatch, run_module):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir, "docker", json.dumps(DOCKER_DF))
    stand_in(bin_dir, "journalctl", "Archived and active journals take up 1.5G in the file system.")
    monkeypatch.setenv("PATH", "%s:/usr/bin:/bin" % bin_dir)
    result = run_module("storage_info", dict(paths=[str(tmp_path)], largest=0, candidates=dict(docker=True, journal=True)))
    assert (bin_dir / "docker.args").read_text().splitlines() == ["system", "df", "-v", "--format", "{{json .}}"]
    images, cache, journal = result["candidates"]
    assert (images["name"], images["bytes"], images["count"], images["how"]) == (
        "docker_dangling_images", 250 * 10 ** 6, 2, "docker image prune --force")
    assert "300.0 MB" not in images["detail"] and _storage.human(300 * 10 ** 6) in images["detail"]  # unused tagged: named, not counted
    assert (cache["name"], cache["bytes"], cache["count"], cache["how"]) == (
        "docker_build_cache", 10 ** 6 + 25 * 10 ** 8, 2, "docker builder prune --all --force")
    assert (journal["bytes"], journal["skipped"]) == (int(1.5 * 1024 ** 3), None)
    assert result["reclaimable_bytes"] == images["bytes"] + cache["bytes"] + journal["bytes"]


def test_a_docker_whose_daemon_does_not_answer_is_skipped_with_its_message(tmp_path, monkeypatch, run_module):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker"
    program.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\nexit 1\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:/usr/bin:/bin" % bin_dir)
    result = run_module("storage_info", dict(paths=[str(tmp_path)], largest=0, candidates=dict(docker=True)))
    assert not result.get("failed"), result
    for item in result["candidates"]:
        assert item["skipped"] == "docker system df exited 1: Cannot connect to the Docker daemon at unix:///var/run/docker.sock."


def test_the_real_journalctl_is_read(tmp_path, run_module):
    require(shutil.which("journalctl"), "journalctl (systemd)", "a Debian or Ubuntu machine running systemd has it")
    result = run_module("storage_info", dict(paths=[str(tmp_path)], largest=0, candidates=dict(journal=True)))
    [journal] = result["candidates"]
    assert journal["skipped"] is None and journal["bytes"] >= 0 and journal["how"].startswith("journalctl --vacuum")


@pytest.mark.parametrize("text, size", [("0B", 0), ("12.3kB", 12300), ("1.23GB", 1230000000), ("1e+03kB", 10 ** 6), ("512B", 512),
                                        ("N/A", None), ("", None)])
def test_docker_sizes(text, size):
    assert _storage.docker_size(text) == size


@pytest.mark.parametrize("text, size", [
    ("Archived and active journals take up 1.2G in the file system.\n", int(1.2 * 1024 ** 3)),
    ("Journals take up 24.0M on disk.\n", 24 * MIB),
    ("Archived and active journals take up 0B in the file system.\n", 0),
    ("Archived and active journals take up 512B in the file system.\n", 512),
])
def test_journal_usage(text, size):
    assert _storage.parse_journal_usage(text) == size


def test_mountinfo_is_read_with_its_escapes():
    data = (b"22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
            b"98 22 0:50 / /srv/my\\040data\\012x rw - tmpfs tmp\\134fs rw,size=1024k\n"
            b"99 22 0:51 / /mnt/\xff rw master:3 - xfs /dev/sdb rw\n")
    assert _storage.parse_mountinfo(data) == [
        dict(mount="/", fstype="ext4", device="/dev/vda1"),
        dict(mount="/srv/my data\nx", fstype="tmpfs", device="tmp\\fs"),
        dict(mount=os.fsdecode(b"/mnt/\xff"), fstype="xfs", device="/dev/sdb")]
    assert _storage.shown(os.fsdecode(b"/mnt/\xff")) == "/mnt/\\xff"
    assert _storage.one_line("/srv/my data\nx") == "/srv/my data\\nx"


@pytest.mark.parametrize("count, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * MIB, "3.0 MiB"), (5 << 40, "5.0 TiB")])
def test_human_sizes(count, text):
    assert _storage.human(count) == text


@pytest.mark.parametrize("params, message", [
    (dict(paths=[]), "paths is empty"),
    (dict(paths=["relative/dir"]), "'relative/dir' is not an absolute path"),
    (dict(paths=["/"] * 33), "at most 32"),
    (dict(largest=-1), "largest is -1"),
    (dict(largest=1001), "largest is 1001"),
    (dict(max_entries=0), "max_entries is 0"),
    (dict(threshold_percent=101), "threshold_percent is 101"),
    (dict(timeout=0), "timeout is 0"),
    (dict(exclude=["proc"]), "exclude: 'proc' is not an absolute path"),
    (dict(candidates=dict(rotated_logs=["var/log"])), "candidates.rotated_logs: 'var/log' is not an absolute path"),
    (dict(candidates=dict(logs=True)), "candidates: 'logs' unknown"),
    (dict(candidates=dict(docker="maybe")), "candidates.docker is 'maybe': true or false"),
    (dict(candidates=12), "candidates"),
])
def test_refused_options_say_why(run_module, params, message):
    result = run_module("storage_info", dict(dict(largest=0), **params))
    assert result.get("failed") and message in result["msg"], result


def test_the_walk_mode_bits_are_never_changed(tmp_path):
    """Read-only: a walk leaves every entry's mode, size and times as they were (atime aside)."""
    tree = build_tree(tmp_path / "tree")
    before = {path: (path.lstat().st_mode, path.lstat().st_size, path.lstat().st_mtime_ns) for path in tree.rglob("*")}
    walk(tree)
    assert before == {path: (path.lstat().st_mode, path.lstat().st_size, path.lstat().st_mtime_ns) for path in tree.rglob("*")}
    assert stat.S_ISLNK((tree / "to-outside").lstat().st_mode)
