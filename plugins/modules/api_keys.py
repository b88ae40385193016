#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: api_keys
short_description: Report API keys per pepper, or revoke every key not hashed with the current pepper, with the list of clients to notify
version_added: 0.1.0
description:
  - I(state=report) counts the active keys per pepper fingerprint and lists each client with its active keys.
    Before retiring a previous pepper, this says how many keys still depend on it.
  - I(state=revoked) sets C(revoked_at) on every active key whose C(pepper_fingerprint) is not
    I(keep_pepper_fingerprint), in one transaction that also writes an C(api_keys_revoked) row to the audit log,
    holding I(change_id), the reason and the clients affected. After a hard pepper rotation, these are all the
    keys that can no longer work.
  - Idempotent per I(change_id). The audit row is found again on a re-run, so the notification list (clients,
    contact, keys revoked) comes back the same even when the first run stopped before notifying.
  - Tables and columns follow the whatsapp-mcp schema (C(clients), C(api_keys), C(audit_log)).
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
  state:
    description: C(report) changes nothing. C(revoked) revokes the keys of other peppers.
    type: str
    choices: [report, revoked]
    default: report
  keep_pepper_fingerprint:
    description: Keys hashed with this pepper (the current one) are kept. Required with I(state=revoked).
    type: str
  change_id:
    description: Id of the incident or change, recorded in the audit row. Required with I(state=revoked).
    type: str
  reason:
    description: Why, for the audit row.
    type: str
    default: API key pepper rotated (hard)
  actor:
    description: The audit row's actor.
    type: str
    default: runbooks.incident
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: How many keys still use the previous pepper
  runbooks.incident.api_keys:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
  register: keys

- name: Revoke every key of the compromised pepper
  runbooks.incident.api_keys:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    state: revoked
    keep_pepper_fingerprint: "{{ rotation.fingerprint }}"
    change_id: INC-2026-0099
  register: revocation
"""

RETURN = r"""
by_pepper_fingerprint:
  description: Active keys per pepper fingerprint (after the run).
  returned: success
  type: dict
  sample: {"3f9a0c1d2e4b5a69": 12}
active:
  description: Active keys (after the run).
  returned: success
  type: int
  sample: 12
clients:
  description: Each client with active keys, with C(client), C(contact_email), C(active_keys) and C(by_pepper_fingerprint).
  returned: state=report
  type: list
  elements: dict
  sample: [{client: acme, contact_email: ops@acme.example, active_keys: 2, by_pepper_fingerprint: {"8c1e2f3a4b5c6d7e": 2}}]
revoked:
  description: Keys revoked by I(change_id) (also when revoked by an earlier run of the same change).
  returned: state=revoked
  type: int
  sample: 40
notify:
  description: The clients whose keys I(change_id) revoked, with C(client), C(contact_email) and C(revoked_keys).
  returned: state=revoked
  type: list
  elements: dict
  sample: [{client: acme, contact_email: ops@acme.example, revoked_keys: 2}]
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _run_lock, _service_db


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        state=dict(type="str", choices=["report", "revoked"], default="report"),
        keep_pepper_fingerprint=dict(type="str", no_log=False),
        change_id=dict(type="str"),
        reason=dict(type="str", default="API key pepper rotated (hard)"),
        actor=dict(type="str", default="runbooks.incident"),
    ), required_if=[("state", "revoked", ["keep_pepper_fingerprint", "change_id"])])
    params = module.params
    runtime = _pg.Runtime.from_params(params)
    if params["state"] == "revoked" and not _run_lock.INCIDENT_ID.match(params["change_id"]):
        module.fail_json(msg="change_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed" % params["change_id"])
    try:
        _pg.check_name(params["db"])
        runtime.ping()
        if params["state"] == "report":
            result = dict(changed=False, **_service_db.api_key_report(runtime, params["db"]))
        else:
            result = _service_db.revoke_api_keys(runtime, params["db"], params["keep_pepper_fingerprint"], params["change_id"],
                                                 params["reason"], params["actor"], check_mode=module.check_mode)
    except (_pg.PgError, OSError) as exc:
        verb = "report" if params["state"] == "report" else "revoke"
        module.fail_json(msg="cannot %s the API keys of %s: %s" % (verb, params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
