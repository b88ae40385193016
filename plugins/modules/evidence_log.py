#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: evidence_log
short_description: Append to, verify, or check the age of an append-only, hash-chained evidence log
version_added: 0.1.0
description:
  - Keeps audit evidence such as the seeds' C(backup-drills.md) as a Markdown table that auditors can read, where
    every row carries the SHA-256 of its full evidence (a JSON file stored under C(evidence/) beside the log) and a
    chain digest over the previous row. Editing, removing or reordering an earlier row, or changing an evidence
    file, breaks verification from that row on.
  - I(state=present) appends a row (once per I(id); a re-run with the same id changes nothing) after verifying the
    whole log; it refuses to extend a broken log. I(state=verified) only verifies, and with I(max_age_days) fails
    when the newest row matching I(where) is older (the "last passing drill is older than a quarter" alert).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  path:
    description: The log file (Markdown).
    type: path
    required: true
  state:
    description: C(present) appends a row; C(verified) checks the chain (and the age of the newest matching row).
    type: str
    choices: [present, verified]
    default: present
  id:
    description: Unique id of the row (a drill's run id or incident id). Required with I(state=present).
    type: str
  fields:
    description: The row's cells, in column order (the first row fixes the columns). Required with I(state=present).
    type: dict
  evidence:
    description: Everything measured, stored as JSON under C(evidence/) and referenced by its SHA-256.
    type: dict
    default: {}
  title:
    description: Title of a new log.
    type: str
    default: Evidence log
  where:
    description: With I(state=verified), which rows count for I(max_age_days) (column name to value, e.g. C(result=pass)).
    type: dict
  max_age_days:
    description: With I(state=verified), fail when the newest row matching I(where) is older than this.
    type: int
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Record the drill
  runbooks.incident.evidence_log:
    path: /srv/evidence/backup-drills.md
    id: "{{ incident_id }}"
    title: Backup restore drills
    fields:
      backup used: db-2026-11-21
      RTO s: 94.1
      result: pass
    evidence: "{{ drill_measurements }}"

- name: Alert when the last passing drill is older than a quarter
  runbooks.incident.evidence_log:
    path: /srv/evidence/backup-drills.md
    state: verified
    where: {result: pass}
    max_age_days: 92
"""

RETURN = r"""
row:
  description: The row appended (or found for this id), by column.
  returned: with I(state=present)
  type: dict
rows:
  description: Number of rows in the log.
  returned: always
  type: int
newest:
  description: The newest row matching I(where).
  returned: with I(state=verified) and I(max_age_days)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _evidence


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "verified"], default="present"),
            id=dict(type="str"),
            fields=dict(type="dict"),
            evidence=dict(type="dict", default={}),
            title=dict(type="str", default="Evidence log"),
            where=dict(type="dict"),
            max_age_days=dict(type="int"),
        ),
        required_if=[("state", "present", ("id", "fields"))],
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["state"] == "verified":
            _columns, rows = _evidence.verify(params["path"])
            result = dict(changed=False, rows=len(rows))
            if params["max_age_days"] is not None:
                result["newest"] = _evidence.newest(rows, params["where"], params["max_age_days"])
            module.exit_json(**result)
        _columns, rows = _evidence.verify(params["path"])
        known = [row for row in rows if row["id"] == params["id"]]
        if module.check_mode or known:
            module.exit_json(changed=not known, rows=len(rows), row=known[0] if known else {})
        changed, row = _evidence.append(params["path"], params["id"], params["fields"], params["evidence"], params["title"])
    except (_evidence.EvidenceError, OSError) as exc:
        module.fail_json(msg="evidence log %s: %s; nothing was written" % (params["path"], exc))
    module.exit_json(changed=changed, rows=len(rows) + int(changed), row=row)


if __name__ == "__main__":
    main()
