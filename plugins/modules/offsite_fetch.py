#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: offsite_fetch
short_description: Fetch, decrypt and verify backup sets shipped off-host by offsite_sync
version_added: 0.1.0
description:
  - Downloads the newest B(complete) off-host set of each of I(prefixes) (or the set of stamp I(select)) that
    M(runbooks.incident.offsite_sync) shipped to I(bucket) under I(prefix), decrypts it with the C(age) private key
    in the file I(identity) and writes it to I(dest) as it was on the backup host - files, and directories (media
    snapshots, directory-format dumps) with their hard links.
  - Sets without their marker (an upload or removal cut short) are never chosen.
  - A set is complete or it is refused before anything is written. Every member its marker lists must be there
    with the digests of a verified upload, and a dump set's manifest (decrypted in memory first) must describe a
    dump that is one of its members, with the same SHA-256. A set missing a member fails the task as incomplete,
    naming what is missing and the other sets of that prefix, with nothing fetched and C(changed=false).
  - Each object streams from S3 through C(age -d) into a hidden partial file or directory in I(dest). Only when the
    SHA-256 of the ciphertext and of the plaintext (for a directory, of every file) of B(every) member of every
    chosen set matched what was recorded at upload do they get their names, a dump set's manifest last. A damaged
    or replaced object fails the task and leaves nothing under a final name, and no partial entry.
  - A damaged object (a ciphertext that is not the one uploaded, also when only its age header is damaged) is
    reported as damaged; a key the backup was not encrypted to is reported as a wrong key once the object is known
    to be intact (the whole object is read to tell the two apart). Nothing is written in either case.
  - I(dest) is reached without following a symlink someone other than root could have planted. A symlink, another
    file or a directory where an entry goes fails the task (move it away); a symlink where a partial entry goes is
    removed, never followed. Archive members with absolute names, C(..), a name twice, links leading out of the
    snapshot (also by way of another link) or special files are refused.
  - Idempotent. An entry already in I(dest) with the recorded content is not fetched again; an entry there with other
    content fails the task before anything is fetched (move it away).
requirements:
  - boto3
  - age (the C(age) command) on the managed host
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.s3
attributes:
  check_mode:
    support: full
    details: Lists the bucket, reads the objects' metadata and the files in I(dest), returns what would be fetched.
  diff_mode:
    support: none
options:
  dest:
    description: Directory to fetch into; it must exist. Fetched files get mode C(0600).
    type: path
    required: true
  identity:
    description:
      - Path of the C(age) private key file on the host (C(age -d -i)). It must be readable by its owner only
        (mode C(0400) or C(0600)); the key itself never appears on a command line.
      - Not needed with I(list_only).
    type: path
    default: /etc/whatsapp-mcp/age.key
  select:
    description: C(latest) for the newest complete set of each prefix, or a stamp (C(YYYY-MM-DD), optionally followed
      by C(THHMMSSZ)) to fetch the sets of that stamp. Every prefix must have a complete set to choose.
    type: str
    default: latest
  prefixes:
    description: Name prefixes of the sets to fetch.
    type: list
    elements: str
    default: [db-, media-]
  list_only:
    description: Only return the complete off-host sets (RV(available)) and the ones I(select) chooses; fetch nothing.
    type: bool
    default: false
seealso:
  - module: runbooks.incident.offsite_sync
  - module: runbooks.incident.pg_restore
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Fetch the newest complete database and media backups for a restore
  runbooks.incident.offsite_fetch:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    endpoint_url: https://s3.eu-central-003.backblazeb2.com
    region: eu-central-003
    access_key: "{{ vault_b2_key_id }}"
    secret_key: "{{ vault_b2_application_key }}"
    identity: /etc/whatsapp-mcp/age.key
    dest: /var/lib/whatsapp-mcp/restore

- name: What is off-host?
  runbooks.incident.offsite_fetch:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    dest: /var/lib/whatsapp-mcp/restore
    list_only: true
  register: offsite

- name: Fetch only the dump of 22 November
  runbooks.incident.offsite_fetch:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    prefixes: [db-]
    select: "2026-11-22"
    dest: /var/lib/whatsapp-mcp/restore
"""

RETURN = r"""
fetched:
  description: Local paths written (in check mode, that would be written), a dump set's manifest after its dump.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/whatsapp-mcp/restore/db-2026-11-22.sql.gz, /var/lib/whatsapp-mcp/restore/db-2026-11-22.manifest.json,
           /var/lib/whatsapp-mcp/restore/media-2026-11-22]
sets:
  description: Per prefix, the stamp of the set chosen (null when a prefix has none, with I(list_only)).
  returned: always
  type: dict
  sample: {db-: "2026-11-22", media-: "2026-11-22"}
available:
  description: The complete off-host sets, by prefix, newest first.
  returned: always
  type: list
  elements: dict
  sample: [{name: db-2026-11-22, prefix: db-, stamp: "2026-11-22"}, {name: db-2026-11-21, prefix: db-, stamp: "2026-11-21"}]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _offsite, _params, _s3store


def main():
    argument_spec = _params.s3_argument_spec()
    argument_spec.update(
        dest=dict(type="path", required=True),
        identity=dict(type="path", default="/etc/whatsapp-mcp/age.key"),
        select=dict(type="str", default="latest"),
        prefixes=dict(type="list", elements="str", default=["db-", "media-"]),
        list_only=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_together=_params.S3_REQUIRED_TOGETHER)
    boto3_error = _s3store.boto3_missing()
    if boto3_error:
        module.fail_json(msg=missing_required_lib("boto3"), exception=boto3_error)
    _params.refuse_nul(module)
    params = module.params
    try:
        store = _s3store.store_from(params)
        result = _offsite.fetch(store, params["dest"], params["identity"], params["prefixes"], select=params["select"],
                                list_only=params["list_only"], check_mode=module.check_mode)
    except _offsite.ERRORS + (OSError,) as exc:
        module.fail_json(msg="fetching the off-host backups from s3://%s/%s failed: %s; no partial or unverified file was "
                             "left in %s" % (params["bucket"], params["prefix"], exc, params["dest"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
