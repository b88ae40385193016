# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: dns_record_type
short_description: The DNS record type (A or AAAA) of an IP address, refusing what is not one
version_added: 0.1.0
description:
  - Returns C(A) for an IPv4 address and C(AAAA) for an IPv6 address.
  - Fails, naming the value, for anything else (a host name, a network, an address with a port, an empty string), so
    that a record is never pointed at a value that is not an address.
options:
  _input:
    description: The address.
    type: str
    required: true
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Point the service's name at the host
  community.general.nsupdate:
    server: 192.0.2.53
    record: chat.example.org.
    type: "{{ address | runbooks.incident.dns_record_type }}"
    value: ["{{ address }}"]
"""

RETURN = r"""
_value:
  description: C(A) or C(AAAA).
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.runbooks.incident.plugins.module_utils import _dns


def dns_record_type(address):
    try:
        return _dns.record_type(address)
    except _dns.DnsError as exc:
        raise AnsibleFilterError("dns_record_type: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"dns_record_type": dns_record_type}
