# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile dumps and options against pg_restore, dump_verify and pg_row_counts (real PostgreSQL 15, real psql 15.18).

Whoever can write a dump can write its manifest too (plain JSON), so every hostile dump here comes with a manifest
resealed to match it, and no signature: the restores accept unsigned backups (accept_unsigned, the seeds-style path),
where these guards are what stands between the dump and the host. The restore runs as root: a psql meta-command in a dump (`\\! cmd`) would run as root on the
host. Each test asserts that what the dump asks for never happened (a marker file never created) and that the live
database is exactly as it was.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import COLLECTIONS, PG_BINDIR, Psql  # pylint: disable=import-error

ITEMS_SQL = r"""
CREATE TABLE items (id int PRIMARY KEY, body text);
INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 300) g;
CREATE INDEX items_body ON items (body);
"""
# Backslashes that are data, not commands: a function body, string literals, COPY data, a comment.
DATA_BACKSLASHES_SQL = r"""
INSERT INTO items VALUES (1000, E'\\! touch {marker}'), (1001, 'x \! touch {marker}');
CREATE FUNCTION shout() RETURNS text LANGUAGE sql AS $$ SELECT '\! touch {marker}' $$;
CREATE FUNCTION plpg() RETURNS void LANGUAGE plpgsql AS $body$ BEGIN RAISE NOTICE E'\\o |touch {marker}'; END $body$;
COMMENT ON TABLE items IS '\! touch {marker}';
"""


class Db(Psql):
    def __init__(self, server):
        super().__init__(server)
        self.data_marker = None  # the file the source database's data names (as text, never to be run)

    def state(self, name):
        """What must not change when a restore is refused: the database's oid, its tables and their content."""
        oid = self.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{name}'")
        tables = self.psql(name, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' "
                                 "AND relnamespace = 'public'::regnamespace")
        digest = self.psql(name, "SELECT md5(string_agg(id || body, ',' ORDER BY id)) FROM items")
        return oid, tables, digest


@pytest.fixture(scope="module", name="db")
def db_fixture(pg_server, tmp_path_factory):
    db = Db(pg_server)
    marker = tmp_path_factory.mktemp("data-marker") / "never"
    db.psql("postgres", "DROP DATABASE IF EXISTS hostile_src; CREATE DATABASE hostile_src; "
                        "DROP DATABASE IF EXISTS other_src; CREATE DATABASE other_src")
    db.psql("hostile_src", ITEMS_SQL + DATA_BACKSLASHES_SQL.replace("{marker}", str(marker)))
    db.psql("other_src", ITEMS_SQL + "DELETE FROM items WHERE id > 10;")
    db.data_marker = marker
    return db


@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


@pytest.fixture(scope="module", name="backup")
def backup_fixture(db, pg_server, tmp_path_factory):
    """pg_backup's plain dump (and manifest) of hostile_src: the clean dump every hostile one is made from."""
    from conftest import run_module  # pylint: disable=import-error,import-outside-toplevel
    conn = dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))
    dest = tmp_path_factory.mktemp("hostile-backup")
    result = run_module("pg_backup", dict(db="hostile_src", dest=str(dest), stamp="2026-11-21", **conn), tmpdir=str(dest.parent))
    assert not result.get("failed"), result
    return Path(result["path"]), result["manifest"]


def write_dump(tmp_path, sql, manifest, live, compressed=True, name="db-2026-11-21"):
    """The dump as an attacker leaves it: `sql` (bytes), gzip-compressed or not, with a manifest that matches it and
    names the `live` database."""
    path = tmp_path / (name + (".sql.gz" if compressed else ".sql"))
    path.write_bytes(gzip.compress(sql) if compressed else sql)
    data = dict(manifest, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size=path.stat().st_size, file=path.name, db=live)
    (tmp_path / (name + ".manifest.json")).write_text(json.dumps(data))
    return path


def clean_sql(backup):
    return gzip.decompress(backup[0].read_bytes())


def without_restrict(sql):
    """pg_dump 15.14+ guards its own script with \\restrict; an attacker writing the dump leaves that out."""
    return b"".join(line for line in sql.splitlines(keepends=True) if not line.startswith((b"\\restrict ", b"\\unrestrict ")))


def restrict_key(sql):
    return next(line.split()[1] for line in sql.splitlines() if line.startswith(b"\\restrict ")).decode()


def inject(sql, payload, where="pre-data"):
    """`payload` (lines) put before the first CREATE (pre-data) or before the first index (post-data)."""
    anchor = b"SET default_tablespace" if where == "pre-data" else b"--\n-- Name: items_body; Type: INDEX"
    at = sql.index(anchor)
    return sql[:at] + payload + sql[at:]


def line_of(sql, payload):
    return sql[:sql.index(payload)].count(b"\n") + 1


def restore_params(dump, live, conn, **extra):
    return dict(dict(src=str(dump), db=live, incident_id="INC-H", expect_tables=["items"], accept_unsigned=True, **conn), **extra)


def assert_untouched(db, live, before, databases, marker):
    assert not marker.exists(), "the dump's command ran"
    assert db.state(live) == before and db.databases() == databases


# ------------------------------------------------------------------------------------------------ 1. meta-commands
PAYLOADS = {
    "bang at line start": (lambda m, k, tmp: b"\\! touch %s\n" % m, "`\\! touch"),
    "bang mid-line after a statement": (lambda m, k, tmp: b"SELECT 1; \\! touch %s\n" % m, "`\\! touch"),
    "output to a pipe": (lambda m, k, tmp: b"\\o |touch %s\nSELECT 1;\n\\o\n" % m, "`\\o |touch"),
    "client copy to a program": (lambda m, k, tmp: b"\\copy (SELECT 1) TO PROGRAM 'touch %s'\n" % m, "`\\copy (SELECT 1)"),
    "set with a backtick": (lambda m, k, tmp: b"\\set x `touch %s`\n" % m, "`\\set x `touch"),
    "include a file": (lambda m, k, tmp: b"\\i %s\n" % str(include_file(tmp, m)).encode(), "`\\i "),
    "unrestrict with the dump's own key": (lambda m, k, tmp: b"\\unrestrict %s\n\\! touch %s\n" % (k, m), "`\\unrestrict "),
    "unrestrict with a wrong key": (lambda m, k, tmp: b"\\unrestrict wrongkey123\n\\! touch %s\n" % m, "`\\unrestrict wrongkey123`"),
    "connect to another database": (lambda m, k, tmp: b"\\connect postgres\n\\! touch %s\n" % m, "`\\connect postgres`"),
    "after COPY data ended by a CR LF marker": (
        lambda m, k, tmp: b"COPY public.items (id, body) FROM stdin;\n5000\tx\n\\.\r\n\\! touch %s\n" % m, "`\\! touch"),
    "after a string whose backslash escapes nothing": (lambda m, k, tmp: b"SELECT 'x\\'; \\! touch %s\n" % m, "`\\! touch"),
}
# Every payload in another position, file form, job count and strategy (the full cross of one payload is below).
VARIANTS = {
    "bang at line start": ("pre-data", True, 1, "swap"),
    "bang mid-line after a statement": ("post-data", False, 2, "swap"),
    "output to a pipe": ("pre-data", False, 1, "in_place"),
    "client copy to a program": ("post-data", True, 2, "in_place"),
    "set with a backtick": ("pre-data", True, 2, "swap"),
    "include a file": ("post-data", False, 1, "swap"),
    "unrestrict with the dump's own key": ("pre-data", True, 2, "in_place"),
    "unrestrict with a wrong key": ("post-data", True, 1, "swap"),
    "connect to another database": ("pre-data", False, 2, "swap"),
    "after COPY data ended by a CR LF marker": ("post-data", True, 1, "swap"),
    "after a string whose backslash escapes nothing": ("pre-data", True, 2, "in_place"),
}


def include_file(tmp_path, marker):
    script = tmp_path / "evil.sql"
    script.write_bytes(b"\\! touch %s\n" % marker)
    return script


def hostile_dump(tmp_path, backup, payload_name, where, compressed, live):
    marker = tmp_path / "pwned"
    sql = clean_sql(backup)
    make, shown = PAYLOADS[payload_name]
    keep_restrict = payload_name.startswith("unrestrict")
    payload = make(str(marker).encode(), restrict_key(sql).encode(), tmp_path)
    sql = inject(sql if keep_restrict else without_restrict(sql), payload, where)
    # The line the refusal must name: the payload's line holding the command shown.
    command = next(line for line in payload.splitlines(keepends=True) if shown.strip("`").encode() in line)
    line = line_of(sql, payload) + payload[:payload.index(command)].count(b"\n")
    return write_dump(tmp_path, sql, backup[1], live, compressed), marker, line, shown


@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
def test_a_meta_command_in_a_dump_is_refused_naming_its_line_and_never_run(db, run_module, backup, conn, tmp_path, payload_name):
    where, compressed, jobs, strategy = VARIANTS[payload_name]
    live = "hostile_live"
    db.create(live, "other_src")
    before, databases = db.state(live), db.databases()
    dump, marker, line, shown = hostile_dump(tmp_path, backup, payload_name, where, compressed, live)
    result = run_module("pg_restore", restore_params(dump, live, conn, jobs=jobs, strategy=strategy, force=True))
    assert result.get("failed"), result
    assert "line %d " % line in result["msg"] and shown in result["msg"], result["msg"]
    assert_untouched(db, live, before, databases, marker)


@pytest.mark.parametrize("compressed, jobs, strategy", [(True, 1, "swap"), (False, 2, "swap"), (True, 2, "in_place")])
def test_backslashes_in_function_bodies_literals_comments_and_data_are_not_refused(db, run_module, backup, conn, tmp_path,
                                                                                   compressed, jobs, strategy):
    """The guard against false alarms (it passes on the code before the guard too, which had none to misfire): the
    source database holds `\\! touch` in a function body, string literals, a comment and table data."""
    live = "hostile_data"
    db.create(live, "other_src")
    dump = write_dump(tmp_path, without_restrict(clean_sql(backup)), backup[1], live, compressed)
    result = run_module("pg_restore", restore_params(dump, live, conn, jobs=jobs, strategy=strategy, force=True))
    assert result.get("verified"), result.get("msg")
    body = "SELECT prosrc FROM pg_proc WHERE proname IN ('shout', 'plpg') ORDER BY proname"
    assert db.psql(live, body) == db.psql("hostile_src", body) and "\\! touch" in db.psql(live, body)
    assert db.state(live)[1:] == db.state("hostile_src")[1:]
    assert not db.data_marker.exists()


@pytest.mark.parametrize("compressed", [True, False], ids=["sql.gz", "sql"])
@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("strategy", ["swap", "in_place"])
def test_a_shell_escape_is_refused_in_every_form_job_count_and_strategy(db, run_module, backup, conn, tmp_path,
                                                                        compressed, jobs, strategy):
    live = "hostile_cross"
    db.create(live, "other_src")
    before, databases = db.state(live), db.databases()
    dump, marker, line, _shown = hostile_dump(tmp_path, backup, "bang at line start", "post-data", compressed, live)
    result = run_module("pg_restore", restore_params(dump, live, conn, jobs=jobs, strategy=strategy, force=True))
    assert result.get("failed") and "line %d " % line in result["msg"], result.get("msg")
    assert_untouched(db, live, before, databases, marker)


def test_a_dump_that_also_turns_out_corrupt_is_reported_corrupt(db, run_module, backup, conn, tmp_path):
    """A flipped byte of a gzip stream can decompress to any text, a backslash included, before zlib notices: the
    corruption, found by reading on, is what is reported (and nothing of the text is run)."""
    live = "hostile_corrupt"
    db.create(live, "other_src")
    before, databases = db.state(live), db.databases()
    marker = tmp_path / "pwned"
    sql = inject(without_restrict(clean_sql(backup)), b"\\! touch %s\n" % str(marker).encode())
    dump = write_dump(tmp_path, sql, backup[1], live)
    dump.write_bytes(dump.read_bytes() + gzip.compress(b"-- more\n")[:-8] + b"\xff" * 8)  # a second member, its CRC wrong
    manifest = tmp_path / "db-2026-11-21.manifest.json"
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), sha256=hashlib.sha256(dump.read_bytes()).hexdigest())))
    for name, params in (("pg_restore", restore_params(dump, live, conn)), ("dump_verify", dict(src=str(dump), accept_unsigned=True))):
        result = run_module(name, params)
        assert result.get("failed") and "corrupt" in result["msg"] and "meta-command" not in result["msg"], result["msg"]
    assert_untouched(db, live, before, databases, marker)


def test_check_mode_reports_a_meta_command_instead_of_passing_the_dump(db, run_module, backup, conn, tmp_path):
    db.create("hostile_check", "other_src")
    before, databases = db.state("hostile_check"), db.databases()
    dump, marker, line, shown = hostile_dump(tmp_path, backup, "output to a pipe", "pre-data", True, "hostile_check")
    checked = run_module("pg_restore", restore_params(dump, "hostile_check", conn), check_mode=True)
    assert checked.get("failed") and "line %d " % line in checked["msg"] and shown in checked["msg"], checked
    assert_untouched(db, "hostile_check", before, databases, marker)


def test_dump_verify_reports_a_meta_command_instead_of_passing_the_dump(run_module, backup, tmp_path):
    dump, marker, line, shown = hostile_dump(tmp_path, backup, "bang mid-line after a statement", "post-data", False, "hostile_src")
    verified = run_module("dump_verify", dict(src=str(dump), expect_tables=["items"], accept_unsigned=True))
    assert verified.get("failed") and not verified["verified"], verified
    assert "line %d " % line in verified["msg"] and shown in verified["msg"]
    assert not marker.exists()


@pytest.fixture(name="server_writable")
def server_writable_fixture():
    """A directory the database server (the postgres OS user) can write to, where a program it ran would leave a file."""
    place = Path(tempfile.mkdtemp(prefix="runbooks-server-writable-"))
    place.chmod(0o777)
    yield place
    shutil.rmtree(place, ignore_errors=True)


@pytest.mark.parametrize("statement", ["COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n",
                                       "COPY public.items (id, body)\n    FROM PROGRAM 'touch {marker}';\n",
                                       "COPY (SELECT 'x') TO '{marker}';\n"])
def test_a_copy_that_runs_a_program_or_writes_a_file_on_the_server_is_refused(db, run_module, backup, conn, tmp_path,
                                                                              server_writable, statement):
    marker = server_writable / "pwned"
    live = "hostile_server"
    db.create(live, "other_src")
    before, databases = db.state(live), db.databases()
    payload = statement.replace("{marker}", str(marker)).encode()
    sql = inject(clean_sql(backup), payload, "post-data")
    dump = write_dump(tmp_path, sql, backup[1], live)
    result = run_module("pg_restore", restore_params(dump, live, conn))
    assert result.get("failed") and "line %d " % line_of(sql, payload) in result["msg"], result.get("msg")
    assert "runs a program or reads or writes a file on the database server" in result["msg"]
    assert_untouched(db, live, before, databases, marker)


def test_a_psql_without_restrict_is_refused_before_anything_is_created(db, run_module, backup, conn, tmp_path):
    """psql older than 15.14 cannot be installed here: a wrapper makes the real psql 15.18 answer `\\restrict` as an
    older one does ("invalid command"), everything else passing through."""
    bindir = tmp_path / "oldbin"
    bindir.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        (bindir / tool).symlink_to(PG_BINDIR / tool)
    wrapper = bindir / "psql"
    wrapper.write_text('#!/bin/sh\nsed -e "s/^\\\\\\\\restrict /\\\\\\\\restrictx /" | exec %s "$@"\n' % (PG_BINDIR / "psql"))
    wrapper.chmod(0o755)
    probe = subprocess.run([str(wrapper), "-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f", "-"], input="\\restrict k\n",
                           capture_output=True, text=True, env=dict(os.environ, **db.server.env), check=False)
    assert probe.returncode != 0 and "invalid command" in probe.stderr  # the emulation behaves as an old psql
    db.create("hostile_oldpsql", "other_src")
    before, databases = db.state("hostile_oldpsql"), db.databases()
    marker = tmp_path / "pwned"
    dump = write_dump(tmp_path, inject(without_restrict(clean_sql(backup)), b"\\! touch %s\n" % str(marker).encode()), backup[1],
                      "hostile_oldpsql")
    result = run_module("pg_restore", restore_params(dump, "hostile_oldpsql", conn, pg_bin_dir=str(bindir)))
    assert result.get("failed") and "cannot forbid meta-commands" in result["msg"] and "15.14" in result["msg"], result.get("msg")
    assert_untouched(db, "hostile_oldpsql", before, databases, marker)


def test_every_psql_session_of_a_restore_refuses_meta_commands_whatever_the_scanner_saw(db, conn, tmp_path):
    """The second line of defence: what reaches psql cannot run a meta-command, in a streamed session (the main
    stream, parallel COPY) as in one fed a whole script (post-data)."""
    from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_restore  # pylint: disable=import-outside-toplevel
    runtime = _pg.Runtime(login_unix_socket=conn["login_unix_socket"], login_port=conn["login_port"], login_user="postgres",
                          pg_bin_dir=conn["pg_bin_dir"])
    restorer = _pg_restore.Restorer(runtime, "hostile_src", "INC-S")
    marker = tmp_path / "pwned"
    streamed = restorer._session("hostile_src")  # pylint: disable=protected-access
    streamed.write(b"SELECT 1;\n\\! touch %s\n" % str(marker).encode())
    with pytest.raises(_pg_restore.RestoreError, match="backslash commands are restricted"):
        streamed.close("loading")
    scripted = restorer._session("hostile_src", b"SELECT 1; \\! touch %s\n" % str(marker).encode())  # pylint: disable=protected-access
    with pytest.raises(_pg_restore.RestoreError, match="backslash commands are restricted"):
        scripted.close("building")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ 3. another database
def test_a_dump_of_another_database_is_refused_before_anything_is_created(db, run_module, backup, conn, tmp_path):
    db.create("hostile_target", "other_src")
    before, databases = db.state("hostile_target"), db.databases()
    params = restore_params(backup[0], "hostile_target", conn)
    for check_mode in (True, False):
        result = run_module("pg_restore", params, check_mode=check_mode)
        assert result.get("failed") and "of database hostile_src" in result["msg"] and "allow_other_db=true" in result["msg"], result
        assert db.state("hostile_target") == before and db.databases() == databases
    allowed = run_module("pg_restore", dict(params, allow_other_db=True))
    assert allowed["verified"] and any("dump of database hostile_src into hostile_target" in w for w in allowed["warnings"])


# ------------------------------------------------------------------------------------------------ 4. truncated, foreign scripts
def truncated_before_post_data(sql):
    """What a full disk or a killed copy leaves: the data complete, the indexes and constraints missing."""
    return sql[:sql.index(b"--\n-- Name: items items_pkey; Type: CONSTRAINT")]


@pytest.mark.parametrize("with_manifest", [False, True], ids=["no manifest", "resealed manifest"])
def test_a_truncated_plain_dump_is_refused_manifest_or_not(db, run_module, backup, conn, tmp_path, with_manifest):
    db.create("hostile_trunc", "other_src")
    before, databases = db.state("hostile_trunc"), db.databases()
    dump = write_dump(tmp_path, truncated_before_post_data(clean_sql(backup)), backup[1], "hostile_trunc")
    if not with_manifest:
        dump.with_name("db-2026-11-21.manifest.json").unlink()
    params = restore_params(dump, "hostile_trunc", conn, require_manifest=with_manifest)
    result = run_module("pg_restore", params)
    assert result.get("failed") and "truncated" in result["msg"] and "dump complete" in result["msg"], result.get("msg")
    assert db.state("hostile_trunc") == before and db.databases() == databases
    verified = run_module("dump_verify", dict(src=str(dump), require_manifest=with_manifest, accept_unsigned=True))
    assert verified.get("failed") and "truncated" in verified["msg"]


def test_a_script_pg_dump_did_not_write_needs_a_manifest_or_allow_foreign_script(db, run_module, backup, conn, tmp_path):
    db.create("hostile_foreign", "other_src")
    before, databases = db.state("hostile_foreign"), db.databases()
    script = tmp_path / "handmade.sql"
    script.write_text(ITEMS_SQL)  # no "Dumped by pg_dump" header: a truncated copy would look the same
    params = restore_params(script, "hostile_foreign", conn, require_manifest=False)
    refused = run_module("pg_restore", params)
    assert refused.get("failed") and "allow_foreign_script=true" in refused["msg"], refused.get("msg")
    assert db.state("hostile_foreign") == before and db.databases() == databases
    assert run_module("dump_verify", dict(src=str(script), require_manifest=False, expect_tables=["items"], accept_unsigned=True)).get("failed")
    accepted = run_module("pg_restore", dict(params, allow_foreign_script=True))
    assert accepted["verified"], accepted.get("msg")


# ------------------------------------------------------------------------------------------------ 7. session options
@pytest.mark.parametrize("value", ["512MB -c default_transaction_read_only=on", "64MB\\ -c\\ x=y", "lots", "512 MB", "1PB",
                                   "-1", "100kB", "9999999TB"])
def test_maintenance_work_mem_is_validated_before_anything_runs(db, run_module, backup, conn, tmp_path, value):
    db.create("hostile_pgoptions", "other_src")
    before, databases = db.state("hostile_pgoptions"), db.databases()
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], "hostile_pgoptions")
    for check_mode in (True, False):
        result = run_module("pg_restore", restore_params(dump, "hostile_pgoptions", conn, maintenance_work_mem=value),
                            check_mode=check_mode)
        assert result.get("failed") and "maintenance_work_mem" in result["msg"] and "nothing was changed" in result["msg"], result
        assert db.state("hostile_pgoptions") == before and db.databases() == databases


# ------------------------------------------------------------------------------------------------ 8. another incident's staging copy
def test_a_failed_restore_reports_that_it_dropped_another_incidents_verified_staging(db, run_module, backup, conn, tmp_path):
    db.create("hostile_shared", "other_src")
    (tmp_path / "good").mkdir()
    dump = write_dump(tmp_path / "good", clean_sql(backup), backup[1], "hostile_shared")
    staged = run_module("pg_restore", restore_params(dump, "hostile_shared", conn, incident_id="INC-A", state="staged"))
    assert staged["verified"]
    damaged = write_dump(tmp_path, clean_sql(backup), dict(backup[1], row_counts=dict(backup[1]["row_counts"], items=1)),
                         "hostile_shared")
    failed = run_module("pg_restore", restore_params(damaged, "hostile_shared", conn, incident_id="INC-B"))
    assert failed.get("failed") and failed["changed"] and failed["dropped"] == ["hostile_shared_restore_staging"], failed
    assert "INC-A" in failed["msg"] and any("INC-A" in w and "verified" in w for w in failed["warnings"])
    assert "hostile_shared_restore_staging" not in db.databases()


def test_a_restore_reports_that_it_dropped_another_incidents_verified_staging(db, run_module, backup, conn, tmp_path):
    db.create("hostile_shared2", "other_src")
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], "hostile_shared2")
    assert run_module("pg_restore", restore_params(dump, "hostile_shared2", conn, incident_id="INC-A", state="staged"))["verified"]
    done = run_module("pg_restore", restore_params(dump, "hostile_shared2", conn, incident_id="INC-B"))
    assert done["verified"] and "hostile_shared2_restore_staging" in done["dropped"], done
    assert any("INC-A" in w and "never swapped in" in w for w in done["warnings"])


# ------------------------------------------------------------------------------------------------ no traceback on any input
def manifest_with(backup, tmp_path, live, **changes):
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], live)
    manifest = dump.with_name("db-2026-11-21.manifest.json")
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), **changes)))
    return dump


@pytest.mark.parametrize("changes", [dict(db_size_bytes="huge"), dict(row_counts=["items"]), dict(row_counts={"items": "300"}),
                                     dict(tables="items"), dict(sha256=7), dict(db=["hostile_src"])],
                         ids=["size a string", "counts a list", "count a string", "tables a string", "sha256 a number", "db a list"])
def test_a_malformed_manifest_fails_clearly(db, run_module, backup, conn, tmp_path, changes):
    db.create("hostile_manifest", "other_src")
    before, databases = db.state("hostile_manifest"), db.databases()
    dump = manifest_with(backup, tmp_path, "hostile_manifest", **changes)
    result = run_module("pg_restore", restore_params(dump, "hostile_manifest", conn))
    assert result.get("failed") and "malformed" in result["msg"] and "not written by pg_backup" in result["msg"], result
    assert db.state("hostile_manifest") == before and db.databases() == databases
    assert "malformed" in run_module("dump_verify", dict(src=str(dump), accept_unsigned=True))["msg"]


def run_isolated(name, params, tmp_path, timeout=60):
    """The module in its own process as Ansible runs it, killed if it hangs; its JSON result."""
    args = tmp_path / ("args-%s.json" % name)
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    proc = subprocess.Popen([sys.executable, "-m", f"ansible_collections.runbooks.incident.plugins.modules.{name}", str(args)],
                            env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("%s hangs on %s" % (name, params))
    assert b"Traceback" not in err + out, (out + err).decode()
    return json.loads(out)


@pytest.mark.parametrize("what", ["dump", "manifest"])
def test_a_fifo_instead_of_a_dump_or_manifest_fails_instead_of_hanging(db, backup, conn, tmp_path, what):
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], "hostile_fifo")
    target = dump if what == "dump" else dump.with_name("db-2026-11-21.manifest.json")
    target.unlink()
    os.mkfifo(target)
    for name, params in (("dump_verify", dict(src=str(dump), accept_unsigned=True)), ("pg_restore", restore_params(dump, "hostile_fifo", conn))):
        result = run_isolated(name, params, tmp_path)
        assert result.get("failed") and "not a regular file" in result["msg"], result


@pytest.mark.parametrize("bad", [dict(disk_headroom=float("inf")), dict(jobs=65), dict(jobs=0), dict(login_user="post\0gres")],
                         ids=["infinite headroom", "more jobs than sessions allowed", "no jobs", "NUL in login_user"])
def test_bad_restore_options_fail_clearly_and_change_nothing(db, run_module, backup, conn, tmp_path, bad):
    db.create("hostile_options", "other_src")
    before, databases = db.state("hostile_options"), db.databases()
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], "hostile_options")
    result = run_module("pg_restore", dict(restore_params(dump, "hostile_options", conn), **bad))
    assert result.get("failed") and ("untouched" in result["msg"] or "nothing was changed" in result["msg"]), result
    assert not result.get("changed")
    assert db.state("hostile_options") == before and db.databases() == databases


def test_an_invalid_health_url_is_refused_before_the_swap(db, run_module, backup, conn, tmp_path):
    db.create("hostile_health", "other_src")
    before, databases = db.state("hostile_health"), db.databases()
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], "hostile_health")
    result = run_module("pg_restore", restore_params(dump, "hostile_health", conn, app_stop_command=["true"],
                                                     app_start_command=["true"], health_url="localhost:8080/health"))
    assert result.get("failed") and "health_url" in result["msg"] and "nothing was changed" in result["msg"], result
    assert db.state("hostile_health") == before and db.databases() == databases


def test_an_app_start_command_that_cannot_run_rolls_the_swap_back(db, run_module, backup, conn, tmp_path):
    db.create("hostile_nostart", "other_src")
    before = db.state("hostile_nostart")
    dump = write_dump(tmp_path, clean_sql(backup), backup[1], "hostile_nostart")
    result = run_module("pg_restore", restore_params(dump, "hostile_nostart", conn, app_stop_command=["true"],
                                                     app_start_command=["/nonexistent/start-app"]))
    assert result.get("failed") and result.get("rolled_back") and result["changed"], result
    assert "cannot run" in result["msg"]
    assert db.state("hostile_nostart")[1:] == before[1:]  # the previous data is live again (renamed back)


def test_row_counts_without_the_client_tools_fails_clearly(run_module, conn):
    result = run_module("pg_row_counts", dict(conn, pg_bin_dir="/nonexistent/bin", db="hostile_src"))
    assert result.get("failed") and "cannot run /nonexistent/bin/psql" in result["msg"], result


@pytest.mark.parametrize("expected", [{"items": "many"}, {"items": [300]}, {"items": True}, {"items": -300}])
def test_row_counts_with_an_expected_count_that_is_not_a_row_count_fails_clearly(db, run_module, conn, expected):
    result = run_module("pg_row_counts", dict(db="hostile_src", expected=expected, **conn))
    assert result.get("failed") and "not a row count" in result["msg"], result
