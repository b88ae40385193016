#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: media_snapshot
short_description: Snapshot the media directory with rsync, hard-linking files unchanged since the previous snapshot
version_added: 0.1.0
description:
  - The seeds' nightly C(rsync -aH --link-dest=<yesterday>), which copies I(src) to the directory
    C(<dest>/<prefix><stamp>). A file unchanged since the previous snapshot (same size, modification time, mode
    and owner) is a hard link to it and costs no space; new and changed files are copied; files deleted from
    I(src) are not in the new snapshot. Hard links inside I(src) stay hard links (C(-H)).
  - The previous snapshot is by default the newest C(<prefix><stamp>) directory older than I(stamp), so a day
    without a snapshot falls back to the latest one there is.
  - rsync writes into the hidden directory C(.<prefix><stamp>.partial), which is flushed to disk (C(sync -f)) and
    renamed to its final name only when rsync succeeded; the backup directory is then fsync'd. A failed run
    removes the partial directory and never touches existing snapshots. A partial directory left by a crash is
    removed, not reused (rsync would fix a file's mode in place, in the previous snapshot too through the hard link).
  - rsync is given the partial directory by name, so I(dest) must belong to root and be writable by nobody else
    (the service layout makes it C(0700) root). A backup directory others can write to is refused, because a
    symlink planted at the partial directory's name would redirect root's copy. Leftover and replaced snapshots
    are removed without following a link.
  - Idempotent per stamp. When C(<prefix><stamp>) exists, nothing is done unless I(force=true), which takes a new
    snapshot and only then swaps it in for the old one.
  - Requires C(rsync) on the managed host. Prune old snapshots with M(runbooks.incident.backup_retention) and the
    same I(prefix); it also removes partial directories left by crashes.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Runs C(rsync --dry-run --stats) against the previous snapshot to predict the files and bytes copied.
  diff_mode:
    support: none
options:
  src:
    description: The media directory to snapshot (its contents, not the directory itself, go into the snapshot).
    type: path
    default: /var/lib/whatsapp-mcp/media
  dest:
    description: Backup directory on the managed host, holding the snapshots. Must exist, belong to root, be writable by nobody else, and not be inside I(src).
    type: path
    default: /var/lib/whatsapp-mcp/backups
  prefix:
    description: Name prefix of the snapshot directories (no C(/), no control characters, not starting with C(.)).
    type: str
    default: media-
  stamp:
    description:
      - Stamp in the snapshot's name, C(YYYY-MM-DD) (default today, UTC) optionally followed by a time
        (C(2026-11-22T031500Z)) for an extra snapshot the same day.
    type: str
  link_dest:
    description:
      - Snapshot whose unchanged files are hard-linked instead of copied.
      - C(auto) is the newest C(<prefix><stamp>) directory in I(dest) older than I(stamp) (none for the first
        snapshot); C(none) copies every file; any other value is the path of an existing directory.
    type: str
    default: auto
  force:
    description: Take the snapshot again when one of that stamp exists; the old one is removed once the new one is in place.
    type: bool
    default: false
notes:
  - Files that vanish from I(src) while rsync runs (rsync exit status 24) are left out with a warning; the task
    does not fail, as files come and go in a live media directory.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Nightly media snapshot, hard-linked to the previous one
  runbooks.incident.media_snapshot:
    src: /var/lib/whatsapp-mcp/media
    dest: /var/lib/whatsapp-mcp/backups

- name: Extra snapshot before a risky change
  runbooks.incident.media_snapshot:
    stamp: "{{ now(utc=true, fmt='%Y-%m-%dT%H%M%SZ') }}"

- name: Keep the media snapshots of the last 30 days that have one
  runbooks.incident.backup_retention:
    path: /var/lib/whatsapp-mcp/backups
    prefix: media-
    keep_daily: 30
    keep_monthly: 0
"""

RETURN = r"""
path:
  description: The snapshot directory.
  returned: always
  type: str
  sample: /var/lib/whatsapp-mcp/backups/media-2026-11-22
link_dest:
  description: The snapshot unchanged files were (in check mode, would be) hard-linked from; null when none.
  returned: always
  type: str
  sample: /var/lib/whatsapp-mcp/backups/media-2026-11-21
files_total:
  description: Regular files in the snapshot (predicted in check mode).
  returned: always
  type: int
  sample: 120000
files_transferred:
  description: New or changed files copied (in check mode, that would be copied); the others are hard links. 0 when nothing was done.
  returned: always
  type: int
  sample: 840
bytes_transferred:
  description: Total size of the copied files (in check mode, of those that would be copied).
  returned: always
  type: int
  sample: 13762560
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _media, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", default="/var/lib/whatsapp-mcp/media"),
            dest=dict(type="path", default="/var/lib/whatsapp-mcp/backups"),
            prefix=dict(type="str", default="media-"),
            stamp=dict(type="str"),
            link_dest=dict(type="str", default="auto"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    try:
        result = _media.snapshot(params["src"], params["dest"], prefix=params["prefix"], stamp=params["stamp"],
                                 link_dest=params["link_dest"], force=params["force"], check_mode=module.check_mode)
    except (_media.MediaError, OSError, ValueError) as exc:
        module.fail_json(msg="media snapshot of %s into %s failed, no snapshot was changed: %s" % (params["src"], params["dest"], exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
