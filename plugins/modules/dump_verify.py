#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: dump_verify
short_description: Prove a PostgreSQL dump whole and complete without restoring it
version_added: 0.1.0
description:
  - Reads the whole dump once and fails, saying why, unless every check passes
    (the seeds' monthly automated dump check, and the first step of every restore).
  - The format is detected from the content (gzip or plain SQL, custom, directory), never from the file name.
  - SHA-256 and size against the manifest written by M(runbooks.incident.pg_backup); complete decompression
    (a truncated or corrupted gzip stream fails); a C(CREATE TABLE) for each of I(expect_tables); every table the
    manifest lists; and the dump's own row counts (its COPY blocks) equal to the manifest's.
  - The SQL is read as psql would read it. A psql meta-command (C(\!), C(\o |cmd), C(\copy ... program), ...,
    which psql would run on the restoring host) or a COPY that runs a program or reads or writes a file on the
    database server fails the check, naming its line; pg_dump writes none of them (its own C(\restrict) and
    C(\unrestrict) lines aside).
  - A dump written by pg_dump must end with pg_dump's completion line (else it is truncated); a script pg_dump did
    not write, without a manifest, fails unless I(allow_foreign_script=true), since nothing proves it complete.
  - Plain dumps are read in pure Python; custom and directory dumps with C(pg_restore -f -) (no server needed),
    from the host's client tools or, with I(compose_project_dir), the database container's.
  - Changes nothing.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.backup_trust
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  src:
    description: The dump (file or directory).
    type: path
    required: true
  manifest:
    description: Its manifest; default the sibling C(<name>.manifest.json).
    type: path
  require_manifest:
    description: Fail when there is no manifest. Without one only the format, decompression and tables are checked.
    type: bool
    default: true
  allow_foreign_script:
    description: Accept a plain SQL script that pg_dump did not write and that has no manifest (nothing proves it complete).
    type: bool
    default: false
  expect_tables:
    description: Tables the dump must create.
    type: list
    elements: str
    default: [clients, api_keys, messages, audit_log, media_objects]
  compose_project_dir:
    description: Read custom and directory dumps with the C(pg_restore) of this compose project's database container.
    type: path
  compose_service:
    description: Compose service of the database.
    type: str
    default: postgres
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Monthly check of the latest dump
  runbooks.incident.dump_verify:
    src: /var/lib/whatsapp-mcp/backups/db-2026-11-21.sql.gz
    expect_tables: [clients, api_keys, messages, audit_log, media_objects]
"""

RETURN = r"""
verified:
  description: True (the module fails otherwise).
  returned: success
  type: bool
format:
  description: Detected format.
  returned: success
  type: str
  sample: plain
compression:
  description: Compression of a plain dump (C(gzip) or null).
  returned: success
  type: str
tables:
  description: Tables the dump creates.
  returned: success
  type: list
  elements: str
row_counts:
  description:
    - Rows of each table's data in the dump; a partitioned table's is the total of its partitions. A partition
      whose rows pg_dump loads through the partitioned table (hash partitioning on an enum) is left out.
  returned: success
  type: dict
  sample: {clients: 50, messages: 3000000}
manifest_path:
  description: The manifest used (null without one).
  returned: success
  type: str
signature:
  description:
    - The backup's signature as checked. C(signed) (a C(.sig) beside the manifest), C(verified) (by one of I(trusted_keys)),
      C(signer) (the SHA256 fingerprint of the key that signed it), C(warning) (why its origin is not proven, when
      I(accept_unsigned) let it through; null otherwise).
  returned: when a dump was read
  type: dict
  sample: {signed: true, verified: true, signer: "SHA256:fSbPxxhN9dKVKQh0i7YnZews6HPu3jXmDo6T4Tjrxx4", warning: null}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _dumpfile, _params, _pg, _pg_restore, _signature


def main():
    argument_spec = _params.backup_trust_argument_spec()
    argument_spec.update(
        src=dict(type="path", required=True),
        manifest=dict(type="path"),
        require_manifest=dict(type="bool", default=True),
        allow_foreign_script=dict(type="bool", default=False),
        expect_tables=dict(type="list", elements="str", default=["clients", "api_keys", "messages", "audit_log", "media_objects"]),
        compose_project_dir=dict(type="path"),
        compose_service=dict(type="str", default="postgres"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    _params.refuse_nul(module)
    params = module.params
    runtime = _pg.Runtime(compose_project_dir=params["compose_project_dir"], compose_service=params["compose_service"])
    try:
        trust = _signature.Trust(params["trusted_keys"], params["accept_unsigned"])
        result = _dumpfile.verify(params["src"], trust, params["manifest"], params["require_manifest"], params["expect_tables"],
                                  _pg_restore.archive_tool_for(runtime), params["allow_foreign_script"])
    except (_dumpfile.DumpError, _signature.SignatureError, OSError, ValueError) as exc:
        module.fail_json(msg="dump %s failed verification: %s" % (params["src"], exc), verified=False)
    if result["signature"]["warning"]:
        module.warn(result["signature"]["warning"])
    module.exit_json(changed=False, verified=True, **{key: result[key] for key in (
        "format", "compression", "tables", "row_counts", "manifest_path", "signature")})


if __name__ == "__main__":
    main()
