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
updating access times where the kernel allows it. Pure Python: also run by the host-side jobs.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
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
def scan(root):
    """({relpath: stat} of the regular files, [irregular relpaths]); hidden names (partial writes) are skipped."""
    files, irregular = {}, []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(root, rel_dir)) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = rel_dir + "/" + entry.name if rel_dir else entry.name
                info = entry.stat(follow_symlinks=False)
                if stat_module.S_ISDIR(info.st_mode):
                    pending.append(rel)
                elif stat_module.S_ISREG(info.st_mode):
                    files[rel] = info
                else:
                    irregular.append(rel)  # a symlink or device has no place in an archive: reported
    return files, sorted(irregular)


def stat_key(info):
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _open_read_only(path):
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:  # O_NOATIME needs ownership (or CAP_FOWNER)
        return os.open(path, flags)


def file_sha256(path):
    """(sha256 hex, stat of the file as read): streamed in large reads; never follows a symlink."""
    fd = _open_read_only(path)
    try:
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
        return digest.hexdigest(), os.fstat(fd)
    finally:
        os.close(fd)


def _hash_all(root, rels, workers):
    """{rel: (sha256, stat)}: the files are dealt to `workers` threads, one list each (a future per file costs more
    than hashing a small file)."""
    def hash_list(part):
        return [(rel, file_sha256(os.path.join(root, rel))) for rel in part]

    workers = max(1, min(workers, len(rels)))
    if workers == 1:
        return dict(hash_list(rels))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pair for part in pool.map(hash_list, [rels[index::workers] for index in range(workers)]) for pair in part)


# ------------------------------------------------------------------------------------------------ cache
def _entries_digest(entries):
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_cache(cache_path, root):
    """(entries, status): status is missing, ok, corrupt (unreadable or its digest disagrees) or other_root."""
    try:
        with open(cache_path, "rb") as handle:
            data = json.loads(handle.read())
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError):
        return {}, "corrupt"
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
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
        os.makedirs(directory, mode=0o700, exist_ok=True)
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
    found, irregular = scan(root)
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

    if cache_path and write_cache and (cached != entries or cache_status != "ok"):
        save_cache(cache_path, root, entries)
    return dict(
        format=FORMAT, path=os.path.abspath(root), generated_at=int(started), full=bool(full),
        root=merkle_root(files), count=len(files), bytes=sum(item["size"] for item in files.values()),
        hashed=len(hashed), reused=len(files) - len(hashed), irregular=irregular,
        cache=dict(path=cache_path or "", status=cache_status, mismatches=sorted(cache_mismatches)),
        files=files,
    )


# ------------------------------------------------------------------------------------------------ comparison
def validate(manifest, label):
    """Check the shape of a manifest made elsewhere, and that its root is the root of its files."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise ManifestError("%s is not an audit manifest (%s)" % (label, FORMAT))
    for rel, item in manifest["files"].items():
        if not (isinstance(item, dict) and isinstance(item.get("size"), int) and isinstance(item.get("sha256"), str)
                and SHA256_HEX.match(item["sha256"]) and isinstance(item.get("mtime", 0), int)):
            raise ManifestError("%s: malformed entry for %s" % (label, rel))
    if manifest.get("root") != merkle_root(manifest["files"]):
        raise ManifestError("%s: its root does not match its files (the manifest was altered)" % label)
    return manifest


def load(spec, label):
    """A manifest from a dict, a JSON file, or a directory (hashed now, in full)."""
    if isinstance(spec, dict):
        return validate(spec, label)
    if not isinstance(spec, str) or not spec:
        raise ManifestError("%s must be a directory, a manifest file or a manifest" % label)
    if os.path.isdir(spec):
        return build(spec, full=True)
    try:
        with open(spec, "rb") as handle:
            return validate(json.loads(handle.read()), label)
    except FileNotFoundError:
        raise ManifestError("%s: %s does not exist" % (label, spec)) from None
    except ValueError as exc:
        raise ManifestError("%s: %s is not JSON: %s" % (label, spec, exc)) from None


def _subtree(files, prefix):
    prefix = prefix.strip("/")
    if not prefix:
        return files
    start = prefix + "/"
    return {rel[len(start):]: item for rel, item in files.items() if rel.startswith(start)}


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
            # Only the local copy is written to; the remote one receives finished files with their local mtime.
            if mine is not None and local_generated_at - mine.get("mtime", 0) < grace_seconds:
                result["pending"].append(dict(path=rel, kind=kind))  # still being written or shipped this hour
            else:
                result["mismatches"].append(dict(path=rel, kind=kind))
    result["ok"] = not result["mismatches"] and not cache_mismatches["local"] and not cache_mismatches["remote"]
    return result


def summary_line(result):
    """One line naming what differs, for a page or a failure message."""
    parts = ["%s (%s)" % (item["path"], item["kind"]) for item in result["mismatches"][:20]]
    if len(result["mismatches"]) > 20:
        parts.append("and %d more" % (len(result["mismatches"]) - 20))
    for side in ("local", "remote"):
        if result["cache_mismatches"][side]:
            parts.append("%s manifest cache was edited for %s" % (side, ", ".join(result["cache_mismatches"][side][:5])))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ evidence
def preserve(root, rels, dest, check_mode=False):
    """Copy each file `rel` of the archive into `dest` (0400, in a 0700 tree) with a SHA256SUMS; the originals are
    only read. Returns [{path, sha256, size}] of what is (or would be) preserved and whether anything was written."""
    preserved, changed = [], False
    for rel in sorted(set(rels)):
        parts = rel.split("/")
        if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ManifestError("refusing to preserve %r: not a path inside the archive" % rel)
        source = os.path.join(root, rel)
        if not os.path.isfile(source) or os.path.islink(source):
            continue  # missing on this side: nothing to keep
        target = os.path.join(dest, rel)
        digest, info = file_sha256(source)
        preserved.append(dict(path=rel, sha256=digest, size=info.st_size))
        if os.path.isfile(target) and file_sha256(target)[0] == digest:
            continue
        changed = True
        if check_mode:
            continue
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd = _open_read_only(source)
        try:
            with os.fdopen(fd, "rb", closefd=False) as reader, _fileio.atomic_writer(target, mode=0o400) as writer:
                shutil.copyfileobj(reader, writer, READ_SIZE)
        finally:
            os.close(fd)
    if preserved and changed and not check_mode:
        sums = "".join("%s  %s\n" % (item["sha256"], item["path"]) for item in preserved)
        os.makedirs(dest, mode=0o700, exist_ok=True)
        with _fileio.atomic_writer(os.path.join(dest, "SHA256SUMS"), mode=0o400) as handle:
            handle.write(sums.encode())
    return preserved, changed
