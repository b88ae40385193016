# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_signature: a backup's manifest signed with the backup host's key (real ssh-keygen -Y), checked before use."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _signature


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
