#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: dns_wait
short_description: Wait until authoritative DNS servers answer an address for a name
version_added: 0.1.0
description:
  - Asks each server directly (over TCP, no recursion, no cache in between) for the A or AAAA record of I(name)
    until every one answers exactly I(value), or fails after I(timeout) seconds naming each server that does not and
    what it answered (another address, C(NXDOMAIN), C(REFUSED), C(timed out), ...).
  - Addresses are compared as addresses, so C(2001:db8::1) and C(2001:DB8:0::1) are the same.
  - Read-only; runs in check mode too. Needs the Python package C(dnspython) where it runs (usually the controller,
    with C(delegate_to=localhost)).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: It only reads, so it does the same in check mode.
  diff_mode:
    support: none
requirements:
  - dnspython
options:
  name:
    description: The DNS name (relative names are taken as absolute).
    type: str
    required: true
  value:
    description: The IPv4 address (an A record) or IPv6 address (an AAAA record) every server must answer, alone.
    type: str
    required: true
  servers:
    description: The servers to ask, by IPv4 or IPv6 address.
    type: list
    elements: str
    required: true
  port:
    description: Their port.
    type: int
    default: 53
  timeout:
    description: Seconds to wait for all of them (0 asks once).
    type: int
    default: 120
  interval:
    description: Seconds between two rounds of questions.
    type: int
    default: 2
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Wait until the primary and the secondary answer the new host's address
  runbooks.incident.dns_wait:
    name: chat.example.org
    value: 198.51.100.7
    servers: [192.0.2.53, 2001:db8::53]
  delegate_to: localhost
"""

RETURN = r"""
msg:
  description: What was found, in one line.
  returned: always
  type: str
  sample: "chat.example.org. A 198.51.100.7 answered by 192.0.2.53, 2001:db8::53 after 4.1 s"
answers:
  description: What each server answered last, a sorted list of addresses or why there was none.
  returned: success and when the wait timed out
  type: dict
  sample: {"192.0.2.53": ["198.51.100.7"], "2001:db8::53": "NXDOMAIN"}
waited_s:
  description: Seconds waited.
  returned: success and when the wait timed out
  type: float
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _dns


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            value=dict(type="str", required=True),
            servers=dict(type="list", elements="str", required=True),
            port=dict(type="int", default=53),
            timeout=dict(type="int", default=120),
            interval=dict(type="int", default=2),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not _dns.HAS_DNSPYTHON:
        module.fail_json(msg=missing_required_lib("dnspython"))
    if not 0 < params["port"] < 65536 or params["timeout"] < 0 or params["interval"] < 1:
        module.fail_json(msg="port must be 1-65535, timeout 0 or more and interval 1 or more seconds")
    try:
        pending, answers, waited = _dns.wait(params["name"], params["value"], params["servers"], port=params["port"],
                                             timeout=params["timeout"], interval=params["interval"])
        record = "%s %s %s" % (_dns.fqdn(params["name"]), _dns.record_type(params["value"]), params["value"])
    except _dns.DnsError as exc:
        module.fail_json(msg=str(exc))
    if pending:
        wrong = ["%s answers %s" % (server, ", ".join(answers[server]) if isinstance(answers[server], list) else answers[server])
                 for server in pending]
        module.fail_json(msg="%s is not answered by every server after %s s: %s" % (record, waited, "; ".join(wrong)),
                         answers=answers, waited_s=waited)
    module.exit_json(changed=False, msg="%s answered by %s after %s s" % (record, ", ".join(answers), waited),
                     answers=answers, waited_s=waited)


if __name__ == "__main__":
    main()
