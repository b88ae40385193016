#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: age_key_rotate
short_description: Replace a host's age private key by a new one, in two crash-safe steps
version_added: 0.1.0
description:
  - For when the age private key of the secrets and backups leaked. The host's identity file I(path) moves from the
    leaked key to I(new_key) in two steps, so that everything encrypted to either key stays readable in between.
  - I(state=staged) copies the identities I(path) holds (the leaked key) to I(leaked_copy) (root, 0400), the identity
    M(runbooks.incident.offsite_rekey) decrypts the old backups with,, then writes I(path) with them and the new key.
    The secrets file can then be re-encrypted (M(runbooks.incident.sops_rekey)) while the service still starts.
  - I(state=finished) writes I(path) with the new key alone and removes I(leaked_copy). It refuses, changing nothing,
    while a file under I(search) still holds an old identity (an operator's copy in C(/root), a forgotten backup of the
    key file), naming each file.
  - Each write is atomic (a temporary file renamed over the old one; a symlink at the path is replaced, never
    followed); I(path) keeps its owner, group and mode. A run killed at any point leaves a state that the next run
    of either step completes. The keys are read from files and given to C(age-keygen -y) on stdin, never in argv or
    in the result. Unlinking cannot wipe a key from a journaling file system or an SSD; encrypted disks are the
    remedy for that.
  - Requires age-keygen on the managed host.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reads the key files (and the files under I(search)) and says what would change.
  diff_mode:
    support: none
    details: Private keys are never diffed.
options:
  path:
    description: The host's age identity file (the service layout's C(age_key_file)).
    type: path
    default: /etc/whatsapp-mcp/age.key
  new_key:
    description:
      - The content of the new key's identity file (as C(age-keygen) writes it), with exactly one age identity.
      - A secret. Mark the task C(no_log) as well.
    type: str
    required: true
  leaked_copy:
    description: Where the old identities are kept, alone, between the two steps. Default I(path) with C(.leaked) appended.
    type: path
  state:
    description: C(staged) adds the new key beside the old ones; C(finished) leaves the new key alone.
    type: str
    choices: [staged, finished]
    default: staged
  search:
    description: With I(state=finished), directories searched (not through symlinks) for other files that still hold an old identity.
    type: list
    elements: path
    default: []
seealso:
  - module: runbooks.incident.sops_rekey
  - module: runbooks.incident.offsite_rekey
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Add the new key beside the leaked one
  runbooks.incident.age_key_rotate:
    path: /etc/whatsapp-mcp/age.key
    new_key: "{{ lookup('ansible.builtin.file', '/secure/new-age.key') }}"
  no_log: true

- name: Leave the new key alone, once the secrets and the backups are re-encrypted
  runbooks.incident.age_key_rotate:
    path: /etc/whatsapp-mcp/age.key
    new_key: "{{ lookup('ansible.builtin.file', '/secure/new-age.key') }}"
    state: finished
    search: [/etc, /root, /opt/whatsapp-mcp]
  no_log: true
"""

RETURN = r"""
recipient:
  description: The public key of the new key.
  returned: success
  type: str
  sample: age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg
old_recipients:
  description: The public keys of the old identities (those of the leaked key), before this run.
  returned: success
  type: list
  elements: str
leaked_copy:
  description: The file holding the old identities alone (removed by I(state=finished)).
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _age, _age_keyfile, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/whatsapp-mcp/age.key"),
            new_key=dict(type="str", required=True, no_log=True),
            leaked_copy=dict(type="path"),
            state=dict(type="str", choices=["staged", "finished"], default="staged"),
            search=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    leaked_copy = params["leaked_copy"] or params["path"] + ".leaked"
    try:
        keys = _age_keyfile.KeyFile(params["path"], leaked_copy, params["new_key"].encode())
        old_recipients = keys.old_recipients()
        if params["state"] == "staged":
            changed = keys.stage(check_mode=module.check_mode)
        else:
            changed = keys.finish(params["search"], check_mode=module.check_mode)
    except (_age_keyfile.KeyFileError, _age.AgeError, OSError) as exc:
        module.fail_json(msg="cannot change the age key %s: %s; nothing more was changed" % (params["path"], getattr(exc, "strerror", None) or exc))
    if params["state"] == "staged":
        what = "holds the new key %s beside the old one(s), kept alone in %s" % (keys.recipient, leaked_copy)
    else:
        what = "holds the new key %s alone; %s is gone" % (keys.recipient, leaked_copy)
    module.exit_json(changed=changed, recipient=keys.recipient, old_recipients=old_recipients, leaked_copy=leaked_copy,
                     msg="%s %s%s" % (params["path"], "would be changed: it then " if changed and module.check_mode else "", what))


if __name__ == "__main__":
    main()
