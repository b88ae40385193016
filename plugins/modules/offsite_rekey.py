#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: offsite_rekey
short_description: Re-encrypt or retire the off-host backup sets encrypted to a leaked age key
version_added: 0.1.0
description:
  - For when the age B(private) key of the backups leaked (a compromised host, a stolen laptop) - every off-host
    copy M(runbooks.incident.offsite_sync) encrypted to its public key I(old_recipient) is readable by whoever holds
    it. Once a new key pair exists, each such set in I(bucket) under I(prefix) is either re-encrypted to the new
    public key I(recipient) (I(state=reencrypted)) or deleted (I(state=retired)). I(state=report) changes nothing and
    says which complete sets are encrypted to which key, and which sets are incomplete.
  - B(Which key an object is encrypted to.) age does not record it in its output, so offsite_sync (from this version
    on) and this module write it as the S3 metadata C(recipient) of every object encrypted to one age public key.
    An object without it (shipped before, or encrypted to an SSH key or a recipients file) counts as encrypted to
    I(old_recipient) only when the leaked I(identity) opens its age header - the header and the payload's nonce are
    downloaded and given to C(age -d), so only the file key is decrypted, never any content; C(no identity matched)
    means another key (C(other)). Without I(identity) such an object is C(unknown), and is neither re-encrypted nor
    retired. I(identity) must hold the private key of I(old_recipient) and no other key (checked with
    C(age-keygen -y) before anything else), so that "it opens the header" means "it is encrypted to the leaked key".
  - B(Re-encryption) of an object streams its ciphertext from S3 into C(age -d -i identity), the plaintext through a
    pipe into C(age -r recipient) and the new ciphertext to a temporary object C(.rekey.<name>) (a multipart upload
    from 16 MiB). The plaintext never touches the disk and appears in no log or command line. The temporary object
    is kept only when the old ciphertext was the one recorded at upload and the plaintext's SHA-256 and size equal
    the recorded C(sha256-plain) and C(size-plain). A server-side copy then replaces the original with its full
    metadata (new C(sha256-cipher), C(recipient)), the copy is read back and its SHA-256 checked, and the temporary
    object is deleted.
  - B(No complete-looking set with an object that fails verification.) The marker of a set (its encrypted manifest,
    or its C(.set.json)) is first kept as C(.rekey.<marker>) - a manifest re-encrypted to the new key on the way -
    and deleted; the members are re-encrypted; the marker comes back last (a C(.set.json) with its members' new
    ciphertext digests), then the kept copy is deleted. Readers (M(runbooks.incident.offsite_fetch)) ignore a set
    without marker and objects starting with a dot.
  - B(Safe to kill and to re-run.) Objects already encrypted to I(recipient) are skipped, a set left without marker
    but with its kept marker is finished, temporary objects left behind are deleted. A failure reports the sets
    done before it (RV(reencrypted), RV(retired)) and the one being changed.
  - B(Retirement) deletes each selected set with an object encrypted to I(old_recipient), its marker first (as
    off-host retention does), so a set half deleted is incomplete, never complete-looking. It is refused, nothing
    deleted, when it would leave a prefix without a complete set encrypted to I(recipient) (re-encrypt one first or
    ship a new backup with the new key), unless I(force).
  - Only complete sets and sets this module left half re-encrypted are changed; incomplete sets (an upload cut
    short) are reported and left to offsite_sync. Point offsite_sync at the new I(recipient) before or right after
    (it skips what is already off-host whatever key it is encrypted to).
requirements:
  - boto3
  - age and age-keygen (the C(age) and C(age-keygen) commands) on the managed host
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.s3
attributes:
  check_mode:
    support: full
    details: Lists the bucket, reads the objects' metadata (and, with I(identity), the age headers of objects without
      C(recipient)), returns what would be re-encrypted or deleted and how many bytes; writes nothing.
  diff_mode:
    support: none
options:
  state:
    description:
      - C(report) changes nothing. C(reencrypted) re-encrypts every selected set with an object encrypted to
        I(old_recipient) to I(recipient). C(retired) deletes every selected set with an object encrypted to
        I(old_recipient).
    type: str
    choices: [report, reencrypted, retired]
    default: report
  old_recipient:
    description: The age public key (C(age1...)) of the leaked key.
    type: str
    required: true
  recipient:
    description:
      - The age public key (C(age1...)) of the new key pair. Required with I(state=reencrypted); with the other states
        it tells which sets are already encrypted to the new key (C(new)), which I(state=retired) requires to remain.
    type: str
  identity:
    description:
      - Path of the file of the B(leaked) age private key on the host, to decrypt (C(age -d -i)). It must hold the
        private key of I(old_recipient) alone and be readable by its owner only (mode C(0400) or C(0600)); the key
        itself never appears on a command line or in the result.
      - Required with I(state=reencrypted). Optional otherwise, to tell the key of objects without C(recipient)
        metadata.
    type: path
  prefixes:
    description: Name prefixes of the backup sets (as in M(runbooks.incident.offsite_sync)).
    type: list
    elements: str
    default: [db-, media-]
  select:
    description: C(all) for every set of I(prefixes), or a list of stamps (C(YYYY-MM-DD), optionally followed by
      C(THHMMSSZ)) to change only the sets of those stamps. A stamp without any set off-host fails the task.
    type: list
    elements: str
    default: [all]
  force:
    description: With I(state=retired), delete even when no complete set encrypted to I(recipient) would remain for a
      prefix (the backups off-host are then gone until the next offsite_sync).
    type: bool
    default: false
notes:
  - S3 user metadata written is the one offsite_sync writes (C(kind), C(sha256-plain), C(size-plain),
    C(sha256-cipher), C(sha256-tree), C(set-fingerprint)) and C(recipient).
  - Do not restore while a re-encryption runs - an object replaced between the moment a fetch reads its metadata and
    its content fails the fetch's verification (nothing is written then).
seealso:
  - module: runbooks.incident.offsite_sync
  - module: runbooks.incident.offsite_fetch
  - name: Key compromise runbook
    description: The age backup key section.
    link: https://github.com/runbooks/incident/blob/main/docs/runbooks/key-compromise.md
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Which off-host sets are encrypted to the leaked key?
  runbooks.incident.offsite_rekey:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    old_recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    recipient: age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg
    identity: /root/leaked-age.key
  register: rekey_report

- name: Re-encrypt every set to the new key (resumes a run that was cut short)
  runbooks.incident.offsite_rekey:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    endpoint_url: https://s3.eu-central-003.backblazeb2.com
    region: eu-central-003
    access_key: "{{ vault_b2_key_id }}"
    secret_key: "{{ vault_b2_application_key }}"
    state: reencrypted
    old_recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    recipient: age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg
    identity: /root/leaked-age.key

- name: Delete the old monthly sets instead of re-encrypting them
  runbooks.incident.offsite_rekey:
    bucket: wa-mcp-backups
    prefix: "{{ inventory_hostname }}/"
    state: retired
    select: ["2026-09-30", "2026-10-31"]
    old_recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    recipient: age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg
"""

RETURN = r"""
sets:
  description:
    - Every set off-host of I(prefixes), oldest first. C(status) is C(complete) (its marker is there),
      C(reencrypting) (left without marker by a re-encryption cut short, its marker kept) or C(incomplete).
    - C(recipient) is C(old), C(new), C(other) or C(unknown) when all its encrypted objects agree, C(mixed) when not,
      C(none) when it has none. C(action) is what the run did (in check mode, would do) - C(reencrypt), C(retire),
      C(clean) (only temporary objects left by a run to delete) or C(none).
    - Each member (object) with its key, size in bytes, C(recipient) and whether it is the marker; C(temporary) lists
      this module's temporary objects of the set.
  returned: always
  type: list
  elements: dict
  sample:
    - name: db-2026-11-22
      prefix: db-
      stamp: "2026-11-22"
      status: complete
      recipient: old
      selected: true
      action: reencrypt
      bytes: 5309
      temporary: []
      members:
        - {object: host1/db-2026-11-22.manifest.json.age, size: 512, recipient: old, marker: true, kind: file}
        - {object: host1/db-2026-11-22.sql.gz.age, size: 4797, recipient: old, marker: false, kind: file}
reencrypted:
  description: Names of the sets re-encrypted by this run, in order (in check mode, empty); on a failure, those done
    before it.
  returned: always
  type: list
  elements: str
  sample: [db-2026-11-21, media-2026-11-21]
retired:
  description: Names of the sets deleted by this run (in check mode, empty); on a failure, those done before it.
  returned: always
  type: list
  elements: str
  sample: [db-2026-09-30]
deleted:
  description: Keys of the objects deleted by I(state=retired), each set's marker first.
  returned: always
  type: list
  elements: str
  sample: [host1/db-2026-09-30.manifest.json.age, host1/db-2026-09-30.sql.gz.age]
bytes:
  description: Bytes of ciphertext uploaded by the re-encryption, or deleted; in check mode, the size of what would
    be re-encrypted or deleted.
  returned: always
  type: int
  sample: 134217728
aborted_uploads:
  description:
    - I(state=reencrypted) or I(state=retired), the unfinished multipart uploads of temporary objects C(.rekey.<name>)
      that a killed run left, aborted (in check mode, would be) once they are an hour old; a younger one may belong to
      a run still going. 0 for I(state=report).
  returned: success
  type: int
in_progress:
  description: On a failure, the set that was being changed (C(name), C(action), C(kept_marker)).
  returned: on failure, when a set was being changed
  type: dict
  sample: {name: media-2026-11-22, action: reencrypt, kept_marker: host1/.rekey.media-2026-11-22.set.json}
msg:
  description: What was found and done, in one line.
  returned: always
  type: str
  sample: "re-encrypted 2 set(s) to the new recipient (18874368 bytes): db-2026-11-22, media-2026-11-22"
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _offsite, _offsite_rekey, _params, _s3store


def main():
    argument_spec = _params.s3_argument_spec()
    argument_spec.update(
        state=dict(type="str", choices=list(_offsite_rekey.STATES), default="report"),
        old_recipient=dict(type="str", required=True, no_log=False),
        recipient=dict(type="str", no_log=False),
        identity=dict(type="path"),
        prefixes=dict(type="list", elements="str", default=["db-", "media-"]),
        select=dict(type="list", elements="str", default=["all"]),
        force=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_together=_params.S3_REQUIRED_TOGETHER,
                           required_if=[("state", "reencrypted", ("identity", "recipient"))])
    boto3_error = _s3store.boto3_missing()
    if boto3_error:
        module.fail_json(msg=missing_required_lib("boto3"), exception=boto3_error)
    _params.refuse_nul(module)
    params = module.params
    result = {}
    try:
        store = _s3store.store_from(params)
        _offsite_rekey.run(store, params["state"], params["old_recipient"], params["prefixes"], select=params["select"],
                           identity=params["identity"], recipient=params["recipient"], force=params["force"],
                           check_mode=module.check_mode, result=result)
    except _offsite.ERRORS + (OSError,) as exc:
        after = _offsite_rekey.failure_message(result, module.check_mode)
        result["changed"] = bool(result.get("changed")) and not module.check_mode
        result.pop("msg", None)
        module.fail_json(msg="offsite_rekey %s in s3://%s/%s failed: %s; %s"
                             % (params["state"], params["bucket"], params["prefix"], exc, after), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
