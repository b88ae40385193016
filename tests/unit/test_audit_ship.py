# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Audit archive shipping: the sender sends only what the log server lacks; the log server never deletes or rewrites.

The transport here is a local stand-in for `ssh user@logserver <command>` that runs the receiver exactly as the SSH
forced command does (SSH_ORIGINAL_COMMAND); real sshd with the forced command is exercised in molecule/offsite.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import datetime
import time

import pytest

from conftest import COLLECTIONS, planted_link  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_ship

CLI = "ansible_collections.runbooks.incident.plugins.module_utils._cli"


@pytest.fixture(name="hosts")
def hosts_fixture(tmp_path):
    """An app host's archive, a log server's root, and the forced command between them."""
    local, remote = tmp_path / "app-archive", tmp_path / "logserver" / "app"
    local.mkdir()
    remote.parent.mkdir()
    config = tmp_path / "audit-receive.json"
    config.write_text(json.dumps({"root": str(remote), "cache": str(tmp_path / "receiver-cache" / "app.json")}))
    # `ssh [options] user@host <command>` becomes what sshd runs for the key:
    # SSH_ORIGINAL_COMMAND=<command> python3 -m ..._cli audit-receive --config ...
    ssh = tmp_path / "bin" / "ssh"
    ssh.parent.mkdir()
    ssh.write_text(f"#!{sys.executable}\nimport os, runpy, sys\nsys.path.insert(0, {str(COLLECTIONS)!r})\n"
                   "os.environ['SSH_ORIGINAL_COMMAND'] = sys.argv[-1]\n"
                   f"sys.argv = ['cli', 'audit-receive', '--config', {str(config)!r}]\nrunpy.run_module({CLI!r}, run_name='__main__')\n")
    ssh.chmod(0o755)
    return local, remote, [str(ssh)]


def write(root, rel, content, age=3600):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_ships_new_files_read_only_and_only_once(hosts):
    local, remote, forced = hosts
    write(local, "2026/11/21/audit-20261121T10.jsonl", b'{"id": 1}\n')
    write(local, "2026/11/21/audit-20261121T11.jsonl", b'{"id": 2}\n')
    write(local, "2026/11/22/audit-20261122T09.jsonl", b'{"id": 3}\n', age=10)  # the hour still being written
    first = _audit_ship.ship(str(local), forced, grace_seconds=300)
    assert sorted(first["stored"]) == ["2026/11/21/audit-20261121T10.jsonl", "2026/11/21/audit-20261121T11.jsonl"]
    shipped = remote / "2026/11/21/audit-20261121T10.jsonl"
    assert shipped.read_bytes() == b'{"id": 1}\n' and oct(shipped.stat().st_mode & 0o777) == "0o440"
    assert int(shipped.stat().st_mtime) == int((local / "2026/11/21/audit-20261121T10.jsonl").stat().st_mtime)
    assert not (remote / "2026/11/22").exists()
    again = _audit_ship.ship(str(local), forced, grace_seconds=300)
    assert again["missing"] == [] and again["stored"] == []


def test_a_sender_cannot_rewrite_what_it_shipped(hosts, tmp_path):
    local, remote, forced = hosts
    path = write(local, "2026/11/21/audit-20261121T10.jsonl", b'{"id": 1, "outcome": "failure"}\n')
    _audit_ship.ship(str(local), forced)
    write(local, "2026/11/21/audit-20261121T10.jsonl", b'{"id": 1, "outcome": "success"}\n')  # same size, rewritten
    # Past the sender's checks: a hand-made tar pushing the rewritten file straight to the forced command.
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as archive:
        archive.add(path, arcname="2026/11/21/audit-20261121T10.jsonl")
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"bad"))
    res = subprocess.run(forced + ["put"], input=stream.getvalue(), capture_output=True, check=True)
    summary = json.loads(res.stdout)
    assert summary["conflicts"] == ["2026/11/21/audit-20261121T10.jsonl"] and summary["refused"] == ["../../escape.txt"]
    assert (remote / "2026/11/21/audit-20261121T10.jsonl").read_bytes() == b'{"id": 1, "outcome": "failure"}\n'
    assert not (tmp_path / "escape.txt").exists() and not (remote.parent.parent / "escape.txt").exists()


def test_the_forced_command_allows_only_its_own_commands(hosts):
    _local, remote, forced = hosts
    res = subprocess.run(forced + ["rm -rf /"], capture_output=True, check=False)
    assert res.returncode == 1 and b"only list, put, manifest and manifest-full are allowed" in res.stderr
    assert remote.exists() and not list(remote.iterdir())


def test_the_hourly_job_fails_loudly_on_a_mismatch(hosts, tmp_path):
    local, _remote, forced = hosts
    write(local, "2026/11/21/audit-20261121T10.jsonl", b"one\n")
    _audit_ship.ship(str(local), forced)
    write(local, "2026/11/21/audit-20261121T10.jsonl", b"one, longer\n")
    summary = _audit_ship.ship(str(local), forced)
    assert summary["size_mismatch"] == ["2026/11/21/audit-20261121T10.jsonl"] and summary["stored"] == []
    config = tmp_path / "audit-ship.json"
    config.write_text(json.dumps(dict(root=str(local), host="logs", user="audit", key="/dev/null", known_hosts="/dev/null", grace_minutes=0)))
    res = subprocess.run([sys.executable, "-m", CLI, "audit-ship", "--config", str(config)], capture_output=True, text=True, check=False,
                         env=dict(os.environ, PATH=f"{os.path.dirname(forced[0])}:{os.environ['PATH']}", PYTHONPATH=str(COLLECTIONS)))
    assert res.returncode == 1 and "possible tampering" in res.stderr and "audit-20261121T10.jsonl" in res.stderr


def run_integrity_job(local, forced, tmp_path, full=False):
    config = tmp_path / "audit-integrity.json"
    config.write_text(json.dumps(dict(root=str(local), cache=str(tmp_path / "app-cache.json"), full=full, host="logs",
                                      user="audit", key="/dev/null", known_hosts="/dev/null", grace_minutes=60,
                                      evidence_dir=str(tmp_path / "evidence"))))
    return subprocess.run([sys.executable, "-m", CLI, "audit-integrity", "--config", str(config)], capture_output=True, text=True,
                          check=False, env=dict(os.environ, PATH=f"{os.path.dirname(forced[0])}:{os.environ['PATH']}",
                                                PYTHONPATH=str(COLLECTIONS)))


@pytest.mark.parametrize("full", [False, True])
def test_the_integrity_job_compares_with_the_manifest_the_log_server_computes_itself(hosts, tmp_path, full):
    local, remote, forced = hosts
    for hour in range(3):
        write(local, "2026/11/21/audit-20261121T%02d.jsonl" % hour, b'{"id": %d, "outcome": "failure"}\n' % hour, age=86400)
    _audit_ship.ship(str(local), forced)
    clean = run_integrity_job(local, forced, tmp_path, full)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["files"] == 3
    # The log server's copy is edited behind the receiver's back (as root there), size and mtime kept.
    shipped = remote / "2026/11/21/audit-20261121T01.jsonl"
    before = shipped.stat()
    shipped.chmod(0o640)
    shipped.write_bytes(b'{"id": 1, "outcome": "success"}\n')
    os.utime(shipped, ns=(before.st_atime_ns, before.st_mtime_ns))
    tampered = run_integrity_job(local, forced, tmp_path, full)
    assert tampered.returncode == 1, tampered.stdout
    assert "1 mismatches" in tampered.stderr and "audit-20261121T01.jsonl (content)" in tampered.stderr
    kept = list((tmp_path / "evidence").glob("audit-integrity-*/local/2026/11/21/audit-20261121T01.jsonl"))
    assert [path.read_bytes() for path in kept] == [b'{"id": 1, "outcome": "failure"}\n']


def test_the_log_server_keeps_five_years(tmp_path):
    root = tmp_path / "archive"
    for rel in ("2020/01/01/audit-20200101T00.jsonl", "2021/11/22/audit-20211122T00.jsonl", "2021/11/21/audit-20211121T23.jsonl",
                "2026/11/22/audit-20261122T00.jsonl", "notes/readme.txt"):
        write(root, rel, b"x")
    removed = _audit_ship.prune_years(str(root), 5, today=datetime.date(2026, 11, 22))
    assert removed == ["2020/01/01/audit-20200101T00.jsonl", "2021/11/21/audit-20211121T23.jsonl"]
    kept = ["2021/11/22/audit-20211122T00.jsonl", "2026/11/22/audit-20261122T00.jsonl", "notes/readme.txt"]
    assert sorted(_audit_ship.local_files(str(root))) == kept


# ------------------------------------------------------------------------------------------------ symlinks
def put(forced, files):
    """A tar stream of {name: bytes} pushed straight to the forced command; its JSON summary."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time()) - 3600
            archive.addfile(info, io.BytesIO(data))
    return json.loads(subprocess.run(forced + ["put"], input=stream.getvalue(), capture_output=True, check=True).stdout)


def test_the_receiver_never_writes_through_a_symlinked_directory_in_its_archive(hosts, tmp_path):
    _local, remote, forced = hosts
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    remote.mkdir()
    (remote / "2026").symlink_to(elsewhere)
    (remote / "old.jsonl").symlink_to(tmp_path / "victim")
    summary = put(forced, {"2026/11/21/audit-20261121T10.jsonl": b'{"id": 1}\n', "old.jsonl": b"x\n"})
    assert summary["stored"] == [] and sorted(summary["conflicts"]) == ["2026/11/21/audit-20261121T10.jsonl", "old.jsonl"]
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "victim").exists()


def test_the_receiver_root_is_never_created_through_a_planted_symlink(hosts, tmp_path):
    _local, _remote, forced = hosts
    link = planted_link(tmp_path, "link")
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "audit-receive.json"
    config.write_text(json.dumps({"root": str(link / "app")}))
    res = subprocess.run(forced + ["list"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "refusing to follow the symlink link" in res.stderr
    assert list(elsewhere.iterdir()) == []


def test_the_sender_never_ships_through_a_directory_swapped_for_a_symlink_after_the_scan(hosts, tmp_path):
    local, remote, forced = hosts
    write(local, "2026/11/21/id_ed25519", b"an hour of audit\n")
    root_only = tmp_path / "root-ssh"
    write(root_only, "id_ed25519", b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    # The service account owns its archive: between the sender's scan and its read (while the log server answers
    # `list`), it swaps the day's directory for a link to a directory only root can read.
    swapping = tmp_path / "bin" / "ssh-swapping"
    swapping.write_text(f"#!{sys.executable}\nimport os, shutil, sys\n"
                        f"if sys.argv[-1] == 'list':\n    shutil.rmtree({str(local / '2026/11/21')!r})\n"
                        f"    os.symlink({str(root_only)!r}, {str(local / '2026/11/21')!r})\n"
                        f"os.execv({forced[0]!r}, [{forced[0]!r}] + sys.argv[1:])\n")
    swapping.chmod(0o755)
    with pytest.raises(_audit_ship.ShipError, match="symlink"):
        _audit_ship.ship(str(local), [str(swapping)])
    shipped = [path.read_bytes() for path in remote.rglob("*") if path.is_file()] if remote.exists() else []
    assert not any(b"PRIVATE KEY" in data for data in shipped)
