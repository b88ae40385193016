# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe paths, atomic file writes and streaming digests. PRIVATE to the collection: no compatibility promise.

Modules run as root and write into directories that other users may be able to write to (a service's data
directory, a backup directory, /run/lock). A symlink planted there must never redirect a write. So every path is
opened one component at a time from `/` with O_NOFOLLOW, holding a directory descriptor (openat-style, no race
between checking and using a name). A symlink on the way is followed only when the directory holding it is
trusted: owned by root (or the user running the module) and writable by nobody else, so that only root can have
put it there (`/var/run -> /run` is followed, a link in /tmp or in a service-owned directory is refused). The last
component of a path written to is never followed. Violations raise UnsafePathError (an OSError, so callers that
already report OSError report it too).

A reader never sees a half-written file under its final name: data goes to a hidden temp file in the same
directory (mode 0600 from creation), is fsync'd, gets its owner and mode, and is renamed into place; the directory
is fsync'd so the rename survives a crash.

Digests: of a file, of a stream as it passes (HashingReader, HashingWriter), and the one tree digest of the
collection (walk_tree, tree_digest, sha256_tree: see "trees" below). Pure Python: also imported by the host-side
CLI.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat

CHUNK = 1 << 20
MAX_SYMLINKS = 40
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_PATH = getattr(os, "O_PATH", 0)
# Where a directory may be opened from without reading it (O_PATH needs no read permission).
DIR_FLAGS = (O_PATH or os.O_RDONLY) | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC


class UnsafePathError(OSError):
    """A path leads through a symlink someone other than root could have planted, or out of where it must stay."""


def partial_name(final_path):
    """Hidden name a partial write of `final_path` uses (retention recognises the leading dot)."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s.partial" % name)


def trusted(info):
    """A directory only root (or this process' user) can change: a symlink in it was put there by them."""
    return info.st_uid in (0, os.geteuid()) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _components(path):
    return [part for part in path.split("/") if part and part != "."]


def open_dir(path, create_mode=None):
    """A descriptor of directory `path`, reached without following an untrusted symlink (see the module docstring).

    With `create_mode` the missing directories are created with that mode (like makedirs). The caller closes it.
    """
    if not path:
        raise UnsafePathError(errno.EINVAL, "empty path")
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    fd = os.open("/", DIR_FLAGS)
    pending = _components(path)
    hops = 0
    try:
        while pending:
            name = pending.pop(0)
            try:
                child = _open_or_make_dir(fd, name, create_mode)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path) from None
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(info.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", name) from None
                hops += 1
                if hops > MAX_SYMLINKS or not trusted(os.fstat(fd)):
                    raise UnsafePathError(errno.ELOOP, "refusing to follow the symlink %s in a directory others can write to"
                                          % name, path) from None
                target = os.readlink(name, dir_fd=fd)
                pending = _components(target) + pending
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", DIR_FLAGS)
                continue
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def parent_dir(path, create_mode=None):
    """(directory descriptor, last component) of `path`, the directory reached safely; closed on exit."""
    directory, name = os.path.split(path.rstrip("/") or "/")
    if not name or name in (".", ".."):
        raise UnsafePathError(errno.EINVAL, "not a file name", path)
    fd = open_dir(directory or ".", create_mode)
    try:
        yield fd, name
    finally:
        os.close(fd)


def listdir_at(dir_fd):
    """Names in the directory of a descriptor from open_dir (an O_PATH descriptor cannot be read itself)."""
    readable = os.open(".", os.O_RDONLY | O_DIRECTORY | O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(readable)
    finally:
        os.close(readable)


def makedirs(path, mode=0o700):
    """Create `path` and its missing parents (never through an untrusted symlink)."""
    os.close(open_dir(path, create_mode=mode))


def open_file(path, flags=os.O_RDONLY, mode=0o600):
    """os.open of `path` reached safely, never following a symlink at its last component; the descriptor must be
    a regular file (a FIFO or device planted there is refused before it is read or written)."""
    with parent_dir(path) as (dir_fd, name):
        try:
            fd = os.open(name, flags | O_NOFOLLOW | O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(errno.ELOOP, "is a symlink: refusing to follow it", path) from None
            raise type(exc)(exc.errno, exc.strerror, path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(errno.EINVAL, "not a regular file", path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def lstat(path):
    """os.lstat of `path`, its directory reached safely."""
    with parent_dir(path) as (dir_fd, name):
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def fsync_dir(directory):
    fd = open_dir(directory or ".")
    try:
        _fsync_dir_fd(fd)
    finally:
        os.close(fd)


def _fsync_dir_fd(fd):
    if O_PATH:  # an O_PATH descriptor cannot be fsync'd: reopen the directory itself for reading
        real = os.open(".", os.O_RDONLY | O_DIRECTORY | O_CLOEXEC, dir_fd=fd)
        try:
            os.fsync(real)
        finally:
            os.close(real)
    else:
        os.fsync(fd)


def _owner_ids(owner, group):
    """(uid, gid) of a user and group given by name, or as numeric ids (kept as they are: a copy keeps the owner of
    its original even when the id has no name on this host); None leaves that one unchanged (-1)."""
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel
    try:
        uid = owner if isinstance(owner, int) else pwd.getpwnam(owner).pw_uid if owner is not None else -1
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid if group is not None else -1
    except KeyError as exc:
        raise OSError(errno.EINVAL, "no such user or group: %s" % exc.args[0]) from None
    return uid, gid


def _temp_name(name):
    return ".%s.%s.partial" % (name, secrets.token_hex(4))


@contextlib.contextmanager
def atomic_writer(final_path, mode=0o600, owner=None, group=None):
    """Yield a binary file object; on success it replaces `final_path` atomically, on error it is removed.

    The directory is reached safely; a symlink at `final_path` itself is replaced, never followed.
    """
    with parent_dir(final_path) as (dir_fd, name):
        with atomic_writer_at(dir_fd, name, mode, owner, group) as handle:
            yield handle


@contextlib.contextmanager
def atomic_writer_at(dir_fd, name, mode=0o600, owner=None, group=None):
    """atomic_writer for the file `name` in the directory of descriptor `dir_fd` (from open_dir or subdir)."""
    ids = _owner_ids(owner, group) if owner is not None or group is not None else None
    tmp = _temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            if ids is not None:
                os.fchown(handle.fileno(), *ids)
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        _fsync_dir_fd(dir_fd)
    finally:  # on success the temp file is renamed: nothing left to remove
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def subdir(dir_fd, name, create_mode=None):
    """A descriptor of the directory `name` in the directory of `dir_fd`, never through a symlink, wherever it is
    (open_dir follows a link in a trusted directory; a directory this process creates and writes into must be its
    own). With `create_mode` it is created when missing. The caller closes it."""
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePathError(errno.EINVAL, "not a directory name", name)
    if create_mode is not None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create_mode, dir_fd=dir_fd)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise UnsafePathError(errno.ELOOP, "is a symlink: refusing to follow it", name) from None
        raise


class NotFollowedError(UnsafePathError):
    """open_dir_beneath met a component that is a symlink (`is_link`) or not a directory; `rel` is the path of it,
    relative to where the walk began. Callers word it for what the tree is (an archive, a bundle)."""

    def __init__(self, rel, is_link):
        super().__init__(errno.ELOOP, "%s is %s: not followed" % (rel, "a symlink" if is_link else "not a directory"))
        self.rel, self.is_link = rel, is_link


def _open_or_make_dir(dir_fd, name, create_mode):
    """A DIR_FLAGS descriptor of the directory `name` under `dir_fd`, made first with `create_mode` when it is missing
    and a mode is given (FileNotFoundError otherwise); a symlink at `name` is not followed (ELOOP)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if create_mode is None:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create_mode, dir_fd=dir_fd)
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_dir_beneath(dir_fd, parts, create_mode=None):
    """A descriptor of the directory `parts` (a list of names) under the directory of `dir_fd`, no component
    followed if it is a symlink, wherever it is (unlike open_dir: the tree is one a link must never lead out of). With
    `create_mode`, missing directories are created with that mode. An empty `parts` is `dir_fd` itself (a new
    descriptor). The descriptor is O_PATH where there is one (DIR_FLAGS): a dir_fd for *at calls, not for listing,
    fsync or fchmod (listdir_at, or reopen "." for that). Raises NotFollowedError at a symlink or non-directory on the
    way; the caller closes the descriptor."""
    for part in parts:
        if not isinstance(part, str) or not part or "/" in part or part in (".", ".."):
            raise UnsafePathError(errno.EINVAL, "not a directory name", part)
    fd = os.dup(dir_fd)
    try:
        for index, part in enumerate(parts):
            try:
                child = _open_or_make_dir(fd, part, create_mode)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                raise NotFollowedError("/".join(parts[:index + 1]), link) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_bytes(final_path, data, mode=0o600, owner=None, group=None):
    with atomic_writer(final_path, mode, owner, group) as handle:
        handle.write(data)


def write_json(final_path, data, mode=0o600, owner=None, group=None):
    write_bytes(final_path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode, owner, group)


def remove(path):
    """Remove what is at `path` (a file, a symlink itself, or a directory tree, whose links are never followed);
    nothing there is fine."""
    with parent_dir(path) as (dir_fd, name):
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            _remove_tree_at(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)


def _remove_tree_at(dir_fd, name):
    fd = os.open(name, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree_at(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def set_owner_mode(path, mode=None, owner=None, group=None):
    """chown/chmod of `path` itself, reached safely (a symlink there is refused, not followed)."""
    with parent_dir(path) as (dir_fd, name):
        fd = os.open(name, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    try:
        if owner is not None or group is not None:
            os.fchown(fd, *_owner_ids(owner, group))
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Digest:
    """SHA-256 and size of a stream of bytes."""

    def __init__(self):
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data):
        self.sha256.update(data)
        self.size += len(data)

    def hexdigest(self):
        return self.sha256.hexdigest()


class HashingWriter:
    """A write-only file object that digests what passes through to `sink` (None: digest only)."""

    def __init__(self, sink=None):
        self.sink = sink
        self.digest = Digest()

    def write(self, data):
        self.digest.update(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def flush(self):
        if self.sink is not None:
            self.sink.flush()


class HashingReader:
    """A read-only file object that digests what is read from `source`."""

    def __init__(self, source):
        self.source = source
        self.digest = Digest()

    def read(self, size=-1):
        data = self.source.read(size)
        self.digest.update(data)
        return data

    def drain(self):
        """Read to the end (what a consumer left unread still counts in the digest)."""
        while self.read(CHUNK):
            pass


# --- trees ----------------------------------------------------------------------------------------------------------
# One definition of a directory tree's digest, for a directory-format dump's manifest (`sha256`), an off-host tar
# stream's `sha256-tree` and the files a fetch extracted: SHA-256 over "<relative path>\0<sha256 of the file>\n" of
# every regular file under the root, in sorted order of the paths. A hard link counts as the file it is, under each
# of its names. Nothing else is covered, and nothing is followed: a symbolic link is skipped (a tar stream carries it,
# the digest does not; a directory-format dump holding one is refused: _dumpfile.check_directory), so is a FIFO,
# socket or device (which a tar stream refuses), and a directory counts only through the files in it (an empty one
# not at all). Paths are UTF-8, a name that is not (surrogate-escaped by Python) as its bytes.

def walk_tree(root):
    """(relative path, path) of `root` ('.') and everything under it, depth first in name order.

    `root` itself is taken as given (a /proc/self/fd/N path to a directory reached safely is walked); under it, no
    symbolic link is followed, nor entered as a directory.
    """
    yield ".", root
    if not os.path.isdir(root):
        return
    pending = [("", root)]
    while pending:
        rel_dir, directory = pending.pop()
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        subdirs = []
        for entry in entries:
            rel = rel_dir + entry.name
            yield rel, entry.path
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((rel + "/", entry.path))
        pending.extend(reversed(subdirs))


def tree_files(root):
    """The regular files under `root`, as sorted relative paths: the files a tree digest covers."""
    return sorted(rel for rel, path in walk_tree(root) if rel != "." and stat.S_ISREG(os.lstat(path).st_mode))


def tree_digest(per_file):
    """The digest of a tree from {relative path: sha256} of its regular files (see walk_tree)."""
    digest = hashlib.sha256()
    for rel, file_digest in sorted(per_file.items()):
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + file_digest.encode() + b"\n")
    return digest.hexdigest()


def sha256_tree(root):
    """(digest, {relpath: sha256}) of the regular files under `root` (tree_digest)."""
    per_file = {rel: sha256_file(os.path.join(root, rel)) for rel in tree_files(root)}
    return tree_digest(per_file), per_file


def tree_size(root):
    """Bytes in the regular files under `root`."""
    return sum(os.lstat(os.path.join(root, rel)).st_size for rel in tree_files(root))
