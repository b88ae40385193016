#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_row_counts
short_description: Exact row counts of tables, to compare a restored database with its dump's manifest
version_added: 0.1.0
description:
  - Counts the rows of I(tables) (default every user table) of I(db) in one statement, hence one snapshot.
  - Each table is counted C(ONLY) itself, as a dump's data and M(runbooks.incident.pg_backup)'s manifest count it;
    a partitioned table counts the rows of all its partitions (sub-partitions included).
  - Tables are named C(clients) or C(schema.table); a part that is not a plain lower-case name is double-quoted as
    in SQL (C("Odd.Schema"."t.1"), C("Mixed")), as in the manifest.
  - With I(expected) (for example a manifest's C(row_counts)), fails listing every table whose count differs.
  - Read-only.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Counts in check mode too (it only reads).
  diff_mode:
    support: none
options:
  db:
    description: Database.
    type: str
    default: wa_mcp
  tables:
    description: Tables to count (C(schema.table) outside C(public), quoted parts as above); default all user tables.
    type: list
    elements: str
  expected:
    description: Expected counts (whole numbers) by table; only the tables listed here (and in I(tables)) are compared.
    type: dict
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Row counts of the restored database equal the manifest's
  runbooks.incident.pg_row_counts:
    db: wa_mcp
    tables: [clients, api_keys, messages]
    expected: "{{ (lookup('ansible.builtin.file', manifest_path) | from_json).row_counts }}"
    compose_project_dir: /opt/whatsapp-mcp
"""

RETURN = r"""
row_counts:
  description: Rows by table.
  returned: success
  type: dict
  sample: {clients: 50, api_keys: 100, messages: 3000000}
mismatches:
  description: Tables whose count differs from I(expected), with both numbers.
  returned: when I(expected) is given
  type: dict
  sample: {messages: {actual: 2999990, expected: 3000000}}
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        tables=dict(type="list", elements="str"),
        expected=dict(type="dict"),
    ))
    params = module.params
    expected = {}
    for table, count in (params["expected"] or {}).items():
        if isinstance(count, bool) or not ((isinstance(count, int) and count >= 0) or (isinstance(count, str) and count.strip().isdigit())):
            module.fail_json(msg="expected count of %s is %r, not a row count (a whole number, 0 or more)" % (table, count))
        expected[_pg.normalize_key(table)] = int(count)
    try:
        runtime = _pg.Runtime.from_params(params)
        runtime.ping()
        catalog = runtime.tables(params["db"])
        tables = [_pg.normalize_key(table) for table in params["tables"]] if params["tables"] else catalog.keys
        missing = sorted(set(tables) - set(catalog.keys))
        if missing:
            module.fail_json(msg="%s has no table %s" % (params["db"], ", ".join(missing)))
        counts = catalog.count(lambda sql: runtime.query(sql, params["db"]), tables)
    except (_pg.PgError, OSError) as exc:
        module.fail_json(msg="cannot count the rows of %s: %s" % (params["db"], exc))
    result = dict(changed=False, row_counts=counts)
    if params["expected"] is not None:
        result["mismatches"] = {table: dict(actual=counts[table], expected=count)
                                for table, count in sorted(expected.items()) if table in counts and counts[table] != count}
        if result["mismatches"]:
            module.fail_json(msg="row counts of %s differ from what was expected: %s" % (params["db"], ", ".join(
                "%s %s (expected %s)" % (t, m["actual"], m["expected"]) for t, m in result["mismatches"].items())), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
