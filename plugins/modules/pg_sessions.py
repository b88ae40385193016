#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_sessions
short_description: List the sessions of a database, who blocks whom, and end the ones selected
version_added: 0.1.0
description:
  - Lists the sessions of I(db), each with its role, state, how long its transaction, statement or idleness has
    lasted, what it waits for, the start of its statement and which sessions it blocks or is blocked by, and the
    lock chains of I(db) (C(pg_blocking_pids), as M(runbooks.incident.pg_locks_info) reads them). Everything is
    read in one snapshot.
  - With selectors (I(pids), I(older_than), I(idle_for), I(blocking)) only the sessions of I(db) that meet all of
    them are listed (they combine with AND), and RV(selected) names those I(state=terminated) ends.
    I(state=terminated) needs at least one selector; it never ends every session.
  - Never ends its own session, a session that is no client session (a walsender, an autovacuum or parallel worker,
    a background worker), a superuser's session, a session I(login_user) may not signal (it needs the session's
    role or C(pg_signal_backend)) or cannot see (without C(pg_read_all_stats), other roles' sessions show neither
    type nor state), nor any session of another database. A session that meets the selectors but is one of those is
    in RV(excluded) with the reason. A pid of I(pids) that is in another database or is no session is in
    RV(excluded) too, with a warning; that is no failure, so a retried run whose sessions ended already succeeds.
  - Refuses, and ends none, when more sessions are selected than I(max_terminate).
  - Ends sessions with C(pg_terminate_backend), each only while it is still the very session selected (same pid,
    same start time) and not protected, then waits up to 10 seconds for them to be gone. RV(terminated) holds only
    the sessions it ended and saw gone; it fails, naming them, when a signalled session is still there.
  - Idempotent by the sessions' state, not by a record. Nothing is written on the host; a second run with the
    same selection finds the ended sessions gone and reports C(changed=false). A session that meets the selectors
    at the second run (a new long query) is another session, and is ended too; give I(pids) to end exactly the
    sessions of a report. The session that ends the others is named C(runbooks-incident pg_sessions <incident_id>)
    (C(application_name)), for the server's log.
  - A statement that may hold a secret (it mentions a password, a secret, a token or encryption anywhere in its
    text) is not shown. Every transaction of its session is read-only (C(default_transaction_read_only));
    C(pg_terminate_backend) signals a process and writes nothing.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads as it does outside check mode and names in RV(selected) the sessions it would end; ends none.
  diff_mode:
    support: none
options:
  db:
    description: The database whose sessions are listed and may be ended.
    type: str
    default: wa_mcp
  state:
    description:
      - C(report) lists (and, with selectors, names in RV(selected) what C(terminated) would end); it ends nothing.
      - C(terminated) ends the selected sessions (needs a selector and I(incident_id)).
    type: str
    choices: [report, terminated]
    default: report
  pids:
    description:
      - Only these sessions (process ids). An empty list selects no session (a list computed by a play that
        found nothing ends nothing; it never widens the other selectors).
    type: list
    elements: int
  older_than:
    description:
      - Only sessions whose transaction has run at least this many seconds (outside a transaction, whose statement
        has), the C(seconds) of each of RV(sessions). An idle session outside a transaction is never older.
    type: int
  idle_for:
    description:
      - Only sessions idle (C(idle), C(idle in transaction), C(idle in transaction (aborted))) for at least this
        many seconds.
    type: int
  blocking:
    description:
      - Only sessions at the head of a lock chain, that other sessions wait for while they wait for no lock
        themselves. Ending them frees the chain; a session in the middle of one (it waits, others are queued
        behind it) is not selected, as ending it frees nobody; name it in I(pids) to end it.
      - C(false) is no selector.
    type: bool
    default: false
  max_terminate:
    description: The most sessions I(state=terminated) ends; more selected, it refuses and ends none.
    type: int
    default: 5
  incident_id:
    description:
      - Id of the incident or change the sessions are ended for (for example C(INC-2026-0042) or an AWX job id).
        Required with I(state=terminated); with I(state=report) it is only checked and returned.
      - Letters, digits and C(._:-), at most 64 characters. It is returned in the result and names the session
        that ends the others.
    type: str
  query_chars:
    description: Characters of each session's statement returned (0 for none, at most 10000).
    type: int
    default: 80
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Show the sessions of the service's database and the lock chains
  runbooks.incident.pg_sessions:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
  register: sessions

- name: End the sessions at the head of the lock chains (at most 2)
  runbooks.incident.pg_sessions:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    state: terminated
    blocking: true
    max_terminate: 2
    incident_id: INC-2026-0042

- name: End the sessions idle in a transaction for more than 10 minutes
  runbooks.incident.pg_sessions:
    login_host: db.internal
    login_user: ops
    login_password: "{{ vault_ops_password }}"
    db: wa_mcp
    state: terminated
    idle_for: 600
    older_than: 600
    incident_id: INC-2026-0042

- name: End exactly the sessions a report named
  runbooks.incident.pg_sessions:
    compose_project_dir: /opt/whatsapp-mcp
    state: terminated
    pids: "{{ sessions.sessions | selectattr('state', 'eq', 'idle in transaction') | map(attribute='pid') | list }}"
    incident_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was found and done, in one line.
  returned: always
  type: str
  sample: "terminated 1 session of wa_mcp for INC-2026-0042: pid 4242; not ended: pid 4250: superuser role postgres"
db:
  description: The database.
  returned: success
  type: str
state:
  description: I(state) as given.
  returned: success
  type: str
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
sessions:
  description:
    - The sessions of I(db) that meet the selectors (without a selector, every session of I(db) but its own),
      by pid. Each has C(pid), C(user), C(application), C(database), C(backend_type), C(backend_start), C(superuser),
      C(state), C(seconds) (what I(older_than) compares - the age of its transaction, or of its statement outside
      one; null when it runs neither), C(transaction_seconds), C(query_seconds) (since its statement, or when idle
      its last one, started), C(idle_seconds) (null when not idle), C(wait_event_type), C(wait_event), C(query) (its
      first I(query_chars) characters; null with I(query_chars=0); hidden when it may hold a secret), C(blocked_by)
      (pids it waits for), C(blocks) (pids waiting for it) and C(protected) (why it is never ended, or null).
    - Ages are whole seconds.
  returned: success
  type: list
  elements: dict
  sample:
    - pid: 4242
      user: wa
      application: psql
      database: wa_mcp
      backend_type: client backend
      backend_start: "2026-03-01T02:58:12.123456+00:00"
      superuser: false
      state: idle in transaction
      seconds: 340
      transaction_seconds: 340
      query_seconds: 338
      idle_seconds: 338
      wait_event_type: Client
      wait_event: ClientRead
      query: "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"
      blocked_by: []
      blocks: [4250, 4251]
      protected: null
blocking_chains:
  description:
    - Every session of I(db) waiting for a lock, by pid, with the pids it waits for (those holding the lock and
      those queued ahead of it), whatever the selectors. A list of C(pid) (int) and C(blocked_by) (sorted list of
      int).
  returned: success
  type: list
  elements: dict
  sample:
    - {pid: 4250, blocked_by: [4242]}
    - {pid: 4251, blocked_by: [4242, 4250]}
selected:
  description:
    - The pids of RV(sessions) that I(state=terminated) ends (it ended, or with I(state=report) or in check mode
      would end), sorted. Empty without a selector.
  returned: success
  type: list
  elements: int
  sample: [4242]
excluded:
  description:
    - Sessions that meet the selectors but are never ended (C(protected)), pids of I(pids) that are no session of
      I(db), and selected sessions that ended on their own before the signal, each with C(pid) and C(reason),
      sorted by pid.
  returned: success
  type: list
  elements: dict
  sample:
    - {pid: 4250, reason: superuser role postgres}
    - {pid: 4300, reason: "no such session (it ended already, or never was one)"}
terminated:
  description: The pids it ended and saw gone, sorted. Empty with I(state=report) and in check mode.
  returned: success
  type: list
  elements: int
  sample: [4242]
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_info, _pg_sessions


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        state=dict(type="str", choices=list(_pg_sessions.STATES), default="report"),
        pids=dict(type="list", elements="int"),
        older_than=dict(type="int"),
        idle_for=dict(type="int"),
        blocking=dict(type="bool", default=False),
        max_terminate=dict(type="int", default=5),
        incident_id=dict(type="str"),
        query_chars=dict(type="int", default=80),
    ))
    params = module.params
    try:
        _pg_sessions.check_params(params)
    except (_pg_sessions.SessionsError, _pg.PgError) as exc:
        module.fail_json(msg="%s; nothing was changed" % exc)
    try:
        result = _pg_sessions.run(_pg_info.read_only_runtime(params), params, check_mode=module.check_mode, warn=module.warn)
    except (_pg_sessions.Refused, _pg_sessions.NotGone) as exc:
        module.fail_json(**dict(exc.result, msg=str(exc)))
    except (_pg_sessions.SessionsError, _pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the sessions of %s: %s (no session was terminated: nothing was changed)" % (params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
