# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Content manifests of an audit archive, and their comparison across hosts. PRIVATE to the collection.

A manifest lists every regular file of the archive with its size, sha256 and mtime, and a Merkle root over them.
Each host computes its own, so neither host has to be trusted alone: the comparison happens elsewhere.

Incremental by default: a file whose (size, mtime_ns, ctime_ns, inode) equals the cached one reuses the cached
digest. `touch -r` restores mtime but cannot restore ctime, so an edit is always rehashed. The cache is not trusted
for a full pass: every file is rehashed and a cached digest that disagrees with the file under the same stat key is
reported as a cache mismatch (the cache was edited). The cache carries a digest of its entries, so a cache damaged
by accident (or edited carelessly) is detected and ignored.

Hashing streams each file in large reads through hashlib (OpenSSL, SHA extensions where the CPU has them), on one
thread per core: hashlib releases the GIL while it hashes. The archive is only ever opened read-only, without
updating access times where the kernel allows it. Inside the archive no symlink is ever followed: every path is
opened one component at a time from the archive root's descriptor (a symlink, even to a directory, is listed as
irregular and never read through), so a link planted or swapped in cannot make root read, copy or write elsewhere.

Hidden names (a leading dot) are not archive content, but nothing may hide behind one: they are listed in the
manifest (`hidden`, not descended into) and reported by the comparison. A hidden regular file changed within the
grace window is a partial write in progress (the receiver's `.incoming.*`, an atomic writer's `.*.partial`) and is
pending; any other hidden entry is a mismatch. Pure Python: also run by the host-side jobs.
"""
from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import json
import os
import re
import stat as stat_module
import threading
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

FORMAT = "runbooks.incident/audit-manifest/1"
CACHE_FORMAT = "runbooks.incident/audit-manifest-cache/1"
DEFAULT_CACHE_DIR = "/var/cache/runbooks-incident/audit-manifest"
# Reads of 256 KiB: large enough for few system calls, small enough that the data is still in the core's L2 cache
# when it is hashed. One buffer per thread, reused: allocating (and zeroing) one per file costs more than hashing
# the small hourly files.
READ_SIZE = 1 << 18
_BUFFERS = threading.local()
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(Exception):
    pass


def default_cache_path(root):
    """One cache file per archive root, named after the root."""
    name = os.path.abspath(root).strip("/").replace("/", "_") or "root"
    return os.path.join(DEFAULT_CACHE_DIR, name + ".json")


# ------------------------------------------------------------------------------------------------ scanning
Scan = collections.namedtuple("Scan", "files irregular hidden")
READ_DIR_FLAGS = os.O_RDONLY | _fileio.O_DIRECTORY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC


def rel_parts(rel):
    """The components of `rel`, a path that stays inside the archive, else ManifestError."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if not isinstance(rel, str) or rel.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in rel:
        raise ManifestError("%r is not a path inside the archive" % (rel,))
    return parts


def open_dir_beneath(dir_fd, parts, create_mode=None):
    """Descriptor of the directory `parts` under `dir_fd`, no component followed if it is a symlink (with
    `create_mode`, missing directories are created): _fileio.open_dir_beneath, its refusal worded for the archive.
    Raises UnsafePathError naming a symlink on the way."""
    try:
        return _fileio.open_dir_beneath(dir_fd, parts, create_mode)
    except _fileio.NotFollowedError as exc:
        raise _fileio.UnsafePathError(errno.ELOOP, "%s is %s inside the archive: not followed" % (
            exc.rel, "a symlink" if exc.is_link else "not a directory")) from None


def open_file_beneath(dir_fd, parts):
    """Read-only descriptor of the regular file `parts` under `dir_fd` (see open_dir_beneath), without updating its
    access time where the kernel allows it."""
    parent = open_dir_beneath(dir_fd, parts[:-1])
    try:
        flags = os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(parts[-1], flags | getattr(os, "O_NOATIME", 0), dir_fd=parent)
            except PermissionError:  # O_NOATIME needs ownership (or CAP_FOWNER)
                fd = os.open(parts[-1], flags, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _fileio.UnsafePathError(errno.ELOOP, "%s is a symlink inside the archive: not followed" % "/".join(parts)) from None
            raise
    finally:
        os.close(parent)
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _fileio.UnsafePathError(errno.EINVAL, "%s is not a regular file" % "/".join(parts))
    os.set_blocking(fd, True)
    return fd


def _kind(mode):
    if stat_module.S_ISREG(mode):
        return "file"
    if stat_module.S_ISDIR(mode):
        return "directory"
    return "symlink" if stat_module.S_ISLNK(mode) else "other"


def scan(root):
    """Scan(files={relpath: stat} of the regular files, irregular=[relpaths of symlinks, devices...],
    hidden=[{path, type, size, mtime}] of the entries with a hidden name, not descended into)."""
    files, irregular, hidden = {}, [], []
    root_fd = _fileio.open_dir(root)
    try:
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            try:
                dir_fd = open_dir_beneath(root_fd, rel_dir.split("/") if rel_dir else [])
            except _fileio.UnsafePathError:  # swapped for a symlink since it was listed
                irregular.append(rel_dir)
                continue
            try:
                readable = os.open(".", READ_DIR_FLAGS, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            try:
                with os.scandir(readable) as entries:
                    for entry in entries:
                        rel = rel_dir + "/" + entry.name if rel_dir else entry.name
                        info = entry.stat(follow_symlinks=False)
                        if entry.name.startswith("."):
                            hidden.append(dict(path=rel, type=_kind(info.st_mode), size=info.st_size, mtime=int(info.st_mtime)))
                        elif stat_module.S_ISDIR(info.st_mode):
                            pending.append(rel)
                        elif stat_module.S_ISREG(info.st_mode):
                            files[rel] = info
                        else:
                            irregular.append(rel)  # a symlink or device has no place in an archive: reported
            finally:
                os.close(readable)
    finally:
        os.close(root_fd)
    return Scan(files, sorted(irregular), sorted(hidden, key=lambda item: item["path"]))


def stat_key(info):
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _digest_fd(fd):
    digest = hashlib.sha256()
    if not hasattr(_BUFFERS, "view"):
        _BUFFERS.buffer = bytearray(READ_SIZE)
        _BUFFERS.view = memoryview(_BUFFERS.buffer)
    buffers, view = [_BUFFERS.buffer], _BUFFERS.view
    while True:
        count = os.readv(fd, buffers)
        if not count:
            break
        digest.update(view[:count])
    return digest.hexdigest()


def file_sha256(root_fd, rel):
    """(sha256 hex, stat of the file as read) of `rel` under the archive root's descriptor: streamed in large
    reads; no symlink followed."""
    fd = open_file_beneath(root_fd, rel.split("/"))
    try:
        return _digest_fd(fd), os.fstat(fd)
    finally:
        os.close(fd)


def _hash_all(root, rels, workers):
    """{rel: (sha256, stat)}: the files are dealt to `workers` threads, one list each (a future per file costs more
    than hashing a small file)."""
    root_fd = _fileio.open_dir(root)

    def hash_list(part):
        return [(rel, file_sha256(root_fd, rel)) for rel in part]

    try:
        workers = max(1, min(workers, len(rels)))
        if workers == 1:
            return dict(hash_list(rels))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(pair for part in pool.map(hash_list, [rels[index::workers] for index in range(workers)]) for pair in part)
    finally:
        os.close(root_fd)


# ------------------------------------------------------------------------------------------------ cache
def _read_all(fd):
    chunks = []
    for chunk in iter(lambda: os.read(fd, READ_SIZE), b""):
        chunks.append(chunk)
    return b"".join(chunks)


def _entries_digest(entries):
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_cache(cache_path, root):
    """(entries, status): status is missing, ok, corrupt (a cache whose digest or entries disagree, or a symlink or
    FIFO at its name: rewritten by the next save), other_root, or foreign (a file that is no cache at all, which a
    mistyped path may name: never rewritten)."""
    try:
        fd = _fileio.open_file(cache_path)
        try:
            data = json.loads(_read_all(fd))
        finally:
            os.close(fd)
    except FileNotFoundError:
        return {}, "missing"
    except OSError:  # a symlink, a FIFO...: replaced, never followed, by the next save
        return {}, "corrupt"
    except ValueError:
        return {}, "foreign"
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}, "foreign"
    if not isinstance(data.get("entries"), dict):
        return {}, "corrupt"
    if data.get("path") != os.path.abspath(root):
        return {}, "other_root"
    entries = data["entries"]
    if data.get("digest") != _entries_digest(entries):
        return {}, "corrupt"
    valid = {}
    for rel, value in entries.items():
        if not (isinstance(value, list) and len(value) == 5 and all(isinstance(item, int) for item in value[:4])
                and isinstance(value[4], str) and SHA256_HEX.match(value[4])):
            return {}, "corrupt"
        valid[rel] = value
    return valid, "ok"


def save_cache(cache_path, root, entries):
    document = dict(format=CACHE_FORMAT, path=os.path.abspath(root), digest=_entries_digest(entries), entries=entries)
    directory = os.path.dirname(cache_path)
    if directory:
        _fileio.makedirs(directory, mode=0o700)
    with _fileio.atomic_writer(cache_path, mode=0o600) as handle:
        handle.write(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())


# ------------------------------------------------------------------------------------------------ manifest
def _leaf(rel, size, sha256_hex):
    return hashlib.sha256(b"\x00" + rel.encode("utf-8", "surrogateescape") + b"\x00" + str(size).encode()
                          + b"\x00" + bytes.fromhex(sha256_hex)).digest()


def merkle_root(files):
    """Merkle root over {rel: {size, sha256}} in path order (leaves and nodes domain-separated)."""
    level = [_leaf(rel, files[rel]["size"], files[rel]["sha256"]) for rel in sorted(files)]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0].hex()


def build(root, cache_path=None, full=False, workers=None, write_cache=True):
    """The manifest of the archive at `root` (see the module's RETURN for its shape). Never writes to the archive."""
    if not os.path.isdir(root):
        raise ManifestError("the archive %s does not exist or is not a directory" % root)
    started = time.time()
    found, irregular, hidden = scan(root)
    cached, cache_status = load_cache(cache_path, root) if cache_path else ({}, "none")
    to_hash = sorted(rel for rel, info in found.items()
                     if full or cached.get(rel, [None])[:4] != stat_key(info))
    hashed = _hash_all(root, to_hash, workers or os.cpu_count() or 1)

    files, entries, cache_mismatches = {}, {}, []
    for rel, info in found.items():
        if rel in hashed:
            digest, info = hashed[rel]  # the stat of what was actually read
            previous = cached.get(rel)
            if previous and previous[:4] == stat_key(info) and previous[4] != digest:
                cache_mismatches.append(rel)
        else:
            digest = cached[rel][4]
        entries[rel] = stat_key(info) + [digest]
        files[rel] = dict(size=info.st_size, sha256=digest, mtime=int(info.st_mtime))

    if cache_path and write_cache and cache_status != "foreign" and (cached != entries or cache_status != "ok"):
        save_cache(cache_path, root, entries)
    return dict(
        format=FORMAT, path=os.path.abspath(root), generated_at=int(started), finished_at=int(time.time()) + 1, full=bool(full),
        root=merkle_root(files), count=len(files), bytes=sum(item["size"] for item in files.values()),
        hashed=len(hashed), reused=len(files) - len(hashed), irregular=irregular, hidden=hidden,
        cache=dict(path=cache_path or "", status=cache_status, mismatches=sorted(cache_mismatches)),
        files=files,
    )


# ------------------------------------------------------------------------------------------------ comparison
def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed_field(manifest):
    """The first field of a manifest made elsewhere that does not have its shape, or None."""
    for field in ("generated_at", "finished_at"):
        if field in manifest and not _is_int(manifest[field]):
            return field
    cache = manifest.get("cache", {})
    if not isinstance(cache, dict) or not isinstance(cache.get("mismatches", []), list) \
            or not all(isinstance(rel, str) for rel in cache.get("mismatches", [])):
        return "cache"
    irregular = manifest.get("irregular", [])
    if not isinstance(irregular, list) or not all(isinstance(rel, str) for rel in irregular):
        return "irregular"
    hidden = manifest.get("hidden", [])
    if not isinstance(hidden, list) or not all(
            isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("type"), str)
            and _is_int(item.get("mtime")) for item in hidden):
        return "hidden"
    return None


def validate(manifest, label):
    """Check the shape of a manifest made elsewhere, and that its root is the root of its files."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise ManifestError("%s is not an audit manifest (%s)" % (label, FORMAT))
    field = _malformed_field(manifest)
    if field:
        raise ManifestError("%s is not an audit manifest: its %s field is malformed" % (label, field))
    for rel, item in manifest["files"].items():
        if not (isinstance(item, dict) and _is_int(item.get("size")) and isinstance(item.get("sha256"), str)
                and SHA256_HEX.match(item["sha256"]) and _is_int(item.get("mtime", 0))):
            raise ManifestError("%s: malformed entry for %s" % (label, rel))
    if manifest.get("root") != merkle_root(manifest["files"]):
        raise ManifestError("%s: its root does not match its files (the manifest was altered)" % label)
    return manifest


def _read_regular(path):
    """The bytes of the regular file at `path` (a FIFO or device is refused, never waited on)."""
    fd = os.open(path, os.O_RDONLY | _fileio.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise ManifestError("%s is not a regular file" % path)
        os.set_blocking(fd, True)
        return _read_all(fd)
    finally:
        os.close(fd)


def load(spec, label):
    """A manifest from a dict, a JSON file, or a directory (hashed now, in full)."""
    if isinstance(spec, dict):
        return validate(spec, label)
    if not isinstance(spec, str) or not spec:
        raise ManifestError("%s must be a directory, a manifest file or a manifest" % label)
    if os.path.isdir(spec):
        return build(spec, full=True)
    try:
        return validate(json.loads(_read_regular(spec)), label)
    except FileNotFoundError:
        raise ManifestError("%s: %s does not exist" % (label, spec)) from None
    except ManifestError as exc:
        raise ManifestError("%s: %s" % (label, exc)) from None
    except ValueError as exc:
        raise ManifestError("%s: %s is not JSON: %s" % (label, spec, exc)) from None


def _subtree(files, prefix):
    prefix = prefix.strip("/")
    if not prefix:
        return files
    start = prefix + "/"
    return {rel[len(start):]: item for rel, item in files.items() if rel.startswith(start)}


def _subtree_path(rel, prefix):
    """`rel` relative to the subdirectory `prefix`, "." for the subdirectory itself, None when outside it."""
    prefix = prefix.strip("/")
    if not prefix:
        return rel
    if rel == prefix:
        return "."
    return rel[len(prefix) + 1:] if rel.startswith(prefix + "/") else None


def _entry_mismatches(manifest, prefix, side, grace_seconds):
    """(mismatches, pending) for the irregular and hidden entries of one side (see the module docstring)."""
    mismatches, pending = [], []
    generated = manifest.get("generated_at", 0)
    finished = max(generated, manifest.get("finished_at", generated))
    for rel in manifest.get("irregular", []):
        inside = _subtree_path(rel, prefix)
        if inside is not None:
            mismatches.append(dict(path=inside, kind="irregular", side=side))
    for item in manifest.get("hidden", []):
        inside = _subtree_path(item["path"], prefix)
        if inside is None:
            continue
        in_progress = item["type"] == "file" and generated - item["mtime"] < grace_seconds and item["mtime"] <= finished
        (pending if in_progress else mismatches).append(dict(path=inside, kind="hidden", side=side))
    return mismatches, pending


def diff(local, remote, grace_seconds=0, local_prefix="", remote_prefix=""):
    """Compare two manifests (optionally one subdirectory of each). Returns ok, mismatches, pending, roots."""
    local_files = _subtree(local["files"], local_prefix)
    remote_files = _subtree(remote["files"], remote_prefix)
    local_root, remote_root = merkle_root(local_files), merkle_root(remote_files)
    cache_mismatches = dict(local=local.get("cache", {}).get("mismatches", []),
                            remote=remote.get("cache", {}).get("mismatches", []))
    result = dict(local_root=local_root, remote_root=remote_root, local_count=len(local_files),
                  remote_count=len(remote_files), mismatches=[], pending=[], cache_mismatches=cache_mismatches)
    if local_root != remote_root:
        local_generated_at = local.get("generated_at", 0)
        # A file changed while the manifest was being made is still in progress; one dated later than that is not.
        local_finished_at = max(local_generated_at, local.get("finished_at", local_generated_at))
        for rel in sorted(set(local_files) | set(remote_files)):
            mine, theirs = local_files.get(rel), remote_files.get(rel)
            if mine is None:
                kind = "missing_local"
            elif theirs is None:
                kind = "missing_remote"
            elif mine["size"] != theirs["size"]:
                kind = "size"
            elif mine["sha256"] != theirs["sha256"]:
                kind = "content"
            else:
                continue
            if mine is not None and mine.get("mtime", 0) > local_finished_at:
                result["mismatches"].append(dict(path=rel, kind="future_mtime", difference=kind))
            # Only the local copy is written to; the remote one receives finished files with their local mtime.
            elif mine is not None and local_generated_at - mine.get("mtime", 0) < grace_seconds:
                result["pending"].append(dict(path=rel, kind=kind))  # still being written or shipped this hour
            else:
                result["mismatches"].append(dict(path=rel, kind=kind))
    for side, manifest, prefix in (("local", local, local_prefix), ("remote", remote, remote_prefix)):
        mismatches, pending = _entry_mismatches(manifest, prefix, side, grace_seconds)
        result["mismatches"] += mismatches
        result["pending"] += pending
    result["ok"] = not result["mismatches"] and not cache_mismatches["local"] and not cache_mismatches["remote"]
    return result


def summary_line(result):
    """One line naming what differs, for a page or a failure message."""
    parts = ["%s (%s)" % (item["path"], ", ".join([item["kind"]] + ([item["side"]] if "side" in item else [])))
             for item in result["mismatches"][:20]]
    if len(result["mismatches"]) > 20:
        parts.append("and %d more" % (len(result["mismatches"]) - 20))
    for side in ("local", "remote"):
        if result["cache_mismatches"][side]:
            parts.append("%s manifest cache was edited for %s" % (side, ", ".join(result["cache_mismatches"][side][:5])))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ evidence
def sums_line(digest, rel):
    """A SHA256SUMS line as sha256sum writes it: a name holding a backslash or a line break is escaped."""
    if "\\" in rel or "\n" in rel or "\r" in rel:
        return "\\%s  %s\n" % (digest, rel.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"))
    return "%s  %s\n" % (digest, rel)


def preserve(root, rels, dest, check_mode=False):
    """Copy each file `rel` of the archive into `dest` (0400, in a 0700 tree) with a SHA256SUMS; the originals are
    only read, and never through a symlink. Returns ([{path, sha256, size}] of what is (or would be) preserved,
    whether anything was written, [{path, reason}] of what was skipped because it is not a regular file of the
    archive: a symlink on its way, a directory, a device)."""
    for rel in rels:
        rel_parts(rel)
    _check_evidence_dir(dest)
    preserved, skipped, changed = [], [], False
    try:
        root_fd = _fileio.open_dir(root)
    except FileNotFoundError:
        return preserved, changed, skipped  # no archive on this side: nothing to keep
    try:
        for rel in sorted(set(rels)):
            try:
                fd = open_file_beneath(root_fd, rel.split("/"))
            except (FileNotFoundError, NotADirectoryError):
                continue  # missing on this side: nothing to keep
            except _fileio.UnsafePathError as exc:
                skipped.append(dict(path=rel, reason=exc.strerror or str(exc)))
                continue
            try:
                item, wrote = _preserve_one(fd, rel, dest, check_mode)
            finally:
                os.close(fd)
            preserved.append(item)
            changed = changed or wrote
    finally:
        os.close(root_fd)
    if preserved and changed and not check_mode:
        _fileio.makedirs(dest, mode=0o700)
        with _fileio.atomic_writer(os.path.join(dest, "SHA256SUMS"), mode=0o400) as handle:
            handle.write("".join(sums_line(item["sha256"], item["path"]) for item in preserved).encode("utf-8", "surrogateescape"))
    return preserved, changed, skipped


def _check_evidence_dir(dest):
    """Refuse a `dest` that holds files but no SHA256SUMS: it is no evidence directory (a mistyped path such as /etc),
    and copies named after archive files must not replace what is there."""
    try:
        fd = _fileio.open_dir(dest)
    except FileNotFoundError:
        return
    try:
        real = os.open(".", READ_DIR_FLAGS, dir_fd=fd)
        try:
            names = set(os.listdir(real))
        finally:
            os.close(real)
    finally:
        os.close(fd)
    if names and "SHA256SUMS" not in names:
        raise ManifestError("%s holds files but no SHA256SUMS: it is not an evidence directory, refusing to write into it" % dest)


def _preserve_one(fd, rel, dest, check_mode):
    """({path, sha256, size}, whether the copy was (or would be) written) of the open archive file `fd`."""
    digest = _digest_fd(fd)
    target = os.path.join(dest, rel)
    try:
        kept = _fileio.open_file(target)
    except FileNotFoundError:
        kept = None
    except _fileio.UnsafePathError:
        kept = None  # a symlink or a FIFO where the copy goes: replaced, never followed
    if kept is not None:
        try:
            same = _digest_fd(kept) == digest
        finally:
            os.close(kept)
        if same:
            return dict(path=rel, sha256=digest, size=os.fstat(fd).st_size), False
    if check_mode:
        return dict(path=rel, sha256=digest, size=os.fstat(fd).st_size), True
    _fileio.makedirs(os.path.dirname(target), mode=0o700)
    os.lseek(fd, 0, os.SEEK_SET)
    copied, size = hashlib.sha256(), 0
    with _fileio.atomic_writer(target, mode=0o400) as writer:
        for chunk in iter(lambda: os.read(fd, READ_SIZE), b""):
            writer.write(chunk)
            copied.update(chunk)
            size += len(chunk)
    return dict(path=rel, sha256=copied.hexdigest(), size=size), True
