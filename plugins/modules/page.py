#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: page
short_description: Page the on-call engineer through Alertmanager or PagerDuty
version_added: 0.1.0
description:
  - POSTs one alert, or its resolution, as JSON to I(url) from the managed host, and fails unless the answer is a
    2xx status (redirects are not followed). The message of a failure gives the HTTP status and the first 200
    characters of the answer.
  - A malformed I(url) (not http or https, no host, a bad port, spaces or control characters, credentials) fails
    the task before anything is sent, in check mode too.
  - C(alertmanager) (Alertmanager's C(/api/v2/alerts)) - a list with one alert, labels C(alertname) (the
    I(dedup_key)), C(severity), C(instance) (the I(source)) and C(job=runbooks.incident), annotations C(summary)
    and C(description) (the I(details) as JSON), C(startsAt) now, and C(endsAt) now when I(resolve=true).
    Alertmanager identifies an alert by its labels, so a resolve must use the same I(summary) and I(source) (or
    I(dedup_key)) and I(severity) as the trigger. Alertmanager also resolves an alert by itself when it is not sent
    again within its C(resolve_timeout) (5 minutes by default); the page goes out all the same.
  - C(pagerduty) (Events API v2, C(https://events.pagerduty.com/v2/enqueue)) - C(routing_key), C(event_action)
    (C(trigger) or C(resolve)), C(dedup_key) and C(payload) (C(summary), C(source), C(severity), C(custom_details)
    from I(details)). PagerDuty answers 202.
  - The same payloads are sent by the host-side job that pages when a scheduled job's systemd unit fails.
  - The routing key never appears in results; the payload is returned with it masked.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Sends nothing; returns the payload it would send (routing key masked) and C(changed=true).
  diff_mode:
    support: none
options:
  url:
    description: The receiver, for example C(http://alertmanager:9093/api/v2/alerts). Credentials in the URL are refused.
    type: str
    required: true
  format:
    description: Payload format.
    type: str
    choices: [alertmanager, pagerduty]
    default: alertmanager
  severity:
    description: Severity of the alert.
    type: str
    choices: [critical, error, warning, info]
    default: critical
  summary:
    description: One line saying what is wrong.
    type: str
    required: true
  source:
    description: Where it is wrong (default the managed host's name).
    type: str
  dedup_key:
    description:
      - Identifies the alert, so repeats are one incident and a resolve finds its trigger.
      - Default C(rbi-) and the first 16 hex characters of the SHA-256 of I(source), a newline and I(summary).
    type: str
  details:
    description: Structured details (never secrets).
    type: dict
  routing_key:
    description: PagerDuty integration (routing) key; required with I(format=pagerduty).
    type: str
  resolve:
    description: Send a resolve event for the alert instead of a trigger.
    type: bool
    default: false
  timeout:
    description:
      - Seconds the whole request may take - connecting, sending and the receiver's answer together (at least 1, at
        most 3600). A receiver that has not answered in full by then fails the task.
    type: int
    default: 10
  validate_certs:
    description: Verify the receiver's TLS certificate.
    type: bool
    default: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Page when the restore failed
  runbooks.incident.page:
    url: http://alertmanager.internal:9093/api/v2/alerts
    summary: "Database restore of wa_mcp failed on {{ inventory_hostname }} ({{ incident_id }})"
    details:
      incident_id: "{{ incident_id }}"
      playbook: restore_database

- name: Trigger a PagerDuty incident
  runbooks.incident.page:
    url: https://events.pagerduty.com/v2/enqueue
    format: pagerduty
    routing_key: "{{ vault_pagerduty_routing_key }}"
    severity: error
    summary: Certificate renewal failed on wa-prod-1
    dedup_key: cert-renewal-wa-prod-1

- name: Resolve it once renewed
  runbooks.incident.page:
    url: https://events.pagerduty.com/v2/enqueue
    format: pagerduty
    routing_key: "{{ vault_pagerduty_routing_key }}"
    summary: Certificate renewal failed on wa-prod-1
    dedup_key: cert-renewal-wa-prod-1
    resolve: true
"""

RETURN = r"""
payload:
  description: The JSON sent (or that would be sent, in check mode), with the routing key masked.
  returned: always
  type: raw
  sample: [{labels: {alertname: rbi-4f0c2d9a8b7e6f10, severity: critical, instance: wa-prod-1, job: runbooks.incident},
            annotations: {summary: Database restore failed, description: "{}"}, startsAt: "2026-11-22T03:00:00Z"}]
dedup_key:
  description: The alert's dedup key (give it to a later resolve).
  returned: always
  type: str
  sample: rbi-4f0c2d9a8b7e6f10
status:
  description: HTTP status of the receiver's answer.
  returned: when sent
  type: int
  sample: 202
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _page, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            format=dict(type="str", choices=list(_page.FORMATS), default="alertmanager"),
            severity=dict(type="str", choices=list(_page.SEVERITIES), default="critical"),
            summary=dict(type="str", required=True),
            source=dict(type="str"),
            dedup_key=dict(type="str", no_log=False),
            details=dict(type="dict"),
            routing_key=dict(type="str", no_log=True),
            resolve=dict(type="bool", default=False),
            timeout=dict(type="int", default=10),
            validate_certs=dict(type="bool", default=True),
        ),
        required_if=[("format", "pagerduty", ("routing_key",))],
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if params["timeout"] < 1:
        module.fail_json(msg="timeout must be at least 1 second; nothing was sent")
    source = params["source"] or socket.gethostname()
    dedup_key = params["dedup_key"] or _page.default_dedup_key(params["summary"], source)
    try:
        _page.check_url(params["url"])
        _page.check_timeout(params["timeout"])
        payload = _page.build(params["format"], params["summary"], source, dedup_key, severity=params["severity"],
                              details=params["details"], routing_key=params["routing_key"], resolve=params["resolve"])
    except _page.PageError as exc:
        module.fail_json(msg="nothing was sent: %s" % exc)
    result = dict(changed=True, payload=_page.masked(payload), dedup_key=dedup_key)
    if module.check_mode:
        module.exit_json(**result)
    try:
        result["status"] = _page.send(params["url"], payload, timeout=params["timeout"],
                                      validate_certs=params["validate_certs"], secret=params["routing_key"])
    except _page.PageError as exc:
        module.fail_json(msg="paging failed: %s" % exc, dedup_key=dedup_key)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
