# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""DNS names and addresses as DNS updates need them (module_utils/_dns.py).

One file for several filters: each is documented in the file of its name beside this one (dns_fqdn.yml, ...)."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.runbooks.incident.plugins.module_utils import _dns


def _checked(filter_name, function, value):
    try:
        return function(value)
    except _dns.DnsError as exc:
        raise AnsibleFilterError("%s: %s" % (filter_name, exc)) from None


def dns_fqdn(name):
    return _checked("dns_fqdn", _dns.fqdn, name)


def dns_record_type(address):
    return _checked("dns_record_type", _dns.record_type, address)


class FilterModule:
    def filters(self):
        return {"dns_fqdn": dns_fqdn, "dns_record_type": dns_record_type}
