# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the CA will see, checked now: the name resolves to this host, port 80 answers, and a probe file in the
webroot is served at /.well-known/acme-challenge/. The same causes as _certbot, so a log and a live check agree."""
from __future__ import annotations

import errno
import http.client
import ipaddress
import random
import re
import socket
import struct

from ansible_collections.runbooks.incident.plugins.module_utils._certbot import HINTS

QTYPES = {1: "A", 28: "AAAA"}


class DnsError(Exception):
    pass


DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_dns_name(name):
    """A host name the probe can ask DNS for (internationalized names in their IDNA form)."""
    try:
        ascii_name = name.rstrip(".").encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return False
    return 0 < len(ascii_name) <= 253 and all(DNS_LABEL.match(label) for label in ascii_name.split("."))


def _encode_name(name):
    return b"".join(bytes([len(label)]) + label.encode("idna") for label in name.rstrip(".").split(".")) + b"\0"


def _skip_name(packet, offset):
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset


def query(resolver, port, name, qtype, timeout):
    """A and AAAA answers for `name` from one DNS server over UDP (a stub resolver; no recursion of our own)."""
    ident = random.randint(0, 0xFFFF)
    packet = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack(">HH", qtype, 1)
    family = socket.AF_INET6 if ipaddress.ip_address(resolver).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        # Connected, so the port-unreachable answer of a host where no DNS server listens ends the wait at once.
        sock.connect((resolver, port))
        try:
            sock.send(packet)
            reply = sock.recv(4096)
        except socket.timeout:
            raise DnsError("no answer from DNS server %s:%d within %ss" % (resolver, port, timeout))
        except ConnectionRefusedError:
            raise DnsError("no DNS server listens on %s:%d (port unreachable)" % (resolver, port))
    rid, flags, qdcount, ancount = struct.unpack(">HHHH", reply[:8])
    rcode = flags & 0xF
    if rid != ident:
        raise DnsError("DNS server %s answered another query" % resolver)
    if rcode == 3:
        return []  # NXDOMAIN
    if rcode:
        raise DnsError("DNS server %s answered rcode %d (%s) for %s" % (
            resolver, rcode, {2: "SERVFAIL", 5: "REFUSED"}.get(rcode, "error"), name))
    offset = 12
    for dummy in range(qdcount):
        offset = _skip_name(reply, offset) + 4
    addresses = []
    for dummy in range(ancount):
        offset = _skip_name(reply, offset)
        rtype, dummy_class, dummy_ttl, length = struct.unpack(">HHIH", reply[offset:offset + 10])
        offset += 10
        if rtype == qtype and rtype in QTYPES:
            addresses.append(str(ipaddress.ip_address(reply[offset:offset + length])))
        offset += length
    return addresses


def resolve(name, resolver, resolver_port, timeout):
    """Addresses of `name`: from the DNS server `resolver` when given, else from this system's resolver."""
    if not resolver:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror:
            return []
        return sorted({str(ipaddress.ip_address(info[4][0])) for info in infos})
    return [address for qtype in QTYPES for address in query(resolver, resolver_port, name, qtype, timeout)]


def fetch(address, port, name, path, timeout):
    """GET http://name:port/path from `address`: (status, body) or the cause of not getting an answer."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": name if port == 80 else "%s:%d" % (name, port),
                                           "User-Agent": "runbooks.incident acme_probe"})
        response = conn.getresponse()
        return response.status, response.read(4096).decode("utf-8", "replace"), None
    except ConnectionRefusedError:
        return None, None, "connection_refused"
    except (socket.timeout, TimeoutError):
        return None, None, "port_unreachable"
    except OSError as exc:  # a REJECT with icmp-host/net-unreachable is a firewall too
        return None, None, "port_unreachable" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "connection_refused"
    finally:
        conn.close()


def probe(name, expected_addresses, resolver, resolver_port, port, path, content, timeout):
    """The live view of one name: its addresses and, per address, what port 80 served for the probe file."""
    result = {"name": name, "addresses": [], "unexpected_addresses": [], "answers": [], "problem": "none"}
    try:
        result["addresses"] = resolve(name, resolver, resolver_port, timeout)
    except (DnsError, OSError) as exc:
        result.update(problem="dns_unresolved", error=str(exc))
        return result
    if not result["addresses"]:
        result.update(problem="dns_unresolved", error="%s has no A or AAAA record" % name)
        return result
    result["unexpected_addresses"] = [a for a in result["addresses"] if expected_addresses and a not in expected_addresses]
    if result["unexpected_addresses"]:
        result["problem"] = "dns_points_elsewhere"
    for address in result["addresses"]:
        status, body, failure = fetch(address, port, name, path, timeout)
        if failure is None:
            failure = "none" if status == 200 and body.strip() == content.strip() else (
                "challenge_not_found" if status == 404 else "unauthorized")
        result["answers"].append({"address": address, "status": status, "problem": failure})
        if result["problem"] == "none":
            result["problem"] = failure
    return result


def probe_all(names, expected_addresses, resolver, resolver_port, port, path, content, timeout):
    """Probe every name; `cause` is the first name's problem, in the causes of _certbot."""
    expected = [str(ipaddress.ip_address(a)) for a in expected_addresses]
    checks = [probe(name, expected, resolver, resolver_port, port, path, content, timeout) for name in names]
    problems = [c for c in checks if c["problem"] != "none"]
    cause = problems[0]["problem"] if problems else "none"
    return {"checks": checks, "cause": cause, "hint": HINTS[cause] if problems else "Port 80 serves the webroot for every name.",
            "ok": not problems}
