# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a dump without ever destroying the live database first. PRIVATE to the collection.

swap strategy (default):
  stage    create <db>_restore_staging, load the dump into it while the service keeps running (one streaming pass
           that also proves the file whole and counts its rows), verify tables and exact row counts against the
           manifest, then mark it verified (a JSON comment on the database).
  swap     one transaction renames <db> -> <db>_pre_restore_<stamp> and the staging database -> <db>, after
           terminating sessions; the service is down only for this step. Older pre-restore databases beyond
           keep_previous are dropped afterwards, never the one just made.
  rollback one transaction renames <db> -> <db>_failed_restore_<stamp> and the pre-restore database back.

Every step records the change id in the database comments, so a re-run of the same change is a no-op, and a run
killed at any point leaves the live database intact: leftovers (a half-loaded staging database) are dropped by the
next run, which says so (and whose incident had made them). in_place (the seeds' way, force only) drops and reloads
the live database, after the whole dump was checked.

Every psql session of a plain dump starts with `\\restrict <random key>`: psql then refuses every meta-command
(`\\!`, `\\o |cmd`, `\\copy ... program`), wherever the dump hides one; the scanner refuses the dump, naming the line,
before psql even sees it. A psql too old to know `\\restrict` is refused before anything is created.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _dumpfile, _faults, _pg

MARK = "runbooks.incident"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# <db>_failed_restore_20261122T030000Z must fit PostgreSQL's 63-byte identifiers.
MAX_DB_NAME = 63 - len("_failed_restore_20261122T030000Z")
# psql sessions (or pg_restore -j workers) one restore may open.
MAX_JOBS = 64
# A partition in pg_restore -l's table of contents ("123; 0 0 TABLE ATTACH public m_2024 owner", INDEX ATTACH).
ATTACH_ENTRY_RE = re.compile(r"^\d+; \d+ \d+ (TABLE|INDEX) ATTACH ", re.M)


F_SETPIPE_SZ = 1031  # Linux fcntl, not exported by Python 3.8's fcntl module


class RestoreError(Exception):
    pass


class RolledBack(RestoreError):
    """A step after the swap failed and the swap was undone: the previous database is live again."""


class RestoreFailed(RestoreError):
    """The restore failed after it had changed something: `dropped` (databases that existed before it) and whether
    the live database was among them (strategy=in_place); `cause` is the failure."""

    def __init__(self, cause, dropped, live_dropped, notes):
        RestoreError.__init__(self, str(cause))
        self.cause = cause
        self.dropped = dropped
        self.live_dropped = live_dropped
        self.described = ["%s (%s)" % (name, notes[name]) if name in notes else name for name in dropped]


def staging_name(db):
    return db + "_restore_staging"


def marker(comment):
    """The restore marker of a database comment, or None."""
    try:
        data = json.loads(comment or "")
    except ValueError:
        return None
    return data.get(MARK) if isinstance(data, dict) else None


def comment_sql(db, mark):
    return "COMMENT ON DATABASE %s IS %s" % (_pg.quote_ident(db), _pg.quote_literal(json.dumps({MARK: mark}, sort_keys=True)))


def _drain(stream, sink):
    thread = threading.Thread(target=lambda: sink.append(stream.read()), daemon=True)
    thread.start()
    return thread


def enlarge_pipe(pipe, size=1 << 20):
    """A 1 MiB pipe instead of 64 KiB: fewer context switches between this process and psql on a large stream."""
    try:
        fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, size)
    except OSError:
        pass


class Session:
    """A psql process fed on stdin (a whole `script` at once from a thread), its stderr collected."""

    def __init__(self, proc, script=None):
        self.proc = proc
        self.errors = []
        self._stderr = _drain(proc.stderr, self.errors)
        self._writer = None
        if script is not None:
            self._writer = threading.Thread(target=self._write_all, args=(script,), daemon=True)
            self._writer.start()

    def _write_all(self, script):
        try:
            self.proc.stdin.write(script)
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def write(self, data):
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            self.close("loading the dump")

    def close(self, what):
        """Wait for psql to run everything it was sent; raise with its error if it failed."""
        if self._writer:
            self._writer.join()
        elif not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        if self.proc.wait() != 0:
            self._stderr.join()
            raise RestoreError("%s failed: %s" % (what, _pg.first_line(b"".join(self.errors).decode(errors="replace"))))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class MainStream:
    """The session of everything but COPY data; restarted (preamble replayed) once the schema is complete."""

    def __init__(self, open_session):
        self.open_session = open_session
        self.session = open_session()

    def write(self, data):
        self.session.write(data)

    def restart(self, what, preamble):
        self.session.close(what)
        self.session = self.open_session()
        self.session.write(preamble)


class ParallelCopy:
    """The copy_sink of SqlScanner: COPY data cut into units of about `unit_size` bytes (whole rows, each a COPY
    statement of its own), loaded by `jobs` psql sessions at once. Big tables are split, so all sessions stay busy
    whatever the table sizes; the look-ahead is bounded (2 units per session) so memory stays small."""

    def __init__(self, open_session, main, jobs, unit_size=8 << 20):
        self.open_session = open_session
        self.main = main
        self.jobs = jobs
        self.unit_size = unit_size
        self.scanner = None
        self.sessions = []
        self.queue = queue.Queue(maxsize=2 * jobs)
        self.failed = threading.Event()
        self._threads = []
        self._header = None
        self._parts = []
        self._size = 0

    def start(self, header):
        if not self.sessions:
            # The tables must exist before any COPY runs: let the pre-data section finish in its own session first.
            preamble = b"".join(self.scanner.preamble)
            self.main.restart("creating the schema", preamble)
            for _index in range(self.jobs):
                session = self.open_session()
                session.write(preamble)
                thread = threading.Thread(target=self._work, args=(session,), daemon=True)
                thread.start()
                self.sessions.append(session)
                self._threads.append(thread)
        self._header, self._parts, self._size = header, [], 0

    def data(self, chunk):
        if chunk:
            self._parts.append(chunk)
            self._size += len(chunk)
            if self._size >= self.unit_size:
                self._flush()

    def end(self):
        self._flush()

    def _flush(self):
        if self._parts:
            unit = self._header + b"".join(self._parts) + b"\\.\n"
            self._parts, self._size = [], 0
            while not self.failed.is_set():
                try:
                    self.queue.put(unit, timeout=0.2)
                    return
                except queue.Full:
                    continue
            self.close()

    def _work(self, session):
        while True:
            unit = self.queue.get()
            if unit is None:
                return
            if self.failed.is_set():
                continue  # keep draining so the producer never blocks
            try:
                session.write(unit)
            except RestoreError:
                self.failed.set()

    def close(self):
        """Wait for every unit to be loaded; raise with the first session error."""
        for _thread in self._threads:
            self.queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        for session in self.sessions:
            session.close("loading the data")


class Restorer:
    def __init__(self, runtime, db, change_id, keep_previous=1, jobs=2, owner=None, disk_headroom=0.1, analyze=True,
                 check_mode=False, warn=None, allow_foreign_script=False):
        _pg.check_name(db, max_len=MAX_DB_NAME)
        if keep_previous < 1:
            raise RestoreError("keep_previous must be at least 1: the pre-restore database is the way back")
        if not 1 <= jobs <= MAX_JOBS:
            raise RestoreError("jobs must be 1 to %d (one psql session each), not %d" % (MAX_JOBS, jobs))
        if not (math.isfinite(disk_headroom) and disk_headroom >= 0):
            raise RestoreError("disk_headroom must be a fraction of at least 0 (0.1 = 10%%), not %r" % disk_headroom)
        self.runtime = runtime
        self.db = db
        self.staging = staging_name(db)
        self.change_id = change_id
        self.keep_previous = keep_previous
        self.jobs = jobs
        self.owner = owner
        self.disk_headroom = disk_headroom
        self.analyze = analyze
        self.check_mode = check_mode
        self.warn = warn or (lambda _msg: None)
        self.allow_foreign_script = allow_foreign_script
        # Databases that existed before this call and were dropped by it (what each was), and whether the live one was.
        self.dropped = []
        self.notes = {}
        self.live_dropped = False
        self._restrict = ("\\restrict %s\n" % secrets.token_hex(16)).encode()

    # ------------------------------------------------------------------------------------------ helpers
    def mark_of(self, name):
        return marker(self.runtime.database_comment(name)) if self.runtime.database_exists(name) else None

    def drop(self, name, existed=True):
        self.runtime.terminate_sessions(name)
        self.runtime.execute("DROP DATABASE IF EXISTS %s" % _pg.quote_ident(name))
        if existed:
            self.dropped.append(name)

    def check_source(self, manifest, allow_other_db):
        """Refuse a dump whose manifest says it is of another database, unless that is intended."""
        source = (manifest or {}).get("db")
        if manifest is None or source == self.db:
            return
        if source is None:
            self.warn("the manifest does not say which database the dump is of: not compared with %s" % self.db)
        elif not allow_other_db:
            raise RestoreError("the dump is of database %s (its manifest says so), not of %s: restoring it would replace "
                               "%s with another database's data; pass allow_other_db=true if that is intended"
                               % (source, self.db, self.db))
        else:
            self.warn("restoring a dump of database %s into %s (allow_other_db=true)" % (source, self.db))

    def check_psql_restricts(self):
        """The psql that will read a plain dump must know `\\restrict` (13.22, 14.19, 15.14, 16.10, 17.6 and later):
        an older one would run whatever meta-command the dump holds."""
        key = secrets.token_hex(8)
        try:
            self.runtime.run(self.runtime.psql_command(self.runtime.maintenance_db, "-f", "-"),
                             "\\restrict %s\n\\unrestrict %s\n" % (key, key))
        except _pg.PgError as exc:
            raise RestoreError("the psql of the %s cannot forbid meta-commands (%s): a plain dump is only run through a "
                               "psql that knows \\restrict (13.22, 14.19, 15.14, 16.10, 17.6 or later)"
                               % (self.runtime.describe(), exc))

    def unused_name(self, kind):
        """<db>_<kind>_<UTC stamp>, one second later per name already taken (two restores within a second)."""
        taken = set(self.runtime.databases_like("^%s_%s_" % (self.db, kind)))
        now = int(time.time())
        while True:
            name = "%s_%s_%s" % (self.db, kind, time.strftime(STAMP_FORMAT, time.gmtime(now)))
            if name not in taken:
                return name
            now += 1

    def previous_databases(self):
        return self.runtime.databases_like("^%s_pre_restore_[0-9]{8}T[0-9]{6}Z$" % self.db)

    def free_bytes(self):
        """Free space of the server's data directory, or None when it cannot be measured from here."""
        try:
            data_dir = self.runtime.scalar("SHOW data_directory")
        except _pg.PgError:
            return None
        if self.runtime.kind == "compose":
            try:
                out = self.runtime.run(self.runtime.prefix() + ["df", "-Pk", data_dir])
                return int(out.splitlines()[-1].split()[3]) * 1024
            except (_pg.PgError, IndexError, ValueError):
                return None
        host = self.runtime.login_host
        if (host is None or host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")) and os.path.isdir(data_dir):
            stats = os.statvfs(data_dir)
            return stats.f_bavail * stats.f_frsize
        return None

    def check_disk(self, manifest, live_exists):
        needed = int((manifest or {}).get("db_size_bytes") or 0)
        if live_exists:
            needed = max(needed, int(self.runtime.scalar("SELECT pg_database_size(%s)" % _pg.quote_literal(self.db))))
        if not needed:
            self.warn("no size estimate (no manifest and no live database): free disk space not checked")
            return None
        needed = int(needed * (1 + self.disk_headroom))
        free = self.free_bytes()
        if free is None:
            self.warn("free disk space of the database server cannot be measured from this host: not checked")
        elif free < needed:
            raise RestoreError("not enough free disk for the staging copy on the database server: %d MiB free, %d MiB "
                               "needed (database size plus %d%% headroom)" % (free >> 20, needed >> 20, self.disk_headroom * 100))
        return needed

    # ------------------------------------------------------------------------------------------ loading
    def create_database(self, name):
        if self.runtime.database_exists(self.db):
            row = self.runtime.query(
                "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                "WHERE datname = %s" % _pg.quote_literal(self.db))[0]
        else:
            row = [self.runtime.login_user, "UTF8", None, None]
        owner = self.owner or row[0]
        sql = "CREATE DATABASE %s OWNER %s TEMPLATE template0 ENCODING %s" % (
            _pg.quote_ident(name), _pg.quote_ident(owner), _pg.quote_literal(row[1]))
        if row[2]:
            sql += " LC_COLLATE %s LC_CTYPE %s" % (_pg.quote_literal(row[2]), _pg.quote_literal(row[3]))
        self.runtime.execute(sql)

    def load(self, target, src, fmt, compression):
        if fmt == "plain":
            return self._load_plain(target, src, compression)
        self._load_archive(target, src, fmt)
        return None

    def _session(self, target, script=None):
        """A psql session on `target` that starts with `\\restrict <key>`: from there on it runs SQL only, no
        meta-command; `script` (bytes) is written to it all at once, else the caller writes."""
        proc = subprocess.Popen(self.runtime.psql_command(target, "-f", "-"), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.runtime.env())
        enlarge_pipe(proc.stdin)
        if script is not None:
            return Session(proc, self._restrict + script)
        session = Session(proc)
        session.write(self._restrict)
        return session

    def _load_plain(self, target, src, compression):
        """Stream the dump into psql; with jobs > 1, COPY data and the post-data section go to parallel sessions."""
        reader = _dumpfile.DumpReader(src, compression)
        main = MainStream(lambda: self._session(target))
        copier = ParallelCopy(main.open_session, main, self.jobs) if self.jobs > 1 else None
        scanner = _dumpfile.SqlScanner(main.write, split_post_data=self.jobs > 1, copy_sink=copier)
        if copier:
            copier.scanner = scanner
        in_copy_reported = False
        chunks = reader.chunks()
        try:
            for chunk in chunks:
                scanner.feed(chunk)
                if not in_copy_reported and scanner.in_copy:
                    _faults.checkpoint("restore_copy")
                    in_copy_reported = True
            scanner.finish()
            if copier:
                copier.close()
            main.session.close("loading the dump")
        except BaseException as exc:
            for session in [main.session] + (copier.sessions if copier else []):
                session.kill()
            # psql refusing text (missing data for a column) is how a flipped byte of a gzip stream often shows
            # first; what is left of the file says whether it is corrupt or truncated, the better explanation.
            if isinstance(exc, (_dumpfile.DumpError, RestoreError)):
                _dumpfile.drain(chunks)
            raise
        _faults.checkpoint("restore_post_data")
        if scanner.post_data:
            self._run_post_data(target, scanner)
        return reader, scanner

    def _run_post_data(self, target, scanner):
        """Indexes and constraints in `jobs` sessions, a table's statements always in the same session (two sessions
        on one table would wait on each other's locks), largest tables first; then the rest in dump order."""
        preamble = b"".join(scanner.preamble)
        by_table = {}
        ordered = []
        for toc_type, target_table, sql in scanner.post_data:
            if toc_type in _dumpfile.PARALLEL_TYPES and target_table:
                by_table.setdefault(target_table, []).append(sql)
            else:
                ordered.append(sql)
        buckets = [[0, []] for _index in range(self.jobs)]
        for table in sorted(by_table, key=lambda t: -scanner.copy_rows.get(t, 0)):
            bucket = min(buckets, key=lambda b: b[0])
            bucket[0] += scanner.copy_rows.get(table, 0) + 1
            bucket[1].extend(by_table[table])
        sessions = [self._session(target, preamble + b"".join(sql)) for _weight, sql in buckets if sql]
        for session in sessions:
            session.close("building indexes and constraints")
        if ordered:
            self._session(target, preamble + b"".join(ordered)).close("building constraints and triggers")

    def _load_archive(self, target, src, fmt):
        """pg_restore -j into the target; in the compose runtime the archive is copied into the container first."""
        path = src
        inner = None
        if self.runtime.kind == "compose":
            inner = "/tmp/runbooks-incident-restore-%d" % os.getpid()
            self.runtime.run(self.runtime.prefix() + ["rm", "-rf", inner])
            res = subprocess.run(["docker", "compose", "--project-directory", self.runtime.compose_project_dir, "cp",
                                  src, "%s:%s" % (self.runtime.compose_service, inner)], capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise RestoreError("cannot copy %s into the database container: %s" % (src, _pg.first_line(res.stderr)))
            path = inner
        try:
            for sections, jobs in self._archive_passes(path):
                self.runtime.run(self.runtime.command("pg_restore", "--exit-on-error", "-d", target, "-j", str(jobs),
                                                      *sections, path))
        except _pg.PgError as exc:
            raise RestoreError("pg_restore into %s failed: %s" % (target, exc))
        finally:
            if inner:
                self.runtime.run(self.runtime.prefix() + ["rm", "-rf", inner])
        del fmt

    def _archive_passes(self, path):
        """(sections, jobs) of each pg_restore run. Parallel workers building a partitioned table's indexes and
        constraints deadlock on the partitions' locks (PostgreSQL 15): with partitions in the archive, pre-data and
        data go in `jobs` workers and post-data in one."""
        if self.jobs > 1 and ATTACH_ENTRY_RE.search(self.runtime.run(self.runtime.command("pg_restore", "-l", path))):
            return [(["--section=pre-data", "--section=data"], self.jobs), (["--section=post-data"], 1)]
        return [([], self.jobs)]

    def verify_database(self, target, manifest, expect_tables, dump_rows, loose):
        """Tables and exact row counts of the restored database against the manifest (and the dump's COPY rows);
        `loose` partitions (see SqlScanner) are compared through their root's total."""
        catalog = self.runtime.tables(target)
        tables = catalog.keys
        _dumpfile.check_expected_tables(tables, expect_tables, "the restored database")
        listed = (_dumpfile.manifest_tables(manifest) if manifest else None) or sorted(dump_rows or tables)
        missing = sorted(set(listed) - set(tables))
        if missing:
            raise RestoreError("the restored database lacks tables: %s" % ", ".join(missing))
        counts = catalog.count(lambda sql: self.runtime.query(sql, target), listed)
        if manifest is not None:
            _dumpfile.compare_counts(counts, manifest, "the restored database's", loose)
        elif dump_rows is not None:
            _dumpfile.compare_counts(counts, {"row_counts": dump_rows}, "the restored database's (against the dump)", loose)
        return counts

    # ------------------------------------------------------------------------------------------ the steps
    def leftover_note(self, mark):
        """What a leftover staging database is, for the warning and the plan that say it is dropped."""
        mark = mark or {}
        incident, source = mark.get("change_id"), mark.get("source")
        if mark.get("state") == "verified" and incident != self.change_id:
            return ("%s holds the dump %s that incident %s loaded and verified and never swapped in; stage it again from "
                    "that dump if it is still needed" % (self.staging, source, incident))
        if mark.get("state") == "verified":
            return "%s holds another dump (%s) this incident had staged" % (self.staging, source)
        return "%s was left by an interrupted restore%s" % (self.staging, " of incident %s" % incident if incident else "")

    def stage(self, src, fmt, compression, manifest, expect_tables, checked=None):
        """Load and verify the dump in the staging database; the live database is not touched."""
        sha = (manifest or {}).get("sha256")
        mark = self.mark_of(self.staging)
        if mark and mark.get("change_id") == self.change_id and mark.get("state") == "verified" and mark.get("sha256") == sha:
            return dict(changed=False, staging_db=self.staging, row_counts=mark["row_counts"], verified=True,
                        msg="%s already holds the verified dump of change %s" % (self.staging, self.change_id))
        live_exists = self.runtime.database_exists(self.db)
        self.check_disk(manifest, live_exists)
        leftover = self.runtime.database_exists(self.staging)
        if self.check_mode:
            return dict(changed=True, staging_db=self.staging, verified=False, plan=[
                step for step in ("drop the leftover staging database: %s" % self.leftover_note(mark) if leftover else None,
                                  "create %s and load %s into it (%d job(s))" % (self.staging, src, self.jobs),
                                  "verify its tables and row counts against %s" % ("the manifest" if manifest else "the dump"))
                if step])
        if leftover:
            self.notes[self.staging] = self.leftover_note(mark)
            self.warn("dropped the staging database: %s" % self.notes[self.staging])
            self.drop(self.staging)
        self.create_database(self.staging)
        try:
            counts = self._fill(self.staging, src, fmt, compression, manifest, expect_tables, checked)
            self.runtime.execute(comment_sql(self.staging, dict(change_id=self.change_id, state="verified", sha256=sha,
                                                                source=os.path.basename(src.rstrip("/")), row_counts=counts)))
        except BaseException:
            self.drop(self.staging, existed=False)
            raise
        return dict(changed=True, staging_db=self.staging, row_counts=counts, verified=True,
                    msg="loaded %s into %s and verified %d tables" % (src, self.staging, len(counts)))

    def _fill(self, target, src, fmt, compression, manifest, expect_tables, checked):
        """Load the dump into `target` and verify it; `checked` is what reading the whole dump beforehand found
        (an archive, or any dump for in_place), else the load pass itself checks it."""
        loaded = self.load(target, src, fmt, compression)
        if loaded is not None:
            reader, scanner = loaded
            expected_sha = manifest["sha256"] if manifest is not None else (checked or {}).get("sha256")
            if expected_sha and reader.hexdigest != expected_sha:
                raise _dumpfile.DumpError("%s changed while it was being restored (sha256 now %s)" % (src, reader.hexdigest[:16]))
            _dumpfile.check_scanned(src, scanner, manifest, expect_tables, self.allow_foreign_script)
            dump_rows, loose = scanner.row_counts, scanner.loose
        else:
            dump_rows, loose = checked["row_counts"], checked["loose"]
        # ANALYZE (statistics for the planner from the first query on) runs while the rows are counted.
        analyze_errors = []
        analyzer = threading.Thread(target=self._analyze, args=(target, analyze_errors), daemon=True)
        if self.analyze:
            analyzer.start()
        try:
            counts = self.verify_database(target, manifest, expect_tables, dump_rows, loose)
        finally:
            if self.analyze:
                analyzer.join()
        if analyze_errors:
            raise RestoreError("ANALYZE of the restored database failed: %s" % analyze_errors[0])
        return counts

    def _analyze(self, target, errors):
        try:
            self.runtime.execute("ANALYZE", db=target)
        except _pg.PgError as exc:
            errors.append(exc)

    def _transaction(self, statements, databases):
        """Run renames in one transaction, retrying while sessions reconnect; returns the seconds it took."""
        sql = "BEGIN;\n%s;\nCOMMIT;\n" % ";\n".join(statements)
        start = time.monotonic()
        for attempt in range(50):
            for name in databases:
                self.runtime.terminate_sessions(name)
            try:
                self.runtime.execute(sql)
                return time.monotonic() - start
            except _pg.PgError as exc:
                if "being accessed by other users" not in str(exc) or attempt == 49:
                    raise RestoreError("swapping databases failed, nothing was renamed: %s" % exc)
                time.sleep(0.1)
        return time.monotonic() - start

    def swap(self, app=None):
        """Staging becomes live in one transaction; the live database is kept as <db>_pre_restore_<stamp>.

        With `app` (an AppCycle) the app is stopped just before and started just after, in this one step, so its
        downtime is only stop, swap, (migrate,) start; if it does not come back healthy, the swap is rolled back.
        """
        live = self.mark_of(self.db)
        if live and live.get("change_id") == self.change_id and live.get("state") == "live":
            return self._already_swapped(live, app)
        mark = self.mark_of(self.staging)
        staged = mark and mark.get("change_id") == self.change_id and mark.get("state") == "verified"
        if self.check_mode and not staged:
            # The staging step of this dry run only predicted the staging database.
            return dict(changed=True, verified=False, plan=["swap %s into place, keeping %s as %s_pre_restore_<stamp>"
                                                            % (self.staging, self.db, self.db)])
        if not staged:
            raise RestoreError("no verified staging database %s for change %s: stage it first (state=staged)"
                               % (self.staging, self.change_id))
        previous = self.unused_name("pre_restore") if self.runtime.database_exists(self.db) else None
        if self.check_mode:
            return dict(changed=True, previous_db=previous, row_counts=mark["row_counts"], verified=True, plan=[
                "terminate the sessions of %s" % self.db,
                "in one transaction: rename %s to %s and %s to %s" % (self.db, previous, self.staging, self.db)])
        statements = ["ALTER DATABASE %s RENAME TO %s" % (_pg.quote_ident(self.db), _pg.quote_ident(previous))] if previous else []
        statements += ["ALTER DATABASE %s RENAME TO %s" % (_pg.quote_ident(self.staging), _pg.quote_ident(self.db)),
                       comment_sql(self.db, dict(mark, state="live", previous_db=previous,
                                                 swapped_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))]
        clock = time.monotonic()
        if app:
            app.stop()
        _faults.checkpoint("restore_before_swap")
        try:
            downtime = self._transaction(statements, [self.db, self.staging])
        except RestoreError:
            if app:
                app.start()
            raise
        _faults.checkpoint("restore_after_swap")
        if app:
            self._started_or_rolled_back(app, app.migrate, app.start)
        result = dict(changed=True, previous_db=previous, row_counts=mark["row_counts"], verified=True,
                      downtime_s=round(downtime, 3), dropped=self.prune(),
                      msg="%s is now the restored database; the previous one is kept as %s" % (self.db, previous))
        if app:
            result["app_downtime_s"] = round(time.monotonic() - clock, 3)
        return result

    def _already_swapped(self, live, app):
        """A re-run of a swap that is live already. A run killed after the swap and before the app came back left the
        app stopped: with `app`, it is started again, and put on the previous database if it does not come back."""
        result = dict(changed=False, previous_db=live.get("previous_db"), row_counts=live.get("row_counts"), verified=True,
                      downtime_s=0.0, msg="%s already is the restore of change %s" % (self.db, self.change_id))
        if not app or self.check_mode or app.healthy():
            return result
        self._started_or_rolled_back(app, app.start)
        return dict(result, changed=True, msg=result["msg"] + "; the app was not running on it and is started again")

    def _started_or_rolled_back(self, app, *steps):
        """Run the steps that bring the app up on the swapped database; if one fails, put the previous database back
        and start the app on it (RolledBack says so)."""
        try:
            for step in steps:
                step()
        except RestoreError as exc:
            rolled = self.rollback()
            try:
                app.start()
            except RestoreError as again:
                raise RolledBack("%s after the swap; %s, but the app does not start on it either: %s"
                                 % (exc, rolled["msg"], again))
            raise RolledBack("%s after the swap; %s" % (exc, rolled["msg"]))

    def prune(self):
        """Drop pre-restore and failed-restore databases beyond keep_previous (oldest first)."""
        dropped = []
        for kind in ("pre_restore", "failed_restore"):
            names = self.runtime.databases_like("^%s_%s_[0-9]{8}T[0-9]{6}Z$" % (self.db, kind))
            for name in names[:-self.keep_previous]:
                self.drop(name)
                dropped.append(name)
        return dropped

    def rollback(self, app=None):
        """Put the pre-restore database back; the restored one is kept as <db>_failed_restore_<stamp>.
        With `app`, the service is stopped before and started after."""
        live = self.mark_of(self.db)
        if not (live and live.get("change_id") == self.change_id and live.get("state") == "live"):
            for name in self.runtime.databases_like("^%s_failed_restore_[0-9]{8}T[0-9]{6}Z$" % self.db):
                failed = self.mark_of(name)
                if failed and failed.get("change_id") == self.change_id:
                    return self._already_rolled_back(name, app)
            raise RestoreError("%s is not the restore of change %s: nothing to roll back" % (self.db, self.change_id))
        previous = live.get("previous_db")
        if not previous or not self.runtime.database_exists(previous):
            raise RestoreError("the pre-restore database %s is gone: cannot roll back" % previous)
        failed = self.unused_name("failed_restore")
        if self.check_mode:
            step = "in one transaction: rename %s to %s and %s to %s" % (self.db, failed, previous, self.db)
            return dict(changed=True, previous_db=failed, plan=[step])
        if app:
            app.stop()
        _faults.checkpoint("rollback_before_swap")
        downtime = self._transaction([
            "ALTER DATABASE %s RENAME TO %s" % (_pg.quote_ident(self.db), _pg.quote_ident(failed)),
            "ALTER DATABASE %s RENAME TO %s" % (_pg.quote_ident(previous), _pg.quote_ident(self.db)),
            comment_sql(failed, dict(live, state="rolled_back"))], [self.db, previous])
        _faults.checkpoint("rollback_after_swap")
        if app:
            app.start()
        return dict(changed=True, previous_db=failed, downtime_s=round(downtime, 3),
                    msg="rolled back: %s is the database from before the restore again; the restored one is kept as %s"
                    % (self.db, failed))

    def _already_rolled_back(self, failed, app):
        """A re-run of a rollback that is done. A run killed after the rename and before the app came back left the
        app stopped: with a start command, it is started again when it is not healthy (changed only then)."""
        result = dict(changed=False, previous_db=failed, msg="change %s was already rolled back" % self.change_id)
        if not app or not app.start_argv or app.healthy():
            return result
        if self.check_mode:  # /health is only read: the dry run predicts the start
            return dict(result, changed=True, plan=["start the app on %s (it is not healthy)" % self.db])
        app.start()
        return dict(result, changed=True, msg=result["msg"] + "; the app was not running on %s and is started again" % self.db)

    def check_in_place(self, force):
        if not force:
            raise RestoreError("strategy=in_place drops the live database %s before the dump is loaded and verified "
                               "(no way back); pass force=true to accept that, or use strategy=swap" % self.db)

    def in_place(self, src, fmt, compression, manifest, expect_tables, force, checked):
        """The seeds' way: drop the live database and load the dump into a new one (no way back)."""
        live = self.mark_of(self.db)
        if live and live.get("change_id") == self.change_id and live.get("state") == "live":
            return dict(changed=False, row_counts=live.get("row_counts"), verified=True,
                        msg="%s already is the restore of change %s" % (self.db, self.change_id))
        self.check_in_place(force)
        if self.check_mode:
            return dict(changed=True, verified=False, plan=["drop %s" % self.db, "create %s and load %s" % (self.db, src)])
        self.create_database(self.staging)  # proves the live database's encoding, locale and owner can be copied
        self.drop(self.staging, existed=False)
        self.drop(self.db)
        self.notes[self.db], self.live_dropped = "the live database, strategy=in_place", True
        self.create_database(self.db)
        counts = self._fill(self.db, src, fmt, compression, manifest, expect_tables, checked)
        self.runtime.execute(comment_sql(self.db, dict(change_id=self.change_id, state="live", strategy="in_place",
                                                       source=os.path.basename(src.rstrip("/")), row_counts=counts)))
        return dict(changed=True, row_counts=counts, verified=True, msg="dropped and reloaded %s from %s" % (self.db, src))


def archive_tool_for(runtime):
    """pg_restore that reads archives offline: on the host if installed, else inside the database container."""
    local = runtime.pg_bin_dir and os.path.join(runtime.pg_bin_dir, "pg_restore") or shutil.which("pg_restore")
    if local and os.path.exists(local):
        return _dumpfile.ArchiveTool([local])
    if runtime.kind == "compose":
        return _dumpfile.ArchiveTool(runtime.prefix() + ["pg_restore"], env=runtime.env())
    return None


def restore(runtime, src, db, change_id, trust, state="restored", strategy="swap", manifest=None, require_manifest=True,
            expect_tables=(), force=False, keep_previous=1, jobs=2, owner=None, disk_headroom=0.1, analyze=True,
            check_mode=False, warn=None, app=None, allow_other_db=False, allow_foreign_script=False):
    """Restore `src` into `db` (see the module docstring). A failure after a database that existed was dropped
    raises RestoreFailed, which says which."""
    clock = time.monotonic()
    restorer = Restorer(runtime, db, change_id, keep_previous=keep_previous, jobs=jobs, owner=owner,
                        disk_headroom=disk_headroom, analyze=analyze, check_mode=check_mode, warn=warn,
                        allow_foreign_script=allow_foreign_script)
    try:
        result = _restore(restorer, src, state, strategy, manifest, require_manifest, expect_tables, force, app, allow_other_db, trust)
    except (_pg.PgError, _dumpfile.DumpError, RestoreError, OSError) as exc:
        if restorer.dropped and not isinstance(exc, RestoreFailed):
            raise RestoreFailed(exc, list(restorer.dropped), restorer.live_dropped, restorer.notes) from exc
        raise
    result["duration_s"] = round(time.monotonic() - clock, 3)
    return result


def _restore(restorer, src, state, strategy, manifest, require_manifest, expect_tables, force, app, allow_other_db, trust):
    runtime, db, change_id, check_mode = restorer.runtime, restorer.db, restorer.change_id, restorer.check_mode
    runtime.ping()
    result = dict(db=db, staging_db=restorer.staging, previous_db=None, verified=False, downtime_s=0.0, dropped=[])
    live = restorer.mark_of(db)
    result["live_is_restore"] = bool(live and live.get("change_id") == change_id and live.get("state") == "live")
    if state == "swapped":
        result.update(restorer.swap(app))
    elif state == "rolled_back":
        result.update(restorer.rollback(app))
    elif result["live_is_restore"] and state == "restored":
        result.update(restorer.swap(app))  # live already; the app is made to run on it
    elif result["live_is_restore"]:
        result.update(changed=False, previous_db=live.get("previous_db"), row_counts=live.get("row_counts"),
                      verified=True, msg="%s already is the restore of change %s" % (db, change_id))
    else:
        fmt, compression = _dumpfile.detect_format(src)
        _manifest_path, manifest_data, signature = _dumpfile.find_manifest(src, manifest, require_manifest, trust)
        result.update(signature=signature)
        if signature["warning"]:
            restorer.warn(signature["warning"])
        restorer.check_source(manifest_data, allow_other_db)
        if strategy == "in_place":
            restorer.check_in_place(force)
        if fmt == "plain":
            restorer.check_psql_restricts()
        checked = None
        if check_mode or fmt != "plain" or strategy == "in_place":
            # Read the whole dump first: an archive (pg_restore runs it, not psql), the dry run, and in_place, which
            # drops the live database before loading.
            checked = _dumpfile.check(src, fmt, compression, manifest_data, expect_tables, archive_tool_for(runtime),
                                      restorer.allow_foreign_script)
            if check_mode:
                result.update(dump_row_counts=checked["row_counts"])
        elif manifest_data is not None:
            _dumpfile.check_digest(src, fmt, manifest_data)
        result.update(format=fmt)
        if strategy == "in_place":
            result.update(restorer.in_place(src, fmt, compression, manifest_data, expect_tables, force, checked))
        else:
            staged = restorer.stage(src, fmt, compression, manifest_data, expect_tables, checked)
            result.update(staged)
            if state == "restored":
                plan = staged.get("plan", [])
                swapped = restorer.swap(app)
                result.update(swapped, changed=staged["changed"] or swapped["changed"], plan=plan + swapped.get("plan", []))
    result["dropped"] = list(restorer.dropped)
    if restorer.dropped:
        result["changed"] = True
    if state in ("restored", "swapped") and result.get("changed") and not check_mode:
        result["live_is_restore"] = True
    elif state == "rolled_back" and result.get("changed"):
        result["live_is_restore"] = False
    if not result.get("plan"):
        result.pop("plan", None)
    return result
