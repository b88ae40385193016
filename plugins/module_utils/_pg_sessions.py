# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sessions of a database, who blocks whom, and ending the ones an operator selects (pg_sessions). PRIVATE to
the collection: no compatibility promise.

One statement reads every session of the database in one snapshot (_pg_info's session fields and lock waits, so
pg_locks_info and this module say the same of a session). The selection is made here, in Python, from what that
snapshot returned: the selectors combine with AND, and a session the collection never ends (its own, one that is no
client session, a superuser's, one login_user may not signal or cannot see) is listed as excluded with the reason.
Ending is a second statement that signals only the sessions selected, each only while it is the same session (pid
and start time) and still not protected; then the module waits until they are gone.

Every connection is read-only (_pg_info.read_only_runtime): pg_terminate_backend signals a process, it writes nothing.
"""
from __future__ import annotations

import time

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_info, _run_lock

STATES = ("report", "terminated")
MAX_PID = 2 ** 31 - 1  # a pid is a PostgreSQL integer
# Seconds the module waits for the sessions it signalled to be gone, and how often it looks.
GONE_WAIT = 10.0
GONE_POLL = 0.1
IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")
# A session as returned, in this order (the server's JSON object orders keys by length).
FIELDS = ("pid", "user", "application", "database", "backend_type", "backend_start", "superuser", "state", "seconds",
          "transaction_seconds", "query_seconds", "idle_seconds", "wait_event_type", "wait_event", "query", "blocked_by",
          "blocks", "protected")
# What the collection never ends, checked again by the statement that ends (and on what it read, for the reasons).
NOT_PROTECTED_SQL = (
    "a.datname = current_database() AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() "
    "AND r.rolsuper IS FALSE AND (pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))")


class SessionsError(Exception):
    """A refused input or selection: the message says what, and nothing was terminated."""


class Refused(SessionsError):
    """The selection is refused (more sessions than max_terminate); `result` is what was read."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class NotGone(SessionsError):
    """Sessions were (or may have been) signalled, and not all are seen gone; `result` says which ended."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bound = "%d or more" % minimum if maximum is None else "%d to %d" % (minimum, maximum)
        raise SessionsError("%s is %r: it must be a whole number, %s" % (name, value, bound))
    return value


def selectors(params):
    """The selectors given: {name: value} of pids (a list, maybe empty), older_than, idle_for, blocking (only when
    true). Empty: no selector."""
    found = {}
    if params.get("pids") is not None:
        found["pids"] = sorted({_whole("each of pids", pid, 1, MAX_PID) for pid in params["pids"]})
    for name in ("older_than", "idle_for"):
        if params.get(name) is not None:
            found[name] = _whole(name, params[name], 0)
    if params.get("blocking"):
        found["blocking"] = True
    return found


def check_params(params):
    """The selectors (see selectors) once every option is valid; SessionsError otherwise, before any connection."""
    _pg.check_name(params["db"])
    _pg_info.check_query_chars(params["query_chars"])
    _whole("max_terminate", params["max_terminate"], 1)
    if params["state"] not in STATES:
        raise SessionsError("state is %r: one of %s" % (params["state"], ", ".join(STATES)))
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(incident_id):
        raise SessionsError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))
    chosen = selectors(params)
    if params["state"] == "terminated":
        if incident_id is None:
            raise SessionsError("state=terminated needs incident_id (the incident the sessions are ended for)")
        if not chosen:
            raise SessionsError("state=terminated needs at least one selector (pids, older_than, idle_for or blocking=true): "
                                "it never ends every session of %s" % params["db"])
    return chosen


# ---------------------------------------------------------------------------------------------------- read
def sessions_sql(pids, query_chars):
    """One statement, one snapshot: every session of the database (and those of `pids` wherever they are), whom
    each waits for, and this session's own pid."""
    return """
WITH {waiting}
SELECT jsonb_build_object(
  'own_pid', pg_backend_pid(),
  'sessions', coalesce((
    SELECT jsonb_agg(jsonb_build_object(
        'pid', a.pid, {session}, 'backend_type', a.backend_type, 'backend_start', a.backend_start,
        'superuser', r.rolsuper,
        'may_signal', CASE WHEN a.usesysid IS NOT NULL
                           THEN pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE') END,
        'idle_seconds', CASE WHEN a.state IN ({idle}) THEN floor(extract(epoch FROM now() - a.state_change))::bigint END,
        'wait_event_type', a.wait_event_type, 'wait_event', a.wait_event,
        'blocked_by', coalesce(to_jsonb(w.blocked_by), '[]'))
      ORDER BY a.pid)
    FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid LEFT JOIN waiting w ON w.pid = a.pid
    WHERE a.datname = current_database() OR a.pid = ANY ({pids})), '[]'),
  'login_user', current_user)
""".format(waiting=_pg_info.WAITING_CTE, session=_pg_info.session_fields(query_chars), pids=_int_array(pids),
           idle=", ".join(_pg.quote_literal(state) for state in IDLE_STATES))


def _int_array(values):
    return "ARRAY[%s]::int[]" % ", ".join("%d" % value for value in values)


def seconds(session):
    """The age older_than compares: how long the session's transaction has run, or its statement outside one; None
    for a session that runs neither."""
    if session["transaction_seconds"] is not None:
        return session["transaction_seconds"]
    if session["state"] == "active":
        return session["query_seconds"]
    return None


def protection(session, own_pid, login_user):
    """Why the collection never ends this session of the database, or None."""
    if session["pid"] == own_pid:
        return "its own session (the module's)"
    if session["backend_type"] is None:
        return "its details are hidden from login_user %s (grant it pg_read_all_stats)" % login_user
    if session["backend_type"] != "client backend":
        return "not a client session: backend type %s" % session["backend_type"]
    if session["superuser"] is not False:
        return "superuser role %s" % session["user"]
    if not session["may_signal"]:
        return "login_user %s may not signal role %s's sessions (it needs that role or pg_signal_backend)" % (login_user, session["user"])
    return None


def read(runtime, db, pids, query_chars):
    """{'sessions': [...] of the database (own included, by pid), 'elsewhere': {pid: session} of `pids` in no or
    another database, 'chains': [{'pid', 'blocked_by'}], 'own_pid'}; statements hidden or left out as asked."""
    runtime.ping()
    found = _pg_info.answer(runtime, db, sessions_sql(pids, query_chars))
    own_pid, login_user = found["own_pid"], found["login_user"]
    here, elsewhere = [], {}
    for session in _pg_info.shown_queries(found["sessions"], query_chars):
        if session["database"] != db:
            elsewhere[session["pid"]] = session
            continue
        session["blocked_by"] = sorted(session["blocked_by"])
        session["seconds"] = seconds(session)
        session["protected"] = protection(session, own_pid, login_user)
        session.pop("may_signal")
        here.append(session)
    chains = [dict(pid=session["pid"], blocked_by=session["blocked_by"]) for session in here if session["blocked_by"]]
    for session in here:
        session["blocks"] = [chain["pid"] for chain in chains if session["pid"] in chain["blocked_by"]]
    return dict(sessions=[{name: session[name] for name in FIELDS} for session in here], elsewhere=elsewhere,
                chains=chains, own_pid=own_pid)


# -------------------------------------------------------------------------------------------------- select
def matches(session, chosen):
    """Whether the session meets every selector given (AND)."""
    if "pids" in chosen and session["pid"] not in chosen["pids"]:
        return False
    if "older_than" in chosen and (session["seconds"] is None or session["seconds"] < chosen["older_than"]):
        return False
    if "idle_for" in chosen and (session["idle_seconds"] is None or session["idle_seconds"] < chosen["idle_for"]):
        return False
    # The head of a chain: others wait for it and it waits for no lock itself. Ending it frees the chain; a session
    # in the middle (waiting itself, others queued behind it) is left, as ending it would free nobody.
    if chosen.get("blocking") and not (session["blocks"] and not session["blocked_by"]):
        return False
    return True


def _elsewhere_reason(session, db):
    if session["database"] is None:
        return "not a session of a database: backend type %s" % (session["backend_type"] or "hidden")
    return "a session of database %s, not %s: never touched" % (session["database"], db)


def select(found, chosen, db):
    """(sessions to list, selected pids, excluded [{'pid', 'reason'}]: what met the selectors but is protected, and
    pids that are no session of the database). Without a selector every session of the database but its own is
    listed and none selected."""
    if not chosen:
        return [session for session in found["sessions"] if session["pid"] != found["own_pid"]], [], []
    listed = [session for session in found["sessions"] if matches(session, chosen)]
    selected = [session["pid"] for session in listed if session["protected"] is None]
    excluded = [dict(pid=session["pid"], reason=session["protected"]) for session in listed if session["protected"] is not None]
    here = {session["pid"] for session in found["sessions"]}
    for pid in chosen.get("pids", []):
        if pid in found["elsewhere"]:
            excluded.append(dict(pid=pid, reason=_elsewhere_reason(found["elsewhere"][pid], db)))
        elif pid not in here:
            excluded.append(dict(pid=pid, reason="no such session (it ended already, or never was one)"))
    return listed, selected, sorted(excluded, key=lambda item: item["pid"])


# --------------------------------------------------------------------------------------------------- end
def _identities(sessions):
    return "(VALUES %s)" % ", ".join("(%d, %s::timestamptz)" % (session["pid"], _pg.quote_literal(session["backend_start"]))
                                     for session in sessions)


def terminate_sql(sessions, incident_id):
    """Signal each session while it is the same one (pid and start time) and not protected: the pids signalled. The
    session that signals is named after the incident (application_name), for the server's log and pg_stat_activity."""
    return """
SET application_name = {name};
SELECT coalesce(jsonb_agg(pid ORDER BY pid) FILTER (WHERE signalled), '[]') FROM (
    SELECT a.pid, pg_terminate_backend(a.pid) AS signalled
    FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
    WHERE (a.pid, a.backend_start) IN {identities} AND {not_protected}
) ended
""".format(name=_pg.quote_literal("runbooks-incident pg_sessions %s" % incident_id), identities=_identities(sessions),
           not_protected=NOT_PROTECTED_SQL)


def still_there(runtime, db, sessions):
    """Pids of `sessions` (same pid and start time) the server still has."""
    sql = ("SELECT coalesce(jsonb_agg(a.pid ORDER BY a.pid), '[]') FROM pg_stat_activity a WHERE (a.pid, a.backend_start) IN %s"
           % _identities(sessions))
    return _pg_info.answer(runtime, db, sql)


def signal(runtime, db, sessions, incident_id):
    """The pids of `sessions` signalled to end (the others had ended, or changed, before)."""
    return _pg_info.answer(runtime, db, terminate_sql(sessions, incident_id))


def wait_gone(runtime, db, sessions, wait=GONE_WAIT):
    """The pids of `sessions` still there after up to `wait` seconds (empty once all are gone)."""
    deadline = time.monotonic() + wait
    remaining = still_there(runtime, db, sessions) if sessions else []
    while remaining and time.monotonic() < deadline:
        time.sleep(GONE_POLL)
        remaining = still_there(runtime, db, [session for session in sessions if session["pid"] in remaining])
    return remaining


# --------------------------------------------------------------------------------------------------- run
def _pids(pids):
    return "pid " + ", ".join("%d" % pid for pid in pids)


def _excluded_text(excluded):
    return "; not ended: %s" % "; ".join("pid %d: %s" % (item["pid"], item["reason"]) for item in excluded) if excluded else ""


def _count(number, word="session"):
    return "%d %s%s" % (number, word, "" if number == 1 else "s")


def run(runtime, params, check_mode=False, warn=None):
    """The module's result. SessionsError for a refused input (nothing read), Refused above max_terminate (nothing
    ended), NotGone when a signalled session outlives the wait; _pg.PgError when the server cannot answer."""
    chosen = check_params(params)
    db, state = params["db"], params["state"]
    found = read(runtime, db, chosen.get("pids", []), params["query_chars"])
    listed, selected, excluded = select(found, chosen, db)
    for item in excluded:
        if item["pid"] in chosen.get("pids", []) and item["pid"] not in {session["pid"] for session in listed}:
            (warn or (lambda _msg: None))("pids: pid %d: %s" % (item["pid"], item["reason"]))
    result = dict(changed=False, db=db, state=state, sessions=listed, blocking_chains=found["chains"], selected=selected,
                  excluded=excluded, terminated=[])
    if params.get("incident_id") is not None:
        result["incident_id"] = params["incident_id"]
    if not chosen:
        result["msg"] = "%s of %s, %s waiting for a lock" % (_count(len(listed)), db, len(found["chains"]))
        return result
    if state == "report":
        over = " (more than max_terminate=%d: it would refuse)" % params["max_terminate"] if len(selected) > params["max_terminate"] else ""
        result["msg"] = "%s of %s match; state=terminated would end %s%s%s" % (
            _count(len(listed)), db, _pids(selected) if selected else "none", over, _excluded_text(excluded))
        return result
    if len(selected) > params["max_terminate"]:
        raise Refused("%s of %s selected (%s), more than max_terminate=%d: none was terminated; narrow the selectors or "
                      "raise max_terminate" % (_count(len(selected)), db, _pids(selected), params["max_terminate"]), result)
    if not selected:
        result["msg"] = "no session of %s to terminate%s" % (db, _excluded_text(excluded))
        return result
    if check_mode:
        result.update(changed=True, msg="check mode: would terminate %s of %s (%s); none was terminated%s" % (
            _count(len(selected)), db, _pids(selected), _excluded_text(excluded)))
        return result
    chosen_sessions = [session for session in listed if session["pid"] in selected]
    try:
        signalled = signal(runtime, db, chosen_sessions, params["incident_id"])
    except _pg.PgError as exc:
        result["changed"] = True  # the statement may have signalled some before it failed
        raise NotGone("the statement ending %s of %s failed, some may have been signalled: %s; run state=report to see "
                      "which are left" % (_pids(selected), db, exc), result)
    sent = [session for session in chosen_sessions if session["pid"] in signalled]
    result["changed"] = bool(sent)
    try:
        remaining = wait_gone(runtime, db, sent)
    except _pg.PgError as exc:
        raise NotGone("signalled %s of %s, but cannot see whether they are gone: %s" % (_pids(signalled), db, exc), result)
    ended = [pid for pid in signalled if pid not in remaining]
    before = [pid for pid in selected if pid not in signalled]
    result["excluded"] = sorted(excluded + [dict(pid=pid, reason="it ended, or changed, before it was signalled") for pid in before],
                                key=lambda item: item["pid"])
    result["terminated"] = ended
    if remaining:
        raise NotGone("signalled %s of %s, but %s still there after %d s (stuck in a system call?); ended: %s" % (
            _count(len(ended) + len(remaining)), db, _pids(remaining), GONE_WAIT, _pids(ended) if ended else "none"), result)
    result["msg"] = "terminated %s of %s for %s: %s%s" % (
        _count(len(ended)), db, params["incident_id"], _pids(ended) if ended else "none", _excluded_text(result["excluded"]))
    return result
