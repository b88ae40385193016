# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rotated log files storage_info counts, deleted (rotated_logs_delete). PRIVATE to the collection: no
compatibility promise.

The same files as storage_info's `rotated_logs` candidate (_storage.rotated_logs): regular files whose name is a
rotated log's (_storage.ROTATED) under the given directories and their subdirectories on the same filesystem. The
directories given may be symlinks (as storage_info follows them); below them nothing is followed. The walk goes by
directory descriptors: each subdirectory is opened relative to its parent with O_NOFOLLOW and checked to be the very
directory listed (device and inode), each file unlinked relative to its directory after it is checked again to be
the very regular file listed, so a directory or file swapped for a symlink meanwhile is never followed nor deleted.
Another filesystem mounted below (a different st_dev) is never entered. Budget and timeout as storage_info's walk.
"""
from __future__ import annotations

import os
import stat
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _storage

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
MAX_PATHS = _storage.MAX_PATHS


class RotatedLogsError(Exception):
    """A refused option: the message says which; nothing was deleted."""


def check_params(params):
    paths = params.get("paths")
    if not isinstance(paths, list) or not paths:
        raise RotatedLogsError("paths is empty: name the log directories (for example /var/log)")
    try:
        _storage._absolute("paths", paths)  # pylint: disable=protected-access
        _storage._whole("max_entries", params["max_entries"], 1, _storage.MAX_ENTRIES)  # pylint: disable=protected-access
        _storage._whole("timeout", params["timeout"], 1, _storage.MAX_TIMEOUT)  # pylint: disable=protected-access
    except _storage.StorageError as exc:
        raise RotatedLogsError(str(exc)) from None
    refused = [path for path in paths if os.path.normpath(path) == "/"]
    if refused:
        raise RotatedLogsError("paths: / is not a log directory (name the directories that hold logs, /var/log)")
    return params


class Walk:
    """One walk over the directories: what it found, deleted and could not delete."""

    def __init__(self, budget, delete):
        self.budget, self.delete = budget, delete
        self.files, self.failed, self.missing = [], [], []
        self.bytes = self.unreadable = 0
        self.linked, self.seen_dirs = set(), set()

    def _found(self, dir_fd, name, path, info):
        key = (info.st_dev, info.st_ino)
        # A hard-linked file's blocks count once; its other name, once this one is deleted, shows one link left.
        counted = key not in self.linked
        if info.st_nlink > 1:
            self.linked.add(key)
        if self.delete:
            try:
                again = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (again.st_dev, again.st_ino) != key or not stat.S_ISREG(again.st_mode):
                    self.failed.append(dict(path=_storage.shown(path), error="changed since it was listed: left alone"))
                    return
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:  # removed by someone else (logrotate) meanwhile
                return
            except OSError as exc:
                self.failed.append(dict(path=_storage.shown(path), error=exc.strerror or str(exc)))
                return
        self.files.append(_storage.shown(path))
        if counted:
            self.bytes += info.st_blocks * 512

    def directory(self, dir_fd, path, device):
        """Walk the open directory `dir_fd` (`path`); subdirectories are walked after its listing is read whole."""
        try:
            names = sorted(os.listdir(dir_fd))
        except OSError:
            self.unreadable += 1
            return
        subdirectories = []
        for name in names:
            if not self.budget.take():
                return
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                self.unreadable += 1
                continue
            if info.st_dev != device:  # another filesystem mounted here: never entered
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) not in self.seen_dirs:
                    self.seen_dirs.add((info.st_dev, info.st_ino))
                    subdirectories.append((name, info))
            elif stat.S_ISREG(info.st_mode) and _storage.ROTATED.fullmatch(name):
                self._found(dir_fd, name, os.path.join(path, name), info)
        for name, info in subdirectories:
            if self.budget.spent:
                return
            try:
                child = os.open(name, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:  # vanished, swapped for a symlink or a file (ELOOP, ENOTDIR), unreadable
                self.unreadable += 1
                continue
            try:
                opened = os.fstat(child)
                if (opened.st_dev, opened.st_ino) == (info.st_dev, info.st_ino):
                    self.directory(child, os.path.join(path, name), device)
                else:
                    self.unreadable += 1
            finally:
                os.close(child)

    def top(self, path):
        try:
            dir_fd = os.open(path, DIRECTORY_FLAGS)  # the directory itself may be a symlink, as storage_info allows
        except OSError:
            self.missing.append(_storage.shown(path))
            return
        try:
            info = os.fstat(dir_fd)
            self.seen_dirs.add((info.st_dev, info.st_ino))
            self.directory(dir_fd, path, info.st_dev)
        finally:
            os.close(dir_fd)


def run(params, check_mode=False):
    """The module's result: the rotated log files under `paths` deleted (in check mode, listed)."""
    check_params(params)
    walk = Walk(_storage.Budget(params["max_entries"], time.monotonic() + params["timeout"]), delete=not check_mode)
    for path in params["paths"]:
        if walk.budget.spent:
            break
        walk.top(path)
    verb = "would delete" if check_mode else "deleted"
    msg = "%s %d rotated log file%s (%s) in %s" % (verb, len(walk.files), "" if len(walk.files) == 1 else "s", _storage.human(walk.bytes),
                                                   ", ".join(map(_storage.one_line, params["paths"])))
    if walk.failed:
        msg += "; %d could not be deleted" % len(walk.failed)
    if walk.missing:
        msg += "; not a directory: %s" % ", ".join(map(_storage.one_line, walk.missing))
    if walk.unreadable:
        msg += "; %d unreadable" % walk.unreadable
    if walk.budget.spent:
        msg += "; the walk was cut short (max_entries or timeout): there may be more"
    return dict(changed=bool(walk.files), files=walk.files, count=len(walk.files), bytes=walk.bytes, bytes_human=_storage.human(walk.bytes),
                not_deleted=walk.failed, missing=walk.missing, unreadable=walk.unreadable, truncated=walk.budget.spent, msg=msg)
