#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: run_lock
short_description: Take or release the per-host lock of an incident playbook run
version_added: 0.1.0
description:
  - Every playbook of this collection takes this lock on each host before acting and releases it in C(always:).
    A second run against the same host, even for the same incident, refuses with a message naming the holder
    (incident, playbook, run id, start time), so two on-call engineers or a retried AWX job cannot interleave.
  - The lock is a file under C(/run/lock) naming its holder, written atomically under C(flock) so two racing runs
    never both win, and gone at reboot. A lock older than I(stale_after) seconds belongs to a run that died
    without releasing it and is taken over with a warning; I(break_lock=true) takes over at once.
  - Acquiring or releasing never reports C(changed) and also happens in check mode, because the lock guards
    the dry run's reads too; it is not a change of the managed system.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.incident
attributes:
  check_mode:
    support: full
    details: The lock is taken and released in check mode too (it changes nothing the runbook manages).
  diff_mode:
    support: none
options:
  path:
    description: Lock file.
    type: path
    default: /run/lock/runbooks-incident.lock
  state:
    description: C(present) takes the lock, C(absent) releases it (only if this run holds it).
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description: Unique id of this playbook run; a retried task of the same run keeps its lock.
    type: str
    required: true
  playbook:
    description: Name of the playbook, shown to a run that is refused.
    type: str
    default: ""
  stale_after:
    description: Age in seconds after which a lock is considered abandoned.
    type: int
    default: 21600
  break_lock:
    description: Take the lock even if another run holds it. Use only when that run is known to be dead.
    type: bool
    default: false
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Take the run lock
  runbooks.incident.run_lock:
    incident_id: INC-2026-0042
    run_id: "{{ incident_run_id }}"
    playbook: restore_database

- name: Release the run lock
  runbooks.incident.run_lock:
    state: absent
    incident_id: INC-2026-0042
    run_id: "{{ incident_run_id }}"
"""

RETURN = r"""
holder:
  description: The lock's holder after the call (absent after a release).
  returned: when I(state=present)
  type: dict
  sample: {run_id: 20261122T030000Z-k3j2x9aa, incident_id: INC-2026-0042, playbook: restore_database, host: wa-prod-1,
           started: '2026-11-22T03:00:00Z', started_epoch: 1795316400.0}
displaced:
  description: The abandoned or broken holder this run took the lock over from.
  returned: when a lock was taken over
  type: dict
released:
  description: Whether this call removed the lock.
  returned: when I(state=absent)
  type: bool
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _run_lock


def describe(holder):
    return "incident %s, playbook %s, run %s, started %s on %s" % (
        holder.get("incident_id", "?"), holder.get("playbook") or "?", holder.get("run_id", "?"),
        holder.get("started", "?"), holder.get("host", "?"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            incident_id=dict(type="str", required=True),
            path=dict(type="path", default="/run/lock/runbooks-incident.lock"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            run_id=dict(type="str", required=True),
            playbook=dict(type="str", default=""),
            stale_after=dict(type="int", default=21600),
            break_lock=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["incident_id"]):
        module.fail_json(msg="incident_id %r is not valid: use letters, digits and ._:- (at most 64 characters)"
                         % params["incident_id"])

    if params["state"] == "absent":
        outcome = _run_lock.release(params["path"], params["run_id"])
        if isinstance(outcome, dict):
            module.warn("run lock %s is held by another run (%s); left in place" % (params["path"], describe(outcome)))
        module.exit_json(changed=False, released=outcome == "released")

    holder = dict(run_id=params["run_id"], incident_id=params["incident_id"], playbook=params["playbook"],
                  host=socket.gethostname())
    try:
        _acquired, displaced = _run_lock.acquire(params["path"], holder, params["stale_after"], params["break_lock"])
    except _run_lock.LockHeld as exc:
        module.fail_json(msg="another run holds the lock on this host (%s). Wait for it to finish; if it died, "
                             "re-run with incident_run_break_lock=true (lock file: %s)" % (describe(exc.holder), params["path"]),
                         holder=exc.holder)
    result = dict(changed=False, holder=_run_lock.read_holder(params["path"]))
    if displaced:
        module.warn("took over the run lock from %s" % describe(displaced))
        result["displaced"] = displaced
    module.exit_json(**result)


if __name__ == "__main__":
    main()
