#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: certbot_diagnose
short_description: Say why the last certbot run failed, with the log lines that prove it and what to fix
version_added: 0.1.0
description:
  - Reads certbot's debug log (and its rotations C(letsencrypt.log.1), ...) and classifies the last run into one
    cause. Certbot's own message (I(Some challenges have failed)) rarely says what to fix; RV(hint) does.
  - Causes, in the order they are tested. C(acme_unreachable) (this host cannot reach the ACME server);
    C(rate_limited) (a Let's Encrypt rate limit);
    C(caa_forbids) (a CAA record does not allow the CA); C(dns_unresolved) (NXDOMAIN, SERVFAIL, no A/AAAA record);
    C(dns_points_elsewhere) (the CA connected to an address that is not in I(host_addresses));
    C(port_unreachable) (the connection to port 80 timed out, usually a firewall);
    C(connection_refused) (nothing listens on port 80); C(challenge_not_found) (port 80 answered 404, the
    webroot and the nginx location disagree);
    C(account_problem) (the ACME account is unknown, deactivated or its key is wrong);
    C(unauthorized) (the challenge file had the wrong content, another server answers);
    C(unknown); C(none) (the last run did not fail).
  - Read-only. docs/runbooks/certificates.md lists each cause with its evidence and fix.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  log_path:
    description: Certbot's debug log. Rotated logs beside it are read when it holds no run.
    type: path
    default: /var/log/letsencrypt/letsencrypt.log
  host_addresses:
    description:
      - The addresses the certificate's names should resolve to (this host's public IPv4/IPv6). When the CA
        connected somewhere else, the cause is C(dns_points_elsewhere). Empty skips that test.
    type: list
    elements: str
    default: []
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Why did the renewal fail?
  runbooks.incident.certbot_diagnose:
    host_addresses: "{{ ansible_facts['all_ipv4_addresses'] }}"
  register: certbot_failure

- name: Say it
  ansible.builtin.debug:
    msg: "{{ certbot_failure.cause }}: {{ certbot_failure.hint }}"
"""

RETURN = r"""
cause:
  description: The cause of the last run's first failure, C(none) when it did not fail.
  returned: always
  type: str
  sample: challenge_not_found
hint:
  description: What to do about RV(cause).
  returned: always
  type: str
  sample: "Port 80 answered but the challenge file was not there: ..."
evidence:
  description: The log lines the cause was read from.
  returned: always
  type: list
  elements: str
  sample: ["Domain: wa.example.com", "Type:   unauthorized", "Detail: ... returned 404"]
failures:
  description:
    - Every problem of the last run, one per name, each with C(domain), C(type), C(detail), C(cause) and C(evidence).
    - C(address) is the address the CA connected to, when the log says.
  returned: always
  type: list
  elements: dict
log:
  description: The log file the run was read from, null when there is none.
  returned: always
  type: str
  sample: /var/log/letsencrypt/letsencrypt.log
run_started:
  description: When that run started (the log's local time).
  returned: always
  type: str
  sample: "2026-11-22 15:35:50"
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _certbot, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            log_path=dict(type="path", default="/var/log/letsencrypt/letsencrypt.log"),
            host_addresses=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    try:
        addresses = [str(ipaddress.ip_address(a)) for a in module.params["host_addresses"]]
    except ValueError as exc:
        module.fail_json(msg="host_addresses: %s" % exc)
    try:
        result = _certbot.diagnose(module.params["log_path"], addresses)
    except OSError as exc:
        module.fail_json(msg="cannot read the certbot log: %s" % exc)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
