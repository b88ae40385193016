# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: injected_secret
short_description: A secret an AWX credential injected as a file, named by its environment variable
version_added: 0.1.0
description:
  - The collection's AWX credential types (awx/credential_types.yml) inject each secret as a file of the job's private
    data directory and name it in the environment as C(RUNBOOKS_<NAME>_FILE), never as an extra variable (extra
    variables are shown in the job's details and kept in its artifacts). This lookup returns the content of that file,
    exactly, for the inventory variable the roles read (inventories/example/group_vars/all.yml).
  - Without the environment variable (no such credential on the job, a run from a shell) it returns an empty string,
    which the roles read as "not given"; a variable naming a file that cannot be read fails, naming the variable.
options:
  _terms:
    description: The secrets' names, lower case (C(age_key) reads the file named by C(RUNBOOKS_AGE_KEY_FILE)).
    type: list
    elements: str
    required: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
# inventories/<env>/group_vars/all.yml
whatsapp_mcp_age_key: "{{ lookup('runbooks.incident.injected_secret', 'age_key') }}"
offsite_sync_secret_key: "{{ lookup('runbooks.incident.injected_secret', 'offsite_secret_key') }}"
"""

RETURN = r"""
_list:
  description: The content of each secret's file, or an empty string when its variable is not set.
  type: list
  elements: str
"""

import os
import re

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def variable_of(name):
    """The environment variable naming the file of the secret `name`."""
    if not isinstance(name, str) or not NAME.match(name):
        raise AnsibleLookupError("injected_secret: %r is not a secret's name (lower case letters, digits, _)" % (name,))
    return "RUNBOOKS_%s_FILE" % name.upper()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if kwargs:
            raise AnsibleLookupError("injected_secret takes no option %s" % ", ".join(sorted(kwargs)))
        values = []
        for name in terms:
            variable = variable_of(name)
            path = os.environ.get(variable, "")
            if not path:
                values.append("")
                continue
            try:
                with open(path, encoding="utf-8") as handle:
                    values.append(handle.read())
            except (OSError, UnicodeDecodeError) as exc:
                raise AnsibleLookupError("injected_secret: %s names %s, which cannot be read: %s"
                                         % (variable, path, getattr(exc, "strerror", None) or exc)) from None
        return values
