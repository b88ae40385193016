# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX / AAP definitions under awx/ (docs/awx.md), without an AWX: each one against the argument spec of the
awx.awx module that applies it (as ansible-doc gives it), after Ansible rendered its templates as
playbooks/awx_configure.yml reads them; the references between them; the surveys against AWX's rules and against
the playbooks they launch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from awxdata import definitions  # pylint: disable=import-error

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Each kind of definition and the awx.awx module awx_configure.yml applies it with.
MODULES = {
    "controller_credential_types": "credential_type",
    "controller_credentials": "credential",
    "controller_execution_environments": "execution_environment",
    "controller_projects": "project",
    "controller_inventories": "inventory",
    "controller_inventory_sources": "inventory_source",
    "controller_notifications": "notification_template",
    "controller_templates": "job_template",
    "controller_workflows": "workflow_job_template",
    "controller_teams": "team",
    "controller_roles": "role",
}
# Keys of the data format that are not module options (infra.aap_configuration's own).
FORMAT_KEYS = {"controller_workflows": {"simplified_workflow_nodes"}}
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
BUILT_IN_CREDENTIAL_TYPES = {"Machine"}


@pytest.fixture(scope="module", name="defined")
def defined_fixture():
    return definitions()


@pytest.fixture(scope="module", name="specs")
def specs_fixture():
    """{module: argument spec} of the awx.awx modules, from their documentation (what ansible-doc shows)."""
    names = ["awx.awx." + name for name in {*MODULES.values(), "workflow_job_template_node"}]
    docs = json.loads(subprocess.run([str(BIN / "ansible-doc"), "--json", *names], capture_output=True, text=True, check=True).stdout)

    def spec(options):
        converted = {}
        for name, option in options.items():
            entry = {key: option[key] for key in ("type", "choices", "elements", "required", "aliases") if key in option}
            if "suboptions" in option:
                entry["options"] = spec(option["suboptions"])
            converted[name] = entry
        return converted

    return {name.split(".")[-1]: spec(doc["doc"]["options"]) for name, doc in docs.items()}


def errors(spec, params):
    return [str(error) for error in ArgumentSpecValidator(spec).validate(params).errors]


def test_every_definition_is_valid_for_the_module_that_applies_it(defined, specs):
    for kind, module in MODULES.items():
        assert defined[kind], kind
        for item in defined[kind]:
            params = {key: value for key, value in item.items() if key not in FORMAT_KEYS.get(kind, ())}
            assert not errors(specs[module], params), (kind, item.get("name"), errors(specs[module], params))
    for workflow in defined["controller_workflows"]:
        for node in workflow["simplified_workflow_nodes"]:
            params = dict(node, workflow_job_template=workflow["name"], organization=workflow["organization"])
            assert not errors(specs["workflow_job_template_node"], params), (workflow["name"], node["identifier"])


def configure_tasks():
    return yaml.safe_load((REPO_ROOT / "playbooks" / "awx_configure.yml").read_text())[0]["tasks"]


def configure_arguments(tasks):
    """{kind: the options awx_configure.yml passes for each item of that kind}."""
    passed = {}
    for task in tasks:
        found = re.search(r"(controller_\w+)", str(task.get("loop", "")))
        if found:
            module = next(key for key in task if key.startswith("awx.awx."))
            passed.setdefault(found.group(1), set()).update(task[module])
    return passed


def test_awx_configure_applies_every_option_the_definitions_give(defined):
    """A key of the data that awx_configure.yml does not pass on would be silently left out of AWX."""
    tasks = configure_tasks()
    passed = configure_arguments(tasks)
    assert set(passed) == set(MODULES)
    for kind in MODULES:
        given = {key for item in defined[kind] for key in item} - FORMAT_KEYS.get(kind, set())
        assert given <= passed[kind], (kind, given - passed[kind])
    node_keys = {key for workflow in defined["controller_workflows"] for node in workflow["simplified_workflow_nodes"] for key in node}
    node_tasks = [task["awx.awx.workflow_job_template_node"] for task in tasks if "awx.awx.workflow_job_template_node" in task]
    assert node_keys <= {key for task in node_tasks for key in task}


def test_every_runbook_has_one_job_template_and_every_template_a_runbook(defined):
    playbooks = {f"playbooks/{path.name}" for path in (REPO_ROOT / "playbooks").glob("*.yml")} - {"playbooks/awx_configure.yml"}
    templated = [template["playbook"] for template in defined["controller_templates"]]
    assert sorted(templated) == sorted(playbooks)
    names = [template["name"] for template in defined["controller_templates"]]
    assert len(set(names)) == len(names)


def test_the_definitions_name_what_exists(defined):
    credentials = {credential["name"] for credential in defined["controller_credentials"]}
    types = {kind["name"] for kind in defined["controller_credential_types"]} | BUILT_IN_CREDENTIAL_TYPES
    notifications = {notification["name"] for notification in defined["controller_notifications"]}
    templates = {template["name"]: template for template in defined["controller_templates"]}
    teams = {team["name"] for team in defined["controller_teams"]}
    assert {credential["credential_type"] for credential in defined["controller_credentials"]} <= types
    for template in templates.values():
        assert set(template.get("credentials", [])) <= credentials, template["name"]
    for workflow in defined["controller_workflows"]:
        assert set(workflow.get("notification_templates_error", [])) | set(workflow.get("notification_templates_approvals", [])) <= notifications
        nodes = {node["identifier"]: node for node in workflow["simplified_workflow_nodes"]}
        for node in nodes.values():
            assert set(node.get("success_nodes", [])) | set(node.get("failure_nodes", [])) <= set(nodes), workflow["name"]
            if "unified_job_template" in node:
                template = templates[node["unified_job_template"]]
                # A node's job type is only taken when the template asks for it at launch.
                assert "job_type" not in node or template["ask_job_type_on_launch"] is True, (workflow["name"], node["identifier"])
                assert workflow["survey_spec"] == template["survey_spec"], workflow["name"]
    for role in defined["controller_roles"]:
        assert role["team"] in teams
        assert set(role.get("job_templates", [])) <= set(templates)
        assert set(role.get("workflows", [])) <= {workflow["name"] for workflow in defined["controller_workflows"]}
        assert set(role.get("credentials", [])) <= credentials


def test_destructive_runbooks_are_workflows_with_a_dry_run_then_an_approval(defined):
    for workflow in defined["controller_workflows"]:
        nodes = workflow["simplified_workflow_nodes"]
        first, approval, run = nodes
        assert first["job_type"] == "check" and first["success_nodes"] == [approval["identifier"]]
        assert approval["approval_node"]["timeout"] > 0 and approval["success_nodes"] == [run["identifier"]]
        assert run["job_type"] == "run" and run["unified_job_template"] == first["unified_job_template"]
        assert workflow["notification_templates_error"] and workflow["notification_templates_approvals"]


def surveys(defined):
    yield from ((template["name"], template["survey_spec"]["spec"]) for template in defined["controller_templates"])


def test_the_surveys_follow_awx_rules(defined):
    for name, spec in surveys(defined):
        variables = [question["variable"] for question in spec]
        assert len(set(variables)) == len(variables), name
        assert spec[0]["variable"] == "incident_id" and spec[0]["required"] is True, name
        for question in spec:
            where = (name, question["variable"])
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", question["variable"]) and question["question_name"], where
            assert question["type"] in SURVEY_TYPES, where
            default = question.get("default", "")
            if question["type"] in ("multiplechoice", "multiselect"):
                choices = question["choices"]
                assert choices and all(isinstance(choice, str) and choice for choice in choices), where
                given = default.split("\n") if question["type"] == "multiselect" and default else [default] if default else []
                assert set(given) <= set(choices), where
            if question["type"] == "integer" and default != "":
                assert question.get("min", default) <= default <= question.get("max", default), where
            if question["type"] == "password":  # a secret comes from a credential, but a paper share is typed in
                assert re.fullmatch(r"age_key_share_[1-5]", question["variable"]), where


def test_yes_no_questions_are_the_choices_false_and_true(defined):
    """AWX surveys have no boolean type: the playbooks read "true"/"false" with | bool."""
    for name, spec in surveys(defined):
        for question in spec:
            if question["variable"] in ("confirm",) or set(question.get("choices", [])) & {"true", "false"}:
                assert question["type"] == "multiplechoice" and question["choices"] == ["false", "true"], (name, question["variable"])


# What a playbook's header documents as an input but no survey asks, and why (docs/awx.md).
NOT_ASKED = {
    "target": "the hosts come from the inventory and the launch's limit",
    "access_token": "a secret: the credential runbooks: WhatsApp access token",
    "whatsapp_mcp_age_key_share_files": "files on the controller, which an AWX job does not have",
    "whatsapp_mcp_age_key_shares": "asked as age_key_share_1 to age_key_share_5, a password question per share",
    "node_down_limits": "a mapping, which no survey type sends",
    "storage_full_expired_rows": "a list of mappings, which no survey type sends",
}


def code_lines(path):
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def roles_of(text):
    return set(re.findall(r"runbooks\.incident\.([a-z_]+)\b", text)) & {path.name for path in (REPO_ROOT / "roles").iterdir()}


def read_by(playbook):
    """The code a playbook runs: its own lines and those of the roles it imports, and of the roles those import."""
    text = code_lines(REPO_ROOT / playbook)
    seen, todo = set(), roles_of(text)
    while todo:
        role = todo.pop()
        seen.add(role)
        for path in (REPO_ROOT / "roles" / role).glob("*/*.yml"):
            if path.parent.name in ("defaults", "vars", "tasks", "handlers"):
                body = code_lines(path)
                text += "\n" + body
                todo |= roles_of(body) - seen
    return text


def documented_inputs(playbook):
    """The inputs a playbook's header shows: -e name=..., -e '{"name": ...}' and its AWX survey line."""
    header = []
    for line in (REPO_ROOT / playbook).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        if not set(re.findall(r"(\w+\.yml)\b", line)) - {Path(playbook).name}:  # not another runbook's example
            header.append(line)
    text = "\n".join(header)
    found = set(re.findall(r"-e (\w+)=", text)) | set(re.findall(r"""-e '\{"(\w+)":""", text))
    for survey in re.findall(r"AWX survey: ([^.]*)", text.replace("\n# ", " ")):
        found |= set(re.findall(r"(\w+) \(", survey))
    return found


def test_each_survey_asks_what_its_playbook_reads_and_every_input_it_documents(defined):
    for template in defined["controller_templates"]:
        playbook = template["playbook"]
        code = read_by(playbook)
        asked = {question["variable"] for question in template["survey_spec"]["spec"]}
        unread = {variable for variable in asked if not re.search(r"\b%s\b" % variable, code)}
        assert not unread, f"{playbook}: the survey asks for {sorted(unread)}, which nothing it runs reads"
        missing = documented_inputs(playbook) - asked - set(NOT_ASKED)
        assert not missing, f"{playbook}: no survey field for {sorted(missing)}, which its header documents"
