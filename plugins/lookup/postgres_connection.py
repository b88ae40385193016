# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: postgres_connection
short_description: A role's PostgreSQL connection options, for module_defaults of group/runbooks.incident.postgres
version_added: 0.1.0
description:
  - Builds the options of doc fragment runbooks.incident.postgres from a role's variables C(<prefix>_project_dir),
    C(<prefix>_compose_service), C(<prefix>_login_user), C(<prefix>_login_password), C(<prefix>_login_host) and
    C(<prefix>_login_port), so every role turns its variables into a connection the same way.
  - A variable not defined or empty is left out. Emptying C(<prefix>_project_dir) and setting C(<prefix>_login_host)
    reaches the server with libpq instead of through the compose project.
  - Fails, naming the variable, when the port is not a TCP port or when the project directory and the host are both
    set. The password is never shown.
options:
  _terms:
    description: The prefix of the role's variables, e.g. C(db_backup) or C(triage_db).
    type: list
    elements: str
    required: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Count the rows with the role's connection
  runbooks.incident.pg_row_counts:
    db: whatsapp_mcp
  module_defaults:
    group/runbooks.incident.postgres: "{{ lookup('runbooks.incident.postgres_connection', 'db_backup') }}"
"""

RETURN = r"""
_list:
  description: One dictionary of connection options (option name to value).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.runbooks.incident.plugins.module_utils import _params


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 1 or not isinstance(terms[0], str) or not terms[0]:
            raise AnsibleLookupError("postgres_connection takes one term, the prefix of the role's variables (e.g. 'db_backup')")
        prefix = terms[0]
        variables = variables or {}
        given = {}
        for suffix in _params.CONNECTION_VARIABLES.values():
            name = "%s_%s" % (prefix, suffix)
            if name in variables:
                given[name] = self._templar.template(variables[name])
        try:
            return [_params.postgres_connection(prefix, given)]
        except ValueError as exc:
            raise AnsibleLookupError(str(exc)) from None
