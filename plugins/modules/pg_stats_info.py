#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_stats_info
short_description: Why a database is slow - sequential scans, dead rows, checkpoints, unused and INVALID indexes, the top statements
version_added: 0.1.0
description:
  - Reads the statistics of I(db) for the degraded-database incident (C(db_degraded.yml)) and says what is worth a
    look in RV(findings) - a big table read mostly by sequential scans (an index may be missing), an INVALID index
    (the leftover of a failed or cancelled C(CREATE INDEX CONCURRENTLY)), a big table never analyzed, indexes never
    scanned, a big table with many dead rows (C(VACUUM)), autovacuum turned off, and checkpoints that WAL forces
    before their time (C(max_wal_size)).
  - The tables are those of C(pg_stat_user_tables) (ordinary tables and materialized views), by rows read by
    sequential scans; the counters cover the time since RV(stats_reset) (or since the statistics began, when it is
    null). A table with fewer than I(min_rows) live rows is never a finding.
  - When the extension C(pg_stat_statements) is installed in I(db) and its library loaded
    (C(shared_preload_libraries)), the I(top) statements of I(db) by total execution time are returned; otherwise
    RV(statements_available) is false and RV(statements_reason) says why (not installed, not loaded, no
    permission). A statement that may hold a secret (it mentions a password, a secret, a token or encryption
    anywhere in its text) is not shown, as in M(runbooks.incident.pg_sessions).
  - Reads in one read-only transaction (C(default_transaction_read_only)), one snapshot; changes nothing. It never
    waits behind a lock - the size of a relation with an ACCESS EXCLUSIVE lock held or awaited on it is null (a
    warning names the tables), and every read runs under a C(lock_timeout) of 10 seconds.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads as it does outside check mode; it never changes anything.
  diff_mode:
    support: none
options:
  db:
    description: The database whose statistics are read.
    type: str
    default: wa_mcp
  min_rows:
    description: Tables with fewer live rows (C(n_live_tup)) than this are never findings, nor are the indexes on them.
    type: int
    default: 10000
  seq_scan_ratio:
    description:
      - The share of a table's scans that are sequential (C(seq_scan / (seq_scan + idx_scan))) above which a table of
        at least I(min_rows) rows is a finding. 0 or more, less than 1.
    type: float
    default: 0.5
  dead_row_ratio:
    description:
      - The share of a table's rows that are dead (C(n_dead_tup / (n_live_tup + n_dead_tup))) above which a table of at
        least I(min_rows) rows and 1000 dead rows is a finding (run C(VACUUM)). More than 0, less than 1.
    type: float
    default: 0.2
  top:
    description: The most tables in RV(tables), and statements in RV(statements) (1 to 1000).
    type: int
    default: 10
  query_chars:
    description: Characters of each statement returned (0 for none, at most 10000).
    type: int
    default: 80
  incident_id:
    description:
      - Id of the incident (for example C(INC-2026-0042) or an AWX job id), only checked and returned. Letters,
        digits and C(._:-), at most 64 characters.
    type: str
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Read what the statistics of the service's database say
  runbooks.incident.pg_stats_info:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    incident_id: INC-2026-0042
  register: stats

- name: Show the findings
  ansible.builtin.debug:
    msg: "{{ stats.findings | map(attribute='title') | list }}"

- name: Only tables of a million rows or more, read by sequential scans in more than 20 % of their scans
  runbooks.incident.pg_stats_info:
    login_host: db.internal
    login_user: ops
    login_password: "{{ vault_ops_password }}"
    db: wa_mcp
    min_rows: 1000000
    seq_scan_ratio: 0.2
    top: 20
"""

RETURN = r"""
msg:
  description: What was found, in one line.
  returned: always
  type: str
  sample: >-
    wa_mcp: 12 tables, 1 INVALID and 2 unused indexes, 10 statements from pg_stat_statements; findings: 1 high,
    1 warning, 2 info; counters since 2026-03-01T02:00:00+00:00
db:
  description: The database.
  returned: success
  type: str
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
stats_reset:
  description:
    - When the database's statistics were last reset (C(pg_stat_database.stats_reset)); the counters cover the time
      since. Null when they never were (they then cover the time since the cluster began keeping them).
  returned: success
  type: str
  sample: "2026-03-01T02:00:00.123456+00:00"
server_started:
  description: When the server started (C(pg_postmaster_start_time())).
  returned: success
  type: str
tables:
  description:
    - At most I(top) tables, by rows read by sequential scans (C(seq_tup_read)), most first. Each has C(schema),
      C(name), C(table) (its key - C(public.) left out, a part quoted when it is not a plain lowercase name),
      C(seq_scan), C(seq_tup_read), C(idx_scan) (null without an index), C(idx_tup_fetch), C(n_live_tup),
      C(size_bytes) (C(pg_table_size); null when locked), C(seq_scan_share) (share of its scans that were
      sequential, null before any scan), C(last_analyze) and C(last_autoanalyze).
  returned: success
  type: list
  elements: dict
  sample:
    - schema: public
      name: messages
      table: messages
      seq_scan: 950
      seq_tup_read: 19000000
      idx_scan: 50
      idx_tup_fetch: 50
      n_live_tup: 20000
      size_bytes: 1228800
      seq_scan_share: 0.95
      last_analyze: null
      last_autoanalyze: "2026-03-01T02:10:00.000000+00:00"
unused_indexes:
  description:
    - Valid indexes never scanned since the statistics were reset that are neither unique nor a primary key nor
      behind a constraint (those are needed whether scanned or not), by size, biggest first. Each has C(schema),
      C(table), C(index), C(size_bytes) and C(definition).
  returned: success
  type: list
  elements: dict
  sample:
    - {schema: public, table: messages, index: messages_old_idx, size_bytes: 466944,
       definition: "CREATE INDEX messages_old_idx ON public.messages USING btree (created_at)"}
invalid_indexes:
  description:
    - Indexes marked INVALID (C(indisvalid) false) - left by a failed or cancelled C(CREATE INDEX CONCURRENTLY), or
      being built right now (C(building_pid) is then the pid of the build). Each has C(schema), C(table), C(index),
      C(size_bytes), C(definition), C(ready) (whether writes maintain it) and C(building_pid).
  returned: success
  type: list
  elements: dict
  sample:
    - {schema: public, table: messages, index: messages_sender_idx, size_bytes: 8192, ready: true, building_pid: null,
       definition: "CREATE UNIQUE INDEX messages_sender_idx ON public.messages USING btree (sender)"}
server:
  description:
    - What the server's maintenance looks like - C(autovacuum) (on or off), C(max_wal_size_mb), C(checkpoint_timeout),
      and C(checkpoints) (C(timed), C(requested), C(since) the counters were reset; from C(pg_stat_checkpointer) on
      PostgreSQL 17 and later, C(pg_stat_bgwriter) before).
  returned: success
  type: dict
  sample: {autovacuum: true, max_wal_size_mb: 1024, checkpoint_timeout: 5min, checkpoints: {timed: 40, requested: 310, since: null}}
statements_available:
  description: Whether pg_stat_statements could be read in I(db).
  returned: success
  type: bool
statements_reason:
  description: Why pg_stat_statements could not be read (not installed in I(db), not loaded, no permission).
  returned: when RV(statements_available) is false
  type: str
  sample: >-
    pg_stat_statements is installed in wa_mcp but its library is not loaded (add it to shared_preload_libraries and
    restart the server)
statements:
  description:
    - The I(top) statements of I(db) in pg_stat_statements by total execution time, most first. Each has
      C(queryid), C(user), C(calls), C(total_ms), C(mean_ms), C(rows) and C(query) (its first I(query_chars)
      characters; null with I(query_chars=0); a placeholder saying it was hidden when it may hold a secret). Empty
      when not available.
  returned: success
  type: list
  elements: dict
  sample:
    - {queryid: 4242424242, user: wa, calls: 1200, total_ms: 93000.5, mean_ms: 77.5, rows: 1200,
       query: "SELECT * FROM messages WHERE sender = $1"}
findings:
  description:
    - What is worth a look, most severe first, each with C(severity) (C(high), C(warning) or C(info)), C(title),
      C(detail) (what to do), C(table) (its key) and, for an index, C(index).
    - C(high) a table of at least I(min_rows) rows read by sequential scans in more than I(seq_scan_ratio) of its
      scans (an index may be missing; which columns, the statements that read it tell). C(warning) an INVALID
      index (drop it with M(runbooks.incident.pg_index) I(state=absent), or build it again), a table of at least
      I(min_rows) rows never analyzed (run C(ANALYZE)), a table of at least I(min_rows) rows with more than
      I(dead_row_ratio) of them dead (run C(VACUUM (ANALYZE)); why autovacuum did not), checkpoints mostly requested
      rather than timed, at least 10 of them (raise C(max_wal_size); C(table) is null). C(high) also autovacuum off
      on the server. C(info) an index never scanned on such a table, an INVALID index being built right now.
  returned: success
  type: list
  elements: dict
  sample:
    - severity: high
      title: table messages (20000 rows) is read mostly by sequential scans
      detail: >-
        950 of 1000 scans were sequential (95%), 19000000 rows read by them; an index may be missing: look at the
        statements that read it (statements above) and its WHERE and JOIN columns, then create one with
        runbooks.incident.pg_index
      table: messages
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _pg_stats


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        min_rows=dict(type="int", default=10000),
        seq_scan_ratio=dict(type="float", default=0.5),
        dead_row_ratio=dict(type="float", default=0.2),
        top=dict(type="int", default=10),
        query_chars=dict(type="int", default=80),
        incident_id=dict(type="str"),
    ))
    params = module.params
    try:
        _pg_stats.check_params(params)
        result = _pg_stats.run(_pg_stats.runtime_of(params), params, warn=module.warn)
    except (_pg_stats.StatsError, _pg.PgError, OSError, ValueError) as exc:
        module.fail_json(msg="statistics of %s not read: %s (nothing was changed)" % (params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
