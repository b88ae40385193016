# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ship the audit archive to the off-host log server, append-only. PRIVATE to the collection.

The sender (an app host) can only run the receiver through an SSH forced command (`restrict,command=...` in the
receiving account's authorized_keys): `list` answers what the receiver holds, `put` reads a tar stream of new files,
`manifest` (`manifest-full`) answers the receiver's own content manifest of what it holds (see _audit_manifest).
The receiver stores a file only if it does not exist yet, atomically and read-only (0440); an existing file is never
deleted or rewritten — a different content for a name it already holds is reported as a conflict, not stored. So a
compromised sender cannot rewrite or delete what it shipped. Inside either archive no symlink is ever followed
(every path is opened component by component from the archive root's descriptor): a link planted or swapped in on
the app host cannot make root ship another file, nor one on the log server make the receiver write elsewhere.
Pure Python: run by the host-side jobs.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import stat
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
    found = _audit_manifest.scan(root).files
    return {rel: info.st_size for rel, info in found.items() if now - info.st_mtime >= grace_seconds}


# ------------------------------------------------------------------------------------------------ receiver
def receive_list(root):
    """What the receiver holds, as JSON: {relpath: size}."""
    return json.dumps(local_files(root), sort_keys=True)


def _existing(root_fd, parts):
    """stat of what the archive holds at `parts` (never through a symlink), or None. Raises UnsafePathError when a
    directory on the way is a symlink."""
    try:
        parent = _audit_manifest.open_dir_beneath(root_fd, parts[:-1])
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(parent)


def _store(root_fd, rel, source, size, mtime):
    """Write one new file atomically, read-only, with the sender's mtime; returns its sha256."""
    parts = rel.split("/")
    directory = _audit_manifest.open_dir_beneath(root_fd, parts[:-1], create_mode=0o750)
    try:
        tmp = ".incoming.%s" % secrets.token_hex(6)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600, dir_fd=directory)
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
                os.fchmod(out.fileno(), 0o440)
                os.utime(out.fileno(), (mtime, mtime))
            # link() fails if the name appeared meanwhile: never replace an existing file.
            os.link(tmp, parts[-1], src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=directory)
    finally:
        os.close(directory)
    return digest.hexdigest()


def _same_content(root_fd, parts, source):
    """Whether the regular file the archive holds at `parts` has the content of the stream `source`."""
    incoming = hashlib.sha256()
    for chunk in iter(lambda: source.read(CHUNK), b""):
        incoming.update(chunk)
    try:
        fd = _audit_manifest.open_file_beneath(root_fd, parts)
    except OSError:
        return False  # a symlink or something else than a file: a conflict
    try:
        held = hashlib.sha256()
        for chunk in iter(lambda: os.read(fd, CHUNK), b""):
            held.update(chunk)
    finally:
        os.close(fd)
    return held.hexdigest() == incoming.hexdigest()


def receive_put(root, stream):
    """Store the new files of a tar stream; returns a summary dict. Existing names are never overwritten."""
    stored, same, conflicts, refused = [], 0, [], []
    root_fd = _fileio.open_dir(root)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                rel = safe_relpath(member.name)
                if rel is None or not member.isfile():
                    refused.append(member.name)
                    continue
                source = archive.extractfile(member)
                parts = rel.split("/")
                try:
                    if _existing(root_fd, parts) is not None:
                        if _same_content(root_fd, parts, source):
                            same += 1
                        else:
                            conflicts.append(rel)
                        continue
                    _store(root_fd, rel, source, member.size, member.mtime)
                except (FileExistsError, NotADirectoryError, _fileio.UnsafePathError):
                    conflicts.append(rel)  # appeared meanwhile, or a symlink / file where a directory should be
                    continue
                stored.append(rel)
    finally:
        os.close(root_fd)
    return dict(stored=stored, unchanged=same, conflicts=conflicts, refused=refused)


def receiver_main(root, command, stdin, stdout, cache=None):
    """The forced command: dispatch SSH_ORIGINAL_COMMAND (`list`, `put`, `manifest` or `manifest-full`)."""
    _fileio.makedirs(root, mode=0o750)
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
    expired = []
    for rel in sorted(local_files(root)):
        match = DATED.search(rel)
        if not match:
            continue
        try:
            day = datetime.date(int(match.group("year")), int(match.group("month")), int(match.group("day")))
        except ValueError:
            continue
        if day < cutoff:
            expired.append(rel)
    if not expired:
        return removed
    root_fd = _fileio.open_dir(root)
    try:
        for rel in expired:
            parts = rel.split("/")
            try:
                parent = _audit_manifest.open_dir_beneath(root_fd, parts[:-1])
            except (FileNotFoundError, NotADirectoryError, _fileio.UnsafePathError):
                continue  # gone, or its directory swapped for a symlink since the scan: never followed
            try:
                info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    os.unlink(parts[-1], dir_fd=parent)
                    removed.append(rel)
            except FileNotFoundError:
                continue
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
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


def _add_member(archive, root_fd, rel):
    """Add the archive file `rel` as a tar member, read through a descriptor reached without following any symlink
    (a file swapped for a link to /etc/shadow after the scan is refused, not shipped)."""
    try:
        fd = _audit_manifest.open_file_beneath(root_fd, rel.split("/"))
    except _fileio.UnsafePathError as exc:
        raise ShipError("%s: %s; nothing was shipped" % (rel, exc.strerror or exc)) from None
    with os.fdopen(fd, "rb") as handle:
        info = tarfile.TarInfo(rel)
        status = os.fstat(fd)
        info.size, info.mtime, info.mode = status.st_size, int(status.st_mtime), stat.S_IMODE(status.st_mode)
        archive.addfile(info, handle)


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
        root_fd = _fileio.open_dir(root)
        try:
            with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                for rel in missing:
                    _add_member(archive, root_fd, rel)
        finally:
            os.close(root_fd)
        spool.seek(0)
        result = remote_call(ssh_argv, "put", spool)
    summary.update(stored=result["stored"], conflicts=result["conflicts"] + result["refused"])
    return summary
