# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_fileio: writes never go through a symlink someone else could plant; atomic writes keep owner and mode.

Real files and directories under tmp_path; "someone else" is simulated with directory modes (a directory writable
by group or others is one another user could have put a symlink in)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio


@pytest.fixture(name="victim")
def victim_fixture(tmp_path: Path) -> Path:
    """A file the attacker wants root to overwrite."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    return target


def shared_dir(path: Path) -> Path:
    """A directory others can write to (like /run/lock, or a service-owned data directory)."""
    path.mkdir()
    path.chmod(0o1777)
    return path


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path, victim: Path) -> None:
    area = shared_dir(tmp_path / "area")
    (area / "state.json").symlink_to(victim)
    _fileio.write_json(str(area / "state.json"), {"a": 1}, mode=0o640)
    assert victim.read_text() == "precious\n"
    assert not (area / "state.json").is_symlink()
    assert stat.S_IMODE((area / "state.json").stat().st_mode) == 0o640


def test_a_symlinked_directory_in_a_shared_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    area = shared_dir(tmp_path / "area")
    (area / "sub").symlink_to(elsewhere)
    for write in (lambda: _fileio.write_bytes(str(area / "sub" / "f"), b"x"),
                  lambda: _fileio.makedirs(str(area / "sub" / "deeper")),
                  lambda: _fileio.open_file(str(area / "sub" / "f"), os.O_WRONLY | os.O_CREAT)):
        with pytest.raises(_fileio.UnsafePathError, match="refusing to follow the symlink sub"):
            write()
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_only_root_could_have_made_is_followed(tmp_path: Path) -> None:
    """/var/run -> /run style: the directory holding the link is root's alone, so the link is root's choice."""
    real = tmp_path / "real"
    real.mkdir()
    tmp_path.chmod(0o755)
    (tmp_path / "alias").symlink_to("real")
    _fileio.write_bytes(str(tmp_path / "alias" / "f"), b"ok")
    assert (real / "f").read_bytes() == b"ok"
    _fileio.makedirs(str(tmp_path / "alias" / "a" / "b"), 0o750)
    assert stat.S_IMODE((real / "a" / "b").stat().st_mode) == 0o750


def test_open_file_refuses_a_symlink_and_a_fifo_at_the_last_component(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "log").symlink_to(victim)
    with pytest.raises(_fileio.UnsafePathError, match="symlink"):
        _fileio.open_file(str(tmp_path / "log"), os.O_WRONLY | os.O_APPEND)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        fd = _fileio.open_file(str(tmp_path / "fifo"), os.O_RDONLY)
        os.close(fd)
    assert victim.read_text() == "precious\n"


def test_remove_deletes_a_symlink_not_its_target(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data").write_text("x")
    (tmp_path / "partial").symlink_to(keep)
    _fileio.remove(str(tmp_path / "partial"))
    assert not os.path.lexists(tmp_path / "partial")
    assert (keep / "data").read_text() == "x"
    tree = tmp_path / "tree" / "inner"
    tree.mkdir(parents=True)
    (tree / "link").symlink_to(keep)
    _fileio.remove(str(tmp_path / "tree"))
    assert not (tmp_path / "tree").exists()
    assert (keep / "data").read_text() == "x"
    _fileio.remove(str(tmp_path / "absent"))


def test_set_owner_mode_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "link").symlink_to(victim)
    mode = stat.S_IMODE(victim.stat().st_mode)
    with pytest.raises(OSError):
        _fileio.set_owner_mode(str(tmp_path / "link"), 0o777)
    assert stat.S_IMODE(victim.stat().st_mode) == mode


def test_a_failed_write_leaves_neither_the_final_name_nor_a_partial(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with _fileio.atomic_writer(str(tmp_path / "out")) as handle:
            handle.write(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="no such user"):
        _fileio.write_bytes(str(tmp_path / "out"), b"x", owner="no-such-user-here")
    assert list(tmp_path.iterdir()) == []


def test_open_dir_beneath_creates_what_is_missing_and_returns_a_dir_fd_for_at_calls(tmp_path: Path) -> None:
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileNotFoundError):
            _fileio.open_dir_beneath(root, ["a", "b"])
        fd = _fileio.open_dir_beneath(root, ["a", "b"], create_mode=0o700)
        try:
            os.close(os.open("made", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            assert _fileio.listdir_at(fd) == ["made"]
        finally:
            os.close(fd)
        assert (tmp_path / "a" / "b" / "made").is_file() and stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        fd = _fileio.open_dir_beneath(root, [])  # the directory itself, a descriptor of its own
        assert fd != root and os.path.samestat(os.fstat(fd), os.fstat(root))
        os.close(fd)
    finally:
        os.close(root)


@pytest.mark.parametrize("create_mode", [None, 0o700])
def test_open_dir_beneath_never_follows_a_symlink_nor_enters_a_file(tmp_path: Path, create_mode) -> None:
    tree, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    (tree / "a").mkdir(parents=True)
    elsewhere.mkdir()
    (tree / "a" / "link").symlink_to(elsewhere)  # in a directory only root can write to: still not followed
    (tree / "a" / "file").write_text("")
    root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(_fileio.NotFollowedError, match="a/link is a symlink: not followed") as raised:
            _fileio.open_dir_beneath(root, ["a", "link", "sub"], create_mode)
        assert (raised.value.rel, raised.value.is_link) == ("a/link", True) and isinstance(raised.value, _fileio.UnsafePathError)
        with pytest.raises(_fileio.NotFollowedError, match="a/file is not a directory: not followed") as raised:
            _fileio.open_dir_beneath(root, ["a", "file"], create_mode)
        assert (raised.value.rel, raised.value.is_link) == ("a/file", False)
        for parts in (["a", ".."], [".."], ["a/link"], [""], ["."]):
            with pytest.raises(_fileio.UnsafePathError, match="not a directory name"):
                _fileio.open_dir_beneath(root, parts, create_mode)
    finally:
        os.close(root)
    assert not list(elsewhere.iterdir())
