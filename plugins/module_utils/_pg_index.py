# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An index built or dropped without blocking the table's writes (pg_index). PRIVATE to the collection: no
compatibility promise.

Everything is decided from one read (one statement, one snapshot, read-only): the table (its kind, owner, columns and
partitions) and the relation that bears the index's name. Only then is anything run: `CREATE [UNIQUE] INDEX
CONCURRENTLY` and `DROP INDEX CONCURRENTLY`, each in a psql script of its own (psql's autocommit: CONCURRENTLY
cannot run in a transaction block) after `SET application_name` (the incident) and `SET lock_timeout`. Every name
reaches SQL double-quoted (_pg.quote_ident) or as a literal (_pg.quote_literal), never as it was typed.

A concurrent build that fails (a unique violation, the lock_timeout, a cancel) leaves an INVALID index behind: the
module drops it again (concurrently) and says so; when that drop fails too it says what is left and how to drop it.
"""
from __future__ import annotations

import re
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info, _run_lock

STATES = ("present", "absent")
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: a longer name would be cut by the server, and never found again
MAX_LOCK_TIMEOUT = 2147483  # seconds: lock_timeout is an int of milliseconds
MAX_COLUMNS = 32  # INDEX_MAX_KEYS
RELKINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table",
            "S": "sequence", "c": "composite type", "t": "TOAST table", "i": "index", "I": "partitioned index"}
CONSTRAINT_TYPES = {"p": "primary key", "u": "unique constraint", "x": "exclusion constraint"}
PSQL_PREFIX = re.compile(r"^psql:[^:]*:\d+: ")

READ_SQL = """
WITH tbl AS (
    SELECT c.* FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {schema} AND c.relname = {table}
), named AS (
    SELECT c.* FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {schema} AND c.relname = {name}
)
SELECT jsonb_build_object(
  'login_user', current_user,
  'schema_exists', EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {schema}),
  'table', (
    SELECT jsonb_build_object(
        'oid', t.oid, 'relkind', t.relkind, 'owner', pg_get_userbyid(t.relowner), 'may_index', pg_has_role(t.relowner, 'MEMBER'),
        'columns', coalesce((SELECT jsonb_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                             WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        'partitions', coalesce((SELECT jsonb_agg(jsonb_build_array(pn.nspname, p.relname) ORDER BY pn.nspname, p.relname)
                                FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
                                WHERE i.inhparent = t.oid), '[]'))
    FROM tbl t),
  'named', (
    SELECT jsonb_build_object(
        'oid', c.oid, 'relkind', c.relkind,
        'table_oid', x.indrelid, 'table_schema', tn.nspname, 'table_name', t.relname,
        'valid', x.indisvalid, 'ready', x.indisready, 'unique', x.indisunique,
        'columns', (SELECT jsonb_agg(a.attname ORDER BY k.ord) FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                    LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum),
        'plain', x.indexprs IS NULL AND x.indpred IS NULL AND am.amname = 'btree' AND x.indnatts = x.indnkeyatts
                 AND NOT EXISTS (SELECT 1 FROM unnest(x.indoption::int2[]) o(value) WHERE o.value <> 0)
                 AND NOT EXISTS (SELECT 1 FROM unnest(x.indclass::oid[]) k(opclass) JOIN pg_opclass oc ON oc.oid = k.opclass
                                 WHERE NOT oc.opcdefault)
                 AND NOT EXISTS (SELECT 1 FROM unnest(x.indcollation::oid[], x.indkey::int2[]) k(coll, attnum)
                                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                                 WHERE k.coll <> a.attcollation)
                 AND NOT coalesce((to_jsonb(x) ->> 'indnullsnotdistinct')::boolean, false),
        'constraint', (SELECT jsonb_build_object('name', k.conname, 'type', k.contype) FROM pg_constraint k
                       WHERE k.conindid = c.oid AND k.contype IN ('p', 'u', 'x') ORDER BY k.conname LIMIT 1),
        'building_pid', (SELECT p.pid FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid LIMIT 1),
        'size_bytes', CASE WHEN x.indexrelid IS NOT NULL AND NOT EXISTS (
                               SELECT 1 FROM pg_locks l WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
                               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                               AND l.relation IN (c.oid, x.indrelid))
                           THEN pg_relation_size(c.oid) END,
        'definition', CASE WHEN x.indexrelid IS NOT NULL THEN pg_get_indexdef(c.oid) END)
    FROM named c LEFT JOIN pg_index x ON x.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = x.indrelid
    LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace LEFT JOIN pg_am am ON am.oid = c.relam))
"""


class PgIndexError(Exception):
    """A refused input or state: the message says what, and nothing was changed."""


class Failed(Exception):
    """A change was attempted and did not finish; `result` says what was done, the message what is left."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------- options
def _identifier(what, value):
    if not isinstance(value, str) or not value:
        raise PgIndexError("%s is empty" % what)
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise PgIndexError("%s %r is longer than %d bytes: PostgreSQL would cut it" % (what, value, MAX_NAME_BYTES))
    return value


def target(table):
    """(schema, name) of the option `table`: `name`, `schema.name`, a part double-quoted as in SQL when it holds a dot
    or capitals (`"Odd.Schema"."T"`); `public` by default."""
    if not isinstance(table, str) or not table:
        raise PgIndexError("table is empty")
    schema, name = _pg.split_key(table)
    return _identifier("the schema of table", schema), _identifier("table", name)


def check_params(params):
    """PgIndexError (or _pg.PgError for the database name) for an option that is not valid, before any connection."""
    _pg.check_name(params["db"])
    if params["state"] not in STATES:
        raise PgIndexError("state is %r: one of %s" % (params["state"], ", ".join(STATES)))
    _identifier("name", params["name"])
    target(params["table"])
    columns = params.get("columns")
    if params["state"] == "present":
        if not columns:
            raise PgIndexError("state=present needs columns (the table's columns the index is built on, in order)")
        if len(columns) > MAX_COLUMNS:
            raise PgIndexError("columns holds %d names: an index has at most %d" % (len(columns), MAX_COLUMNS))
        for column in columns:
            _identifier("a column", column)
        twice = sorted({column for column in columns if columns.count(column) > 1})
        if twice:
            raise PgIndexError("columns names %s more than once" % ", ".join(repr(column) for column in twice))
    timeout = params["lock_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= MAX_LOCK_TIMEOUT:
        raise PgIndexError("lock_timeout is %r: whole seconds, 0 (wait for ever) to %d" % (timeout, MAX_LOCK_TIMEOUT))
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(incident_id):
        raise PgIndexError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))


# ---------------------------------------------------------------------------------------------------- read
def read(runtime, db, schema, table, name):
    """{'login_user', 'schema_exists', 'table' (or None), 'named' (the relation called `name` in the schema, or None)}."""
    return _pg_info.answer(runtime, db, READ_SQL.format(schema=_pg.quote_literal(schema), table=_pg.quote_literal(table),
                                                        name=_pg.quote_literal(name)))


def index_view(named, name):
    """What RV(index) shows of an index read by read()."""
    if named is None or named["relkind"] not in ("i", "I"):
        return None
    return dict(name=name, table=_pg.table_key(named["table_schema"], named["table_name"]), definition=named["definition"],
                valid=named["valid"], size_bytes=named["size_bytes"])


def same(named, found_table, columns, unique):
    """Whether the index read is the one asked: on the table, plain btree on exactly these columns, same uniqueness."""
    return (named["table_oid"] == found_table["oid"] and named["plain"] and named["columns"] == list(columns)
            and named["unique"] == unique)


def intended_definition(schema, table, name, columns, unique):
    """The definition asked, as pg_get_indexdef would write it (every name quoted here; the server quotes only where
    needed): what diff mode shows before the build."""
    return "CREATE %sINDEX %s ON %s.%s USING btree (%s)" % ("UNIQUE " if unique else "", _pg.quote_ident(name), _pg.quote_ident(schema),
                                                            _pg.quote_ident(table), ", ".join(_pg.quote_ident(column) for column in columns))


# -------------------------------------------------------------------------------------------------- change
def session_sql(incident_id, lock_timeout):
    name = "runbooks-incident pg_index" + (" %s" % incident_id if incident_id else "")
    return "SET application_name = %s;\nSET lock_timeout = %d;\n" % (_pg.quote_literal(name), lock_timeout * 1000)


def create_sql(schema, table, name, columns, unique):
    return "CREATE %sINDEX CONCURRENTLY %s ON %s.%s (%s);\n" % (
        "UNIQUE " if unique else "", _pg.quote_ident(name), _pg.quote_ident(schema), _pg.quote_ident(table),
        ", ".join(_pg.quote_ident(column) for column in columns))


def drop_sql(schema, name):
    return "DROP INDEX CONCURRENTLY IF EXISTS %s.%s;\n" % (_pg.quote_ident(schema), _pg.quote_ident(name))


def server_error(exc):
    """The server's message without psql's `psql:<stdin>:3: ` prefix."""
    return PSQL_PREFIX.sub("", str(exc))


def execute(params, sql):
    """Run `sql` after the session settings, in psql's autocommit (each statement its own transaction); the seconds
    it took. _pg.PgError when a statement fails (psql stops there)."""
    runtime = _pg.Runtime.from_params(params)
    started = time.monotonic()
    runtime.execute(session_sql(params.get("incident_id"), params["lock_timeout"]) + sql, params["db"])
    return round(time.monotonic() - started, 3)


# -------------------------------------------------------------------------------------------------- decide
def _kind(named):
    return RELKINDS.get(named["relkind"], "relation of kind %s" % named["relkind"])


def _refuse_named(named, name, schema):
    """PgIndexError for a relation of the name that is never dropped here, whatever force says."""
    if named["relkind"] not in ("i", "I"):
        raise PgIndexError("the name %s is taken by a %s in schema %s, not an index: it is never dropped here; choose another "
                           "index name" % (name, _kind(named), schema))
    if named["relkind"] == "I":
        raise PgIndexError("%s is the index of partitioned table %s: PostgreSQL 15 cannot drop or build it CONCURRENTLY"
                           % (name, _pg.table_key(named["table_schema"], named["table_name"])))
    if named["building_pid"] is not None:
        raise PgIndexError("index %s is being built right now by pid %d (CREATE INDEX CONCURRENTLY): wait for it to end, or "
                           "cancel it (pg_sessions), then run again" % (name, named["building_pid"]))


def _constraint_text(named):
    constraint = named["constraint"]
    return "%s %s of %s" % (CONSTRAINT_TYPES.get(constraint["type"], "constraint"), constraint["name"],
                            _pg.table_key(named["table_schema"], named["table_name"]))


def check_table(found, key, columns):
    """PgIndexError unless the table exists, can be indexed CONCURRENTLY, by login_user, and has every column."""
    table = found["table"]
    if table is None:
        where = "" if found["schema_exists"] else " (there is no such schema)"
        raise PgIndexError("there is no table %s%s" % (key, where))
    if table["relkind"] == "p":
        partitions = [_pg.table_key(schema, name) for schema, name in table["partitions"]]
        raise PgIndexError(
            "%s is a partitioned table: PostgreSQL 15 cannot build an index on it CONCURRENTLY; build it on each partition "
            "instead (%s), then, if the parent needs it too, CREATE INDEX ON ONLY the parent and ATTACH each partition's "
            "index (not done here)" % (key, ", ".join(partitions) if partitions else "it has no partition yet"))
    if table["relkind"] not in ("r", "m"):
        raise PgIndexError("%s is a %s, not a table" % (key, _kind(table)))
    if not table["may_index"]:
        raise PgIndexError("login_user %s may not index %s: only its owner (%s) or a member of that role may"
                           % (found["login_user"], key, table["owner"]))
    missing = [column for column in columns if column not in table["columns"]]
    if missing:
        named = ", ".join(repr(column) for column in missing)
        raise PgIndexError("%s has no column %s (its columns: %s)" % (key, named, ", ".join(table["columns"][:40])))


def decide_present(found, params, schema, key):
    """(action, reason): `none` (the index is there), `create`, `rebuild` (an INVALID index of the name is dropped
    first) or `replace` (force: an index of the name with another definition is dropped first). PgIndexError when
    refused."""
    name, columns, unique = params["name"], params["columns"], params["unique"]
    check_table(found, key, columns)
    named = found["named"]
    if named is None:
        return "create", None
    _refuse_named(named, name, schema)
    matches = same(named, found["table"], columns, unique)
    on_table = named["table_oid"] == found["table"]["oid"]
    if matches and named["valid"]:
        return "none", None
    if named["constraint"] is not None:
        raise PgIndexError("index %s backs the %s and is not the one asked (%s): it is never dropped here"
                           % (name, _constraint_text(named), named["definition"]))
    if not named["valid"] and on_table:
        return "rebuild", ("" if matches else " (its definition differed: %s)" % named["definition"])
    if not params["force"]:
        where = "" if on_table else " on another table, %s" % _pg.table_key(named["table_schema"], named["table_name"])
        raise PgIndexError("an index %s exists%s with another definition: %s; set force=true to drop it (concurrently) and "
                           "build the one asked, or choose another name" % (name, where, named["definition"]))
    return "replace", " (it was: %s)" % named["definition"]


def decide_absent(found, params, schema, key):
    """`none` or `drop`; PgIndexError when refused (not an index, on another table, backing a constraint, being built)."""
    name, named = params["name"], found["named"]
    if named is None:
        return "none"
    _refuse_named(named, name, schema)
    index_table = _pg.table_key(named["table_schema"], named["table_name"])
    if found["table"] is None or named["table_oid"] != found["table"]["oid"]:
        raise PgIndexError("index %s is on table %s, not %s" % (name, index_table, key))
    if named["constraint"] is not None:
        raise PgIndexError("index %s backs the %s: it is never dropped here (dropping the constraint is a schema change "
                           "for a migration, ALTER TABLE ... DROP CONSTRAINT)" % (name, _constraint_text(named)))
    return "drop"


# ----------------------------------------------------------------------------------------------------- run
def _diff(before, after):
    return dict(before=dict(definition=before["definition"], valid=before["valid"]) if before else dict(definition=None, valid=None),
                after=dict(definition=after["definition"], valid=after["valid"]) if after else dict(definition=None, valid=None))


def _left(runtime, db, schema, table, name, result, was_valid):
    """What is left of the index after a failed drop, for the message (RV(index) updated)."""
    try:
        named = read(runtime, db, schema, table, name)["named"]
    except _pg.PgError as exc:
        result["changed"] = True  # it may be INVALID now
        return "cannot tell what is left of it: %s" % exc
    result["index"] = index_view(named, name)
    if named is None:
        result.update(changed=True, dropped=True)
        return "it is gone nevertheless"
    if not named["valid"] and was_valid:
        result["changed"] = True
        return ("it is left INVALID (no query uses it, writes may still maintain it): run again once the lock is free, "
                "or drop it with state=absent")
    return "it is still there%s: nothing was changed" % ("" if was_valid else ", INVALID as before")


def _drop(runtime, params, schema, table, name, result, what, was_valid):
    """Drop the index concurrently; Failed, saying what is left, when the drop fails."""
    try:
        execute(params, drop_sql(schema, name))
    except _pg.PgError as exc:
        left = _left(runtime, params["db"], schema, table, name, result, was_valid)
        raise Failed("dropping %s %s failed: %s; %s" % (what, name, server_error(exc), left), result)
    result.update(changed=True, dropped=True)


def run(runtime, params, check_mode=False, diff=False):
    """The module's result; `runtime` reads (read-only), the changes run on their own connections (execute).
    PgIndexError for a refused input or state (nothing changed), Failed when a change did not finish, _pg.PgError when
    the server cannot answer (before any change)."""
    check_params(params)
    db, state, name = params["db"], params["state"], params["name"]
    schema, table = target(params["table"])
    key = _pg.table_key(schema, table)
    runtime.ping()
    found = read(runtime, db, schema, table, name)
    before = index_view(found["named"], name)
    result = dict(changed=False, db=db, state=state, name=name, table=key, index=before, created=False, dropped=False,
                  rebuilt_invalid=False, duration_seconds=0.0)
    if params.get("incident_id") is not None:
        result["incident_id"] = params["incident_id"]
    if state == "absent":
        return _absent(runtime, found, params, result, check_mode, diff)
    action, note = decide_present(found, params, schema, key)
    columns, unique = params["columns"], params["unique"]
    intended = dict(definition=intended_definition(schema, table, name, columns, unique), valid=True)
    if diff:
        result["diff"] = _diff(before, before if action == "none" else intended)
    if action == "none":
        result["msg"] = "index %s on %s is there, valid, as asked: nothing was changed" % (name, key)
        return result
    doing = {"create": "create index %s on %s" % (name, key),
             "rebuild": "drop the INVALID index %s on %s (concurrently) and build it again%s" % (name, key, note),
             "replace": "drop index %s (force, concurrently) and build it on %s as asked%s" % (name, key, note)}[action]
    if check_mode:
        result.update(changed=True, created=True, dropped=action != "create", rebuilt_invalid=action == "rebuild",
                      msg="check mode: would %s; nothing was changed" % doing)
        return result
    if action != "create":
        _drop(runtime, params, schema, table, name, result, "the INVALID index" if action == "rebuild" else "the index",
              found["named"]["valid"])
    _create(runtime, params, schema, table, name, result)
    result["rebuilt_invalid"] = action == "rebuild"
    incident = "" if params.get("incident_id") is None else " for %s" % params["incident_id"]
    result["msg"] = "%s: done in %.1f s%s" % (doing, result["duration_seconds"], incident)
    try:
        after = index_view(read(runtime, db, schema, table, name)["named"], name)
    except _pg.PgError as exc:
        after = None
        result["msg"] += " (cannot read it back: %s)" % exc
    result["index"] = after
    if diff:
        result["diff"] = _diff(before, after or intended)
    return result


def _create(runtime, params, schema, table, name, result):
    """Build the index concurrently; on failure drop the INVALID index the build left, and raise Failed saying so."""
    started = time.monotonic()
    try:
        execute(params, create_sql(schema, table, name, params["columns"], params["unique"]))
    except _pg.PgError as exc:
        result["duration_seconds"] = round(time.monotonic() - started, 3)
        error = server_error(exc)
        before = "; the index that was there before was dropped" if result["dropped"] else ""
        try:
            named = read(runtime, params["db"], schema, table, name)["named"]
        except _pg.PgError as read_exc:
            raise Failed("building index %s failed: %s; cannot tell whether it left an INVALID index: %s%s" % (
                name, error, read_exc, before), result)
        if named is None:
            raise Failed("building index %s failed before it was created: %s%s" % (
                name, error, before or "; nothing was changed"), result)
        if named["relkind"] != "i" or named["valid"] or named["table_schema"] != schema or named["table_name"] != table:
            result["index"] = index_view(named, name)
            raise Failed("building index %s failed: %s; a relation of that name, not left by this build, is there now (see "
                         "index): it was left as it is%s" % (name, error, before), result)
        try:
            execute(params, drop_sql(schema, name))
        except _pg.PgError as drop_exc:
            result.update(changed=True, index=index_view(named, name))
            raise Failed("building index %s failed: %s; the INVALID index it left could not be dropped: %s; it is never used "
                         "by a query but slows writes: drop it with state=absent (or run again to build it)%s" % (
                             name, error, server_error(drop_exc), before), result)
        result["index"] = None
        raise Failed("building index %s failed: %s; the INVALID index the build left was dropped (concurrently)%s" % (
            name, error, before or ": nothing was changed"), result)
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    result.update(changed=True, created=True)


def _absent(runtime, found, params, result, check_mode, diff):
    name, key, before = params["name"], result["table"], result["index"]
    schema, table = target(params["table"])
    action = decide_absent(found, params, schema, key)
    if diff:
        result["diff"] = _diff(before, None)
    if action == "none":
        result["msg"] = "there is no index %s in schema %s: nothing was changed" % (name, schema)
        return result
    if check_mode:
        result.update(changed=True, dropped=True, msg="check mode: would drop index %s on %s (concurrently); nothing was changed" % (name, key))
        return result
    started = time.monotonic()
    _drop(runtime, params, schema, table, name, result, "index", found["named"]["valid"])
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    result["index"] = None
    incident = "" if params.get("incident_id") is None else " for %s" % params["incident_id"]
    result["msg"] = "dropped index %s on %s (concurrently) in %.1f s%s" % (name, key, result["duration_seconds"], incident)
    return result
