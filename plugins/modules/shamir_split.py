#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: shamir_split
short_description: Split a secret (the age private key) into Shamir shares to keep on paper
version_added: 0.1.0
description:
  - Splits I(secret) or the content of I(secret_file) into I(shares) shares, any I(threshold) of which reopen it
    with M(runbooks.incident.shamir_combine) (the seeds' "split with Shamir secret sharing across two trusted
    parties" for the age private key). Fewer than I(threshold) shares tell nothing about the secret.
  - The secret is encrypted with a random AES-128-GCM key and that key is shared with Shamir's scheme over
    GF(2^128) (pycryptodome); every share carries the same ciphertext, so a share line grows with the secret
    (about 400 characters for an C(age-keygen) key file with its comments).
  - Each share is one printable line,
    C(rbi-shamir-v1:<k>of<n>:<index>:<share>:<sealed>:<checksum>) where C(<k>of<n>) is the threshold and count,
    C(<index>) the share's number (1..n), C(<share>) the 16-byte Shamir share of the key in base32 (RFC 4648, no
    padding), C(<sealed>) the 12-byte GCM nonce, 16-byte tag and ciphertext in base32 (the same on every share of
    a set; C(rbi-shamir-v1:<k>of<n>) is authenticated with it), and C(<checksum>) the first 8 hex characters of
    the SHA-256 of everything before the last colon, so a mistyped share is caught and named.
  - Writes share I(i) to C(<dest_dir>/share-<i>-of-<n>.txt), mode C(0600), atomically; it holds a comment line telling the
    holder what it is (share number, set id, secret fingerprint, threshold), then the share line. I(dest_dir) is
    created with mode C(0700) when missing. Print each file for one holder, then remove the files.
  - Not idempotent by nature (every split makes new random shares), so when all I(shares) files already exist and
    reopen this very secret with this I(threshold), nothing is rewritten (C(changed=false)). Any other existing
    share file of that name (an incomplete set, another secret, another threshold) is refused unless I(force=true),
    which always writes a new set. Shares of an earlier set keep opening the secret until the secret is rotated.
  - Returns the secret's fingerprint and the file names only, never a share or the secret.
requirements:
  - pycryptodome (PyPI, imported as C(Crypto)) or Debian's C(python3-pycryptodome) (imported as C(Cryptodome))
    on the managed host.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reads the secret and any existing share files and predicts the result; writes nothing.
  diff_mode:
    support: none
options:
  secret:
    description:
      - The secret text, encoded as UTF-8. Mutually exclusive with I(secret_file); one of them is required.
      - Templating may drop a trailing newline (C(lookup('file')) does); use I(secret_file) to share a file's exact bytes.
    type: str
  secret_file:
    description:
      - File on the managed host whose exact bytes are the secret (for example the age key file).
      - It must be a regular file of at most 1 MiB, and it is not read through a symlink at its name.
    type: path
  threshold:
    description: Number of shares needed to reopen the secret (at least 2).
    type: int
    required: true
  shares:
    description: Number of shares to make (from I(threshold) to 255).
    type: int
    required: true
  dest_dir:
    description: Directory for the share files (created with mode C(0700) when missing). A tmpfs such as C(/run) is best.
    type: path
    required: true
  force:
    description: Replace existing share files of the same names with a new set, whatever they hold.
    type: bool
    default: false
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Split the age key into 3 paper shares, any 2 of which reopen it
  runbooks.incident.shamir_split:
    secret_file: /etc/whatsapp-mcp/age/keys.txt
    threshold: 2
    shares: 3
    dest_dir: /run/age-shares
  register: split

- name: Show which key was split (its fingerprint), never the shares
  ansible.builtin.debug:
    msg: "Print {{ split.files | join(', ') }} (key {{ split.fingerprint }}), one per holder, then remove them"
"""

RETURN = r"""
fingerprint:
  description: First 16 hex characters of the SHA-256 of the secret.
  returned: always
  type: str
  sample: 3b0c9d6e1f2a4b58
files:
  description: The share files, share 1 first.
  returned: always
  type: list
  elements: str
  sample: [/run/age-shares/share-1-of-3.txt, /run/age-shares/share-2-of-3.txt, /run/age-shares/share-3-of-3.txt]
threshold:
  description: Number of shares needed to reopen the secret.
  returned: always
  type: int
  sample: 2
shares:
  description: Number of shares.
  returned: always
  type: int
  sample: 3
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _shamir


def main():
    module = AnsibleModule(
        argument_spec=dict(
            secret=dict(type="str", no_log=True),
            secret_file=dict(type="path", no_log=False),
            threshold=dict(type="int", required=True),
            shares=dict(type="int", required=True),
            dest_dir=dict(type="path", required=True),
            force=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("secret", "secret_file")],
        required_one_of=[("secret", "secret_file")],
        supports_check_mode=True,
    )
    if _shamir.CRYPTO_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("pycryptodome"), exception=_shamir.CRYPTO_IMPORT_ERROR)
    _params.refuse_nul(module)
    params = module.params
    try:
        if params["secret_file"] is None:
            secret = params["secret"].encode("utf-8")
        else:
            secret = _shamir.read_file(params["secret_file"], "secret_file")
    except UnicodeEncodeError:
        module.fail_json(msg="the secret is not valid Unicode text; no share file was written")
    except (_shamir.ShareError, ValueError) as exc:
        module.fail_json(msg="%s; no share file was written" % exc)
    try:
        result = _shamir.split_to_dir(secret, params["threshold"], params["shares"], params["dest_dir"],
                                      force=params["force"], check_mode=module.check_mode)
    except (_shamir.ShareError, OSError, ValueError) as exc:
        module.fail_json(msg="could not split the secret: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
