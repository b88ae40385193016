# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-host run lock of incident playbooks. PRIVATE to the collection: no compatibility promise.

The lock outlives the module process (it is held from a playbook's first task to its `always:`), so it is a JSON
file naming its holder (run id, incident, playbook, start time) rather than a kernel lock. Every read-decide-write
on it happens under flock(2) on a sibling guard file, so of two runs racing, even to take over an abandoned lock,
exactly one wins. A lock older than `stale_after` seconds belongs to a run that died before its `always:` step.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time

# What an incident/change id may look like (it is recorded in lock files, journal markers and database comments).
INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class LockHeld(Exception):
    def __init__(self, holder):
        super().__init__("run lock held")
        self.holder = holder


def read_holder(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        # A half-written or foreign file: unreadable holders are treated as stale, never as ours.
        return {"run_id": None, "started_epoch": 0}


@contextlib.contextmanager
def _guarded(path):
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path + ".guard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path, holder):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".run-lock.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(holder, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def acquire(path, holder, stale_after, break_lock=False, now=None):
    """Take the lock for `holder` (a dict with at least run_id). Returns (acquired, displaced_holder).

    acquired is False when this run already held it (a retried task); displaced_holder is the abandoned or
    broken holder that was replaced, else None. Raises LockHeld when another live run holds it.
    """
    now = time.time() if now is None else now
    holder = dict(holder, started_epoch=now, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    with _guarded(path):
        current = read_holder(path)
        if current is not None and current.get("run_id") == holder["run_id"]:
            return False, None
        if current is not None:
            age = now - float(current.get("started_epoch") or 0)
            if not (break_lock or age > stale_after):
                raise LockHeld(current)
        _write(path, holder)
        return True, current


def release(path, run_id):
    """Remove the lock if this run holds it. Returns 'released', 'absent' or the foreign holder dict."""
    with _guarded(path):
        current = read_holder(path)
        if current is None:
            return "absent"
        if current.get("run_id") != run_id:
            return current
        os.unlink(path)
        return "released"
