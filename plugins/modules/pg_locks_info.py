#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_locks_info
short_description: Which sessions hold or wait for the locks that block a backup (or anything else) in a database
version_added: 0.1.0
description:
  - Lists the sessions that hold or request an C(ACCESS EXCLUSIVE) lock on a table of I(db) (C(ALTER TABLE),
    C(TRUNCATE), C(VACUUM FULL), C(LOCK TABLE)...). pg_dump cannot read such a table, so a backup waits for them.
  - Lists the sessions of I(db) that wait for a lock, what they wait for and which sessions block them
    (C(pg_blocking_pids)), and adds those to the blockers. A running pg_dump that waits shows up here.
  - Each session comes with its role, application, state, how long its transaction and statement have run, and
    the start of its statement. A statement that may hold a secret (it mentions a password, a secret, a token or
    encryption) is not shown. Without the C(pg_read_all_stats) privilege, the statements of other roles read
    C(<insufficient privilege>).
  - Tables are named as M(runbooks.incident.pg_row_counts) names them (C(messages), C(audit.log), C("Odd"."t")).
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
    description: The database whose locks are read.
    type: str
    default: wa_mcp
  query_chars:
    description: Characters of each session's statement returned (0 for none, at most 10000).
    type: int
    default: 80
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Look for locks that block pg_dump
  runbooks.incident.pg_locks_info:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
  register: locks

- name: Say who blocks the backup
  ansible.builtin.debug:
    msg: "{{ locks.summary or ['no exclusive lock held'] }}"
"""

RETURN = r"""
blockers:
  description:
    - Sessions that hold or request an C(ACCESS EXCLUSIVE) lock on a table of I(db), or that another session of I(db)
      waits for. Each has C(pid) (0 for a prepared transaction), C(user), C(application), C(database), C(state),
      C(transaction_seconds), C(query_seconds), C(query), C(exclusive_locks) (C(table), C(granted)) and C(blocks)
      (the pids waiting for it).
  returned: success
  type: list
  elements: dict
  sample:
    - pid: 4242
      user: wa
      application: psql
      database: wa_mcp
      state: idle in transaction
      transaction_seconds: 340
      query_seconds: 338
      query: "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"
      exclusive_locks: [{table: messages, granted: true}]
      blocks: [4250]
waiting:
  description:
    - Sessions of I(db) waiting for a lock, with the same fields as RV(blockers) (no C(exclusive_locks), C(blocks)),
      C(waits_for) (C(mode), C(table), C(locktype)) and C(blocked_by) (pids).
  returned: success
  type: list
  elements: dict
  sample:
    - pid: 4250
      user: wa
      application: pg_dump
      database: wa_mcp
      state: active
      transaction_seconds: 21
      query_seconds: 20
      query: "LOCK TABLE public.messages IN ACCESS SHARE MODE"
      waits_for: [{mode: AccessShareLock, table: messages, locktype: relation}]
      blocked_by: [4242]
summary:
  description: One line per session of RV(blockers) and RV(waiting), for a report. Empty when nothing blocks.
  returned: success
  type: list
  elements: str
  sample:
    - "pid 4242 AccessExclusiveLock on messages by wa for 340 s: LOCK TABLE messages IN ACCESS EXCLUSIVE MODE [blocks pid 4250]"
    - "pid 4250 by wa (pg_dump) waits for AccessShareLock on messages for 20 s, blocked by pid 4242: LOCK TABLE public.messages IN ACCESS SHARE MODE"
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_info


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        query_chars=dict(type="int", default=80),
    ))
    params = module.params
    try:
        _pg.check_name(params["db"])
        result = _pg_info.locks(_pg_info.read_only_runtime(params), params["db"], params["query_chars"])
    except (_pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the locks of %s: %s (read-only: nothing was changed)" % (params["db"], exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
