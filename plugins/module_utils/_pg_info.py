# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only questions to the service's database: what its audit log holds since a mark, and which sessions hold or
wait for the locks that block a backup. PRIVATE to the collection: no compatibility promise.

Every session runs with `default_transaction_read_only=on` (PGOPTIONS), so nothing these questions send can write.
Each answer is one statement (one snapshot) returning one JSON value: names and query texts travel JSON-escaped, so
no separator, newline or control character in them can garble the answer.
"""
from __future__ import annotations

import json
import re

from ansible_collections.runbooks.incident.plugins.module_utils import _pg

READ_ONLY = (("default_transaction_read_only", "on"),)
INTEGER_TYPES = ("smallint", "integer", "bigint", "numeric")
JSON_TYPES = ("json", "jsonb")
# A statement of another session that may carry a secret in its text is not shown, only that it was hidden.
SECRET_WORDS = re.compile(r"password|passwd|secret|token|pgp_sym_|encrypt", re.IGNORECASE)
MAX_QUERY_CHARS = 10000


def read_only_runtime(params):
    """The connection of doc fragment runbooks.incident.postgres, every transaction read-only."""
    runtime = _pg.Runtime.from_params(params)
    runtime.pgoptions = _pg.session_options(READ_ONLY)
    return runtime


def answer(runtime, db, sql):
    """The JSON value a one-row, one-column statement returns."""
    value = runtime.scalar(sql, db)
    if value is None:
        raise _pg.PgError("the server returned no answer")
    return json.loads(value)


# ---------------------------------------------------------------------------------------------------- audit log
def table_columns(runtime, db, table):
    """{column: type} of `table` (a table key, see _pg.table_key), or None when there is no such table or view."""
    rows = runtime.query(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_class c LEFT JOIN pg_attribute a "
        "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped WHERE c.oid = to_regclass(%s)"
        % _pg.quote_literal(_pg.qualified(table)), db)
    if not rows:
        return None
    return {name: kind for name, kind in rows if name is not None}


def check_audit_table(runtime, db, table, need_details):
    """Refuse, naming what is wrong, a table that is not an audit log this module can read."""
    columns = table_columns(runtime, db, table)
    if columns is None:
        raise _pg.PgError("%s has no table %s" % (db, table))
    missing = [name for name in ("id", "action", "outcome") + (("details",) if need_details else ()) if name not in columns]
    if missing:
        raise _pg.PgError("table %s has no column %s (an audit log has id, action, outcome and details)" % (table, ", ".join(missing)))
    if columns["id"].split("(")[0] not in INTEGER_TYPES:
        raise _pg.PgError("column id of %s is %s, not a number" % (table, columns["id"]))
    if need_details and columns["details"] not in JSON_TYPES:
        raise _pg.PgError("column details of %s is %s, not json or jsonb" % (table, columns["details"]))


def detail_text(key, value):
    """How `details->>key` reads `value` (JSON's true/false, numbers as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    raise _pg.PgError("the value of details key %r is %r: match a string, a whole number or true/false" % (key, value))


def audit_log_sql(table, since_id=None, actions=None, details=None):
    """One statement: the last id, and with since_id the entries after it by action and outcome."""
    source = _pg.qualified(table)
    parts = ["'last_id', (SELECT coalesce(max(id), 0) FROM %s)" % source]
    if since_id is not None:
        where = ["id > %d" % since_id]
        if actions:
            where.append("action::text IN (%s)" % ", ".join(_pg.quote_literal(action) for action in actions))
        for key, value in sorted((details or {}).items()):
            where.append("details->>%s = %s" % (_pg.quote_literal(key), _pg.quote_literal(detail_text(key, value))))
        parts.append(
            "'counts', (SELECT coalesce(jsonb_object_agg(action, outcomes), '{}') FROM ("
            "SELECT action, jsonb_object_agg(outcome, entries) AS outcomes FROM ("
            "SELECT coalesce(action::text, ''), coalesce(outcome::text, ''), count(*) FROM %s WHERE %s GROUP BY 1, 2"
            ") AS per_outcome (action, outcome, entries) GROUP BY action) AS per_action)" % (source, " AND ".join(where)))
    return "SELECT jsonb_build_object(%s)" % ", ".join(parts)


def audit_log(runtime, db, table, since_id=None, actions=None, details=None):
    """{'last_id': int, 'counts': {action: {outcome: entries}}} (counts only with since_id)."""
    if since_id is not None and since_id < 0:
        raise _pg.PgError("since_id is %d: an id to count from is 0 or more" % since_id)
    if not (table or "").strip():
        raise _pg.PgError("audit_table is empty")
    sql = audit_log_sql(table, since_id, actions, details)  # refuses an unusable details value before connecting
    runtime.ping()
    check_audit_table(runtime, db, table, bool(details) and since_id is not None)
    result = answer(runtime, db, sql)
    result["last_id"] = int(result["last_id"])
    return result


# ------------------------------------------------------------------------------------------------------ locks
def locks_sql(query_chars):
    """One statement: who holds an ACCESS EXCLUSIVE lock on a relation of the database (what stops pg_dump), who
    waits for a lock there, and who those wait for. A prepared transaction has pid 0."""
    session = ("'user', a.usename, 'application', a.application_name, 'database', a.datname, 'state', a.state, "
               "'transaction_seconds', floor(extract(epoch FROM now() - a.xact_start))::bigint, "
               "'query_seconds', floor(extract(epoch FROM now() - a.query_start))::bigint, "
               "'query', left(a.query, %d)" % query_chars)
    return """
WITH exclusive AS (
    SELECT coalesce(l.pid, 0) AS pid,
           jsonb_agg(jsonb_build_object('schema', n.nspname, 'table', c.relname, 'granted', l.granted)
                     ORDER BY n.nspname, c.relname) AS tables
    FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.pid IS DISTINCT FROM pg_backend_pid()
    GROUP BY 1
), waiting AS (
    SELECT a.pid, pg_blocking_pids(a.pid) AS blocked_by FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()
), blockers AS (
    SELECT pid FROM exclusive UNION SELECT unnest(blocked_by) FROM waiting
)
SELECT jsonb_build_object(
  'blockers', coalesce((
    SELECT jsonb_agg(jsonb_build_object('pid', b.pid, {session}, 'exclusive_locks', coalesce(e.tables, '[]'),
                                        'blocks', coalesce((SELECT jsonb_agg(w.pid ORDER BY w.pid) FROM waiting w
                                                            WHERE b.pid = ANY (w.blocked_by)), '[]'))
                     ORDER BY b.pid)
    FROM blockers b LEFT JOIN pg_stat_activity a ON a.pid = b.pid AND b.pid <> 0 LEFT JOIN exclusive e ON e.pid = b.pid), '[]'),
  'waiting', coalesce((
    SELECT jsonb_agg(jsonb_build_object('pid', w.pid, {session}, 'blocked_by', to_jsonb(w.blocked_by),
                                        'waits_for', coalesce((
                                          SELECT jsonb_agg(jsonb_build_object('mode', l.mode, 'locktype', l.locktype,
                                                                              'schema', n.nspname, 'table', c.relname))
                                          FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation
                                          LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
                                          WHERE l.pid = w.pid AND NOT l.granted), '[]'))
                     ORDER BY w.pid)
    FROM waiting w JOIN pg_stat_activity a ON a.pid = w.pid), '[]'))
""".format(session=session)


def shown_query(query):
    if query and SECRET_WORDS.search(query):
        return "(statement hidden: it may hold a secret)"
    return query


def _lock_names(locks):
    return ", ".join("%s%s" % (lock["table"], "" if lock["granted"] else " (requested)") for lock in locks)


def _pids(pids):
    return "pid " + ", ".join(str(pid) for pid in pids)


def _seconds(value):
    return "?" if value is None else str(value)


def _statement(query):
    return ": %s" % query if query else ""


def summary(blockers, waiting):
    """One line per session, for the operator: who holds what, for how long, doing what, and whom it blocks."""
    lines = []
    for item in blockers:
        if item["pid"] == 0:
            who = "a prepared transaction (see pg_prepared_xacts)"
        else:
            who = "pid %d" % item["pid"]
        if item["exclusive_locks"]:
            line = "%s AccessExclusiveLock on %s by %s for %s s%s" % (
                who, _lock_names(item["exclusive_locks"]), item["user"] or "?", _seconds(item["transaction_seconds"]), _statement(item["query"]))
        else:
            line = "%s by %s (%s) for %s s holds a lock%s" % (
                who, item["user"] or "?", item["state"] or "?", _seconds(item["transaction_seconds"]), _statement(item["query"]))
        if item["blocks"]:
            line += " [blocks %s]" % _pids(item["blocks"])
        lines.append(line)
    for item in waiting:
        wanted = ", ".join("%s on %s" % (lock["mode"], lock["table"] or lock["locktype"]) for lock in item["waits_for"]) or "a lock"
        lines.append("pid %d by %s (%s) waits for %s for %s s, blocked by %s%s" % (
            item["pid"], item["user"] or "?", item["application"] or "?", wanted, _seconds(item["query_seconds"]),
            _pids(item["blocked_by"]) if item["blocked_by"] else "nobody now", _statement(item["query"])))
    return lines


def locks(runtime, db, query_chars=80):
    """{'blockers': [...], 'waiting': [...], 'summary': [lines]}: table names as table keys, secret-looking
    statements hidden."""
    if isinstance(query_chars, bool) or not 0 <= query_chars <= MAX_QUERY_CHARS:
        raise _pg.PgError("query_chars is %r: 0 (no statements) to %d" % (query_chars, MAX_QUERY_CHARS))
    runtime.ping()
    found = answer(runtime, db, locks_sql(query_chars))
    for item in found["blockers"] + found["waiting"]:
        item["query"] = shown_query(item["query"]) if query_chars else None
    for item in found["blockers"]:
        item["exclusive_locks"] = [dict(table=_pg.table_key(lock["schema"], lock["table"]), granted=lock["granted"])
                                   for lock in item["exclusive_locks"]]
    for item in found["waiting"]:
        item["waits_for"] = [dict(mode=lock["mode"], table=_pg.table_key(lock["schema"], lock["table"]) if lock["table"] else None,
                                  locktype=lock["locktype"]) for lock in item["waits_for"]]
    found["summary"] = summary(found["blockers"], found["waiting"])
    return found
