#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: sessions_revoke
short_description: Revoke every active session and refresh token of the service, once per change id, with an audit row
version_added: 0.1.0
description:
  - Sets I(revoked_column) to C(now()) on every row of each of I(tables) where it is still null, in one statement,
    and writes one C(sessions_revoked) row to the service's audit table with the change id, the reason and the
    count per table. Rows are kept, so what the sessions were stays available to the investigation (the seeds'
    C(DELETE FROM sessions) would destroy it).
  - Once the change id is in the audit table, a re-run changes nothing, so sessions opened after the incident was
    handled are not cut again. With I(audit_table) empty there is no record, and every run revokes what is active.
  - Revoking stops refreshes; access tokens already handed out stay valid until they expire unless the secret that
    signs them is rotated too (M(runbooks.incident.secret_rotate)).
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  db:
    description: The service's database.
    type: str
    default: wa_mcp
  tables:
    description: Tables to revoke in (C(schema.table) or C(table)); each must have I(revoked_column).
    type: list
    elements: str
    default: [sessions, refresh_tokens]
  revoked_column:
    description: The nullable timestamp column that marks a row revoked.
    type: str
    default: revoked_at
  change_id:
    description: Id of the incident or change, recorded in the audit row.
    type: str
    required: true
  reason:
    description: Why, recorded in the audit row.
    type: str
    default: suspected key compromise
  actor:
    description: Actor of the audit row.
    type: str
    default: runbooks.incident
  audit_table:
    description: The service's audit table (columns C(actor), C(action), C(outcome), C(details jsonb)); empty for none.
    type: str
    default: audit_log
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Revoke every session and refresh token
  runbooks.incident.sessions_revoke:
    db: wa_mcp
    compose_project_dir: /opt/whatsapp-mcp
    change_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was done.
  returned: always
  type: str
revoked:
  description: Rows revoked per table by this change id (in check mode, that would be).
  returned: success
  type: dict
  sample: {sessions: 12, refresh_tokens: 12}
active:
  description: Rows still active per table after the run.
  returned: success
  type: dict
  sample: {sessions: 0, refresh_tokens: 0}
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _run_lock, _service_db


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        tables=dict(type="list", elements="str", default=["sessions", "refresh_tokens"]),
        revoked_column=dict(type="str", default="revoked_at"),
        change_id=dict(type="str", required=True),
        reason=dict(type="str", default="suspected key compromise"),
        actor=dict(type="str", default="runbooks.incident"),
        audit_table=dict(type="str", default="audit_log"),
    ))
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["change_id"]):
        module.fail_json(msg="change_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed" % params["change_id"])
    runtime, db = _pg.Runtime.from_params(params), params["db"]
    try:
        _pg.check_name(db)
        _service_db.check_session_names(params["tables"], params["revoked_column"], params["audit_table"])
        runtime.ping()
        result = _service_db.revoke_sessions(runtime, db, params["tables"], params["revoked_column"], params["change_id"], params["reason"],
                                             params["actor"], params["audit_table"], check_mode=module.check_mode)
    except (_pg.PgError, OSError) as exc:
        module.fail_json(msg="sessions not revoked in %s: %s" % (db, exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
