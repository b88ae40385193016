#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_rekey
short_description: Encrypt a sops file to exactly the given age recipients, with a new data key
version_added: 0.1.0
description:
  - For when an age private key of the secrets leaked - every copy of the file encrypted to its public key (the
    repository, its history, a laptop) is readable by whoever holds it. The file is encrypted to exactly
    I(recipients) (age public keys) with a new data key (C(sops rotate --add-age ... --rm-age ...)); keys of other
    kinds (PGP, KMS) are kept.
  - The age recipients are read from the file's sops metadata (nothing is decrypted) and compared; when they are
    already I(recipients) nothing is done. Otherwise C(sops rotate) runs on an encrypted copy in a private work
    directory next to the file (C(.<name>.<8 hex>.sops-partial), mode 0700, the copy 0600), decrypting with
    I(age_key_file). The copy must then name exactly I(recipients) and decrypt to the same document; only then does it
    get the file's owner and mode and replace the file. A run killed midway leaves the file as it was and the work
    directory, which the next change of the file removes. A symlink at I(sops_file) is refused, never followed.
  - I(age_key_file) must open the file as it is now. Give it the old and the new identity (an age identity file may
    hold several), so that the service can decrypt the secrets whichever the file is encrypted to while the key
    changes - see M(runbooks.incident.age_key_rotate).
  - The values of the secrets do not change. Whoever holds the leaked key still reads the copies encrypted before
    (git history, backups); replace the secrets themselves too.
  - Requires sops on the managed host.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.sops
attributes:
  check_mode:
    support: full
    details: Reads the recipients from the file's metadata and says which would be added and removed.
  diff_mode:
    support: none
    details: The file is encrypted; its recipients are in the result.
options:
  recipients:
    description: The age public keys (C(age1...)) the file must be encrypted to, and no other age key.
    type: list
    elements: str
    required: true
notes:
  - I(sops_file) is required.
seealso:
  - module: runbooks.incident.age_key_rotate
  - module: runbooks.incident.offsite_rekey
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Encrypt the secrets to the new age key only (the key file holds the old and the new identity)
  runbooks.incident.sops_rekey:
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    age_key_file: /etc/whatsapp-mcp/age.key
    recipients: [age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg]
"""

RETURN = r"""
recipients:
  description: The age recipients the file is encrypted to now (in check mode, would be).
  returned: success
  type: list
  elements: str
added:
  description: The age recipients added.
  returned: success
  type: list
  elements: str
removed:
  description: The age recipients removed.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _age, _params, _sops


def main():
    argument_spec = dict(recipients=dict(type="list", elements="str", required=True, no_log=False))
    argument_spec.update(_params.sops_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    _params.refuse_nul(module)
    params = module.params
    if not params["sops_file"]:
        module.fail_json(msg="sops_file is required")
    wanted = sorted(set(key.strip() for key in params["recipients"]))
    if not wanted:
        module.fail_json(msg="recipients is empty: nobody could decrypt the file; nothing was changed")
    for key in wanted:
        if not _age.AGE1_RE.match(key):
            module.no_log_values.add(key)  # masked in the invocation too: a private key passed by mistake stays out of the logs
            module.fail_json(msg="a recipient is not an age public key (age1...); nothing was changed")
    store = _sops.Sops(params["sops_file"], params["age_key_file"], params["sops_binary"])
    try:
        added, removed = store.rekey(wanted, check_mode=module.check_mode)
    except (_sops.SopsError, OSError) as exc:
        module.fail_json(msg="cannot re-encrypt %s: %s; nothing was changed" % (params["sops_file"], getattr(exc, "strerror", None) or exc))
    module.exit_json(changed=bool(added or removed), recipients=wanted, added=added, removed=removed,
                     msg="%s: %s" % (params["sops_file"], "encrypted to %d age recipient(s), %d added, %d removed" % (len(wanted), len(added), len(removed))
                                     if added or removed else "already encrypted to exactly these age recipients"))


if __name__ == "__main__":
    main()
