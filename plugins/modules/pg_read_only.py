#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_read_only
short_description: Set a database read-only (or back to read-write) and end its sessions so they reconnect with it
version_added: 0.1.0
description:
  - I(state=read_only) sets the database's own C(default_transaction_read_only = on) (C(ALTER DATABASE ... SET));
    I(state=read_write) removes that setting (C(ALTER DATABASE ... RESET)), so the server-wide default applies again
    (off unless C(postgresql.conf) sets it). A database is C(read_only) when its own setting is true, C(read_write)
    when it has none or it is false (a setting of C(off) is removed too by the next I(state=read_write) after a
    I(state=read_only)).
  - The setting is a default for the sessions that start after it. It stops an application from writing (C(cannot
    execute INSERT in a read-only transaction)) while reads go on; it is no security barrier - a session may still
    C(SET default_transaction_read_only = off) or C(BEGIN READ WRITE), and a role's own setting (C(ALTER ROLE ...
    SET)) overrides the database's (a warning names such roles).
  - With I(end_sessions), the client sessions of I(db) that started before the change are ended after it, so they
    reconnect with the new setting, by the rules and statements of M(runbooks.incident.pg_sessions) - never its own
    session, a superuser's, one that is no client session (walsender, autovacuum, background or parallel worker),
    one I(login_user) may not signal or cannot see. With I(state=read_only) the client sessions left running with
    the old setting are listed in RV(still_writable) (restart the application, or end them another way).
  - Which sessions to end is decided before anything changes; more than I(max_terminate), it refuses and changes
    nothing, not even the setting. A session that connects while the setting changes is ended too, unless that would
    exceed I(max_terminate) (it is then in RV(still_writable)).
  - Idempotent by the database's setting. A database already in I(state) is left as it is, and no session is ended
    (C(changed=false)); only the run that changes the setting knows which sessions started before it, and a second
    run must not end the sessions the application opened again since.
  - Refuses C(template0) and C(template1), and a database that does not exist, changing nothing. Altering the
    database needs its owner or a superuser as I(login_user); the session that ends the others is named
    C(runbooks-incident pg_sessions <incident_id>) (C(application_name)). Every other connection it makes is
    read-only.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads the setting and the sessions, refuses as it would, and says what it would change and end; changes nothing.
  diff_mode:
    support: full
    details: The database's state and own C(default_transaction_read_only) (null when unset) before and after.
options:
  db:
    description: The database set read-only or read-write.
    type: str
    required: true
  state:
    description:
      - C(read_only) sets the database's C(default_transaction_read_only = on).
      - C(read_write) removes the database's own C(default_transaction_read_only).
    type: str
    choices: [read_only, read_write]
    default: read_only
  end_sessions:
    description:
      - After changing the setting, end the client sessions of I(db) that started before it (not superusers', see
        above), so that they reconnect with it. C(false) ends none; with I(state=read_only) they are all in
        RV(still_writable).
    type: bool
    default: true
  max_terminate:
    description: The most sessions ended; more to end, it refuses and changes nothing (0 refuses any).
    type: int
    default: 20
  incident_id:
    description:
      - Id of the incident or change (for example C(INC-2026-0042) or an AWX job id), returned and in the
        C(application_name) of the session that ends the others. Letters, digits and C(._:-), at most 64 characters.
    type: str
    required: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Stop the writes to the damaged database, keep the reads
  runbooks.incident.pg_read_only:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    db: wa_mcp
    incident_id: INC-2026-0042
  register: read_only

- name: Say which superuser sessions may still write
  ansible.builtin.debug:
    msg: "{{ read_only.still_writable }}"
  when: read_only.still_writable | length > 0

- name: Writable again once the database is restored
  runbooks.incident.pg_read_only:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    db: wa_mcp
    state: read_write
    incident_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was found and done, in one line.
  returned: always
  type: str
  sample: >-
    wa_mcp set read-only for INC-2026-0042; ended 2 sessions (pid 4242, 4250); still writable with the old setting:
    pid 4300 (postgres): superuser role postgres
db:
  description: The database.
  returned: success
  type: str
state:
  description: I(state) as given.
  returned: success
  type: str
  sample: read_only
previous:
  description: The database's state before the run (C(read_only) or C(read_write)).
  returned: success
  type: str
  sample: read_write
incident_id:
  description: I(incident_id).
  returned: success
  type: str
terminated:
  description: The pids of the sessions it ended and saw gone, sorted. Empty in check mode and when nothing changed.
  returned: success
  type: list
  elements: int
  sample: [4242, 4250]
still_writable:
  description:
    - With I(state=read_only), the client sessions of I(db) that started before the change and are not ended, so
      still run with the old setting, each with C(pid), C(user) and C(reason) (a superuser's, one I(login_user) may
      not signal or see, C(end_sessions=false)), by pid. In check mode, those it would leave.
    - Empty with I(state=read_write) and when the database was already in I(state) (that run cannot tell which
      sessions predate the setting).
  returned: success
  type: list
  elements: dict
  sample:
    - {pid: 4300, user: postgres, reason: superuser role postgres}
diff:
  description: With diff mode, C(before) and C(after), each with C(db), C(state) and C(default_transaction_read_only).
  returned: when diff mode is on
  type: dict
  sample:
    before: {db: wa_mcp, state: read_write, default_transaction_read_only: null}
    after: {db: wa_mcp, state: read_only, default_transaction_read_only: "on"}
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_info, _pg_read_only


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", required=True),
        state=dict(type="str", choices=list(_pg_read_only.STATES), default="read_only"),
        end_sessions=dict(type="bool", default=True),
        max_terminate=dict(type="int", default=20),
        incident_id=dict(type="str", required=True),
    ))
    params = module.params
    try:
        _pg_read_only.check_params(params)
        result = _pg_read_only.run(_pg_info.read_only_runtime(params), params, check_mode=module.check_mode, diff=module._diff,
                                   warn=module.warn)
    except (_pg_read_only.Refused, _pg_read_only.Unfinished) as exc:
        module.fail_json(**dict(exc.result, msg=str(exc)))
    except (_pg_read_only.ReadOnlyError, _pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="%s not set %s: %s (nothing was changed)" % (params["db"], params["state"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
