#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: age_key_check
short_description: Tell whether an age private key is the service's, before anything changes
version_added: 0.1.0
description:
  - Computes the public key (age recipient, C(age1...)) of the age private key given, in memory, and compares it with
    I(recipients), the public keys the service's secrets and backups are encrypted to. Fails, naming both public keys,
    when no identity of the key is one of them, so a wrong key (another service's, a key replaced since, shares of
    another split) stops a run before anything is changed on a host.
  - The key is given as the key file's content (I(key)) or as its paper shares (I(shares), I(share_files)), which are
    combined in memory as M(runbooks.incident.shamir_combine) combines them (a share with a typo is named by its
    position or file and index, never shown). Nothing is written anywhere.
  - The key file may hold several identities (C(AGE-SECRET-KEY-1...) lines), blank lines and C(#) comments, as
    C(age-keygen) writes it; it matches when any of its identities is one of I(recipients). An identity must be as age
    reads it (upper case, valid checksum, 32 bytes); a malformed one is refused naming its line number only.
  - Meant to run on the controller (C(delegate_to=localhost), C(run_once=true)). Neither the key, a share nor any part
    of them is ever returned or put in a message; the public keys are.
requirements:
  - The Python package C(cryptography) where it runs (ansible-core requires it on the controller).
  - With I(shares) or I(share_files), pycryptodome (PyPI, imported as C(Crypto)) or Debian's C(python3-pycryptodome)
    (imported as C(Cryptodome)) where it runs.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: It only reads, so it does the same in check mode.
  diff_mode:
    support: none
options:
  key:
    description:
      - The content of the age key file (one or more C(AGE-SECRET-KEY-1...) lines; blank lines and C(#) comments
        allowed). Not with I(shares) or I(share_files); one of them is required.
    type: str
  shares:
    description:
      - Paper shares of the key file (share lines or whole share files' text), as written by
        M(runbooks.incident.shamir_split); at least the split's threshold of them, with I(share_files). Not with I(key).
    type: list
    elements: str
  share_files:
    description:
      - Files holding one share each, read where the module runs (the controller), in addition to I(shares).
      - Each must be a regular file (not read through a symlink at its name; a FIFO or device is refused).
    type: list
    elements: path
  recipients:
    description:
      - The age public keys (C(age1...)) the service's secrets and backups are encrypted to, for example from the
        inventory. An element may also be a comma-separated list, as in the C(age) field of C(.sops.yaml).
      - Each must be a valid age X25519 public key (checksum, 32 bytes, lower case); anything else is refused.
    type: list
    elements: str
    required: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Check the age key given for the new host is the service's, before anything changes on it
  runbooks.incident.age_key_check:
    key: "{{ age_key_content }}"
    recipients: "{{ whatsapp_mcp_age_recipients }}"
  delegate_to: localhost
  run_once: true

- name: The same check of the key's paper shares (typed in an AWX survey, or scanned into files on the controller)
  runbooks.incident.age_key_check:
    shares: "{{ age_key_shares }}"
    share_files: "{{ age_key_share_files }}"
    recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
recipient:
  description:
    - The public key (age recipient) of the key given - of its identity that matches, or of its first identity when none
      does. Public, safe to log.
  returned: success and when the key is not the service's
  type: str
  sample: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
key_recipients:
  description: The public keys of every identity of the key given, in the order of the key file.
  returned: success and when the key is not the service's
  type: list
  elements: str
  sample: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
matches:
  description: Whether an identity of the key is one of I(recipients) (always true on success; false when it failed for that).
  returned: success and when the key is not the service's
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _age_identity, _params, _shamir

ADVICE = {
    "key": "Was it another service's key, or a key replaced since (key_compromise)? Give the key whose public key is "
           "one of those (age-keygen -y KEYFILE prints it), or its paper shares.",
    "shares": "Were they shares of another split (another service's key, or a key replaced since)? The set id on each "
              "share tells which shares belong together: give shares of the split of the service's key.",
}


def _listed(keys):
    return ", ".join(keys)


def _and(words):
    return " and ".join(words) if len(words) < 3 else "%s and %s" % (", ".join(words[:-1]), words[-1])


def _recipients(module):
    """The recipients option as one list of age public keys (split on commas, duplicates left out, order kept)."""
    found = []
    for position, item in enumerate(module.params["recipients"], 1):
        for part in item.replace(",", " ").split():
            if part.upper().startswith(_age_identity.IDENTITY_HRP.upper()):
                # A private key given as a recipient by mistake: masked like a no_log value wherever Ansible would
                # show it (the invocation's arguments too).
                module.no_log_values.add(part)
            try:
                found.append(_age_identity.check_recipient(part))
            except _age_identity.IdentityError as exc:
                module.fail_json(changed=False, msg="recipients (element %d): %s; nothing was changed" % (position, exc))
    if not found:
        module.fail_json(changed=False, msg="recipients is empty: give the age public keys (age1...) the service's "
                                            "secrets and backups are encrypted to; nothing was changed")
    return list(dict.fromkeys(found))


def _key_text(module, source):
    """The age key file's content, given or reopened from the shares."""
    params = module.params
    if source == "key":
        return params["key"]
    if _shamir.CRYPTO_IMPORT_ERROR:
        module.fail_json(changed=False, msg=missing_required_lib("pycryptodome"), exception=_shamir.CRYPTO_IMPORT_ERROR)
    try:
        texts = [("share #%d given" % position, text) for position, text in enumerate(params["shares"] or [], 1)]
        texts += _shamir.read_share_files(params["share_files"] or [])
        secret = _shamir.reopen(_shamir.parse_all(texts))
    except _shamir.ShareError as exc:
        module.fail_json(changed=False, msg="could not reopen the age key from its shares: %s; nothing was changed" % exc)
    try:
        return secret.decode("utf-8")
    except UnicodeDecodeError:
        module.fail_json(changed=False, msg="the shares reopen a secret that is not an age key file (not text): shares "
                                            "of another secret? Nothing was changed")
    return None  # not reached: fail_json exits


def main():
    module = AnsibleModule(
        argument_spec=dict(
            key=dict(type="str", no_log=True),
            shares=dict(type="list", elements="str", no_log=True),
            share_files=dict(type="list", elements="path"),
            recipients=dict(type="list", elements="str", required=True),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if _age_identity.CRYPTOGRAPHY_IMPORT_ERROR:
        module.fail_json(changed=False, msg=missing_required_lib("cryptography"),
                         exception=_age_identity.CRYPTOGRAPHY_IMPORT_ERROR)
    # An empty value is no source: a playbook passes the inventory's defaults ('' and []) for the ones not used.
    given = [name for name in ("key", "shares", "share_files") if params[name]]
    if not given or ("key" in given and len(given) > 1):
        module.fail_json(changed=False, msg="give the age key one way: key (the key file's content), or its paper shares "
                                            "in shares and/or share_files (%s); nothing was changed"
                                            % ("%s given" % _and(given) if given else "none of them is given"))
    source = "key" if given == ["key"] else "shares"
    recipients = _recipients(module)
    text = _key_text(module, source)
    try:
        key_recipients = _age_identity.recipients_of_key(text)
    except _age_identity.IdentityError as exc:
        module.fail_json(changed=False, msg="%s is not an age private key: %s; nothing was changed"
                                            % ("the key given" if source == "key" else "the secret reopened from the shares", exc))
    matching = [recipient for recipient in key_recipients if recipient in recipients]
    if not matching:
        msg = ("The age key %s is not the service's: its public key%s %s, the service's secrets and backups are encrypted "
               "to %s. Nothing was changed. %s"
               % ("given" if source == "key" else "rebuilt from the shares", " is" if len(key_recipients) == 1 else "s are",
                  _listed(key_recipients), _listed(recipients), ADVICE[source]))
        module.fail_json(changed=False, msg=msg, recipient=key_recipients[0], key_recipients=key_recipients, matches=False)
    module.exit_json(changed=False, recipient=matching[0], key_recipients=key_recipients, matches=True)


if __name__ == "__main__":
    main()
