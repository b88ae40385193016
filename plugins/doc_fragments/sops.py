# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # A sops-encrypted secrets file (age), read and changed on the managed host without a clear value in argv or on disk.
    DOCUMENTATION = r"""
options:
  sops_file:
    description:
      - The sops-encrypted secrets file (the service's C(ops/secrets/secrets.enc.yaml) in its project directory).
      - Changed with C(sops set --value-stdin) and C(sops unset) on an encrypted copy, which is decrypted and compared before it replaces the file.
        Every other key is kept.
      - The copy is made in a private work directory beside the file (C(.<name>.<8 hex>.sops-partial), 0700, the copy 0600); if a run is
        killed, the next change of the file removes it. A symlink or a non-regular file at I(sops_file) is refused.
    type: path
  age_key_file:
    description: The age identity sops decrypts with (passed as C(SOPS_AGE_KEY_FILE) in the environment).
    type: path
    default: /etc/whatsapp-mcp/age.key
  sops_binary:
    description: The sops program on the managed host.
    type: path
    default: sops
"""
