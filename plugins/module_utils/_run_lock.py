# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-host run lock of incident playbooks. PRIVATE to the collection: no compatibility promise.

The lock is a JSON file created with O_EXCL, so of two runs racing for it exactly one wins. It names its holder
(run id, incident id, playbook, start time) so a refused run can say who holds it. A lock older than `stale_after`
seconds is treated as abandoned (the run that took it died without its `always:` step) and taken over.
"""
from __future__ import annotations

import json
import os
import time


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


def _create(path, holder):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(holder, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _displace(path, expected):
    """Move an abandoned lock aside; put it back if it turned out to be a newer holder's (a racing takeover)."""
    aside = "%s.displaced.%d" % (path, os.getpid())
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if read_holder(aside) != expected:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def acquire(path, holder, stale_after, break_lock=False, now=None):
    """Take the lock for `holder` (a dict with at least run_id). Returns (acquired, displaced_holder).

    acquired is False when this run already held it (a retried task); displaced_holder is the abandoned or
    broken holder that was replaced, else None. Raises LockHeld when another live run holds it.
    """
    now = time.time() if now is None else now
    holder = dict(holder, started_epoch=now)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for _attempt in range(3):
        try:
            _create(path, holder)
            return True, None
        except FileExistsError:
            current = read_holder(path)
        if current is None:
            continue
        if current.get("run_id") == holder["run_id"]:
            return False, None
        age = now - float(current.get("started_epoch") or 0)
        if not (break_lock or age > stale_after):
            raise LockHeld(current)
        if not _displace(path, current):
            continue
        try:
            _create(path, holder)
            return True, current
        except FileExistsError:
            continue
    raise LockHeld(read_holder(path) or {})


def release(path, run_id):
    """Remove the lock if this run holds it. Returns 'released', 'absent' or the foreign holder dict."""
    current = read_holder(path)
    if current is None:
        return "absent"
    if current.get("run_id") != run_id:
        return current
    os.unlink(path)
    return "released"
