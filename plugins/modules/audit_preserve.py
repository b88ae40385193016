#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: audit_preserve
short_description: Keep copies of audit archive files that differ between hosts, with their digests, as evidence
version_added: 0.1.0
description:
  - Copies each of I(files) (paths relative to I(path)) into I(dest), read-only (0400) in a tree only root can
    read (0700), and writes C(SHA256SUMS) next to them. Run it on each host with that host's version of the
    mismatching files. The originals are only read (C(O_NOFOLLOW), without updating access times where the
    kernel allows it).
  - A file missing on this host is skipped. Idempotent, because a copy with the same digest is left alone.
  - No symlink inside the archive is followed. A file reached through a symlinked directory, a symlink itself, or
    anything that is not a regular file (a directory, a device) is never copied and is listed in RV(skipped) with
    the reason. I(dest) is reached without following a symlink that anyone but root could have planted, and a
    symlink where a copy goes is replaced, never written through.
  - C(SHA256SUMS) is in the format of C(sha256sum), and a name holding a backslash or a line break is escaped as
    C(sha256sum) does, so a file name cannot forge a line. C(sha256sum -c SHA256SUMS) checks the copies.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.incident
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  path:
    description: Root of the audit archive.
    type: path
    default: /var/lib/whatsapp-mcp/audit-archive
  files:
    description: Relative paths of the files to keep (the C(path) of each M(runbooks.incident.audit_diff) mismatch).
    type: list
    elements: str
    required: true
  dest:
    description:
      - Evidence directory. Default C(/var/lib/runbooks-incident/evidence/<incident_id>/audit).
      - It must be missing, empty or an earlier evidence directory (holding C(SHA256SUMS)); any other directory is refused.
    type: path
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Keep this host's version of every mismatching file
  runbooks.incident.audit_preserve:
    incident_id: INC-2026-0042
    path: /var/lib/whatsapp-mcp/audit-archive
    files: "{{ archive_diff.mismatches | map(attribute='path') }}"
"""

RETURN = r"""
dest:
  description: Where the copies are.
  returned: success
  type: str
  sample: /var/lib/runbooks-incident/evidence/INC-2026-0042/audit
preserved:
  description: Each file kept (or that would be kept in check mode), with its C(sha256) and C(size) on this host.
  returned: success
  type: list
  elements: dict
  sample: [{path: 2026/03/14/09.jsonl, sha256: 3b1f7c3a0e2d4c5b6a79881726354433221100ffeeddccbbaa99887766554433, size: 40960}]
skipped:
  description: Each of I(files) that was not copied because it is not a regular file of the archive, with the C(reason).
  returned: success
  type: list
  elements: dict
  sample: [{path: 2026/03/14/10.jsonl, reason: "2026/03/14 is a symlink inside the archive: not followed"}]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest, _params, _run_lock


def main():
    module = AnsibleModule(
        argument_spec=dict(
            incident_id=dict(type="str", required=True),
            path=dict(type="path", default="/var/lib/whatsapp-mcp/audit-archive"),
            files=dict(type="list", elements="str", required=True),
            dest=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["incident_id"]):
        module.fail_json(msg="incident_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed"
                         % params["incident_id"])
    dest = params["dest"] or os.path.join("/var/lib/runbooks-incident/evidence", params["incident_id"], "audit")
    try:
        preserved, changed, skipped = _audit_manifest.preserve(params["path"], params["files"], dest, check_mode=module.check_mode)
    except (_audit_manifest.ManifestError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot preserve the evidence in %s: %s" % (dest, exc))
    for item in skipped:
        module.warn("not preserved: %s (%s)" % (item["path"], item["reason"]))
    module.exit_json(changed=changed, dest=dest, preserved=preserved, skipped=skipped)


if __name__ == "__main__":
    main()
