#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: incident_steps
short_description: Record a runbook's step as done for an incident, and read which steps are
version_added: 0.1.0
description:
  - A step that must happen once per incident (a media restore, one step of a key compromise) is recorded only
    after it is verified. A run that died before the record redoes the step (each is idempotent), and a re-run after
    it skips the step.
  - Without I(step) it only reads. With I(step), it records the step unless it is already recorded; the first
    record is kept.
  - Records are C(<dir>/<incident_id>/<step>.json). They are written atomically, mode 0600, in directories of mode
    0700, and no symlink is followed. A file there that is not a record is reported, never overwritten.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether it would record the step; writes nothing.
  diff_mode:
    support: none
options:
  dir:
    description: The runbook's directory of records (one per runbook, e.g. C(/var/lib/runbooks-incident/key-compromise)).
    type: path
    required: true
  incident_id:
    description: The incident (or change) id the steps belong to.
    type: str
    required: true
  step:
    description: The step to record as done (lower-case letters, digits, C(_) and C(-)). Omit it to only read.
    type: str
  details:
    description: What to record with it, such as the snapshot restored. Never a secret.
    type: dict
    default: {}
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Find the steps already done for this incident
  runbooks.incident.incident_steps:
    dir: /var/lib/runbooks-incident/key-compromise
    incident_id: INC-2026-0042
  register: steps

- name: Record the verified step
  runbooks.incident.incident_steps:
    dir: /var/lib/runbooks-incident/key-compromise
    incident_id: INC-2026-0042
    step: sessions
    details:
      revoked: 12
"""

RETURN = r"""
done:
  description: The steps recorded for the incident (with I(step), after recording it), each with its record.
  returned: success
  type: dict
  sample: {sessions: {step: sessions, incident_id: INC-2026-0042, at: "2026-12-06T03:10:00+00:00", revoked: 12}}
steps:
  description: The names of the steps in I(done), sorted.
  returned: success
  type: list
  elements: str
  sample: [auth_secret, sessions]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _incident_steps, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            incident_id=dict(type="str", required=True),
            step=dict(type="str"),
            details=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    try:
        if params["step"] is None:
            changed, done = False, _incident_steps.done(params["dir"], params["incident_id"])
        else:
            changed, done = _incident_steps.record(params["dir"], params["incident_id"], params["step"], params["details"],
                                                   check_mode=module.check_mode)
    except (_incident_steps.StepsError, OSError) as exc:
        module.fail_json(msg="steps of incident %s in %s: %s; nothing was changed" % (params["incident_id"], params["dir"], exc))
    module.exit_json(changed=changed, done=done, steps=sorted(done))


if __name__ == "__main__":
    main()
