# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup, dump_verify and pg_restore against a real PostgreSQL 15 (libpq runtime).

Every bad input and fault must give a clear error and leave the live database exactly as it was. Backups made here
are signed with the test backup key and restores trust it, as the roles do; a test that damages a private copy of a
dump (unsigned: the copy leaves the signature behind) restores it with accept_unsigned, to reach the check it is about.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from conftest import COLLECTIONS, PG_BINDIR, REPO_ROOT, Psql, require  # pylint: disable=import-error
from servicedb import TABLES, populate_sql  # pylint: disable=import-error

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class Db(Psql):
    def state(self, name):
        """What must not change when a restore is refused: the database's oid, row counts and a content digest."""
        oid = self.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{name}'")
        counts = self.psql(name, " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES) + " ORDER BY 1")
        digest = self.psql(name, "SELECT md5(string_agg(body, ',' ORDER BY id)) FROM messages")
        return oid, counts, digest

    def counts(self, name):
        return dict(line.split("|") for line in self.psql(name, " UNION ALL ".join(
            f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)).splitlines())


@pytest.fixture(scope="module", name="db")
def db_fixture(pg_server):
    db = Db(pg_server)
    db.psql("postgres", "DROP DATABASE IF EXISTS small_template; CREATE DATABASE small_template; "
                        "DROP DATABASE IF EXISTS large_template; CREATE DATABASE large_template")
    db.psql("small_template", populate_sql(clients=20, messages=3000, audit_rows=2000, media=30))
    db.psql("large_template", populate_sql(clients=50, messages=120000, audit_rows=60000, media=100))
    return db


class Conn(dict):
    """The connection options, with `signing` (pg_backup's options that sign) and `trust` (a restore's that trust it)."""

    def __init__(self, pg_server, backup_key):
        super().__init__(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))
        self.signing = backup_key.signing()
        self.trust = backup_key.trust()


@pytest.fixture(name="conn")
def conn_fixture(pg_server, backup_key):
    return Conn(pg_server, backup_key)


@pytest.fixture(scope="module", name="dumps")
def dumps_fixture(db, pg_server, backup_key, tmp_path_factory):
    """One signed backup per format of the small database, and a plain one of the large database."""
    from conftest import run_module  # pylint: disable=import-error,import-outside-toplevel
    conn = Conn(pg_server, backup_key)
    made = {}
    for name, template, fmt in (("plain", "small_template", "plain"), ("custom", "small_template", "custom"),
                                ("directory", "small_template", "directory"), ("large", "large_template", "plain")):
        dest = tmp_path_factory.mktemp("backups-" + name)
        result = run_module("pg_backup", dict(db=template, dest=str(dest), format=fmt, stamp="2026-11-21", **conn, **conn.signing),
                            tmpdir=str(dest.parent))
        assert not result.get("failed"), result
        made[name] = Path(result["path"])
    return made


def copy_dump(src, tmp_path):
    """A private copy (dump + manifest) a test may damage."""
    manifest = Path(str(src).rsplit(".", 2 if str(src).endswith(".sql.gz") else 1)[0] + ".manifest.json")
    target = tmp_path / src.name
    if src.is_dir():
        shutil.copytree(src, target)
    else:
        shutil.copy(src, target)
    shutil.copy(manifest, tmp_path / manifest.name)
    return target, tmp_path / manifest.name


def rewrite_manifest(manifest, **changes):
    data = json.loads(manifest.read_text())
    data.update(changes)
    manifest.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------ backup
def test_backup_is_seeds_compatible_with_an_exact_manifest(db, dumps):
    dump = dumps["plain"]
    manifest = json.loads(dump.with_name("db-2026-11-21.manifest.json").read_text())
    assert dump.name == "db-2026-11-21.sql.gz" and oct(dump.stat().st_mode & 0o777) == "0o600"
    assert manifest["row_counts"] == {t: int(n) for t, n in db.counts("small_template").items()}
    assert sorted(manifest["tables"]) == TABLES
    major = int(db.psql("postgres", "SHOW server_version_num")) // 10000  # the server under test: 15 on Debian 12, 16 on Ubuntu 24.04
    assert manifest["size"] == dump.stat().st_size and manifest["server_version"].startswith("%d." % major)
    # The seeds' own restore command works on it: gunzip -c db-<date>.sql.gz | psql
    db.psql("postgres", "DROP DATABASE IF EXISTS seeds_way; CREATE DATABASE seeds_way")
    sql = gzip.decompress(dump.read_bytes()).decode()
    db.psql("seeds_way", sql)
    assert db.counts("seeds_way") == db.counts("small_template")


def test_backup_check_mode_then_idempotent(run_module, conn, tmp_path):
    predicted = run_module("pg_backup", dict(db="small_template", dest=str(tmp_path), **conn, **conn.signing), check_mode=True)
    assert predicted["changed"] and not list(tmp_path.iterdir())
    first = run_module("pg_backup", dict(db="small_template", dest=str(tmp_path), **conn, **conn.signing))
    assert first["changed"]
    again = run_module("pg_backup", dict(db="small_template", dest=str(tmp_path), **conn, **conn.signing))
    assert not again["changed"] and again["manifest"]["sha256"] == first["manifest"]["sha256"]
    assert first["signed"] and again["signed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(first["path"]).name, Path(first["manifest_path"]).name,
                                                                 Path(first["manifest_path"]).name + ".sig"])


def test_backup_refuses_to_overwrite_what_it_cannot_verify(run_module, conn, tmp_path):
    stray = tmp_path / "db-2026-11-22.sql.gz"
    stray.write_bytes(b"not mine")
    result = run_module("pg_backup", dict(db="small_template", dest=str(tmp_path), stamp="2026-11-22", **conn))
    assert result["failed"] and "force=true" in result["msg"] and stray.read_bytes() == b"not mine"
    forced = run_module("pg_backup", dict(db="small_template", dest=str(tmp_path), stamp="2026-11-22", force=True, **conn))
    assert forced["changed"] and stray.read_bytes()[:2] == b"\x1f\x8b"


def test_failed_backup_leaves_no_file(run_module, conn, tmp_path):
    result = run_module("pg_backup", dict(db="no_such_db", dest=str(tmp_path), **conn))
    assert result["failed"] and "no_such_db" in result["msg"]
    assert not list(tmp_path.iterdir())


def test_manifest_counts_come_from_the_dumps_own_snapshot(db, run_module, conn, tmp_path):
    """Rows inserted while the dump runs must be in neither the dump nor the manifest, or in both."""
    db.create("busy", "large_template")
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            db.psql("busy", "INSERT INTO audit_log (actor, action, outcome) SELECT 'w', 'login', 'success' FROM generate_series(1, 200)")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = run_module("pg_backup", dict(db="busy", dest=str(tmp_path), **conn, **conn.signing))
    finally:
        stop.set()
        thread.join()
    assert result["changed"]
    verified = run_module("dump_verify", dict(src=result["path"], expect_tables=["audit_log"], **conn.trust))
    assert verified["verified"], verified
    assert verified["row_counts"]["audit_log"] == result["manifest"]["row_counts"]["audit_log"]
    assert int(db.counts("busy")["audit_log"]) > result["manifest"]["row_counts"]["audit_log"]


# ------------------------------------------------------------------------------------------------ verify
@pytest.mark.parametrize("fmt", ["plain", "custom", "directory"])
def test_dump_verify_accepts_each_format(run_module, dumps, backup_key, fmt):
    result = run_module("dump_verify", dict(src=str(dumps[fmt]), **backup_key.trust()), check_mode=True)
    assert result["verified"] and result["format"] == fmt and not result["changed"]
    assert result["signature"]["verified"] and result["signature"]["signer"].startswith("SHA256:")
    assert result["row_counts"]["messages"] == 3000


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def reseal(dump, manifest):
    """Corruption that happened before the manifest was written: the checksum matches, the content is still bad."""
    from ansible_collections.runbooks.incident.plugins.module_utils import _fileio  # pylint: disable=import-outside-toplevel
    rewrite_manifest(manifest, sha256=_fileio.sha256_file(dump), size=dump.stat().st_size)


FAULTS = {
    "truncated gzip": (lambda d, m: (truncate(d), reseal(d, m)), "truncated"),
    "corrupted byte": (lambda d, m: (flip_middle_byte(d), reseal(d, m)), "corrupt"),
    "empty file": (lambda d, m: d.write_bytes(b""), "is empty"),
    "missing manifest": (lambda d, m: m.unlink(), "no manifest"),
    "sha256 mismatch": (lambda d, m: rewrite_manifest(m, sha256="0" * 64), "does not match its manifest"),
    "row counts differ": (lambda d, m: rewrite_manifest(m, row_counts=dict(json.loads(m.read_text())["row_counts"], messages=2999)),
                          "row counts differ from the manifest: messages 3000 (manifest 2999)"),
    "changed file": (lambda d, m: flip_middle_byte(d), "does not match its manifest"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_dump_verify_rejects(run_module, dumps, tmp_path, fault):
    dump, manifest = copy_dump(dumps["plain"], tmp_path)
    damage, message = FAULTS[fault]
    damage(dump, manifest)
    result = run_module("dump_verify", dict(src=str(dump), accept_unsigned=True))
    assert result["failed"] and message in result["msg"], result["msg"]


def test_dump_verify_requires_expected_tables(run_module, dumps, backup_key):
    result = run_module("dump_verify", dict(src=str(dumps["plain"]), expect_tables=["clients", "contacts"], **backup_key.trust()))
    assert result["failed"] and "no CREATE TABLE for contacts" in result["msg"]


def test_dump_verify_without_manifest_when_allowed(run_module, dumps, tmp_path):
    dump, manifest = copy_dump(dumps["plain"], tmp_path)
    manifest.unlink()
    assert "no manifest, so nothing signed" in run_module("dump_verify", dict(src=str(dump), require_manifest=False))["msg"]
    result = run_module("dump_verify", dict(src=str(dump), require_manifest=False, accept_unsigned=True))
    assert result["verified"] and result["manifest_path"] is None and "not proven" in result["signature"]["warning"]


# ------------------------------------------------------------------------------------------------ restore
def restore_params(dump, live, conn, **extra):
    """The dumps here are of small_template and large_template, restored into other databases."""
    return dict(dict(src=str(dump), db=live, incident_id="INC-1", allow_other_db=True, **conn, **conn.trust), **extra)


def test_restore_four_runs(db, run_module, dumps, conn):
    """check (predicts, touches nothing), run, check again (no change), run again (no-op)."""
    db.create("four", "large_template")
    db.psql("four", "DELETE FROM messages WHERE id > 100")  # the incident: data lost
    before, databases = db.state("four"), db.databases()
    params = restore_params(dumps["plain"], "four", conn)
    check = run_module("pg_restore", params, check_mode=True)
    assert check["changed"] and check["plan"] and db.state("four") == before and db.databases() == databases
    done = run_module("pg_restore", params)
    assert done["changed"] and done["verified"] and done["previous_db"].startswith("four_pre_restore_")
    assert db.counts("four") == db.counts("small_template") and done["row_counts"]["messages"] == 3000
    assert db.state(done["previous_db"]) == before  # the database that was live is kept as it was
    assert 0 < done["downtime_s"] < done["duration_s"]
    assert "four_restore_staging" not in db.databases()
    recheck = run_module("pg_restore", params, check_mode=True)
    assert not recheck["changed"]
    again = run_module("pg_restore", params)
    assert not again["changed"] and again["previous_db"] == done["previous_db"]


def test_a_database_made_read_only_for_a_corruption_is_replaced_by_a_writable_restore(db, run_module, dumps, conn):
    """db_corruption.yml leaves the live database read-only (default_transaction_read_only, pg_read_only) and hands
    over to the restore: the restore must work from it, and the database put live must take writes again, while
    the damaged one is kept read-only as evidence."""
    db.create("corrupt", "large_template")
    db.psql("corrupt", "ALTER DATABASE corrupt SET default_transaction_read_only = on")
    with pytest.raises(AssertionError, match="read-only transaction"):
        db.psql("corrupt", "CREATE TABLE refused (x int)")
    done = run_module("pg_restore", restore_params(dumps["plain"], "corrupt", conn))
    assert done["changed"] and done["verified"], done.get("msg")
    assert db.counts("corrupt") == db.counts("small_template")
    db.psql("corrupt", "CREATE TABLE written_after_the_restore (x int)")
    with pytest.raises(AssertionError, match="read-only transaction"):  # the damaged one is kept as it was: evidence
        db.psql(done["previous_db"], "CREATE TABLE refused (x int)")


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_restore_archive_formats(db, run_module, dumps, conn, fmt):
    db.create("arch_" + fmt, "large_template")
    result = run_module("pg_restore", restore_params(dumps[fmt], "arch_" + fmt, conn))
    assert result["verified"] and result["format"] == fmt, result
    assert db.counts("arch_" + fmt) == db.counts("small_template")


@pytest.mark.parametrize("jobs", [1, 3])
def test_restore_serial_and_parallel_give_the_same_database(db, run_module, dumps, conn, jobs):
    live = f"jobs_{jobs}"
    db.create(live, "small_template")
    result = run_module("pg_restore", restore_params(dumps["large"], live, conn, jobs=jobs))
    assert result["verified"], result
    assert db.counts(live) == db.counts("large_template")
    indexes = db.psql(live, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
    assert indexes == db.psql("large_template", "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
    fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
    assert db.psql(live, fks) == db.psql("large_template", fks) != "0"


RESTORE_FAULTS = dict(FAULTS)
RESTORE_FAULTS.update({
    "missing expected table": (lambda d, m: None, "no CREATE TABLE for contacts"),
})


@pytest.mark.parametrize("fault", sorted(RESTORE_FAULTS))
def test_restore_fault_leaves_live_untouched(db, run_module, dumps, conn, tmp_path, fault):
    db.create("victim", "large_template")
    before, databases = db.state("victim"), db.databases()
    dump, manifest = copy_dump(dumps["plain"], tmp_path)
    damage, message = RESTORE_FAULTS[fault]
    damage(dump, manifest)
    expect = ["clients", "contacts"] if fault == "missing expected table" else ["clients", "messages"]
    result = run_module("pg_restore", restore_params(dump, "victim", conn, expect_tables=expect, accept_unsigned=True))
    assert result["failed"] and message in result["msg"] and "untouched" in result["msg"], result["msg"]
    assert db.state("victim") == before and db.databases() == databases


def corrupt_copy_row(path):
    """The first COPY row's first tab turned into a space inside a gzip stream that still decompresses, its checksum
    the original's: psql refuses the row long before zlib reaches the checksum at the end, which tells it is corrupt."""
    text = gzip.decompress(path.read_bytes())
    row = text.index(b"\n", text.index(b"COPY ")) + 1
    damaged = text[:row] + text[row:].replace(b"\t", b" ", 1)
    deflate = zlib.compressobj(0, zlib.DEFLATED, -zlib.MAX_WBITS)
    trailer = struct.pack("<II", zlib.crc32(text), len(text) & 0xFFFFFFFF)
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflate.compress(damaged) + deflate.flush() + trailer)


# One loading session (jobs=1) as well: there psql's refusal ends the load before the rest of the stream is read.
@pytest.mark.parametrize("damage", ["truncated", "corrupted", "corrupted COPY row"])
@pytest.mark.parametrize("jobs", [1, 2])
def test_restore_without_manifest_still_catches_a_damaged_stream(db, run_module, dumps, conn, tmp_path, damage, jobs):
    db.create("victim2", "large_template")
    before = db.state("victim2")
    dump, manifest = copy_dump(dumps["large"], tmp_path)
    manifest.unlink()
    {"truncated": truncate, "corrupted": flip_middle_byte, "corrupted COPY row": corrupt_copy_row}[damage](dump)
    result = run_module("pg_restore", restore_params(dump, "victim2", conn, require_manifest=False, accept_unsigned=True, jobs=jobs))
    assert result["failed"] and ("is truncated" if damage == "truncated" else "is corrupt") in result["msg"], result["msg"]
    assert db.state("victim2") == before and "victim2_restore_staging" not in db.databases()


@pytest.mark.parametrize("name", ['wa"; DROP DATABASE postgres; --', "wa;mcp", "wa mcp", "x" * 40])
def test_restore_refuses_unsafe_database_names(db, run_module, dumps, conn, name):
    databases = db.databases()
    result = run_module("pg_restore", restore_params(dumps["plain"], name, conn))
    assert result["failed"] and "is not accepted" in result["msg"]
    assert db.databases() == databases


def test_restore_checks_free_disk_before_starting(db, run_module, dumps, conn):
    db.create("roomy", "large_template")
    before, databases = db.state("roomy"), db.databases()
    result = run_module("pg_restore", restore_params(dumps["plain"], "roomy", conn, disk_headroom=1e9))
    assert result["failed"] and "not enough free disk" in result["msg"]
    assert db.state("roomy") == before and db.databases() == databases


def test_restore_reports_a_server_that_is_down(run_module, dumps, conn, free_port):
    params = dict(restore_params(dumps["plain"], "wa_mcp", conn), login_port=free_port(), login_unix_socket=None, login_host="127.0.0.1")
    result = run_module("pg_restore", params)
    assert result["failed"] and "cannot reach PostgreSQL" in result["msg"]


def test_staged_swapped_and_rolled_back(db, run_module, dumps, conn):
    db.create("steps", "large_template")
    before = db.state("steps")
    staged = run_module("pg_restore", restore_params(dumps["plain"], "steps", conn, state="staged"))
    assert staged["changed"] and staged["verified"] and db.state("steps") == before
    assert not run_module("pg_restore", restore_params(dumps["plain"], "steps", conn, state="staged"))["changed"]
    swapped = run_module("pg_restore", restore_params(dumps["plain"], "steps", conn, state="swapped"))
    assert swapped["changed"] and db.counts("steps") == db.counts("small_template")
    rolled = run_module("pg_restore", restore_params(dumps["plain"], "steps", conn, state="rolled_back"))
    assert rolled["changed"] and db.state("steps")[1:] == before[1:]
    assert rolled["previous_db"].startswith("steps_failed_restore_")
    assert not run_module("pg_restore", restore_params(dumps["plain"], "steps", conn, state="rolled_back"))["changed"]


def test_swap_refuses_without_a_verified_staging_database(db, run_module, dumps, conn):
    db.create("nostage", "small_template")
    result = run_module("pg_restore", restore_params(dumps["plain"], "nostage", conn, state="swapped"))
    assert result["failed"] and "stage it first" in result["msg"]


def test_keep_previous_drops_only_older_pre_restore_databases(db, run_module, dumps, conn):
    db.create("kept", "small_template")
    first = run_module("pg_restore", restore_params(dumps["plain"], "kept", conn, incident_id="INC-A"))
    time.sleep(1.1)
    second = run_module("pg_restore", restore_params(dumps["plain"], "kept", conn, incident_id="INC-B"))
    assert second["dropped"] == [first["previous_db"]]
    assert second["previous_db"] in db.databases() and first["previous_db"] not in db.databases()


def test_leftover_staging_database_is_dropped_and_the_restore_completes(db, run_module, dumps, conn):
    db.create("leftover", "small_template")
    db.create("leftover_restore_staging", "large_template")  # what a killed run leaves
    result = run_module("pg_restore", restore_params(dumps["plain"], "leftover", conn))
    assert result["verified"] and any("interrupted restore" in w for w in result["warnings"])
    assert db.counts("leftover") == db.counts("small_template")


def test_in_place_needs_force(db, run_module, dumps, conn):
    db.create("inplace", "large_template")
    before = db.state("inplace")
    refused = run_module("pg_restore", restore_params(dumps["plain"], "inplace", conn, strategy="in_place"))
    assert refused["failed"] and "force=true" in refused["msg"] and db.state("inplace") == before
    done = run_module("pg_restore", restore_params(dumps["plain"], "inplace", conn, strategy="in_place", force=True))
    assert done["verified"] and db.counts("inplace") == db.counts("small_template")


def test_a_manifest_written_before_table_names_were_quoted_still_verifies(db, run_module, conn, tmp_path):
    """Older manifests name `"Mixed"` as `Mixed` and `"Audit"."Log Book"` as `Audit.Log Book`: still read right."""
    db.psql("postgres", "DROP DATABASE IF EXISTS legacy_keys; CREATE DATABASE legacy_keys")
    db.psql("legacy_keys", 'CREATE TABLE "Mixed" (id int); INSERT INTO "Mixed" VALUES (1), (2); CREATE SCHEMA "Audit"; '
                           'CREATE TABLE "Audit"."Log Book" (id int); INSERT INTO "Audit"."Log Book" VALUES (1); '
                           'CREATE TABLE clients (id int); INSERT INTO clients VALUES (1), (2), (3)')
    backup = run_module("pg_backup", dict(db="legacy_keys", dest=str(tmp_path), **conn))  # unsigned, as backups then were
    manifest = Path(backup["manifest_path"])
    rewrite_manifest(manifest, tables=["Audit.Log Book", "Mixed", "clients"], row_counts={"Audit.Log Book": 1, "Mixed": 2, "clients": 3})
    assert run_module("dump_verify", dict(src=backup["path"], expect_tables=["Mixed"], accept_unsigned=True))["verified"]
    restored = run_module("pg_restore", restore_params(backup["path"], "legacy_keys", conn, expect_tables=["Mixed", "clients"],
                                                       accept_unsigned=True))
    assert restored["verified"] and restored["row_counts"] == {'"Audit"."Log Book"': 1, '"Mixed"': 2, "clients": 3}, restored
    counted = run_module("pg_row_counts", dict(db="legacy_keys", expected=json.loads(manifest.read_text())["row_counts"], **conn))
    assert counted["mismatches"] == {} and not counted.get("failed")


# ------------------------------------------------------------------------------------------------ kill -9
def start_restore(tmp_path, params, fault_dir):
    """pg_restore through ansible-playbook, as an operator runs it."""
    playbook = tmp_path / "restore.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                     "tasks": [{"runbooks.incident.pg_restore": params}]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, RUNBOOKS_INCIDENT_FAULT_DIR=str(fault_dir))
    return subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_9_run(fault_dir):
    """kill -9 every process of the run (ansible-playbook, the module it started in a session of its own, psql
    below it): they all carry the run's RUNBOOKS_INCIDENT_FAULT_DIR in their environment."""
    marker = f"RUNBOOKS_INCIDENT_FAULT_DIR={fault_dir}".encode()
    deadline = time.monotonic() + 10
    while True:
        victims = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    victims.append(int(environ.parent.name))
            except OSError:
                continue
        if not victims:
            return
        assert time.monotonic() < deadline, f"processes {victims} survive kill -9"
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def wait_for(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, f"{path.name} not reached"
        time.sleep(0.05)


@pytest.mark.parametrize("point", ["restore_copy", "restore_post_data_index", "restore_before_swap", "restore_after_swap"])
def test_kill_9_never_harms_the_live_database_and_a_rerun_completes(db, run_module, dumps, conn, tmp_path, point):
    live = "killed_" + point.split("_", 1)[1]
    db.create(live, "small_template")
    before = db.state(live)
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    hook = "restore_post_data" if point == "restore_post_data_index" else point
    (fault_dir / (hook + ".hold")).touch()
    params = restore_params(dumps["large"], live, conn)
    proc = start_restore(tmp_path, params, fault_dir)
    locker = None
    try:
        wait_for(fault_dir / (hook + ".reached"), proc)
        if point == "restore_post_data_index":
            # Hold a lock on a staging table, let the restore go on: its index build waits on the lock, mid-statement.
            locker = subprocess.Popen([str(PG_BINDIR / "psql"), "-X", "-q", "-d", live + "_restore_staging"], stdin=subprocess.PIPE,
                                      text=True, env=dict(os.environ, **db.server.env))
            locker.stdin.write("SET application_name = 'locker'; BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);\n")
            locker.stdin.flush()
            deadline = time.monotonic() + 30
            while db.psql("postgres", "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE application_name = 'locker' "
                                      "AND mode = 'AccessExclusiveLock' AND granted") == "0":
                assert time.monotonic() < deadline, "the locker never got its lock"
                time.sleep(0.05)
            (fault_dir / (hook + ".hold")).unlink()
            deadline = time.monotonic() + 30
            # Building the primary key's index or another index of messages, blocked mid-statement.
            while not any(word in db.psql("postgres", "SELECT string_agg(query, ' ') FROM pg_stat_activity "
                                                      f"WHERE datname = '{live}_restore_staging' AND wait_event_type = 'Lock'")
                          for word in ("PRIMARY KEY", "CREATE INDEX")):
                assert time.monotonic() < deadline, "the index build never waited on the lock"
                time.sleep(0.05)
    finally:
        kill_9_run(fault_dir)
        proc.wait()
        if locker:
            locker.kill()
            locker.wait()
    if point == "restore_after_swap":
        assert db.counts(live) == db.counts("large_template")  # the swap committed: the restored database is live
    else:
        assert db.state(live) == before  # nothing reached the live database
    rerun = run_module("pg_restore", params)
    assert not rerun.get("failed"), rerun
    assert db.counts(live) == db.counts("large_template")
    assert live + "_restore_staging" not in db.databases()


# ------------------------------------------------------------------------------------------------ third-party dumps
@pytest.mark.shared_data
def test_restores_a_dump_made_by_another_tool(db, run_module, conn, tmp_path):
    """northwind.sql: DROP/CREATE TABLE, INSERTs and constraints interleaved, not in pg_dump's section order."""
    require(SHARED_DATA.exists(), f"the third-party dumps in {SHARED_DATA}", "beside a development tree, not in a clone")
    db.psql("postgres", "DROP DATABASE IF EXISTS northwind; CREATE DATABASE northwind")
    src = tmp_path / "northwind.sql"
    shutil.copy(SHARED_DATA / "northwind.sql", src)
    for jobs in (1, 2):
        result = run_module("pg_restore", dict(src=str(src), db="northwind", incident_id=f"INC-NW-{jobs}", require_manifest=False,
                                               allow_foreign_script=True, accept_unsigned=True, expect_tables=["customers", "orders", "products"],
                                               jobs=jobs, **conn))
        assert result.get("verified"), result.get("msg")
        assert result["row_counts"]["orders"] == 830 and result["row_counts"]["order_details"] == 2155


@pytest.mark.shared_data
def test_a_dump_the_server_cannot_load_fails_clearly(db, run_module, conn, tmp_path):
    """pagila-schema.sql (pg_dump 15beta2) calls uuidv7(), which PostgreSQL 15 lacks: verified, then refused."""
    require(SHARED_DATA.exists(), f"the third-party dumps in {SHARED_DATA}", "beside a development tree, not in a clone")
    src = tmp_path / "pagila-schema.sql"
    shutil.copy(SHARED_DATA / "pagila-schema.sql", src)
    verified = run_module("dump_verify", dict(src=str(src), require_manifest=False, accept_unsigned=True, expect_tables=["actor", "film", "payment"]))
    assert verified["verified"] and {"rental", "payment_p2022_01"} <= set(verified["tables"])
    db.create("pagila", "small_template")
    before, databases = db.state("pagila"), db.databases()
    result = run_module("pg_restore", dict(src=str(src), db="pagila", incident_id="INC-PG", require_manifest=False,
                                           accept_unsigned=True, expect_tables=["actor"], **conn))
    assert result["failed"] and "uuidv7() does not exist" in result["msg"]
    assert db.state("pagila") == before and db.databases() == databases


# ------------------------------------------------------------------------------------------------ the app around the swap
@pytest.fixture(name="health")
def health_fixture():
    """A /health endpoint on loopback whose status the test sets (the service's stand-in for these tests)."""
    import http.server  # pylint: disable=import-outside-toplevel

    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/health"
    server.shutdown()


def app_params(log, url, start="true"):
    record = "echo {} >> " + str(log)
    return dict(app_stop_command=["sh", "-c", record.format("stop")], app_start_command=["sh", "-c", record.format("start") + " && " + start],
                health_url=url, health_timeout=2)


def test_the_app_is_down_only_around_the_swap(db, run_module, dumps, conn, tmp_path, health):
    _state, url = health
    db.create("cycle", "large_template")
    log = tmp_path / "app.log"
    staged = run_module("pg_restore", restore_params(dumps["plain"], "cycle", conn, state="staged"))
    assert staged["verified"] and not log.exists()  # staging never touches the app
    swapped = run_module("pg_restore", restore_params(dumps["plain"], "cycle", conn, state="swapped", **app_params(log, url)))
    assert swapped["changed"] and log.read_text().split() == ["stop", "start"]
    assert 0 < swapped["downtime_s"] <= swapped["app_downtime_s"]  # the swap is inside the app's stop and start
    assert db.counts("cycle") == db.counts("small_template")


@pytest.mark.parametrize("failure", ["start fails", "health never 200"])
def test_an_app_that_does_not_come_back_is_rolled_back(db, run_module, dumps, conn, tmp_path, health, failure):
    state, url = health
    db.create("noreturn", "large_template")
    before = db.state("noreturn")
    run_module("pg_restore", restore_params(dumps["plain"], "noreturn", conn, state="staged"))
    log = tmp_path / "app.log"
    if failure == "health never 200":
        state["status"] = 503
    params = app_params(log, url, start="false" if failure == "start fails" else "true")
    result = run_module("pg_restore", restore_params(dumps["plain"], "noreturn", conn, state="swapped", **params))
    assert result["failed"] and result.get("rolled_back"), result["msg"]
    assert "was rolled back" in result["msg"]
    assert db.state("noreturn")[1:] == before[1:]  # the previous data is live again (a rename, same content)
    assert any(name.startswith("noreturn_failed_restore_") for name in db.databases())
    assert log.read_text().split() == ["stop", "start", "start"]  # started again on the previous database


@pytest.fixture(name="stand_in_app")
def stand_in_app_fixture(tmp_path):
    """A stand-in for the service whose /health answers 200 only while it runs: its stop and start commands write
    its state to a file, which the loopback /health reads. (app_params(), the commands; state(), what it is.)"""
    import http.server  # pylint: disable=import-outside-toplevel

    state_file = tmp_path / "app.state"
    state_file.write_text("running")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            self.send_response(200 if state_file.read_text() == "running" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    write = "printf %s {} > " + str(state_file)
    params = dict(app_stop_command=["sh", "-c", write.format("stopped")], app_start_command=["sh", "-c", write.format("running")],
                  health_url=f"http://127.0.0.1:{server.server_address[1]}/health", health_timeout=10)
    yield params, state_file.read_text
    server.shutdown()


@pytest.mark.parametrize("point", ["restore_before_swap", "restore_after_swap"])
def test_a_run_killed_while_the_app_is_stopped_starts_it_on_the_rerun(db, run_module, dumps, conn, tmp_path, stand_in_app, point):
    """Killed with the app stopped for the swap (before it, or after it and before the app came back): the live
    database is the old one or the verified restore, never half of one, and the re-run brings the app back on the
    restore."""
    app, app_state = stand_in_app
    live = "appkill_" + point.split("_", 1)[1]
    db.create(live, "small_template")
    before = db.state(live)
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / (point + ".hold")).touch()
    params = restore_params(dumps["large"], live, conn, **app)
    proc = start_restore(tmp_path, params, fault_dir)
    try:
        wait_for(fault_dir / (point + ".reached"), proc)
    finally:
        kill_9_run(fault_dir)
        proc.wait()
    assert app_state() == "stopped"
    if point == "restore_after_swap":
        assert db.counts(live) == db.counts("large_template")
    else:
        assert db.state(live) == before
    rerun = run_module("pg_restore", params)
    assert not rerun.get("failed") and rerun["changed"], rerun
    assert app_state() == "running"
    assert db.counts(live) == db.counts("large_template") and live + "_restore_staging" not in db.databases()
    again = run_module("pg_restore", params)
    assert not again["changed"] and app_state() == "running", again


@pytest.mark.parametrize("point", ["rollback_before_swap", "rollback_after_swap"])
def test_a_rollback_killed_while_the_app_is_stopped_completes_on_the_rerun(db, run_module, dumps, conn, tmp_path, stand_in_app, point):
    """Killed with the app stopped for a rollback, before its rename or after it: the re-run leaves the previous
    database live and the app running on it."""
    app, app_state = stand_in_app
    live = "rbkill_" + point.split("_", 1)[1]
    db.create(live, "small_template")
    before = db.state(live)
    swapped = run_module("pg_restore", restore_params(dumps["large"], live, conn, **app))
    assert swapped["changed"] and app_state() == "running"
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / (point + ".hold")).touch()
    params = restore_params(dumps["large"], live, conn, state="rolled_back", **app)
    proc = start_restore(tmp_path, params, fault_dir)
    try:
        wait_for(fault_dir / (point + ".reached"), proc)
    finally:
        kill_9_run(fault_dir)
        proc.wait()
    assert app_state() == "stopped"
    if point == "rollback_after_swap":
        assert db.state(live)[1:] == before[1:]  # the rename committed: the previous database is live
    else:
        assert db.counts(live) == db.counts("large_template")  # nothing renamed yet
    predicted = run_module("pg_restore", params, check_mode=True)
    assert predicted["changed"] and app_state() == "stopped", predicted  # the dry run predicts the start, does not start
    rerun = run_module("pg_restore", params)
    assert not rerun.get("failed") and rerun["changed"], rerun
    assert db.state(live)[1:] == before[1:] and app_state() == "running"
    assert urllib.request.urlopen(app["health_url"], timeout=10).status == 200  # pylint: disable=consider-using-with
    assert any(name.startswith(live + "_failed_restore_") for name in db.databases())
    again = run_module("pg_restore", params)  # done, the app healthy: nothing left to do
    assert not again.get("failed") and not again["changed"] and app_state() == "running", again
