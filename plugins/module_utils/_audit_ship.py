# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ship the audit archive to the off-host log server, append-only. PRIVATE to the collection.

The sender (an app host) can only run the receiver through an SSH forced command (`restrict,command=...` in the
receiving account's authorized_keys): `list` answers what the receiver holds, `put` reads a tar stream of new files,
`manifest` (`manifest-full`) answers the receiver's own content manifest of what it holds (see _audit_manifest).
The receiver stores a file only if it does not exist yet, atomically and read-only (0440); an existing file is never
deleted or rewritten — a different content for a name it already holds is reported as a conflict, not stored. So a
compromised sender cannot rewrite or delete what it shipped. Pure Python: run by the host-side jobs.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import subprocess
import tarfile
import tempfile
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest, _fileio

CHUNK = 1 << 20


class ShipError(Exception):
    pass


def safe_relpath(name):
    """A member path that stays inside the archive root, or None."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return None
    if any(part.startswith(".") for part in parts):
        return None  # hidden names are partial writes
    return name


def local_files(root, grace_seconds=0, now=None):
    """{relpath: size} of the archive's regular files, without hidden files and files changed within the grace."""
    if not os.path.isdir(root):
        return {}
    now = time.time() if now is None else now
    found, _irregular = _audit_manifest.scan(root)
    return {rel: info.st_size for rel, info in found.items() if now - info.st_mtime >= grace_seconds}


# ------------------------------------------------------------------------------------------------ receiver
def receive_list(root):
    """What the receiver holds, as JSON: {relpath: size}."""
    return json.dumps(local_files(root), sort_keys=True)


def _store(root, rel, source, size, mtime):
    """Write one new file atomically, read-only, with the sender's mtime; returns its sha256."""
    target = os.path.join(root, rel)
    directory = os.path.dirname(target)
    os.makedirs(directory, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".incoming.")
    digest = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if written != size:
            raise ShipError("%s: stream ended after %d of %d bytes" % (rel, written, size))
        os.chmod(tmp, 0o440)
        os.utime(tmp, (mtime, mtime))
        # link() fails if the name appeared meanwhile: never replace an existing file.
        os.link(tmp, target)
    finally:
        os.unlink(tmp)
    return digest.hexdigest()


def receive_put(root, stream):
    """Store the new files of a tar stream; returns a summary dict. Existing names are never overwritten."""
    stored, same, conflicts, refused = [], 0, [], []
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            rel = safe_relpath(member.name)
            if rel is None or not member.isfile():
                refused.append(member.name)
                continue
            source = archive.extractfile(member)
            target = os.path.join(root, rel)
            if os.path.lexists(target):
                incoming = hashlib.sha256()
                for chunk in iter(lambda: source.read(CHUNK), b""):
                    incoming.update(chunk)
                if os.path.isfile(target) and _fileio.sha256_file(target) == incoming.hexdigest():
                    same += 1
                else:
                    conflicts.append(rel)
                continue
            try:
                _store(root, rel, source, member.size, member.mtime)
            except FileExistsError:
                conflicts.append(rel)
                continue
            stored.append(rel)
    return dict(stored=stored, unchanged=same, conflicts=conflicts, refused=refused)


def receiver_main(root, command, stdin, stdout, cache=None):
    """The forced command: dispatch SSH_ORIGINAL_COMMAND (`list`, `put`, `manifest` or `manifest-full`)."""
    os.makedirs(root, mode=0o750, exist_ok=True)
    if command == "list":
        stdout.write((receive_list(root) + "\n").encode())
    elif command == "put":
        stdout.write((json.dumps(receive_put(root, stdin), sort_keys=True) + "\n").encode())
    elif command in ("manifest", "manifest-full"):
        manifest = _audit_manifest.build(root, cache_path=cache, full=command == "manifest-full")
        stdout.write((json.dumps(manifest, sort_keys=True) + "\n").encode())
    else:
        raise ShipError("refused command %r: only list, put, manifest and manifest-full are allowed" % command)
    stdout.flush()


DATED = re.compile(r"(?:^|/)(?P<year>[0-9]{4})/(?P<month>[0-9]{2})/(?P<day>[0-9]{2})/")


def prune_years(root, keep_years, today=None):
    """Remove files dated by their YYYY/MM/DD/ path more than `keep_years` years before today; returns them.
    The log server's retention (the seeds: 5 years); files without a date in their path are kept."""
    today = today or datetime.date.today()
    try:
        cutoff = today.replace(year=today.year - keep_years)
    except ValueError:  # 29 February
        cutoff = today.replace(year=today.year - keep_years, day=28)
    removed = []
    for rel in sorted(local_files(root)):
        match = DATED.search(rel)
        if not match:
            continue
        try:
            day = datetime.date(int(match.group("year")), int(match.group("month")), int(match.group("day")))
        except ValueError:
            continue
        if day < cutoff:
            os.unlink(os.path.join(root, rel))
            removed.append(rel)
    return removed


# ------------------------------------------------------------------------------------------------ sender
def ssh_command(host, user, key, known_hosts, port=22):
    return ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "UserKnownHostsFile=%s" % known_hosts, "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
            "%s@%s" % (user, host)]


def remote_call(ssh_argv, command, stdin=None):
    """Run one receiver command over SSH; its JSON answer."""
    res = subprocess.run(ssh_argv + [command], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                         capture_output=True, check=False)
    if res.returncode != 0:
        raise ShipError("the log server refused or failed '%s': %s" % (command, res.stderr.decode(errors="replace").strip()[:300]))
    return json.loads(res.stdout.decode())


def ship(root, ssh_argv, grace_seconds=300, check_mode=False):
    """Send the files the log server lacks. Returns a summary; size mismatches are reported, never sent."""
    local = local_files(root, grace_seconds)
    remote = remote_call(ssh_argv, "list")
    missing = sorted(rel for rel in local if rel not in remote)
    mismatched = sorted(rel for rel in local if rel in remote and remote[rel] != local[rel])
    summary = dict(local=len(local), remote=len(remote), missing=missing, size_mismatch=mismatched, stored=[], conflicts=[])
    if check_mode or not missing:
        return summary
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            for rel in missing:
                info = archive.gettarinfo(os.path.join(root, rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(os.path.join(root, rel), "rb") as handle:
                    archive.addfile(info, handle)
        spool.seek(0)
        result = remote_call(ssh_argv, "put", spool)
    summary.update(stored=result["stored"], conflicts=result["conflicts"] + result["refused"])
    return summary
