# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup runbooks.incident.postgres_connection: every role turns its `<prefix>_project_dir`, `<prefix>_login_*`
variables into the postgres action group's options the same way (empty left out, the port an integer, a compose
project and a server host never both), and fails naming the variable, never showing the password."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.runbooks.incident.plugins.module_utils import _params

ROLES = Path(__file__).resolve().parents[2] / "roles"
LOOKUP = re.compile(r"""lookup\('runbooks\.incident\.postgres_connection', '(\w+)'\)""")


def test_empty_and_undefined_variables_are_left_out_and_the_port_is_a_number():
    given = {"db_backup_project_dir": "", "db_backup_login_host": "db.internal", "db_backup_login_port": "6543",
             "db_backup_login_user": "backup", "db_backup_login_password": "pw", "other_login_host": "elsewhere"}
    assert _params.postgres_connection("db_backup", given) == {
        "login_host": "db.internal", "login_port": 6543, "login_user": "backup", "login_password": "pw"}
    assert _params.postgres_connection("x", {"x_project_dir": "/opt/app", "x_login_user": "wa", "x_compose_service": None}) == {
        "compose_project_dir": "/opt/app", "login_user": "wa"}
    assert not _params.postgres_connection("x", {})


@pytest.mark.parametrize("port", ["0", "65536", "54x", "-1", True, "5432 ; drop"])
def test_a_port_that_is_not_one_is_refused_naming_the_variable(port):
    with pytest.raises(ValueError, match=r"^triage_db_login_port is not a TCP port number"):
        _params.postgres_connection("triage_db", {"triage_db_login_port": port})


def test_a_project_and_a_host_together_are_refused_without_showing_the_password():
    with pytest.raises(ValueError) as raised:
        _params.postgres_connection("rollback", {"rollback_project_dir": "/opt/whatsapp-mcp", "rollback_login_host": "db",
                                                 "rollback_login_password": "hunter2-secret"})
    assert str(raised.value) == ("rollback_project_dir and rollback_login_host are both set: empty rollback_project_dir "
                                 "to reach the server with libpq")
    assert "hunter2" not in str(raised.value)


def test_the_lookup_templates_the_variables_in_a_play(ansible_play):
    tasks = [{"name": "connection", "ansible.builtin.set_fact": {
        "connection": "{{ lookup('runbooks.incident.postgres_connection', 'db_restore') }}"}}]
    result = ansible_play(tasks, extra_vars={"base": "/srv/chat", "db_restore_project_dir": "{{ base }}/app",
                                             "db_restore_login_user": "wa", "db_restore_login_port": 5433,
                                             "db_restore_login_host": ""})
    assert result.rc == 0, result.stdout[-2000:] + result.stderr
    assert result["connection"]["ansible_facts"]["connection"] == {
        "compose_project_dir": "/srv/chat/app", "login_user": "wa", "login_port": 5433}

    both = ansible_play(tasks, extra_vars={"db_restore_project_dir": "/opt/x", "db_restore_login_host": "db",
                                           "db_restore_login_password": "pw-not-shown"})
    assert both.rc != 0 and "db_restore_project_dir and db_restore_login_host are both set" in both.stdout
    assert "pw-not-shown" not in both.stdout + both.stderr
    bad = ansible_play([{"name": "x", "ansible.builtin.debug": {"msg": "{{ lookup('runbooks.incident.postgres_connection') }}"}}])
    assert bad.rc != 0 and "takes one term, the prefix of the role's variables" in bad.stdout


def test_every_role_connection_comes_from_the_lookup_with_its_own_variables():
    """No role builds the options by hand, and the prefix it passes names variables its defaults define."""
    users = {}
    for vars_file in sorted(ROLES.glob("*/vars/main.yml")):
        role, text = vars_file.parts[-3], vars_file.read_text()
        assert "'login_user':" not in text and "login_user:" not in text, "%s builds the connection by hand" % vars_file
        for prefix in LOOKUP.findall(text):
            defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
            assert {"%s_project_dir" % prefix, "%s_login_user" % prefix} <= set(defaults), (role, prefix)
            users[role] = prefix
    assert len(users) >= 9, users
