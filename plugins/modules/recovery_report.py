#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: recovery_report
short_description: Report a recovery's time (RTO) step by step and the data loss its backup bounds (RPO)
version_added: 0.1.0
description:
  - Times each step of a recovery from the mark before it (the first mark is the start) and reports the recovery
    time, start to the last mark (the service verified).
  - With I(backup_time), the time of the restored dump's snapshot, reports the data loss (what was written after it
    is lost), at most RV(rpo_s) seconds before the recovery began.
  - Returns the report as a C(recovery) event of the incident's timeline (the C(runbooks.incident.timeline) callback
    records it), except in check mode; it changes nothing anywhere.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: >-
      The same report, but no C(recovery) event for the timeline: a dry run recovered nothing. Nothing is changed in
      either mode.
  diff_mode:
    support: none
options:
  marks:
    description:
      - The end of each step, in order, as C(step) (its name) and C(at) (UTC, ISO 8601 with C(Z)); the first mark
        is the start of the recovery.
    type: list
    elements: dict
    required: true
  backup_time:
    description: When the restored backup's snapshot was taken (its manifest's C(started_at)). Omit it when no data was restored.
    type: str
  goal_s:
    description: The recovery time goal in seconds; the report says whether it was met.
    type: float
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Report the recovery
  runbooks.incident.recovery_report:
    marks:
      - {step: start, at: "2026-12-06T03:10:00Z"}
      - {step: deployed, at: "2026-12-06T03:12:10Z"}
      - {step: data restored, at: "2026-12-06T03:13:40Z"}
      - {step: verified, at: "2026-12-06T03:14:02Z"}
    backup_time: "2026-12-06T02:30:04Z"
    goal_s: 300
  delegate_to: localhost
"""

RETURN = r"""
rto_s:
  description: Seconds from the first mark to the last.
  returned: success
  type: float
  sample: 242.0
started:
  description: The first mark's time (the start of the recovery), UTC.
  returned: success
  type: str
  sample: "2026-12-06T03:10:00Z"
verified:
  description: The last mark's time (the service verified), UTC.
  returned: success
  type: str
  sample: "2026-12-06T03:14:02Z"
steps:
  description: Each step and its duration.
  returned: success
  type: list
  elements: dict
  sample: [{step: deployed, duration_s: 130.0}, {step: data restored, duration_s: 90.0}]
step_durations:
  description: Seconds by step name.
  returned: success
  type: dict
  sample: {deployed: 130.0, data restored: 90.0, verified: 22.0}
backup_time:
  description: The restored snapshot's time, UTC.
  returned: when I(backup_time) is given
  type: str
  sample: "2026-12-06T02:30:04Z"
rpo_s:
  description: Seconds from the restored snapshot to the start of the recovery; the data lost was written in them.
  returned: when I(backup_time) is given
  type: float
  sample: 2396.0
within_goal:
  description: Whether the recovery time met I(goal_s).
  returned: when I(goal_s) is given
  type: bool
lines:
  description: The report, one line per fact and step.
  returned: success
  type: list
  elements: str
summary:
  description: The report in one line (the recovery time, the data's time, each step).
  returned: success
  type: str
  sample: "Recovered in 4m02s (RTO); data as of 2026-12-06T02:30:04Z. deployed 2m10s, data restored 1m30s, verified 22s"
timeline_events:
  description: The report as one C(recovery) event of the incident's timeline; none in check mode.
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _recovery


def main():
    module = AnsibleModule(
        argument_spec=dict(
            marks=dict(type="list", elements="dict", required=True),
            backup_time=dict(type="str"),
            goal_s=dict(type="float"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        found = _recovery.report(params["marks"], params["backup_time"] or None, params["goal_s"])
    except _recovery.ReportError as exc:
        module.fail_json(changed=False, msg="cannot report the recovery: %s" % exc)
    event = dict(kind="recovery", summary=found["summary"], time=found["verified"], rto_s=found["rto_s"])
    if "rpo_s" in found:
        event.update(rpo_s=found["rpo_s"], backup_time=found["backup_time"])
    # A dry run recovered nothing: its report is shown, not recorded as the incident's recovery.
    module.exit_json(changed=False, msg=" ".join(found["lines"][:1]), timeline_events=[] if module.check_mode else [event], **found)


if __name__ == "__main__":
    main()
