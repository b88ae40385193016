#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_restore
short_description: Restore a PostgreSQL dump without destroying the live database before the new one is verified
version_added: 0.1.0
description:
  - Restores a plain (C(.sql), C(.sql.gz)), custom or directory dump, the format detected from the content.
  - With I(strategy=swap) (default) the dump is loaded into C(<db>_restore_staging) while the service keeps running,
    in one streaming pass that also proves the file whole (SHA-256 against the manifest, complete gzip stream) and
    counts its rows; the staging database's tables and exact row counts are then checked against the manifest.
    Only then, in one short transaction, sessions are terminated and C(<db>) becomes C(<db>_pre_restore_<stamp>)
    and the staging database becomes C(<db>). The service is down only for that step.
  - The steps can run separately (I(state=staged), then I(state=swapped)) so a playbook stops the app only for the
    swap; I(state=rolled_back) puts the pre-restore database back if anything after the swap fails.
  - Each step records I(incident_id) in the database comments, so re-running the same incident is a no-op
    (C(changed=false)), and a run killed at any point leaves the live database intact; the next run drops a
    half-loaded staging database and completes. A run killed after the swap, before the app came back, left the app
    stopped; the next run with the app commands (I(state=swapped) or C(restored)) finds it not healthy, starts it
    (C(changed=true)) and, if it does not come back, puts the pre-restore database back. Likewise, after a rollback
    killed after its rename, the next I(state=rolled_back) run with I(app_start_command) finds the app not healthy
    on the previous database and starts it (C(changed=true)).
  - I(strategy=in_place) is the seeds' way (drop the live database, load into it) and needs I(force=true).
  - Check mode verifies the whole dump (integrity, tables, row counts against the manifest), that the server is
    reachable and has the disk space, and returns the plan; it touches no database.
  - Plain dumps load through psql; with I(jobs) > 1 their indexes and constraints are built in parallel sessions.
    Custom and directory dumps are read whole with C(pg_restore -f -) first, then load with C(pg_restore -j).
  - A plain dump is run as SQL only. Every psql session starts with C(\restrict <random key>), so psql refuses any
    meta-command (C(\!), C(\o |cmd), C(\copy ... program), ...) the dump may hold, and the dump is refused before
    psql sees one, naming its line. pg_dump writes none but its own C(\restrict)/C(\unrestrict) pair, which is
    left out. A COPY that runs a program or reads or writes a file on the database server is refused too. The
    psql used must know C(\restrict) (13.22, 14.19, 15.14, 16.10, 17.6 or later); an older one is refused before
    anything is created.
  - A plain dump written by pg_dump must end with pg_dump's completion line, else it is truncated and refused,
    manifest or not. A script pg_dump did not write is refused without a manifest unless I(allow_foreign_script=true).
  - A dump whose manifest says it is of another database than I(db) is refused unless I(allow_other_db=true).
  - Tables are named in results and manifests as C(clients) or C(schema.table); a part that is not a plain lower-case
    name is double-quoted as in SQL (C("Odd.Schema"."t.1")). A partitioned table counts the rows of all its
    partitions; each partition counts its own.
  - A staging database left by another run is dropped (a warning names it and the incident that made it) and the
    result says so in C(dropped) and C(changed), also when the restore then fails.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.incident
  - runbooks.incident.postgres
  - runbooks.incident.backup_trust
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  src:
    description: The dump (file or directory) on the managed host.
    type: path
    required: true
  db:
    description: The live database.
    type: str
    default: wa_mcp
  manifest:
    description: The dump's manifest (written by M(runbooks.incident.pg_backup)); default the sibling C(<name>.manifest.json).
    type: path
  require_manifest:
    description: Refuse to restore a dump without a manifest (its integrity and row counts could not be checked).
    type: bool
    default: true
  allow_other_db:
    description:
      - Restore a dump whose manifest says it was taken of another database than I(db) (a warning says so).
        By default that is refused before anything is created.
    type: bool
    default: false
  allow_foreign_script:
    description:
      - Accept a plain SQL script that pg_dump did not write (no C(-- Dumped by pg_dump version) line at its top)
        and that has no manifest. Nothing can prove such a script complete, and a truncated one would go live
        without what its end creates, so by default it is refused.
    type: bool
    default: false
  expect_tables:
    description: Tables the dump must create (the seeds' monthly check greps for them).
    type: list
    elements: str
    default: [clients, api_keys, messages, audit_log, media_objects]
  state:
    description:
      - C(restored) stages and swaps; C(staged) only loads and verifies the staging database; C(swapped) swaps a
        verified staging database of the same incident into place; C(rolled_back) puts the pre-restore database back.
    type: str
    choices: [restored, staged, swapped, rolled_back]
    default: restored
  strategy:
    description: C(swap) (staging database, then rename) or C(in_place) (drop and reload the live database; needs I(force)).
    type: str
    choices: [swap, in_place]
    default: swap
  force:
    description: Accept I(strategy=in_place), which destroys the live database before the new one is verified.
    type: bool
    default: false
  keep_previous:
    description: How many pre-restore (and failed-restore) databases to keep; older ones are dropped after a swap.
    type: int
    default: 1
  jobs:
    description: Parallel sessions for index and constraint builds (plain) or C(pg_restore -j) (custom, directory); 1 to 64.
    type: int
    default: 2
  owner:
    description: Owner of the restored database (default the live database's owner).
    type: str
  disk_headroom:
    description: Free space required on the server beyond the database size, as a fraction (0.1 = 10%).
    type: float
    default: 0.1
  analyze:
    description: ANALYZE the restored database before it goes live, so the planner has statistics at once.
    type: bool
    default: true
  maintenance_work_mem:
    description:
      - C(maintenance_work_mem) of the restore's sessions (index builds sort in memory up to this).
      - Digits followed by nothing (kB), C(kB), C(MB), C(GB) or C(TB), from 1MB to 2147483647kB; anything else is
        refused before anything runs.
    type: str
    default: 512MB
  app_stop_command:
    description:
      - Stops the service just before the swap (argv), e.g. C([docker, compose, --project-directory, /opt/whatsapp-mcp, stop, app]).
      - With I(app_start_command), the service is stopped, the databases swapped, migrations run and the service
        started in this one step, so its downtime (C(app_downtime_s)) is only that. If it does not start or answer
        I(health_url), the swap is rolled back and the service started on the previous database.
    type: list
    elements: str
  app_migrate_command:
    description: Migrations run after the swap, before the service starts (argv).
    type: list
    elements: str
  app_start_command:
    description: Starts the service after the swap (argv).
    type: list
    elements: str
  health_url:
    description: URL that answers 200 once the service is back; polled after I(app_start_command).
    type: str
  health_timeout:
    description: Seconds to wait for I(health_url) (at least 1).
    type: int
    default: 120
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Load and verify last night's dump while the app keeps running
  runbooks.incident.pg_restore:
    src: /var/lib/whatsapp-mcp/backups/db-2026-11-21.sql.gz
    db: wa_mcp
    state: staged
    incident_id: INC-2026-0042
    compose_project_dir: /opt/whatsapp-mcp

- name: Swap it into place (app stopped)
  runbooks.incident.pg_restore:
    src: /var/lib/whatsapp-mcp/backups/db-2026-11-21.sql.gz
    state: swapped
    incident_id: INC-2026-0042
    compose_project_dir: /opt/whatsapp-mcp
  register: swapped

- name: Put the previous database back if the service does not come up
  runbooks.incident.pg_restore:
    src: /var/lib/whatsapp-mcp/backups/db-2026-11-21.sql.gz
    state: rolled_back
    incident_id: INC-2026-0042
    compose_project_dir: /opt/whatsapp-mcp
"""

RETURN = r"""
signature:
  description:
    - The backup's signature as checked. C(signed) (a C(.sig) beside the manifest), C(verified) (by one of I(trusted_keys)),
      C(signer) (the SHA256 fingerprint of the key that signed it), C(warning) (why its origin is not proven, when
      I(accept_unsigned) let it through; null otherwise).
  returned: when a dump was read
  type: dict
  sample: {signed: true, verified: true, signer: "SHA256:fSbPxxhN9dKVKQh0i7YnZews6HPu3jXmDo6T4Tjrxx4", warning: null}
db:
  description: The live database.
  returned: always
  type: str
  sample: wa_mcp
staging_db:
  description: The staging database the dump is loaded into.
  returned: always
  type: str
  sample: wa_mcp_restore_staging
previous_db:
  description: Where the database that was live before is kept (after a swap), or the failed one (after a rollback).
  returned: always
  type: str
  sample: wa_mcp_pre_restore_20261122T031502Z
row_counts:
  description: Exact row counts of the restored database, equal to the manifest's.
  returned: when the dump was loaded or had been
  type: dict
  sample: {clients: 50, api_keys: 100, messages: 3000000}
verified:
  description: Whether the restored database matched the manifest (tables and row counts).
  returned: always
  type: bool
duration_s:
  description: Wall time of the call.
  returned: always
  type: float
downtime_s:
  description: Time the live database was unavailable (the swap transaction); 0 for a step that swaps nothing.
  returned: always
  type: float
dropped:
  description:
    - Databases that existed before the call and were dropped by it - older pre-restore/failed-restore databases
      beyond I(keep_previous), a leftover staging database, the live database with I(strategy=in_place). Also
      returned when the restore fails after dropping one (then C(changed=true)).
  returned: always
  type: list
  elements: str
app_downtime_s:
  description: Seconds from stopping the service to its answering I(health_url) again.
  returned: when the step swapped with I(app_stop_command)
  type: float
plan:
  description: What the call would do (check mode).
  returned: in check mode
  type: list
  elements: str
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _appcycle, _dumpfile, _params, _pg, _pg_restore, _run_lock, _signature


def main():
    module = _params.postgres_module(dict(
        incident_id=dict(type="str", required=True),
        src=dict(type="path", required=True),
        db=dict(type="str", default="wa_mcp"),
        manifest=dict(type="path"),
        require_manifest=dict(type="bool", default=True),
        allow_other_db=dict(type="bool", default=False),
        allow_foreign_script=dict(type="bool", default=False),
        expect_tables=dict(type="list", elements="str", default=["clients", "api_keys", "messages", "audit_log", "media_objects"]),
        state=dict(type="str", choices=["restored", "staged", "swapped", "rolled_back"], default="restored"),
        strategy=dict(type="str", choices=["swap", "in_place"], default="swap"),
        force=dict(type="bool", default=False),
        keep_previous=dict(type="int", default=1),
        jobs=dict(type="int", default=2),
        owner=dict(type="str"),
        disk_headroom=dict(type="float", default=0.1),
        analyze=dict(type="bool", default=True),
        maintenance_work_mem=dict(type="str", default="512MB"),
        app_stop_command=dict(type="list", elements="str"),
        app_migrate_command=dict(type="list", elements="str"),
        app_start_command=dict(type="list", elements="str"),
        health_url=dict(type="str"),
        health_timeout=dict(type="int", default=120),
        **_params.backup_trust_argument_spec(),
    ))
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["incident_id"]):
        module.fail_json(msg="incident_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed"
                         % params["incident_id"])
    if params["health_timeout"] < 1:
        module.fail_json(msg="health_timeout must be at least 1 second; nothing was changed")
    try:
        trust = _signature.Trust(params["trusted_keys"], params["accept_unsigned"])
    except _signature.SignatureError as exc:
        module.fail_json(msg="trusted_keys: %s; nothing was changed" % exc)
    runtime = _pg.Runtime.from_params(params)
    try:
        _pg.memory_kb(params["maintenance_work_mem"])
        runtime.pgoptions = _pg.session_options([("maintenance_work_mem", params["maintenance_work_mem"]),
                                                 ("synchronous_commit", "off")])
    except _pg.PgError as exc:
        module.fail_json(msg="maintenance_work_mem %s; nothing was changed" % exc)
    app = None
    if params["app_stop_command"] or params["app_start_command"]:
        try:
            app = _appcycle.AppCycle(params["app_stop_command"], params["app_migrate_command"], params["app_start_command"],
                                     params["health_url"], params["health_timeout"])
        except _pg_restore.RestoreError as exc:
            module.fail_json(msg="%s; nothing was changed" % exc)
    try:
        result = _pg_restore.restore(
            runtime, params["src"], params["db"], params["incident_id"], trust, state=params["state"], strategy=params["strategy"],
            manifest=params["manifest"], require_manifest=params["require_manifest"], expect_tables=params["expect_tables"],
            force=params["force"], keep_previous=params["keep_previous"], jobs=params["jobs"], owner=params["owner"],
            disk_headroom=params["disk_headroom"], analyze=params["analyze"], check_mode=module.check_mode, warn=module.warn,
            app=app, allow_other_db=params["allow_other_db"], allow_foreign_script=params["allow_foreign_script"])
    except _pg_restore.RestoreFailed as exc:
        if isinstance(exc.cause, _pg_restore.RolledBack):
            what = "failed and was rolled back"
        elif exc.live_dropped:
            what = "failed after the live database %s was dropped (strategy=in_place)" % params["db"]
        else:
            what = "refused or failed, the live database %s is untouched" % params["db"]
        module.fail_json(msg="restore of %s %s; it dropped %s: %s" % (params["src"], what, "; ".join(exc.described), exc),
                         changed=True, dropped=exc.dropped, rolled_back=isinstance(exc.cause, _pg_restore.RolledBack))
    except _pg_restore.RolledBack as exc:
        module.fail_json(msg="restore of %s failed and was rolled back: %s" % (params["src"], exc), changed=True, rolled_back=True)
    except (_pg.PgError, _pg_restore.RestoreError, _dumpfile.DumpError, OSError, ValueError) as exc:
        module.fail_json(msg="restore of %s refused or failed, the live database %s is untouched: %s"
                         % (params["src"], params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
