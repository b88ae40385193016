#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: audit_diff
short_description: Compare two copies of an audit archive by content digests and report every difference
version_added: 0.1.0
description:
  - Compares the local copy of an audit archive with the remote one (the off-host log server's). Each side is a
    directory on the managed host (hashed now, in full), a manifest made by M(runbooks.incident.audit_manifest)
    on another host, or a JSON file holding such a manifest. A manifest whose root is not the root of its files
    is refused (it was altered on the way).
  - Sizes alone miss an edit that keeps the size (the seeds' hourly check compares sizes). Here every file's
    sha256 is compared. Equal Merkle roots end the comparison at once.
  - A difference in a file whose local copy was modified less than I(grace_recent_minutes) before the local
    manifest was made is returned in RV(pending), not in RV(mismatches). It is the file still being written or
    shipped this hour. Only the local side counts, because the log server stores each file with the sender's mtime.
  - A differing file whose local copy is dated after the local manifest was made is a mismatch of kind
    C(future_mtime), never pending, because a file in progress cannot be dated in the future, and a forged date
    would otherwise keep an edit pending forever.
  - Entries with a hidden name (a leading dot) in either archive are reported, not skipped. A hidden regular file
    modified within the grace window before its side's manifest is a partial write in progress (the log server's
    receiver writes C(.incoming.*), atomic writers C(.<name>.<random>.partial)) and is pending. Any other hidden
    entry (an older hidden file, a hidden directory or symlink) is a mismatch of kind C(hidden). Symlinks and
    devices in either archive are mismatches of kind C(irregular).
  - A manifest whose cache was found edited (RV(runbooks.incident.audit_manifest#module:cache.mismatches)) also
    makes the result not C(ok).
  - Read-only. Nothing is written anywhere.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  local:
    description: The local copy. A directory, a manifest (dict) or a JSON manifest file.
    type: raw
    required: true
  remote:
    description: The remote copy, in the same forms as I(local).
    type: raw
    required: true
  local_prefix:
    description: Compare only this subdirectory of I(local), for example one host's directory in a log server's archive.
    type: str
    default: ""
  remote_prefix:
    description: Compare only this subdirectory of I(remote). The log server keeps each app host's archive in C(<root>/<inventory_hostname>).
    type: str
    default: ""
  grace_recent_minutes:
    description: Differences in files whose local copy was modified less than this many minutes before the local manifest was made are pending, not mismatches.
    type: int
    default: 90
  fail_on_mismatch:
    description: Fail when the copies differ. With C(false) the differences are only returned.
    type: bool
    default: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Compare the app host's archive with its copy on the log server (on the controller)
  runbooks.incident.audit_diff:
    local: "{{ hostvars['app'].audit_manifest_local }}"
    remote: "{{ hostvars['offhost'].audit_manifest_remote }}"
    remote_prefix: app
  delegate_to: localhost

- name: Compare two directories on one host, reporting only
  runbooks.incident.audit_diff:
    local: /var/lib/whatsapp-mcp/audit-archive
    remote: /mnt/restore/audit-archive
    grace_recent_minutes: 0
    fail_on_mismatch: false
  register: archive_diff
"""

RETURN = r"""
ok:
  description: The copies agree (pending files aside) and neither manifest cache was edited.
  returned: always
  type: bool
mismatches:
  description:
    - Every difference, by path. C(kind) is one of C(missing_remote) (only the local copy has it),
      C(missing_local) (only the remote copy has it), C(size) or C(content) (same size, different sha256).
    - C(future_mtime) is a difference (C(difference) says which of the above) in a file whose local copy is dated
      after the local manifest was made.
    - C(hidden) and C(irregular) are entries with a hidden name, and symlinks or devices, in the archive of C(side)
      (C(local) or C(remote)). A hidden or irregular directory is listed once, by its own path.
    - A renamed file shows as one C(missing_remote) and one C(missing_local).
  returned: always
  type: list
  elements: dict
  sample: [{path: 2026/03/14/09.jsonl, kind: content}]
pending:
  description: Differences in files whose local copy was modified within the grace window, in the same form as RV(mismatches).
  returned: always
  type: list
  elements: dict
  sample: []
local_root:
  description: Merkle root of the compared local files.
  returned: always
  type: str
  sample: 9f2c4e0b8a7d6c5b4a3928171605f4e3d2c1b0a99887766554433221100ffeed
remote_root:
  description: Merkle root of the compared remote files.
  returned: always
  type: str
  sample: 9f2c4e0b8a7d6c5b4a3928171605f4e3d2c1b0a99887766554433221100ffeed
local_count:
  description: Files compared on the local side.
  returned: always
  type: int
  sample: 8760
remote_count:
  description: Files compared on the remote side.
  returned: always
  type: int
  sample: 8760
cache_mismatches:
  description: Per side (C(local), C(remote)), files whose manifest cache was found edited by a full pass.
  returned: always
  type: dict
  sample: {local: [], remote: []}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            local=dict(type="raw", required=True),
            remote=dict(type="raw", required=True),
            local_prefix=dict(type="str", default=""),
            remote_prefix=dict(type="str", default=""),
            grace_recent_minutes=dict(type="int", default=90),
            fail_on_mismatch=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if params["grace_recent_minutes"] < 0:
        module.fail_json(msg="grace_recent_minutes cannot be negative")
    try:
        local = _audit_manifest.load(params["local"], "local")
        remote = _audit_manifest.load(params["remote"], "remote")
        result = _audit_manifest.diff(local, remote, params["grace_recent_minutes"] * 60,
                                      params["local_prefix"], params["remote_prefix"])
    except (_audit_manifest.ManifestError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot compare the audit archives: %s" % exc)
    if not result["ok"] and params["fail_on_mismatch"]:
        module.fail_json(msg="the audit archive copies differ (%d mismatches): %s" % (
            len(result["mismatches"]), _audit_manifest.summary_line(result)), changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
