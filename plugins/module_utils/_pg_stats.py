# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why is the database slow: what its statistics say (pg_stats_info). PRIVATE to the collection: no compatibility promise.

One statement (one snapshot, one JSON value) reads the tables' scan counters (pg_stat_user_tables), the indexes never
scanned, the INVALID indexes (what a failed or cancelled CREATE INDEX CONCURRENTLY leaves), the window the counters
cover (pg_stat_database.stats_reset) and whether pg_stat_statements can be read; a second statement reads the top
statements of pg_stat_statements when it can. Every connection is read-only (_pg_info.read_only_runtime).

Sizes are read without waiting: a relation someone holds or awaits an ACCESS EXCLUSIVE lock on has no size (null),
since asking for it would queue behind that lock; and every statement runs under a lock_timeout as a last guard.
Statements that may hold a secret are hidden by the rule of _pg_info (the whole text is tested by the server).
"""
from __future__ import annotations

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info, _run_lock

SEVERITIES = ("high", "warning", "info")
MAX_TOP = 1000
LOCK_TIMEOUT_MS = 10000  # the reads never wait longer for a lock
USER_SCHEMA_SQL = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
                   "AND n.nspname NOT LIKE 'pg\\_temp\\_%'")
# Whether asking a relation's size would wait: an ACCESS EXCLUSIVE lock held or requested on it.
LOCKED_SQL = ("EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' "
              "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.relation IN ({oids}))")
STATEMENTS_REASONS = {
    "not installed": "the extension pg_stat_statements is not installed in {db} (CREATE EXTENSION pg_stat_statements, "
                     "with pg_stat_statements in shared_preload_libraries)",
    "not loaded": "pg_stat_statements is installed in {db} but its library is not loaded (add it to shared_preload_libraries "
                  "and restart the server)",
    "no permission": "login_user {user} may not read pg_stat_statements in {db}: {detail}",
}

STATS_SQL = """
SELECT jsonb_build_object(
  'login_user', current_user,
  'stats_reset', (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
  'server_started', pg_postmaster_start_time(),
  'read_all_stats', pg_has_role('pg_read_all_stats', 'USAGE'),
  'version', current_setting('server_version_num')::int,
  'autovacuum', current_setting('autovacuum') = 'on',
  'max_wal_size_mb', (SELECT setting::bigint FROM pg_settings WHERE name = 'max_wal_size'),
  'checkpoint_timeout', current_setting('checkpoint_timeout'),
  'statements', (
    SELECT jsonb_build_object('schema', n.nspname, 'version', e.extversion,
                              'preload', (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),
                              'may_read', has_schema_privilege(n.oid, 'USAGE')
                                          AND coalesce(has_table_privilege(to_regclass(format('%I.pg_stat_statements', n.nspname)),
                                                                           'SELECT'), false))
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'),
  'tables', coalesce((
    SELECT jsonb_agg(jsonb_build_object(
        'schema', s.schemaname, 'name', s.relname, 'seq_scan', s.seq_scan, 'seq_tup_read', s.seq_tup_read,
        'idx_scan', s.idx_scan, 'idx_tup_fetch', s.idx_tup_fetch, 'n_live_tup', s.n_live_tup,
        'n_dead_tup', s.n_dead_tup, 'last_vacuum', s.last_vacuum, 'last_autovacuum', s.last_autovacuum,
        'autovacuum_enabled', NOT coalesce('autovacuum_enabled=false' = ANY(c.reloptions), false),
        'size_bytes', CASE WHEN NOT {table_locked} THEN pg_table_size(s.relid) END,
        'last_analyze', s.last_analyze, 'last_autoanalyze', s.last_autoanalyze)
      ORDER BY s.seq_tup_read DESC, s.schemaname, s.relname)
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE c.relkind IN ('r', 'm')), '[]'),
  'indexes', coalesce((
    SELECT jsonb_agg(jsonb_build_object(
        'schema', n.nspname, 'table', t.relname, 'index', c.relname, 'idx_scan', s.idx_scan,
        'valid', x.indisvalid, 'ready', x.indisready, 'unique', x.indisunique, 'primary', x.indisprimary,
        'constraint', (SELECT k.conname FROM pg_constraint k WHERE k.conindid = c.oid AND k.contype IN ('p', 'u', 'x')
                       ORDER BY k.conname LIMIT 1),
        'table_rows', ts.n_live_tup,
        'building_pid', (SELECT p.pid FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid LIMIT 1),
        'size_bytes', CASE WHEN NOT {index_locked} THEN pg_relation_size(c.oid) END,
        -- pg_get_indexdef waits for a lock on the table: not read while one is held or awaited (null).
        'definition', CASE WHEN NOT {index_locked} THEN pg_get_indexdef(c.oid) END)
      ORDER BY n.nspname, t.relname, c.relname)
    FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = c.oid LEFT JOIN pg_stat_user_tables ts ON ts.relid = t.oid
    WHERE c.relkind = 'i' AND c.relpersistence <> 't' AND {user_schema}), '[]'))
""".format(table_locked=LOCKED_SQL.format(oids="s.relid, c.reltoastrelid"),
           index_locked=LOCKED_SQL.format(oids="c.oid, x.indrelid"), user_schema=USER_SCHEMA_SQL)


# Checkpoints since the counters were reset: pg_stat_checkpointer from PostgreSQL 17, pg_stat_bgwriter before.
CHECKPOINTS_SQL = {
    170000: "SELECT jsonb_build_object('timed', num_timed, 'requested', num_requested, 'since', stats_reset) FROM pg_stat_checkpointer",
    0: "SELECT jsonb_build_object('timed', checkpoints_timed, 'requested', checkpoints_req, 'since', stats_reset) FROM pg_stat_bgwriter",
}
# Fewer checkpoints than this since the reset say nothing about why they happen.
MIN_CHECKPOINTS = 10
# Fewer dead rows than this are never worth a VACUUM of their own.
MIN_DEAD_ROWS = 1000


class StatsError(Exception):
    """A refused input: the message says what, and nothing was read."""


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise StatsError("%s is %r: it must be a whole number, %d to %d" % (name, value, minimum, maximum))
    return value


def check_params(params):
    """StatsError (or _pg.PgError for the database name and query_chars) for an option that is not valid."""
    _pg.check_name(params["db"])
    _pg_info.check_query_chars(params["query_chars"])
    _whole("min_rows", params["min_rows"], 0, 2 ** 63 - 1)
    _whole("top", params["top"], 1, MAX_TOP)
    ratio = params["seq_scan_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise StatsError("seq_scan_ratio is %r: a share of the scans, 0 or more and less than 1 (0.5: half)" % (ratio,))
    dead = params["dead_row_ratio"]
    if isinstance(dead, bool) or not isinstance(dead, (int, float)) or not 0 < dead < 1:
        raise StatsError("dead_row_ratio is %r: a share of a table's rows, more than 0 and less than 1 (0.2: a fifth)" % (dead,))
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(incident_id):
        raise StatsError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))


def runtime_of(params):
    """The read-only connection, never waiting long for a lock."""
    runtime = _pg_info.read_only_runtime(params)
    runtime.pgoptions = _pg.session_options(_pg_info.READ_ONLY + (("lock_timeout", "%d" % LOCK_TIMEOUT_MS),))
    return runtime


# ---------------------------------------------------------------------------------------------- statements
def preloaded(setting):
    """Whether pg_stat_statements is in a shared_preload_libraries value; None when the value could not be read."""
    if setting is None:
        return None
    return "pg_stat_statements" in [item.strip().strip('"').strip() for item in setting.split(",")]


def statements_sql(schema, version, top, query_chars):
    """The top statements of the database by total execution time (extension 1.8+ names the columns *_exec_time)."""
    newer = tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) >= (1, 8)
    total, mean = ("total_exec_time", "mean_exec_time") if newer else ("total_time", "mean_time")
    return """
SELECT coalesce(jsonb_agg(jsonb_build_object(
    'queryid', s.queryid, 'user', r.rolname, 'calls', s.calls, 'total_ms', round(s.{total}::numeric, 3),
    'mean_ms', round(s.{mean}::numeric, 3), 'rows', s.rows, 'query', left(s.query, {chars}),
    'query_secret', s.query ~* {secret}) ORDER BY s.{total} DESC), '[]')
FROM (SELECT * FROM {view} WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      ORDER BY {total} DESC LIMIT {top}) s LEFT JOIN pg_roles r ON r.oid = s.userid
""".format(total=total, mean=mean, chars=query_chars, secret=_pg.quote_literal(_pg_info.SECRET_WORDS_PATTERN),
           view="%s.pg_stat_statements" % _pg.quote_ident(schema), top=top)


def statements(runtime, db, found, top, query_chars):
    """(available, reason or None, [statements]) of pg_stat_statements in the database."""
    extension, user = found["statements"], found["login_user"]
    if extension is None:
        return False, STATEMENTS_REASONS["not installed"].format(db=db), []
    if preloaded(extension["preload"]) is False:
        return False, STATEMENTS_REASONS["not loaded"].format(db=db), []
    if not extension["may_read"]:
        return False, STATEMENTS_REASONS["no permission"].format(
            db=db, user=user, detail="no USAGE on schema %s or no SELECT on its view" % extension["schema"]), []
    try:
        rows = _pg_info.answer(runtime, db, statements_sql(extension["schema"], extension["version"], top, query_chars))
    except _pg.PgError as exc:
        text = str(exc)
        if "shared_preload_libraries" in text:
            return False, STATEMENTS_REASONS["not loaded"].format(db=db), []
        if "permission denied" in text:
            return False, STATEMENTS_REASONS["no permission"].format(db=db, user=user, detail=text), []
        raise
    return True, None, _pg_info.shown_queries(rows, query_chars)


# ------------------------------------------------------------------------------------------------ findings
def seq_scan_share(table):
    scans = (table["seq_scan"] or 0) + (table["idx_scan"] or 0)
    return round(float(table["seq_scan"] or 0) / scans, 4) if scans else None


def _finding(severity, title, detail, table, index=None):
    item = dict(severity=severity, title=title, detail=detail, table=table)
    if index is not None:
        item["index"] = index
    return item


def _size(size):
    if size is None:
        return "size unknown (locked)"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024.0
    return "%d B" % size


def findings(tables, unused, invalid, params, statements_available):
    """What the scans and indexes say: big tables read mostly by sequential scans, INVALID indexes, big tables never
    analyzed, unused indexes of big tables. Tables below min_rows are never findings."""
    min_rows, ratio = params["min_rows"], params["seq_scan_ratio"]
    look = ("look at the statements that read it (statements above)" if statements_available
            else "look at the statements that read it (pg_stat_statements is not available here: the server's slow query log)")
    found = []
    for table in tables:
        if (table["n_live_tup"] or 0) < min_rows:
            continue
        share = table["seq_scan_share"]
        if share is not None and share > ratio and table["seq_scan"]:
            found.append(_finding("high", "table %s (%d rows) is read mostly by sequential scans" % (table["table"], table["n_live_tup"]),
                                  "%d of %d scans were sequential (%.0f%%), %d rows read by them; an index may be missing: %s "
                                  "and its WHERE and JOIN columns, then create one with runbooks.incident.pg_index" % (
                                      table["seq_scan"], table["seq_scan"] + (table["idx_scan"] or 0), share * 100,
                                      table["seq_tup_read"], look), table["table"]))
        if table["last_analyze"] is None and table["last_autoanalyze"] is None:
            found.append(_finding("warning", "table %s (%d rows) was never analyzed" % (table["table"], table["n_live_tup"]),
                                  "the planner has no statistics on its columns and may choose bad plans: run ANALYZE %s"
                                  % _pg.qualified(table["table"]), table["table"]))
    for index in invalid:
        if index["building_pid"] is not None:
            found.append(_finding("info", "index %s on %s is being built (pid %d)" % (index["index"], index["table_key"], index["building_pid"]),
                                  "CREATE INDEX CONCURRENTLY is running: it is INVALID until it ends", index["table_key"], index["index"]))
            continue
        found.append(_finding("warning", "index %s on %s is INVALID" % (index["index"], index["table_key"]),
                              "left by a failed or cancelled CREATE INDEX CONCURRENTLY: no query uses it, yet %s; drop it with "
                              "runbooks.incident.pg_index state=absent, or build it again with pg_index state=present "
                              "(it drops the INVALID index first): %s" % (
                                  "every write still maintains it" if index["ready"] else "it takes room", _definition(index)),
                              index["table_key"], index["index"]))
    for index in unused:
        if (index["table_rows"] or 0) < min_rows:
            continue
        found.append(_finding("info", "index %s on %s was never scanned" % (index["index"], index["table_key"]),
                              "%s, maintained on every write, unused since the statistics were reset; drop it only once sure no "
                              "rare job (month end, a report) needs it: %s" % (_size(index["size_bytes"]), _definition(index)),
                              index["table_key"], index["index"]))
    return found


def checkpoints(runtime, db, version):
    """{timed, requested, since}: the server's checkpoints since its counters were reset."""
    return _pg_info.answer(runtime, db, CHECKPOINTS_SQL[170000 if version >= 170000 else 0])


def maintenance_findings(tables, server, params):
    """What VACUUM and the checkpoints say: autovacuum off, tables of at least min_rows rows with more than
    dead_row_ratio of them dead, checkpoints mostly requested (WAL reached max_wal_size before checkpoint_timeout)."""
    found = []
    if not server["autovacuum"]:
        found.append(_finding("high", "autovacuum is off on the server",
                              "dead rows are never removed and the tables only grow, statistics go stale and transaction ids "
                              "wrap around in the end: turn it on (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf())", None))
    for table in tables:
        live, dead = table["n_live_tup"] or 0, table["n_dead_tup"] or 0
        if live + dead < params["min_rows"] or dead < MIN_DEAD_ROWS or dead <= params["dead_row_ratio"] * (live + dead):
            continue
        last = max((stamp for stamp in (table["last_vacuum"], table["last_autovacuum"]) if stamp), default=None)
        why = ("autovacuum is disabled for this table (autovacuum_enabled = false)" if not table["autovacuum_enabled"]
               else "autovacuum is off on the server" if not server["autovacuum"] else "autovacuum has not kept up")
        found.append(_finding("warning", "table %s has %d dead rows (%.0f%% of its rows)" % (table["table"], dead, 100.0 * dead / (live + dead)),
                              "last vacuumed %s; %s. Scans read the dead rows too: run VACUUM (ANALYZE) %s (it neither blocks reads "
                              "nor writes; VACUUM FULL would, and needs room for a copy). A long or idle transaction keeps "
                              "VACUUM from removing rows it may still see: end it first (the sessions above)"
                              % (last or "never", why, _pg.qualified(table["table"])), table["table"]))
    ckpt = server["checkpoints"]
    timed, requested = ckpt["timed"] or 0, ckpt["requested"] or 0
    if timed + requested >= MIN_CHECKPOINTS and requested > timed:
        found.append(_finding("warning", "checkpoints are mostly requested (%d of %d since %s)" % (
            requested, timed + requested, ckpt["since"] or "the server started"),
            "WAL reaches max_wal_size (%d MB) before checkpoint_timeout (%s) ends, so each checkpoint is a burst of writes "
            "that slows every query: raise it, e.g. ALTER SYSTEM SET max_wal_size = '%dMB'; SELECT pg_reload_conf() (the "
            "WAL disk must hold it; CHECKPOINT commands and base backups count here too)"
            % (server["max_wal_size_mb"], server["checkpoint_timeout"], 2 * server["max_wal_size_mb"]), None))
    return found


def _definition(index):
    return index["definition"] or "definition not read (an ACCESS EXCLUSIVE lock is held or awaited on its table)"


# ---------------------------------------------------------------------------------------------------- run
def _index_item(index, *extra):
    item = dict(schema=index["schema"], table=index["table"], index=index["index"], size_bytes=index["size_bytes"],
                definition=index["definition"])
    for name in extra:
        item[name] = index[name]
    return item


def run(runtime, params, warn=None):
    """The module's result; StatsError for a refused input, _pg.PgError when the server cannot answer."""
    check_params(params)
    db, top, query_chars = params["db"], params["top"], params["query_chars"]
    runtime.ping()
    found = _pg_info.answer(runtime, db, STATS_SQL)
    tables = []
    for table in found["tables"]:
        table["table"] = _pg.table_key(table["schema"], table["name"])
        table["seq_scan_share"] = seq_scan_share(table)
        tables.append(table)
    for index in found["indexes"]:
        index["table_key"] = _pg.table_key(index["schema"], index["table"])
    invalid = [index for index in found["indexes"] if not index["valid"]]
    unused = [index for index in found["indexes"] if index["valid"] and index["idx_scan"] == 0 and not index["unique"]
              and not index["primary"] and index["constraint"] is None]
    available, reason, rows = statements(runtime, db, found, top, query_chars)
    server = dict(autovacuum=found["autovacuum"], max_wal_size_mb=found["max_wal_size_mb"], checkpoint_timeout=found["checkpoint_timeout"],
                  checkpoints=checkpoints(runtime, db, found["version"]))
    if available and not found["read_all_stats"]:
        (warn or (lambda _msg: None))("login_user %s lacks pg_read_all_stats: the statements of other roles show no text" % found["login_user"])
    result = dict(changed=False, db=db, stats_reset=found["stats_reset"], server_started=found["server_started"],
                  tables=tables[:top], unused_indexes=[_index_item(index) for index in sorted(unused, key=lambda item: -(item["size_bytes"] or 0))],
                  invalid_indexes=[_index_item(index, "ready", "building_pid") for index in invalid],
                  statements_available=available, statements=rows, server=server,
                  # Most severe first; within a severity, in the order found (stable sort).
                  findings=sorted(findings(tables, unused, invalid, params, available) + maintenance_findings(tables, server, params),
                                  key=lambda item: SEVERITIES.index(item["severity"])))
    if reason is not None:
        result["statements_reason"] = reason
    if params.get("incident_id") is not None:
        result["incident_id"] = params["incident_id"]
    locked = [table["table"] for table in tables if table["size_bytes"] is None]
    if locked:
        (warn or (lambda _msg: None))("size unknown, an ACCESS EXCLUSIVE lock is held or awaited on: %s" % ", ".join(locked[:10]))
    counts = {}
    for item in result["findings"]:
        counts[item["severity"]] = counts.get(item["severity"], 0) + 1
    result["msg"] = "%s: %d tables, %d INVALID and %d unused indexes, %s; findings: %s; counters since %s" % (
        db, len(tables), len(invalid), len(unused),
        "%d statements from pg_stat_statements" % len(rows) if available else "pg_stat_statements not available",
        ", ".join("%d %s" % (counts[severity], severity) for severity in SEVERITIES if severity in counts) or "none",
        found["stats_reset"] or "the server's statistics began (never reset)")
    return result
