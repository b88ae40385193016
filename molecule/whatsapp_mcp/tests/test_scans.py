# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks every scenario's runs go through can fail: the exec capture sees a program that lives a moment in a
container nested in the host, and unchanged() sees a change to a file's mode, a database row and a container."""
from __future__ import annotations

import subprocess
import uuid

import pytest

from conftest import restored, unchanged  # pylint: disable=import-error
from exec_audit import KEY_PREFIX, ExecAudit  # pylint: disable=import-error

PSQL = "docker compose --project-directory /opt/whatsapp-mcp exec -T postgres psql -U wa -d wa_mcp -At"


def test_the_exec_capture_sees_a_short_program_in_a_nested_container(host):
    marker = "runbooks-marker-" + uuid.uuid4().hex
    audit = ExecAudit().start()
    try:
        host.check_output(f"docker exec whatsapp-mcp-app-1 /bin/true {marker}")
    finally:
        execs = audit.stop()
    assert [b"/bin/true", marker.encode()] in [argv for _stamp, argv in execs]


def test_a_capture_killed_before_it_stopped_does_not_record_for_ever():
    dead = subprocess.Popen(["true"])
    dead.wait()
    rule = ["always,exit", "-F", "arch=b64", "-S", "execve", "-k", f"{KEY_PREFIX}{dead.pid}-left"]
    subprocess.run(["auditctl", "-a", *rule], check=True)
    try:
        ExecAudit().start().stop()
        listed = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["auditctl", "-d", *rule], capture_output=True, check=False)
    assert f"{KEY_PREFIX}{dead.pid}-left" not in listed


@pytest.mark.parametrize("change, seen", [
    ("chmod 0644 /etc/whatsapp-mcp/age.key", "/etc/whatsapp-mcp/age.key changed (mode)"),
    (f"""{PSQL} -c "INSERT INTO clients (name, contact_email) VALUES ('runbooks-scan-check', 'c@example.com')" """,
     "table: clients changed"),
    ("docker restart whatsapp-mcp-graph-1", "/whatsapp-mcp-graph-1 changed"),
])
def test_unchanged_fails_on_a_change(host, change, seen):
    try:
        with restored(host, "/etc/whatsapp-mcp/age.key"):
            with pytest.raises(AssertionError) as failure:
                with unchanged():
                    host.check_output(change)
    finally:
        host.check_output(f"""{PSQL} -c "DELETE FROM clients WHERE name = 'runbooks-scan-check'" """)
    assert seen in str(failure.value)
