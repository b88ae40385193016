#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_index
short_description: Build or drop an index without blocking the table's writes (CREATE/DROP INDEX CONCURRENTLY)
version_added: 0.1.0
description:
  - I(state=present) builds a btree index on columns of a table with C(CREATE [UNIQUE] INDEX CONCURRENTLY), which
    lets the application read and write the table while it is built; I(state=absent) drops one with C(DROP INDEX
    CONCURRENTLY IF EXISTS). The fix for a big table read by sequential scans that
    M(runbooks.incident.pg_stats_info) reports, and the way to clear the INVALID index a failed build left.
  - Everything is checked before any change, from one read-only snapshot - the table exists, is an ordinary table (or
    a materialized view), I(login_user) owns it (or is a member of its owner), each of I(columns) is one of its
    columns. A partitioned table is refused (PostgreSQL 15 cannot index it CONCURRENTLY); the message names its
    partitions, which can be indexed one by one.
  - Idempotent by the catalogue. A valid index of I(name) on the table, a plain btree on exactly I(columns) (same
    order, no expression, predicate, C(INCLUDE), non-default operator class, collation or order) with the same
    uniqueness, is left as it is (C(changed=false)). An INVALID index of I(name) on the table (a failed or cancelled
    concurrent build) is dropped concurrently and built again (RV(rebuilt_invalid)). An index of I(name) with another
    definition, or on another table, is refused unless I(force), which drops it concurrently and builds the one asked.
    A name taken by a relation that is no index, an index that backs a constraint, the index of a partitioned table and
    an index being built right now are refused whatever I(force) says.
  - A build that fails (a duplicate value for a unique index, the I(lock_timeout), a cancel, a C(statement_timeout))
    leaves an INVALID index; the module drops it again (concurrently) and fails saying so - or, when that drop fails
    too, what is left and how to drop it.
  - I(state=absent) refuses an index that backs a constraint (primary key, unique or exclusion constraint), naming it,
    and an index of I(name) on another table than I(table); a missing index is C(changed=false).
  - The statements run on their own connection (autocommit - C(CONCURRENTLY) cannot run in a transaction block)
    named C(runbooks-incident pg_index <incident_id>) (C(application_name)) with C(lock_timeout) set; the role's
    or database's C(statement_timeout) applies. A concurrent build waits for every transaction that could use the old
    table definition - a transaction left open in the database holds it until I(lock_timeout). Every name reaches
    SQL double-quoted, never as typed. Reads run on a read-only connection.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads and refuses as it would, and says in RV(msg) what it would do (create, rebuild the INVALID index, drop, nothing); changes nothing.
  diff_mode:
    support: full
    details: The index's C(definition) and C(valid) before and after (C(definition) null when there is none).
options:
  db:
    description: The database of the table.
    type: str
    default: wa_mcp
  name:
    description: The index's name (in the schema of I(table)); any characters, at most 63 bytes.
    type: str
    required: true
  table:
    description:
      - The table, C(table) or C(schema.table) (C(public) by default). A part that holds a dot, or that is not all
        lowercase letters, digits and underscores, may be double-quoted as in SQL (C("Odd.Schema"."T")).
    type: str
    required: true
  columns:
    description: The columns the index is built on, in order, each its exact name. Required with I(state=present).
    type: list
    elements: str
  unique:
    description: A unique index (the build fails, and changes nothing, when the table holds duplicates).
    type: bool
    default: false
  state:
    description:
      - C(present) builds the index (or leaves it, or builds it again when INVALID).
      - C(absent) drops it.
    type: str
    choices: [present, absent]
    default: present
  lock_timeout:
    description:
      - Seconds each statement waits for a lock (C(lock_timeout)) before it gives up - the table's lock, and the
        transactions a concurrent build must outwait. 0 waits for ever.
    type: int
    default: 5
  force:
    description:
      - With I(state=present), drop (concurrently) an index of I(name) that is not the one asked and build the one
        asked. Never drops a relation that is no index, nor an index that backs a constraint.
    type: bool
    default: false
  incident_id:
    description:
      - Id of the incident or change (for example C(INC-2026-0042) or an AWX job id), returned and in the
        C(application_name) of the session that builds or drops. Letters, digits and C(._:-), at most 64 characters.
    type: str
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Index the column the slow statement filters on, without blocking the writes
  runbooks.incident.pg_index:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    db: wa_mcp
    name: messages_chat_id_created_at_idx
    table: messages
    columns: [chat_id, created_at]
    lock_timeout: 10
    incident_id: INC-2026-0042
  register: index

- name: Drop the INVALID index a failed build left
  runbooks.incident.pg_index:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    name: messages_sender_key
    table: public.messages
    state: absent
    incident_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was found and done (or would be, in check mode), in one line.
  returned: always
  type: str
  sample: "create index messages_chat_id_idx on messages: done in 12.3 s for INC-2026-0042"
db:
  description: The database.
  returned: success
  type: str
state:
  description: I(state) as given.
  returned: success
  type: str
name:
  description: I(name).
  returned: success
  type: str
table:
  description: The table's key (C(public.) left out, a part quoted when it is not a plain lowercase name).
  returned: success
  type: str
  sample: messages
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
index:
  description:
    - The index of I(name) after the run (in check mode, as it is now; after a failed change, what is left), or null
      when there is none. C(name),
      C(table) (its key), C(definition) (C(pg_get_indexdef)), C(valid) and C(size_bytes) (null while an ACCESS
      EXCLUSIVE lock is held or awaited on it).
  returned: success, and when a change failed
  type: dict
  sample:
    name: messages_chat_id_idx
    table: messages
    definition: CREATE INDEX messages_chat_id_idx ON public.messages USING btree (chat_id)
    valid: true
    size_bytes: 466944
created:
  description: Whether it built the index (in check mode, would build it).
  returned: always
  type: bool
dropped:
  description: Whether it dropped an index of I(name) (I(state=absent), an INVALID index rebuilt, I(force)); in check mode, would drop it.
  returned: always
  type: bool
rebuilt_invalid:
  description: Whether an INVALID index of I(name) was dropped to be built again (in check mode, would be).
  returned: always
  type: bool
duration_seconds:
  description: Seconds the build (or the drop, with I(state=absent)) took; 0 when nothing ran.
  returned: always
  type: float
  sample: 12.345
diff:
  description: With diff mode, C(before) and C(after), each with C(definition) (null when there is no index) and C(valid).
  returned: when diff mode is on
  type: dict
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_index, _pg_info


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        name=dict(type="str", required=True),
        table=dict(type="str", required=True),
        columns=dict(type="list", elements="str"),
        unique=dict(type="bool", default=False),
        state=dict(type="str", choices=list(_pg_index.STATES), default="present"),
        lock_timeout=dict(type="int", default=5),
        force=dict(type="bool", default=False),
        incident_id=dict(type="str"),
    ), required_if=[("state", "present", ("columns",))])
    params = module.params
    try:
        _pg_index.check_params(params)
        result = _pg_index.run(_pg_info.read_only_runtime(params), params, check_mode=module.check_mode, diff=module._diff)
    except _pg_index.Failed as exc:
        module.fail_json(**dict(exc.result, msg=str(exc)))
    except (_pg_index.PgIndexError, _pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="index %s on %s not %s: %s (nothing was changed)" % (
            params["name"], params["table"], "built" if params["state"] == "present" else "dropped", exc),
            created=False, dropped=False, rebuilt_invalid=False, duration_seconds=0.0)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
