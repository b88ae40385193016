#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_integrity_info
short_description: Check the tables and btree indexes of a database for corruption with amcheck, leaving no trace
version_added: 0.1.0
description:
  - Checks every table of I(db) selected (I(tables); default every ordinary table, partition and materialized view
    outside the system schemas; a partitioned table is checked through its partitions, it holds no rows itself) with
    amcheck's C(verify_heapam) (TOAST included), and reads each fully (a sequential scan turning every row to text,
    TOASTed values fetched) to catch pages the server cannot read (C(invalid page in block ...)). With I(indexes) it
    checks the btree indexes of those tables with C(bt_index_check); whether every row is in the index is asked only
    of a table that checked clean, so a damaged heap is not blamed on its indexes.
  - Needs PostgreSQL 14 or later for amcheck (C(verify_heapam)); with an older server, or when amcheck cannot be used,
    the tables are only read, the indexes are skipped, and RV(amcheck) says why.
  - Leaves no trace. Everything runs in one transaction that is rolled back at the end. When amcheck is not installed
    it is created inside that transaction (with a schema of its own, C(runbooks_incident_amcheck)), so it is gone
    afterwards; that needs a superuser I(login_user) (amcheck is not a trusted extension). The transaction is opened
    C(READ WRITE) explicitly, so a database set C(default_transaction_read_only = on) (as
    M(runbooks.incident.pg_read_only) leaves it) is checked too; nothing is ever committed. Creating amcheck uses
    one transaction id, and the transaction holds back vacuum's horizon while it runs.
  - Each check runs under a savepoint rolled back right after it, so one error ends that check only (the others go on)
    and its locks (C(ACCESS SHARE), as a C(SELECT) takes) are released at once. Each statement may run
    I(statement_timeout) seconds.
  - Never returns table contents; a problem is amcheck's message or the server's error message (its first line,
    without detail), at most 300 characters, at most 20 per relation and then how many more.
  - Refuses, and checks nothing, when more than I(max_relations) relations (tables and indexes) are selected.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Checks in check mode too (it changes nothing in either mode).
  diff_mode:
    support: none
options:
  db:
    description: The database to check.
    type: str
    required: true
  tables:
    description:
      - Only these tables (C(table) in C(public), or C(schema.table); a part that is not a plain lower-case name is
        double-quoted as in SQL, C("Odd.Schema"."t.1"), C("Mixed"), and a name as stored is taken when it has no
        quotes, C(audit.Log)). A partitioned table stands for its partitions.
      - Default every ordinary table, partition and materialized view outside C(pg_catalog), C(information_schema)
        and the TOAST and temporary schemas. A name that is no such table fails the run, checking nothing.
    type: list
    elements: str
  indexes:
    description: Also check the btree indexes of the selected tables (other index types are listed as skipped).
    type: bool
    default: true
  max_relations:
    description: The most relations (tables and indexes) checked in one run; more selected, it refuses and checks none.
    type: int
    default: 500
  statement_timeout:
    description: Seconds each check (one statement) may run; a check that runs longer is skipped and RV(healthy) is false.
    type: int
    default: 300
  incident_id:
    description:
      - Id of the incident the check is made for (for example C(INC-2026-0042)); only checked and returned.
      - Letters, digits and C(._:-), at most 64 characters.
    type: str
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Check the service's database for corruption
  runbooks.incident.pg_integrity_info:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    db: wa_mcp
    incident_id: INC-2026-0042
  register: integrity

- name: Stop when a relation is damaged
  ansible.builtin.assert:
    that: integrity.healthy
    fail_msg: "{{ integrity.msg }}"

- name: Check two tables only, without their indexes
  runbooks.incident.pg_integrity_info:
    login_host: db.internal
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    db: wa_mcp
    tables: [messages, audit.log]
    indexes: false
    statement_timeout: 900
"""

RETURN = r"""
msg:
  description: What was checked and found, in one line.
  returned: always
  type: str
  sample: "checked 3 tables and 4 indexes of wa_mcp (amcheck installed temporarily): 1 with problems: messages (unreadable)"
db:
  description: The database.
  returned: success
  type: str
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
relations:
  description:
    - Every relation selected, each table followed by its indexes, with C(relation) (its name, C(schema.name) outside
      C(public), quoted as in I(tables)), C(kind) (C(table) or C(index)), C(status) and C(problems) (strings).
    - C(status) C(ok) - checked clean; C(corrupt) - amcheck found problems (a table it found damaged but could read
      whole, or an index); C(unreadable) - the table could not be read through (its C(problems) end with the read's
      error); C(skipped) - not checked (C(problems) says why - a check that did not finish, a non-btree or invalid
      index, amcheck unavailable, a materialized view never populated).
  returned: success
  type: list
  elements: dict
  sample:
    - relation: messages
      kind: table
      status: unreadable
      problems: ["verify_heapam: invalid page in block 7 of relation base/16384/16412",
                 "read: invalid page in block 7 of relation base/16384/16412"]
    - {relation: messages_pkey, kind: index, status: ok, problems: []}
    - relation: clients
      kind: table
      status: corrupt
      problems: ["block 0, offset 3: xmin 4294967280 equals or exceeds next valid transaction ID 0:1020"]
    - relation: clients_pkey
      kind: index
      status: corrupt
      problems: ["bt_index_check: item order invariant violated for index \"clients_pkey\""]
corrupt:
  description: The relations whose status is C(corrupt) or C(unreadable), in the order of RV(relations).
  returned: success
  type: list
  elements: str
  sample: [messages, clients, clients_pkey]
readable_tables:
  description: The tables of RV(relations) read through without an error.
  returned: success
  type: list
  elements: str
  sample: [clients]
amcheck:
  description:
    - C(available) - the database has amcheck and I(login_user) may run it; C(installed temporarily) - created for
      the run in the transaction rolled back at its end; C(unavailable), a colon and the reason - tables only read,
      indexes skipped.
  returned: success
  type: str
  sample: installed temporarily
healthy:
  description:
    - True when no relation is C(corrupt) or C(unreadable) and every check finished (none skipped for a timeout, a
      permission or a relation dropped meanwhile). With amcheck unavailable it says only that the tables read through.
  returned: success
  type: bool
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_info, _pg_integrity


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", required=True),
        tables=dict(type="list", elements="str"),
        indexes=dict(type="bool", default=True),
        max_relations=dict(type="int", default=500),
        statement_timeout=dict(type="int", default=300),
        incident_id=dict(type="str"),
    ))
    params = module.params
    try:
        _pg_integrity.check_params(params)
        result = _pg_integrity.run(_pg_info.read_only_runtime(params), params)
    except (_pg_integrity.IntegrityError, _pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="integrity of %s not checked: %s (nothing was changed)" % (params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
