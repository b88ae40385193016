#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: offsite_sync
short_description: Ship backup sets off-host, encrypted with age, to S3-compatible object storage
version_added: 0.1.0
description:
  - Copies the backup sets of I(src) (as in M(runbooks.incident.backup_retention), a set is every entry named
    C(<prefix><stamp><rest>) with the same stamp) to I(bucket) under I(prefix), encrypted with C(age) to
    I(recipient). The host needs only the public key; the private key is needed only to restore
    (M(runbooks.incident.offsite_fetch)).
  - Each file C(F) of a set becomes the object C(<prefix>F.age); each directory (a media snapshot
    C(media-YYYY-MM-DD/), a directory-format dump C(db-YYYY-MM-DD.dir/)) is shipped as one tar stream, hard links
    within it kept, as C(<prefix>F.tar.age). Objects carry the SHA-256 of the plaintext and of the ciphertext and the
    plaintext size as user metadata, and are checked after the upload.
  - A set is B(complete) off-host only when its marker exists, uploaded last after every member was uploaded and
    verified - its manifest (C(db-YYYY-MM-DD.manifest.json.age)) or, for a set without one, C(<name>.set.json)
    listing the members and their digests. A dump whose manifest is not there yet is not shipped; a dump that does
    not match its manifest is refused.
  - Uploads stream through C(age) (nothing is staged on disk); objects of 16 MiB and more go up as multipart
    uploads, which S3 presents only once completed, and a failed upload is aborted. A run cut short leaves at most
    an incomplete set, which the next run completes, uploading only what is missing; unfinished multipart uploads
    older than an hour under I(prefix) are aborted.
  - Idempotent. A set whose marker is there and whose files did not change (names, sizes, mtimes) is skipped
    without being read; otherwise each member whose object already holds the same plaintext is skipped.
  - With I(retention), off-host copies follow the grandfather-father-son policy of
    M(runbooks.incident.backup_retention) (I(keep_daily), I(keep_monthly), I(keep_yearly)), applied to the
    complete off-host sets and the local sets together, after the uploads. A local set the policy would not keep is
    not uploaded. A set is removed marker first, so a set half removed looks incomplete, never complete.
  - Credentials come from I(access_key)/I(secret_key) or boto3's usual sources (C(AWS_ACCESS_KEY_ID),
    C(AWS_SECRET_ACCESS_KEY), C(AWS_PROFILE), an instance role); they never reach a command line.
requirements:
  - boto3
  - age (the C(age) command) on the managed host
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.s3
attributes:
  check_mode:
    support: full
    details: Lists the bucket and reads local files to return what would be uploaded and removed; uploads nothing.
  diff_mode:
    support: none
options:
  src:
    description: The backup directory.
    type: path
    default: /var/lib/whatsapp-mcp/backups
  prefixes:
    description: Name prefixes of the backup sets to ship (each also a separate retention series).
    type: list
    elements: str
    default: [db-, media-]
  recipient:
    description:
      - The C(age) public key (C(age1...)) the backups are encrypted to, or the absolute path of a recipients file
        on the host (C(age -R)) to encrypt to several keys. Never the private key.
    type: str
    required: true
  create_bucket:
    description: Create I(bucket) when it does not exist (a new MinIO or B2 set-up).
    type: bool
    default: false
  retention:
    description: Remove off-host sets the policy below does not keep. When false, nothing is ever removed.
    type: bool
    default: true
  keep_daily:
    description: Number of most recent days with a backup whose off-host sets are all kept. At least 1.
    type: int
    default: 30
  keep_monthly:
    description: Number of most recent months with a backup whose newest off-host set is kept.
    type: int
    default: 12
  keep_yearly:
    description: Number of most recent years with a backup whose newest off-host set is kept.
    type: int
    default: 0
notes:
  - S3 user metadata keys written are C(kind), C(sha256-plain), C(size-plain), C(sha256-cipher), C(sha256-tree) (tar
    streams), C(set-fingerprint) (markers) and C(recipient) (the age public key, when I(recipient) is one; see
    M(runbooks.incident.offsite_rekey)). A multipart object gets its metadata by a server-side copy onto
    itself once its ciphertext digest is known; C(sha256-cipher) present means verified.
seealso:
  - module: runbooks.incident.offsite_fetch
  - module: runbooks.incident.offsite_rekey
  - module: runbooks.incident.backup_retention
  - name: age
    description: The file encryption tool used.
    link: https://github.com/FiloSottile/age
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Ship last night's backups to Backblaze B2, keep 30 daily and 12 monthly copies off-host
  runbooks.incident.offsite_sync:
    src: /var/lib/whatsapp-mcp/backups
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    endpoint_url: https://s3.eu-central-003.backblazeb2.com
    region: eu-central-003
    access_key: "{{ vault_b2_key_id }}"
    secret_key: "{{ vault_b2_application_key }}"
    recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p

- name: Ship only the database dumps, credentials from the environment, never remove anything off-host
  runbooks.incident.offsite_sync:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    prefixes: [db-]
    recipient: /etc/whatsapp-mcp/backup-recipients.txt
    retention: false
  environment:
    AWS_ACCESS_KEY_ID: "{{ vault_s3_key_id }}"
    AWS_SECRET_ACCESS_KEY: "{{ vault_s3_secret }}"
  no_log: true
"""

RETURN = r"""
bucket_created:
  description: Whether I(bucket) was (or, in check mode, would be) created.
  returned: when I(create_bucket) created it
  type: bool
uploaded:
  description: Keys of the objects uploaded (in check mode, that would be uploaded), in upload order; a set's marker
    comes after its members.
  returned: always
  type: list
  elements: str
  sample: [host1/db-2026-11-22.sql.gz.age, host1/db-2026-11-22.manifest.json.age]
skipped:
  description: Number of objects already off-host with the same content, not uploaded again.
  returned: always
  type: int
  sample: 6
removed:
  description: Keys of the objects removed by the off-host retention (in check mode, that would be removed), each
    set's marker first.
  returned: always
  type: list
  elements: str
  sample: [host1/media-2026-10-01.set.json, host1/media-2026-10-01.tar.age]
bytes_uploaded:
  description: Bytes uploaded (ciphertext); 0 in check mode.
  returned: always
  type: int
  sample: 134217728
aborted_uploads:
  description: Number of stale multipart uploads (left by interrupted runs) aborted (in check mode, that would be).
  returned: always
  type: int
  sample: 0
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _offsite, _params, _retention, _s3store


def main():
    argument_spec = _params.s3_argument_spec()
    argument_spec.update(
        src=dict(type="path", default="/var/lib/whatsapp-mcp/backups"),
        prefixes=dict(type="list", elements="str", default=["db-", "media-"]),
        recipient=dict(type="str", required=True),
        retention=dict(type="bool", default=True),
        keep_daily=dict(type="int", default=30),
        keep_monthly=dict(type="int", default=12),
        keep_yearly=dict(type="int", default=0),
        create_bucket=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_together=_params.S3_REQUIRED_TOGETHER)
    boto3_error = _s3store.boto3_missing()
    if boto3_error:
        module.fail_json(msg=missing_required_lib("boto3"), exception=boto3_error)
    _params.refuse_nul(module)
    params = module.params
    keep = (params["keep_daily"], params["keep_monthly"], params["keep_yearly"]) if params["retention"] else None
    result = {}
    try:
        store = _s3store.store_from(params)
        if params["create_bucket"] and store.ensure_bucket(params["region"], module.check_mode):
            result["bucket_created"] = True
        _offsite.sync(store, params["src"], params["prefixes"], params["recipient"], keep=keep,
                      check_mode=module.check_mode, result=result)
    except _offsite.ERRORS + (_retention.RetentionError, OSError) as exc:
        done = [] if module.check_mode else result.get("uploaded", []) + result.get("removed", [])
        if done:
            after = ("%d object(s) were uploaded or removed before the failure; a set whose marker is missing is "
                     "incomplete off-host (readers ignore it) and the next run completes it" % len(done))
        else:
            after = "nothing was uploaded or removed"
        result.pop("warnings", None)
        result["changed"] = bool(done)
        module.fail_json(msg="off-host sync to s3://%s/%s failed: %s; %s" % (params["bucket"], params["prefix"], exc, after),
                         **result)
    for warning in result.pop("warnings"):
        module.warn(warning)
    result["changed"] = result["changed"] or result.get("bucket_created", False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
