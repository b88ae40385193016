# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What extensions/eda/rulebooks/alertmanager.yml may start: only the safe runbooks directly, the destructive ones
through their AWX workflow (a dry run, then a person's approval), each by a name awx/ defines."""
from __future__ import annotations

from pathlib import Path

import yaml

from awxdata import definitions  # pylint: disable=import-error

REPO_ROOT = Path(__file__).resolve().parents[2]
RULEBOOK = REPO_ROOT / "extensions" / "eda" / "rulebooks" / "alertmanager.yml"
# Runbooks an alert may start without a person: read-only, or they add without destroying (a renewal only when the
# served certificate is not right, a new backup, evidence copied) - and the restart triage names.
SAFE = {"playbooks/triage.yml", "playbooks/renew_certificate.yml", "playbooks/backup_failed.yml", "playbooks/backup_database.yml",
        "playbooks/preserve_evidence.yml", "playbooks/storage_full.yml", "playbooks/incident_declare.yml",
        "playbooks/service_not_starting.yml"}


def actions():
    for ruleset in yaml.safe_load(RULEBOOK.read_text()):
        for rule in ruleset["rules"]:
            for action in rule.get("actions", [rule.get("action")]):
                yield rule, action


def test_alerts_start_only_safe_runbooks_and_open_workflows_for_the_rest():
    defined = definitions()
    playbook_of = {template["name"]: template["playbook"] for template in defined["controller_templates"]}
    workflows = {workflow["name"] for workflow in defined["controller_workflows"]}
    # What AWX takes at launch: the survey's variables (it drops the others), a limit only where the template asks.
    launchable = {item["name"]: item for item in defined["controller_templates"] + defined["controller_workflows"]}
    started = set()
    for rule, action in actions():
        (kind, args), = action.items()
        if kind == "run_job_template":
            assert args["name"] in playbook_of, (rule["name"], args["name"])
            assert playbook_of[args["name"]] in SAFE, f"{rule['name']}: {playbook_of[args['name']]} must go through a workflow"
            started.add(playbook_of[args["name"]])
        elif kind == "run_workflow_template":
            assert args["name"] in workflows, (rule["name"], args["name"])
        else:
            raise AssertionError(f"{rule['name']}: {kind} is neither a job template nor a workflow")
        assert "incident_id" in args["job_args"]["extra_vars"], rule["name"]  # every run joins the alert's incident
        template = launchable[args["name"]]
        asked = {question["variable"] for question in template["survey_spec"]["spec"]}
        assert set(args["job_args"]["extra_vars"]) <= asked, (rule["name"], set(args["job_args"]["extra_vars"]) - asked)
        assert "limit" not in args["job_args"] or template["ask_limit_on_launch"], rule["name"]
        assert args.get("include_events") is False, rule["name"]
        if args["job_args"]["extra_vars"].get("confirm") == "true":
            assert kind == "run_workflow_template" or playbook_of[args["name"]] == "playbooks/service_not_starting.yml", rule["name"]
    assert started == SAFE


def test_every_alert_rule_acts_only_within_the_guardrails():
    for rule, _action in actions():
        condition = rule["condition"]
        assert 'event.guard.decision == "run"' in condition or "event.guard.notify == true" in condition \
            or condition.startswith("event.triage_restart is defined"), rule["name"]
