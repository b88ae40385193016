# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_dump with a manifest whose row counts come from the dump's own snapshot. PRIVATE to the collection.

One psql session opens a REPEATABLE READ transaction and exports its snapshot; pg_dump runs with --snapshot on
it while the same session counts every table, so the manifest describes exactly the rows in the dump, even while
the service keeps writing. The dump is written under a hidden partial name and renamed only when pg_dump and the
compressor both succeeded; the manifest follows the same way. Nothing is written outside `dest`, and no symlink
found there is followed or renamed into place. Pure Python: also used by the host-side CLI.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _dumpfile, _fileio, _pg, _retention, _signature


# The seeds' daily stamp, or a timed one for an extra backup the same day (what backup_retention parses).
STAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{4}([0-9]{2})?Z)?$")


class BackupError(Exception):
    pass


def check_stamp(stamp):
    """A stamp retention can read back: a real date (and time), not just digits in place (2026-13-45)."""
    parsed = _retention.parse_stamp(stamp) if isinstance(stamp, str) and STAMP.match(stamp) else None
    if parsed is None or parsed.text != stamp:
        raise BackupError("stamp %r is not YYYY-MM-DD or YYYY-MM-DDTHHMMSSZ (a real date and time)" % (stamp,))
    return stamp


def check_prefix(prefix):
    """A file name prefix: it stays inside the backup directory and is not hidden (partial files are)."""
    if not isinstance(prefix, str) or not prefix or "/" in prefix or ".." in prefix or "\0" in prefix or prefix.startswith("."):
        raise BackupError("prefix %r is not accepted: a file name prefix, not empty, without '/', '..' or NUL, not "
                          "starting with a dot" % (prefix,))
    return prefix


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _drain(stream, sink):
    """Collect a subprocess' stderr in a thread (a full pipe would block it)."""
    def run():
        sink.append(stream.read())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def existing_backup(path, manifest_path, fmt):
    """The manifest of a complete, intact backup at `path`, else None; raises if something unverifiable is there."""
    try:
        info = _fileio.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise BackupError("%s is a symlink, not a backup this module wrote; pass force=true to replace it (the link "
                          "itself, never what it points to)" % path)
    if not os.path.exists(manifest_path):
        raise BackupError("%s exists without its manifest %s: it cannot be verified; pass force=true to replace it"
                          % (path, manifest_path))
    try:
        manifest = _dumpfile.load_manifest(manifest_path)
        _dumpfile.check_digest(path, fmt, manifest)
    except _dumpfile.DumpError as exc:
        raise BackupError("%s; pass force=true to replace it" % exc)
    return manifest


def compressor(jobs, level):
    """pigz (parallel, gzip-compatible output) when installed, else gzip."""
    pigz = shutil.which("pigz")
    if pigz:
        return [pigz, "-p", str(max(1, jobs)), "-%d" % level, "-c"], "pigz"
    return [shutil.which("gzip") or "gzip", "-%d" % level, "-c"], "gzip"


def _dump_stream(runtime, dump_argv, final_path, filters, mode, owner, group):
    """Run pg_dump (| compressor), write its output atomically; returns (sha256, size)."""
    errors = {}
    dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=runtime.env())
    readers = [_drain(dump.stderr, errors.setdefault("pg_dump", []))]
    procs, source = [("pg_dump", dump)], dump.stdout
    for name, argv in filters:
        proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        source.close()
        readers.append(_drain(proc.stderr, errors.setdefault(name, [])))
        procs.append((name, proc))
        source = proc.stdout
    digest = hashlib.sha256()
    size = 0
    try:
        with _fileio.atomic_writer(final_path, mode, owner, group) as out:
            for chunk in iter(lambda: source.read(_fileio.CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            for name, proc in procs:
                if proc.wait() != 0:
                    for reader in readers:
                        reader.join()
                    raise BackupError("%s failed: %s" % (name, _pg.first_line(b"".join(errors[name]).decode(errors="replace"))))
    finally:
        source.close()
        for _name, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return digest.hexdigest(), size


@contextlib.contextmanager
def fresh_directory(path):
    """A new empty directory at `path` (whatever was there removed, a symlink itself, never what it points to),
    yielded as a /proc/self/fd path to it: a tool writing there writes into this directory even if someone renames
    it or puts a symlink at `path` meanwhile. The descriptor is open until the block ends."""
    _fileio.remove(path)
    with _fileio.parent_dir(path) as (dir_fd, name):
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDONLY | _fileio.O_DIRECTORY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, dir_fd=dir_fd)
    try:
        yield fd, "/proc/self/fd/%d" % fd
    finally:
        os.close(fd)


def _dump_directory(runtime, dump_args, final_path, jobs, mode, owner, group):
    """pg_dump -Fd -j into a fresh partial directory (through the container for compose), then rename it into place:
    only if it still is the directory made here, and a symlink at the final name is replaced, never followed."""
    partial = _fileio.partial_name(final_path)
    with fresh_directory(partial) as (fd, fd_path):
        if runtime.kind == "compose":
            inner = "/tmp/runbooks-incident-dump-%d" % os.getpid()
            runtime.run(runtime.prefix() + ["rm", "-rf", inner])
            try:
                runtime.run(runtime.command("pg_dump", "-j", str(jobs), "-f", inner, *dump_args))
                res = subprocess.run(["docker", "compose", "--project-directory", runtime.compose_project_dir, "cp",
                                      "%s:%s/." % (runtime.compose_service, inner), fd_path], capture_output=True,
                                     pass_fds=(fd,), check=False)
                if res.returncode != 0:
                    raise BackupError("cannot copy the dump out of the database container: %s"
                                      % _pg.first_line(res.stderr.decode("utf-8", errors="replace")))
            finally:
                runtime.run(runtime.prefix() + ["rm", "-rf", inner])
        else:
            argv = runtime.command("pg_dump", "-j", str(jobs), "-f", fd_path, *dump_args)
            res = subprocess.run(argv, capture_output=True, env=runtime.env(), pass_fds=(fd,), check=False)
            if res.returncode != 0:
                raise _pg.PgError(_pg.first_line(res.stderr.decode("utf-8", errors="replace")))
        made = os.fstat(fd)
        for rel in _fileio.tree_files(fd_path):
            _fileio.set_owner_mode(os.path.join(partial, rel), mode, owner, group)
        _fileio.set_owner_mode(partial, 0o700, owner, group)
        _fileio.remove(final_path)
        with _fileio.parent_dir(final_path) as (dir_fd, name):
            there = os.stat(os.path.basename(partial), dir_fd=dir_fd, follow_symlinks=False)
            if (there.st_dev, there.st_ino) != (made.st_dev, made.st_ino):
                raise BackupError("%s was replaced while pg_dump wrote into it: not renamed into place" % partial)
            os.rename(os.path.basename(partial), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return _dumpfile.digest(final_path, "directory")


def backup(runtime, db, dest, fmt="plain", stamp=None, compress_level=1, jobs=2, prefix="db-", force=False,
           check_mode=False, mode=0o600, owner=None, group=None, signing_key=None):
    """Dump `db` into `dest`; returns a result dict (changed, path, manifest_path, manifest, signed, ...).

    With `signing_key` (an OpenSSH private key) the manifest is signed into <manifest>.sig (_signature), so a restore
    can tell this backup from one planted beside it."""
    _pg.check_name(db)
    check_prefix(prefix)
    if fmt not in _dumpfile.SUFFIXES:
        raise BackupError("format %r is not one of %s" % (fmt, ", ".join(sorted(_dumpfile.SUFFIXES))))
    if stamp is not None:
        check_stamp(stamp)
    if not os.path.isdir(dest):
        raise BackupError("backup directory %s does not exist" % dest)
    started = utc_now()
    stamp = stamp or started.strftime("%Y-%m-%d")
    path = os.path.join(dest, _dumpfile.dump_name(prefix, stamp, fmt))
    manifest_path = _dumpfile.manifest_path_for(path)
    if not force:
        manifest = existing_backup(path, manifest_path, fmt)
        if manifest is not None:
            return dict(changed=False, path=path, manifest_path=manifest_path, manifest=manifest,
                        signed=os.path.lexists(_signature.signature_path(manifest_path)),
                        msg="%s already exists and matches its manifest" % path)
    if signing_key:
        try:
            _signature.public_key_of(signing_key)  # an unusable key fails now, not after the dump
        except _signature.SignatureError as exc:
            raise BackupError(str(exc)) from None
    server_version = runtime.ping()
    if check_mode:
        return dict(changed=True, path=path, manifest_path=manifest_path, msg="would dump %s to %s" % (db, path))

    clock = time.monotonic()
    with _pg.Session(runtime, db) as session:
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = session.query("SELECT pg_export_snapshot()")[0][0]
        catalog = _pg.Tables.from_rows(session.query(_pg.TABLES_SQL))
        tables = catalog.keys
        db_size, encoding = session.query("SELECT pg_database_size(current_database()), pg_encoding_to_char(encoding) "
                                          "FROM pg_database WHERE datname = current_database()")[0]
        db_size = int(db_size)
        # The dump in the database's own encoding, as pg_dump writes it by default (PGCLIENTENCODING would change it).
        dump_args = ["--snapshot", snapshot, "-E", encoding, "-d", db]
        counts, count_errors = {}, []

        def count_rows():
            try:
                counts.update(catalog.count(session.query))
            except _pg.PgError as exc:
                count_errors.append(exc)

        # Count in the exported snapshot while pg_dump streams: same rows, no extra wall time.
        counter = threading.Thread(target=count_rows)
        counter.start()
        try:
            if fmt == "directory":
                sha, size = _dump_directory(runtime, ["-Fd", "-Z", str(compress_level)] + dump_args, path, jobs,
                                            mode, owner, group)
                compression = "pg_dump -Z%d" % compress_level
            elif fmt == "custom":
                sha, size = _dump_stream(runtime, runtime.command("pg_dump", "-Fc", "-Z", str(compress_level), *dump_args),
                                         path, [], mode, owner, group)
                compression = "pg_dump -Z%d" % compress_level
            else:
                argv, compression = compressor(jobs, compress_level)
                sha, size = _dump_stream(runtime, runtime.command("pg_dump", *dump_args), path,
                                         [(compression, argv)], mode, owner, group)
        finally:
            counter.join()
        session.query("COMMIT")
    if count_errors or len(counts) != len(tables):
        raise BackupError("could not count the rows in the dump's snapshot: %s" % (count_errors or ["missing tables"])[0])
    finished = utc_now()
    manifest = dict(
        version=1, tool="runbooks.incident.pg_backup", db=db, format=fmt, file=os.path.basename(path),
        compression=compression, sha256=sha, size=size, tables=tables, row_counts=counts,
        server_version=server_version, db_size_bytes=db_size, snapshot=snapshot,
        started_at=iso(started), finished_at=iso(finished), duration_s=round(time.monotonic() - clock, 3))
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    if signing_key:
        try:
            _signature.write_signed(manifest_path, data, signing_key, mode, owner, group)
        except _signature.SignatureError as exc:
            raise BackupError("%s; the dump has no manifest, so nothing will ship or restore it" % exc) from None
    else:
        _fileio.write_bytes(manifest_path, data, mode, owner, group)
    return dict(changed=True, path=path, manifest_path=manifest_path, manifest=manifest, signed=bool(signing_key),
                msg="dumped %s (%d tables, %d bytes) to %s%s" % (db, len(tables), size, path, ", signed" if signing_key else ""))
