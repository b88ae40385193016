# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_stats_info against a real PostgreSQL: a table of 20000 rows read by sequential scans, a small one that never
is a finding, an index never scanned, a unique one and a constraint's that are never "unused", an INVALID index left
by a failed concurrent build; pg_stat_statements not installed, installed but not loaded (the test server), and
loaded on a second cluster of the test's own started with shared_preload_libraries=pg_stat_statements, where the top
statements are read and a secret-looking one is hidden.

The server's statistics reach the views when a session flushes them (at its end at the latest): every count a test
expects is polled for with a deadline."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from conftest import PG_BINDIR, OwnCluster, sql, wait_until  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pg_info, _pg_stats

ROWS = 20000
SECRET = "s3cr3t-never-shown"


def seed(server, db):
    sql(server, db,
        # No autovacuum on big: its "never analyzed" must not depend on when autovacuum comes by.
        "CREATE TABLE big (id int PRIMARY KEY, sender text, body text, CONSTRAINT big_body_key UNIQUE (body)) WITH (autovacuum_enabled = false)",
        "INSERT INTO big SELECT g, 'sender' || (g %% 500), 'body ' || g FROM generate_series(1, %d) g" % ROWS,
        "CREATE INDEX big_body_prefix_idx ON big (left(body, 4))",  # never scanned
        "CREATE UNIQUE INDEX big_id_sender_key ON big (id, sender)",  # never scanned, but unique
        "CREATE TABLE small (id int PRIMARY KEY, v text)", "INSERT INTO small SELECT g, 'v' FROM generate_series(1, 100) g",
        "CREATE TABLE dup (k int)", "INSERT INTO dup SELECT g % 10 FROM generate_series(1, 100) g")
    with pytest.raises(Exception, match="could not create unique index"):
        sql(server, db, "CREATE UNIQUE INDEX CONCURRENTLY dup_k_key ON dup (k)")
    # Sequential scans of big (no index on sender alone), index scans of small.
    sql(server, db, *(["SELECT count(*) FROM big WHERE sender = 'sender7'"] * 6 + ["SELECT * FROM small WHERE id = 3"] * 3))


def database(server, request):
    name = "sta_%s_%s" % (request.node.name.split("[")[0][-30:], hashlib.sha256(request.node.name.encode()).hexdigest()[:8])
    server.create_database(name)
    seed(server, name)
    return name


def conn_of(server, db, **more):
    return dict(dict(login_unix_socket=server.host, login_port=server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR), db=db), **more)


def settled(run_module, params, condition, what):
    """The module's result once `condition(result)` holds (the statistics flushed)."""
    found = {}

    def ready():
        found.update(run_module("pg_stats_info", params))
        assert not found.get("failed"), found["msg"]
        return condition(found)
    wait_until(ready, what)
    return found


def by_name(items, key="name"):
    return {item[key]: item for item in items}


def big_scanned(result):
    table = by_name(result["tables"]).get("big")
    return table is not None and table["seq_scan"] >= 6 and by_name(result["tables"]).get("small", {}).get("idx_scan")


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("change, message", [
    (dict(seq_scan_ratio=1.5), "seq_scan_ratio"), (dict(seq_scan_ratio=True), "seq_scan_ratio"), (dict(top=0), "top"),
    (dict(min_rows=-1), "min_rows"), (dict(query_chars=10001), "query_chars"), (dict(incident_id="a b"), "incident_id"),
    (dict(db="x;y"), "database name"), (dict(dead_row_ratio=0), "dead_row_ratio"), (dict(dead_row_ratio=1), "dead_row_ratio"),
])
def test_options_refused(change, message):
    params = dict(db="wa_mcp", min_rows=10000, seq_scan_ratio=0.5, dead_row_ratio=0.2, top=10, query_chars=80, incident_id=None)
    params.update(change)
    with pytest.raises(Exception, match=message):
        _pg_stats.check_params(params)


def test_refused_option_fails_saying_nothing_changed(pg_server, run_module):
    result = run_module("pg_stats_info", conn_of(pg_server, "postgres", seq_scan_ratio=2.0))
    assert result["failed"] and "seq_scan_ratio" in result["msg"] and "nothing was changed" in result["msg"]


def test_preloaded_setting():
    assert _pg_stats.preloaded("pg_stat_statements") is True
    assert _pg_stats.preloaded('auto_explain, "pg_stat_statements"') is True
    assert _pg_stats.preloaded("") is False and _pg_stats.preloaded("pg_stat_statements_x") is False
    assert _pg_stats.preloaded(None) is None


# ------------------------------------------------------------------------------------- tables and indexes
def test_tables_indexes_and_findings(pg_server, request, run_module):
    db = database(pg_server, request)
    params = conn_of(pg_server, db, incident_id="INC-2026-0042")
    result = settled(run_module, params, big_scanned, "the scans of big and small counted")
    assert result["changed"] is False and result["incident_id"] == "INC-2026-0042"
    assert [table["name"] for table in result["tables"]][0] == "big"  # most rows read by sequential scans first
    big, small = by_name(result["tables"])["big"], by_name(result["tables"])["small"]
    assert big["schema"] == "public" and big["table"] == "big" and big["n_live_tup"] == ROWS
    assert big["seq_tup_read"] >= 6 * ROWS and big["size_bytes"] > 100000 and big["last_analyze"] is None
    assert big["seq_scan_share"] > 0.5 and small["idx_scan"] >= 3
    assert "stats_reset" in result and result["server_started"]

    unused = by_name(result["unused_indexes"], "index")
    assert set(unused) == {"big_body_prefix_idx"}  # the unique index, the primary keys and the constraint's are needed
    assert unused["big_body_prefix_idx"]["definition"] == "CREATE INDEX big_body_prefix_idx ON public.big USING btree (\"left\"(body, 4))"
    assert unused["big_body_prefix_idx"]["table"] == "big" and unused["big_body_prefix_idx"]["size_bytes"] > 0
    invalid = by_name(result["invalid_indexes"], "index")
    assert set(invalid) == {"dup_k_key"} and invalid["dup_k_key"]["building_pid"] is None
    assert invalid["dup_k_key"]["definition"] == "CREATE UNIQUE INDEX dup_k_key ON public.dup USING btree (k)"

    findings = result["findings"]
    assert [item["severity"] for item in findings] == sorted((item["severity"] for item in findings), key=_pg_stats.SEVERITIES.index)
    titles = {(item["severity"], item["table"], item.get("index")): item for item in findings}
    seq = titles[("high", "big", None)]
    assert "sequential scans" in seq["title"] and "look at the statements that read it" in seq["detail"]
    assert "never analyzed" in titles[("warning", "big", None)]["title"]
    assert "pg_index state=absent" in titles[("warning", "dup", "dup_k_key")]["detail"]  # an INVALID index, whatever its table's size
    assert ("info", "big", "big_body_prefix_idx") in titles
    assert not [item for item in findings if item["table"] == "small" and item.get("index") is None]  # below min_rows

    # ANALYZE: no longer "never analyzed"; a stricter min_rows: big is no finding either; a lower ratio keeps it.
    sql(pg_server, db, "ANALYZE big")
    analyzed = settled(run_module, params, lambda found: by_name(found["tables"])["big"]["last_analyze"], "big analyzed")
    assert not [item for item in analyzed["findings"] if "never analyzed" in item["title"] and item["table"] == "big"]
    bigger = run_module("pg_stats_info", dict(params, min_rows=ROWS + 1))
    assert not [item for item in bigger["findings"] if item["table"] == "big"]
    assert [item for item in bigger["findings"] if item.get("index") == "dup_k_key"]
    top = run_module("pg_stats_info", dict(params, top=1), check_mode=True)
    assert [table["name"] for table in top["tables"]] == ["big"] and top["changed"] is False


def test_dead_rows_call_for_a_vacuum_until_it_runs(pg_server, request, run_module):
    """big has autovacuum disabled (seed): rows deleted stay dead until a VACUUM, and the finding says why."""
    db = database(pg_server, request)
    params = conn_of(pg_server, db)
    sql(pg_server, db, "DELETE FROM big WHERE id % 5 < 2")  # 8000 of 20000 rows: 40% dead
    result = settled(run_module, params, lambda found: by_name(found["tables"])["big"]["n_dead_tup"] >= 8000, "the dead rows counted")
    dead = [item for item in result["findings"] if item["table"] == "big" and "dead rows" in item["title"]]
    assert len(dead) == 1 and dead[0]["severity"] == "warning" and "(40% of its rows)" in dead[0]["title"], dead
    assert "autovacuum is disabled for this table" in dead[0]["detail"] and 'VACUUM (ANALYZE) "public"."big"' in dead[0]["detail"]
    assert "last vacuumed never" in dead[0]["detail"]
    assert by_name(result["tables"])["big"]["autovacuum_enabled"] is False and by_name(result["tables"])["small"]["autovacuum_enabled"]
    # A higher ratio or a higher min_rows: no finding; a VACUUM: no finding either.
    assert not [item for item in run_module("pg_stats_info", dict(params, dead_row_ratio=0.5))["findings"] if "dead rows" in item["title"]]
    assert not [item for item in run_module("pg_stats_info", dict(params, min_rows=ROWS + 1))["findings"] if "dead rows" in item["title"]]
    sql(pg_server, db, "VACUUM big")
    vacuumed = settled(run_module, params, lambda found: by_name(found["tables"])["big"]["n_dead_tup"] == 0, "the vacuum counted")
    assert not [item for item in vacuumed["findings"] if "dead rows" in item["title"]]
    assert by_name(vacuumed["tables"])["big"]["last_vacuum"]


def test_requested_checkpoints_and_autovacuum_off_are_findings_of_the_server(run_module):
    """A cluster of the test's own with autovacuum off, where CHECKPOINT commands outnumber the timed checkpoints."""
    cluster = OwnCluster("pg-ckpt-", settings=("autovacuum=off", "max_wal_size=256MB"))
    try:
        cluster.start()
        server = cluster.server
        params = conn_of(server, "postgres")
        quiet = run_module("pg_stats_info", params)
        assert quiet["server"]["autovacuum"] is False and quiet["server"]["max_wal_size_mb"] == 256
        assert quiet["server"]["checkpoints"]["requested"] < _pg_stats.MIN_CHECKPOINTS
        assert not [item for item in quiet["findings"] if "checkpoints" in item["title"]]  # too few to say anything
        off = [item for item in quiet["findings"] if item["title"] == "autovacuum is off on the server"]
        assert len(off) == 1 and off[0]["severity"] == "high" and off[0]["table"] is None
        assert quiet["findings"][0] is not None and quiet["findings"][0]["severity"] == "high"
        sql(server, "postgres", *(["CHECKPOINT"] * 12))
        busy = settled(run_module, params, lambda found: found["server"]["checkpoints"]["requested"] >= 12, "the checkpoints counted")
        ckpt = [item for item in busy["findings"] if item["title"].startswith("checkpoints are mostly requested")]
        assert len(ckpt) == 1 and ckpt[0]["severity"] == "warning" and ckpt[0]["table"] is None, busy["findings"]
        assert "max_wal_size (256 MB)" in ckpt[0]["detail"] and "max_wal_size = '512MB'" in ckpt[0]["detail"]
    finally:
        cluster.remove()


def test_a_locked_table_is_read_around_never_waited_for(pg_server, request, run_module):
    """A degraded database is what this module diagnoses: a migration holding ACCESS EXCLUSIVE on a table, a query
    queued behind it. The read must not queue too: the table's and its indexes' size and definition are left out
    (pg_get_indexdef and the sizes would wait for the lock), said in a warning, and everything else is read."""
    db = database(pg_server, request)
    holder = pg_server.connect(db)
    try:
        holder.cursor().execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        waiter = subprocess.Popen([str(PG_BINDIR / "psql"), "-h", pg_server.host, "-p", str(pg_server.port), "-U", "postgres", "-d", db,
                                   "-c", "SELECT count(*) FROM big"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: sql(pg_server, db, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] > 0, "a query queued behind the lock")
            result = run_module("pg_stats_info", conn_of(pg_server, db))
        finally:
            waiter.kill()
            waiter.wait()
    finally:
        holder.rollback()
        holder.close()
    assert not result.get("failed"), result["msg"]
    assert any("ACCESS EXCLUSIVE lock is held or awaited on: big" in warning for warning in result.get("warnings", [])), result.get("warnings")
    big = next(table for table in result["tables"] if table["name"] == "big")
    assert big["size_bytes"] is None and big["seq_scan"] >= 6
    unused = {index["index"]: index for index in result["unused_indexes"]}
    assert unused["big_body_prefix_idx"]["definition"] is None and unused["big_body_prefix_idx"]["size_bytes"] is None
    small = next(table for table in result["tables"] if table["name"] == "small")
    assert small["size_bytes"] > 0, "a table nobody locks is read in full"


def test_hostile_names_are_returned_as_keys(pg_server, request, run_module):
    db = "sta_hostile_" + hashlib.sha256(request.node.name.encode()).hexdigest()[:8]
    pg_server.create_database(db)
    sql(pg_server, db, 'CREATE TABLE "x""; DROP TABLE y; --" (id int)',
        'INSERT INTO "x""; DROP TABLE y; --" SELECT g FROM generate_series(1, %d) g' % ROWS,
        'SELECT count(*) FROM "x""; DROP TABLE y; --"')
    result = settled(run_module, conn_of(pg_server, db, min_rows=100),
                     lambda found: found["tables"] and found["tables"][0]["seq_scan"], "the scan counted")
    assert result["tables"][0]["table"] == '"x""; DROP TABLE y; --"'
    analyze = [item for item in result["findings"] if "never analyzed" in item["title"]][0]
    assert 'ANALYZE "public"."x""; DROP TABLE y; --"' in analyze["detail"]


# --------------------------------------------------------------------------------------- pg_stat_statements
def test_statements_not_installed(pg_server, run_module):
    result = run_module("pg_stats_info", conn_of(pg_server, "postgres"))
    assert result["statements_available"] is False and result["statements"] == []
    assert "not installed in postgres" in result["statements_reason"]


def test_statements_installed_but_not_loaded(pg_server, request, run_module):
    """The test server has no shared_preload_libraries: the superuser reads that in pg_settings, a role that may not
    read the setting learns it from the view's error."""
    db = "sta_notloaded_" + hashlib.sha256(request.node.name.encode()).hexdigest()[:8]
    pg_server.create_database(db)
    sql(pg_server, db, "CREATE EXTENSION pg_stat_statements",
        "DO $$BEGIN CREATE ROLE pgst_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    for user in ("postgres", "pgst_reader"):
        result = run_module("pg_stats_info", conn_of(pg_server, db, login_user=user))
        assert not result.get("failed"), result["msg"]
        assert result["statements_available"] is False and "not loaded" in result["statements_reason"], result["statements_reason"]
        assert "shared_preload_libraries" in result["statements_reason"]


@pytest.fixture(name="loaded", scope="module")
def loaded_fixture():
    """A cluster with pg_stat_statements loaded, database `app` seeded, the extension in it, and statements run: one
    whose text names a password (hidden), the scans of big (the slowest)."""
    cluster = OwnCluster("pg-stats-", settings=("shared_preload_libraries=pg_stat_statements",))
    try:
        cluster.start()
        server = cluster.server
        server.create_database("app")
        sql(server, "app", "CREATE EXTENSION pg_stat_statements", "SELECT pg_stat_statements_reset()")
        seed(server, "app")
        sql(server, "app", "CREATE TABLE users (name text, password_hash text)",
            "INSERT INTO users VALUES ('alice', '%s')" % SECRET,
            "SELECT count(*) FROM users WHERE password_hash = '%s'" % SECRET)
        server.create_database("elsewhere")
        sql(server, "elsewhere", "CREATE SCHEMA hidden", "CREATE EXTENSION pg_stat_statements SCHEMA hidden",
            "CREATE ROLE pgst_outsider LOGIN", "CREATE TABLE zq9 (id int)", "SELECT count(*) FROM zq9")
        yield server
    finally:
        cluster.remove()


def test_statements_top_by_total_time_secrets_hidden(loaded, run_module):
    params = conn_of(loaded, "app", query_chars=30, top=50)
    result = settled(run_module, params, lambda found: found["statements_available"] and len(found["statements"]) >= 3,
                     "the statements counted")
    assert "statements_reason" not in result
    rows = result["statements"]
    assert [row["total_ms"] for row in rows] == sorted((row["total_ms"] for row in rows), reverse=True)
    scans = [row for row in rows if row["query"] and row["query"].startswith("SELECT count(*) FROM big")]
    assert scans and scans[0]["calls"] == 6 and scans[0]["rows"] == 6 and scans[0]["user"] == "postgres"
    assert all(row["query"] is None or len(row["query"]) <= 30 or row["query"] == _pg_info.HIDDEN for row in rows)
    hidden = [row for row in rows if row["query"] == _pg_info.HIDDEN]
    assert hidden and SECRET not in str(result) and "password_hash" not in str(rows)
    # Only the statements of the database asked.
    assert sql(loaded, "app", "SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%zq9%'")[0][0] >= 2
    assert "zq9" not in str(rows)
    assert "statements from pg_stat_statements" in result["msg"]
    assert "look at the statements that read it (statements above)" in str(result["findings"])
    few = run_module("pg_stats_info", dict(params, top=2, query_chars=0), check_mode=True)
    assert len(few["statements"]) == 2 and all(row["query"] is None for row in few["statements"])


def test_statements_no_permission(loaded, run_module):
    result = run_module("pg_stats_info", conn_of(loaded, "elsewhere", login_user="pgst_outsider"))
    assert not result.get("failed"), result["msg"]
    assert result["statements_available"] is False and "may not read pg_stat_statements" in result["statements_reason"]
    assert "no USAGE on schema hidden" in result["statements_reason"]
