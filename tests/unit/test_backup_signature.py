# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_signature: a backup's manifest signed with the backup host's key (real ssh-keygen -Y), checked before use."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _signature
from conftest import COLLECTIONS, PG_BINDIR, Psql  # pylint: disable=import-error


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (directory / (name + ".pub")).read_text().strip()


@pytest.fixture(name="keys")
def keys_fixture(tmp_path: Path) -> dict:
    keys = tmp_path / "keys"
    keys.mkdir()
    return {name: keypair(keys, name) for name in ("backup", "intruder")}


def manifest(tmp_path: Path, **fields) -> tuple[Path, bytes]:
    data = (json.dumps(dict(version=1, db="wa_mcp", sha256="ab" * 32, row_counts={"clients": 50}, **fields), indent=2) + "\n").encode()
    return tmp_path / "db-2026-11-22.manifest.json", data


def test_a_signed_manifest_verifies_and_names_its_signer(tmp_path: Path, keys: dict) -> None:
    path, data = manifest(tmp_path)
    _signature.write_signed(str(path), data, str(keys["backup"][0]))
    assert path.read_bytes() == data and Path(str(path) + ".sig").read_bytes().startswith(b"-----BEGIN SSH SIGNATURE-----")
    read, verdict = _signature.check(str(path), [keys["backup"][1]], accept_unsigned=False)
    assert read == data and verdict["verified"] and verdict["warning"] is None
    assert verdict["signer"] == _signature.fingerprint(keys["backup"][1])


def test_a_planted_backup_signed_with_another_key_is_refused_naming_the_key(tmp_path: Path, keys: dict) -> None:
    path, data = manifest(tmp_path)
    _signature.write_signed(str(path), data, str(keys["intruder"][0]))
    with pytest.raises(_signature.SignatureError, match="signed by key SHA256:.* which is not a trusted backup key"):
        _signature.check(str(path), [keys["backup"][1]], accept_unsigned=True)  # a wrong signature is never accepted


@pytest.mark.parametrize("edit", [
    lambda data: data.replace(b'"wa_mcp"', b'"wa_mcq"'),
    lambda data: data + b"\n",
    lambda data: b"",
])
def test_a_manifest_altered_after_signing_is_refused(tmp_path: Path, keys: dict, edit) -> None:
    path, data = manifest(tmp_path)
    _signature.write_signed(str(path), data, str(keys["backup"][0]))
    path.write_bytes(edit(data))
    with pytest.raises(_signature.SignatureError, match="does not match its content"):
        _signature.check(str(path), [keys["backup"][1]], accept_unsigned=False)


def test_a_signature_of_another_backup_does_not_vouch_for_this_one(tmp_path: Path, keys: dict) -> None:
    path, data = manifest(tmp_path)
    other, other_data = tmp_path / "db-2026-11-01.manifest.json", manifest(tmp_path, note="older")[1]
    _signature.write_signed(str(other), other_data, str(keys["backup"][0]))
    path.write_bytes(data)
    Path(str(path) + ".sig").write_bytes(Path(str(other) + ".sig").read_bytes())
    with pytest.raises(_signature.SignatureError, match="does not match its content"):
        _signature.check(str(path), [keys["backup"][1]], accept_unsigned=False)


def test_an_unsigned_backup_needs_the_operators_explicit_acceptance(tmp_path: Path, keys: dict) -> None:
    path, data = manifest(tmp_path)
    path.write_bytes(data)
    with pytest.raises(_signature.SignatureError, match="is not signed .*accept_unsigned=true"):
        _signature.check(str(path), [keys["backup"][1]], accept_unsigned=False)
    read, verdict = _signature.check(str(path), [keys["backup"][1]], accept_unsigned=True)
    assert read == data and not verdict["signed"] and "unsigned" in verdict["warning"]


def test_no_trusted_keys_is_refused_unless_unsigned_is_accepted(tmp_path: Path, keys: dict) -> None:
    path, data = manifest(tmp_path)
    _signature.write_signed(str(path), data, str(keys["backup"][0]))
    with pytest.raises(_signature.SignatureError, match="no trusted backup keys"):
        _signature.check(str(path), [], accept_unsigned=False)
    _data, verdict = _signature.check(str(path), [], accept_unsigned=True)
    assert not verdict["verified"] and "not checked" in verdict["warning"]


@pytest.mark.parametrize("line", ["", "ssh-ed25519", "ssh-ed25519 not-base64!!", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB",
                                  "command=\"rm -rf /\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkey"])
def test_a_trusted_key_that_is_not_a_public_key_line_is_refused(tmp_path: Path, keys: dict, line: str) -> None:
    path, data = manifest(tmp_path)
    _signature.write_signed(str(path), data, str(keys["backup"][0]))
    with pytest.raises(_signature.SignatureError, match="not an OpenSSH public key line|not valid base64|does not hold"):
        _signature.check(str(path), [line], accept_unsigned=False)


def test_a_symlinked_or_fifo_manifest_is_not_read(tmp_path: Path, keys: dict) -> None:
    path, data = manifest(tmp_path)
    real = tmp_path / "real.json"
    _signature.write_signed(str(real), data, str(keys["backup"][0]))
    path.symlink_to(real)
    Path(str(path) + ".sig").symlink_to(str(real) + ".sig")
    with pytest.raises(OSError):
        _signature.check(str(path), [keys["backup"][1]], accept_unsigned=False)


# ------------------------------------------------------------------------------------------------ end to end
# pg_backup signs, pg_restore and dump_verify check, on a real PostgreSQL; the signature travels off-host with its set
# (the S3 emulator on loopback, real age); the nightly job signs and the monthly off-host check verifies.

@pytest.fixture(scope="module", name="source")
def source_fixture(pg_server):
    Psql(pg_server).create("sig_src", "template0")
    Psql(pg_server).psql("sig_src", "CREATE TABLE items (id int PRIMARY KEY, body text); "
                                    "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 50) g")
    return "sig_src"


@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


def databases(pg_server) -> set:
    return Psql(pg_server).databases()


def backup(run_module, source, conn, dest, **extra) -> dict:
    dest.mkdir(exist_ok=True)
    result = run_module("pg_backup", dict(db=source, dest=str(dest), stamp="2026-11-21", **conn, **extra))
    assert result.get("changed") and not result.get("failed"), result
    return result


def restore(run_module, made, conn, live, check_mode=False, **extra) -> dict:
    return run_module("pg_restore", dict(src=made["path"], db=live, incident_id="INC-SIG-" + live, allow_other_db=True,
                                         expect_tables=["items"], **conn, **extra), check_mode=check_mode)


def test_a_signed_backup_restores_and_names_its_signer(run_module, source, conn, backup_key, tmp_path, pg_server):
    made = backup(run_module, source, conn, tmp_path / "backups", **backup_key.signing())
    assert made["signed"] and Path(made["manifest_path"] + ".sig").is_file()
    done = restore(run_module, made, conn, "sig_live1", **backup_key.trust())
    assert done.get("verified") and done["signature"] == dict(signed=True, verified=True, warning=None,
                                                              signer=_signature.fingerprint(backup_key.public)), done
    assert "sig_live1" in databases(pg_server)


def planted(tmp_path: Path, made: dict, stamp: str = "2026-11-21") -> dict:
    """What someone who can write the backup directory or the bucket leaves: another dump with a manifest that matches
    it (plain JSON, anyone can write one), and no signature, or the real backup's signature copied beside it."""
    dest = tmp_path / "planted"
    dest.mkdir()
    sql = gzip.decompress(Path(made["path"]).read_bytes()).replace(b"row 1\n", b"row 1 (forged)\n", 1)
    dump = dest / ("db-%s.sql.gz" % stamp)
    dump.write_bytes(gzip.compress(sql))
    manifest = dict(json.loads(Path(made["manifest_path"]).read_text()), sha256=hashlib.sha256(dump.read_bytes()).hexdigest(),
                    size=dump.stat().st_size, file=dump.name)
    (dest / ("db-%s.manifest.json" % stamp)).write_text(json.dumps(manifest))
    return dict(made, path=str(dump), manifest_path=str(dest / ("db-%s.manifest.json" % stamp)))


def test_a_planted_backup_is_refused_before_anything_is_created(run_module, source, conn, backup_key, tmp_path, pg_server):
    made = backup(run_module, source, conn, tmp_path / "backups", **backup_key.signing())
    forged = planted(tmp_path, made)
    before = databases(pg_server)
    for check_mode in (True, False):
        refused = restore(run_module, forged, conn, "sig_live2", **backup_key.trust(), check_mode=check_mode)
        assert refused.get("failed") and "is not signed" in refused["msg"] and "accept_unsigned=true" in refused["msg"], refused
    verified = run_module("dump_verify", dict(src=forged["path"], expect_tables=["items"], **backup_key.trust()))
    assert verified.get("failed") and "is not signed" in verified["msg"]
    shutil.copy(made["manifest_path"] + ".sig", forged["manifest_path"] + ".sig")  # the real signature does not vouch for it
    for accept in (False, True):
        refused = restore(run_module, forged, conn, "sig_live2", **backup_key.trust(), accept_unsigned=accept)
        assert refused.get("failed") and "does not match its content" in refused["msg"], refused
    assert databases(pg_server) == before


def test_a_dump_swapped_under_a_signed_manifest_is_refused(run_module, source, conn, backup_key, tmp_path, pg_server):
    made = backup(run_module, source, conn, tmp_path / "backups", **backup_key.signing())
    forged = planted(tmp_path, made)
    shutil.copy(forged["path"], made["path"])  # the signed manifest stays; the dump under it is another
    before = databases(pg_server)
    refused = restore(run_module, made, conn, "sig_live3", **backup_key.trust())
    assert refused.get("failed") and "does not match its manifest" in refused["msg"], refused
    assert databases(pg_server) == before


def test_a_backup_another_host_signed_is_trusted_only_with_its_key(run_module, source, conn, backup_key, keys, tmp_path):
    other_key, other_public = keys["intruder"]
    made = backup(run_module, source, conn, tmp_path / "backups", signing_key=str(other_key))
    refused = restore(run_module, made, conn, "sig_live4", **backup_key.trust(), accept_unsigned=True)
    assert refused.get("failed") and "is signed by key %s" % _signature.fingerprint(other_public) in refused["msg"], refused
    done = restore(run_module, made, conn, "sig_live4", trusted_keys=[backup_key.public, other_public])
    assert done.get("verified") and done["signature"]["signer"] == _signature.fingerprint(other_public), done


def test_an_unsigned_backup_is_restored_only_when_accepted_and_then_says_so(run_module, source, conn, backup_key, tmp_path):
    made = backup(run_module, source, conn, tmp_path / "backups")  # no signing key: a backup from before signing
    assert not made["signed"]
    refused = restore(run_module, made, conn, "sig_live5", **backup_key.trust())
    assert refused.get("failed") and "is not signed" in refused["msg"]
    done = restore(run_module, made, conn, "sig_live5", **backup_key.trust(), accept_unsigned=True)
    assert done.get("verified") and not done["signature"]["signed"] and "not proven" in done["signature"]["warning"]
    assert any("not proven" in warning for warning in done["warnings"])


def test_unusable_trusted_keys_or_signing_key_are_refused_with_nothing_done(run_module, source, conn, backup_key, tmp_path, pg_server):
    made = backup(run_module, source, conn, tmp_path / "backups", **backup_key.signing())
    before = databases(pg_server)
    refused = restore(run_module, made, conn, "sig_live6", trusted_keys=["ssh-ed25519 not!base64"])
    assert refused.get("failed") and "trusted_keys" in refused["msg"] and "nothing was changed" in refused["msg"], refused
    missing = run_module("pg_backup", dict(db=source, dest=str(tmp_path / "backups"), stamp="2026-11-22", signing_key=str(tmp_path / "none"), **conn))
    assert missing.get("failed") and "signing key" in missing["msg"], missing
    assert not list((tmp_path / "backups").glob("db-2026-11-22*")) and databases(pg_server) == before


def test_the_signature_travels_off_host_and_is_checked_after_the_fetch(run_module, source, conn, backup_key, tmp_path, moto, monkeypatch):
    """A set shipped by offsite_sync and fetched back (real age, the S3 emulator) still proves where it comes from."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    identity = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True).stdout.strip()
    s3 = dict(bucket="signed-sets", prefix="app/", endpoint_url=moto, access_key="sig-access", secret_key="sig-secret", create_bucket=True)
    made = backup(run_module, source, conn, tmp_path / "backups", **backup_key.signing())
    shipped = run_module("offsite_sync", dict(src=str(tmp_path / "backups"), recipient=recipient, prefixes=["db-"], **s3))
    assert shipped.get("changed") and not shipped.get("failed"), shipped
    fetched_dir = tmp_path / "fetched"
    fetched_dir.mkdir()
    s3.pop("create_bucket")
    fetched = run_module("offsite_fetch", dict(dest=str(fetched_dir), identity=str(identity), prefixes=["db-"], **s3))
    assert not fetched.get("failed"), fetched
    assert (fetched_dir / (Path(made["manifest_path"]).name + ".sig")).read_bytes() == Path(made["manifest_path"] + ".sig").read_bytes()
    verified = run_module("dump_verify", dict(src=str(fetched_dir / Path(made["path"]).name), expect_tables=["items"], **backup_key.trust()))
    assert verified.get("verified") and verified["signature"]["verified"], verified

    # The monthly off-host check (the host-side job) believes this host's key; a set planted in the bucket (encrypted to
    # the public recipient, with a matching manifest) is newer, so it is the one checked, and it is refused.
    job = dict(s3, identity=str(identity), expect_tables=["items"], local_signing_key=str(backup_key.private) + ".pub")
    assert run_job("offsite-check", job, tmp_path)["signer"] == _signature.fingerprint(backup_key.public)
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    planted(attacker, made, stamp="2026-11-22")
    planted_set = run_module("offsite_sync", dict(src=str(attacker / "planted"), recipient=recipient, prefixes=["db-"], **s3))
    assert planted_set.get("changed"), planted_set
    with pytest.raises(AssertionError, match="is not signed"):
        run_job("offsite-check", job, tmp_path)


def run_job(name: str, config: dict, tmp_path: Path) -> dict:
    """A host-side job (_cli), as its systemd service runs it: the summary it prints, or AssertionError with its error."""
    path = tmp_path / (name + ".json")
    path.write_text(json.dumps(config))
    res = subprocess.run([sys.executable, "-m", "ansible_collections.runbooks.incident.plugins.module_utils._cli", name,
                          "--config", str(path)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_the_nightly_job_signs_and_verifies_its_own_backup(source, conn, backup_key, tmp_path):
    """The host-side job (_cli backup-db), as runbooks-backup-db.service runs it."""
    dest = tmp_path / "backups"
    dest.mkdir()
    summary = run_job("backup-db", dict(conn, db=source, dest=str(dest), signing_key=str(backup_key.private), expect_tables=["items"]), tmp_path)
    assert summary["signed"] and summary["verified"]
    manifest = dest / Path(summary["path"]).name.replace(".sql.gz", ".manifest.json")
    _data, verdict = _signature.check(str(manifest), [backup_key.public], accept_unsigned=False)
    assert verdict["verified"]
