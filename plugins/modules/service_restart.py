#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: service_restart
short_description: Restart the service's units and wait until its /health reports what a change expects
version_added: 0.1.0
description:
  - After a change of the service's secrets (a rotated pepper, a new access token, a new JWT secret or database
    password) the secrets unit decrypts them again and the service, which reads them at start, restarts. This module
    restarts I(units) in order (the secrets unit first) and waits until I(health_url) answers 200 with what
    I(expect) says, so the next step never meets a stack halfway up or one still running with the old secrets.
  - With I(restart=false) it only waits (a re-run that finds the service already running with the new secrets).
  - On timeout it fails saying what /health last reported of I(expect), never the whole document.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether it would restart; restarts nothing and does not wait.
  diff_mode:
    support: none
options:
  units:
    description: The systemd units to restart, in this order.
    type: list
    elements: str
    required: true
  restart:
    description: Restart the units; false only waits for /health.
    type: bool
    default: true
  health_url:
    description: The service's health endpoint.
    type: str
    required: true
  expect:
    description:
      - What /health must report, each key a dotted path into its JSON (C(previous_pepper.fingerprint)). The value
        must equal the expected one, or hold it when it is a list; C(null) means absent or null.
      - Empty waits for HTTP 200 only.
    type: dict
    default: {}
  timeout:
    description: Seconds to wait for /health.
    type: int
    default: 120
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Restart on the new pepper and wait until the service runs with it
  runbooks.incident.service_restart:
    units: [whatsapp-mcp-secrets.service, whatsapp-mcp.service]
    health_url: http://127.0.0.1/health
    expect:
      status: ok
      pepper_fingerprint: "{{ rotation.fingerprint }}"
      previous_pepper.fingerprint: "{{ rotation.previous_fingerprint }}"
"""

RETURN = r"""
restarted:
  description: The units restarted (none in check mode or with I(restart=false)).
  type: list
  elements: str
  returned: always
health:
  description: The /health document once it reported what was expected (empty in check mode).
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _service


def main():
    module = AnsibleModule(
        argument_spec=dict(
            units=dict(type="list", elements="str", required=True),
            restart=dict(type="bool", default=True),
            health_url=dict(type="str", required=True),
            expect=dict(type="dict", default={}),
            timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not params["health_url"].startswith(("http://", "https://")):
        module.fail_json(msg="health_url %r is not an http:// or https:// URL" % params["health_url"])
    if params["timeout"] < 1:
        module.fail_json(msg="timeout must be at least 1 second, not %d" % params["timeout"])
    if params["restart"] and not params["units"]:
        module.fail_json(msg="units is empty: name the units to restart, or pass restart=false")
    if module.check_mode:
        module.exit_json(changed=params["restart"], restarted=[], health={})
    try:
        if params["restart"]:
            _service.restart(params["units"])
        document = _service.wait(params["health_url"], params["expect"], params["timeout"])
    except _service.ServiceError as exc:
        module.fail_json(msg=str(exc), changed=params["restart"], restarted=params["units"] if params["restart"] else [])
    module.exit_json(changed=params["restart"], restarted=params["units"] if params["restart"] else [], health=document)


if __name__ == "__main__":
    main()
