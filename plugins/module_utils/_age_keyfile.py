# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replace a host's age identity file by a new key in two crash-safe steps. PRIVATE to the collection.

`stage`: the identities the file holds (the leaked key) are copied to a private file of their own (`leaked_copy`,
0400 root: the identity that re-encrypts what is encrypted to them), then the file holds them AND the new key, so
whatever is encrypted to either key decrypts while secrets and backups move to the new one. `finish`: the file holds
the new key alone and the copy is removed - once nothing else on the host holds an old identity (`search`).
Each write is an atomic rename; a run killed anywhere leaves a state the next run of either step completes.
Identities are read and written only through files and stdin, never in argv or in what is returned.
"""
from __future__ import annotations

import os
import stat

from ansible_collections.runbooks.incident.plugins.module_utils import _age, _faults, _fileio

HEADER = b"# The age identities of this host (runbooks.incident age_key_rotate).\n"
MAX_SCANNED = 1 << 20


class KeyFileError(Exception):
    pass


def identities(raw):
    """The identity lines of an age identity file's bytes (comments and blank lines left out)."""
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.strip().startswith(b"#")]


def new_identity(raw):
    """The one identity of the new key's file content (bytes)."""
    found = identities(raw)
    if len(found) != 1:
        raise KeyFileError("new_key must hold exactly one age identity (it holds %d)" % len(found))
    return found[0]


def _read(path):
    """(bytes, stat) of the regular file `path`, never through a symlink; (None, None) when there is none."""
    try:
        fd = _fileio.open_file(path)
    except FileNotFoundError:
        return None, None
    with os.fdopen(fd, "rb") as reader:
        info = os.fstat(reader.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError("%s is not a regular file" % path)
        return reader.read(MAX_SCANNED + 1), info


def _write(path, ids, info=None):
    """Write the identities `ids` atomically, with the owner, group and mode of `info` (default root, 0400)."""
    owner, group, mode = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) if info else (0, 0, 0o400)
    _fileio.write_bytes(path, HEADER + b"".join(ident + b"\n" for ident in ids), mode=mode, owner=owner, group=group)


class KeyFile:
    def __init__(self, path, leaked_copy, new_key):
        self.path = path
        self.leaked_copy = leaked_copy
        self.new = new_identity(new_key)
        self.recipient = _age.public_key_of(self.new)
        raw, self.info = _read(path)
        if raw is None:
            raise KeyFileError("there is no age key at %s" % path)
        self.held = identities(raw)
        copy, _info = _read(leaked_copy)
        self.kept = identities(copy) if copy is not None else []

    def old(self):
        """The identities that are not the new key: in the key file, and in the leaked copy."""
        return [ident for ident in dict.fromkeys(self.held + self.kept) if ident != self.new]

    def old_recipients(self):
        return sorted(set(_age.public_key_of(ident) for ident in self.old()))

    def stage(self, check_mode=False):
        """Keep the old identities in the leaked copy, then add the new key to the file. Returns whether it changed."""
        if self.new in self.held:
            if self.held == [self.new] or self.kept:
                return False  # staged or finished already
            raise KeyFileError("%s holds the new key beside others, but the copy %s of the old ones is gone: put it back "
                               "from the offline copy of the leaked key, or finish" % (self.path, self.leaked_copy))
        if not self.held:
            raise KeyFileError("%s holds no identity" % self.path)
        if not check_mode:
            if self.kept != self.held:
                _write(self.leaked_copy, self.held)
                self.kept = list(self.held)
            _faults.checkpoint("age_key_leaked_copy_written")
            _write(self.path, self.held + [self.new], self.info)
            self.held = self.held + [self.new]
        return True

    def holders(self, roots):
        """Regular files under `roots` (not followed through symlinks, up to 1 MiB read) that hold an old identity,
        other than the key file and the leaked copy."""
        old = self.old()
        if not old:
            return []
        skip = {os.path.abspath(self.path), os.path.abspath(self.leaked_copy)}
        found = []
        for root in roots:
            for directory, dirs, files in os.walk(root, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.join(directory, name)
                    if path in skip:
                        continue
                    try:
                        raw, _info = _read(path)
                    except (OSError, KeyFileError):
                        continue
                    if raw and any(ident in raw for ident in old):
                        found.append(path)
        return found

    def finish(self, search=(), check_mode=False):
        """The file holds the new key alone, then the leaked copy goes. Returns whether it changed."""
        if self.new not in self.held:
            raise KeyFileError("%s does not hold the new key: stage it first" % self.path)
        elsewhere = self.holders(search)
        if elsewhere:
            raise KeyFileError("the leaked key is still in %s: remove it (after checking nothing needs it), then run "
                               "again" % ", ".join(elsewhere))
        changed = self.held != [self.new] or os.path.lexists(self.leaked_copy)
        if not check_mode and changed:
            if self.held != [self.new]:
                _write(self.path, [self.new], self.info)
                self.held = [self.new]
            _faults.checkpoint("age_key_reduced")
            _fileio.remove(self.leaked_copy)
            self.kept = []
        return changed
