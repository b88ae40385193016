# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The re-bootstrapped host, checked from inside: healthy service, units, secrets modes, journal trail, no leak."""
from __future__ import annotations

import json

import pytest

SERVICE_UNITS = ["whatsapp-mcp-secrets.service", "whatsapp-mcp.service"]


def health(host):
    return json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))


def test_health_reports_db_and_secrets_ok(host):
    report = health(host)
    assert report["status"] == "ok"
    assert report["checks"]["db"] == "ok" and report["checks"]["secrets"] == "ok"


@pytest.mark.parametrize("unit", SERVICE_UNITS)
def test_units_enabled_and_active(host, unit):
    service = host.service(unit)
    assert service.is_enabled and service.is_running


def test_compose_stack_runs_all_services(host):
    services = host.check_output("docker compose --project-directory /opt/whatsapp-mcp ps --services --status running").split()
    assert sorted(services) == ["app", "graph", "nginx", "postgres"]


def test_secrets_materialized_with_tight_modes(host):
    secrets_dir = host.file("/run/secrets")
    assert secrets_dir.is_directory and secrets_dir.mode == 0o750 and secrets_dir.group == "whatsapp-mcp-secrets"
    for name in ("api_key_pepper", "auth_jwt_secret", "db_password"):
        secret = host.file(f"/run/secrets/{name}")
        assert secret.mode == 0o400 and secret.user == "whatsapp-mcp", name


def test_age_key_is_root_only(host):
    key = host.file("/etc/whatsapp-mcp/age.key")
    assert key.mode == 0o400 and key.user == "root" and key.group == "whatsapp-mcp-secrets"
    assert key.content_string.startswith("# created:") or "AGE-SECRET-KEY-" in key.content_string


def test_secrets_come_back_after_a_reboot_of_the_units(host):
    # /run/secrets is a tmpfs: wipe it as a reboot would, restart the units, and the service must come back.
    host.check_output("systemctl stop whatsapp-mcp && rm -rf /run/secrets && systemctl restart whatsapp-mcp-secrets && systemctl start whatsapp-mcp")
    assert health(host)["status"] == "ok"


def test_journal_holds_the_run_markers(host):
    markers = host.check_output("journalctl -t runbooks-incident --no-pager -o cat")
    assert "BEGIN incident=MOLECULE-REBOOTSTRAP playbook=Re-bootstrap a whatsapp-mcp host" in markers
    assert "outcome=success" in markers
    assert not host.file("/run/runbooks-incident/run.lock").exists


def test_no_secret_value_in_the_journal(host):
    journal = host.check_output("journalctl --no-pager -o cat")
    for name in ("api_key_pepper", "auth_jwt_secret", "db_password"):
        value = host.check_output(f"cat /run/secrets/{name}").strip()
        assert len(value) >= 16 and value not in journal, name
