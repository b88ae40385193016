# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_purge against a real PostgreSQL: expired rows counted, deleted in batches of one transaction and the table
vacuumed; a table with an odd name in an odd schema, a partitioned table, a condition that matches nothing, more rows
than max_rows (refused, nothing deleted), check mode (nothing deleted), a second run (nothing left, changed=false), a
read-only database (refused, never overridden), and conditions that try to reach past the expression (refused before
any connection)."""
from __future__ import annotations

import contextlib
import hashlib

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pg_purge

EXPIRED = "created_at < now() - interval '90 days'"


def database(pg_server, request):
    name = "purge_%s_%s" % (request.node.name.split("[")[0][-30:], hashlib.sha256(request.node.name.encode()).hexdigest()[:8])
    pg_server.create_database(name)
    return name


def sql(pg_server, db, statement, *args):
    with contextlib.closing(pg_server.connect(db)) as connection, connection.cursor() as cur:
        connection.autocommit = True
        cur.execute(statement, args or None)
        return cur.fetchall() if cur.description else None


def media_table(pg_server, db, table="media_messages", old=300, new=200, padding=2000):
    """`old` rows 100-400 days old, `new` rows younger than a day; each with `padding` bytes (so a VACUUM has pages to free)."""
    sql(pg_server, db, "CREATE TABLE %s (id serial PRIMARY KEY, created_at timestamptz NOT NULL, body text)" % table)
    sql(pg_server, db, "ALTER TABLE %s ALTER COLUMN body SET STORAGE PLAIN" % table)
    sql(pg_server, db, "INSERT INTO %s (created_at, body) SELECT now() - (100 + i) * interval '1 day', repeat('x', %d) "
                       "FROM generate_series(1, %d) i" % (table, padding, old))
    sql(pg_server, db, "INSERT INTO %s (created_at, body) SELECT now() - i * interval '1 minute', repeat('y', %d) "
                       "FROM generate_series(1, %d) i" % (table, padding, new))


def count(pg_server, db, table="media_messages", where="true"):
    return sql(pg_server, db, "SELECT count(*) FROM %s WHERE %s" % (table, where))[0][0]


@pytest.fixture(name="db")
def db_fixture(pg_server, request):
    return database(pg_server, request)


@pytest.fixture(name="conn")
def conn_fixture(pg_server, db):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR), db=db)


# ------------------------------------------------------------------------------------------------ the purge
def test_expired_rows_are_deleted_in_batches_the_table_vacuumed_and_a_second_run_changes_nothing(pg_server, db, conn, run_module):
    # The expired rows are the first inserted: at the start of the heap, so only part of the space comes back.
    # Inserted last instead, VACUUM truncates their pages: the test below proves it.
    media_table(pg_server, db)
    result = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED, batch_size=70))
    assert not result.get("failed"), result
    assert (result["changed"], result["matched"], result["deleted"], result["batches"]) == (True, 300, 300, 5), result
    assert result["vacuumed"] is True and result["read_only"] is False and result["table"] == "media_messages"
    assert count(pg_server, db) == 200 and count(pg_server, db, where=EXPIRED) == 0
    # VACUUM adds the free space and visibility maps: the table may even grow by a few pages.
    assert result["reclaimed_bytes"] == max(0, result["table_bytes_before"] - result["table_bytes_after"]) and result["table_bytes_before"] > 0
    assert "deleted 300 row(s) of media_messages" in result["msg"]
    assert sql(pg_server, db, "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'media_messages'")[0][0]

    again = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED))
    assert (again["changed"], again["matched"], again["deleted"], again["vacuumed"]) == (False, 0, 0, False), again
    assert again["table_bytes_after"] == again["table_bytes_before"] and count(pg_server, db) == 200


def test_vacuum_returns_the_pages_of_rows_deleted_at_the_end_of_the_table(pg_server, db, conn, run_module):
    sql(pg_server, db, "CREATE TABLE m (id int, created_at timestamptz, body text)")
    sql(pg_server, db, "ALTER TABLE m ALTER COLUMN body SET STORAGE PLAIN")
    sql(pg_server, db, "INSERT INTO m SELECT i, now(), repeat('n', 2000) FROM generate_series(1, 50) i")
    sql(pg_server, db, "INSERT INTO m SELECT i, now() - interval '1 year', repeat('o', 2000) FROM generate_series(51, 850) i")
    result = run_module("pg_purge", dict(conn, table="m", where=EXPIRED))
    assert result["deleted"] == 800 and result["vacuumed"] is True, result
    assert result["reclaimed_bytes"] >= 800 * 2000 and result["table_bytes_after"] < result["table_bytes_before"] / 4, result
    assert "bytes returned to the filesystem" in result["msg"]


def test_a_table_with_an_odd_name_in_an_odd_schema_is_quoted_and_the_where_may_name_it(pg_server, db, conn, run_module):
    sql(pg_server, db, 'CREATE SCHEMA "Odd Schema"')
    table = '"Odd Schema"."Media; DROP TABLE x ""q"""'
    media_table(pg_server, db, table=table, old=5, new=3, padding=10)
    where = '"Media; DROP TABLE x ""q""".created_at < now() - interval \'90 days\' AND body <> \'; -- not a comment\''
    result = run_module("pg_purge", dict(conn, table=table, where=where))
    assert not result.get("failed"), result
    assert (result["matched"], result["deleted"], result["table"]) == (5, 5, table), result
    assert count(pg_server, db, table) == 3


def test_a_partitioned_table_is_purged_partition_by_partition(pg_server, db, conn, run_module):
    sql(pg_server, db, "CREATE TABLE events (id int, created_at timestamptz NOT NULL, body text) PARTITION BY RANGE (created_at)")
    sql(pg_server, db, "CREATE TABLE events_old PARTITION OF events FOR VALUES FROM ('2000-01-01') TO ('2020-01-01')")
    sql(pg_server, db, "CREATE TABLE events_rest PARTITION OF events DEFAULT")
    # The same ctids exist in both partitions: a delete by ctid alone would take rows of the other partition too.
    sql(pg_server, db, "INSERT INTO events SELECT i, '2010-01-01'::timestamptz + i * interval '1 day', 'old' FROM generate_series(1, 40) i")
    sql(pg_server, db, "INSERT INTO events SELECT i, now() - i * interval '1 day' + interval '1 hour', 'mixed' FROM generate_series(1, 200) i")
    expired_recent = count(pg_server, db, "events_rest", EXPIRED)
    assert expired_recent == 110
    before = run_module("pg_purge", dict(conn, table="events", where="events.created_at < now() - interval '90 days'"), check_mode=True)
    assert (before["matched"], before["deleted"], before["changed"]) == (150, 0, False), before
    result = run_module("pg_purge", dict(conn, table="events", where="events.created_at < now() - interval '90 days'", batch_size=32))
    assert not result.get("failed"), result
    assert (result["matched"], result["deleted"], result["vacuumed"]) == (150, 150, True), result
    assert count(pg_server, db, "events_old") == 0 and count(pg_server, db, "events_rest") == 90
    assert count(pg_server, db, "events", "created_at >= now() - interval '90 days'") == 90
    assert result["table_bytes_before"] > 0


def test_a_where_that_matches_nothing_deletes_nothing(pg_server, db, conn, run_module):
    media_table(pg_server, db, old=0, new=10, padding=10)
    result = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED))
    assert (result["changed"], result["matched"], result["deleted"], result["vacuumed"]) == (False, 0, 0, False), result
    assert "no row matched" in result["msg"] and count(pg_server, db) == 10


def test_more_rows_than_max_rows_are_refused_and_nothing_is_deleted(pg_server, db, conn, run_module):
    media_table(pg_server, db, old=30, new=5, padding=10)
    for check_mode in (True, False):
        result = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED, max_rows=29), check_mode=check_mode)
        assert result["failed"] is True and result["matched"] == 30 and result["deleted"] == 0, result
        assert "more than max_rows=29: nothing was deleted" in result["msg"]
        assert count(pg_server, db) == 35
    assert run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED, max_rows=30))["deleted"] == 30


def test_check_mode_counts_and_deletes_nothing_even_when_the_where_would_write(pg_server, db, conn, run_module):
    media_table(pg_server, db, old=7, new=2, padding=10)
    result = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED), check_mode=True)
    assert (result["changed"], result["matched"], result["deleted"]) == (False, 7, 0), result
    assert "check mode" in result["msg"] and count(pg_server, db) == 9
    # A condition calling a function that writes: the read-only transaction of check mode refuses it.
    sql(pg_server, db, "CREATE TABLE side (n int)")
    sql(pg_server, db, "CREATE FUNCTION scribble() RETURNS boolean LANGUAGE sql AS 'INSERT INTO side VALUES (1) RETURNING true'")
    written = run_module("pg_purge", dict(conn, table="media_messages", where="scribble()"), check_mode=True)
    assert written["failed"] is True and "read-only transaction" in written["msg"], written
    assert count(pg_server, db, "side") == 0 and count(pg_server, db) == 9


def test_a_read_only_database_is_refused_with_the_reason_and_never_overridden(pg_server, db, conn, run_module):
    media_table(pg_server, db, old=4, new=1, padding=10)
    sql(pg_server, "postgres", 'ALTER DATABASE "%s" SET default_transaction_read_only = on' % db)
    try:
        result = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED))
        assert result["failed"] is True and result["read_only"] is True and result["matched"] == 4, result
        assert "is read-only (default_transaction_read_only is on" in result["msg"] and "nothing was deleted" in result["msg"]
        checked = run_module("pg_purge", dict(conn, table="media_messages", where=EXPIRED), check_mode=True)
        assert checked["matched"] == 4 and checked["read_only"] is True and not checked.get("failed"), checked
        assert any("read-only" in warning for warning in checked["warnings"])
    finally:
        sql(pg_server, "postgres", 'ALTER DATABASE "%s" RESET default_transaction_read_only' % db)
    assert count(pg_server, db) == 5


def test_a_failing_condition_rolls_back_every_batch(pg_server, db, conn, run_module):
    media_table(pg_server, db, old=20, new=0, padding=10)
    # Division by zero once id reaches 15: the batches before it deleted rows, the transaction takes them back.
    result = run_module("pg_purge", dict(conn, table="media_messages", where="CASE WHEN id < 15 THEN true ELSE 1 / (id - id) = 1 END",
                                         batch_size=5))
    assert result["failed"] is True and "division by zero" in result["msg"] and "nothing was deleted" in result["msg"], result
    assert count(pg_server, db) == 20


def test_a_statement_over_the_timeout_is_cancelled_and_nothing_deleted(pg_server, db, conn, run_module):
    media_table(pg_server, db, old=3, new=0, padding=10)
    result = run_module("pg_purge", dict(conn, table="media_messages", where="pg_sleep(2) IS NOT NULL", statement_timeout=1))
    assert result["failed"] is True and "statement timeout" in result["msg"], result
    assert count(pg_server, db) == 3


def test_a_missing_table_or_a_view_is_refused(pg_server, db, conn, run_module):
    missing = run_module("pg_purge", dict(conn, table="nope", where="true"))
    assert missing["failed"] is True and "table nope does not exist in database" in missing["msg"], missing
    sql(pg_server, db, "CREATE VIEW v AS SELECT 1 AS n")
    view = run_module("pg_purge", dict(conn, table="v", where="true"))
    assert view["failed"] is True and "is not a table (relkind v)" in view["msg"], view


# ------------------------------------------------------------------------------------------------ the checks
@pytest.mark.parametrize("where, refused", [
    ("true; DROP TABLE media_messages", "';' at character 4"),
    ("true) OR (true", "closes a parenthesis never opened"),
    ("(true", "1 parenthesis never closed"),
    ("id = 1 -- the rest", "a comment (--"),
    ("id = 1 /* x */", "a comment (/*"),
    ("true \\! touch /tmp/pwned", "backslash outside quotes"),
    ("body = :'secret'", "psql variable"),
    ("body = :name", "psql variable"),
    ("body = $$x$$", "'$' outside quotes"),
    ("body = E'\\''", "E'' string"),
    ("body = 'open", "string opened at character 7 is never closed"),
    ('"open = 1', "quoted name opened at character 0 is never closed"),
    ("   ", "where is empty"),
])
def test_a_where_that_is_not_one_expression_is_refused(where, refused):
    with pytest.raises(_pg_purge.PurgeError, match=None) as caught:
        _pg_purge.check_where(where)
    assert refused in str(caught.value)


@pytest.mark.parametrize("where", [
    "created_at < now() - interval '90 days'",
    "created_at::date < '2026-01-01'::date AND body LIKE '%;%' AND body <> 'it''s -- no comment \\ nor /* this */'",
    '"Odd Col" IS NULL OR "a ""quoted"" name" = 1',
    "kind IN ('a', 'b') AND (x > 1 OR (y < 2))",
    "name ~ '^\\d+$'",
])
def test_a_where_that_is_one_expression_is_accepted(where):
    assert _pg_purge.check_where(where) == where


@pytest.mark.parametrize("table, expected", [
    ("media_messages", ("public", "media_messages")),
    ("archive.media_messages", ("archive", "media_messages")),
    ('"Odd Schema"."T.1"', ("Odd Schema", "T.1")),
    ('"q""uote"', ("public", 'q"uote')),
])
def test_table_names_are_read_as_sql_writes_them(table, expected):
    assert _pg_purge.parse_table(table) == expected


@pytest.mark.parametrize("table", ["MediaMessages", "a.b.c", "x; y", "", '"unclosed'])
def test_a_table_name_sql_would_not_read_so_is_refused(table, run_module):
    with pytest.raises(_pg_purge.PurgeError, match="not a table name as SQL writes it"):
        _pg_purge.parse_table(table)
    result = run_module("pg_purge", dict(table=table, where="true", compose_project_dir="/nonexistent"))
    assert result["failed"] is True and "nothing was deleted" in result["msg"], result
