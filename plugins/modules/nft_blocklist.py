#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: nft_blocklist
short_description: Block source addresses with nftables, for a while, before the docker DNAT
version_added: 0.1.0
description:
  - Blocks the source addresses or networks of I(addresses) (the connection flood's sources, as triage names them) for
    I(timeout) seconds, after which each block expires by itself; with I(state=absent) it unblocks them, or everything
    with I(all=true). Every run returns what is blocked, before (RV(blocked_before)) and after (RV(blocked)), each with
    the seconds it has left; a run without I(addresses) only reads.
  - The blocklist is a table of its own, C(inet runbooks_incident) by default (I(table)), created when missing and
    never flushed; no other table is read or touched (docker's, the admin's). It holds two sets, C(blocked4) and
    C(blocked6) (C(flags interval, timeout)), and a chain C(prerouting) (C(type filter hook prerouting priority -150;
    policy accept;)) with C(ip saddr @blocked4 counter drop) and C(ip6 saddr @blocked6 counter drop).
  - Prerouting, not input, because traffic to a port a container publishes is DNATed (priority -100) and forwarded, so it
    never crosses an C(input) chain. At -150 the drop sees traffic to the host and to the containers alike, before the
    DNAT.
  - Every change is one nft script, validated with C(nft -c -f -) and applied with C(nft -f -) (one transaction, all
    or nothing). Each element carries I(incident_id) as its comment.
  - Never blocks a loopback, unspecified, multicast, link-local or broadcast address or an IPv4-mapped IPv6 one, an
    address in or overlapping I(allow), a network broader than I(min_prefix4) / I(min_prefix6), nor more than
    I(max_addresses) in one run; such a request, or an address that does not parse, fails naming it, and nothing is
    blocked.
  - Addresses are normalised (host bits of a network dropped, a host address is a C(/32) or C(/128)); one held by a
    network also asked for is dropped. An address already blocked, itself or as part of a blocked network, is left as
    it is (its timeout runs on) unless I(refresh=true), which renews the element holding it for I(timeout) seconds.
    A network holding blocked elements replaces them. Unblocking an address that is not blocked is no change; one
    blocked only as part of a broader network fails naming it (unblock the network).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reads the blocklist, builds the script and validates it with C(nft -c); returns it and what it would add
      and remove, and changes nothing.
  diff_mode:
    support: none
options:
  state:
    description:
      - C(present) blocks I(addresses); C(absent) unblocks them (or everything, with I(all=true)).
      - Either way, without I(addresses) (and without I(all)) the run only reads and returns what is blocked.
    type: str
    choices: [present, absent]
    default: present
  addresses:
    description:
      - IPv4 or IPv6 addresses or networks (CIDR), at most I(max_addresses).
    type: list
    elements: str
    default: []
  all:
    description:
      - With I(state=absent) and no I(addresses), unblock every element of both sets.
    type: bool
    default: false
  allow:
    description:
      - Addresses and networks never blocked (the operator's own address, the monitoring, the backup host). An address
        of I(addresses) in one of them or overlapping one is refused, and nothing is blocked.
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds a block lasts (60 to 2592000, 30 days); the element expires by itself then.
    type: int
    default: 3600
  refresh:
    description:
      - Renew the timeout of an address already blocked (to I(timeout) seconds from now, with I(incident_id) as its
        comment). Without it an address already blocked is left as it is.
    type: bool
    default: false
  max_addresses:
    description:
      - At most this many addresses in one run (1 to 1000); more is refused, and nothing is blocked or unblocked.
    type: int
    default: 20
  min_prefix4:
    description:
      - An IPv4 network broader than this prefix length (8 to 32) is refused.
    type: int
    default: 24
  min_prefix6:
    description:
      - An IPv6 network broader than this prefix length (16 to 128) is refused.
    type: int
    default: 64
  table:
    description:
      - Name of the blocklist's C(inet) table (a letter, then letters, digits and C(_), at most 32).
      - A table of that name that holds a set C(blocked4)/C(blocked6) or a chain C(prerouting) of another kind is not
        a blocklist; the module fails and changes nothing.
    type: str
    default: runbooks_incident
  incident_id:
    description:
      - Id of the incident the addresses are blocked or unblocked for (for example C(INC-2026-0042) or an AWX job id).
        Required with I(addresses) or I(all); it is the comment of each element blocked, returned in RV(blocked).
      - Letters, digits and C(._:-), at most 64 characters.
    type: str
  persist:
    description:
      - Keep the blocklist across a reboot. After the run, the module writes I(persist_path) (mode 0600, atomically),
        an nft script that rebuilds the table with what is blocked then, each element with the time it had left (counted
        again from the load, so a block outlives the downtime rather than ending early). Something must load it at boot;
        the role C(runbooks.incident.connection_flood) installs C(runbooks-nft-blocklist.service) for that.
      - Once the file exists, every later run keeps it in step with the sets (an unblock is persisted too), with or
        without I(persist); to stop persisting, remove the file (and the unit).
      - The script is validated with C(nft -c) before it is written.
    type: bool
    default: false
  persist_path:
    description:
      - Where the boot script is written. A symlink, a FIFO or a file at that path that the module did not write (no
        C(# elements) header line) is refused, and nothing is changed.
    type: path
    default: /etc/runbooks-incident/nft_blocklist.nft
notes:
  - Run it as root (nft needs C(CAP_NET_ADMIN)); C(nft) is in the package C(nftables).
  - The blocks are kernel state and do not survive a reboot unless I(persist=true); they expire by themselves after
    I(timeout) anyway.
  - A connection already established from a blocked address is dropped from then on, packet by packet.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Block the sources of the connection flood for an hour, never the operator or the monitoring
  runbooks.incident.nft_blocklist:
    addresses: [203.0.113.7, 198.51.100.0/24, "2001:db8:4::/64"]
    allow: [192.0.2.10, 192.0.2.64/26]
    incident_id: INC-2026-0042
  register: blocklist

- name: Keep blocking 203.0.113.7 for another day
  runbooks.incident.nft_blocklist:
    addresses: [203.0.113.7]
    timeout: 86400
    refresh: true
    incident_id: INC-2026-0042

- name: What is blocked, and for how long
  runbooks.incident.nft_blocklist:
  register: blocked_now

- name: Unblock everything
  runbooks.incident.nft_blocklist:
    state: absent
    all: true
    incident_id: INC-2026-0042
"""

RETURN = r"""
msg:
  description: What was done (in check mode, would be done), in one line.
  returned: always
  type: str
  sample: "table inet runbooks_incident, incident INC-2026-0042: block 203.0.113.7/32, 198.51.100.0/24 for 3600 s"
state:
  description: I(state) as given.
  returned: success
  type: str
table:
  description: I(table) as given.
  returned: success
  type: str
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
added:
  description: The addresses and networks this run blocked (in check mode, would block), normalised, without the ones
    refreshed.
  returned: success
  type: list
  elements: str
  sample: ["203.0.113.7/32", "198.51.100.0/24"]
refreshed:
  description: The blocked elements whose timeout this run renewed (in check mode, would renew).
  returned: success
  type: list
  elements: str
  sample: ["203.0.113.7/32"]
removed:
  description:
    - The elements this run unblocked (in check mode, would unblock); with I(state=present), the narrower elements a
      network asked for replaced.
  returned: success
  type: list
  elements: str
  sample: ["198.51.100.0/24"]
blocked_before:
  description: What was blocked when the module read the sets; the same items as RV(blocked).
  returned: success
  type: list
  elements: dict
blocked:
  description:
    - What is blocked after the run (in check mode, as it was read), IPv4 first; C(address) (a network in CIDR form, or
      C(first-last) for a range someone else added), C(expires_in) (seconds left; null when the element has no
      timeout), C(timeout) (its timeout in seconds) and C(incident_id) (its comment, the incident that blocked it).
  returned: success
  type: list
  elements: dict
  sample:
    - {address: 203.0.113.7/32, expires_in: 3599, timeout: 3600, incident_id: INC-2026-0042}
    - {address: "2001:db8:4::/64", expires_in: 3599, timeout: 3600, incident_id: INC-2026-0042}
persisted:
  description: The boot script written (in check mode, that would be written) by this run, or null when none was (not
    persisting, or it already held what is blocked).
  returned: success
  type: str
  sample: /etc/runbooks-incident/nft_blocklist.nft
script:
  description: The nft script applied (in check mode, validated and not applied); empty when nothing changes.
  returned: success
  type: str
  sample: "add element inet runbooks_incident blocked4 { 203.0.113.7/32 timeout 3600s comment \"INC-2026-0042\" }\n"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _nft_blocklist, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=list(_nft_blocklist.STATES), default="present"),
            addresses=dict(type="list", elements="str", default=[]),
            all=dict(type="bool", default=False),
            allow=dict(type="list", elements="str", default=[]),
            timeout=dict(type="int", default=3600),
            refresh=dict(type="bool", default=False),
            max_addresses=dict(type="int", default=20),
            min_prefix4=dict(type="int", default=24),
            min_prefix6=dict(type="int", default=64),
            table=dict(type="str", default=_nft_blocklist.DEFAULT_TABLE),
            incident_id=dict(type="str"),
            persist=dict(type="bool", default=False),
            persist_path=dict(type="path", default=_nft_blocklist.PERSIST_PATH),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    try:
        result = _nft_blocklist.run(module.params, check_mode=module.check_mode)
    except _nft_blocklist.ReadAfterFailed as exc:
        module.fail_json(**dict(exc.result, changed=True, msg=str(exc)))
    except _nft_blocklist.BlocklistError as exc:
        module.fail_json(msg="%s; nothing was changed" % exc)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot read or change the blocklist in table inet %s: %s; nothing was changed" % (module.params["table"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
