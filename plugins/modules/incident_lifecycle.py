#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: incident_lifecycle
short_description: Declare, update and resolve an incident, notifying PagerDuty, Slack, Statuspage and e-mail
version_added: 0.1.0
description:
  - Keeps an incident's state on the controller (run it there - C(delegate_to=localhost)) in
    C(<incident_dir>/<incident_id>/incident.json) - severity and its changes, status, summary, detection,
    declaration and resolution times, the Statuspage incident's id, and the history of every change with the result
    of each notification it sent. The file is written atomically, mode 0600, in directories of mode 0700; no
    symlink is followed (the incident's own directory must not be one); a lock is held from reading it to writing
    it. A state file that cannot be read as one is reported and kept, unless I(force=true).
  - C(declare) declares the incident and notifies every configured channel. Declaring an incident already declared
    joins it - nothing is sent and C(changed=false) - unless the severity differs, which is an update (an escalation
    when more severe).
  - C(update) records a new severity, status, summary or detection time (an update with nothing new changes
    nothing). C(resolve) resolves it (again - nothing). C(update) and C(resolve) of an incident never declared fail.
  - C(outcome) records how a playbook run under the incident ended (a run before any declaration starts the
    record); it is sent to Slack only, nobody is paged.
  - PagerDuty (Events API v2, dedup key the incident id) - C(trigger) on declare and on an update raising the
    severity, C(acknowledge) on the first update to C(identified) or C(monitoring), C(resolve) on resolve.
    Statuspage - the incident is created on declare (on an update if that failed) and changed on update and
    resolve. Slack-compatible webhook - every change and outcome. E-mail - every change.
  - A channel is used only when configured (PagerDuty with a routing key, Slack with a webhook URL, Statuspage with
    a page id and an API key, e-mail with a host and recipients; empty values are off, so a role can pass them
    all). A notification that fails (no connection, an HTTP error, a timeout) never fails the task - it is
    recorded, returned in I(notifications) and counted in I(failed_notifications), with a warning.
  - No secret (routing key, webhook URL, API key, SMTP password) is written to the state or shown in results,
    warnings or messages. A Slack webhook is named by its host, its path being its token.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.incident
attributes:
  check_mode:
    support: full
    details: Returns the incident as it would be and the notifications it would send; sends and writes nothing.
  diff_mode:
    support: none
options:
  event:
    description: What happens to the incident.
    type: str
    required: true
    choices: [declare, update, resolve, outcome]
  severity:
    description:
      - C(P0) (most severe) to C(P3); required to declare a new incident (joining one needs none). On update, a
        new severity is recorded as a change (escalation or de-escalation).
    type: str
    choices: [P0, P1, P2, P3]
  status:
    description:
      - Statuspage's words. Declare starts at C(investigating) unless given; only C(resolve) sets C(resolved).
    type: str
    choices: [investigating, identified, monitoring, resolved]
  summary:
    description:
      - What is wrong (declare, the incident's title) or what changed (update, resolve). Never a secret.
      - With C(outcome), a line recorded with the outcome.
    type: str
  detected:
    description: When the problem was detected (ISO-8601; UTC without a zone), for the time from detection to declaration.
    type: str
  outcome:
    description: How the playbook run ended; required with I(event=outcome).
    type: str
    choices: [ok, failed]
  playbook:
    description: The playbook whose run ended, with I(event=outcome).
    type: str
  incident_dir:
    description:
      - Where incidents are kept, one directory each. Default the environment variable C(RUNBOOKS_INCIDENT_DIR),
        else C(incidents) in the current directory.
    type: path
  severity_levels:
    description:
      - The severity levels, merged over the defaults (the seeds' P0 to P3) - for each level C(name), C(meaning),
        C(examples), C(response_minutes) (the response target), C(pagerduty_severity) (C(critical), C(error),
        C(warning) or C(info)) and C(statuspage_impact) (C(none), C(minor), C(major) or C(critical)).
      - Default P0 Critical (service down or data lost, 15 min, critical), P1 High (major degradation, 60 min, error),
        P2 Medium (minor degradation, 240 min, warning), P3 Low (minimal impact, 1440 min, info).
    type: dict
    default: {}
  pagerduty_url:
    description: PagerDuty's Events API v2 endpoint.
    type: str
    default: https://events.pagerduty.com/v2/enqueue
  pagerduty_routing_key:
    description: The PagerDuty integration's routing key (secret); without it PagerDuty is off.
    type: str
  pagerduty_source:
    description: The PagerDuty alert's C(payload.source).
    type: str
    default: runbooks.incident
  slack_webhook_url:
    description:
      - A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat), secret - its path is its token;
        without it the webhook is off.
    type: str
  statuspage_url:
    description: The Statuspage API's base URL.
    type: str
    default: https://api.statuspage.io/v1
  statuspage_page_id:
    description: The Statuspage page's id; without it (or the API key) Statuspage is off.
    type: str
  statuspage_api_key:
    description: The Statuspage API key (secret), sent as C(Authorization - OAuth <key>).
    type: str
  statuspage_component_ids:
    description: The Statuspage components the incident affects.
    type: list
    elements: str
    default: []
  email_host:
    description: The SMTP relay; without it (or recipients) e-mail is off.
    type: str
  email_port:
    description: The SMTP relay's port.
    type: int
    default: 25
  email_sender:
    description: The e-mails' C(From) address.
    type: str
    default: runbooks-incident@localhost
  email_recipients:
    description: Who gets the e-mails.
    type: list
    elements: str
    default: []
  email_starttls:
    description: Upgrade the SMTP connection with STARTTLS before anything is sent.
    type: bool
    default: false
  email_username:
    description: The SMTP relay's login, if it wants one.
    type: str
  email_password:
    description: Its password (secret).
    type: str
  notify:
    description: Send notifications; C(false) only records the change.
    type: bool
    default: true
  timeout:
    description: Seconds each notification may take (at least 1, at most 3600).
    type: int
    default: 10
  validate_certs:
    description: Verify the TLS certificates of the receivers and the relay.
    type: bool
    default: true
  force:
    description: Move a state file that is not one aside (C(incident.json.corrupt-<time>)) and start the incident anew.
    type: bool
    default: false
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Declare the incident, page and post it
  runbooks.incident.incident_lifecycle:
    incident_id: INC-2026-0042
    event: declare
    severity: P1
    summary: Messages are not delivered
    detected: "2026-12-06T03:02:00Z"
    pagerduty_routing_key: "{{ vault_pagerduty_routing_key }}"
    slack_webhook_url: "{{ vault_slack_webhook_url }}"
    statuspage_page_id: kctbh9vrtdwd
    statuspage_api_key: "{{ vault_statuspage_api_key }}"
  delegate_to: localhost
  run_once: true

- name: Escalate it
  runbooks.incident.incident_lifecycle:
    incident_id: INC-2026-0042
    event: update
    severity: P0
    status: identified
    summary: The database is corrupt; restoring last night's backup
  delegate_to: localhost
  run_once: true

- name: Record how this run ended
  runbooks.incident.incident_lifecycle:
    incident_id: INC-2026-0042
    event: outcome
    outcome: ok
    playbook: restore_database
  delegate_to: localhost
  run_once: true

- name: Resolve it
  runbooks.incident.incident_lifecycle:
    incident_id: INC-2026-0042
    event: resolve
    summary: Restored and verified; messages flow again
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
incident:
  description: The incident's state after the change (as it would be, in check mode); it holds no secret.
  returned: success
  type: dict
  sample:
    id: INC-2026-0042
    severity: P0
    severity_changes: [{time: "2026-12-06T03:20:00Z", from: P1, to: P0, escalation: true}]
    status: identified
    title: Messages are not delivered
    summary: The database is corrupt; restoring last night's backup
    detected: "2026-12-06T03:02:00Z"
    declared: "2026-12-06T03:05:00Z"
    resolved: null
    updated: "2026-12-06T03:20:00Z"
    statuspage_incident_id: p31zjtct2jer
    pagerduty_acknowledged: false
    response_target_minutes: 60
    metrics: {detect_to_declare_seconds: 180, declare_to_resolve_seconds: null, detect_to_resolve_seconds: null}
    history: [{event: declare, time: "2026-12-06T03:05:00Z", severity: P1, status: investigating,
               summary: Messages are not delivered, notifications: []}]
notifications:
  description:
    - The notifications of this change - C(channel) (C(pagerduty), C(slack), C(statuspage), C(email)), C(action)
      (C(trigger), C(acknowledge), C(resolve), C(message), C(create), C(update), C(send)) and C(time); sent - C(ok),
      and C(status) (HTTP status, 250 for e-mail) or C(error); in check mode C(would_send=true) instead.
  returned: success
  type: list
  elements: dict
  sample: [{channel: pagerduty, action: trigger, time: "2026-12-06T03:05:00Z", ok: true, status: 202},
           {channel: slack, action: message, time: "2026-12-06T03:05:00Z", ok: false, error: "https://hooks.slack.com/... answered HTTP 500"}]
failed_notifications:
  description: How many of I(notifications) failed.
  returned: success
  type: int
  sample: 0
timeline_events:
  description:
    - Events for the timeline callback - one for the change (C(kind) C(declared), C(updated), C(resolved) or
      C(outcome)) and one per notification sent (C(kind=notification)); empty for a join, a change that changes
      nothing, and in check mode (nothing happened).
    - Each has C(kind), C(time) (UTC, C(Z)) and C(summary); a change C(severity), C(status) and C(detected) (when
      known); an outcome and a notification C(ok); a notification C(channel).
  returned: success
  type: list
  elements: dict
  sample: [{kind: declared, time: "2026-12-06T03:05:00Z", summary: Messages are not delivered, severity: P1,
            status: investigating, detected: "2026-12-06T03:02:00Z"},
           {kind: notification, time: "2026-12-06T03:05:00Z", channel: pagerduty, ok: true, summary: "pagerduty trigger: HTTP 202"}]
state_file:
  description: The incident's state file.
  returned: success
  type: str
  sample: /srv/incidents/INC-2026-0042/incident.json
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _lifecycle, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            incident_id=dict(type="str", required=True),
            event=dict(type="str", required=True, choices=list(_lifecycle.EVENTS)),
            severity=dict(type="str", choices=list(_lifecycle.SEVERITY_NAMES)),
            status=dict(type="str", choices=list(_lifecycle.STATUSES)),
            summary=dict(type="str"),
            detected=dict(type="str"),
            outcome=dict(type="str", choices=list(_lifecycle.OUTCOMES)),
            playbook=dict(type="str"),
            incident_dir=dict(type="path"),
            severity_levels=dict(type="dict", default={}),
            pagerduty_url=dict(type="str", default="https://events.pagerduty.com/v2/enqueue"),
            pagerduty_routing_key=dict(type="str", no_log=True),
            pagerduty_source=dict(type="str", default="runbooks.incident"),
            slack_webhook_url=dict(type="str", no_log=True),
            statuspage_url=dict(type="str", default="https://api.statuspage.io/v1"),
            statuspage_page_id=dict(type="str"),
            statuspage_api_key=dict(type="str", no_log=True),
            statuspage_component_ids=dict(type="list", elements="str", default=[]),
            email_host=dict(type="str"),
            email_port=dict(type="int", default=25),
            email_sender=dict(type="str", default="runbooks-incident@localhost"),
            email_recipients=dict(type="list", elements="str", default=[]),
            email_starttls=dict(type="bool", default=False),
            email_username=dict(type="str"),
            email_password=dict(type="str", no_log=True),
            notify=dict(type="bool", default=True),
            timeout=dict(type="int", default=10),
            validate_certs=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
        ),
        required_if=[("event", "outcome", ("outcome",))],
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    try:
        result = _lifecycle.apply(params, check_mode=module.check_mode)
    except (_lifecycle.LifecycleError, OSError) as exc:
        module.fail_json(msg="incident %s, %s: %s; nothing was sent or changed" % (params["incident_id"], params["event"], exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
