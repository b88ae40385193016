# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting until authoritative DNS servers answer an address for a name (dnspython, asked directly, over TCP).
PRIVATE to the collection: no compatibility promise."""
from __future__ import annotations

import ipaddress
import time

try:
    import dns.exception
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype
    HAS_DNSPYTHON = True
except ImportError:
    HAS_DNSPYTHON = False


class DnsError(Exception):
    pass


def address(value, what="address"):
    """The ipaddress object of `value`, an IPv4 or IPv6 address as text (no scope, no prefix, no port)."""
    try:
        if not isinstance(value, str) or "%" in value:
            raise ValueError(value)
        return ipaddress.ip_address(value)
    except ValueError:
        raise DnsError("%s %r is not an IPv4 or IPv6 address" % (what, value)) from None


def record_type(value):
    """A or AAAA, the type of record that holds the address `value`."""
    return "A" if address(value).version == 4 else "AAAA"


def fqdn(name):
    """`name` as an absolute DNS name (text, with its final dot); DnsError for what is not a host name."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise DnsError("%r is not a DNS name" % (name,))
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-") or \
                not all(c.isalnum() or c in "-_" for c in label) or not label.isascii():
            raise DnsError("%r is not a DNS name" % (name,))
    return ".".join(labels) + "."


def answer(server, port, name, rdtype, timeout):
    """The sorted addresses (text) `server` answers for `name`, or a short description of why there are none
    (for example `NXDOMAIN`, `no answer`, `timed out`)."""
    wanted_type = dns.rdatatype.from_text(rdtype)
    query = dns.message.make_query(dns.name.from_text(name), wanted_type)
    try:
        response = dns.query.tcp(query, server, port=port, timeout=timeout)
    except dns.exception.Timeout:
        return "timed out"
    except (OSError, dns.exception.DNSException) as exc:
        return "no answer (%s)" % (exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    if response.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(response.rcode())
    found = [str(rdata) for rrset in response.answer if rrset.rdtype == wanted_type for rdata in rrset]
    return sorted(found) if found else "no %s record" % rdtype


def wait(name, value, servers, port=53, timeout=120.0, interval=2.0, query_timeout=5.0, clock=time.monotonic, sleep=time.sleep):
    """Ask every server until each answers exactly `value` for `name` (compared as addresses, so that 2001:db8::1 and
    2001:DB8:0::1 are the same), or `timeout` seconds passed. Returns (the servers that do not answer it,
    {server: what it answered last}, seconds waited)."""
    wanted, rdtype, name = address(value), record_type(value), fqdn(name)
    pending = [str(address(server, "server")) for server in servers]
    if not pending:
        raise DnsError("no server to ask")
    started = clock()
    answers = {}
    while True:
        for server in list(pending):
            answers[server] = answer(server, port, name, rdtype, query_timeout)
            if isinstance(answers[server], list) and [address(item) for item in answers[server]] == [wanted]:
                pending.remove(server)
        waited = clock() - started
        if not pending or waited >= timeout:
            return pending, answers, round(waited, 1)
        sleep(min(interval, max(0.0, timeout - waited)))
