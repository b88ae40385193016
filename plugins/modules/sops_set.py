#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_set
short_description: Set or remove one key of a sops-encrypted file, keeping every other key, with no clear value in argv or on disk
version_added: 0.1.0
description:
  - Decrypts I(sops_file) on a pipe and compares. When the key already holds I(value), nothing is done. Otherwise
    the value goes to C(sops set --value-stdin) on stdin, on an encrypted copy in a private work directory next to
    the file (C(.<name>.<8 hex>.sops-partial), mode 0700, the copy 0600). The copy is decrypted and compared, gets
    the file's owner and mode, and only then is renamed over the file. The data key and the recipients stay as they
    were, so the file's other keys are untouched.
  - A run killed midway leaves the file whole and the private work directory; the next change of the file by any
    module of the collection removes it. A symlink at I(sops_file) is refused, never followed.
  - The value is a secret. Mark the task C(no_log) as well, because the module does, but the task's own arguments
    are printed by Ansible's callbacks. It is never in a diff, a result or a process argument.
  - Requires sops on the managed host and the age identity (I(age_key_file)).
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
    description: Top-level key (letters, digits and C(_.-)).
    type: str
    required: true
  value:
    description: The value (a string). Required with I(state=present).
    type: str
  state:
    description: C(present) sets the key, C(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
notes:
  - I(sops_file) is required.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Set the new Meta access token of phone 123456 (from an AWX credential)
  runbooks.incident.sops_set:
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    key: wa_access_token_123456
    value: "{{ new_access_token }}"
  no_log: true
"""

RETURN = r"""
key:
  description: The key.
  returned: success
  type: str
  sample: wa_access_token_123456
fingerprint:
  description: First 16 hex digits of the sha256 of the value now held (none when absent), to tell values apart without showing them.
  returned: success
  type: str
  sample: 1f2e3d4c5b6a7988
previous_fingerprint:
  description: The same for the value held before.
  returned: success
  type: str
  sample: 0a1b2c3d4e5f6a7b
"""

import hashlib
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _sops

KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def fingerprint(value):
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value is not None else None


def main():
    argument_spec = dict(
        key=dict(type="str", required=True, no_log=False),
        value=dict(type="str", no_log=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    argument_spec.update(_params.sops_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "present", ["value"])])
    _params.refuse_nul(module)
    params = module.params
    if not params["sops_file"]:
        module.fail_json(msg="sops_file is required")
    if not KEY.match(params["key"]):
        module.fail_json(msg="key %r is not a plain top-level name (letters, digits and _.-); nothing was changed" % params["key"])
    wanted = params["value"] if params["state"] == "present" else None
    store = _sops.Sops(params["sops_file"], params["age_key_file"], params["sops_binary"])
    try:
        document = store.decrypt()
        before = document.get(params["key"])
        before = None if before is None else str(before)
        changed = before != wanted
        if not module.check_mode:  # also with nothing to change: it removes what a killed earlier change left
            store.apply({params["key"]: wanted}, current=document)
    except (_sops.SopsError, OSError) as exc:
        module.fail_json(msg="cannot set %s in %s: %s; nothing was changed" % (params["key"], params["sops_file"], exc))
    module.exit_json(changed=changed, key=params["key"], fingerprint=fingerprint(wanted), previous_fingerprint=fingerprint(before))


if __name__ == "__main__":
    main()
