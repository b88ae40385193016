# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A database set read-only, or back to read-write, and its sessions ended so they reconnect with it (pg_read_only).
PRIVATE to the collection: no compatibility promise.

The state is the database's own `default_transaction_read_only` (pg_db_role_setting, role 0): read_only when it is
set true, read_write when it is unset or false. read_only sets it (`ALTER DATABASE ... SET ... = on`); read_write
removes it (`RESET`), so the server-wide default applies again.

A setting of the database applies to the sessions that start after it: the sessions already there are ended (the
rules and the statements of _pg_sessions: never its own, a superuser's, a session that is no client session or that
login_user may not signal or see), decided before anything changes: more than max_terminate, nothing changes. The
sessions that started before the change and are not ended are reported (still_writable). Every connection but the
one that alters the database is read-only (_pg_info.read_only_runtime).
"""
from __future__ import annotations

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info, _pg_sessions, _run_lock

STATES = ("read_only", "read_write")
SETTING = "default_transaction_read_only"
# template1 is what every new database is copied from, template0 takes no connection: neither is ever altered here.
REFUSED_DATABASES = ("template0", "template1")
MAX_TERMINATE = 10000


class ReadOnlyError(Exception):
    """A refused input: the message says what, and nothing was changed."""


class Refused(ReadOnlyError):
    """More sessions to end than max_terminate: nothing was changed; `result` is what was read."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class Unfinished(Exception):
    """The setting was changed, but ending the sessions failed or some outlived the wait; `result` says what was done."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------- options
def check_params(params):
    """ReadOnlyError (or _pg.PgError for the database name) for an option that is not valid, before any connection."""
    _pg.check_name(params["db"])
    if params["db"] in REFUSED_DATABASES:
        raise ReadOnlyError("db %s is a template database: it is never set read-only or read-write" % params["db"])
    if params["state"] not in STATES:
        raise ReadOnlyError("state is %r: one of %s" % (params["state"], ", ".join(STATES)))
    value = params["max_terminate"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TERMINATE:
        raise ReadOnlyError("max_terminate is %r: it must be a whole number, 0 to %d" % (value, MAX_TERMINATE))
    incident_id = params.get("incident_id")
    if incident_id is None or not _run_lock.INCIDENT_ID.match(incident_id):
        raise ReadOnlyError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))


# ---------------------------------------------------------------------------------------------------- read
def state_sql(db):
    """The database (oid or null), its own setting (raw and as a boolean, null when unset), and the roles whose own
    setting overrides the database's (ALTER ROLE ... [IN DATABASE ...] SET)."""
    return """
WITH target AS (SELECT oid FROM pg_database WHERE datname = {db}),
settings AS (
    SELECT s.setrole, s.setdatabase, substr(c.cfg, {start}) AS value
    FROM pg_db_role_setting s, unnest(s.setconfig) c(cfg)
    WHERE c.cfg LIKE {like} AND (s.setdatabase = 0 OR s.setdatabase IN (SELECT oid FROM target))
)
SELECT jsonb_build_object(
  'oid', (SELECT oid FROM target),
  'setting', (SELECT value FROM settings WHERE setrole = 0),
  'read_only', (SELECT value::boolean FROM settings WHERE setrole = 0),
  'roles', coalesce((SELECT jsonb_agg(jsonb_build_object('role', r.rolname, 'read_only', s.value::boolean,
                                                         'in_database', s.setdatabase <> 0) ORDER BY r.rolname, s.setdatabase)
                     FROM settings s JOIN pg_roles r ON r.oid = s.setrole), '[]'))
""".format(db=_pg.quote_literal(db), start=len(SETTING) + 2, like=_pg.quote_literal(SETTING.replace("_", "\\_") + "=%"))


def read_state(runtime, db):
    """{'oid', 'setting', 'read_only', 'roles'}; ReadOnlyError when the database does not exist."""
    found = _pg_info.answer(runtime, runtime.maintenance_db, state_sql(db))
    if found["oid"] is None:
        raise ReadOnlyError("database %s does not exist" % db)
    return found


def state_of(found):
    return "read_only" if found["read_only"] else "read_write"


def sort_sessions(sessions, own_pid):
    """(sessions to end, client sessions never ended [{'pid', 'user', 'reason'}]) of _pg_sessions.read's sessions;
    sessions that are no client session (workers, walsenders) are neither."""
    to_end, kept = [], []
    for session in sessions:
        if session["pid"] == own_pid or session["backend_type"] not in ("client backend", None):
            continue
        if session["protected"] is None:
            to_end.append(session)
        else:
            kept.append(dict(pid=session["pid"], user=session["user"], reason=session["protected"]))
    return to_end, kept


def _pids(sessions):
    return ", ".join("%d" % session["pid"] for session in sessions) or "none"


# -------------------------------------------------------------------------------------------------- change
def change_sql(db, state):
    """Set or remove the database's setting, then the time after the commit: sessions that started before it may
    still run with the old setting."""
    if state == "read_only":
        alter = "ALTER DATABASE %s SET %s = on" % (_pg.quote_ident(db), SETTING)
    else:
        alter = "ALTER DATABASE %s RESET %s" % (_pg.quote_ident(db), SETTING)
    return "%s;\nSELECT clock_timestamp()::text" % alter


def predating_sql(changed_at):
    return ("SELECT coalesce(jsonb_agg(pid ORDER BY pid), '[]') FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_start < %s::timestamptz" % _pg.quote_literal(changed_at))


def writing_runtime(params):
    """The connection that alters the database: writable even when the maintenance database is the one set read-only."""
    runtime = _pg.Runtime.from_params(params)
    runtime.pgoptions = _pg.session_options(((SETTING, "off"),))
    return runtime


def end_sessions(runtime, db, selected, changed_at, max_terminate, incident_id):
    """End the client sessions that started before the change (those selected before it, and any that connected
    while it was made, as long as they stay within max_terminate): (pids ended, pids signalled but still there after
    the wait, client sessions left running [{'pid', 'user', 'reason'}])."""
    found = _pg_sessions.read(runtime, db, [], 0)
    predating = set(_pg_info.answer(runtime, db, predating_sql(changed_at)))
    to_end, kept = sort_sessions([session for session in found["sessions"] if session["pid"] in predating], found["own_pid"])
    if len(to_end) > max_terminate:
        first = {(session["pid"], session["backend_start"]) for session in selected}
        late = [session for session in to_end if (session["pid"], session["backend_start"]) not in first]
        to_end = [session for session in to_end if (session["pid"], session["backend_start"]) in first]
        kept += [dict(pid=session["pid"], user=session["user"], reason="connected while the setting changed; ending it too "
                      "would exceed max_terminate=%d" % max_terminate) for session in late]
    signalled = _pg_sessions.signal(runtime, db, to_end, incident_id) if to_end else []
    sent = [session for session in to_end if session["pid"] in signalled]
    remaining = _pg_sessions.wait_gone(runtime, db, sent)
    return [pid for pid in signalled if pid not in remaining], remaining, sorted(kept, key=lambda item: item["pid"])


# ----------------------------------------------------------------------------------------------------- run
def _diff(db, before, after):
    return dict(before=dict(db=db, state=state_of(before), **{SETTING: before["setting"]}),
                after=dict(db=db, state=after, **{SETTING: "on" if after == "read_only" else None}))


def _overrides(found, state):
    """Warnings for roles whose own setting keeps their sessions in the other state."""
    wanted = state == "read_only"
    return ["role %s has its own %s=%s%s, which overrides the database's: its sessions stay %s" % (
        item["role"], SETTING, "on" if item["read_only"] else "off", " in this database" if item["in_database"] else "",
        "read-only" if item["read_only"] else "writable") for item in found["roles"] if item["read_only"] is not wanted]


def run(runtime, params, check_mode=False, diff=False, warn=None):
    """The module's result; `runtime` reads (_pg_info.read_only_runtime), writing_runtime(params) alters. ReadOnlyError
    for a refused input, Refused over max_terminate (nothing changed), Unfinished when the setting changed but not
    every session could be ended; _pg.PgError when the server cannot answer (before any change)."""
    check_params(params)
    db, state, incident_id = params["db"], params["state"], params["incident_id"]
    runtime.ping()
    found = read_state(runtime, db)
    previous = state_of(found)
    for line in _overrides(found, state):
        (warn or (lambda _msg: None))(line)
    result = dict(changed=False, db=db, state=state, previous=previous, terminated=[], still_writable=[], incident_id=incident_id)
    if diff:
        result["diff"] = _diff(db, found, state)
    if previous == state:
        result["msg"] = "%s is %s already: nothing was changed, no session was ended" % (db, state.replace("_", "-"))
        if diff:
            result["diff"]["after"] = result["diff"]["before"]
        return result
    sessions = _pg_sessions.read(runtime, db, [], 0)
    selected, kept = sort_sessions(sessions["sessions"], sessions["own_pid"])
    if not params["end_sessions"]:
        kept += [dict(pid=session["pid"], user=session["user"], reason="end_sessions=false") for session in selected]
        selected = []
    kept.sort(key=lambda item: item["pid"])
    if state == "read_only":
        result["still_writable"] = kept
    if len(selected) > params["max_terminate"]:
        raise Refused("%d sessions of %s would be ended (pid %s), more than max_terminate=%d: nothing was changed, %s is "
                      "still %s; raise max_terminate, set end_sessions=false, or end sessions first with pg_sessions"
                      % (len(selected), db, _pids(selected), params["max_terminate"], db, previous.replace("_", "-")), result)
    if check_mode:
        result.update(changed=True, msg="check mode: would set %s %s and end %s; nothing was changed" % (
            db, state.replace("_", "-"), "%d session%s (pid %s)" % (len(selected), "" if len(selected) == 1 else "s", _pids(selected))
            if selected else "no session"))
        return result
    changed_at = writing_runtime(params).scalar(change_sql(db, state), runtime.maintenance_db)
    result["changed"] = True
    if not params["end_sessions"]:
        result["msg"] = "%s set %s; no session was ended (end_sessions=false)" % (db, state.replace("_", "-"))
        return result
    try:
        ended, remaining, kept = end_sessions(runtime, db, selected, changed_at, params["max_terminate"], incident_id)
    except _pg.PgError as exc:
        raise Unfinished("%s set %s, but ending its sessions failed: %s; the sessions that started before run with the old "
                         "setting until they reconnect: end them with pg_sessions" % (db, state.replace("_", "-"), exc), result)
    result["terminated"] = ended
    result["still_writable"] = kept if state == "read_only" else []
    if remaining:
        raise Unfinished("%s set %s; signalled sessions still there after %d s: pid %s (ended: pid %s)" % (
            db, state.replace("_", "-"), _pg_sessions.GONE_WAIT, ", ".join("%d" % pid for pid in remaining),
            ", ".join("%d" % pid for pid in ended) or "none"), result)
    msg = "%s set %s for %s; %s" % (db, state.replace("_", "-"), incident_id, "ended %d session%s (pid %s)" % (
        len(ended), "" if len(ended) == 1 else "s", ", ".join("%d" % pid for pid in ended)) if ended else "no session to end")
    if kept:
        msg += "; %s with the old setting: %s" % ("still writable" if state == "read_only" else "still read-only",
                                                  "; ".join("pid %d (%s): %s" % (item["pid"], item["user"], item["reason"]) for item in kept))
    result["msg"] = msg
    return result
