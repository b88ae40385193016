#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: shamir_combine
short_description: Reopen a secret (the age private key) from its Shamir paper shares
version_added: 0.1.0
description:
  - Reads share lines made by M(runbooks.incident.shamir_split) (its documentation describes the format), checks
    each one's checksum, and reopens the secret from as many shares as the set's threshold, which it reads from the
    shares themselves. More shares than needed are accepted.
  - Reading is forgiving of copying from paper - whitespace and line breaks inside a share are ignored, lines
    starting with C(#) are comments (a whole share file can be given), base32 is read in any case, and C(0),
    C(1), C(8) are read as C(O), C(I), C(B). A share with a typo, shares of different splits, or too few shares
    are refused with a message naming the share (its position or file and its index), never showing its content.
  - The reopened secret is authenticated (AES-GCM) before anything is written, then written to I(dest)
    atomically with I(mode), I(owner) and I(group) set before the rename.
  - Idempotent. When I(dest) already holds exactly the secret (same SHA-256), the content is not rewritten; only
    a differing mode or owner is corrected.
requirements:
  - pycryptodome (PyPI, imported as C(Crypto)) or Debian's C(python3-pycryptodome) (imported as C(Cryptodome))
    on the managed host.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reopens the secret in memory (so the shares are proven to combine) and predicts whether I(dest) would change.
  diff_mode:
    support: none
options:
  shares:
    description: Share lines (or whole share files' text). Mutually exclusive with I(share_files); one of them is required.
    type: list
    elements: str
  share_files:
    description:
      - Files on the managed host holding one share each, as written by M(runbooks.incident.shamir_split).
      - Each must be a regular file (not read through a symlink at its name; a FIFO or device is refused).
    type: list
    elements: path
  dest:
    description: Where to write the secret. A symlink or other file at that name is replaced, never written through.
    type: path
    required: true
  mode:
    description: Mode of I(dest), octal (C(0000) to C(7777)).
    type: raw
    default: "0400"
  owner:
    description: Owner of I(dest) (default the user running the module).
    type: str
  group:
    description: Group of I(dest).
    type: str
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Reopen the age key from two holders' shares, typed in at the prompt of an AWX survey
  runbooks.incident.shamir_combine:
    shares:
      - "{{ share_holder_a }}"
      - "{{ share_holder_b }}"
    dest: /etc/whatsapp-mcp/age/keys.txt
    owner: root
    group: root
    mode: "0400"
  no_log: true

- name: Reopen it from scanned share files copied to the host
  runbooks.incident.shamir_combine:
    share_files:
      - /run/age-shares/share-1-of-3.txt
      - /run/age-shares/share-3-of-3.txt
    dest: /etc/whatsapp-mcp/age/keys.txt
"""

RETURN = r"""
fingerprint:
  description: First 16 hex characters of the SHA-256 of the reopened secret (compare with the one on the shares).
  returned: always
  type: str
  sample: 3b0c9d6e1f2a4b58
threshold:
  description: Number of shares the set needs, as read from the shares.
  returned: always
  type: int
  sample: 2
indices:
  description: The indices of the shares the secret was reopened with.
  returned: always
  type: list
  elements: int
  sample: [1, 3]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _shamir


def main():
    module = AnsibleModule(
        argument_spec=dict(
            shares=dict(type="list", elements="str", no_log=True),
            share_files=dict(type="list", elements="path"),
            dest=dict(type="path", required=True),
            mode=dict(type="raw", default="0400"),
            owner=dict(type="str"),
            group=dict(type="str"),
        ),
        mutually_exclusive=[("shares", "share_files")],
        required_one_of=[("shares", "share_files")],
        supports_check_mode=True,
    )
    if _shamir.CRYPTO_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("pycryptodome"), exception=_shamir.CRYPTO_IMPORT_ERROR)
    _params.refuse_nul(module)
    params = module.params
    try:
        # An unquoted YAML 0400 arrives as the integer 256: already the mode.
        mode = _shamir.check_mode_bits(params["mode"] if isinstance(params["mode"], int) else int(str(params["mode"]), 8))
    except (ValueError, _shamir.ShareError):
        module.fail_json(msg="mode %r is not an octal file mode (0000 to 7777); nothing was written" % (params["mode"],))
    try:
        if params["shares"] is not None:
            texts = [("share #%d given" % position, text) for position, text in enumerate(params["shares"], 1)]
        else:
            texts = _shamir.read_share_files(params["share_files"])
    except (_shamir.ShareError, ValueError) as exc:
        module.fail_json(msg="%s; nothing was written" % exc)
    try:
        shares = _shamir.one_set(_shamir.parse_all(texts))
        secret = _shamir.reopen(shares)
        changed = _shamir.write_secret(secret, params["dest"], mode, params["owner"], params["group"], module.check_mode)
    except _shamir.ShareError as exc:
        module.fail_json(msg="could not reopen the secret: %s; nothing was written" % exc)
    except KeyError as exc:
        module.fail_json(msg="unknown owner or group (%s); nothing was written" % exc)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="could not write %s (%s); it was left as it was" % (params["dest"], exc))
    module.exit_json(changed=changed, fingerprint=_shamir.fingerprint(secret), threshold=shares[0].threshold,
                     indices=[share.index for share in shares[:shares[0].threshold]])


if __name__ == "__main__":
    main()
