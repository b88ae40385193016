# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Expired rows of one table counted, deleted and the table vacuumed (pg_purge). PRIVATE to the collection: no
compatibility promise.

The rows are those of an SQL boolean expression the operator gives (`where`). It runs as given, as a condition: it is
checked first to be one expression (no `;`, no comment, no psql backslash command or variable, no dollar quote,
quotes and parentheses balanced), so it cannot end the statement it is put in or reach psql's own commands.

One psql session, one transaction (REPEATABLE READ: the count and the delete see the same rows): the rows are counted;
more than `max_rows` and the transaction is rolled back, nothing deleted; else they are deleted in batches of
`batch_size` (each statement bounded by `statement_timeout`), leaf table by leaf table for a partitioned table, by
ctid, and the transaction commits only when the batches deleted exactly the rows counted. Check mode counts in a
READ ONLY transaction. A database that is read-only (its default_transaction_read_only, as pg_read_only sets it
during a corruption incident, or a standby) is refused, never overridden. VACUUM runs after the commit, outside the
transaction, and only when rows were deleted.
"""
from __future__ import annotations

import json

from ansible_collections.runbooks.incident.plugins.module_utils import _pg

MAX_ROWS = 10 ** 12
MAX_BATCH = 10 ** 7
MAX_TIMEOUT = 86400
MAX_WHERE = 10000
IDENT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


class PurgeError(Exception):
    """A refused input or table: the message says what, and nothing was deleted."""


class Refused(PurgeError):
    """More rows than max_rows, or a read-only database: nothing was deleted; `result` is what was read."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise PurgeError("%s is %r: a whole number from %d to %d" % (name, value, minimum, maximum))
    return value


def check_where(where):
    """`where` stripped, once it is one SQL expression as psql would pass it to the server; PurgeError naming the
    first thing that is refused otherwise.

    Outside quotes: no `;` (a second statement), no `--` or `/*` comment (it could hide the rest of the statement),
    no backslash (a psql command such as \\! runs a shell), no `:name` or `:'name'` (psql variables; `::` casts are
    fine), no `$` (dollar quotes and parameters), no E'' string (backslash escapes); quotes ('', "") closed and
    parentheses balanced (psql would wait for the rest and the statement would never end)."""
    if not isinstance(where, str) or not where.strip():
        raise PurgeError("where is empty: give the condition of the rows to delete (an SQL boolean expression)")
    text = where.strip()
    if len(text) > MAX_WHERE:
        raise PurgeError("where is %d characters long: at most %d" % (len(text), MAX_WHERE))
    depth, index, length = 0, 0, len(text)
    while index < length:
        char = text[index]
        following = text[index + 1] if index + 1 < length else ""
        previous = text[index - 1] if index else ""
        if char in "'\"":
            if char == "'" and previous and previous in "eE" and (index < 2 or text[index - 2] not in IDENT_CHARS):
                raise PurgeError("where: an E'' string (backslash escapes) is not accepted, at character %d; write a "
                                 "standard string ('...', a quote doubled)" % index)
            end = index + 1
            while True:
                end = text.find(char, end)
                if end < 0:
                    raise PurgeError("where: the %s opened at character %d is never closed" % (
                        "string" if char == "'" else "quoted name", index))
                if text[end + 1:end + 2] == char:  # a doubled quote inside
                    end += 2
                    continue
                break
            index = end + 1
            continue
        if char == ";":
            raise PurgeError("where: ';' at character %d would end the statement; give one expression, no second "
                             "statement" % index)
        if char == "\\":
            raise PurgeError("where: a backslash outside quotes (character %d) is a psql command; not accepted" % index)
        if char == "$":
            raise PurgeError("where: '$' outside quotes (character %d): dollar quotes and parameters are not accepted" % index)
        if (char, following) in (("-", "-"), ("/", "*")):
            raise PurgeError("where: a comment (%s at character %d) is not accepted" % (char + following, index))
        if char == ":":
            if following == ":":
                index += 2
                continue
            if following and (following in IDENT_CHARS or following in "'\"{" or ord(following) > 127):
                raise PurgeError("where: ':%s' at character %d is a psql variable; not accepted (write casts as ::type)"
                                 % (following, index))
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise PurgeError("where: ')' at character %d closes a parenthesis never opened" % index)
        index += 1
    if depth:
        raise PurgeError("where: %d parenthes%s never closed" % (depth, "is" if depth == 1 else "es"))
    return text


def parse_table(table):
    """(schema, name) of `table` as written in SQL: `media_messages`, `archive.media_messages`, `"Odd Schema"."T.1"`
    (a part that is not lower case letters, digits and underscores must be double-quoted; `public` when no schema)."""
    match = _pg.KEY.match(table or "")
    if not match:
        raise PurgeError("table %r is not a table name as SQL writes it: lower case letters, digits and underscores, or "
                         "double-quoted (\"MediaMessages\"), optionally after a schema and a dot" % (table,))
    schema, name = _pg.split_key(table)
    return schema, name


def check_params(params):
    """The checked options: {'db', 'schema', 'name', 'where', 'max_rows', 'batch_size', 'statement_timeout', 'vacuum'}."""
    _pg.check_name(params["db"])
    schema, name = parse_table(params["table"])
    return dict(db=params["db"], schema=schema, name=name, where=check_where(params["where"]),
                max_rows=_whole("max_rows", params["max_rows"], 0, MAX_ROWS),
                batch_size=_whole("batch_size", params["batch_size"], 1, MAX_BATCH),
                statement_timeout=_whole("statement_timeout", params["statement_timeout"], 1, MAX_TIMEOUT),
                vacuum=bool(params["vacuum"]))


# ------------------------------------------------------------------------------------------------------ SQL
def table_sql(schema, name):
    """The table (relkind), its leaf tables (a partitioned table's partitions that hold rows; the table itself
    otherwise) and its bytes (the leaves' pg_total_relation_size: heap, indexes, TOAST), and whether the session may
    write (read-only database or standby)."""
    return """
WITH target AS (
    SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {schema} AND c.relname = {name}
), leaves AS (
    SELECT l.oid, l.relkind, ln.nspname, l.relname
    FROM target t, pg_partition_tree(t.oid) p JOIN pg_class l ON l.oid = p.relid JOIN pg_namespace ln ON ln.oid = l.relnamespace
    WHERE t.relkind = 'p' AND p.isleaf
    UNION ALL
    SELECT t.oid, t.relkind, {schema}, {name} FROM target t WHERE t.relkind <> 'p'
)
SELECT jsonb_build_object(
  'relkind', (SELECT relkind FROM target),
  'leaves', coalesce((SELECT jsonb_agg(jsonb_build_array(nspname, relname, relkind) ORDER BY nspname, relname) FROM leaves), '[]'),
  'bytes', (SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM leaves WHERE relkind IN ('r', 'm', 't')),
  'read_only', current_setting('default_transaction_read_only')::boolean OR current_setting('transaction_read_only')::boolean,
  'standby', pg_is_in_recovery())""".format(schema=_pg.quote_literal(schema), name=_pg.quote_literal(name))


def count_sql(schema, name, where, relkind):
    # The table is named by its own name (an alias), so the expression may write `media_messages.created_at`.
    return "SELECT count(*) FROM %s%s.%s AS %s WHERE (\n%s\n)" % (
        "" if relkind == "p" else "ONLY ", _pg.quote_ident(schema), _pg.quote_ident(name), _pg.quote_ident(name), where)


def delete_sql(leaf_schema, leaf_name, alias, where, limit):
    """Delete at most `limit` matching rows of one leaf table, found by ctid (a TID scan), and say how many."""
    table = "ONLY %s.%s AS %s" % (_pg.quote_ident(leaf_schema), _pg.quote_ident(leaf_name), _pg.quote_ident(alias))
    return ("WITH gone AS (DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE (\n{where}\n) LIMIT {limit}))"
            " AND (\n{where}\n) RETURNING 1) SELECT count(*) FROM gone").format(table=table, where=where, limit=int(limit))


def _answer(session, sql):
    rows = session.query(sql)
    if not rows or rows[0][0] is None:
        raise _pg.PgError("the server returned no answer")
    return rows[0][0]


def purge_runtime(params):
    """The connection of doc fragment runbooks.incident.postgres, strings read as standard SQL strings (so psql and
    the server agree on where a quoted string ends)."""
    runtime = _pg.Runtime.from_params(params)
    runtime.pgoptions = _pg.session_options((("standard_conforming_strings", "on"),))
    return runtime


def _key(schema, name):
    return _pg.table_key(schema, name)


# ------------------------------------------------------------------------------------------------------ run
def run(runtime, params, check_mode=False, warn=None):
    """The module's result. Refused (nothing deleted) over max_rows or on a read-only database; PurgeError for a
    table that is not there or not a table; _pg.PgError when the server fails a statement (the transaction is
    rolled back: nothing deleted)."""
    checked = check_params(params)
    schema, name, where, db = checked["schema"], checked["name"], checked["where"], checked["db"]
    key = _key(schema, name)
    result = dict(changed=False, db=db, table=key, matched=0, deleted=0, batches=0, read_only=False, vacuumed=False,
                  table_bytes_before=None, table_bytes_after=None, reclaimed_bytes=0)
    with _pg.Session(runtime, db) as session:
        found = json.loads(_answer(session, table_sql(schema, name)))
        if found["relkind"] is None:
            raise PurgeError("table %s does not exist in database %s" % (key, db))
        if found["relkind"] not in ("r", "p"):
            raise PurgeError("%s is not a table (relkind %s): only a table or a partitioned table is purged" % (key, found["relkind"]))
        foreign = [_key(leaf[0], leaf[1]) for leaf in found["leaves"] if leaf[2] != "r"]
        if foreign:
            raise PurgeError("%s has partitions that are not plain tables (%s): not purged" % (key, ", ".join(foreign)))
        before = int(found["bytes"])
        result.update(table_bytes_before=before, table_bytes_after=before,
                      read_only=bool(found["read_only"] or found["standby"]))
        why = "a standby (recovery)" if found["standby"] else "default_transaction_read_only is on (pg_read_only sets it)"
        timeout = "SET LOCAL statement_timeout = %d" % (checked["statement_timeout"] * 1000)
        if check_mode or result["read_only"]:
            session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            session.query(timeout)
            result["matched"] = int(_answer(session, count_sql(schema, name, where, found["relkind"])))
            session.query("ROLLBACK")
            if result["read_only"] and not check_mode:
                raise Refused("database %s is read-only (%s): %d row(s) of %s match, nothing was deleted; make it writable "
                              "first if the incident allows it (pg_read_only state=read_write)" % (
                                  db, why, result["matched"], key), result)
            if result["read_only"]:
                (warn or (lambda message: None))("database %s is read-only (%s): a run outside check mode is refused" % (db, why))
            if result["matched"] > checked["max_rows"]:
                raise Refused(_over(result, checked), result)
            result["msg"] = "%d row(s) of %s in %s match; none deleted (check mode)" % (result["matched"], key, db)
            return result
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        session.query(timeout)
        result["matched"] = int(_answer(session, count_sql(schema, name, where, found["relkind"])))
        if result["matched"] > checked["max_rows"]:
            session.query("ROLLBACK")
            raise Refused(_over(result, checked), result)
        deleted = batches = 0
        for leaf_schema, leaf_name, _kind in found["leaves"]:
            while deleted < result["matched"]:
                limit = min(checked["batch_size"], result["matched"] - deleted)
                gone = int(_answer(session, delete_sql(leaf_schema, leaf_name, name, where, limit)))
                batches += 1 if gone else 0
                deleted += gone
                if gone < limit:
                    break
        if deleted != result["matched"]:
            session.query("ROLLBACK")
            raise PurgeError("%d row(s) of %s matched but the batches deleted %d: rolled back, nothing was deleted" % (
                result["matched"], key, deleted))
        session.query("COMMIT")
        result.update(deleted=deleted, batches=batches, changed=deleted > 0)
        if deleted and checked["vacuum"]:
            session.query("SET statement_timeout = %d" % (checked["statement_timeout"] * 1000))
            try:
                session.query("VACUUM (ANALYZE) %s.%s" % (_pg.quote_ident(schema), _pg.quote_ident(name)))
                result["vacuumed"] = True
            except _pg.PgError as exc:
                (warn or (lambda message: None))("VACUUM of %s failed after the delete was committed: %s" % (key, exc))
    if result["changed"]:
        try:
            with _pg.Session(runtime, db) as session:
                after = int(json.loads(_answer(session, table_sql(schema, name)))["bytes"])
            result.update(table_bytes_after=after, reclaimed_bytes=max(0, result["table_bytes_before"] - after))
        except (_pg.PgError, ValueError) as exc:  # the delete is committed: say so, do not fail
            result["table_bytes_after"] = None
            (warn or (lambda message: None))("the size of %s after the purge could not be read: %s" % (key, exc))
    result["msg"] = "%s %d row(s) of %s in %s%s%s" % (
        "deleted" if deleted else "no row matched: deleted", deleted, key, db, "; vacuumed" if result["vacuumed"] else "",
        "; %d bytes returned to the filesystem" % result["reclaimed_bytes"] if result["reclaimed_bytes"] else "")
    return result


def _over(result, checked):
    return ("%d row(s) of %s match, more than max_rows=%d: nothing was deleted; narrow the condition or raise max_rows"
            % (result["matched"], result["table"], checked["max_rows"]))
