# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: service_layout
short_description: The service's layout (paths, units, compose services, database), set once for every role
version_added: 0.1.0
description:
  - Every role of the collection derives the paths and names it acts on from this lookup, so the layout is set in one
    place - the inventory's C(whatsapp_mcp_<name>) variables - and every role follows.
  - A name not set is derived from the others, as the whatsapp-mcp seeds lay the service out. Setting
    C(whatsapp_mcp_data_dir) moves the backups, the media and the audit archive; setting C(whatsapp_mcp_service)
    renames the directories, the user, the group and the units.
  - "The names: C(service), C(project_dir), C(config_dir), C(data_dir), C(backup_dir), C(media_dir),
    C(audit_archive_dir), C(releases_dir), C(secrets_dir), C(secrets_file) (relative to C(project_dir), or absolute), C(sops_config), C(age_key_file),
    C(tls_dir), C(acme_webroot), C(user), C(secrets_group), C(service_unit), C(secrets_unit), C(domain), C(health_url), C(app_service),
    C(db_service), C(db), C(db_user), C(offsite_prefix) (the key prefix of the service's off-host backups, by default
    C(<service>/<domain>/), so that a host replacing a dead one finds them); and C(sops_file), the secrets file's
    absolute path, derived."
  - A value that is not what its name needs (a relative path, a name with a slash, a URL that is not http or https)
    fails, naming the variable.
options:
  _terms:
    description: The names to look up; none returns the whole layout as a dictionary.
    type: list
    elements: str
    required: false
  host:
    description:
      - The layout of this inventory host instead of the current one's, from its inventory variables (for example
        the production host whose off-host backups a drill on a scratch host restores).
    type: str
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Where the backups are
  ansible.builtin.debug:
    msg: "{{ lookup('runbooks.incident.service_layout', 'backup_dir') }}"

- name: The whole layout
  ansible.builtin.debug:
    msg: "{{ query('runbooks.incident.service_layout') | first }}"
"""

RETURN = r"""
_list:
  description: The value of each name asked for, or the whole layout (name to value) when no name is given.
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.runbooks.incident.plugins.module_utils import _layout


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        variables = variables or {}
        host = kwargs.pop("host", None)
        if kwargs:
            raise AnsibleLookupError("service_layout takes no option %s (only host)" % ", ".join(sorted(kwargs)))
        if host:
            hostvars = variables.get("hostvars") or {}
            if host not in hostvars:
                raise AnsibleLookupError("service_layout: %s is not a host of the inventory" % host)
            variables = hostvars[host]
        given = {}
        for name in _layout.settable():
            key = _layout.PREFIX + name
            if key in variables:
                given[name] = self._templar.template(variables[key])
        try:
            layout = _layout.resolve(given)
        except _layout.LayoutError as exc:
            raise AnsibleLookupError(str(exc)) from None
        if not terms:
            return [layout]
        unknown = [term for term in terms if term not in layout]
        if unknown:
            raise AnsibleLookupError("not a name of the service's layout: %s (the names: %s)"
                                     % (", ".join(map(str, unknown)), ", ".join(layout)))
        return [layout[term] for term in terms]
