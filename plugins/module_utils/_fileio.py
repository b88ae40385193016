# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes and streaming digests. PRIVATE to the collection: no compatibility promise.

A reader never sees a half-written file under its final name: data goes to a hidden temp file in the same
directory (mode 0600 from creation), is fsync'd, gets its owner and mode, and is renamed into place; the directory
is fsync'd so the rename survives a crash. Pure Python: also imported by the host-side CLI.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile

CHUNK = 1 << 20


def partial_name(final_path):
    """Hidden name a partial write of `final_path` uses (retention recognises the leading dot)."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s.partial" % name)


def fsync_dir(directory):
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(final_path, mode=0o600, owner=None, group=None):
    """Yield a binary file object; on success it replaces `final_path` atomically, on error it is removed."""
    directory = os.path.dirname(final_path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(final_path), suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        set_owner_mode(tmp, mode, owner, group)
        os.replace(tmp, final_path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(final_path, data, mode=0o600, owner=None, group=None):
    with atomic_writer(final_path, mode, owner, group) as handle:
        handle.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def set_owner_mode(path, mode=None, owner=None, group=None):
    if owner is not None or group is not None:
        import grp  # pylint: disable=import-outside-toplevel
        import pwd  # pylint: disable=import-outside-toplevel
        uid = pwd.getpwnam(owner).pw_uid if owner is not None else -1
        gid = grp.getgrnam(group).gr_gid if group is not None else -1
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(root):
    """Regular files under `root` as sorted relative paths."""
    found = []
    for current, _dirs, files in os.walk(root):
        for name in files:
            found.append(os.path.relpath(os.path.join(current, name), root))
    return sorted(found)


def sha256_tree(root):
    """(digest, {relpath: sha256}) of a directory: the digest covers every file's name and content."""
    per_file = {rel: sha256_file(os.path.join(root, rel)) for rel in tree_files(root)}
    digest = hashlib.sha256()
    for rel, file_digest in sorted(per_file.items()):
        digest.update(("%s\0%s\n" % (rel, file_digest)).encode())
    return digest.hexdigest(), per_file


def tree_size(root):
    return sum(os.path.getsize(os.path.join(root, rel)) for rel in tree_files(root))
