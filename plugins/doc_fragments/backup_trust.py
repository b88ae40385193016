# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Which backups a restore believes: signed by a trusted backup key (pg_backup signing_key), or explicitly accepted.
    DOCUMENTATION = r"""
options:
  trusted_keys:
    description:
      - Public keys (OpenSSH lines, C(ssh-ed25519 AAAA... comment)) of the backup signing keys whose backups are restored.
      - A backup's manifest (with the dump's SHA-256) is signed by M(runbooks.incident.pg_backup) into C(<manifest>.sig) with
        C(ssh-keygen -Y sign). It is checked over the very bytes that are then read, before anything is created. A backup
        signed by another key, or whose manifest changed after signing, is always refused.
      - age encrypts to a public recipient, so whoever can write to the bucket or the backup directory could otherwise plant
        a well-formed backup.
    type: list
    elements: str
    default: []
  accept_unsigned:
    description:
      - Restore a backup without a signature (or without a manifest, a seeds-style C(pg_dump | gzip) file), or one whose
        signature cannot be checked because no I(trusted_keys) are given. Its origin is then not proven; the result's
        C(signature.warning) and a warning say so.
      - The dump is still checked as any other (no psql meta-command, complete, its manifest's digest when there is one).
    type: bool
    default: false
"""
