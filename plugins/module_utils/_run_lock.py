# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-host run lock of incident playbooks. PRIVATE to the collection: no compatibility promise.

The lock outlives the module process (it is held from a playbook's first task to its `always:`), so it is a JSON
file naming its holder (run id, incident, playbook, start time) rather than a kernel lock. Every read-decide-write
on it happens under flock(2) on a sibling guard file, so of two runs racing, even to take over an abandoned lock,
exactly one wins. A lock older than `stale_after` seconds belongs to a run that died before its `always:` step.

The lock lives in a directory only root can write to (created 0755 when missing; refused when it belongs to another
user or others may write to it): in a world-writable directory such as /run/lock any local user could plant a lock
that blocks every incident playbook, or a symlink that makes root write elsewhere. Everything in it is opened
relative to that directory's descriptor, never through a symlink.

A file that is not a lock record (not a JSON object with a string run_id and a finite started_epoch that is not in
the future) is unreadable: it never counts as ours, and it is aged by the file's own mtime, which the kernel set
when it was written, because its content cannot be trusted. A started_epoch more than FUTURE_TOLERANCE ahead of the
clock makes the record unreadable (a clock stepped back by NTP is within it: that lock stays live). An unreadable file
dated in the future is stale at once: nothing on this host wrote it then, so its dates cannot hold a run off.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import secrets
import stat
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

# What an incident/change id may look like (it is recorded in lock files, journal markers and database comments).
# \Z, not $: `$` also matches before a trailing newline.
INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
DEFAULT_PATH = "/run/runbooks-incident/run.lock"
DIRECTORY_MODE = 0o755
# Seconds a started_epoch may be ahead of the clock and still be a live lock (clock steps of NTP are smaller).
FUTURE_TOLERANCE = 300
# A lock record is a few hundred bytes; more is not one (and is not read whole).
MAX_RECORD_BYTES = 1 << 16


class LockError(Exception):
    """The lock cannot be used safely here; nothing was changed."""


class LockHeld(Exception):
    def __init__(self, holder):
        super().__init__("run lock held")
        self.holder = holder


def _json_text(value):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def record_problem(data, now):
    """Why `data` (parsed JSON) is not a lock record, or None when it is one."""
    if not isinstance(data, dict):
        return "holds %s not a lock record" % _json_text(data)
    if not isinstance(data.get("run_id"), str) or not data["run_id"]:
        return "has no run_id string"
    epoch = data.get("started_epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        return "started_epoch is not a number (%s)" % _json_text(epoch)
    if not math.isfinite(epoch):
        return "started_epoch is not finite (%s)" % epoch
    if epoch > now + FUTURE_TOLERANCE:
        return "started_epoch in the future (%s, %d s ahead of this host's clock)" % (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)), epoch - now)
    return None


def age_of(holder, now):
    """Seconds since the holder took the lock; an unreadable lock by its file's mtime (see the module docstring)."""
    if "problem" not in holder:
        return max(0.0, now - holder["started_epoch"])
    written = holder.get("written_epoch", 0)
    return math.inf if written > now + FUTURE_TOLERANCE else max(0.0, now - written)


def _read_at(dir_fd, name, now):
    """The holder (a lock record), a dict with `problem` and `written_epoch` for anything else there, or None."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise LockError("the lock path %s is a directory, not a lock file; remove it" % name)

    def unreadable(problem):
        return dict(problem=problem, written_epoch=info.st_mtime)

    if stat.S_ISLNK(info.st_mode):
        return unreadable("is a symlink, not a lock record")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device is never opened
        return unreadable("is not a regular file")
    try:
        fd = os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return unreadable("cannot be opened (%s)" % (exc.strerror or exc))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return unreadable("is not a regular file")
        raw = os.read(fd, MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    if not raw.strip():
        return unreadable("is empty")
    if len(raw) > MAX_RECORD_BYTES:
        return unreadable("is larger than a lock record")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return unreadable("is not UTF-8 text")
    except ValueError:  # a half-written or foreign file
        return unreadable("is not JSON")
    problem = record_problem(data, now)
    return data if problem is None else unreadable(problem)


def _split(path):
    """(directory, name) of a lock path. The name must end in .lock: a lock that is not a record is replaced, so a
    mistyped path must never name another file (/etc/passwd is "not JSON" too)."""
    directory, name = os.path.split(path.rstrip("/"))
    if not name.endswith(".lock") or name == ".lock":
        raise LockError("the lock file name %r does not end in .lock: refusing to use it, so that a mistyped path "
                        "never replaces another file" % name)
    return directory, name


@contextlib.contextmanager
def _lock_dir(path, create):
    """(directory descriptor, lock file name) with flock held on the guard; (None, name) when the directory is
    missing and `create` is false."""
    directory, name = _split(path)
    try:
        dir_fd = _fileio.open_dir(directory or ".", DIRECTORY_MODE if create else None)
    except FileNotFoundError:
        if create:
            raise
        yield None, name
        return
    try:
        info = os.fstat(dir_fd)
        if info.st_uid not in (0, os.geteuid()):
            raise LockError("the lock directory %s belongs to %s, not root: its owner could plant or remove locks; keep "
                            "the lock in a directory of root's (default %s)" % (directory, _user_name(info.st_uid), DEFAULT_PATH))
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LockError("the lock directory %s is writable by others (mode %04o): any local user could plant a lock "
                            "that blocks every run; keep the lock in a directory only root can write to (default %s)"
                            % (directory, stat.S_IMODE(info.st_mode), DEFAULT_PATH))
        guard_name = name + ".guard"
        try:
            guard = os.open(guard_name, os.O_RDWR | os.O_CREAT | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK,
                            0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockError("the lock guard %s is a symlink: refusing to follow it; remove it" % os.path.join(directory, guard_name)) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(guard).st_mode):
                raise LockError("the lock guard %s is not a regular file; remove it" % os.path.join(directory, guard_name))
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield dir_fd, name
        finally:
            os.close(guard)
    finally:
        os.close(dir_fd)


def _user_name(uid):
    import pwd  # pylint: disable=import-outside-toplevel
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def _write_at(dir_fd, name, holder):
    """Replace the lock file atomically (a symlink or other file there is replaced, never followed)."""
    tmp = ".%s.%s.partial" % (name, secrets.token_hex(4))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(holder, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def read_holder(path, now=None):
    """The lock's holder, a dict with `problem` for a file that is not a lock record, or None."""
    now = time.time() if now is None else now
    directory, name = _split(path)
    try:
        dir_fd = _fileio.open_dir(directory or ".")
    except FileNotFoundError:
        return None
    try:
        return _read_at(dir_fd, name, now)
    finally:
        os.close(dir_fd)


def acquire(path, holder, stale_after, break_lock=False, now=None):
    """Take the lock for `holder` (a dict with at least run_id). Returns (acquired, displaced_holder, holder now).

    acquired is False when this run already held it (a retried task); displaced_holder is the abandoned, broken
    or unreadable holder that was replaced, else None. Raises LockHeld when another live run holds it (or an
    unreadable file younger than stale_after is there), LockError when the lock cannot be used safely.
    """
    now = time.time() if now is None else now
    record = dict(holder, started_epoch=now, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    with _lock_dir(path, create=True) as (dir_fd, name):
        current = _read_at(dir_fd, name, now)
        if current is not None and "problem" not in current and current["run_id"] == record["run_id"]:
            return False, None, current
        if current is not None and not (break_lock or age_of(current, now) > stale_after):
            raise LockHeld(current)
        _write_at(dir_fd, name, record)
        return True, current, record


def release(path, run_id, now=None):
    """Remove the lock if this run holds it. Returns 'released', 'absent' or the foreign (or unreadable) holder."""
    now = time.time() if now is None else now
    with _lock_dir(path, create=False) as (dir_fd, name):
        if dir_fd is None:
            return "absent"
        current = _read_at(dir_fd, name, now)
        if current is None:
            return "absent"
        if "problem" in current or current["run_id"] != run_id:
            return current
        os.unlink(name, dir_fd=dir_fd)
        return "released"
