#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: rotated_logs_delete
short_description: Delete the rotated log files that storage_info counts as reclaimable
version_added: 0.1.0
description:
  - The reclaim of rotated logs of the storage full incident. Deletes exactly the files the C(rotated_logs) candidate
    of M(runbooks.incident.storage_info) counts under the same directories. A regular file whose name ends in a
    number (C(syslog.1), C(app.log.12)), C(.old), a date (C(-YYYYMMDD)) or C(.gz), C(.xz), C(.zst), C(.bz2)
    (C(syslog.2.gz)), in I(paths) or their subdirectories on the same filesystem. A current log (C(app.log),
    C(syslog)) is never deleted, nor a directory, a symlink, a socket or any other kind of file.
  - A directory of I(paths) may be a symlink (C(/var/log) moved to another disk). Below it nothing is followed. Each
    subdirectory is opened relative to its parent without following a symlink and checked to be the directory
    listed, and each file is deleted relative to its directory once checked again to be the very regular file listed.
    A directory or file swapped for a symlink meanwhile is neither followed nor deleted. Another filesystem mounted
    below is never entered.
  - A file that cannot be deleted is named in RV(not_deleted) and the others are still deleted; the task then fails.
  - A rotated log a process still holds open (a daemon not told to reopen its log after the rotation) frees its
    space only when the process closes it.
  - Idempotent; a second run finds nothing to delete and reports C(changed=false).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Lists in RV(files) what a real run would delete; deletes nothing.
  diff_mode:
    support: none
options:
  paths:
    description: The log directories, absolute (at most 32; C(/) is refused), as given to M(runbooks.incident.storage_info)'s C(candidates.rotated_logs).
    type: list
    elements: path
    required: true
  max_entries:
    description: The most entries the walk reads before it stops (what it found until then is deleted) and says RV(truncated) (1 to 1000000000).
    type: int
    default: 2000000
  timeout:
    description: Seconds the walk may take (1 to 86400); then it stops and says RV(truncated).
    type: int
    default: 300
seealso:
  - module: runbooks.incident.storage_info
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: What would go (nothing deleted)
  runbooks.incident.rotated_logs_delete:
    paths: [/var/log]
  check_mode: true
  register: rotated

- name: Delete the rotated logs of /var/log and of the service
  runbooks.incident.rotated_logs_delete:
    paths: [/var/log, /var/lib/whatsapp-mcp/logs]
"""

RETURN = r"""
msg:
  description: What was deleted, in one line.
  returned: always
  type: str
  sample: "deleted 42 rotated log files (1.2 GiB) in /var/log"
files:
  description: The files deleted (in check mode, that would be deleted), in the order of the walk.
  returned: success
  type: list
  elements: str
  sample: [/var/log/syslog.1, /var/log/syslog.2.gz]
count:
  description: How many files RV(files) names.
  returned: success
  type: int
  sample: 42
bytes:
  description: Their allocated bytes (a hard-linked file once), what storage_info counts as reclaimable.
  returned: success
  type: int
  sample: 1288490188
bytes_human:
  description: RV(bytes) in binary units.
  returned: success
  type: str
  sample: 1.2 GiB
not_deleted:
  description: The files that could not be deleted, each with C(path) and C(error) (the task fails then).
  returned: success
  type: list
  elements: dict
  sample: [{path: /var/log/app/app.log.1, error: Operation not permitted}]
missing:
  description: The paths of I(paths) that are not a directory (or cannot be opened).
  returned: success
  type: list
  elements: str
  sample: []
unreadable:
  description: Directories that could not be listed or opened and entries that vanished during the walk.
  returned: success
  type: int
  sample: 0
truncated:
  description: The walk stopped at I(max_entries) or I(timeout); there may be more rotated logs.
  returned: success
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _rotated_logs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="path", required=True),
            max_entries=dict(type="int", default=2000000),
            timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    try:
        _rotated_logs.check_params(module.params)
    except _rotated_logs.RotatedLogsError as exc:
        module.fail_json(msg="%s; nothing was deleted" % exc)
    result = _rotated_logs.run(module.params, check_mode=module.check_mode)
    if result["not_deleted"]:
        named = "; ".join("%s (%s)" % (item["path"], item["error"]) for item in result["not_deleted"][:10])
        module.fail_json(msg="%s: %s" % (result["msg"], named), **{key: value for key, value in result.items() if key != "msg"})
    module.exit_json(**result)


if __name__ == "__main__":
    main()
