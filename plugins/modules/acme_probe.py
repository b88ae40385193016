#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: acme_probe
short_description: Check now, from outside, what an http-01 validation of each name would see
version_added: 0.1.0
description:
  - For each name, the checks the CA makes. The name resolves, and only to I(expected_addresses). Port I(port) of
    every address answers. C(http://<name>/.well-known/acme-challenge/<probe_name>) returns I(probe_content).
  - Run it where the CA stands, outside the host (the controller, C(delegate_to)). A firewall usually lets the
    host reach itself. The probe file must already be in the webroot. The role
    M(runbooks.incident.certificates) writes it, probes and removes it.
  - A problem is named with the causes of M(runbooks.incident.certbot_diagnose). Those are C(dns_unresolved),
    C(dns_points_elsewhere), C(port_unreachable), C(connection_refused), C(challenge_not_found), C(unauthorized)
    (a wrong body or a redirect), or C(none).
  - Read-only.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  names:
    description: The certificate's DNS names.
    type: list
    elements: str
    required: true
  expected_addresses:
    description: The addresses the names must resolve to (the host's public addresses). Empty skips that check.
    type: list
    elements: str
    default: []
  resolver:
    description: A DNS server to ask (its IP address), as the CA would ask the public DNS. Empty uses this machine's resolver.
    type: str
    default: ""
  resolver_port:
    description: Port of I(resolver).
    type: int
    default: 53
  port:
    description: The port the CA validates http-01 on (80; only a test CA uses another).
    type: int
    default: 80
  probe_name:
    description: File name of the probe under C(/.well-known/acme-challenge/).
    type: str
    required: true
  probe_content:
    description: What the probe file holds.
    type: str
    required: true
  timeout:
    description: Seconds to wait for each DNS answer, connection and response.
    type: int
    default: 5
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Is wa.example.com reachable for an http-01 challenge? (the probe file is already in the webroot)
  runbooks.incident.acme_probe:
    names: [wa.example.com]
    expected_addresses: [203.0.113.10]
    resolver: 1.1.1.1
    probe_name: runbooks-probe-3f2a
    probe_content: 3f2a9c0e7b
  delegate_to: localhost
  register: reachability
"""

RETURN = r"""
ok:
  description: Every name resolves only to the expected addresses and serves the probe on every address.
  returned: always
  type: bool
cause:
  description: The first problem found, C(none) when RV(ok).
  returned: always
  type: str
  sample: port_unreachable
hint:
  description: What to do about RV(cause).
  returned: always
  type: str
checks:
  description: Per name, C(addresses), C(unexpected_addresses), C(answers) (per address C(status) and C(problem)) and C(problem).
  returned: always
  type: list
  elements: dict
  sample: [{name: wa.example.com, addresses: [203.0.113.10], unexpected_addresses: [], problem: none,
            answers: [{address: 203.0.113.10, status: 200, problem: none}]}]
"""

import ipaddress
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _acme_probe, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", required=True),
            expected_addresses=dict(type="list", elements="str", default=[]),
            resolver=dict(type="str", default=""),
            resolver_port=dict(type="int", default=53),
            port=dict(type="int", default=80),
            probe_name=dict(type="str", required=True),
            probe_content=dict(type="str", required=True),
            timeout=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if not params["names"]:
        module.fail_json(msg="names is empty")
    if not re.match(r"^[A-Za-z0-9_-]+$", params["probe_name"]):
        module.fail_json(msg="probe_name must be a plain file name (letters, digits, _ and -)")
    wrong = [name for name in params["names"] if not _acme_probe.is_dns_name(name)]
    if wrong:
        module.fail_json(msg="not a DNS name: %s (labels of letters, digits and -, at most 63 characters, 253 in all)"
                         % ", ".join(repr(name[:80]) for name in wrong[:5]))
    for name in ("port", "resolver_port"):
        if not 1 <= params[name] <= 65535:
            module.fail_json(msg="%s must be a TCP/UDP port (1-65535), not %d" % (name, params[name]))
    if not 1 <= params["timeout"] <= 300:
        module.fail_json(msg="timeout must be 1 to 300 seconds, not %d" % params["timeout"])
    try:
        for address in params["expected_addresses"] + ([params["resolver"]] if params["resolver"] else []):
            ipaddress.ip_address(address)
    except ValueError as exc:
        module.fail_json(msg="not an IP address: %s" % exc)
    result = _acme_probe.probe_all(params["names"], params["expected_addresses"], params["resolver"],
                                   params["resolver_port"], params["port"],
                                   "/.well-known/acme-challenge/" + params["probe_name"], params["probe_content"],
                                   params["timeout"])
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
