# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_integrity_info against a real PostgreSQL, with real damage.

The shared cluster holds the clean cases: odd names, partitions, materialized views, a database set read-only, a
role that cannot install amcheck, a locked table that outlives statement_timeout; after every run amcheck is where
it was before (absent, or installed by the test).

The damage is done to a cluster of this file's own (a shutdown is the simple, reliable way to have the server read a
page again from disk, and restarting the shared cluster would disturb the other tests): with the cluster stopped,
one heap page gets an impossible header (the server cannot read it: "invalid page in block"), one tuple an xmin from
the future (verify_heapam finds it, the table still reads) and one btree leaf a key out of order (bt_index_check finds
it, the table is fine). Nothing here waits a fixed time."""
from __future__ import annotations

import hashlib
import json

import psycopg2
import pytest

from conftest import PG_BINDIR, OwnCluster, run_module, sql  # pylint: disable=import-error

READER = "pgi_reader"
BLOCK = 8192
SECRET_ROW = "row-content-never-in-the-result-" + "k" * 8


def database(pg_server, request):
    name = "pgi_%s_%s" % (request.node.name.split("[")[0][-28:], hashlib.sha256(request.node.name.encode()).hexdigest()[:8])
    pg_server.create_database(name)
    return name


def traces(server, db):
    """What a run could leave behind: the amcheck extension, its schema of the run."""
    return sql(server, db, "SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'), "
                           "(SELECT count(*) FROM pg_namespace WHERE nspname = 'runbooks_incident_amcheck')")[0]


def params(server, db, **more):
    return dict(dict(login_unix_socket=server.host, login_port=server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR), db=db), **more)


def statuses(result):
    return {item["relation"]: item["status"] for item in result["relations"]}


SCHEMA = [
    "CREATE TABLE clients (id int PRIMARY KEY, name text)",
    "INSERT INTO clients SELECT g, 'client ' || g FROM generate_series(1, 500) g",
    'CREATE SCHEMA "Odd.Schema"',
    'CREATE TABLE "Odd.Schema"."t.1" (a int)',
    'CREATE INDEX "Idx.Odd" ON "Odd.Schema"."t.1" (a)',
    'INSERT INTO "Odd.Schema"."t.1" VALUES (1), (2)',
    'CREATE TABLE "Mixed" ("qu""ote" text)',
    'CREATE TABLE "qu""ote" (x int)',
    "CREATE SCHEMA audit",
    'CREATE TABLE audit."Log" (line text)',
    "CREATE TABLE events (id int, day int) PARTITION BY RANGE (day)",
    "CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (10)",
    "CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (10) TO (20)",
    "CREATE INDEX events_id ON events (id)",
    "INSERT INTO events VALUES (1, 1), (2, 15)",
    "CREATE MATERIALIZED VIEW client_names AS SELECT name FROM clients",
    "CREATE MATERIALIZED VIEW never_filled AS SELECT 1 AS one WITH NO DATA",
    "CREATE INDEX clients_name_hash ON clients USING hash (name)",
]
EXPECTED = {
    '"Odd.Schema"."Idx.Odd"': "ok", '"Odd.Schema"."t.1"': "ok", '"Mixed"': "ok", 'audit."Log"': "ok", "client_names": "ok",
    "clients": "ok", "clients_name_hash": "skipped", "clients_pkey": "ok", "events_1": "ok", "events_1_id_idx": "ok",
    "events_2": "ok", "events_2_id_idx": "ok", "never_filled": "skipped", '"qu""ote"': "ok",
}


@pytest.fixture(name="db")
def db_fixture(pg_server, request):
    name = database(pg_server, request)
    sql(pg_server, name, *SCHEMA)
    return name


# ------------------------------------------------------------------------------------------- a clean database
def test_a_clean_database_is_healthy_and_amcheck_installed_for_the_run_is_gone_after(pg_server, db):
    assert traces(pg_server, db) == (0, 0)
    result = run_module("pg_integrity_info", params(pg_server, db, incident_id="INC-2026-0042"))
    assert not result.get("failed"), result
    assert statuses(result) == EXPECTED
    assert "events" not in statuses(result)  # a partitioned table is checked through its partitions
    assert result["amcheck"] == "installed temporarily" and result["healthy"] is True and result["corrupt"] == []
    assert result["changed"] is False and result["incident_id"] == "INC-2026-0042"
    assert set(result["readable_tables"]) == {key for key, status in EXPECTED.items() if status == "ok" and "Idx" not in key
                                              and not key.endswith(("_pkey", "_idx"))}
    # each table is followed by its indexes
    names = [item["relation"] for item in result["relations"]]
    assert names[names.index("clients"):names.index("clients") + 3] == ["clients", "clients_name_hash", "clients_pkey"]
    assert {item["kind"] for item in result["relations"] if item["relation"].endswith(("_pkey", "_idx", "_hash"))} == {"index"}
    assert traces(pg_server, db) == (0, 0)
    assert run_module("pg_integrity_info", params(pg_server, db), check_mode=True)["relations"] == result["relations"]
    assert traces(pg_server, db) == (0, 0)


def test_an_installed_amcheck_is_used_and_stays(pg_server, db):
    sql(pg_server, db, "CREATE EXTENSION amcheck")
    result = run_module("pg_integrity_info", params(pg_server, db))
    assert result["amcheck"] == "available" and result["healthy"] is True and statuses(result) == EXPECTED, result
    assert traces(pg_server, db) == (1, 0)


def test_a_read_only_database_is_checked_and_stays_read_only(pg_server, db):
    sql(pg_server, "postgres", 'ALTER DATABASE "%s" SET default_transaction_read_only = on' % db)
    result = run_module("pg_integrity_info", params(pg_server, db))
    assert result["amcheck"] == "installed temporarily" and result["healthy"] is True and statuses(result) == EXPECTED, result
    assert traces(pg_server, db) == (0, 0)
    with pytest.raises(psycopg2.Error, match="read-only transaction"):
        sql(pg_server, db, "INSERT INTO clients VALUES (0, 'x')")


# ------------------------------------------------------------------------------------------------- selection
def test_tables_names_odd_tables_and_a_partitioned_table_stands_for_its_partitions(pg_server, db):
    result = run_module("pg_integrity_info", params(pg_server, db, tables=['"Odd.Schema"."t.1"', "Mixed", '"qu""ote"', "audit.Log",
                                                                           "public.events"]))
    assert not result.get("failed"), result
    assert statuses(result) == {'"Odd.Schema"."t.1"': "ok", '"Odd.Schema"."Idx.Odd"': "ok", '"Mixed"': "ok", '"qu""ote"': "ok",
                                'audit."Log"': "ok", "events_1": "ok", "events_1_id_idx": "ok", "events_2": "ok", "events_2_id_idx": "ok"}
    tables_only = run_module("pg_integrity_info", params(pg_server, db, tables=["clients"], indexes=False))
    assert statuses(tables_only) == {"clients": "ok"}


def test_a_name_that_is_no_table_fails_and_checks_nothing(pg_server, db):
    result = run_module("pg_integrity_info", params(pg_server, db, tables=["clients", "no_such", "pg_catalog.pg_class"]))
    assert result.get("failed") and "'no_such'" in result["msg"] and "pg_class" in result["msg"] and "nothing was changed" in result["msg"], result
    assert traces(pg_server, db) == (0, 0)


def test_more_relations_than_max_relations_are_refused(pg_server, db):
    result = run_module("pg_integrity_info", params(pg_server, db, max_relations=5))
    assert result.get("failed") and "14 relations" in result["msg"] and "more than max_relations=5" in result["msg"], result
    assert "relations" not in result
    assert run_module("pg_integrity_info", params(pg_server, db, max_relations=14))["healthy"] is True


@pytest.mark.parametrize("more, message", [
    (dict(max_relations=0), "max_relations"),
    (dict(statement_timeout=0), "statement_timeout"),
    (dict(incident_id="bad id!"), "incident_id"),
    (dict(db="bad;name"), "not accepted"),
    (dict(db="pgi_no_such_database"), "does not exist"),
    (dict(tables=[""]), "empty name"),
])
def test_a_wrong_input_fails_clearly(pg_server, more, message):
    result = run_module("pg_integrity_info", dict(params(pg_server, "postgres"), **more))
    assert result.get("failed") and message in result["msg"], result


# ------------------------------------------------------------------------------------------ limited checks
@pytest.fixture(name="reader", scope="module")
def reader_fixture(pg_server):
    sql(pg_server, "postgres", "DO $$BEGIN CREATE ROLE %s LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$" % READER)
    return READER


def test_a_role_that_cannot_install_amcheck_reads_the_tables_only(pg_server, db, reader):
    sql(pg_server, db, 'REVOKE CREATE ON DATABASE "%s" FROM PUBLIC' % db, "GRANT USAGE ON SCHEMA audit TO %s" % reader,
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s" % reader, "GRANT SELECT ON audit.\"Log\" TO %s" % reader)
    result = run_module("pg_integrity_info", params(pg_server, db, login_user=reader))
    assert not result.get("failed"), result
    assert result["amcheck"].startswith("unavailable: not installed, and login_user %s cannot install it" % reader), result["amcheck"]
    assert "permission denied" in result["amcheck"]
    indexes = {'"Odd.Schema"."Idx.Odd"', "clients_name_hash", "clients_pkey", "events_1_id_idx", "events_2_id_idx"}
    # no grant on "Odd.Schema": its table cannot be read, which is no corruption, but no clean bill either
    assert statuses(result) == {key: "skipped" if key in indexes or key in ('"Odd.Schema"."t.1"', "never_filled") else "ok" for key in EXPECTED}
    assert all(item["problems"][0].startswith("not checked: amcheck unavailable") for item in result["relations"] if item["relation"] in indexes)
    assert sorted(result["readable_tables"]) == sorted(key for key, status in statuses(result).items() if status == "ok")
    odd = next(item for item in result["relations"] if item["relation"] == '"Odd.Schema"."t.1"')
    assert "login_user may not read it" in odd["problems"][0]
    assert result["corrupt"] == [] and result["healthy"] is False
    assert traces(pg_server, db) == (0, 0)


def test_a_check_that_outlives_statement_timeout_is_skipped_and_the_others_go_on(pg_server, db):
    holder = pg_server.connect(db)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE clients IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
        result = run_module("pg_integrity_info", params(pg_server, db, statement_timeout=1))
    finally:
        holder.rollback()
        holder.close()
    found = statuses(result)
    assert found.pop("clients") == "skipped" and found.pop("clients_pkey") == "skipped" and found.pop("client_names") == "ok", result
    assert all(status == EXPECTED[key] for key, status in found.items())
    clients = next(item for item in result["relations"] if item["relation"] == "clients")
    assert any("did not finish within statement_timeout=1 s" in problem for problem in clients["problems"]), clients
    assert result["healthy"] is False and result["corrupt"] == []
    assert traces(pg_server, db) == (0, 0)


# ------------------------------------------------------------------------------------------- real damage
def patch(path, offset, raw):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(raw)


def item_offset(page, item):
    """Where line pointer `item` (1-based) of a heap or btree page points: lp_off, the low 15 bits."""
    pointer = int.from_bytes(page[24 + 4 * (item - 1):28 + 4 * (item - 1)], "little")
    return pointer & 0x7FFF


def read_block(path, block):
    with open(path, "rb") as handle:
        handle.seek(block * BLOCK)
        return handle.read(BLOCK)


@pytest.fixture(name="damaged", scope="module")
def damaged_fixture():
    """A cluster with database `damaged`: `broken_page` (block 1's header impossible), `future_xmin` (a tuple of block
    1 with an xmin from the future), `bad_order` (a leaf key of its primary key out of order) and `healthy_rows`."""
    # No data checksums (the default of initdb): the damage is found by what it breaks, not by a checksum.
    cluster = OwnCluster("pg-damage-", settings=("autovacuum=off",))
    try:
        cluster.start()
        server = cluster.server
        server.create_database("damaged")
        rows = "INSERT INTO %s SELECT g, '" + SECRET_ROW + " ' || g FROM generate_series(1, %d) g"
        statements = []
        for table, count in (("broken_page", 2000), ("future_xmin", 2000), ("bad_order", 300), ("healthy_rows", 2000)):
            statements += ["CREATE TABLE %s (id int PRIMARY KEY, secret text)" % table, rows % (table, count),
                           "SELECT count(*) FROM %s" % table]  # sets the hint bits, written at the shutdown
        sql(server, "damaged", *statements)
        files = dict(sql(server, "damaged", "SELECT relname, pg_relation_filepath(oid) FROM pg_class "
                                            "WHERE relname IN ('broken_page', 'future_xmin', 'bad_order_pkey')"))
        assert sql(server, "damaged", "SELECT pg_relation_size('bad_order_pkey')")[0][0] == 2 * BLOCK  # metapage + one leaf
        cluster.stop()  # a clean shutdown: every page on disk, nothing replayed at the start
        # pd_lower and pd_upper beyond the page: the server refuses to read the block.
        patch(cluster.data / files["broken_page"], BLOCK + 12, b"\xff\xff\xff\xff")
        # t_xmin of the third tuple of block 1.
        path = cluster.data / files["future_xmin"]
        patch(path, BLOCK + item_offset(read_block(path, 1), 3), (0xFFFFFFF0).to_bytes(4, "little"))
        # The key (after the 8-byte index tuple header) of the fifth item of the leaf: far above the sixth.
        path = cluster.data / files["bad_order_pkey"]
        patch(path, BLOCK + item_offset(read_block(path, 1), 5) + 8, (1000000).to_bytes(4, "little"))
        cluster.start()
        yield server
    finally:
        cluster.remove()


@pytest.fixture(name="damage_report", scope="module")
def damage_report_fixture(damaged):
    result = run_module("pg_integrity_info", params(damaged, "damaged"))
    assert not result.get("failed"), result
    return result


def relation(result, name):
    return next(item for item in result["relations"] if item["relation"] == name)


def test_a_heap_page_the_server_cannot_read_makes_its_table_unreadable(damage_report):
    broken = relation(damage_report, "broken_page")
    assert broken["status"] == "unreadable", broken
    assert any(problem.startswith("read: invalid page in block 1 of relation") for problem in broken["problems"]), broken
    assert "broken_page" not in damage_report["readable_tables"]
    assert relation(damage_report, "broken_page_pkey")["status"] == "ok"  # the index itself is sound


def test_a_damaged_tuple_header_is_found_by_verify_heapam(damage_report):
    future = relation(damage_report, "future_xmin")
    assert future["status"] in ("corrupt", "unreadable"), future
    assert any(problem.startswith("block 1, offset 3: xmin 4294967280") for problem in future["problems"]), future


def test_an_index_page_out_of_order_is_corrupt_and_its_table_reads_fine(damage_report):
    index = relation(damage_report, "bad_order_pkey")
    assert index["status"] == "corrupt" and "item order invariant violated" in index["problems"][0], index
    assert relation(damage_report, "bad_order")["status"] == "ok" and "bad_order" in damage_report["readable_tables"]


def test_the_damage_report_names_exactly_the_damaged_relations_and_no_row(damage_report, damaged):
    assert statuses(damage_report)["healthy_rows"] == "ok" and statuses(damage_report)["healthy_rows_pkey"] == "ok"
    assert sorted(damage_report["corrupt"]) == ["bad_order_pkey", "broken_page", "future_xmin"]
    assert damage_report["healthy"] is False and damage_report["amcheck"] == "installed temporarily"
    assert "broken_page (unreadable)" in damage_report["msg"]
    assert SECRET_ROW not in json.dumps(damage_report)
    assert all(len(problem) <= 300 for item in damage_report["relations"] for problem in item["problems"])
    assert traces(damaged, "damaged") == (0, 0)


def test_without_amcheck_the_damaged_page_is_still_found_by_the_read(damaged):
    sql(damaged, "postgres", "DO $$BEGIN CREATE ROLE %s LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$" % READER)
    sql(damaged, "damaged", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s" % READER)
    result = run_module("pg_integrity_info", params(damaged, "damaged", login_user=READER, tables=["broken_page", "healthy_rows"]))
    assert result["amcheck"].startswith("unavailable: "), result
    assert statuses(result) == {"broken_page": "unreadable", "broken_page_pkey": "skipped", "healthy_rows": "ok", "healthy_rows_pkey": "skipped"}
    assert result["corrupt"] == ["broken_page"] and result["readable_tables"] == ["healthy_rows"] and result["healthy"] is False
