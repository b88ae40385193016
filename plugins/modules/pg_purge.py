#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_purge
short_description: Delete the expired rows of one table, bounded and counted first, then VACUUM it
version_added: 0.1.0
description:
  - The reclaim of expired rows of the storage full incident. Counts the rows of I(table) that meet I(where), refuses
    (deleting nothing) when they are more than I(max_rows), else deletes them and, with I(vacuum), vacuums the table.
  - I(where) is SQL the operator writes, and it runs as given, as the condition of a C(SELECT count(*)) and of the
    C(DELETE). It is checked first to be one expression as psql passes it on; refused are a C(;) outside quotes (a
    second statement), a comment (C(--), C(/*)), a backslash outside quotes (a psql command such as C(\!) runs a
    shell), a psql variable (C(:name); casts C(::type) are fine), a C($) outside quotes (dollar quotes and
    parameters), an C(E'') string, and quotes or parentheses left open. Anything else it may do (a function it calls)
    it does; a check-mode run counts in a C(READ ONLY) transaction, so there it can write nothing.
  - The table is named in the expression by its own name (an alias), so C(media_messages.created_at) works, also for
    a partitioned table.
  - The count and the delete run in one transaction (C(REPEATABLE READ), so both see the same rows), each statement
    bounded by I(statement_timeout). The rows are deleted in batches of at most I(batch_size) rows (by C(ctid), leaf
    table by leaf table for a partitioned table), and the transaction commits only when the batches deleted exactly
    the rows counted. It is all or nothing; a batch that fails or times out, a row another session changed meanwhile
    (a serialization failure), rolls back every batch, and nothing is deleted.
  - A database that is read-only is refused with that reason, nothing deleted (its C(default_transaction_read_only),
    which M(runbooks.incident.pg_read_only) sets during a corruption incident, or a standby); it is never overridden.
    Check mode still counts there, with a warning.
  - C(VACUUM (ANALYZE)) runs after the commit, outside the transaction, only when rows were deleted. It makes the
    space of the deleted rows reusable by the table, and returns to the filesystem only the empty pages at the end of
    each table (RV(reclaimed_bytes)); C(VACUUM FULL), which would return all of it, needs room for a whole copy of the
    table and locks it, and is never run. A VACUUM that fails is a warning; the delete stays committed.
  - Deleting rows writes WAL (in the database's filesystem) before any space comes back; on a filesystem with no
    space left at all, free some space by other means first.
  - Idempotent by the data; a second run finds no row that meets I(where) and reports C(changed=false), unless new
    rows expired meanwhile.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Counts the rows (in a read-only transaction) and refuses over I(max_rows) as a real run would; deletes nothing.
  diff_mode:
    support: none
options:
  db:
    description: The database.
    type: str
    default: wa_mcp
  table:
    description:
      - The table, as SQL writes it; lower case letters, digits and underscores as they are, any other name
        double-quoted (C("MediaMessages"), C("odd.name")), optionally after its schema and a dot
        (C(archive.media_messages)). Without a schema, C(public).
      - A table or a partitioned table (its partitions are purged, each of them a plain table); rows of tables that
        inherit from a plain table are not touched (C(ONLY)).
    type: str
    required: true
  where:
    description:
      - The condition of the rows to delete, an SQL boolean expression, for example
        C(created_at < now() - interval '90 days'). Runs as given; see the description for what is refused.
    type: str
    required: true
  max_rows:
    description:
      - The most rows one run deletes. When more rows meet I(where), the run is refused and nothing is deleted (0 to
        10^12; C(0) deletes nothing).
    type: int
    default: 100000
  batch_size:
    description: Rows one C(DELETE) statement deletes at most (1 to 10^7); all batches are still one transaction.
    type: int
    default: 10000
  statement_timeout:
    description: Seconds each statement (the count, each batch, the VACUUM) may run before the server cancels it (1 to 86400).
    type: int
    default: 300
  vacuum:
    description: Run C(VACUUM (ANALYZE)) on the table after rows were deleted.
    type: bool
    default: true
notes:
  - I(login_user) needs C(SELECT) and C(DELETE) on the table, and to own it (or be a superuser) for the VACUUM.
seealso:
  - module: runbooks.incident.storage_info
  - module: runbooks.incident.pg_read_only
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: How many media rows are older than 90 days (nothing deleted)
  runbooks.incident.pg_purge:
    db: wa_mcp
    table: media_messages
    where: "created_at < now() - interval '90 days'"
  check_mode: true
  register: expired

- name: Delete them (at most 500000) and vacuum the table
  runbooks.incident.pg_purge:
    db: wa_mcp
    table: media_messages
    where: "created_at < now() - interval '90 days'"
    max_rows: 500000
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
"""

RETURN = r"""
msg:
  description: What was counted and done, in one line.
  returned: always
  type: str
  sample: "deleted 4210 row(s) of media_messages in wa_mcp; vacuumed; 1327104 bytes returned to the filesystem"
db:
  description: The database.
  returned: success
  type: str
  sample: wa_mcp
table:
  description: The table as the collection names tables (C(public.) left out, odd names double-quoted).
  returned: success
  type: str
  sample: media_messages
matched:
  description: Rows that met I(where) (in the transaction that deleted them).
  returned: success
  type: int
  sample: 4210
deleted:
  description: Rows deleted; 0 in check mode.
  returned: success
  type: int
  sample: 4210
batches:
  description: C(DELETE) statements that deleted rows.
  returned: success
  type: int
  sample: 1
read_only:
  description: The database is read-only (then a run outside check mode is refused).
  returned: success
  type: bool
  sample: false
vacuumed:
  description: The table was vacuumed.
  returned: success
  type: bool
  sample: true
table_bytes_before:
  description: The table's bytes before (C(pg_total_relation_size) of it, or the total of its partitions; indexes and TOAST included).
  returned: success
  type: int
  sample: 73728000
table_bytes_after:
  description: Its bytes after; the same as before when nothing was deleted.
  returned: success
  type: int
  sample: 72400896
reclaimed_bytes:
  description: Bytes returned to the filesystem (before less after, 0 when it did not shrink).
  returned: success
  type: int
  sample: 1327104
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_purge


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        table=dict(type="str", required=True),
        where=dict(type="str", required=True),
        max_rows=dict(type="int", default=100000),
        batch_size=dict(type="int", default=10000),
        statement_timeout=dict(type="int", default=300),
        vacuum=dict(type="bool", default=True),
    ))
    params = module.params
    try:
        _pg_purge.check_params(params)
    except (_pg_purge.PurgeError, _pg.PgError) as exc:
        module.fail_json(msg="%s; nothing was deleted" % exc)
    try:
        result = _pg_purge.run(_pg_purge.purge_runtime(params), params, check_mode=module.check_mode, warn=module.warn)
    except _pg_purge.Refused as exc:
        module.fail_json(**dict(exc.result, msg=str(exc)))
    except _pg_purge.PurgeError as exc:
        module.fail_json(msg=str(exc))
    except (_pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot purge %s in %s: %s (the transaction was rolled back: nothing was deleted)" % (
            params["table"], params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
