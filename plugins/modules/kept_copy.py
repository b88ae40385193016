#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kept_copy
short_description: Keep a file as it is until its change is verified, and put it back if the change fails
version_added: 0.1.0
description:
  - A change that can fail after it has written a file (a new secret in the sops file that the service then
    rejects) keeps the file as it was first (I(state=kept)), then either drops the copy once the change is verified
    (I(state=dropped)) or puts it back (I(state=restored), which also removes the copy).
  - The copy is made once. A re-run after a crash finds the copy of the first run, the state before any change, and
    keeps it instead of copying the half-changed file.
  - Neither I(path) nor I(copy) is followed when it is a symlink, and only regular files are read. The copy and the
    file put back are written atomically, with the owner and mode of what they copy.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    details: The files are usually encrypted secrets; only whether they change is reported.
options:
  path:
    description: The file a change is about to write.
    type: path
    required: true
  copy:
    description: Where its copy is kept (a name of the change's own, such as C(<path>.pre-<change id>)).
    type: path
    required: true
  state:
    description:
      - C(kept) copies I(path) to I(copy) unless a copy is there already; it fails when there is no I(path).
      - C(restored) writes the copy back over I(path) and removes it; it fails when no copy was kept.
      - C(dropped) removes the copy, if any.
    type: str
    choices: [kept, restored, dropped]
    default: kept
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Keep the encrypted secrets file as it is until the new token is verified
  runbooks.incident.kept_copy:
    path: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    copy: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml.pre-INC-42

- name: Put the previous secrets file back (in a rescue)
  runbooks.incident.kept_copy:
    path: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    copy: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml.pre-INC-42
    state: restored
"""

RETURN = r"""
path:
  description: The file.
  returned: always
  type: str
copy:
  description: Where its copy is (or was) kept.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _kept_copy, _params

ACTIONS = {"kept": _kept_copy.keep, "restored": _kept_copy.restore, "dropped": _kept_copy.drop}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            copy=dict(type="path", required=True),
            state=dict(type="str", choices=["kept", "restored", "dropped"], default="kept"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    try:
        changed = ACTIONS[params["state"]](params["path"], params["copy"], module.check_mode)
    except (_kept_copy.KeptCopyError, OSError) as exc:
        module.fail_json(msg="%s: %s; nothing was changed" % (params["state"], exc), path=params["path"], copy=params["copy"])
    module.exit_json(changed=changed, path=params["path"], copy=params["copy"])


if __name__ == "__main__":
    main()
