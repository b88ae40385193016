#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: secret_rotate
short_description: Replace a generated secret (JWT signing secret, database password) in a sops file, once per change id
version_added: 0.1.0
description:
  - Generates a new random value on the managed host and sets it as top-level key I(key) of I(sops_file), in one
    atomic replace of the encrypted file that keeps every other key. The value never leaves the host, and is never
    in a result, a diff or a process argument.
  - With I(keep_previous), the replaced value is kept as C(<key>.previous), for a credential that must keep working
    until the new one is in place everywhere (a database password before C(ALTER ROLE)). I(state=retired) removes
    it once the change is verified. Without it, the replaced value is gone at once, as a compromised secret must be.
  - Writes C(<key>.rotation), a JSON record with the change id, the time and fingerprints, and no secret. Running
    the same I(change_id) again changes nothing, so a run that died midway can be re-run safely.
  - The service's secrets directory is filled from the sops file by its secrets unit; restart that unit (and the
    service) afterwards, as role C(runbooks.incident.key_compromise) does.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.sops
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    details: Secrets are never diffed.
options:
  key:
    description: Top-level key of the secret (letters, digits and C(_.-)), e.g. C(auth_jwt_secret) or C(db_password).
    type: str
    required: true
  state:
    description: C(rotated) replaces the value. C(retired) removes C(<key>.previous).
    type: str
    choices: [rotated, retired]
    default: rotated
  change_id:
    description: Id of the incident or change, recorded in C(<key>.rotation). The same id twice rotates once.
    type: str
    required: true
  length:
    description: Length in characters of the new value (URL-safe alphabet, 6 random bits per character). At least 32, at most 1024.
    type: int
    default: 48
  keep_previous:
    description: Keep the replaced value as C(<key>.previous) until I(state=retired).
    type: bool
    default: false
  force:
    description: Rotate with I(keep_previous) although a previous value from an earlier change is still kept (it is dropped).
    type: bool
    default: false
notes:
  - I(sops_file) is required.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Replace the JWT signing secret after a suspected leak (the old one stops working)
  runbooks.incident.secret_rotate:
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    key: auth_jwt_secret
    change_id: INC-2026-0042

- name: A new database password, the old one kept until ALTER ROLE and a restart are verified
  runbooks.incident.secret_rotate:
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    key: db_password
    change_id: INC-2026-0042
    keep_previous: true
"""

RETURN = r"""
msg:
  description: What was done, with fingerprints only.
  returned: always
  type: str
  sample: auth_jwt_secret 5c1d0e7a9b3f2e41 replaces 0a1b2c3d4e5f6a7b, which no longer works
fingerprint:
  description: First 16 hex digits of the sha256 of the current value.
  returned: success
  type: str
previous_fingerprint:
  description: The same for C(<key>.previous); null when none is kept.
  returned: success
  type: str
replaced_fingerprint:
  description: The value this run replaced (only when it rotated).
  returned: when rotated by this run
  type: str
change_id:
  description: The change id of the last rotation.
  returned: success
  type: str
rotated_at:
  description: When the last rotation happened (ISO 8601, UTC).
  returned: success
  type: str
sops_keys_changed:
  description: Keys of the sops file changed (or that would be, in check mode).
  returned: success
  type: list
  elements: str
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _run_lock, _secret, _sops

KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,100}$")


def main():
    argument_spec = dict(
        key=dict(type="str", required=True, no_log=False),
        state=dict(type="str", choices=["rotated", "retired"], default="rotated"),
        change_id=dict(type="str", required=True),
        length=dict(type="int", default=48),
        keep_previous=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
    )
    argument_spec.update(_params.sops_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    _params.refuse_nul(module)
    params = module.params
    if not params["sops_file"]:
        module.fail_json(msg="sops_file is required")
    if not KEY.match(params["key"]):
        module.fail_json(msg="key %r is not a plain top-level name (letters, digits and _-); nothing was changed" % params["key"])
    if not _run_lock.INCIDENT_ID.match(params["change_id"]):
        module.fail_json(msg="change_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed" % params["change_id"])
    if not _secret.MIN_LENGTH <= params["length"] <= _secret.MAX_LENGTH:
        module.fail_json(msg="length must be at least %d characters and at most %d, not %d; nothing was changed"
                         % (_secret.MIN_LENGTH, _secret.MAX_LENGTH, params["length"]))
    store = _sops.Sops(params["sops_file"], params["age_key_file"], params["sops_binary"])
    try:
        result = _secret.rotate(store, params["key"], params["change_id"], check_mode=module.check_mode, state=params["state"],
                                length=params["length"], keep_previous=params["keep_previous"], force=params["force"])
    except (_secret.SecretError, _sops.SopsError, OSError) as exc:
        module.fail_json(msg="%s not %s for change %s: %s; nothing was changed" % (params["key"], params["state"], params["change_id"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
