# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read-only modules on the service's database, against a real PostgreSQL holding the service's schema.

audit_log_info: the mark before an action, the entries audited since by action and outcome, odd and hostile table
names and filters, and that its session cannot write. pg_locks_info: real sessions hold an ACCESS EXCLUSIVE lock or a
row lock while others wait on them; the module names who blocks whom, on which table, for how long, and hides
statements that may hold a secret."""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error
from servicedb import populate_sql  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info

PHONE, OTHER_PHONE = "109876543210987", "222222222222222"


@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


@pytest.fixture(name="service_db")
def service_db_fixture(pg_server, request):
    """A fresh service database with 30 audit rows, and a table whose name needs quoting."""
    name = pg_server.create_database("ro_%s_%s" % (request.node.name.split("[")[0][-30:],
                                                   hashlib.sha256(request.node.name.encode()).hexdigest()[:8]))
    with pg_server.connect(name) as connection, connection.cursor() as cur:
        cur.execute(populate_sql(clients=2, messages=5, audit_rows=30, media=1))
        cur.execute('CREATE TABLE "we""ird.T" (id int)')
    return name


# ---------------------------------------------------------------------------------------------- audit_log_info
def audit(pg_server, db, *rows, table="audit_log"):
    """Append (action, outcome, details) rows as the service does."""
    with pg_server.connect(db) as connection, connection.cursor() as cur:
        for action, outcome, details in rows:
            cur.execute("INSERT INTO %s (actor, action, outcome, details) VALUES ('client:1', %%s, %%s, %%s::jsonb)" % table,
                        (action, outcome, details))


def last_id(pg_server, db, table="audit_log"):
    with pg_server.connect(db) as connection, connection.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM %s" % table)
        return cur.fetchone()[0]


def test_the_mark_then_the_entries_since_by_action_and_outcome(run_module, conn, service_db, pg_server):
    mark = run_module("audit_log_info", dict(db=service_db, **conn))
    assert mark["changed"] is False and mark["last_id"] == last_id(pg_server, service_db) == 30 and "counts" not in mark
    audit(pg_server, service_db,
          ("send_attempt", "success", '{"phone_id": "%s"}' % PHONE), ("send_attempt", "success", '{"phone_id": "%s"}' % PHONE),
          ("send_attempt", "failure", '{"phone_id": "%s"}' % OTHER_PHONE), ("login", "success", "{}"))
    since = dict(db=service_db, since_id=mark["last_id"], **conn)
    everything = run_module("audit_log_info", since)
    assert everything["counts"] == {"send_attempt": {"success": 2, "failure": 1}, "login": {"success": 1}}
    assert everything["last_id"] == 34
    sends = run_module("audit_log_info", dict(since, actions=["send_attempt"], match_details={"phone_id": PHONE}))
    assert sends["counts"] == {"send_attempt": {"success": 2}}
    # The same in check mode: it only reads.
    assert run_module("audit_log_info", dict(since, actions=["send_attempt"], match_details={"phone_id": PHONE}), check_mode=True) == sends
    nothing = run_module("audit_log_info", dict(since, since_id=everything["last_id"]))
    assert nothing["counts"] == {} and nothing["last_id"] == 34


def test_details_match_numbers_and_booleans_as_json_writes_them(run_module, conn, service_db, pg_server):
    mark = last_id(pg_server, service_db)
    audit(pg_server, service_db, ("send_attempt", "success", '{"phone_id": 42, "test": true}'),
          ("send_attempt", "success", '{"phone_id": "42", "test": false}'))
    result = run_module("audit_log_info", dict(db=service_db, since_id=mark, match_details={"phone_id": 42, "test": True}, **conn))
    assert result["counts"] == {"send_attempt": {"success": 1}}


def test_an_empty_log_has_last_id_0(run_module, conn, service_db, pg_server):
    with pg_server.connect(service_db) as connection, connection.cursor() as cur:
        cur.execute("TRUNCATE audit_log")
    result = run_module("audit_log_info", dict(db=service_db, since_id=0, **conn))
    assert result["last_id"] == 0 and result["counts"] == {}


def test_a_table_whose_name_holds_quotes_dots_and_spaces_is_read(run_module, conn, service_db, pg_server):
    with pg_server.connect(service_db) as connection, connection.cursor() as cur:
        cur.execute('CREATE SCHEMA "Ops.1"; CREATE TABLE "Ops.1"."audit ""log""" (LIKE audit_log INCLUDING ALL)')
    odd = '"Ops.1"."audit ""log"""'
    assert _pg.table_key("Ops.1", 'audit "log"') == odd
    audit(pg_server, service_db, ("send_attempt", "failure", '{"phone_id": "%s"}' % PHONE), table=_pg.qualified(odd))
    result = run_module("audit_log_info", dict(db=service_db, audit_table=odd, since_id=0, **conn))
    assert result["counts"] == {"send_attempt": {"failure": 1}}


def tables(pg_server, db):
    with pg_server.connect(db) as connection, connection.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1")
        names = cur.fetchall()
        cur.execute("SELECT count(*) FROM clients")
        return names, cur.fetchone()[0]


@pytest.mark.parametrize("params, message", [
    (dict(audit_table="no_such_log"), "has no table no_such_log"),
    (dict(audit_table="audit_log\"; DROP TABLE clients; --"), "has no table audit_log\"; DROP TABLE clients; --"),
    (dict(audit_table="audit_log') OR true; --"), "has no table"),
    (dict(audit_table="nowhere.audit_log"), "has no table nowhere.audit_log"),
    (dict(audit_table=""), "audit_table is empty"),
    (dict(audit_table="clients"), "table clients has no column action, outcome"),
    (dict(audit_table="messages", since_id=0, match_details={"a": "b"}), "has no column action, outcome, details"),
    (dict(since_id=-1), "since_id is -1"),
    (dict(since_id=0, match_details={"phone_id": {"nested": 1}}), "the value of details key 'phone_id'"),
    (dict(since_id=0, match_details={"phone_id": None}), "the value of details key 'phone_id' is None"),
    (dict(db="host=127.0.0.1 dbname=postgres"), "is not accepted"),
    (dict(db="wa_mcp' OR '1'='1"), "is not accepted"),
    (dict(db="no_such_db"), 'database "no_such_db" does not exist'),
])
def test_a_wrong_or_hostile_input_fails_clearly_and_changes_nothing(run_module, conn, service_db, pg_server, params, message):
    before = tables(pg_server, service_db)
    result = run_module("audit_log_info", dict(dict(db=service_db, **conn), **params))
    assert result.get("failed") and message in result["msg"] and "nothing was changed" in result["msg"], result
    assert "Traceback" not in result["msg"]
    assert tables(pg_server, service_db) == before


@pytest.mark.parametrize("option", [dict(actions=["send_attempt"]), dict(match_details={"phone_id": PHONE})])
def test_filters_need_an_id_to_count_from(run_module, conn, service_db, option):
    result = run_module("audit_log_info", dict(db=service_db, **conn, **option))
    assert result["failed"] and "required by '%s': since_id" % next(iter(option)) in result["msg"]


def test_an_audit_log_with_other_column_types_is_refused(run_module, conn, service_db, pg_server):
    with pg_server.connect(service_db) as connection, connection.cursor() as cur:
        cur.execute("CREATE TABLE text_log (id uuid, action text, outcome text, details text)")
    result = run_module("audit_log_info", dict(db=service_db, audit_table="text_log", **conn))
    assert result["failed"] and "column id of text_log is uuid, not a number" in result["msg"]
    with pg_server.connect(service_db) as connection, connection.cursor() as cur:
        cur.execute("ALTER TABLE text_log ALTER COLUMN id TYPE bigint USING 1")
    result = run_module("audit_log_info", dict(db=service_db, audit_table="text_log", since_id=0, match_details={"a": "b"}, **conn))
    assert result["failed"] and "column details of text_log is text, not json or jsonb" in result["msg"]


def test_its_session_cannot_write(conn, service_db, pg_server):
    runtime = _pg_info.read_only_runtime(dict(conn, pg_bin_dir=str(PG_BINDIR)))
    with pytest.raises(_pg.PgError, match="read-only transaction"):
        runtime.execute("DELETE FROM audit_log", service_db)
    assert last_id(pg_server, service_db) == 30


# ----------------------------------------------------------------------------------------------- pg_locks_info
@contextlib.contextmanager
def holding(pg_server, db, *statements):
    """A session that ran `statements` in a transaction it keeps open: its pid."""
    connection = pg_server.connect(db, application_name="lock-holder")
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            for statement in statements:
                cur.execute(statement)
        yield pid
    finally:
        connection.rollback()
        connection.close()


@contextlib.contextmanager
def waiting_on(pg_server, db, statement):
    """A session running `statement`, which waits for a lock: its pid, once the server shows it waiting."""
    connection = pg_server.connect(db, application_name="lock-waiter", options="-c statement_timeout=60s")
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]

    def run():
        with contextlib.suppress(Exception), connection.cursor() as cur:
            cur.execute(statement)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        with pg_server.connect(db) as watcher, watcher.cursor() as cur:
            while True:
                cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone()[0] == "Lock":
                    break
                assert time.monotonic() < deadline, "the waiter never waited"
                time.sleep(0.05)
        yield pid
    finally:
        with pg_server.connect(db) as watcher, watcher.cursor() as cur:
            cur.execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(70)
        connection.close()


def test_nothing_held_nothing_reported(run_module, conn, service_db):
    result = run_module("pg_locks_info", dict(db=service_db, **conn))
    assert result["changed"] is False
    assert result["blockers"] == [] and result["waiting"] == [] and result["summary"] == []


def test_an_exclusive_lock_and_the_session_it_blocks_are_named_with_each_other(run_module, conn, service_db, pg_server):
    with holding(pg_server, service_db, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE") as holder:
        with waiting_on(pg_server, service_db, "SELECT count(*) FROM messages") as waiter:
            result = run_module("pg_locks_info", dict(db=service_db, **conn))
            assert run_module("pg_locks_info", dict(db=service_db, **conn), check_mode=True)["blockers"][0]["pid"] == holder
    assert result["changed"] is False
    [blocker] = result["blockers"]
    assert blocker["pid"] == holder and blocker["exclusive_locks"] == [{"table": "messages", "granted": True}]
    assert blocker["blocks"] == [waiter] and blocker["application"] == "lock-holder" and blocker["state"] == "idle in transaction"
    assert blocker["query"] == "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE" and blocker["transaction_seconds"] >= 0
    [waiting] = result["waiting"]
    assert waiting["pid"] == waiter and waiting["blocked_by"] == [holder] and waiting["application"] == "lock-waiter"
    assert waiting["waits_for"] == [{"mode": "AccessShareLock", "table": "messages", "locktype": "relation"}]
    assert waiting["query"] == "SELECT count(*) FROM messages"
    assert re.fullmatch(r"pid %d AccessExclusiveLock on messages by postgres for \d+ s: LOCK TABLE messages IN ACCESS EXCLUSIVE MODE \[blocks pid %d\]"
                        % (holder, waiter), result["summary"][0]), result["summary"]
    assert re.fullmatch(r"pid %d by postgres \(lock-waiter\) waits for AccessShareLock on messages for \d+ s, blocked by pid %d: "
                        r"SELECT count\(\*\) FROM messages" % (waiter, holder), result["summary"][1]), result["summary"]


def test_a_row_lock_blocker_is_named_without_a_table_lock(run_module, conn, service_db, pg_server):
    with holding(pg_server, service_db, "UPDATE clients SET name = name WHERE id = 1") as holder:
        with waiting_on(pg_server, service_db, "UPDATE clients SET name = name || '' WHERE id = 1") as waiter:
            result = run_module("pg_locks_info", dict(db=service_db, **conn))
    [blocker] = result["blockers"]
    assert blocker["pid"] == holder and blocker["exclusive_locks"] == [] and blocker["blocks"] == [waiter]
    assert result["waiting"][0]["waits_for"] == [{"mode": "ShareLock", "table": None, "locktype": "transactionid"}]
    assert result["summary"][0].startswith("pid %d by postgres (idle in transaction) for " % holder)
    assert "waits for ShareLock on transactionid" in result["summary"][1]


def test_an_odd_table_name_is_quoted_as_in_sql_and_another_database_is_left_out(run_module, conn, service_db, pg_server):
    other = pg_server.create_database(service_db[:50] + "_other")
    with pg_server.connect(other) as connection, connection.cursor() as cur:
        cur.execute("CREATE TABLE elsewhere (id int)")
    with holding(pg_server, service_db, 'LOCK TABLE "we""ird.T" IN ACCESS EXCLUSIVE MODE') as holder, \
            holding(pg_server, other, "LOCK TABLE elsewhere IN ACCESS EXCLUSIVE MODE"):
        result = run_module("pg_locks_info", dict(db=service_db, query_chars=0, **conn))
    [blocker] = result["blockers"]
    assert blocker["pid"] == holder and blocker["exclusive_locks"] == [{"table": '"we""ird.T"', "granted": True}]
    assert blocker["query"] is None
    assert result["summary"] == ['pid %d AccessExclusiveLock on "we""ird.T" by postgres for %d s' % (holder, blocker["transaction_seconds"])]


def test_a_statement_that_may_hold_a_secret_is_not_shown(run_module, conn, service_db, pg_server):
    with holding(pg_server, service_db, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE",
                 "ALTER ROLE postgres PASSWORD 'hunter2-not-for-logs'"):
        result = run_module("pg_locks_info", dict(db=service_db, **conn))
        # The word that makes it secret comes after the characters returned: the server tests the whole statement.
        short = run_module("pg_locks_info", dict(db=service_db, query_chars=10, **conn))
    assert "hunter2" not in json.dumps(result)
    assert result["blockers"][0]["query"] == short["blockers"][0]["query"] == "(statement hidden: it may hold a secret)"


@pytest.mark.parametrize("params, message", [
    (dict(query_chars=-1), "query_chars is -1: 0 (no statements) to 10000"),
    (dict(query_chars=10001), "query_chars is 10001"),
    (dict(db="host=127.0.0.1 dbname=postgres"), "is not accepted"),
    (dict(db="wa'; SELECT pg_terminate_backend(1); --"), "is not accepted"),
    (dict(db="no_such_db"), 'database "no_such_db" does not exist'),
    (dict(login_port=1), "cannot reach PostgreSQL"),
])
def test_a_wrong_or_hostile_input_fails_clearly(run_module, conn, service_db, params, message):
    result = run_module("pg_locks_info", dict(dict(db=service_db, **conn), **params))
    assert result.get("failed") and message in result["msg"] and "nothing was changed" in result["msg"], result
