#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: backup_retention
short_description: Prune backup sets grandfather-father-son (keep N daily, M monthly, Y yearly)
version_added: 0.1.0
description:
  - Replaces C(find -mtime +N -delete), which cannot keep monthlies and deletes every backup once backups have
    stopped for N days.
  - A backup B(set) is every entry (file or directory) of I(path) named C(<prefix><stamp><rest>), where the stamp
    is C(YYYY-MM-DD) optionally followed by C(THHMMSSZ) or C(THHMMZ), for example C(db-2026-11-22.sql.gz) with
    C(db-2026-11-22.manifest.json), C(db-2026-11-22T031500Z.sql.gz) or the directory C(media-2026-11-22/).
    Entries with the same stamp are kept or removed together, so a dump never loses its manifest. Names that
    start with I(prefix) but have no valid stamp (C(db-latest.sql.gz), C(db-2026-02-30.sql.gz)) are left alone
    and returned in RV(ignored).
  - Retention is B(count-based), like restic's C(forget --keep-daily/--keep-monthly), not age-based. The
    I(keep_daily) newest days that have a backup keep all their sets (a manual backup taken during an incident
    survives the next night); each of the I(keep_monthly) newest months that have a backup keeps its newest set,
    and likewise each of the I(keep_yearly) newest years. The newest set is always kept. Because a day, month or
    year only counts if it has a backup, old backups are never all deleted when backups stop.
  - Leftovers of crashed backups, entries named C(.<prefix>...) or C(<prefix>....partial), are removed once older
    than I(stale_partial_hours) (younger ones may belong to a backup still running) and returned separately.
  - Sets are removed oldest first; directories recursively, without following symlinks (a symlink entry is
    unlinked, never followed out of I(path)). If an entry cannot be removed, the others still are and the task
    fails at the end naming what is left.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Check mode returns exactly the entries a real run would remove.
  diff_mode:
    support: full
    details: The diff lists the stamps of the backup sets before and after the pruning.
options:
  path:
    description: The backup directory.
    type: path
    required: true
  prefix:
    description: Name prefix of the backup sets (and their partial files) this task manages; others are not touched.
    type: str
    default: db-
  keep_daily:
    description: Number of most recent days with a backup whose sets are all kept. At least 1.
    type: int
    default: 30
  keep_monthly:
    description: Number of most recent months with a backup whose newest set is kept. C(0) keeps no monthlies.
    type: int
    default: 12
  keep_yearly:
    description: Number of most recent years with a backup whose newest set is kept. C(0) keeps no yearlies.
    type: int
    default: 0
  stale_partial_hours:
    description: Age (by modification time) in hours after which a partial file of a crashed backup is removed.
    type: int
    default: 24
seealso:
  - name: restic forget policies
    description: The count-based keep-daily/keep-monthly semantics this module follows.
    link: https://restic.readthedocs.io/en/stable/060_forget.html
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Keep 30 daily and 12 monthly database dumps
  runbooks.incident.backup_retention:
    path: /var/backups/whatsapp-mcp
    prefix: db-
    keep_daily: 30
    keep_monthly: 12

- name: Keep the media snapshots of the last 30 days that have one, no monthlies
  runbooks.incident.backup_retention:
    path: /var/backups/whatsapp-mcp
    prefix: media-
    keep_daily: 30
    keep_monthly: 0
"""

RETURN = r"""
removed:
  description: Paths of the set entries removed (in check mode, that would be removed), sorted.
  returned: always
  type: list
  elements: str
  sample: [/var/backups/whatsapp-mcp/db-2026-09-30.manifest.json, /var/backups/whatsapp-mcp/db-2026-09-30.sql.gz]
removed_partials:
  description: Paths of the stale partial entries removed (in check mode, that would be removed), sorted.
  returned: always
  type: list
  elements: str
  sample: [/var/backups/whatsapp-mcp/.db-2026-11-20.sql.gz.tmp]
removed_bytes:
  description:
    - Allocated bytes the removal frees (in check mode, would free), measured before anything is removed. A
      directory counts everything below it; a hard-linked file counts only when all its names are removed (a media
      snapshot frees only the files no other snapshot links).
  returned: success
  type: int
  sample: 734003200
kept:
  description: The backup sets kept, newest first, with why (C(daily), C(monthly), C(yearly), C(newest)).
  returned: always
  type: list
  elements: dict
  sample: [{stamp: '2026-11-22T031500Z', reasons: [daily, monthly, newest]}, {stamp: '2026-11-22', reasons: [daily]}]
ignored:
  description: Names starting with I(prefix) that are not a backup set (no valid stamp); left alone.
  returned: always
  type: list
  elements: str
  sample: [db-latest.sql.gz]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _retention


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            prefix=dict(type="str", default="db-"),
            keep_daily=dict(type="int", default=30),
            keep_monthly=dict(type="int", default=12),
            keep_yearly=dict(type="int", default=0),
            stale_partial_hours=dict(type="int", default=24),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    try:
        plan = _retention.plan(params["path"], params["prefix"], params["keep_daily"], params["keep_monthly"],
                               params["keep_yearly"], params["stale_partial_hours"])
    except _retention.RetentionError as exc:
        module.fail_json(msg="%s; nothing was removed" % exc)

    freed = _retention.freed_bytes([path for paths in _retention.planned_removals(plan) for path in paths])
    if module.check_mode:
        removed, removed_partials = _retention.planned_removals(plan)
        failures = []
    else:
        removed, removed_partials, failures = _retention.apply(plan)
    result = dict(
        changed=bool(removed or removed_partials),
        removed=sorted(removed),
        removed_partials=sorted(removed_partials),
        removed_bytes=freed,
        kept=[dict(stamp=stamp, reasons=reasons) for stamp, reasons in plan.kept],
        ignored=plan.ignored,
    )
    if module._diff:
        result["diff"] = _retention.diff(plan)
    if failures:
        module.fail_json(msg="could not remove %d of %d entries, the others were removed: %s" % (
            len(failures), len(failures) + len(removed) + len(removed_partials),
            "; ".join("%s (%s)" % failure for failure in failures)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
