# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: dns_fqdn
short_description: A host name as an absolute DNS name (with its final dot), refusing what is not one
version_added: 0.1.0
description:
  - Returns the name with one final dot, as DNS updates need it (C(chat.example.org) and C(chat.example.org.) both
    give C(chat.example.org.)).
  - Fails, naming the value, for what is not a host name - an empty label (C(a..b)), a label that starts or ends
    with C(-) or is longer than 63 characters, white space, C(/), C(*) or any character but letters, digits, C(-) and C(_).
options:
  _input:
    description: The name.
    type: str
    required: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: The record to update
  ansible.builtin.debug:
    msg: "{{ 'chat.example.org' | runbooks.incident.dns_fqdn }}"
"""

RETURN = r"""
_value:
  description: The absolute name.
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.runbooks.incident.plugins.module_utils import _dns


def dns_fqdn(name):
    try:
        return _dns.fqdn(name)
    except _dns.DnsError as exc:
        raise AnsibleFilterError("dns_fqdn: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"dns_fqdn": dns_fqdn}
