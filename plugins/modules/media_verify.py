#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: media_verify
short_description: Check that media_objects rows have their files on disk, with the right size and SHA-256
version_added: 0.1.0
description:
  - The seeds' "verify a sample of C(media_objects.storage_path) rows have corresponding files on disk", with the
    content checked too. Reads I(sample) rows of C(media_objects) (C(storage_path), C(sha256), C(size_bytes)),
    picked at random in SQL, or every row; for each, checks that C(<media_dir>/<storage_path>) is a regular file
    of that size whose SHA-256 (streamed) matches.
  - A C(storage_path) that is absolute, has a C(..) component or leads out of I(media_dir) through a symlink is
    never opened and is reported as C(unsafe_path). The file is opened at its resolved path without following a
    link, so one swapped in after the check is not read either.
  - Fails listing the problems when any is found, unless I(fail_on_mismatch=false).
  - Read-only.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Verifies in check mode too (it only reads).
  diff_mode:
    support: none
options:
  media_dir:
    description: The media directory C(storage_path) is relative to (the service's C(WA_MEDIA_DIR)), or a snapshot of it.
    type: path
    default: /var/lib/whatsapp-mcp/media
  db:
    description: Database holding C(media_objects).
    type: str
    default: wa_mcp
  sample:
    description: Number of rows to check, picked at random (a positive integer), or C(all) for every row, in C(id) order.
    type: raw
    default: 100
  seed:
    description:
      - Seed of the random sample (C(setseed(seed / 2^31))), between -2^31 and 2^31. The same seed picks the same
        rows as long as the table has not changed. Default a different sample each run.
    type: int
  fail_on_mismatch:
    description: Fail when a problem is found. With C(false) the problems are only returned.
    type: bool
    default: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Check 100 random media files against the database (the seeds' spot check)
  runbooks.incident.media_verify:
    media_dir: /var/lib/whatsapp-mcp/media
    compose_project_dir: /opt/whatsapp-mcp

- name: Check every row against last night's snapshot, reporting without failing
  runbooks.incident.media_verify:
    media_dir: /var/lib/whatsapp-mcp/backups/media-2026-11-22
    sample: all
    fail_on_mismatch: false
    compose_project_dir: /opt/whatsapp-mcp
  register: media_check
"""

RETURN = r"""
sample:
  description: The sample size used (an integer), or C(all).
  returned: success
  type: raw
  sample: 100
total_rows:
  description: Rows in C(media_objects).
  returned: success
  type: int
  sample: 120000
checked:
  description: Rows checked (fewer than I(sample) when the table has fewer rows).
  returned: success
  type: int
  sample: 100
ok:
  description: Rows whose file is there with the right size and SHA-256.
  returned: success
  type: int
  sample: 99
problems:
  description:
    - Rows with a problem (at most 100 are listed), with the problem found, one of C(missing) (no regular file there),
      C(size), C(sha256), C(unsafe_path) or C(invalid_row) (a NULL, a C(sha256) that is not 64 hex digits or a
      negative size, so the row cannot be checked).
  returned: success
  type: list
  elements: dict
  sample: [{storage_path: 7/2026/11/3f1c0b2a9d6e4f81a5c2d7e9b0a1c3d4, problem: missing}]
problems_total:
  description: Number of rows with a problem (all of them, also beyond the 100 listed).
  returned: success
  type: int
  sample: 1
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _media, _params, _pg


def main():
    module = _params.postgres_module(dict(
        media_dir=dict(type="path", default="/var/lib/whatsapp-mcp/media"),
        db=dict(type="str", default="wa_mcp"),
        sample=dict(type="raw", default=100),
        seed=dict(type="int"),
        fail_on_mismatch=dict(type="bool", default=True),
    ))
    params = module.params
    try:
        result = _media.verify(_pg.Runtime.from_params(params), params["db"], params["media_dir"],
                               sample=params["sample"], seed=params["seed"])
    except (_media.MediaError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot verify the media files of %s: %s" % (params["db"], exc))
    if result["problems"] and params["fail_on_mismatch"]:
        listed = ", ".join("%s (%s)" % (item["storage_path"], item["problem"]) for item in result["problems"][:10])
        more = result["problems_total"] - min(10, len(result["problems"]))
        module.fail_json(msg="%d of %d media files checked in %s have a problem: %s%s" % (
            result["problems_total"], result["checked"], params["media_dir"], listed,
            " and %d more" % more if more else ""), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
