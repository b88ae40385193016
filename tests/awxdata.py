# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX / AAP definitions under awx/ as playbooks/awx_configure.yml reads them: every file's variables, their
templates rendered by Ansible (the !unsafe ones, AWX's own injector templates, left as written)."""
from __future__ import annotations

from pathlib import Path

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

AWX_DIR = Path(__file__).resolve().parents[1] / "awx"
# What an admin's vault file holds (awx/settings.yml, runbooks_awx_secrets): stand-ins, to render the definitions.
SECRETS = {name: "secret-" + name for name in (
    "ssh_key", "age_key", "offsite_access_key", "offsite_secret_key", "tsig_secret", "pagerduty_routing_key", "slack_webhook_url",
    "statuspage_api_key", "deploy_key", "access_token", "monitoring_api_key", "notification_url")}


def definitions(**overrides):
    """{controller_templates: [...], controller_workflows: [...], ...}: awx/settings.yml first, then the others, as
    awx_configure.yml loads them, rendered with `overrides` as extra vars (runbooks_awx_secrets: SECRETS)."""
    loader = DataLoader()
    variables = loader.load_from_file(str(AWX_DIR / "settings.yml"), trusted_as_template=True)
    for path in sorted(AWX_DIR.glob("*.yml")):
        if path.name != "settings.yml":
            variables.update(loader.load_from_file(str(path), trusted_as_template=True))
    variables.update({"runbooks_awx_secrets": SECRETS, **overrides})
    templar = Templar(loader=loader, variables=variables)
    return {name: templar.template(value) for name, value in variables.items() if name.startswith("controller_")}
