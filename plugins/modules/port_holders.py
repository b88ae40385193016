#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: port_holders
short_description: Name the processes holding TCP ports, and free the ports
version_added: 0.1.0
description:
  - Names every process listening on one of I(ports) (TCP, IPv4 and IPv6, as C(ss -ltnpH) shows them), with its pid,
    program, user, start time, systemd unit and command line (masked), for the incident where nginx cannot bind 80
    or 443 because something else holds it (a stray C(python -m http.server 80), an C(apache2.service) someone
    installed).
  - With I(state=absent) it frees the ports. A process in a systemd service unit is stopped with
    C(systemctl stop --no-block <unit>) (killing it would make systemd start it again), each unit once; any other
    process gets SIGTERM, only while its pid is still the process that was read (same start time, through a pidfd
    where the kernel has them). Then it waits up to I(timeout) seconds until no holder that is not kept listens on
    I(ports). A holder still there is killed with SIGKILL (same identity check) when I(force=true), then waited for
    again; without I(force) the module fails naming it.
  - Never stops pid 1, the module's own process or any of its ancestors, a kernel thread, a program of I(keep)
    (by default the docker proxies, which hold the ports the service's own containers publish), a process in the
    unit that runs this module, nor a process in the unit of a kept holder. They are in RV(holders) with C(kept)
    saying why; a port held only by them is no failure, it is in RV(not_freed) with the reason (the caller decides).
  - A unit it stops is not disabled; it starts again at the next boot unless it is disabled or masked too.
  - Idempotent by the ports' state, not by a record; a second run finds no holder to stop and reports
    C(changed=false). A process that takes the port in the meantime (restarted by a supervisor) is another holder;
    the run that finds it still there fails naming it.
  - A command line is returned only as a signature, since it may carry a token. Each argument is masked as
    M(runbooks.incident.triage_info) masks log lines (numbers, hex, quoted strings, credentials in a URL, runs of 16 or
    more token-like characters and the value after a secret-looking key such as C(--token=) replaced by
    placeholders), the argument after a secret-looking option (C(--password VALUE)) is C(<secret>), and an argument
    naming an existing file by its absolute path is masked one path component at a time (it reads as a path).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reads as it does outside check mode and names in each holder's C(action) what it would do; stops nothing.
  diff_mode:
    support: none
options:
  ports:
    description: The TCP ports (1 to 65535, at most 32) whose holders are named and, with I(state=absent), stopped.
    type: list
    elements: int
    required: true
  state:
    description:
      - C(report) names the holders and what I(state=absent) would do; it stops nothing.
      - C(absent) stops the holders that are not kept (needs I(incident_id)).
    type: str
    choices: [report, absent]
    default: report
  keep:
    description:
      - Programs (their names as C(ss) shows them, the process's C(comm)) never stopped.
      - The default is the docker proxies (C(docker-proxy), C(dockerd), C(rootlesskit), C(rootlessport),
        C(slirp4netns)); a port the service's own containers publish is held by them, and that is the service itself.
        A list given replaces the default; name the proxies again to keep them.
    type: list
    elements: str
    default: [docker-proxy, dockerd, rootlesskit, rootlessport, slirp4netns]
  timeout:
    description:
      - Seconds to wait, after the stop, until no holder that is not kept listens on I(ports) (1 to 600); with
        I(force), again as long after the SIGKILL.
    type: int
    default: 15
  force:
    description:
      - After I(timeout), send SIGKILL to each holder it stopped that is still there (and still the same process).
        Without it, the module fails naming them.
    type: bool
    default: false
  incident_id:
    description:
      - Id of the incident or change the ports are freed for (for example C(INC-2026-0042) or an AWX job id).
        Required with I(state=absent); with I(state=report) it is only checked and returned.
      - Letters, digits and C(._:-), at most 64 characters. It is returned in the result and named in RV(msg).
    type: str
notes:
  - Run it as root; otherwise C(ss) shows no process for other users' sockets, and such a socket is reported kept
    (no process to stop).
  - Stopping a unit needs systemd running (C(/run/systemd/system)); without it, a holder in a unit makes
    I(state=absent) fail before anything is stopped.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Who holds the web ports
  runbooks.incident.port_holders:
    ports: [80, 443]
  register: web_ports

- name: Free the web ports for nginx (a stray http.server gets SIGTERM, apache2.service is stopped)
  runbooks.incident.port_holders:
    ports: [80, 443]
    state: absent
    incident_id: INC-2026-0042

- name: Free port 8080, killing a holder that ignores SIGTERM after 30 seconds, never touching haproxy
  runbooks.incident.port_holders:
    ports: [8080]
    state: absent
    timeout: 30
    force: true
    keep: [docker-proxy, dockerd, rootlesskit, rootlessport, slirp4netns, haproxy]
    incident_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was found and done, in one line.
  returned: always
  type: str
  sample: "freed ports 80, 443 for INC-2026-0042: stop apache2.service, term python3 pid 4242"
state:
  description: I(state) as given.
  returned: success
  type: str
ports:
  description: I(ports), sorted, each once.
  returned: success
  type: list
  elements: int
  sample: [80, 443]
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
holders:
  description:
    - Every process listening on one of I(ports) when the module read them, one per port, address and pid, sorted.
    - C(port), C(address) (as C(ss) shows it, C(0.0.0.0), C([::]), C(127.0.0.1)), C(pid), C(program) (as C(ss)
      shows it), C(user) (its effective user), C(started) (its start time in clock ticks after boot, field 22 of
      C(/proc/<pid>/stat), with the pid its identity), C(unit) (the system service unit it runs in, from
      C(/proc/<pid>/cgroup); null for none, a C(.scope) such as a login session or a container, and a user's own
      C(user@<uid>.service)), C(cmdline) (its signature, never the raw command line; null for a kernel thread),
      C(kept) (why it is never stopped, or null), C(action) (C(stop_unit), C(term), or null for a kept holder; what
      I(state=absent) does or, with I(state=report) and in check mode, would do) and C(killed) (SIGKILL was sent
      after I(timeout), with I(force)).
    - A socket C(ss) shows no process for has C(pid) and the process fields null and is kept.
  returned: success
  type: list
  elements: dict
  sample:
    - port: 80
      address: 0.0.0.0
      pid: 4242
      program: python3
      user: deploy
      started: 81234567
      unit: null
      cmdline: "/usr/bin/python3 -m http.server <n>"
      kept: null
      action: term
      killed: false
    - port: 443
      address: "[::]"
      pid: 999
      program: docker-proxy
      user: root
      started: 1234
      unit: docker.service
      cmdline: "/usr/bin/docker-proxy -proto tcp -host-ip :: -host-port <n> -container-ip <ip> -container-port <n>"
      kept: program docker-proxy is in keep
      action: null
      killed: false
freed:
  description:
    - The ports this run freed (in check mode, would free), sorted. Empty with I(state=report), and when there was
      nothing to stop.
  returned: success
  type: list
  elements: int
  sample: [80]
not_freed:
  description:
    - The ports still held once the holders that are not kept are stopped, each with C(port) and C(reason) (held by a
      kept holder, and why it is kept; or still held after I(timeout), by whom). With I(state=report) and in check
      mode, the ports kept holders would still hold.
  returned: success
  type: list
  elements: dict
  sample:
    - {port: 443, reason: "held by docker-proxy pid 999, kept: program docker-proxy is in keep"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _port_holders, _triage


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ports=dict(type="list", elements="int", required=True),
            state=dict(type="str", choices=list(_port_holders.STATES), default="report"),
            keep=dict(type="list", elements="str", default=list(_triage.DOCKER_PROXIES)),
            timeout=dict(type="int", default=15),
            force=dict(type="bool", default=False),
            incident_id=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    try:
        _port_holders.check_params(params)
    except _port_holders.PortsError as exc:
        module.fail_json(msg="%s; nothing was changed" % exc)
    try:
        result = _port_holders.run(params, check_mode=module.check_mode)
    except _port_holders.NotFreed as exc:
        module.fail_json(**dict(exc.result, msg=str(exc)))
    except (_port_holders.PortsError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot free or name the holders of ports %s: %s (no process was stopped: nothing was changed)"
                         % (", ".join("%d" % port for port in params["ports"]), exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
