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
  - The chain starts from a public value, so by itself it cannot show that whoever writes the log cut its last rows
    off or rewrote it whole with every chain recomputed. With I(anchor_dir), each append also writes a head record
    (the row count, and the last row's id and chain) into I(anchor_dir) as C(<rows>-<chain>.json). That name never
    repeats, and the record appears whole and is never rewritten or removed. I(state=verified) with I(anchor_dir)
    then checks that the log still holds every head ever anchored, which detects truncation (also of the whole
    log) and a rewritten row. A log written without anchors stays valid and is anchored from its next append on
    (RV(anchored_rows), with a warning for the rows after the newest head).
  - Trust assumption. The anchors prove nothing against whoever can rewrite I(anchor_dir). It must be a store that
    the log's writer can add to but not rewrite or delete from, such as a directory shipped off-host by
    the C(audit-ship) job of role C(runbooks.incident.audit_ship) (the log server's receiver stores each name once,
    read-only, and never rewrites or deletes one), a WORM or append-only mount, or a directory administered by
    someone other than the log's writer. Verify against that copy of the anchors.
  - A value is stored in one cell whatever it holds. A C(|) becomes C(/), and line breaks and other control
    characters become spaces. A column name, an I(id) or a I(title) that the log cannot hold as given (a C(|), a
    line break or control character, surrounding spaces, or a column name of the log's own) is refused before
    anything is written. A log damaged by an earlier version (a row split by a carriage return, a header without
    its columns, bytes that are not UTF-8) fails verification with a message naming the line or row.
  - Nothing is read or written through a symlink, and two appends at once never fork the chain, because the log is
    locked while it is verified and extended.
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
    description:
      - Unique id of the row (a drill's run id or incident id). Required with I(state=present).
      - Stored as given, so it may not hold a C(|), a line break, a control character or surrounding spaces.
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
  anchor_dir:
    description:
      - Directory of the log's head records, one per append. With I(state=present) the head of the log after the
        append is written there, and with either state the log is checked against every head in it.
      - One directory per log. It must be one the log's writer cannot rewrite (see the trust assumption above).
      - Default C(<path>.anchors), beside the log. A log cut short or rewritten by someone who can change the log file
        but not that directory is then caught even when no anchor directory was chosen.
    type: path
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Record the drill, anchoring the log's head in an append-only store
  runbooks.incident.evidence_log:
    path: /srv/evidence/backup-drills.md
    anchor_dir: /srv/evidence-anchors/backup-drills
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
    anchor_dir: /srv/evidence-anchors/backup-drills
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
anchored_rows:
  description: How many rows the newest head in I(anchor_dir) covers (the rows after it are not anchored).
  returned: always
  type: int
head:
  description: The log's head record (C(rows), C(id), C(chain), C(date), C(log), C(format)), as anchored in I(anchor_dir).
  returned: with I(state=present), except in check mode
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _evidence, _params


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
            anchor_dir=dict(type="path"),
        ),
        required_if=[("state", "present", ("id", "fields"))],
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    anchor_dir = params["anchor_dir"] or _evidence.default_anchor_dir(params["path"])
    result = dict(changed=False)
    try:
        if params["state"] == "verified":
            _columns, rows = _evidence.verify(params["path"])
            count = len(rows)
            if anchor_dir:
                result["anchored_rows"] = _evidence.check_anchors(anchor_dir, rows)
            if params["max_age_days"] is not None:
                result["newest"] = _evidence.newest(rows, params["where"], params["max_age_days"])
        elif module.check_mode:
            rows, known, head_due, covered = _evidence.plan(params["path"], params["id"], params["fields"], params["title"], anchor_dir)
            count = len(rows) + int(known is None)
            result.update(changed=known is None or head_due, row=known or {})
            if anchor_dir:
                result["anchored_rows"] = count if head_due else covered
        else:
            changed, row, head = _evidence.append(params["path"], params["id"], params["fields"], params["evidence"],
                                                  params["title"], anchor_dir=anchor_dir)
            _columns, rows = _evidence.read(params["path"])
            count = len(rows)
            result.update(changed=changed, row=row)
            if anchor_dir:
                result.update(head=head, anchored_rows=head["rows"])
    except _evidence.AnchorError as exc:
        module.fail_json(msg="evidence log %s: %s" % (params["path"], exc), changed=True)
    except (_evidence.EvidenceError, OSError, ValueError) as exc:
        module.fail_json(msg="evidence log %s: %s; nothing was written" % (params["path"], exc))
    result["rows"] = count
    if anchor_dir and result["anchored_rows"] < count:
        module.warn("rows %d to %d of %s are not anchored in %s" % (result["anchored_rows"] + 1, count, params["path"], anchor_dir))
    duplicates = _evidence.duplicate_ids(rows)
    if duplicates:
        module.warn("several rows of %s have the id %s (written by an earlier version from an id holding |)"
                    % (params["path"], ", ".join(duplicates[:5])))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
