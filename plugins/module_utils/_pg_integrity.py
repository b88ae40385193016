# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a database corrupt, and where (pg_integrity_info). PRIVATE to the collection: no compatibility promise.

The relations are listed first, read-only, in one statement (one JSON value). Then one psql session (a coprocess)
holds ONE transaction that every check runs in, and that is always rolled back: when amcheck is not installed it is
created inside that transaction (in a schema of its own, created there too), so the database is left as it was found.
The transaction is opened READ WRITE explicitly (a database set `default_transaction_read_only = on`, as
pg_read_only leaves it, still allows it), every session default stays read-only (PGOPTIONS) and psql runs with
AUTOCOMMIT off, so nothing the session sends can commit.

Each check runs under a savepoint that is rolled back right after it, so an error ends that check only and the locks
it took are released at once (a long run does not hold every table's lock). psql runs with ON_ERROR_STOP off and
echoes after each statement whether it failed, its SQLSTATE and the message, on stdout in order with the rows.
Only messages (amcheck's, or the server's error) reach the result, never a row.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info, _run_lock

STATUSES = ("ok", "corrupt", "unreadable", "skipped")
MAX_PROBLEMS = 20  # problems listed per relation (a line then says how many more)
PROBLEM_CHARS = 300
MAX_STATEMENT_TIMEOUT = 2147483  # seconds: the server's statement_timeout is an int of milliseconds
WATCHDOG_GRACE = 60  # seconds past statement_timeout before the client kills a psql that does not answer
HEAPAM_SINCE = 140000  # verify_heapam came with PostgreSQL 14 (amcheck 1.3)
TEMP_SCHEMA = "runbooks_incident_amcheck"  # where amcheck is created for the run (rolled back with it)
# Errors that say the check did not finish, not that the data is bad: the relation is skipped, not blamed.
NOT_FINISHED = {
    "57014": "did not finish within statement_timeout",
    "42501": "login_user may not read it",
    "42P01": "dropped while the checks ran",
    "55P03": "its lock was not available",
    "53200": "the server ran out of memory",
}
AMCHECK_HEAPAM = "verify_heapam(regclass,boolean,boolean,text,bigint,bigint)"
AMCHECK_BTREE = "bt_index_check(regclass,boolean)"
USER_SCHEMA_SQL = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
                   "AND n.nspname NOT LIKE 'pg\\_temp\\_%'")
# The tables (ordinary, partitioned, materialized views; no temporary ones), their btree and other indexes, and what
# decides how amcheck can be used. Names travel JSON-escaped.
CATALOG_SQL = """
SELECT jsonb_build_object(
  'version', current_setting('server_version_num')::int,
  'in_recovery', pg_is_in_recovery(),
  'login_user', current_user,
  'amcheck', (
    SELECT jsonb_build_object('schema', n.nspname, 'version', e.extversion,
                              'heapam', CASE WHEN h.oid IS NULL THEN 'missing' WHEN has_function_privilege(h.oid, 'EXECUTE')
                                             THEN 'ok' ELSE 'denied' END,
                              'btree', CASE WHEN b.oid IS NULL THEN 'missing' WHEN has_function_privilege(b.oid, 'EXECUTE')
                                            THEN 'ok' ELSE 'denied' END)
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace,
         LATERAL (SELECT to_regprocedure(format('%I.{heapam}', n.nspname))::oid AS oid) h,
         LATERAL (SELECT to_regprocedure(format('%I.{btree}', n.nspname))::oid AS oid) b
    WHERE e.extname = 'amcheck'),
  'tables', coalesce((
    SELECT jsonb_agg(jsonb_build_object('oid', c.oid, 'schema', n.nspname, 'name', c.relname, 'relkind', c.relkind,
                                        'populated', c.relispopulated,
                                        'parent', (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid AND c.relispartition))
                     ORDER BY n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence <> 't' AND {user_schema}), '[]'),
  'indexes', coalesce((
    SELECT jsonb_agg(jsonb_build_object('schema', n.nspname, 'name', c.relname, 'table', x.indrelid, 'method', a.amname,
                                        'valid', x.indisvalid AND x.indisready)
                     ORDER BY n.nspname, c.relname)
    FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_am a ON a.oid = c.relam
    WHERE c.relkind = 'i' AND c.relpersistence <> 't' AND {user_schema}), '[]'))
""".format(heapam=AMCHECK_HEAPAM, btree=AMCHECK_BTREE, user_schema=USER_SCHEMA_SQL)


class IntegrityError(Exception):
    """A refused input: the message says what, and nothing was checked."""


class Refused(IntegrityError):
    """More relations than max_relations: nothing was checked."""


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise IntegrityError("%s is %r: it must be a whole number, %d to %d" % (name, value, minimum, maximum))
    return value


def check_params(params):
    """IntegrityError (or _pg.PgError for the database name) for an option that is not valid, before any connection."""
    _pg.check_name(params["db"])
    _whole("max_relations", params["max_relations"], 1, 100000)
    _whole("statement_timeout", params["statement_timeout"], 1, MAX_STATEMENT_TIMEOUT)
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(incident_id):
        raise IntegrityError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))
    for table in params.get("tables") or []:
        if not table or not table.strip():
            raise IntegrityError("tables holds an empty name")


# -------------------------------------------------------------------------------------------------- select
def _leaves(table, children):
    """The tables that hold the rows of `table`: itself, or for a partitioned table its partitions (recursively)."""
    found, pending, seen = [], [table], set()
    while pending:
        current = pending.pop()
        if current["oid"] in seen:
            continue
        seen.add(current["oid"])
        if current["relkind"] == "p":
            pending.extend(children.get(current["oid"], []))
        else:
            found.append(current)
    return found


def select(catalog, tables=None, indexes=True):
    """The relations to check, each table followed by its indexes: dicts with relation (its key, see _pg.table_key),
    kind (table or index) and what the checks need. IntegrityError for a name of `tables` that is no table."""
    by_name, children = {}, {}
    for table in catalog["tables"]:
        by_name[(table["schema"], table["name"])] = table
        if table["parent"] is not None:
            children.setdefault(table["parent"], []).append(table)
    if tables is None:
        chosen = [table for table in catalog["tables"] if table["relkind"] != "p"]
    else:
        chosen, unknown = {}, []
        for key in tables:
            table = by_name.get(_pg.split_key(key.strip()))
            if table is None:
                unknown.append(key)
                continue
            for leaf in _leaves(table, children):
                chosen[leaf["oid"]] = leaf
        if unknown:
            raise IntegrityError("no table %s (an ordinary or partitioned table or a materialized view outside the system "
                                 "schemas; name it schema.table, quoting a part as in SQL: \"Odd.Schema\".\"T\")"
                                 % ", ".join(repr(key) for key in unknown))
        chosen = list(chosen.values())
    by_table = {}
    for index in catalog["indexes"] if indexes else []:
        by_table.setdefault(index["table"], []).append(index)
    relations = []
    for table in sorted(chosen, key=lambda item: (item["schema"], item["name"])):
        entry = dict(relation=_pg.table_key(table["schema"], table["name"]), kind="table", schema=table["schema"],
                     name=table["name"], relkind=table["relkind"], populated=table["populated"])
        relations.append(entry)
        for index in by_table.get(table["oid"], []):
            relations.append(dict(relation=_pg.table_key(index["schema"], index["name"]), kind="index", schema=index["schema"],
                                  name=index["name"], method=index["method"], valid=index["valid"], table=entry))
    return relations


# --------------------------------------------------------------------------------------------------- psql
class Checker:
    """One psql session (a coprocess) for the transaction every check runs in. `run` sends one statement and returns
    (rows, error): error is None or (sqlstate, message). psql's stderr goes to a file, so that many errors cannot fill
    a pipe nobody reads; the errors themselves come back on stdout (psql 12 or later: ERROR, SQLSTATE,
    LAST_ERROR_MESSAGE)."""

    def __init__(self, runtime, db, wait):
        self._wait = wait
        self._token = os.urandom(8).hex()
        self._count = 0
        self._killed = False
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        argv = runtime.psql_command(db, "-A", "-t", "-F", _pg.FIELD_SEP, "-P", "null=" + _pg.NULL_MARK)
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                          encoding="utf-8", errors="replace", env=runtime.env())
        except OSError as exc:
            self._stderr.close()
            raise _pg.PgError("cannot run %s: %s" % (argv[0], exc.strerror or exc))
        # Errors are answers here, and nothing may commit: psql opens a transaction and never commits one itself.
        self._send("\\set ON_ERROR_STOP off\n\\set AUTOCOMMIT off\n")

    def _send(self, text):
        try:
            self._proc.stdin.write(text)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._lost()

    def _lost(self):
        if self._killed:
            return _pg.PgError("psql gave no answer within %d s (killed)" % self._wait)
        self._proc.wait()
        self._stderr.seek(0)
        return _pg.PgError(_pg.first_line(self._stderr.read()))

    def run(self, sql):
        if "\0" in sql:
            raise _pg.PgError("the SQL holds a NUL character, which PostgreSQL text cannot hold")
        self._count += 1
        mark = "__runbooks_incident_%s_%d__" % (self._token, self._count)
        watchdog = threading.Timer(self._wait, self._kill)
        watchdog.start()
        try:
            self._send("%s;\n\\echo %s :ERROR :SQLSTATE\n\\echo :LAST_ERROR_MESSAGE\n\\echo %s_end\n" % (sql.rstrip().rstrip(";"), mark, mark))
            rows, status, message = [], None, []
            for line in self._proc.stdout:
                line = line.rstrip("\n")
                if status is None and line.startswith(mark + " "):
                    status = line[len(mark) + 1:].split(" ")
                elif status is None:
                    if line:
                        rows.append([None if value == _pg.NULL_MARK else value for value in line.split(_pg.FIELD_SEP)])
                elif line == mark + "_end":
                    break
                else:
                    message.append(line)
            else:
                raise self._lost()
        finally:
            watchdog.cancel()
        if len(status) != 2 or status[0] not in ("true", "false"):
            raise _pg.PgError("psql did not report the outcome of a statement (it needs psql 12 or later): %r" % " ".join(status))
        if status[0] == "false":
            return rows, None
        return rows, (status[1], " ".join(part.strip() for part in message if part.strip()))

    def must(self, sql):
        """Rows of a statement that has to succeed (the transaction's own statements): PgError otherwise."""
        rows, error = self.run(sql)
        if error:
            raise _pg.PgError("%s (SQLSTATE %s)" % (error[1], error[0]))
        return rows

    def attempt(self, sql):
        """(rows, error) of `sql` under a savepoint that is rolled back after it, whatever its outcome: an error
        leaves the transaction usable, and the locks the check took are released."""
        self.must("SAVEPOINT runbooks_incident_check")
        try:
            return self.run(sql)
        finally:
            self.must("ROLLBACK TO SAVEPOINT runbooks_incident_check; RELEASE SAVEPOINT runbooks_incident_check")

    def _kill(self):
        self._killed = True
        self._proc.kill()

    def close(self):
        """Roll the transaction back (the server would at the disconnection anyway), then end psql."""
        _pg.end_psql(self._proc, "ROLLBACK;\n")
        self._stderr.close()


# -------------------------------------------------------------------------------------------------- checks
def _truncated(text):
    text = " ".join(str(text).split())
    return text if len(text) <= PROBLEM_CHARS else text[:PROBLEM_CHARS - 3] + "..."


def _qualified(relation):
    return "%s.%s" % (_pg.quote_ident(relation["schema"]), _pg.quote_ident(relation["name"]))


def _regclass(relation):
    # By name, not oid: a relation dropped since the list was read fails as undefined (42P01), not as corrupt.
    return "%s::regclass" % _pg.quote_literal(_qualified(relation))


def heap_sql(schema, relation):
    """verify_heapam's findings on a table: how many, and the first MAX_PROBLEMS as lines (block, offset, message)."""
    return """
SELECT jsonb_build_object('count', count(*), 'first', coalesce(jsonb_agg(p.line ORDER BY p.n) FILTER (WHERE p.n <= {most}), '[]'))
FROM (SELECT row_number() OVER () AS n,
             left(format('block %s, offset %s%s: %s', v.blkno, v.offnum, coalesce(', attribute ' || v.attnum, ''), v.msg), {chars}) AS line
      FROM {schema}.verify_heapam(relation => {table}, on_error_stop => false, check_toast => true, skip => 'none') v) p
""".format(most=MAX_PROBLEMS, chars=PROBLEM_CHARS, schema=_pg.quote_ident(schema), table=_regclass(relation))


def read_sql(relation):
    """Every row of the table read and turned to text (a sequential scan; TOASTed values fetched): a damaged page or
    value fails it. Only the count and a length come back."""
    return "SELECT count(*), sum(octet_length(r::text)) FROM ONLY %s AS r" % _qualified(relation)


def btree_sql(schema, relation, heapallindexed):
    return "SELECT 1 FROM %s.bt_index_check(%s, %s)" % (_pg.quote_ident(schema), _regclass(relation), "true" if heapallindexed else "false")


def _not_finished(error, statement_timeout):
    reason = NOT_FINISHED.get(error[0])
    if reason is None:
        return None
    if error[0] == "57014":
        reason = "did not finish within statement_timeout=%d s" % statement_timeout
    return "%s: %s" % (reason, _truncated(error[1]))


def check_table(checker, relation, amcheck_schema, statement_timeout):
    """The table's status, problems, whether its read finished, and whether a check did not finish."""
    if relation["relkind"] == "m" and not relation["populated"]:
        return dict(status="skipped", problems=["a materialized view never populated (REFRESH MATERIALIZED VIEW): no data to check"],
                    readable=False, unfinished=False)
    problems, unfinished = [], []
    if amcheck_schema:
        rows, error = checker.attempt(heap_sql(amcheck_schema, relation))
        if error and _not_finished(error, statement_timeout):
            unfinished.append("verify_heapam " + _not_finished(error, statement_timeout))
        elif error:
            problems.append("verify_heapam: " + _truncated(error[1]))
        else:
            found = json.loads(rows[0][0])
            problems.extend(_truncated(line) for line in found["first"])
            if found["count"] > MAX_PROBLEMS:
                problems.append("... and %d more problems found by verify_heapam" % (found["count"] - MAX_PROBLEMS))
    _rows, error = checker.attempt(read_sql(relation))
    if error and _not_finished(error, statement_timeout):
        unfinished.append("read " + _not_finished(error, statement_timeout))
    elif error:
        return dict(status="unreadable", problems=problems + ["read: " + _truncated(error[1])], readable=False, unfinished=bool(unfinished))
    readable = error is None
    if problems:
        return dict(status="corrupt", problems=problems + unfinished, readable=readable, unfinished=bool(unfinished))
    if unfinished:
        return dict(status="skipped", problems=unfinished, readable=readable, unfinished=True)
    return dict(status="ok", problems=[], readable=True, unfinished=False)


def check_index(checker, relation, table_result, amcheck_schema, amcheck, statement_timeout):
    if not amcheck_schema:
        return dict(status="skipped", problems=["not checked: amcheck %s" % amcheck], unfinished=False)
    if relation["method"] != "btree":
        return dict(status="skipped", problems=["a %s index: amcheck checks btree indexes only" % relation["method"]], unfinished=False)
    if not relation["valid"]:
        return dict(status="skipped", problems=["not valid (a failed CREATE INDEX CONCURRENTLY?): not checked"], unfinished=False)
    if relation["table"]["relkind"] == "m" and not relation["table"]["populated"]:
        return dict(status="skipped", problems=["its materialized view was never populated"], unfinished=False)
    # Whether every heap tuple is in the index is asked only of a table that checked clean: a damaged heap would
    # otherwise be blamed on the index.
    _rows, error = checker.attempt(btree_sql(amcheck_schema, relation, table_result["status"] == "ok"))
    if error is None:
        return dict(status="ok", problems=[], unfinished=False)
    reason = _not_finished(error, statement_timeout)
    if reason:
        return dict(status="skipped", problems=["bt_index_check " + reason], unfinished=True)
    return dict(status="corrupt", problems=["bt_index_check: " + _truncated(error[1])], unfinished=False)


# ------------------------------------------------------------------------------------------------- amcheck
def existing_amcheck(catalog):
    """(schema to call amcheck in, or None; why not) for the amcheck the database has; (None, None) when it has none."""
    found = catalog["amcheck"]
    if catalog["version"] < HEAPAM_SINCE:
        return None, "PostgreSQL %d has no verify_heapam (amcheck checks heaps from PostgreSQL 14 on)" % catalog["version"]
    if found is None:
        return None, None
    if "missing" in (found["heapam"], found["btree"]):
        return None, ("amcheck %s in schema %s lacks verify_heapam or bt_index_check (ALTER EXTENSION amcheck UPDATE)"
                      % (found["version"], found["schema"]))
    if "denied" in (found["heapam"], found["btree"]):
        return None, ("login_user %s may not execute %s.verify_heapam and bt_index_check (GRANT EXECUTE on them, or use a superuser)"
                      % (catalog["login_user"], found["schema"]))
    return found["schema"], None


def prepare(checker, catalog, statement_timeout):
    """Open the transaction and make amcheck usable in it: (schema of amcheck or None, amcheck status text)."""
    checker.must("BEGIN READ ONLY" if catalog["in_recovery"] else "BEGIN READ WRITE")
    for setting in ("statement_timeout = %d" % (statement_timeout * 1000), "search_path = pg_catalog, pg_temp",
                    "enable_indexscan = off", "enable_indexonlyscan = off", "enable_bitmapscan = off"):
        checker.must("SET LOCAL " + setting)
    schema, reason = existing_amcheck(catalog)
    if schema:
        return schema, "available"
    if reason:
        return None, "unavailable: " + reason
    if catalog["in_recovery"]:
        return None, "unavailable: not installed, and the server is in recovery (a standby), where it cannot be"
    checker.must("SAVEPOINT runbooks_incident_amcheck")
    error = None
    for statement in ("CREATE SCHEMA %s" % TEMP_SCHEMA, "CREATE EXTENSION amcheck SCHEMA %s" % TEMP_SCHEMA):
        _rows, error = checker.run(statement)
        if error:
            break
    if error:
        checker.must("ROLLBACK TO SAVEPOINT runbooks_incident_amcheck; RELEASE SAVEPOINT runbooks_incident_amcheck")
        return None, "unavailable: not installed, and login_user %s cannot install it for the run: %s" % (
            catalog["login_user"], _truncated(error[1]))
    checker.must("RELEASE SAVEPOINT runbooks_incident_amcheck")
    return TEMP_SCHEMA, "installed temporarily"


# ----------------------------------------------------------------------------------------------------- run
def _summary(result, tables, indexes):
    bad = [item for item in result["relations"] if item["status"] in ("corrupt", "unreadable")]
    skipped = [item for item in result["relations"] if item["status"] == "skipped"]
    text = "checked %d table%s and %d index%s of %s (amcheck %s)" % (
        tables, "" if tables == 1 else "s", indexes, "" if indexes == 1 else "es", result["db"], result["amcheck"])
    if bad:
        text += ": %d with problems: %s" % (len(bad), ", ".join("%s (%s)" % (item["relation"], item["status"]) for item in bad))
    elif result["healthy"]:
        text += ": no corruption found"
    if skipped:
        text += "; %d skipped: %s" % (len(skipped), ", ".join(item["relation"] for item in skipped[:10]) + (", ..." if len(skipped) > 10 else ""))
    return text


def run(runtime, params):
    """The module's result, through `runtime` (every session default read-only: _pg_info.read_only_runtime).
    IntegrityError for a refused input (Refused above max_relations), _pg.PgError when the server cannot answer or
    the transaction breaks."""
    check_params(params)
    db, timeout = params["db"], params["statement_timeout"]
    runtime.ping()
    catalog = _pg_info.answer(runtime, db, CATALOG_SQL)
    relations = select(catalog, params.get("tables"), params["indexes"])
    if len(relations) > params["max_relations"]:
        raise Refused("%d relations of %s selected (%d tables and their indexes), more than max_relations=%d: none was "
                      "checked; name fewer tables, set indexes=false or raise max_relations"
                      % (len(relations), db, sum(1 for item in relations if item["kind"] == "table"), params["max_relations"]))
    result = dict(changed=False, db=db, relations=[], corrupt=[], readable_tables=[], amcheck="unavailable: not tried", healthy=True)
    if params.get("incident_id") is not None:
        result["incident_id"] = params["incident_id"]
    unfinished = False
    if relations:
        checker = Checker(runtime, db, timeout + WATCHDOG_GRACE)
        try:
            schema, result["amcheck"] = prepare(checker, catalog, timeout)
            outcomes = {}
            for relation in relations:
                if relation["kind"] == "table":
                    outcome = check_table(checker, relation, schema, timeout)
                    if outcome["readable"]:
                        result["readable_tables"].append(relation["relation"])
                else:
                    outcome = check_index(checker, relation, outcomes[relation["table"]["relation"]], schema, result["amcheck"], timeout)
                outcomes[relation["relation"]] = outcome
                unfinished = unfinished or outcome["unfinished"]
                result["relations"].append(dict(relation=relation["relation"], kind=relation["kind"], status=outcome["status"],
                                                problems=outcome["problems"]))
            checker.must("ROLLBACK")
        finally:
            checker.close()
    else:
        schema, reason = existing_amcheck(catalog)
        result["amcheck"] = "available" if schema else "unavailable: %s" % (reason or "not installed (no relation to check: not tried)")
    result["corrupt"] = [item["relation"] for item in result["relations"] if item["status"] in ("corrupt", "unreadable")]
    result["healthy"] = not result["corrupt"] and not unfinished
    result["msg"] = _summary(result, sum(1 for item in relations if item["kind"] == "table"),
                             sum(1 for item in relations if item["kind"] == "index"))
    return result
