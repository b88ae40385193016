# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service's own database (the whatsapp-mcp schema): its API keys, sessions, audit rows and login role. PRIVATE.

Every statement this collection runs against the service's tables is here, for api_keys, sessions_revoke,
pg_role_password and audit_log_info. Each function takes the _pg.Runtime that module already uses and the database name. Tables and
columns that a module takes as options are parameters, checked with _pg.check_name and quoted (_pg.qualified,
_pg.quote_ident). Values are quoted with _pg.quote_literal.

The audit table has columns actor, action, outcome and details (jsonb). A change a runbook makes writes one row
with its change id in details. Finding that row again (recorded_change) makes the change idempotent per change id.
"""
from __future__ import annotations

import json

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info, _scram

AUDIT_TABLE = "audit_log"
API_KEYS_REVOKED = "api_keys_revoked"
SESSIONS_REVOKED = "sessions_revoked"
INTEGER_TYPES = ("smallint", "integer", "bigint", "numeric")
JSON_TYPES = ("json", "jsonb")


def recorded_change(runtime, db, action, change_id, audit_table=AUDIT_TABLE):
    """The details (a dict) of the first `action` row of the service's audit table for change_id, or None."""
    details = runtime.scalar("SELECT details FROM %s WHERE action = %s AND details->>'change_id' = %s ORDER BY id LIMIT 1"
                             % (_pg.qualified(audit_table), _pg.quote_literal(action), _pg.quote_literal(change_id)), db)
    return json.loads(details) if details else None


# ------------------------------------------------------------------------------------------------ API keys
def api_key_report(runtime, db):
    """Active keys per pepper fingerprint, their total, and each client with its active keys."""
    rows = runtime.query(
        "SELECT c.name, c.contact_email, k.pepper_fingerprint, count(*) FROM api_keys k JOIN clients c ON c.id = k.client_id "
        "WHERE k.revoked_at IS NULL GROUP BY 1, 2, 3 ORDER BY 1, 3", db)
    by_fingerprint, clients = {}, {}
    for name, contact, pepper, count in rows:
        by_fingerprint[pepper] = by_fingerprint.get(pepper, 0) + int(count)
        client = clients.setdefault(name, dict(client=name, contact_email=contact, active_keys=0, by_pepper_fingerprint={}))
        client["active_keys"] += int(count)
        client["by_pepper_fingerprint"][pepper] = int(count)
    return dict(by_pepper_fingerprint=by_fingerprint, active=sum(by_fingerprint.values()), clients=list(clients.values()))


def revoke_api_keys_sql(keep, change_id, reason, actor):
    """One transaction: every active key not hashed with pepper `keep` revoked, and the audit row with whom to notify."""
    return """BEGIN;
WITH revoked AS (
    UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND pepper_fingerprint <> {keep} RETURNING client_id
), per_client AS (
    SELECT c.name AS client, c.contact_email, count(*) AS revoked_keys FROM revoked r JOIN clients c ON c.id = r.client_id GROUP BY 1, 2
)
INSERT INTO audit_log (actor, action, outcome, details)
SELECT {actor}, {action}, 'success', jsonb_build_object('change_id', {change_id}, 'reason', {reason}, 'kept_pepper_fingerprint', {keep},
       'revoked', sum(revoked_keys), 'notify', jsonb_agg(jsonb_build_object('client', client, 'contact_email', contact_email,
       'revoked_keys', revoked_keys) ORDER BY client))
FROM per_client HAVING count(*) > 0;
COMMIT;
""".format(keep=_pg.quote_literal(keep), change_id=_pg.quote_literal(change_id), reason=_pg.quote_literal(reason),
           actor=_pg.quote_literal(actor), action=_pg.quote_literal(API_KEYS_REVOKED))


def revoke_api_keys(runtime, db, keep, change_id, reason, actor, check_mode=False):
    """Revoke every active key whose pepper is not `keep`, once per change id (api_keys state=revoked).

    Returns changed, revoked (keys revoked by change_id, also by an earlier run of it), notify (the clients whose
    keys it revoked), by_pepper_fingerprint and active (after the run). In check mode, what the run would return.
    """
    before = api_key_report(runtime, db)
    to_revoke = sum(count for pepper, count in before["by_pepper_fingerprint"].items() if pepper != keep)
    if check_mode:
        earlier = recorded_change(runtime, db, API_KEYS_REVOKED, change_id) or {}
        notify = [dict(client=c["client"], contact_email=c["contact_email"],
                       revoked_keys=sum(n for p, n in c["by_pepper_fingerprint"].items() if p != keep))
                  for c in before["clients"] if any(p != keep for p in c["by_pepper_fingerprint"])]
        return dict(changed=to_revoke > 0, revoked=to_revoke + earlier.get("revoked", 0), notify=notify or earlier.get("notify", []),
                    by_pepper_fingerprint=before["by_pepper_fingerprint"], active=before["active"])
    if to_revoke:
        runtime.execute(revoke_api_keys_sql(keep, change_id, reason, actor), db)
    after = api_key_report(runtime, db)
    done = recorded_change(runtime, db, API_KEYS_REVOKED, change_id) or {}
    return dict(changed=bool(to_revoke), revoked=int(done.get("revoked", 0)), notify=done.get("notify", []),
                by_pepper_fingerprint=after["by_pepper_fingerprint"], active=after["active"])


# ------------------------------------------------------------------------------------------------ sessions
def check_session_names(tables, column, audit_table):
    """Refuse, before anything is run, a table or column name that is not a plain name (`schema.table` or `table`)."""
    if not tables:
        raise _pg.PgError("tables is empty")
    for table in tables + ([audit_table] if audit_table else []):
        for part in table.split(".", 1):
            _pg.check_name(part, "table name")
    _pg.check_name(column, "column name")


def require_columns(runtime, db, tables, column):
    for table in tables:
        present = runtime.scalar("SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped"
                                 % (_pg.quote_literal(_pg.qualified(table)), _pg.quote_literal(column)), db)
        if present != "1":
            raise _pg.PgError("table %s does not exist in %s or has no column %s" % (table, db, column))


def active_rows(runtime, db, tables, column):
    """Rows per table whose `column` is null (not revoked)."""
    sql = " UNION ALL ".join("SELECT %s, count(*) FROM %s WHERE %s IS NULL" % (_pg.quote_literal(t), _pg.qualified(t), _pg.quote_ident(column))
                             for t in tables)
    return _pg.parse_counts(runtime.query(sql, db))


def revoke_sessions_sql(tables, column, change_id, reason, actor, audit_table):
    """One statement: the updates and the audit row commit together or not at all. It returns the counts per table."""
    column = _pg.quote_ident(column)
    parts = ["r%d AS (UPDATE %s SET %s = now() WHERE %s IS NULL RETURNING 1)" % (i, _pg.qualified(t), column, column) for i, t in enumerate(tables)]
    counts = ", ".join("%s, (SELECT count(*) FROM r%d)" % (_pg.quote_literal(t), i) for i, t in enumerate(tables))
    parts.append("counts AS (SELECT jsonb_build_object(%s) AS revoked)" % counts)
    if audit_table:
        parts.append(
            "audit AS (INSERT INTO %s (actor, action, outcome, details) SELECT %s, %s, 'success', jsonb_build_object('change_id', %s, "
            "'reason', %s, 'revoked', revoked) FROM counts)"
            % (_pg.qualified(audit_table), _pg.quote_literal(actor), _pg.quote_literal(SESSIONS_REVOKED),
               _pg.quote_literal(change_id), _pg.quote_literal(reason)))
    return "WITH %s SELECT revoked FROM counts" % ",\n".join(parts)


def revoke_sessions(runtime, db, tables, column, change_id, reason, actor, audit_table=AUDIT_TABLE, check_mode=False):
    """Set `column` to now() on every row of `tables` where it is null, with one audit row, once per change id
    (without an audit table, every run revokes what is active). Names are checked by check_session_names.

    Returns changed, msg, revoked (per table, by this change id) and active (per table, after the run).
    """
    require_columns(runtime, db, tables, column)
    before = active_rows(runtime, db, tables, column)
    earlier = recorded_change(runtime, db, SESSIONS_REVOKED, change_id, audit_table) if audit_table else None
    if earlier is not None:
        return dict(changed=False, msg="change %s already revoked the sessions" % change_id, revoked=earlier.get("revoked", {}), active=before)
    changed = any(before.values())
    if check_mode or not changed:
        return dict(changed=changed, msg="%d rows to revoke" % sum(before.values()), revoked=before, active=before)
    revoked = json.loads(runtime.scalar(revoke_sessions_sql(tables, column, change_id, reason, actor, audit_table), db))
    return dict(changed=True, msg="revoked %s" % ", ".join("%d in %s" % (revoked[t], t) for t in tables), revoked=revoked,
                active=active_rows(runtime, db, tables, column))


# ------------------------------------------------------------------------------------------------ login role
def stored_verifier(runtime, role):
    """The role's stored password ('' when it has none); PgError when the role does not exist."""
    try:
        rows = runtime.query("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = %s" % _pg.quote_literal(role))
    except _pg.PgError as exc:
        raise _pg.PgError("cannot read the password of role %s (pg_authid needs a superuser login_user): %s" % (role, exc)) from None
    if not rows:
        raise _pg.PgError("role %s does not exist" % role)
    return rows[0][1] or ""


def set_role_password(runtime, role, password, check_mode=False):
    """Give `role` the SCRAM verifier of `password` unless its stored one already matches; read back after the change.
    Returns whether it changed (in check mode, whether it would)."""
    changed = not _scram.matches(stored_verifier(runtime, role), password)
    if changed and not check_mode:
        runtime.execute("ALTER ROLE %s PASSWORD %s" % (_pg.quote_ident(role), _pg.quote_literal(_scram.verifier(password))))
        if not _scram.matches(stored_verifier(runtime, role), password):
            raise _pg.PgError("the password of role %s does not verify after ALTER ROLE" % role)
    return changed


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
    result = _pg_info.answer(runtime, db, sql)
    result["last_id"] = int(result["last_id"])
    return result
