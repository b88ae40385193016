# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partitioned tables and unusual table names through pg_backup, dump_verify, pg_restore and pg_row_counts, end to end,
against a real PostgreSQL 15: every format, plain restores with one and two jobs, swap and in_place.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import COLLECTIONS, PG_BINDIR  # pylint: disable=import-error

# A messaging service's tables partitioned by month (range), a month sub-partitioned by hash, a default partition,
# a list partitioning, a foreign key to a partitioned table, and a hash partitioning on an enum (which pg_dump
# loads through its root: the server may put a row in another partition than before).
PARTITIONED_SQL = r"""
CREATE TYPE channel AS ENUM ('sms', 'whatsapp', 'email');
CREATE TABLE clients (id int PRIMARY KEY, name text);
INSERT INTO clients SELECT g, 'client ' || g FROM generate_series(1, 20) g;
CREATE TABLE messages (id bigint, sent date NOT NULL, client_id int REFERENCES clients, body text, PRIMARY KEY (id, sent))
  PARTITION BY RANGE (sent);
CREATE TABLE messages_2026_10 PARTITION OF messages FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE messages_2026_11 PARTITION OF messages FOR VALUES FROM ('2026-11-01') TO ('2026-12-01') PARTITION BY HASH (id);
CREATE TABLE messages_2026_11_h0 PARTITION OF messages_2026_11 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE messages_2026_11_h1 PARTITION OF messages_2026_11 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE messages_default PARTITION OF messages DEFAULT;
CREATE INDEX messages_body ON messages (body);
INSERT INTO messages SELECT g, DATE '2026-09-15' + (g % 100), 1 + g % 20, 'message ' || g FROM generate_series(1, 4000) g;
CREATE TABLE replies (id int PRIMARY KEY, message_id bigint, message_sent date, FOREIGN KEY (message_id, message_sent) REFERENCES messages);
INSERT INTO replies SELECT g, g, DATE '2026-09-15' + (g % 100) FROM generate_series(1, 300) g;
CREATE TABLE audit (region text, n int) PARTITION BY LIST (region);
CREATE TABLE audit_eu PARTITION OF audit FOR VALUES IN ('eu');
CREATE TABLE audit_america PARTITION OF audit FOR VALUES IN ('us', 'ca');
CREATE TABLE audit_other PARTITION OF audit DEFAULT;
INSERT INTO audit SELECT (ARRAY['eu', 'us', 'ca', 'jp', 'eu'])[1 + g % 5], g FROM generate_series(1, 1000) g;
CREATE TABLE events (id int, kind channel) PARTITION BY HASH (kind);
CREATE TABLE events_0 PARTITION OF events FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE events_1 PARTITION OF events FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE events_2 PARTITION OF events FOR VALUES WITH (MODULUS 3, REMAINDER 2);
INSERT INTO events SELECT g, (ARRAY['sms', 'whatsapp', 'email'])[1 + g % 3]::channel FROM generate_series(1, 600) g;
CREATE TABLE empty_parent (id int) PARTITION BY RANGE (id);
"""
LEAVES = ["clients", "messages_2026_10", "messages_2026_11_h0", "messages_2026_11_h1", "messages_default", "replies",
          "audit_eu", "audit_america", "audit_other"]
ENUM_LEAVES = ["events_0", "events_1", "events_2"]
TOTALS = {"messages": 4000, "messages_2026_11": None, "audit": 1000, "events": 600, "empty_parent": 0}

# Names that need quoting (dots, spaces, quotes, mixed case, non-ASCII, reserved words), in odd schemas too, with the
# key each has in manifests and results.
NAMES = {
    ("public", "plain_lower"): "plain_lower",
    ("public", "a.b"): '"a.b"',
    ("public", "with space"): '"with space"',
    ("public", 'quo"te'): '"quo""te"',
    ("public", "MixedCase"): '"MixedCase"',
    ("public", "ünïcødé表"): '"ünïcødé表"',
    ("public", "select"): "select",
    ("public", "order"): "order",
    ("Odd.Schema", "t.1"): '"Odd.Schema"."t.1"',
    ("select", "from"): "select.from",
    ("ünï", "naïve"): '"ünï"."naïve"',
    ("Odd.Schema", "Part.Root"): '"Odd.Schema"."Part.Root"',
    ("Odd.Schema", "p 1"): '"Odd.Schema"."p 1"',
}


def ident(name):
    return '"%s"' % name.replace('"', '""')


def names_sql():
    sql = ['CREATE SCHEMA "Odd.Schema"; CREATE SCHEMA "select"; CREATE SCHEMA "ünï";']
    for number, (schema, name) in enumerate(sorted(NAMES), start=1):
        table = "%s.%s" % (ident(schema), ident(name))
        if name == "p 1":
            continue
        if name == "Part.Root":
            sql.append("CREATE TABLE %s (id int, v text) PARTITION BY LIST (v);" % table)
            sql.append('CREATE TABLE "Odd.Schema"."p 1" PARTITION OF %s DEFAULT;' % table)
            sql.append("INSERT INTO %s SELECT g, 'v' || g FROM generate_series(1, 7) g;" % table)
            continue
        sql.append("CREATE TABLE %s (id int PRIMARY KEY, v text);" % table)
        sql.append("CREATE INDEX ON %s (v);" % table)
        sql.append("INSERT INTO %s SELECT g, 'v' || g FROM generate_series(1, %d) g;" % (table, number))
    sql.append('INSERT INTO "Odd.Schema"."t.1" SELECT g, NULL FROM generate_series(1, 20) g ON CONFLICT DO NOTHING;'
               'ALTER TABLE "select"."from" ADD FOREIGN KEY (id) REFERENCES "Odd.Schema"."t.1";')
    return "\n".join(sql)


class Db:
    def __init__(self, server):
        self.server = server

    def psql(self, db, sql):
        res = subprocess.run([str(PG_BINDIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                             input=sql, capture_output=True, text=True, encoding="utf-8",
                             env=dict(os.environ, PGCLIENTENCODING="UTF8", **self.server.env), check=False)
        if res.returncode != 0:
            raise AssertionError(res.stderr)
        return res.stdout.strip()

    def create(self, name, sql):
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE); CREATE DATABASE "{name}"')
        self.psql(name, sql)

    def count(self, db, schema, name, only=True):
        return int(self.psql(db, "SELECT count(*) FROM %s %s.%s" % ("ONLY" if only else "", ident(schema), ident(name))))

    def structure(self, db):
        """Tables with their partition bounds, indexes and constraints: what a restore must rebuild."""
        return self.psql(db, "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ("
                             "SELECT n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(pg_get_expr(c.relpartbound, c.oid), '') AS x "
                             "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relkind IN ('r', 'p', 'i', 'I') "
                             "UNION ALL SELECT conname || ' ' || contype::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
                             "WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)) s")


@pytest.fixture(scope="module", name="db")
def db_fixture(pg_server):
    db = Db(pg_server)
    db.create("parted_src", PARTITIONED_SQL)
    db.create("names_src", names_sql())
    return db


@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


def backup_each_format(source, pg_server, backup_key, tmp_path_factory):
    """Signed backups, as db_backup makes them."""
    from conftest import run_module  # pylint: disable=import-error,import-outside-toplevel
    conn = dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))
    made = {}
    for fmt in ("plain", "custom", "directory"):
        dest = tmp_path_factory.mktemp("%s-%s" % (source, fmt))
        result = run_module("pg_backup", dict(db=source, dest=str(dest), format=fmt, stamp="2026-11-21", **conn, **backup_key.signing()),
                            tmpdir=str(dest.parent))
        assert not result.get("failed"), result.get("msg")
        made[source, fmt] = result
    return made


@pytest.fixture(scope="module", name="parted")
def parted_fixture(db, pg_server, backup_key, tmp_path_factory):  # pylint: disable=unused-argument
    """A backup of parted_src in each format (pg_backup results by (source, format))."""
    return backup_each_format("parted_src", pg_server, backup_key, tmp_path_factory)


@pytest.fixture(scope="module", name="named")
def named_fixture(db, pg_server, backup_key, tmp_path_factory):  # pylint: disable=unused-argument
    """A backup of names_src in each format."""
    return backup_each_format("names_src", pg_server, backup_key, tmp_path_factory)


RESTORES = [("plain", 1, "swap"), ("plain", 2, "swap"), ("plain", 2, "in_place"), ("custom", 2, "swap"), ("directory", 2, "swap")]


def restore(run_module, db, backups, conn, source, fmt, jobs, strategy, trust):
    """Restore a backup into a database of its own (allow_other_db: the manifest names the source)."""
    live = "%s_%s_%d_%s" % (source.split("_")[0], fmt, jobs, strategy)
    db.create(live, "SELECT 1")
    result = run_module("pg_restore", dict(src=backups[source, fmt]["path"], db=live, incident_id="INC-P", allow_other_db=True,
                                           jobs=jobs, strategy=strategy, force=True, expect_tables=[], **conn, **trust))
    assert result.get("verified"), result.get("msg")
    return live, result


# ------------------------------------------------------------------------------------------------ 5. partitions
def test_the_manifest_of_a_partitioned_database_counts_each_partition_and_each_tree(db, parted):
    for fmt in ("plain", "custom", "directory"):
        counts = parted["parted_src", fmt]["manifest"]["row_counts"]
        for leaf in LEAVES + ENUM_LEAVES:
            assert counts[leaf] == db.count("parted_src", "public", leaf), (fmt, leaf)
        for parent, total in TOTALS.items():
            assert counts[parent] == (total if total is not None else db.count("parted_src", "public", parent, only=False))


@pytest.mark.parametrize("fmt", ["plain", "custom", "directory"])
def test_dump_verify_accepts_a_partitioned_database_with_exact_partition_counts(db, run_module, parted, backup_key, fmt):
    result = run_module("dump_verify", dict(src=parted["parted_src", fmt]["path"], expect_tables=["messages", "messages_default"],
                                            **backup_key.trust()))
    assert result.get("verified"), result.get("msg")
    for leaf in LEAVES:
        assert result["row_counts"][leaf] == db.count("parted_src", "public", leaf)
    assert result["row_counts"]["messages"] == 4000 and result["row_counts"]["events"] == 600
    assert not set(ENUM_LEAVES) & set(result["row_counts"])  # loaded through their root: only the root's total is known


@pytest.mark.parametrize("fmt, jobs, strategy", RESTORES)
def test_a_partitioned_database_is_restored_with_every_partition_and_its_rows(db, run_module, parted, conn, backup_key, fmt, jobs,
                                                                              strategy):
    live, result = restore(run_module, db, parted, conn, "parted_src", fmt, jobs, strategy, backup_key.trust())
    for leaf in LEAVES:
        assert db.count(live, "public", leaf) == db.count("parted_src", "public", leaf), leaf
        assert result["row_counts"][leaf] == db.count("parted_src", "public", leaf)
    for parent in TOTALS:
        assert db.count(live, "public", parent, only=False) == db.count("parted_src", "public", parent, only=False)
    assert db.structure(live) == db.structure("parted_src")
    expected = {t: n for t, n in parted["parted_src", fmt]["manifest"]["row_counts"].items() if t not in ENUM_LEAVES}
    counted = run_module("pg_row_counts", dict(db=live, expected=expected, **conn))
    assert not counted.get("failed") and counted["mismatches"] == {}, counted
    assert counted["row_counts"]["messages"] == 4000 and counted["row_counts"]["messages_2026_11"] > 0


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_a_parallel_archive_restore_builds_partitioned_indexes_in_one_worker(db, parted, conn, pg_server, backup_key, tmp_path_factory,
                                                                             fmt):
    """pg_restore -j2 of a partitioned archive can fail with "deadlock detected" (workers attaching a partitioned
    table's indexes): seen on a clean CI run, not reproducible on demand. Post-data runs in one worker then; an
    archive without partitions keeps -j for everything."""
    from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_restore  # pylint: disable=import-outside-toplevel
    restorer = _pg_restore.Restorer(_pg.Runtime.from_params(conn), "parted_passes", "INC-P", jobs=3)
    assert restorer._archive_passes(parted["parted_src", fmt]["path"]) == [  # pylint: disable=protected-access
        (["--section=pre-data", "--section=data"], 3), (["--section=post-data"], 1)]
    db.create("flat_src", "CREATE TABLE t (id int PRIMARY KEY); CREATE INDEX ON t ((id + 1))")
    flat = backup_each_format("flat_src", pg_server, backup_key, tmp_path_factory)
    assert restorer._archive_passes(flat["flat_src", fmt]["path"]) == [([], 3)]  # pylint: disable=protected-access


def test_check_mode_predicts_a_partitioned_restore(db, run_module, parted, conn, backup_key):
    db.create("parted_src_check", "SELECT 1")
    result = run_module("pg_restore", dict(src=parted["parted_src", "plain"]["path"], db="parted_src_check", allow_other_db=True,
                                           incident_id="INC-P", expect_tables=["messages"], **conn, **backup_key.trust()), check_mode=True)
    assert result["changed"] and not result.get("failed"), result.get("msg")
    assert result["dump_row_counts"]["messages_default"] == db.count("parted_src", "public", "messages_default")


# ------------------------------------------------------------------------------------------------ 6. table names
def test_the_manifest_names_every_table_unambiguously(db, named):
    for fmt in ("plain", "custom", "directory"):
        manifest = named["names_src", fmt]["manifest"]
        assert sorted(manifest["tables"]) == sorted(NAMES.values())
        for (schema, name), key in NAMES.items():
            assert manifest["row_counts"][key] == db.count("names_src", schema, name, only=name != "Part.Root"), key


@pytest.mark.parametrize("fmt, jobs, strategy", RESTORES)
def test_tables_with_unusual_names_are_restored_and_verified(db, run_module, named, conn, backup_key, fmt, jobs, strategy):
    live, result = restore(run_module, db, named, conn, "names_src", fmt, jobs, strategy, backup_key.trust())
    for (schema, name), key in NAMES.items():
        assert result["row_counts"][key] == db.count(live, schema, name, only=name != "Part.Root") > 0, key
    assert db.structure(live) == db.structure("names_src")
    verified = run_module("dump_verify", dict(src=named["names_src", fmt]["path"], expect_tables=['"a.b"', "select.from"], **backup_key.trust()))
    assert verified.get("verified") and verified["row_counts"] == named["names_src", fmt]["manifest"]["row_counts"], verified


def test_row_counts_takes_table_keys_and_names_as_users_write_them(db, run_module, conn):
    """Keys as manifests write them, and as a user or an older manifest does (`public.order`, `MixedCase`)."""
    written = {'"a.b"': ("public", "a.b"), '"Odd.Schema"."t.1"': ("Odd.Schema", "t.1"), '"quo""te"': ("public", 'quo"te'),
               "select.from": ("select", "from"), "public.order": ("public", "order"), "MixedCase": ("public", "MixedCase"),
               "with space": ("public", "with space")}
    expected = {key: db.count("names_src", *name) for key, name in written.items()}
    result = run_module("pg_row_counts", dict(db="names_src", tables=sorted(written), expected=expected, **conn))
    assert not result.get("failed"), result.get("msg")
    assert result["row_counts"] == {NAMES[name]: db.count("names_src", *name) for name in written.values()}
    assert result["mismatches"] == {}


def run_in_ascii_locale(name, params, tmp_path):
    """The module in its own process with the environment of a systemd job: LANG unset, the C locale, and Python not
    told to read it as UTF-8 (so a decode that trusts the locale fails on the first non-ASCII name)."""
    args = tmp_path / ("args-%s.json" % name)
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LC_", "LANG", "PYTHON"))}
    env.update(LC_ALL="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", PYTHONPATH=str(COLLECTIONS))
    res = subprocess.run([sys.executable, "-m", f"ansible_collections.runbooks.incident.plugins.modules.{name}", str(args)],
                         capture_output=True, env=env, check=False, timeout=120)
    assert b"Traceback" not in res.stdout + res.stderr, (res.stdout + res.stderr).decode("utf-8", "replace")
    return json.loads(res.stdout)


def test_non_ascii_table_names_work_whatever_the_locale(db, conn, backup_key, tmp_path):
    db.create("unicode_src", 'CREATE SCHEMA "ünï"; CREATE TABLE "ünï"."naïve" (id int); INSERT INTO "ünï"."naïve" VALUES (1), (2);'
                             'CREATE TABLE "表" (id int PRIMARY KEY); INSERT INTO "表" VALUES (1);')
    backup = run_in_ascii_locale("pg_backup", dict(db="unicode_src", dest=str(tmp_path), **conn, **backup_key.signing()), tmp_path)
    assert backup.get("changed") and backup["manifest"]["row_counts"] == {'"ünï"."naïve"': 2, '"表"': 1}, backup
    verified = run_in_ascii_locale("dump_verify", dict(src=backup["path"], expect_tables=['"表"'], **backup_key.trust()), tmp_path)
    assert verified.get("verified"), verified
    counted = run_in_ascii_locale("pg_row_counts", dict(db="unicode_src", **conn), tmp_path)
    assert counted["row_counts"] == {'"ünï"."naïve"': 2, '"表"': 1}, counted


def test_a_latin1_database_with_non_ascii_names_is_backed_up_and_restored(db, run_module, conn, backup_key, tmp_path):
    """Its dump is written in LATIN1 (the database's encoding), its names read back from the dump in that encoding."""
    for name in ("latin_src", "latin_live"):
        db.psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE); "
                            f"CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    db.psql("latin_src", 'CREATE TABLE "café" (v text PRIMARY KEY); INSERT INTO "café" VALUES (\'crème\'), (\'brûlée\');')
    backup = run_module("pg_backup", dict(db="latin_src", dest=str(tmp_path), **conn, **backup_key.signing()))
    assert backup.get("changed") and backup["manifest"]["row_counts"] == {'"café"': 2}, backup
    restored = run_module("pg_restore", dict(src=backup["path"], db="latin_live", incident_id="INC-L", allow_other_db=True,
                                             expect_tables=['"café"'], **conn, **backup_key.trust()))
    assert restored.get("verified") and restored["row_counts"] == {'"café"': 2}, restored.get("msg")
    assert db.psql("latin_live", 'SELECT string_agg(v, \',\' ORDER BY v) FROM "café"') == "brûlée,crème"
