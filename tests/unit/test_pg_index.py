# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_index against a real PostgreSQL: indexes built and dropped CONCURRENTLY on a table of 20000 rows, four runs each
(check, run, check, run); a unique build on duplicates fails and its INVALID leftover is dropped again; a planted
INVALID index is rebuilt; a build waits behind an open transaction under its lock_timeout (and its leftover is
cleaned, or named when it cannot be); hostile names are only names; partitioned tables, constraint indexes, names
taken by other relations and other definitions are refused with nothing changed.

States a test needs (a build waiting for a transaction) are polled for with a deadline, never waited for a fixed time."""
from __future__ import annotations

import hashlib
import threading

import psycopg2
import pytest

from conftest import PG_BINDIR, sql, wait_until  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pg_index

ROWS = 20000
HOSTILE_TABLE = 'x"; DROP TABLE victim; --'
HOSTILE_COLUMN = 'a"b; --'
HOSTILE_INDEX = '"; DROP TABLE victim; --'


@pytest.fixture(name="db")
def db_fixture(pg_server, request):
    name = "idx_%s_%s" % (request.node.name.split("[")[0][-30:], hashlib.sha256(request.node.name.encode()).hexdigest()[:8])
    pg_server.create_database(name)
    sql(pg_server, name,
        "CREATE TABLE items (id int PRIMARY KEY, email text, grp int, CONSTRAINT items_grp_email_key UNIQUE (grp, email))",
        "INSERT INTO items SELECT g, 'user' || g || '@example.org', g %% 100 FROM generate_series(1, %d) g" % ROWS,
        "CREATE TABLE victim (id int)", "CREATE TABLE other (id int)", "INSERT INTO other VALUES (1)")
    return name


@pytest.fixture(name="conn")
def conn_fixture(pg_server, db):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR), db=db)


def indexes(server, db):
    """{index name: (valid, definition)} of the database's user schemas."""
    rows = sql(server, db, "SELECT c.relname, x.indisvalid, pg_get_indexdef(c.oid) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                           "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'")
    return {name: (valid, definition) for name, valid, definition in rows}


def tables(server, db):
    return {row[0] for row in sql(server, db, "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace")}


def plant_invalid(server, db, name, column="grp"):
    """An INVALID index `name` on items(column), left by a unique concurrent build that failed on duplicates."""
    with pytest.raises(psycopg2.errors.UniqueViolation):
        sql(server, db, 'CREATE UNIQUE INDEX CONCURRENTLY "%s" ON items (%s)' % (name, column))
    assert indexes(server, db)[name][0] is False


def four_runs(run_module, params, first_msg):
    """check, run, check, run: changed true, true, false, false; nothing changed by the first."""
    check = run_module("pg_index", params, check_mode=True, diff=True)
    assert not check.get("failed"), check["msg"]
    assert check["changed"] is True and check["msg"].startswith("check mode: would " + first_msg), check["msg"]
    done = run_module("pg_index", params, diff=True)
    assert not done.get("failed"), done["msg"]
    assert done["changed"] is True
    again = run_module("pg_index", params, check_mode=True)
    assert again["changed"] is False and not again.get("failed"), again["msg"]
    last = run_module("pg_index", params)
    assert last["changed"] is False and not last.get("failed"), last["msg"]
    return check, done, last


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("change, message", [
    (dict(columns=None), "needs columns"),
    (dict(columns=["a", "a"]), "more than once"),
    (dict(name="n" * 64), "longer than 63 bytes"),
    (dict(table=""), "table is empty"),
    (dict(lock_timeout=-1), "lock_timeout"),
    (dict(incident_id="INC 1; rm"), "incident_id"),
    (dict(db="wa mcp"), "database name"),
])
def test_options_refused_before_any_connection(change, message):
    params = dict(db="wa_mcp", name="i", table="t", columns=["a"], unique=False, state="present", lock_timeout=5, force=False,
                  incident_id=None)
    params.update(change)
    with pytest.raises(Exception, match=message):
        _pg_index.check_params(params)


def test_table_option_parsing():
    assert _pg_index.target("items") == ("public", "items")
    assert _pg_index.target("audit.log") == ("audit", "log")
    assert _pg_index.target('"Odd.Schema"."T"') == ("Odd.Schema", "T")
    assert _pg_index.target(HOSTILE_TABLE) == ("public", HOSTILE_TABLE)


# -------------------------------------------------------------------------------------------- present
def test_create_four_runs_then_absent_four_runs(pg_server, db, conn, run_module):
    params = dict(conn, name="items_email_idx", table="items", columns=["email"], incident_id="INC-2026-0042")
    check, done, last = four_runs(run_module, params, "create index items_email_idx on items")
    assert check["index"] is None and check["diff"]["before"]["definition"] is None
    assert check["created"] is True and check["dropped"] is False, "check mode predicts what the run does"
    assert check["diff"]["after"]["definition"] == 'CREATE INDEX "items_email_idx" ON "public"."items" USING btree ("email")'
    assert done["created"] is True and done["dropped"] is False and done["rebuilt_invalid"] is False
    assert done["index"] == dict(name="items_email_idx", table="items", valid=True, size_bytes=done["index"]["size_bytes"],
                                 definition="CREATE INDEX items_email_idx ON public.items USING btree (email)")
    assert done["index"]["size_bytes"] > 8192 and done["duration_seconds"] >= 0
    assert done["diff"]["after"]["definition"] == done["index"]["definition"] and done["diff"]["before"]["definition"] is None
    assert last["created"] is False and "nothing was changed" in last["msg"]
    assert indexes(pg_server, db)["items_email_idx"][0] is True
    # The same name asked as a unique index is another definition: refused without force.
    other = run_module("pg_index", dict(params, unique=True))
    assert other["failed"] and "another definition" in other["msg"] and "nothing was changed" in other["msg"]
    assert indexes(pg_server, db)["items_email_idx"] == (True, "CREATE INDEX items_email_idx ON public.items USING btree (email)")

    absent = dict(conn, name="items_email_idx", table="items", state="absent", incident_id="INC-2026-0042")
    check, done, last = four_runs(run_module, absent, "drop index items_email_idx on items")
    assert check["dropped"] is True and done["dropped"] is True and last["dropped"] is False
    assert done["index"] is None and done["diff"]["after"]["definition"] is None
    assert "items_email_idx" not in indexes(pg_server, db)


def test_multi_column_unique_and_columns_order(pg_server, db, conn, run_module):
    params = dict(conn, name="items_grp_id", table="public.items", columns=["grp", "id"], unique=True)
    four_runs(run_module, params, "create index items_grp_id on items")
    assert indexes(pg_server, db)["items_grp_id"] == (True, "CREATE UNIQUE INDEX items_grp_id ON public.items USING btree (grp, id)")
    swapped = run_module("pg_index", dict(params, columns=["id", "grp"]))
    assert swapped["failed"] and "another definition" in swapped["msg"]
    forced = run_module("pg_index", dict(params, columns=["id", "grp"], force=True))
    assert not forced.get("failed"), forced["msg"]
    assert forced["dropped"] is True and forced["created"] is True and forced["rebuilt_invalid"] is False
    assert indexes(pg_server, db)["items_grp_id"] == (True, "CREATE UNIQUE INDEX items_grp_id ON public.items USING btree (id, grp)")


def test_unique_build_on_duplicates_fails_and_drops_its_invalid_leftover(pg_server, db, conn, run_module):
    result = run_module("pg_index", dict(conn, name="items_grp_key", table="items", columns=["grp"], unique=True, incident_id="INC-7"))
    assert result["failed"] is True
    assert "could not create unique index" in result["msg"]
    assert "INVALID index the build left was dropped" in result["msg"] and "nothing was changed" in result["msg"]
    assert "@example.org" not in result["msg"]  # the duplicated key (DETAIL) is data: never in the message
    assert result["created"] is False and result["index"] is None and result["duration_seconds"] > 0
    assert "items_grp_key" not in indexes(pg_server, db)


def test_planted_invalid_index_is_rebuilt(pg_server, db, conn, run_module):
    plant_invalid(pg_server, db, "items_grp_idx")
    params = dict(conn, name="items_grp_idx", table="items", columns=["grp"])
    check = run_module("pg_index", params, check_mode=True, diff=True)
    assert check["changed"] is True and check["rebuilt_invalid"] is True and "drop the INVALID index" in check["msg"]
    assert "its definition differed" in check["msg"]  # the planted one is unique, the one asked is not
    assert check["diff"]["before"]["valid"] is False and indexes(pg_server, db)["items_grp_idx"][0] is False
    done = run_module("pg_index", params)
    assert not done.get("failed"), done["msg"]
    assert done["rebuilt_invalid"] is True and done["dropped"] is True and done["created"] is True
    assert done["index"]["valid"] is True and indexes(pg_server, db)["items_grp_idx"] == (
        True, "CREATE INDEX items_grp_idx ON public.items USING btree (grp)")
    again = run_module("pg_index", params)
    assert again["changed"] is False and again["rebuilt_invalid"] is False


def test_absent_drops_an_invalid_index(pg_server, db, conn, run_module):
    plant_invalid(pg_server, db, "items_grp_idx")
    done = run_module("pg_index", dict(conn, name="items_grp_idx", table="items", state="absent"), diff=True)
    assert done["changed"] is True and done["dropped"] is True and done["diff"]["before"]["valid"] is False
    assert "items_grp_idx" not in indexes(pg_server, db)


# ----------------------------------------------------------------------------------- waiting for others
class Blocker:
    """A session of the test's (autocommit off) holding a transaction open."""

    def __init__(self, server, db, *statements):
        self.connection = server.connect(db)
        with self.connection.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def end(self):
        self.connection.commit()
        self.connection.close()


def test_build_waits_behind_an_open_transaction_until_it_ends(pg_server, db, conn, run_module):
    """A REPEATABLE READ snapshot held open: the concurrent build waits for it (its session named after the incident)
    and finishes once it ends."""
    blocker = Blocker(pg_server, db, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT count(*) FROM other")
    out = {}
    thread = threading.Thread(target=lambda: out.update(run_module("pg_index", dict(
        conn, name="items_email_idx", table="items", columns=["email"], lock_timeout=60, incident_id="INC-2026-0042"))))
    thread.start()
    try:
        def waiting():
            rows = sql(pg_server, "postgres", "SELECT wait_event_type FROM pg_stat_activity "
                                              "WHERE application_name = 'runbooks-incident pg_index INC-2026-0042'")
            return rows and rows[0][0] == "Lock"
        wait_until(waiting, "the build waiting for the open transaction")
        assert indexes(pg_server, db)["items_email_idx"][0] is False  # built, not yet valid
    finally:
        blocker.end()
        thread.join(120)
    assert not out.get("failed"), out["msg"]
    assert out["created"] is True and out["index"]["valid"] is True and out["duration_seconds"] > 0


def test_lock_timeout_behind_a_snapshot_leftover_dropped(pg_server, db, conn, run_module):
    blocker = Blocker(pg_server, db, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT count(*) FROM other")
    try:
        result = run_module("pg_index", dict(conn, name="items_email_idx", table="items", columns=["email"], lock_timeout=1))
    finally:
        blocker.end()
    assert result["failed"] is True and "lock timeout" in result["msg"], result["msg"]
    assert "INVALID index the build left was dropped" in result["msg"] and "nothing was changed" in result["msg"]
    assert result["duration_seconds"] >= 1
    assert "items_email_idx" not in indexes(pg_server, db)


def test_lock_timeout_behind_a_table_lock_creates_nothing(pg_server, db, conn, run_module):
    blocker = Blocker(pg_server, db, "LOCK TABLE items IN SHARE ROW EXCLUSIVE MODE")
    try:
        result = run_module("pg_index", dict(conn, name="items_email_idx", table="items", columns=["email"], lock_timeout=1))
    finally:
        blocker.end()
    assert result["failed"] is True and "before it was created" in result["msg"] and "nothing was changed" in result["msg"]
    assert "items_email_idx" not in indexes(pg_server, db)


def test_lock_timeout_behind_a_writer_leftover_named_then_rebuilt(pg_server, db, conn, run_module):
    """A transaction that wrote to the table blocks the build and the drop of its leftover alike: the message says
    the INVALID index is left and how to clear it; once the writer ends, the next run rebuilds it."""
    blocker = Blocker(pg_server, db, "UPDATE items SET grp = grp WHERE id = 1")
    params = dict(conn, name="items_email_idx", table="items", columns=["email"], lock_timeout=1)
    try:
        result = run_module("pg_index", params)
    finally:
        blocker.end()
    assert result["failed"] is True and "lock timeout" in result["msg"]
    assert "could not be dropped" in result["msg"] and "state=absent" in result["msg"], result["msg"]
    assert result["changed"] is True and result["index"]["valid"] is False
    assert indexes(pg_server, db)["items_email_idx"][0] is False
    again = run_module("pg_index", params)
    assert not again.get("failed"), again["msg"]
    assert again["rebuilt_invalid"] is True and again["index"]["valid"] is True


# ------------------------------------------------------------------------------------------ hostile names
def test_hostile_identifiers_are_only_names(pg_server, db, conn, run_module):
    sql(pg_server, db, 'CREATE TABLE "x""; DROP TABLE victim; --" ("a""b; --" int, id int)',
        'INSERT INTO "x""; DROP TABLE victim; --" SELECT g, g FROM generate_series(1, 1000) g')
    params = dict(conn, name=HOSTILE_INDEX, table=HOSTILE_TABLE, columns=[HOSTILE_COLUMN, "id"], incident_id="INC-1")
    check, done, _last = four_runs(run_module, params, "create index")
    assert check["table"] == '"x""; DROP TABLE victim; --"'
    assert done["index"]["valid"] is True
    assert done["index"]["definition"] == ('CREATE INDEX """; DROP TABLE victim; --" ON public."x""; DROP TABLE victim; --" '
                                           'USING btree ("a""b; --", id)')
    assert {"victim", HOSTILE_TABLE} <= tables(pg_server, db)
    # Hostile names of things that do not exist: refused, nothing run.
    for change in (dict(table="victim; DROP TABLE victim"), dict(table='victim"; DROP TABLE victim; --'),
                   dict(table="items", columns=["id); DROP TABLE victim; --"])):
        refused = run_module("pg_index", dict(params, **change))
        assert refused["failed"] and "nothing was changed" in refused["msg"]
    assert "victim" in tables(pg_server, db)
    gone = run_module("pg_index", dict(params, state="absent"))
    assert gone["dropped"] is True and HOSTILE_INDEX not in indexes(pg_server, db)
    assert "victim" in tables(pg_server, db)


# ------------------------------------------------------------------------------------------------ refusals
def test_partitioned_table_refused_naming_its_partitions(pg_server, db, conn, run_module):
    sql(pg_server, db, "CREATE TABLE events (id int, at date) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
    for check_mode in (True, False):
        result = run_module("pg_index", dict(conn, name="events_at_idx", table="events", columns=["at"]), check_mode=check_mode)
        assert result["failed"] and "partitioned table" in result["msg"] and "CONCURRENTLY" in result["msg"]
        assert "events_2025, events_2026" in result["msg"] and "nothing was changed" in result["msg"]
    partition = run_module("pg_index", dict(conn, name="events_2025_at_idx", table="events_2025", columns=["at"]))
    assert partition["created"] is True
    assert set(indexes(pg_server, db)) == {"items_pkey", "items_grp_email_key", "events_2025_at_idx"}


@pytest.mark.parametrize("name, constraint", [("items_pkey", "primary key items_pkey of items"),
                                              ("items_grp_email_key", "unique constraint items_grp_email_key of items")])
def test_constraint_index_never_dropped(pg_server, db, conn, run_module, name, constraint):
    for check_mode in (True, False):
        result = run_module("pg_index", dict(conn, name=name, table="items", state="absent"), check_mode=check_mode)
        assert result["failed"] and constraint in result["msg"] and "nothing was changed" in result["msg"], result["msg"]
    forced = run_module("pg_index", dict(conn, name=name, table="items", columns=["email"], force=True))
    assert forced["failed"] and constraint in forced["msg"]
    assert name in indexes(pg_server, db)


def test_other_refusals_change_nothing(pg_server, db, conn, run_module):
    before = indexes(pg_server, db)
    cases = [
        (dict(name="i1", table="nosuch", columns=["id"]), "there is no table nosuch"),
        (dict(name="i1", table="nosuch.items", columns=["id"]), "no such schema"),
        (dict(name="i1", table="items", columns=["id", "nope"]), "has no column 'nope'"),
        (dict(name="i1", table="items", columns=["ID"]), "has no column 'ID'"),
        (dict(name="victim", table="items", columns=["id"], force=True), "taken by a table"),
        (dict(name="items_pkey", table="other", state="absent"), "is on table items, not other"),
        (dict(name="i1", table="pg_catalog.pg_class", columns=["oid"]), "may not index"),
    ]
    sql(pg_server, db, "DO $$BEGIN CREATE ROLE pgi_nobody LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    for change, message in cases:
        user = dict(login_user="pgi_nobody") if change["table"].startswith("pg_catalog") else {}
        result = run_module("pg_index", dict(conn, **change, **user))
        assert result["failed"] and message in result["msg"] and "nothing was changed" in result["msg"], result["msg"]
    assert indexes(pg_server, db) == before
    missing = run_module("pg_index", dict(conn, name="nosuch_idx", table="items", state="absent"))
    assert missing["changed"] is False and not missing.get("failed")
