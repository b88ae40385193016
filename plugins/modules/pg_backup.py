#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Dump a PostgreSQL database with a manifest taken in the dump's own snapshot
version_added: 0.1.0
description:
  - Dumps I(db) to I(dest) as C(db-YYYY-MM-DD.sql.gz) (plain SQL, compressed in parallel with pigz, readable with
    the seeds' C(gunzip -c | psql)), or as a custom (C(.dump)) or directory (C(.dir)) dump for parallel restores.
  - Writes C(db-YYYY-MM-DD.manifest.json) beside it with the dump's SHA-256 and size, the list of tables, exact
    per-table row counts, server version and timestamps. The row counts are taken in the same snapshot as the dump
    (an exported snapshot shared with C(pg_dump --snapshot)), so they describe exactly the rows in the file even
    while the service writes.
  - Both files are written under hidden partial names and renamed into place only when complete; a failed dump
    leaves no file under the final name and never touches earlier backups.
  - Idempotent per name. When the dump of that stamp already exists and matches its manifest, nothing is done.
    Something there that does not match its manifest, or a symlink, is refused unless I(force=true) (which
    replaces the link itself, never what it points to).
  - Nothing is written outside I(dest), and a symlink planted under the dump's partial or final name is never
    followed; a directory dump is made in a fresh directory and renamed into place only if it still is that one.
  - The manifest lists every table (partitioned ones too) by key (C(clients), C(schema.table), a part that is not a
    plain lower-case name double-quoted as in SQL) with its exact row count (a partitioned table's is the total of
    its partitions).
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Checks the server is reachable and whether a valid backup of that name exists; dumps nothing.
  diff_mode:
    support: none
options:
  db:
    description: Database to dump.
    type: str
    default: wa_mcp
  dest:
    description: Backup directory on the managed host.
    type: path
    default: /var/lib/whatsapp-mcp/backups
  format:
    description: C(plain) (SQL, gzip-compressed), C(custom) (C(pg_dump -Fc)) or C(directory) (C(pg_dump -Fd -j)).
    type: str
    choices: [plain, custom, directory]
    default: plain
  stamp:
    description:
      - Stamp in the file name, C(YYYY-MM-DD) (default today, UTC) optionally followed by a time
        (C(2026-11-22T031500Z)) for an extra backup the same day.
    type: str
  prefix:
    description: File name prefix; not empty, without C(/), C(..) or NUL, not starting with a dot.
    type: str
    default: db-
  compress_level:
    description: Compression level (1 fastest … 9 smallest). Level 1 costs about 9% more space than 6 and is much faster.
    type: int
    default: 1
  jobs:
    description: Compression threads (plain) or parallel dump jobs (directory), 1 to 64.
    type: int
    default: 2
  force:
    description: Replace an existing dump of the same name even if it cannot be verified.
    type: bool
    default: false
  mode:
    description: Mode of the dump and manifest files (octal, at most C(0777)).
    type: raw
    default: "0600"
  owner:
    description: Owner of the files (default the user running the module).
    type: str
  group:
    description: Group of the files.
    type: str
  signing_key:
    description:
      - Private key (OpenSSH format, Ed25519; root-only on the backup host) the manifest is signed with, into
        C(<name>.manifest.json.sig), written before the manifest. M(runbooks.incident.pg_restore) and
        M(runbooks.incident.dump_verify) check it against their I(trusted_keys), so a backup planted in the bucket or the
        backup directory is refused. Role C(runbooks.incident.db_backup) generates it on first use.
      - Without it the backup is unsigned, and restores refuse it unless told to I(accept_unsigned).
    type: path
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Nightly dump of wa_mcp through the compose stack (the seeds' runtime)
  runbooks.incident.pg_backup:
    db: wa_mcp
    dest: /var/lib/whatsapp-mcp/backups
    compose_project_dir: /opt/whatsapp-mcp

- name: Extra backup before a risky change, on a server reached with libpq
  runbooks.incident.pg_backup:
    db: wa_mcp
    dest: /srv/backups
    format: directory
    jobs: 4
    stamp: "{{ now(utc=true, fmt='%Y-%m-%dT%H%M%SZ') }}"
    login_host: db.internal
    login_user: backup
    login_password: "{{ vault_backup_password }}"
"""

RETURN = r"""
path:
  description: The dump.
  returned: always
  type: str
  sample: /var/lib/whatsapp-mcp/backups/db-2026-11-22.sql.gz
manifest_path:
  description: The manifest beside it.
  returned: always
  type: str
  sample: /var/lib/whatsapp-mcp/backups/db-2026-11-22.manifest.json
signed:
  description: Whether the manifest has a signature beside it.
  returned: success
  type: bool
manifest:
  description: The manifest (sha256, size, tables, row_counts, server_version, snapshot, timestamps).
  returned: when a dump exists after the call (not in check mode before the first dump)
  type: dict
  sample: {sha256: 9f2c..., size: 128004512, tables: [api_keys, audit_log, clients, media_objects, messages],
           row_counts: {clients: 50, messages: 3000000}, server_version: "15.18"}
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _dumpfile, _params, _pg, _pg_backup


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        dest=dict(type="path", default="/var/lib/whatsapp-mcp/backups"),
        format=dict(type="str", choices=["plain", "custom", "directory"], default="plain"),
        stamp=dict(type="str"),
        prefix=dict(type="str", default="db-"),
        compress_level=dict(type="int", default=1),
        jobs=dict(type="int", default=2),
        force=dict(type="bool", default=False),
        mode=dict(type="raw", default="0600"),
        owner=dict(type="str"),
        group=dict(type="str"),
        signing_key=dict(type="path", no_log=False),
    ))
    params = module.params
    if not 1 <= params["compress_level"] <= 9 or not 1 <= params["jobs"] <= 64:
        module.fail_json(msg="compress_level must be 1..9 and jobs 1..64; nothing was dumped")
    try:
        if params["stamp"] is not None:
            _pg_backup.check_stamp(params["stamp"])
        _pg_backup.check_prefix(params["prefix"])
    except _pg_backup.BackupError as exc:
        module.fail_json(msg="%s; nothing was dumped" % exc)
    try:
        mode = int(str(params["mode"]), 8)
        if not 0 <= mode <= 0o777:
            raise ValueError(params["mode"])
        result = _pg_backup.backup(
            _pg.Runtime.from_params(params), params["db"], params["dest"], fmt=params["format"], stamp=params["stamp"],
            compress_level=params["compress_level"], jobs=params["jobs"], prefix=params["prefix"], force=params["force"],
            check_mode=module.check_mode, mode=mode, owner=params["owner"], group=params["group"],
            signing_key=params["signing_key"])
    except ValueError:
        module.fail_json(msg="mode %r is not an octal file mode from 0 to 0777; nothing was dumped" % params["mode"])
    except (_pg.PgError, _pg_backup.BackupError, _dumpfile.DumpError, OSError) as exc:
        module.fail_json(msg="backup of %s failed, no file was written under its final name: %s" % (params["db"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
