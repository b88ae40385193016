# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Evidence bundles of a security incident: copies of files and the output of commands, with their digests and a
chain-of-custody record. PRIVATE to the collection: no compatibility promise.

A bundle is the directory `<dest>/<incident id>-<UTC stamp>` (0700):

    files/<source path>   copies of the sources, at their absolute paths (two `app.log` never collide)
    commands/<NN>-<name>.stdout, .stderr    what each command wrote, byte for byte
    inventory.jsonl       one JSON object a line: every entry collected (path, type, mode, owner, size, mtime,
                          sha256 or link target, notes) and every command (argv, rc, timing, output files)
    SHA256SUMS            sha256sum's format, relative paths: every file of the bundle but itself and custody.json
    custody.json          who collected it, when, on which host, what (sources, commands), and SHA256SUMS' digest

Collection never changes a source: files are opened read-only with O_NOFOLLOW (and O_NOATIME where the kernel
allows), each path reached one component at a time (_fileio: a symlink on the way is followed only in a directory
only root can write). Inside a source tree nothing is followed: a symlink is copied as a link and its target recorded,
a FIFO, socket or device is recorded and never opened. A file is copied up to the size it had when opened (a live
log that grows meanwhile is copied as it was then, noted) and the digest is of the bytes copied, never of the source
read again. Copies keep their source's content, permission bits (set-id bits are recorded, not reproduced), mtime and,
as root, owner; directories in the bundle are 0700 (their original mode and mtime are in the inventory).

Commands run first (process lists and connections are the most volatile evidence), as argv lists without a shell,
stdin from /dev/null, in their own session (killed whole at the timeout); their output is streamed into the bundle.

The bundle is built in a hidden `.<name>.<token>.partial` directory, locked (flock) while it is written, and renamed
into place once SHA256SUMS and custody.json are written, so a bundle under its final name is always complete. A run
that fails removes its partial directory; one left by a killed run (no lock held) is removed by the next run in the
same destination. An existing bundle is never overwritten: a second bundle in the same second gets a `-2` suffix.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest, _evidence, _faults, _fileio, _run_lock

FORMAT = "runbooks.incident/evidence-bundle/1"
SUMS = "SHA256SUMS"
CUSTODY = "custody.json"
INVENTORY = "inventory.jsonl"
FILES = "files"
COMMANDS = "commands"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_DEST = "/var/lib/runbooks-incident/evidence"
DEFAULT_TIMEOUT = 120
MAX_TIMEOUT = 86400
MAX_COLLECTED_BY = 256
MAX_WARNINGS = 20
MAX_CUSTODY_BYTES = 64 << 20
# Directory levels walked under a source: each level holds two descriptors while it is walked. A deeper directory is
# recorded and not descended into (a tree that deep is a trap, not a service).
MAX_DEPTH = 200
CHUNK = _fileio.CHUNK
PARTIAL = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._:-]{0,63}-[0-9]{8}T[0-9]{6}Z\.[0-9a-f]{8}\.partial\Z")
SUMS_LINE = re.compile(rb"^(\\?)([0-9a-fA-F]{64}) [ *](.+)\Z", re.S)
O_NOATIME = getattr(os, "O_NOATIME", 0)
READ_DIR = os.O_RDONLY | _fileio.O_DIRECTORY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC
READ_FILE = os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK
CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC
KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
         (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


class BundleError(Exception):
    """A request refused, or a bundle that cannot be made or read; raised before anything is kept."""


class SourceError(Exception):
    """A source, or an entry under it, that cannot be collected: recorded in the bundle, never fatal."""

    def __init__(self, message, missing=False):
        super().__init__(message)
        self.missing = missing


# ------------------------------------------------------------------------------------------------ helpers
def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_ns(nanoseconds):
    seconds, rest = divmod(nanoseconds, 10 ** 9)
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % rest


def shown(text, limit=None):
    """`text` (a path that may hold bytes that are not UTF-8, surrogate-escaped) as printable text; with `limit`,
    cut to that many characters (for a message)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def kind_of(mode):
    return next((name for test, name in KINDS if test(mode)), "unknown")


def _reason(exc):
    return exc.strerror or str(exc)


def _src(call, *args, **kwargs):
    """A system call on the source side: its OSError becomes a SourceError (recorded, not fatal)."""
    try:
        return call(*args, **kwargs)
    except OSError as exc:
        raise SourceError(_reason(exc), missing=exc.errno in (errno.ENOENT, errno.ENOTDIR)) from None


_NAMES = {}


def _name_of(kind, number):
    key = (kind, number)
    if key not in _NAMES:
        try:
            _NAMES[key] = pwd.getpwuid(number).pw_name if kind == "user" else grp.getgrgid(number).gr_name
        except KeyError:
            _NAMES[key] = None
    return _NAMES[key]


def describe(info):
    """What the inventory records of an entry: its type, mode (set-id bits too), owner, size and mtime."""
    found = dict(type=kind_of(info.st_mode), mode="%04o" % stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid,
                 owner=_name_of("user", info.st_uid), group=_name_of("group", info.st_gid), size=info.st_size,
                 mtime=iso_ns(info.st_mtime_ns), mtime_ns=info.st_mtime_ns)
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        found["rdev"] = "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev))
    return found


def leaves_tree(rel_in_tree, target):
    """Whether a symlink at `rel_in_tree` (relative to its source, '' for the source itself) to `target` points
    out of the source's tree (absolute, or climbing above it)."""
    if target.startswith("/") or not rel_in_tree:
        return True
    depth = len(rel_in_tree.split("/")) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def safe_name(program):
    """A file name part for a command's output, from its program's name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(program.rstrip("/")))[:40].strip("._")
    return name or "command"


def sums_bytes(sums):
    """SHA256SUMS of {relative path: sha256}, in byte order of the names, escaped as sha256sum escapes them."""
    names = sorted(sums, key=lambda rel: rel.encode("utf-8", "surrogateescape"))
    return b"".join(_audit_manifest.sums_line(sums[rel], rel).encode("utf-8", "surrogateescape") for rel in names)


def _unescape(raw):
    out, index = bytearray(), 0
    while index < len(raw):
        char = raw[index:index + 1]
        if char == b"\\":
            following = raw[index + 1:index + 2]
            if following not in (b"\\", b"n", b"r"):
                return None
            out += {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}[following]
            index += 2
            continue
        out += char
        index += 1
    return bytes(out)


def parse_sums(data):
    """({relative path: sha256}, [problems]) of a SHA256SUMS file's bytes (sha256sum's format and escapes)."""
    sums, problems = {}, []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        match = SUMS_LINE.match(line)
        name = _unescape(match.group(3)) if match and match.group(1) else match.group(3) if match else None
        if name is None:
            problems.append(dict(path=SUMS, problem="invalid", detail="line %d is not a sha256sum line" % number))
            continue
        rel = name.decode("utf-8", "surrogateescape")
        if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
            problems.append(dict(path=SUMS, problem="invalid", detail="line %d names %s, which is not a path inside the "
                                 "bundle" % (number, shown(rel, 200))))
            continue
        if rel in sums:
            problems.append(dict(path=SUMS, problem="invalid", detail="line %d lists %s a second time" % (number, shown(rel))))
        sums[rel] = match.group(2).decode().lower()
    return sums, problems


# ------------------------------------------------------------------------------------------------ the request
def check_request(sources, commands, incident_id, collected_by, timeout):
    """(normalised absolute sources, argv lists) of a request, else BundleError before anything is done."""
    if not isinstance(incident_id, str) or not _run_lock.INCIDENT_ID.match(incident_id):
        raise BundleError("incident_id %r is not valid (letters, digits and ._:-, at most 64, starting with a letter or "
                          "digit)" % (incident_id,))
    if not isinstance(collected_by, str) or not collected_by.strip() or collected_by != collected_by.strip() \
            or len(collected_by) > MAX_COLLECTED_BY or _evidence.LINE_BREAKING.search(collected_by):
        raise BundleError("collected_by %r is not a name the custody record can hold (not empty, at most %d characters, "
                          "no line break, control character or surrounding spaces)" % (str(collected_by)[:80], MAX_COLLECTED_BY))
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= MAX_TIMEOUT:
        raise BundleError("timeout %r is not a number of seconds from 1 to %d" % (timeout, MAX_TIMEOUT))
    normalised = []
    for source in sources or []:
        if not isinstance(source, str) or not source:
            raise BundleError("source %r is not a path" % (source,))
        path = os.path.abspath(source)  # '..' and '.' resolved as text, never by following a link
        if path not in normalised:
            normalised.append(path)
    argvs = []
    for index, argv in enumerate(commands or [], 1):
        if not isinstance(argv, (list, tuple)) or not argv:
            raise BundleError("command %d is not an argv list (a list of strings such as [ss, -tanp]; no shell is used): %r"
                              % (index, str(argv)[:200]))
        words = []
        for word in argv:
            if isinstance(word, bool) or not isinstance(word, (str, int, float)):
                raise BundleError("command %d holds %r, which is not a string" % (index, str(word)[:80]))
            words.append(str(word))
        if not words[0]:
            raise BundleError("command %d has an empty program name" % index)
        argvs.append(words)
    if not normalised and not argvs:
        raise BundleError("nothing to collect: give sources, commands or both")
    return normalised, argvs


def check_dest(dest, sources):
    """Refuse a destination that is a symlink or not a directory, that others could write to, or that lies inside a
    directory being collected (the bundle would contain itself)."""
    try:
        info = _fileio.lstat(dest)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise BundleError("dest %s cannot be reached: %s" % (dest, _reason(exc))) from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise BundleError("dest %s is a symlink: refusing to follow it (give the directory it points to)" % dest)
        if not stat.S_ISDIR(info.st_mode):
            raise BundleError("dest %s is a %s, not a directory" % (dest, kind_of(info.st_mode)))
        _check_dest_owner(dest, info)
    real_dest = os.path.realpath(dest)
    for source in sources:
        try:
            source_info = _fileio.lstat(source)
        except OSError:
            continue  # missing or unreachable: recorded as such, nothing to walk
        if stat.S_ISDIR(source_info.st_mode):
            real_source = os.path.realpath(source)
            if os.path.commonpath([real_source, real_dest]) == real_source:
                raise BundleError("dest %s is inside the source %s: the bundle would collect itself" % (dest, source))


def _check_dest_owner(dest, info):
    if info.st_uid not in (0, os.geteuid()):
        raise BundleError("dest %s belongs to uid %d, not root: its owner could swap the bundle for another" % (dest, info.st_uid))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise BundleError("dest %s is writable by others (mode %04o): anyone there could swap the bundle for another; "
                          "make it root's alone (0700)" % (dest, stat.S_IMODE(info.st_mode)))


def _bundle_name(dest_fd, base):
    """`base`, or `base-N` when a bundle of that name exists (two runs in the same second)."""
    for attempt in range(1, 1000):
        name = base if attempt == 1 else "%s-%d" % (base, attempt)
        try:
            os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
        except FileNotFoundError:
            return name
    raise BundleError("999 bundles named %s exist already" % base)


def command_found(program):
    if "/" in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return shutil.which(program) is not None


# ------------------------------------------------------------------------------------------------ collecting
class Frame:
    """A directory being walked: its source and bundle descriptors, path and what is left to visit."""

    def __init__(self, src_fd, dst_fd, path, rel, names, info):
        self.src_fd, self.dst_fd, self.path, self.rel, self.names, self.info = src_fd, dst_fd, path, rel, names, info

    def close(self):
        for fd in (self.src_fd, self.dst_fd):
            if fd is not None:
                os.close(fd)


class Collector:
    """Copies sources and runs commands into the bundle directory `root_fd` (None: only surveys, for check mode)."""

    def __init__(self, root_fd=None, avoid=()):
        self.root_fd = root_fd
        self.dry = root_fd is None
        self.avoid = set(avoid)
        self.as_root = os.geteuid() == 0
        self.sums = {}
        self.bytes = 0
        self.warnings = []
        self.more_warnings = 0
        self.seen = set()
        self.entries = 0
        self.inventory = None
        self.tally = None
        if not self.dry:
            fd = os.open(INVENTORY, CREATE_FILE, 0o600, dir_fd=root_fd)
            self.inventory = _fileio.HashingWriter(os.fdopen(fd, "wb"))

    def warn(self, text):
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self.more_warnings += 1

    def all_warnings(self):
        if self.more_warnings:
            return self.warnings + ["and %d more entries were noted (see %s)" % (self.more_warnings, INVENTORY)]
        return list(self.warnings)

    def record(self, entry):
        self.entries += 1
        if self.inventory is not None:
            self.inventory.write((json.dumps(entry, sort_keys=True) + "\n").encode())

    def close_inventory(self):
        """Finish the inventory (0400); it is listed in SHA256SUMS like any other file."""
        handle = self.inventory.sink
        handle.flush()
        os.fchmod(handle.fileno(), 0o400)
        os.fsync(handle.fileno())
        handle.close()
        self.sums[INVENTORY] = self.inventory.digest.hexdigest()
        self.bytes += self.inventory.digest.size

    # ---------------------------------------------------------------- bundle side
    def bundle_dir(self, parts):
        """Descriptor of the bundle's directory `parts` (_fileio.open_dir_beneath: a dir_fd for *at calls), created
        0700 where missing. A name there taken by something other than a directory (a link collected from another
        source) is a collision: SourceError."""
        try:
            return _fileio.open_dir_beneath(self.root_fd, parts, create_mode=0o700)
        except _fileio.NotFollowedError as exc:
            raise SourceError("its place in the bundle, %s, is taken by a symlink or file collected from another "
                              "source" % shown(exc.rel)) from None

    def _create(self, dst_dir_fd, name, rel):
        try:
            return os.open(name, CREATE_FILE, 0o600, dir_fd=dst_dir_fd)
        except FileExistsError:
            raise SourceError("%s is in the bundle already (collected from another source)" % shown(rel)) from None

    # ---------------------------------------------------------------- sources
    def collect_source(self, path):
        """Collect one source (an absolute, normalised path); returns its record for custody.json."""
        record = dict(path=shown(path))
        self.tally = dict(entries=0, files=0, bytes=0, not_copied=0)
        directory, name = os.path.split(path)
        if not name:
            record.update(status="unreadable", reason="the root directory cannot be collected whole")
            self.warn("source %s: %s" % (shown(path, 300), record["reason"]))
            return record
        try:
            parent_fd = _src(_fileio.open_dir, directory)
        except SourceError as exc:
            return self._unreadable(record, path, exc)
        try:
            try:
                info = _src(os.stat, name, dir_fd=parent_fd, follow_symlinks=False)
            except SourceError as exc:
                return self._unreadable(record, path, exc)
            rel = "/".join([FILES] + [part for part in path.split("/") if part])
            dst_fd = None
            try:
                if not self.dry:
                    dst_fd = self.bundle_dir(rel.split("/")[:-1])
                entry = self.walk(parent_fd, name, path, dst_fd, rel, info)
            except SourceError as exc:
                return self._unreadable(record, path, exc)
            finally:
                if dst_fd is not None:
                    os.close(dst_fd)
        finally:
            os.close(parent_fd)
        record.update((key, entry[key]) for key in ("type", "mode", "uid", "gid", "owner", "group", "size", "mtime") if key in entry)
        status = "unreadable" if "error" in entry else "collected" if entry["type"] in ("file", "directory", "symlink") else "recorded"
        record.update(status=status, bundle=entry.get("bundle"))
        for key in ("target", "note", "error"):
            if key in entry:
                record[key] = shown(entry[key])
        if entry["type"] == "directory":
            record.update(self.tally)
        return record

    def _unreadable(self, record, path, exc):
        status = "missing" if exc.missing else "unreadable"
        record.update(status=status, reason=str(exc))
        self.warn("source %s is %s: %s" % (shown(path, 300), status, exc))
        if not self.dry:
            self.record(dict(path=path, bundle=None, type=None, error="%s: %s" % (status, exc)))
        return record

    def walk(self, parent_fd, name, path, dst_fd, rel, info):
        """Collect the entry `name` and, for a directory, everything under it (depth first, in name order, nothing
        followed); returns the entry's own inventory record."""
        top, frame = self.entry(parent_fd, name, path, dst_fd, rel, info, path)
        stack = [frame] if frame else []
        try:
            while stack:
                frame = stack[-1]
                child = next(frame.names, None)
                if child is None:
                    stack.pop()
                    self._finish_dir(frame)
                    continue
                _entry, sub = self.entry(frame.src_fd, child, os.path.join(frame.path, child), frame.dst_fd,
                                         frame.rel + "/" + child, None, path, deep=len(stack) >= MAX_DEPTH)
                if sub:
                    stack.append(sub)
        finally:
            for frame in stack:
                frame.close()
        return top

    def _finish_dir(self, frame):
        try:
            if frame.dst_fd is not None:
                os.utime(frame.dst_fd, ns=(frame.info.st_atime_ns, frame.info.st_mtime_ns))
                os.fsync(frame.dst_fd)
        finally:
            frame.close()

    def entry(self, src_dir_fd, name, path, dst_dir_fd, rel, info, source, deep=False):
        """(inventory record, Frame to walk or None) of one entry; a problem with it is recorded, not raised. A
        directory `deep` below its source is recorded, not walked."""
        record = dict(path=path, bundle=None)
        frame = None
        try:
            if info is None:
                info = _src(os.stat, name, dir_fd=src_dir_fd, follow_symlinks=False)
            record.update(describe(info))
            if stat.S_ISREG(info.st_mode):
                self._copy_file(src_dir_fd, name, dst_dir_fd, rel, record)
            elif stat.S_ISDIR(info.st_mode) and deep:
                record["note"] = "not collected: more than %d directory levels below its source" % MAX_DEPTH
                self.tally["not_copied"] += 1
                self.warn("%s: %s" % (shown(path, 300), record["note"]))
            elif stat.S_ISDIR(info.st_mode):
                frame = self._enter_dir(src_dir_fd, name, path, dst_dir_fd, rel, info, record)
            elif stat.S_ISLNK(info.st_mode):
                self._copy_link(src_dir_fd, name, dst_dir_fd, rel, info, record, os.path.relpath(path, source) if path != source else "")
            else:
                record["note"] = "not copied: a %s is recorded, never opened" % record["type"]
                self.tally["not_copied"] += 1
        except SourceError as exc:
            record["error"] = str(exc)
            self.tally["not_copied"] += 1
            self.warn("%s: %s" % (shown(path, 300), exc))
        if path != source:
            self.tally["entries"] += 1
        self.seen.add(path)
        self.record(record)
        return record, frame

    def _open_source(self, src_dir_fd, name):
        try:
            try:
                fd = os.open(name, READ_FILE | O_NOATIME, dir_fd=src_dir_fd)
            except PermissionError:  # O_NOATIME needs ownership (or CAP_FOWNER)
                fd = os.open(name, READ_FILE, dir_fd=src_dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SourceError("it became a symlink while it was collected: not followed") from None
            raise SourceError(_reason(exc), missing=exc.errno == errno.ENOENT) from None
        return fd

    def _copy_file(self, src_dir_fd, name, dst_dir_fd, rel, record):
        if self.dry:
            self.tally["files"] += 1
            self.tally["bytes"] += record["size"]
            self.sums[rel] = None
            self.bytes += record["size"]
            return
        fd = self._open_source(src_dir_fd, name)
        try:
            before = os.fstat(fd)
            record.update(describe(before))
            if not stat.S_ISREG(before.st_mode):
                record["note"] = "not copied: it became a %s while it was collected (not read)" % record["type"]
                self.tally["not_copied"] += 1
                return
            os.set_blocking(fd, True)
            out_fd = self._create(dst_dir_fd, name, rel)
            try:
                digest, size = self._copy_bytes(fd, out_fd, before)
            except BaseException:
                os.unlink(name, dir_fd=dst_dir_fd)
                raise
            after = os.fstat(fd)
        finally:
            os.close(fd)
        record.update(bundle=rel, sha256=digest, size=size)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (before.st_size and size != before.st_size):
            record["note"] = ("changed while it was copied: the copy holds the %d bytes read from when it was opened (%d "
                              "bytes then, %d now)" % (size, before.st_size, after.st_size))
            self.warn("%s: %s" % (shown(record["path"], 300), record["note"]))
        self.sums[rel] = digest
        self.bytes += size
        self.tally["files"] += 1
        self.tally["bytes"] += size

    def _copy_bytes(self, fd, out_fd, before):
        """Copy the open source `fd` into `out_fd` (closed here): up to its size when opened (to its end when that is
        0, as for /proc files), streamed; the copy gets the source's permission bits, times and (as root) owner.
        Returns (sha256 of the bytes copied, their number)."""
        digest, size = hashlib.sha256(), 0
        limit = before.st_size or None
        with os.fdopen(out_fd, "wb") as out:
            while True:
                want = CHUNK if limit is None else min(CHUNK, limit - size)
                if want <= 0:
                    break
                chunk = _src(os.read, fd, want)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            if self.as_root:
                os.fchown(out.fileno(), before.st_uid, before.st_gid)
            os.fchmod(out.fileno(), stat.S_IMODE(before.st_mode) & 0o777)
            os.utime(out.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns))
            os.fsync(out.fileno())
        return digest.hexdigest(), size

    def _enter_dir(self, src_dir_fd, name, path, dst_dir_fd, rel, info, record):
        if (info.st_dev, info.st_ino) in self.avoid:
            record["note"] = "not collected: it is the evidence destination (mounted here)"
            self.tally["not_copied"] += 1
            return None
        try:
            src_fd = os.open(name, READ_DIR, dir_fd=src_dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SourceError("it stopped being a directory while it was collected: not followed") from None
            raise SourceError(_reason(exc)) from None
        dst_fd = None
        try:
            here = os.fstat(src_fd)
            names = iter(sorted(_src(os.listdir, src_fd)))
            if not self.dry:
                try:
                    os.mkdir(name, 0o700, dir_fd=dst_dir_fd)
                except FileExistsError:
                    raise SourceError("%s is in the bundle already (collected from another source)" % shown(rel)) from None
                dst_fd = os.open(name, READ_DIR, dir_fd=dst_dir_fd)
                record["bundle"] = rel
        except BaseException:
            os.close(src_fd)
            raise
        return Frame(src_fd, dst_fd, path, rel, names, here)

    def _copy_link(self, src_dir_fd, name, dst_dir_fd, rel, info, record, rel_in_tree):
        target = _src(os.readlink, name, dir_fd=src_dir_fd)
        record["target"] = target
        if not rel_in_tree:
            record["note"] = "the source is a symlink: copied as a link, not followed (list its target to collect that)"
        elif leaves_tree(rel_in_tree, target):
            record["note"] = "a symlink out of the collected tree: copied as a link, never followed"
        if self.dry:
            return
        try:
            os.symlink(target, name, dir_fd=dst_dir_fd)
        except FileExistsError:
            raise SourceError("%s is in the bundle already (collected from another source)" % shown(rel)) from None
        if self.as_root:
            os.chown(name, info.st_uid, info.st_gid, dir_fd=dst_dir_fd, follow_symlinks=False)
        os.utime(name, dir_fd=dst_dir_fd, follow_symlinks=False, ns=(info.st_atime_ns, info.st_mtime_ns))
        record["bundle"] = rel

    # ---------------------------------------------------------------- commands
    def run_command(self, index, width, argv, timeout):
        """Run `argv` (no shell), its output streamed into commands/; returns its record (also in the inventory)."""
        base = "%s/%0*d-%s" % (COMMANDS, width, index, safe_name(argv[0]))
        record = dict(kind="command", argv=argv, stdout=base + ".stdout", stderr=base + ".stderr", rc=None,
                      timed_out=False, started_at=iso(utc_now()))
        dir_fd = self.bundle_dir([COMMANDS])
        names = [os.path.basename(record["stdout"]), os.path.basename(record["stderr"])]
        sinks = []
        try:
            for name in names:
                sinks.append(_fileio.HashingWriter(os.fdopen(os.open(name, CREATE_FILE, 0o600, dir_fd=dir_fd), "wb")))
            started = time.monotonic()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                        stderr=subprocess.PIPE, cwd="/", close_fds=True, start_new_session=True)
            except OSError as exc:
                record["error"] = ("program not found: %s" % argv[0] if isinstance(exc, FileNotFoundError)
                                   else "could not start %s: %s" % (argv[0], _reason(exc)))
                record.update(stdout=None, stderr=None)
                self.warn("command %d (%s): %s" % (index, shown(" ".join(argv))[:200], record["error"]))
                for sink, name in zip(sinks, names):
                    sink.sink.close()
                    os.unlink(name, dir_fd=dir_fd)
                sinks = []
                self.record(record)
                return record
            record["timed_out"] = _pump(proc, sinks, timeout)
            record["rc"] = proc.returncode
            record["duration_s"] = round(time.monotonic() - started, 3)
            for key, sink in zip(("stdout", "stderr"), sinks):
                sink.sink.flush()
                os.fchmod(sink.sink.fileno(), 0o400)
                os.fsync(sink.sink.fileno())
                self.sums[record[key]] = sink.digest.hexdigest()
                self.bytes += sink.digest.size
                record[key + "_bytes"] = sink.digest.size
                record[key + "_sha256"] = sink.digest.hexdigest()
            if record["timed_out"]:
                self.warn("command %d (%s) was killed after %d s; its output until then is kept"
                          % (index, shown(" ".join(argv))[:200], timeout))
        finally:
            for sink in sinks:
                sink.sink.close()
            os.close(dir_fd)
        self.record(record)
        return record


def _pump(proc, sinks, timeout):
    """Stream the process' stdout and stderr into `sinks` until both end and it exits, or `timeout` seconds pass
    (then its session is killed). Returns whether it timed out."""
    deadline = time.monotonic() + timeout
    timed_out = False
    selector = selectors.DefaultSelector()
    try:
        for pipe, sink in zip((proc.stdout, proc.stderr), sinks):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, sink)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _events in selector.select(min(remaining, 1.0)):
                try:
                    chunk = os.read(key.fd, CHUNK)
                except BlockingIOError:
                    continue
                if chunk:
                    key.data.write(chunk)
                else:
                    selector.unregister(key.fileobj)
        if not timed_out:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.001))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        selector.close()
        if timed_out or proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return timed_out


# ------------------------------------------------------------------------------------------------ the bundle
def _host():
    found = dict(hostname=socket.gethostname())
    try:
        fd = _fileio.open_file("/etc/machine-id")
        try:
            found["machine_id"] = os.read(fd, 128).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
    except OSError:
        pass
    return found


def _collector():
    uid = os.geteuid()
    return dict(module="runbooks.incident.evidence_bundle", uid=uid, user=_name_of("user", uid), pid=os.getpid())


def _remove_leftovers(dest_fd, dest):
    """Remove partial bundles of killed runs (no run holds their lock); returns their names."""
    removed = []
    for name in sorted(_fileio.listdir_at(dest_fd)):
        if not PARTIAL.match(name):
            continue
        try:
            fd = os.open(name, READ_DIR, dir_fd=dest_fd)
        except OSError:
            continue  # not a directory of ours: left alone
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a run is writing it
            _fileio.remove(os.path.join(dest, name))
            removed.append(name)
        finally:
            os.close(fd)
    return removed


def _make_partial(dest_fd, base):
    """(name, locked descriptor) of a new hidden working directory (0700) in the destination."""
    for _attempt in range(10):
        name = ".%s.%s.partial" % (base, secrets.token_hex(4))
        try:
            os.mkdir(name, 0o700, dir_fd=dest_fd)
        except FileExistsError:
            continue
        fd = os.open(name, READ_DIR, dir_fd=dest_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another run took it for a leftover and is removing it
            os.close(fd)
            continue
        if os.fstat(fd).st_nlink == 0:  # removed before it was locked
            os.close(fd)
            continue
        os.fchmod(fd, 0o700)
        return name, fd
    raise BundleError("could not create a working directory in the destination")


def _publish(dest_fd, dest, partial, base):
    """Rename the finished working directory to the bundle's name (never over an existing bundle); returns it."""
    _faults.checkpoint("evidence_bundle_publish")
    for attempt in range(1, 1000):
        name = base if attempt == 1 else "%s-%d" % (base, attempt)
        try:
            os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
            continue
        except FileNotFoundError:
            pass
        try:
            os.rename(partial, name, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                continue  # taken meanwhile
            raise
        _fileio.fsync_dir(dest)
        return name
    raise BundleError("999 bundles named %s exist already" % base)


def _command_plans(argvs):
    return [dict(argv=argv, found=command_found(argv[0])) for argv in argvs]


def collect(sources, commands, dest, incident_id, collected_by, timeout=DEFAULT_TIMEOUT, check_mode=False, now=None):
    """Make a bundle (check mode: say what it would collect, creating nothing); returns the result dict."""
    sources, argvs = check_request(sources, commands, incident_id, collected_by, timeout)
    dest = os.path.abspath(dest)
    check_dest(dest, sources)
    started = now or utc_now()
    base = "%s-%s" % (incident_id, started.strftime(STAMP_FORMAT))
    result = dict(incident_id=incident_id, collected_by=collected_by, collected_at=iso(started))
    if check_mode:
        return _plan(result, sources, argvs, dest, base)
    _fileio.makedirs(dest, 0o700)
    dest_fd = _fileio.open_dir(dest)
    try:
        info = os.fstat(dest_fd)
        if not stat.S_ISDIR(info.st_mode):
            raise BundleError("dest %s is not a directory" % dest)
        _check_dest_owner(dest, info)
        removed = _remove_leftovers(dest_fd, dest)
        partial, root_fd = _make_partial(dest_fd, base)
        try:
            try:
                result.update(_build(root_fd, (info.st_dev, info.st_ino), sources, argvs, incident_id, collected_by,
                                     timeout, started))
                name = _publish(dest_fd, dest, partial, base)
            finally:
                os.close(root_fd)
        except BaseException:
            _fileio.remove(os.path.join(dest, partial))
            raise
    finally:
        os.close(dest_fd)
    result["bundle"] = os.path.join(dest, name)
    result["warnings"] += ["removed %s, left in %s by a collection that was killed" % (leftover, dest) for leftover in removed]
    return result


def _plan(result, sources, argvs, dest, base):
    survey = Collector()
    records = _collect_sources(survey, sources)
    try:
        dest_fd = _fileio.open_dir(dest)
    except FileNotFoundError:
        name = base
    else:
        try:
            name = _bundle_name(dest_fd, base)
        finally:
            os.close(dest_fd)
    plans = _command_plans(argvs)
    for index, plan in enumerate(plans, 1):
        if not plan["found"]:
            survey.warn("command %d: program not found: %s (it would be recorded as such)" % (index, shown(plan["argv"][0], 200)))
    found = sum(1 for plan in plans if plan["found"])
    result.update(changed=True, bundle=os.path.join(dest, name), sources=records, commands=plans,
                  missing=[record["path"] for record in records if record["status"] == "missing"],
                  files=len(survey.sums) + 2 * found + 1, bytes=survey.bytes, sha256sums_digest=None, custody_digest=None,
                  warnings=survey.all_warnings(),
                  msg="would collect %d source(s) and %d command(s) into %s" % (len(sources), len(argvs), os.path.join(dest, name)))
    return result


def _collect_sources(collector, sources):
    """Records of `sources`, in their order. They are collected in name order, so that a directory comes before
    what is inside it: a source met while walking a directory collected before it is `covered` by it."""
    records, directories = {}, []
    for path in sorted(sources):
        parent = next((directory for directory in directories if path.startswith(directory + "/")), None)
        if parent is not None and path in collector.seen:
            records[path] = dict(path=shown(path), status="covered", covered_by=shown(parent))
            continue
        records[path] = collector.collect_source(path)
        if records[path].get("type") == "directory" and records[path]["status"] == "collected":
            directories.append(path)
    return [records[path] for path in sources]


def _build(root_fd, dest_key, sources, argvs, incident_id, collected_by, timeout, started):
    root_info = os.fstat(root_fd)
    collector = Collector(root_fd, avoid=[dest_key, (root_info.st_dev, root_info.st_ino)])
    try:
        width = max(2, len(str(len(argvs))))
        commands = [collector.run_command(index, width, argv, timeout) for index, argv in enumerate(argvs, 1)]
        records = _collect_sources(collector, sources)
        collector.close_inventory()
    except BaseException:
        collector.inventory.sink.close()
        raise
    sums = sums_bytes(collector.sums)
    sums_digest = hashlib.sha256(sums).hexdigest()
    with _fileio.atomic_writer_at(root_fd, SUMS, mode=0o400) as handle:
        handle.write(sums)
    custody = dict(format=FORMAT, incident_id=incident_id, collected_by=collected_by, collected_at=iso(started),
                   completed_at=iso(utc_now()), host=_host(), collector=_collector(), sources=records,
                   commands=[{key: value for key, value in command.items() if key != "kind"} for command in commands],
                   files=len(collector.sums), bytes=collector.bytes, inventory=dict(file=INVENTORY, entries=collector.entries),
                   sha256sums=dict(file=SUMS, sha256=sums_digest))
    data = (json.dumps(custody, indent=2, sort_keys=True) + "\n").encode()
    with _fileio.atomic_writer_at(root_fd, CUSTODY, mode=0o400) as handle:
        handle.write(data)
    return dict(changed=True, sources=records, commands=custody["commands"], files=len(collector.sums), bytes=collector.bytes,
                missing=[record["path"] for record in records if record["status"] == "missing"],
                sha256sums_digest=sums_digest, custody_digest=hashlib.sha256(data).hexdigest(),
                warnings=collector.all_warnings())


# ------------------------------------------------------------------------------------------------ verifying
def _read_bytes(dir_fd, name, limit=None):
    """The content of the regular file `name` (never through a symlink), or raises OSError."""
    fd = os.open(name, READ_FILE, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        for chunk in iter(lambda: os.read(fd, CHUNK), b""):
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise OSError(errno.EFBIG, "larger than %d bytes" % limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_digest(dir_fd, name):
    """(sha256, size) of the regular file `name` in `dir_fd`, streamed."""
    fd = os.open(name, READ_FILE | O_NOATIME, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        digest = hashlib.sha256()
        size = 0
        for chunk in iter(lambda: os.read(fd, CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size
    finally:
        os.close(fd)


def _walk_bundle(root_fd):
    """{relative path: (kind, link target or None)} of everything in the bundle (nothing followed; one directory
    open at a time)."""
    found = {}
    stack = [[]]
    while stack:
        parts = stack.pop()
        fd = _audit_manifest.open_dir_beneath(root_fd, parts)
        try:
            real = os.open(".", READ_DIR, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            for name in sorted(os.listdir(real), reverse=True):
                rel = "/".join(parts + [name])
                info = os.stat(name, dir_fd=real, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    stack.append(parts + [name])
                elif stat.S_ISLNK(info.st_mode):
                    found[rel] = ("symlink", os.readlink(name, dir_fd=real))
                else:
                    found[rel] = (kind_of(info.st_mode), None)
        finally:
            os.close(real)
    return found


def _open_rel(root_fd, rel):
    """(descriptor of the directory holding `rel`, its last name), no link followed on the way."""
    parts = rel.split("/")
    return _audit_manifest.open_dir_beneath(root_fd, parts[:-1]), parts[-1]


def verify(bundle, incident_id=None):
    """Check a bundle against its SHA256SUMS, custody.json and inventory; returns the result dict, whose `problems`
    name each file missing, altered or added (empty: the bundle is as it was made)."""
    bundle = os.path.abspath(bundle)
    try:
        path_fd = _fileio.open_dir(bundle)
        try:
            root_fd = os.open(".", READ_DIR, dir_fd=path_fd)  # readable: it is listed
        finally:
            os.close(path_fd)
    except FileNotFoundError:
        raise BundleError("there is no bundle at %s" % bundle) from None
    except OSError as exc:
        raise BundleError("the bundle %s cannot be opened: %s" % (bundle, _reason(exc))) from None
    try:
        return _verify(root_fd, bundle, incident_id)
    finally:
        os.close(root_fd)


def _verify(root_fd, bundle, incident_id):
    problems = []
    result = dict(changed=False, bundle=bundle, problems=problems)
    custody = _read_custody(root_fd, problems)
    if custody is not None:
        result.update((key, custody.get(key)) for key in ("incident_id", "collected_by", "collected_at"))
        if incident_id is not None and custody.get("incident_id") != incident_id:
            problems.append(dict(path=CUSTODY, problem="altered", detail="it is the custody record of incident %r, not %s"
                                 % (custody.get("incident_id"), incident_id)))
    try:
        sums_data = _read_bytes(root_fd, SUMS)
    except FileNotFoundError:
        problems.append(dict(path=SUMS, problem="missing", detail="without it no file can be checked"))
        return dict(result, files=0, bytes=0, sha256sums_digest=None)
    except OSError as exc:
        problems.append(dict(path=SUMS, problem="unreadable", detail=_reason(exc)))
        return dict(result, files=0, bytes=0, sha256sums_digest=None)
    sums_digest = hashlib.sha256(sums_data).hexdigest()
    entry = custody.get("sha256sums") if custody is not None else None
    recorded = entry.get("sha256") if isinstance(entry, dict) else None
    if custody is not None and recorded != sums_digest:
        problems.append(dict(path=SUMS, problem="altered", detail="its sha256 %s is not the one recorded in %s (%s)"
                             % (sums_digest, CUSTODY, recorded)))
    sums, invalid = parse_sums(sums_data)
    problems.extend(invalid)
    present = _walk_bundle(root_fd)
    digests, total = {}, 0
    for rel in sorted(set(present) | set(sums)):
        if rel in (SUMS, CUSTODY):
            continue
        kind, _target = present.get(rel, (None, None))
        if rel not in sums:
            if kind != "symlink":
                problems.append(dict(path=shown(rel), problem="added", detail="a %s not listed in %s" % (kind, SUMS)))
            continue
        if kind is None:
            problems.append(dict(path=shown(rel), problem="missing", detail="listed in %s" % SUMS))
            continue
        if kind != "file":
            problems.append(dict(path=shown(rel), problem="altered", detail="a %s now, not a regular file" % kind))
            continue
        try:
            dir_fd, name = _open_rel(root_fd, rel)
            try:
                digest, size = _file_digest(dir_fd, name)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            problems.append(dict(path=shown(rel), problem="unreadable", detail=_reason(exc)))
            continue
        digests[rel] = digest
        total += size
        if digest != sums[rel]:
            problems.append(dict(path=shown(rel), problem="altered", detail="its sha256 is %s, %s lists %s" % (digest, SUMS, sums[rel])))
    _check_inventory(root_fd, sums, digests, present, problems)
    return dict(result, files=len(sums), bytes=total, sha256sums_digest=sums_digest)


def _read_custody(root_fd, problems):
    try:
        data = _read_bytes(root_fd, CUSTODY, MAX_CUSTODY_BYTES)
    except FileNotFoundError:
        problems.append(dict(path=CUSTODY, problem="missing", detail="the bundle has no custody record"))
        return None
    except OSError as exc:
        problems.append(dict(path=CUSTODY, problem="unreadable", detail=_reason(exc)))
        return None
    try:
        custody = json.loads(data.decode("utf-8"))
    except ValueError:
        custody = None
    if not isinstance(custody, dict) or custody.get("format") != FORMAT:
        problems.append(dict(path=CUSTODY, problem="invalid", detail="it is not a custody record of format %s" % FORMAT))
        return None
    return custody


def _check_inventory(root_fd, sums, digests, present, problems):
    """With an intact inventory: every symlink of the bundle is one it lists, with the same target, and every file
    has the digest it recorded when copied (which names the file even when SHA256SUMS was rewritten to hide it)."""
    if INVENTORY not in digests or digests[INVENTORY] != sums.get(INVENTORY):
        return
    try:
        data = _read_bytes(root_fd, INVENTORY)
        entries = [json.loads(line) for line in data.decode("utf-8", "surrogateescape").split("\n") if line]
    except (OSError, ValueError):
        problems.append(dict(path=INVENTORY, problem="invalid", detail="it cannot be read as JSON lines"))
        return
    links = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("bundle"), str):
            continue
        rel = entry["bundle"]
        if entry.get("type") == "symlink":
            links[rel] = entry.get("target")
        elif entry.get("sha256") and rel in digests and digests[rel] != entry["sha256"] and digests[rel] == sums.get(rel):
            problems.append(dict(path=shown(rel), problem="altered", detail="its sha256 is %s, the one recorded when it was "
                                 "copied is %s" % (digests[rel], entry["sha256"])))
    for rel, (kind, target) in sorted(present.items()):
        if kind != "symlink" or rel in sums:
            continue
        if rel not in links:
            problems.append(dict(path=shown(rel), problem="added", detail="a symlink not listed in %s" % INVENTORY))
        elif links[rel] != target:
            problems.append(dict(path=shown(rel), problem="altered", detail="a symlink to %s, recorded as one to %s"
                                 % (shown(target), shown(str(links[rel])))))
    for rel in sorted(set(links) - set(present)):
        problems.append(dict(path=shown(rel), problem="missing", detail="a symlink listed in %s" % INVENTORY))
