#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: compose_limits
short_description: Set or remove resource limits of compose services through an override file, with a way back
version_added: 0.1.0
description:
  - Sets the memory, memory reservation, CPU and pid limits of services of a docker compose project through an
    override file the module owns (I(override_path)), for the incident where a container eats the host's memory and
    the node goes down. The project's own compose files are never changed.
  - "The override is a compose file holding only limits, for example C(services: {app: {mem_limit: 512m,
    memswap_limit: 512m, cpus: 0.5, pids_limit: 200}}). C(memswap_limit) is always C(mem_limit) (no swap on top of the
    memory limit, so a leaking service is OOM-killed inside its container rather than swapping the host to a halt)."
  - Its first line is a C(# runbooks.incident.compose_limits) marker, then the incident id and a C(# limits:) line
    (JSON) that says what it sets; the YAML under it is generated from that line. A file at I(override_path) without
    the marker, edited since, a symlink, a FIFO or anything but a regular file is refused and nothing is changed.
  - "The way back: before each change the override as it was (or the fact that there was none) is kept beside it, in
    C(<override_path>.previous). I(state=previous) puts that version back and removes it, so a second
    I(state=previous) finds nothing to put back and changes nothing (one step back, not an undo history)."
  - "How the stack picks the override up: with I(unit), the module writes the systemd drop-in
    C(<systemd_dir>/<unit>.d/runbooks-limits.conf) with C(Environment=COMPOSE_FILE=<compose file>:<override_path>)
    (and the project's default override file, C(compose.override.yaml), between them when there is one, since
    COMPOSE_FILE replaces compose's default lookup), so the unit's C(docker compose up) in its C(WorkingDirectory)
    merges the override. When the override is removed, so is the drop-in. Without I(unit), the caller passes the files
    itself (C(docker compose -f compose.yaml -f <override_path> up))."
  - Nothing is restarted. RV(restart_needed) says the limits in effect after a restart changed (the override or the
    drop-in was written or removed); RV(daemon_reload_needed) says the drop-in changed, so C(systemctl daemon-reload)
    must run before the restart. The caller restarts, after a confirmation.
  - Before anything is written the services are checked against C(docker compose --project-directory <project_dir>
    config --services), and the merged project is validated with C(docker compose -f <each default file> -f
    <override> config --quiet) (neither needs the docker daemon).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reads the files, checks the services and validates the merged project as a real run does; returns
      RV(before), RV(after), RV(restart_needed) and the diff of what would be written, and writes nothing.
  diff_mode:
    support: full
    details: The override file and, with I(unit), the drop-in, before and after (empty when absent).
options:
  project_dir:
    description:
      - The directory of the compose project (where C(compose.yaml) is; the unit's C(WorkingDirectory)).
      - It must hold C(compose.yaml), C(compose.yml), C(docker-compose.yml) or C(docker-compose.yaml) (the first
        found is the one used, as compose does). A project whose C(.env) sets C(COMPOSE_FILE) is refused.
      - An absolute path of letters, digits and C(._/@+-) (it goes into C(COMPOSE_FILE), whose separator is C(:)).
    type: path
    required: true
  services:
    description:
      - "With I(state=present): service name to its limits, each a mapping of at least one of C(memory) (the hard
        limit, C(mem_limit), and C(memswap_limit) set to the same), C(memory_reservation) (C(mem_reservation), the
        soft limit), C(cpus) (a float, C(cpus)) and C(pids) (C(pids_limit))."
      - "Only the keys given are set; a service or key not given is not in the override, so it has the limit of the
        project's compose files. The override holds exactly I(services): a service of the previous override not
        named again loses its override."
      - "A memory size is bytes (an int) or a number with C(k), C(m) or C(g) (powers of 1024, C(512m), C(1g),
        C(1.5g)); at least C(6m) (docker's minimum) and at most the host's C(MemTotal); C(memory_reservation) not above
        C(memory). C(cpus) above 0 and at most the host's CPU count (3 decimals kept). C(pids) 1 to 4194304."
      - Every service must be one of the project's (C(config --services)); an unknown one is refused.
    type: dict
  state:
    description:
      - C(present) makes the override hold exactly I(services).
      - "C(absent) removes the override (and the drop-in): the limits are those of the project's compose files."
      - C(previous) puts back the override as it was before the last change (removed if there was none then), once.
    type: str
    choices: [present, absent, previous]
    default: present
  override_path:
    description:
      - The override file the module owns (mode 0600, its directory created 0700 when missing). The previous version
        is kept at this path plus C(.previous).
      - The default is C(/etc/runbooks-incident/compose-limits/<basename of project_dir>.yaml).
    type: path
  unit:
    description:
      - The systemd service unit that runs the stack (for example C(whatsapp-mcp.service)); the module then writes or
        removes the drop-in C(<systemd_dir>/<unit>.d/runbooks-limits.conf) (mode 0644) with the override.
      - Give it on every run (a drop-in written before is only seen when I(unit) names it). A file there the module
        did not write is refused.
    type: str
  systemd_dir:
    description: Where the unit's drop-in directory is (tests point it elsewhere).
    type: path
    default: /etc/systemd/system
  compose_binary:
    description:
      - The Compose v2 CLI to run instead of C(docker compose), for example a standalone
        C(/usr/local/lib/docker/cli-plugins/docker-compose).
    type: path
  incident_id:
    description:
      - Id of the incident or change the limits are changed for (for example C(INC-2026-0042) or an AWX job id).
        Required when something changes; a run that changes nothing does not need it. It is written in the header of
        the override and the drop-in, and returned.
      - Letters, digits and C(._:-), at most 64 characters.
    type: str
notes:
  - Run it as root to write under C(/etc).
  - The limits apply when the containers are created again (C(docker compose up) after the change, which the unit's
    restart does); running containers keep theirs until then.
  - A service behind a compose profile that is not active is not in C(config --services), so it is refused.
  - A service whose compose file sets the same limit under C(deploy.resources.limits) with another value makes compose
    refuse the merged project (C(can't set distinct values)); the module then refuses and writes nothing.
  - The module does not lock; do not run two of it on the same I(override_path) at once (the collection's run lock
    serialises runbooks on a host).
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Cap the app at 512 MiB (no swap), half a CPU and 200 processes
  runbooks.incident.compose_limits:
    project_dir: /opt/whatsapp-mcp
    unit: whatsapp-mcp.service
    services:
      app:
        memory: 512m
        cpus: 0.5
        pids: 200
    incident_id: INC-2026-0042
  register: limits

- name: Apply them (confirmed before)
  ansible.builtin.systemd_service:
    name: whatsapp-mcp.service
    state: restarted
    daemon_reload: "{{ limits.daemon_reload_needed }}"
  when: limits.restart_needed

- name: The way back (the override as it was before the last change)
  runbooks.incident.compose_limits:
    project_dir: /opt/whatsapp-mcp
    unit: whatsapp-mcp.service
    state: previous
    incident_id: INC-2026-0042

- name: No override at all (the limits of compose.yaml)
  runbooks.incident.compose_limits:
    project_dir: /opt/whatsapp-mcp
    unit: whatsapp-mcp.service
    state: absent
    incident_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was done (in check mode, would be done), in one line.
  returned: always
  type: str
  sample: >-
    set the compose limits of /opt/whatsapp-mcp, INC-2026-0042: app memory 512m, cpus 0.5 (were none (the limits of the
    compose file)); restart the stack to apply them
state:
  description: I(state) as given.
  returned: success
  type: str
project_dir:
  description: I(project_dir), normalised.
  returned: success
  type: str
compose_files:
  description: The project's compose files compose uses by default (the compose file, then its default override file if any).
  returned: success
  type: list
  elements: str
  sample: [/opt/whatsapp-mcp/compose.yaml]
override_path:
  description: The override file (as given, or the default).
  returned: success
  type: str
  sample: /etc/runbooks-incident/compose-limits/whatsapp-mcp.yaml
previous_path:
  description: Where the previous version is kept.
  returned: success
  type: str
  sample: /etc/runbooks-incident/compose-limits/whatsapp-mcp.yaml.previous
dropin_path:
  description: The unit's drop-in, or null without I(unit).
  returned: success
  type: str
  sample: /etc/systemd/system/whatsapp-mcp.service.d/runbooks-limits.conf
before:
  description:
    - "The limits the override set before the run, per service: C(memory) and C(memory_reservation) (sizes as
      C(512m)), C(cpus) (float), C(pids) (int), only those it set. Empty when there was no override."
  returned: success
  type: dict
  sample: {}
after:
  description: The limits the override sets after the run (in check mode, would set); the same form as RV(before).
  returned: success
  type: dict
  sample: {app: {memory: 512m, cpus: 0.5, pids: 200}}
restart_needed:
  description: The override or the drop-in was (in check mode, would be) written or removed, so the limits in effect
    after a restart of the stack differ from before the run.
  returned: success
  type: bool
daemon_reload_needed:
  description: The drop-in was (would be) written or removed; run C(systemctl daemon-reload) before the restart.
  returned: success
  type: bool
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _compose_limits, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            project_dir=dict(type="path", required=True),
            services=dict(type="dict"),
            state=dict(type="str", choices=list(_compose_limits.STATES), default="present"),
            override_path=dict(type="path"),
            unit=dict(type="str"),
            systemd_dir=dict(type="path", default=_compose_limits.SYSTEMD_DIR),
            compose_binary=dict(type="path"),
            incident_id=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    try:
        result = _compose_limits.run(module.params, check_mode=module.check_mode, diff=module._diff)  # pylint: disable=protected-access
    except _compose_limits.LimitsError as exc:
        module.fail_json(msg="%s; nothing was changed" % exc)
    except _compose_limits.ApplyError as exc:
        module.fail_json(msg=str(exc), changed=bool(exc.done))
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the compose limits of %s: %s; nothing was changed" % (module.params["project_dir"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
