# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A file kept as it was until a change of it is verified, put back if the change fails. PRIVATE to the collection.

The copy is made once: a re-run after a crash finds the copy of the first run, the state before any change, and
keeps it. Both names are reached through _fileio (no symlink followed, regular files only); the copy and the file put
back are written atomically with the owner and mode of what they copy.
"""
from __future__ import annotations

import os
import stat

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio


class KeptCopyError(Exception):
    pass


def _read(path):
    """(bytes, stat) of the regular file at `path`, or None when nothing is there."""
    try:
        fd = _fileio.open_file(path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(), os.fstat(handle.fileno())


def _write_like(path, data, info):
    _fileio.write_bytes(path, data, mode=stat.S_IMODE(info.st_mode), owner=info.st_uid, group=info.st_gid)


def keep(path, copy, check_mode=False):
    """Copy `path` to `copy` unless a copy is already there; True when it (would have) copied."""
    if copy == path:
        raise KeptCopyError("the copy of %s cannot be the file itself" % path)
    if _read(copy) is not None:
        return False
    found = _read(path)
    if found is None:
        raise KeptCopyError("there is no %s to keep" % path)
    if not check_mode:
        _write_like(copy, *found)
    return True


def restore(path, copy, check_mode=False):
    """Put `copy` back at `path` and remove it; True when it (would have) changed anything."""
    kept = _read(copy)
    if kept is None:
        raise KeptCopyError("no copy of %s kept at %s: nothing to put back" % (path, copy))
    if check_mode:
        return True
    _write_like(path, *kept)
    _fileio.remove(copy)
    return True


def drop(_path, copy, check_mode=False):
    """Remove the kept copy of `_path`; True when there was one."""
    if _read(copy) is None:
        return False
    if not check_mode:
        _fileio.remove(copy)
    return True
