#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: audit_log_info
short_description: The last id of the service's audit log, and the entries written since an id, by action and outcome
version_added: 0.1.0
description:
  - Returns the highest id of the service's audit log (0 when it is empty). Mark the log with it before an action,
    then ask what the service audited since (for example the C(send_attempt) of a test send and its outcome).
  - With I(since_id), counts the entries with a higher id by action and outcome, only those of I(actions) and
    whose C(details) hold I(match_details) when given. The last id and the counts come from one statement (one snapshot).
  - The audit log has the whatsapp-mcp schema's columns C(id) (a number), C(action), C(outcome) and, to match
    details, C(details) (json or jsonb). A table without them is refused, naming what is missing.
  - Read-only. Every transaction of its session is read-only (C(default_transaction_read_only)).
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads in check mode too (it only reads).
  diff_mode:
    support: none
options:
  db:
    description: The service's database.
    type: str
    default: wa_mcp
  audit_table:
    description:
      - The audit log, C(table) or C(schema.table); a part that is not a plain lower-case name is double-quoted as in
        SQL (C("Ops"."audit log")).
    type: str
    default: audit_log
  since_id:
    description: Count the entries with an id above this one (a RV(last_id) returned earlier). Without it, nothing is counted.
    type: int
  actions:
    description: Count only entries of these actions. Default every action. Needs I(since_id).
    type: list
    elements: str
  match_details:
    description:
      - Count only entries whose C(details) have these keys with these values, compared as text (C(details->>key));
        a value is a string, a whole number or true/false. Needs I(since_id).
    type: dict
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Mark the audit log before the test send
  runbooks.incident.audit_log_info:
    compose_project_dir: /opt/whatsapp-mcp
  register: mark

- name: Send a test message
  ansible.builtin.command:
    argv: [docker, compose, --project-directory, /opt/whatsapp-mcp, exec, -T, app, wa-mcp, smoke]
  changed_when: true

- name: The send attempts of that phone number id audited since
  runbooks.incident.audit_log_info:
    compose_project_dir: /opt/whatsapp-mcp
    since_id: "{{ mark.last_id }}"
    actions: [send_attempt]
    match_details:
      phone_id: "109876543210987"
  register: sends

- name: Require a successful send and no failed one
  ansible.builtin.assert:
    that:
      - sends.counts.send_attempt.success | default(0) > 0
      - sends.counts.send_attempt.failure | default(0) == 0
"""

RETURN = r"""
last_id:
  description: The highest id of the audit log (0 when it is empty).
  returned: success
  type: int
  sample: 10542
counts:
  description: Entries after I(since_id) (of I(actions), matching I(match_details)) by action, then by outcome.
  returned: when I(since_id) is given
  type: dict
  sample: {send_attempt: {success: 1}}
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_info, _service_db


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        audit_table=dict(type="str", default="audit_log"),
        since_id=dict(type="int"),
        actions=dict(type="list", elements="str"),
        match_details=dict(type="dict"),
    ), required_by=dict(actions="since_id", match_details="since_id"))
    params = module.params
    try:
        _pg.check_name(params["db"])
        result = _service_db.audit_log(_pg_info.read_only_runtime(params), params["db"], params["audit_table"],
                                       params["since_id"], params["actions"], params["match_details"])
    except (_pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the audit log %s of %s: %s (read-only: nothing was changed)"
                         % (params["audit_table"], params["db"], exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
