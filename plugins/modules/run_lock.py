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
  - The lock is a file naming its holder, written atomically under C(flock) so two racing runs never both win, in
    C(/run/runbooks-incident/), so it is gone at reboot. The directory is created C(0755) for root when missing,
    and a lock directory that belongs to another user or that others may write to (such as the world-writable
    C(/run/lock)) is refused, because any local user could plant a lock there that blocks every incident playbook,
    or a symlink that redirects root's write. Nothing in it is opened through a symlink.
  - A lock older than I(stale_after) seconds belongs to a run that died without releasing it and is taken over with
    a warning; I(break_lock=true) takes over at once.
  - A file that is not a lock record (not a JSON object with a string C(run_id) and a finite C(started_epoch) that
    is not in the future) is unreadable. It never counts as this run's, and it is aged by the file's own
    modification time, because its content cannot be trusted. It is taken over like any lock, and every message
    says what was wrong with it (for example C(holds [] not a lock record) or C(started_epoch in the future)).
  - A C(started_epoch) up to 5 minutes ahead of the clock is a live lock, as a clock stepped back by NTP would
    leave it. Further ahead, the record is unreadable. An unreadable file whose modification time is also in the
    future is stale at once, because nothing on this host wrote it then and its dates cannot hold a run off.
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
    description:
      - Lock file, in a directory only root can write to (created C(0755) when missing).
      - Its name must end in C(.lock), because a file there that is not a lock record can be taken over, and a
        mistyped path must never name another file.
    type: path
    default: /run/runbooks-incident/run.lock
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
    description: Age in seconds after which a lock is considered abandoned (at least 0).
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
  description:
    - The abandoned or broken holder this run took the lock over from.
    - For a file that was not a lock record, C(problem) says what was wrong and C(written_epoch) is its modification time.
  returned: when a lock was taken over
  type: dict
released:
  description: Whether this call removed the lock.
  returned: when I(state=absent)
  type: bool
"""

import socket
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _run_lock


def describe(holder):
    if "problem" in holder:
        return "a lock file that %s (written %s)" % (holder["problem"], when(holder["written_epoch"]))
    return "incident %s, playbook %s, run %s, started %s on %s" % (
        holder.get("incident_id", "?"), holder.get("playbook") or "?", holder.get("run_id", "?"),
        holder.get("started", "?"), holder.get("host", "?"))


def when(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            incident_id=dict(type="str", required=True),
            path=dict(type="path", default=_run_lock.DEFAULT_PATH),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            run_id=dict(type="str", required=True),
            playbook=dict(type="str", default=""),
            stale_after=dict(type="int", default=21600),
            break_lock=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["incident_id"]):
        module.fail_json(msg="incident_id %r is not valid: use letters, digits and ._:- (at most 64 characters)"
                         % params["incident_id"])
    if params["stale_after"] < 0:
        module.fail_json(msg="stale_after must be 0 or more seconds, not %d; nothing was changed" % params["stale_after"])
    if not params["run_id"]:
        module.fail_json(msg="run_id is empty; nothing was changed")

    try:
        if params["state"] == "absent":
            outcome = _run_lock.release(params["path"], params["run_id"])
        else:
            holder = dict(run_id=params["run_id"], incident_id=params["incident_id"], playbook=params["playbook"],
                          host=socket.gethostname())
            _acquired, displaced, holder = _run_lock.acquire(params["path"], holder, params["stale_after"], params["break_lock"])
    except _run_lock.LockHeld as exc:
        if "problem" in exc.holder:
            module.fail_json(msg="the run lock %s %s: it is not a lock record, written %s. It is taken over once it is "
                                 "older than %d s, or at once with incident_run_break_lock=true; nothing was changed"
                                 % (params["path"], exc.holder["problem"], when(exc.holder["written_epoch"]), params["stale_after"]),
                             holder=exc.holder)
        module.fail_json(msg="another run holds the lock on this host (%s). Wait for it to finish; if it died, "
                             "re-run with incident_run_break_lock=true (lock file: %s)" % (describe(exc.holder), params["path"]),
                         holder=exc.holder)
    except (_run_lock.LockError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot use the run lock %s: %s; nothing was changed" % (params["path"], exc))

    if params["state"] == "absent":
        if isinstance(outcome, dict):
            module.warn("run lock %s is held by %s; left in place" % (
                params["path"], describe(outcome) if "problem" in outcome else "another run (%s)" % describe(outcome)))
        module.exit_json(changed=False, released=outcome == "released")
    result = dict(changed=False, holder=holder)
    if displaced:
        module.warn("took over the run lock from %s" % describe(displaced))
        result["displaced"] = displaced
    module.exit_json(**result)


if __name__ == "__main__":
    main()
