# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only questions to the service's database server: which sessions hold or wait for the locks that block a
backup, what a session shows of itself (shared with _pg_sessions), and the read-only connection audit_log_info reads
the audit log on (_service_db.audit_log). PRIVATE to the collection: no compatibility promise.

Every session runs with `default_transaction_read_only=on` (PGOPTIONS), so nothing these questions send can write.
Each answer is one statement (one snapshot) returning one JSON value: names and query texts travel JSON-escaped, so
no separator, newline or control character in them can garble the answer.
"""
from __future__ import annotations

import json
import re

from ansible_collections.runbooks.incident.plugins.module_utils import _pg

READ_ONLY = (("default_transaction_read_only", "on"),)
# A statement of another session that may carry a secret in its text is not shown, only that it was hidden. The
# server tests the whole statement (SECRET_SQL), so a word beyond the characters returned still hides it.
SECRET_WORDS_PATTERN = "password|passwd|secret|token|pgp_sym_|encrypt"
SECRET_WORDS = re.compile(SECRET_WORDS_PATTERN, re.IGNORECASE)
HIDDEN = "(statement hidden: it may hold a secret)"
MAX_QUERY_CHARS = 10000
# The sessions of the database that wait for a lock, and the sessions they wait for: those holding the lock and
# those queued ahead of them for it (pg_blocking_pids). A CTE named `waiting` (pid, blocked_by int[]).
WAITING_CTE = """waiting AS (
    SELECT a.pid, pg_blocking_pids(a.pid) AS blocked_by FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()
)"""


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


# --------------------------------------------------------------------------------------------------- sessions
def check_query_chars(query_chars):
    if isinstance(query_chars, bool) or not isinstance(query_chars, int) or not 0 <= query_chars <= MAX_QUERY_CHARS:
        raise _pg.PgError("query_chars is %r: 0 (no statements) to %d" % (query_chars, MAX_QUERY_CHARS))
    return query_chars


def session_fields(query_chars):
    """jsonb_build_object arguments: what a session of pg_stat_activity `a` shows of itself (role, application,
    database, state, ages in whole seconds, the start of its statement and whether the whole statement may hold a
    secret). shown_queries() turns the last two into what is returned."""
    check_query_chars(query_chars)
    return ("'user', a.usename, 'application', a.application_name, 'database', a.datname, 'state', a.state, "
            "'transaction_seconds', floor(extract(epoch FROM now() - a.xact_start))::bigint, "
            "'query_seconds', floor(extract(epoch FROM now() - a.query_start))::bigint, "
            "'query', left(a.query, %d), 'query_secret', a.query ~* %s" % (query_chars, _pg.quote_literal(SECRET_WORDS_PATTERN)))


def shown_query(query, secret=False):
    if secret or (query and SECRET_WORDS.search(query)):
        return HIDDEN
    return query


def shown_queries(items, query_chars):
    """Each item's statement as returned: None with query_chars 0, hidden when it may hold a secret."""
    for item in items:
        secret = item.pop("query_secret", False)
        item["query"] = shown_query(item["query"], secret) if query_chars else None
    return items


# ------------------------------------------------------------------------------------------------------ locks
def locks_sql(query_chars):
    """One statement: who holds an ACCESS EXCLUSIVE lock on a relation of the database (what stops pg_dump), who
    waits for a lock there, and who those wait for. A prepared transaction has pid 0."""
    session = session_fields(query_chars)
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
), {waiting}, blockers AS (
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
""".format(session=session, waiting=WAITING_CTE)


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
    check_query_chars(query_chars)
    runtime.ping()
    found = answer(runtime, db, locks_sql(query_chars))
    shown_queries(found["blockers"] + found["waiting"], query_chars)
    for item in found["blockers"]:
        item["exclusive_locks"] = [dict(table=_pg.table_key(lock["schema"], lock["table"]), granted=lock["granted"])
                                   for lock in item["exclusive_locks"]]
    for item in found["waiting"]:
        item["waits_for"] = [dict(mode=lock["mode"], table=_pg.table_key(lock["schema"], lock["table"]) if lock["table"] else None,
                                  locktype=lock["locktype"]) for lock in item["waits_for"]]
    found["summary"] = summary(found["blockers"], found["waiting"])
    return found
