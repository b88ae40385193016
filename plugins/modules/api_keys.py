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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _run_lock

ACTION = "api_keys_revoked"


def report(runtime, db):
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


def revoke_sql(keep, change_id, reason, actor):
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
           actor=_pg.quote_literal(actor), action=_pg.quote_literal(ACTION))


def main():
    argument_spec = _params.postgres_argument_spec()
    argument_spec.update(
        db=dict(type="str", default="wa_mcp"),
        state=dict(type="str", choices=["report", "revoked"], default="report"),
        keep_pepper_fingerprint=dict(type="str", no_log=False),
        change_id=dict(type="str"),
        reason=dict(type="str", default="API key pepper rotated (hard)"),
        actor=dict(type="str", default="runbooks.incident"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=_params.POSTGRES_MUTUALLY_EXCLUSIVE,
                           required_if=[("state", "revoked", ["keep_pepper_fingerprint", "change_id"])])
    _params.refuse_nul(module)
    params = module.params
    runtime = _pg.Runtime.from_params(params)
    if params["state"] == "revoked" and not _run_lock.INCIDENT_ID.match(params["change_id"]):
        module.fail_json(msg="change_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed" % params["change_id"])
    try:
        _pg.check_name(params["db"])
        runtime.ping()
        before = report(runtime, params["db"])
        if params["state"] == "report":
            module.exit_json(changed=False, **before)
        keep = params["keep_pepper_fingerprint"]
        earlier = _pg.recorded_change(runtime, params["db"], ACTION, params["change_id"])
        to_revoke = sum(count for pepper, count in before["by_pepper_fingerprint"].items() if pepper != keep)
        if module.check_mode:
            notify = [dict(client=c["client"], contact_email=c["contact_email"],
                           revoked_keys=sum(n for p, n in c["by_pepper_fingerprint"].items() if p != keep))
                      for c in before["clients"] if any(p != keep for p in c["by_pepper_fingerprint"])]
            module.exit_json(changed=to_revoke > 0, revoked=to_revoke + (earlier or {}).get("revoked", 0),
                             notify=notify or (earlier or {}).get("notify", []), by_pepper_fingerprint=before["by_pepper_fingerprint"],
                             active=before["active"])
        if to_revoke:
            runtime.execute(revoke_sql(keep, params["change_id"], params["reason"], params["actor"]), params["db"])
        after = report(runtime, params["db"])
        done = _pg.recorded_change(runtime, params["db"], ACTION, params["change_id"]) or {}
    except (_pg.PgError, OSError) as exc:
        verb = "report" if params["state"] == "report" else "revoke"
        module.fail_json(msg="cannot %s the API keys of %s: %s" % (verb, params["db"], exc))
    module.exit_json(changed=bool(to_revoke), revoked=int(done.get("revoked", 0)), notify=done.get("notify", []),
                     by_pepper_fingerprint=after["by_pepper_fingerprint"], active=after["active"])


if __name__ == "__main__":
    main()
