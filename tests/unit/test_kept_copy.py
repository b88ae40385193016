# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kept_copy: a file kept before a change, dropped once the change is verified or put back when it fails; on real
files, owners and modes, with the four-run pattern and what an attacker or a crash leaves in the way."""
from __future__ import annotations

import os
import stat

import pytest

NOBODY = 65534


@pytest.fixture(name="secrets_file")
def secrets_file_fixture(tmp_path):
    path = tmp_path / "secrets.enc.yaml"
    path.write_bytes(b"token: ENC[AES256_GCM,data:old]\n")
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o640)
    return path


def params(path, state="kept"):
    return {"path": str(path), "copy": str(path) + ".pre-INC-1", "state": state}


def files(directory):
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid) for p in directory.iterdir()}


def test_kept_four_runs_with_the_owner_and_mode(run_module, secrets_file):
    before = files(secrets_file.parent)
    check = run_module("kept_copy", params(secrets_file), check_mode=True)
    assert check["changed"] and files(secrets_file.parent) == before
    assert run_module("kept_copy", params(secrets_file))["changed"]
    copy = secrets_file.parent / "secrets.enc.yaml.pre-INC-1"
    assert files(secrets_file.parent)[copy.name] == before[secrets_file.name]
    assert not run_module("kept_copy", params(secrets_file), check_mode=True)["changed"]
    assert not run_module("kept_copy", params(secrets_file))["changed"]


def test_a_re_run_after_a_crash_keeps_the_first_copy(run_module, secrets_file):
    """The change wrote the file, then the run died: the re-run must not keep the half-changed file."""
    run_module("kept_copy", params(secrets_file))
    secrets_file.write_bytes(b"token: ENC[AES256_GCM,data:new]\n")
    assert not run_module("kept_copy", params(secrets_file))["changed"]
    assert run_module("kept_copy", params(secrets_file, "restored"))["changed"]
    assert secrets_file.read_bytes() == b"token: ENC[AES256_GCM,data:old]\n"
    assert files(secrets_file.parent) == {secrets_file.name: (b"token: ENC[AES256_GCM,data:old]\n", 0o640, NOBODY)}


def test_restored_puts_back_owner_and_mode_and_check_mode_changes_nothing(run_module, secrets_file):
    run_module("kept_copy", params(secrets_file))
    secrets_file.unlink()
    secrets_file.write_bytes(b"broken")  # root-owned, 0644: what a failed change may leave
    secrets_file.chmod(0o644)
    before = files(secrets_file.parent)
    assert run_module("kept_copy", params(secrets_file, "restored"), check_mode=True)["changed"]
    assert files(secrets_file.parent) == before
    assert run_module("kept_copy", params(secrets_file, "restored"))["changed"]
    assert files(secrets_file.parent) == {secrets_file.name: (b"token: ENC[AES256_GCM,data:old]\n", 0o640, NOBODY)}


def test_an_owner_without_a_name_on_this_host_is_kept(run_module, secrets_file):
    """A file restored from a backup may belong to an id no user here has: the copy and the file put back keep it."""
    os.chown(secrets_file, 4242, 4343)
    assert run_module("kept_copy", params(secrets_file))["changed"]
    secrets_file.write_bytes(b"changed")
    assert run_module("kept_copy", params(secrets_file, "restored"))["changed"]
    info = secrets_file.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4343, 0o640)
    assert secrets_file.read_bytes() == b"token: ENC[AES256_GCM,data:old]\n"


def test_dropped_removes_the_copy_once(run_module, secrets_file):
    run_module("kept_copy", params(secrets_file))
    assert run_module("kept_copy", params(secrets_file, "dropped"), check_mode=True)["changed"]
    assert len(files(secrets_file.parent)) == 2
    assert run_module("kept_copy", params(secrets_file, "dropped"))["changed"]
    assert not run_module("kept_copy", params(secrets_file, "dropped"))["changed"]
    assert list(files(secrets_file.parent)) == [secrets_file.name]


@pytest.mark.parametrize("state, message", [
    ("restored", "nothing to put back"),
    ("kept", "there is no"),
])
def test_refusals_change_nothing(run_module, tmp_path, state, message):
    (tmp_path / "other").write_text("x")
    before = files(tmp_path)
    result = run_module("kept_copy", params(tmp_path / "secrets.enc.yaml", state))
    assert result["failed"] and message in result["msg"] and "nothing was changed" in result["msg"], result["msg"]
    assert files(tmp_path) == before


@pytest.mark.parametrize("state", ["kept", "restored", "dropped"])
def test_a_symlink_planted_at_the_copy_is_never_followed(run_module, secrets_file, tmp_path, state):
    """Someone who can write the directory links the copy's name to a file of theirs, or to one root owns."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"planted")
    (tmp_path / "secrets.enc.yaml.pre-INC-1").symlink_to(target)
    before = files(tmp_path)
    result = run_module("kept_copy", params(secrets_file, state))
    assert result["failed"] and "symlink" in result["msg"], result["msg"]
    assert files(tmp_path) == before and target.read_bytes() == b"planted"


def test_a_symlink_at_the_file_is_not_kept(run_module, tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"secret elsewhere")
    (tmp_path / "secrets.enc.yaml").symlink_to(target)
    result = run_module("kept_copy", params(tmp_path / "secrets.enc.yaml"))
    assert result["failed"] and "symlink" in result["msg"] and not (tmp_path / "secrets.enc.yaml.pre-INC-1").exists()


def test_the_copy_cannot_be_the_file(run_module, secrets_file):
    result = run_module("kept_copy", {"path": str(secrets_file), "copy": str(secrets_file)})
    assert result["failed"] and "cannot be the file itself" in result["msg"]
