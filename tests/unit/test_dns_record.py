# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role dns_record through ansible-playbook against a real BIND (named from Debian's bind9, on loopback): the
service's name is pointed at a new address with an RFC 2136 update signed with TSIG, and the role waits until the
server answers it. The four runs (check, run, check again, run again); a record that held another address is
replaced, not added to; a wrong key, a value that is not an address and a server that keeps answering the old
address fail, naming the cause; the TSIG secret never appears in the output, even at -vvv."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import pytest

from ansible_collections.runbooks.incident.plugins.filter.dns import dns_fqdn, dns_record_type

from ansible.errors import AnsibleFilterError

ZONE = "example.test"
NAME = "chat.example.test"
OLD, NEW = "192.0.2.10", "198.51.100.7"


def free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dig(server, port, name=NAME, qtype="A"):
    out = subprocess.run(["dig", "+short", "+tcp", "-p", str(port), f"@{server}", name, qtype],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


class Named:
    """One named, authoritative for example.test on `address`:`port`, updates granted to the TSIG key `ddns`."""

    def __init__(self, directory, address, port, secret, updates=True):
        self.address, self.port = address, port
        directory.mkdir()
        (directory / f"{ZONE}.zone").write_text(
            f"$TTL 300\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300\n@ IN NS ns.{ZONE}.\n"
            f"ns IN A 127.0.0.1\nchat IN A {OLD}\n")
        policy = 'update-policy { grant ddns zonesub ANY; };' if updates else ""
        # named listens only on the addresses of an interface: loopback's are 127.0.0.1 and ::1.
        listen = (f"listen-on-v6 port {port} {{ {address}; }}; listen-on {{ none; }};" if ":" in address
                  else f"listen-on port {port} {{ {address}; }}; listen-on-v6 {{ none; }};")
        (directory / "named.conf").write_text(f"""
options {{
    directory "{directory}"; pid-file "{directory}/named.pid"; session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}"; {listen}
    recursion no; dnssec-validation no; allow-query {{ any; }};
}};
controls {{ }};
key "ddns" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{ZONE}" {{ type primary; file "{directory}/{ZONE}.zone"; {policy} }};
""")
        self.proc = subprocess.Popen(["named", "-g", "-n", "1", "-c", str(directory / "named.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("named did not start: " + self.proc.stderr.read()[-2000:])
            answer = subprocess.run(["dig", "+short", "+tcp", "+time=1", "+tries=1", "-p", str(port), f"@{address}", ZONE, "SOA"],
                                    capture_output=True, text=True, check=False)
            if answer.returncode == 0 and answer.stdout.startswith(f"ns.{ZONE}."):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("named answered nothing within 30 s")
            time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def tsig_secret():
    out = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", "ddns"], capture_output=True, text=True, check=True).stdout
    return out.split('secret "', 1)[1].split('"', 1)[0]


@pytest.fixture(name="dns")
def dns_fixture(tmp_path):
    secret, port = tsig_secret(), free_port()
    primary = Named(tmp_path / "primary", "127.0.0.1", port, secret)
    try:
        yield {"primary": primary, "secret": secret, "port": port, "tmp": tmp_path}
    finally:
        primary.stop()


def role_vars(dns, **more):
    return {"dns_record_name": NAME, "dns_record_address": NEW, "dns_record_server": "127.0.0.1",
            "dns_record_port": dns["port"], "dns_record_key_name": "ddns", "dns_record_key_secret": dns["secret"],
            "dns_record_wait_timeout": 20, **more}


ROLE = [{"name": "dns", "ansible.builtin.include_role": {"name": "runbooks.incident.dns_record"}}]


def test_the_name_moves_to_the_new_address_in_four_runs(ansible_play, dns):
    port = dns["port"]
    assert dig("127.0.0.1", port) == [OLD]

    check = ansible_play(ROLE, check=True, extra_vars=role_vars(dns))
    assert check.rc == 0, check.stdout[-3000:] + check.stderr
    assert f"{NAME}. A {NEW}: would be updated at 127.0.0.1" in check.stdout
    assert dig("127.0.0.1", port) == [OLD], "a dry run sends no update"

    run = ansible_play(ROLE, extra_vars=role_vars(dns))
    assert run.rc == 0, run.stdout[-3000:] + run.stderr
    assert f"{NAME}. A {NEW}: updated at 127.0.0.1; {NAME}. A {NEW} answered by 127.0.0.1 after" in run.stdout
    assert dig("127.0.0.1", port) == [NEW], "the old address is replaced, not added to"

    again_check = ansible_play(ROLE, check=True, extra_vars=role_vars(dns))
    assert again_check.rc == 0 and f"{NAME}. A {NEW}: already so at 127.0.0.1" in again_check.stdout
    again = ansible_play(ROLE, extra_vars=role_vars(dns))
    assert again.rc == 0 and f"{NAME}. A {NEW}: already so at 127.0.0.1" in again.stdout
    assert '"changed": true' not in again.stdout
    for result in (check, run, again_check, again):
        assert dns["secret"] not in result.stdout + result.stderr


def test_a_new_ttl_alone_is_an_update(ansible_play, dns):
    assert ansible_play(ROLE, extra_vars=role_vars(dns)).rc == 0
    result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_ttl=60))
    assert result.rc == 0 and "updated at 127.0.0.1" in result.stdout
    ttl = subprocess.run(["dig", "+noall", "+answer", "+tcp", "-p", str(dns["port"]), "@127.0.0.1", NAME, "A"],
                         capture_output=True, text=True, check=True).stdout.split()[1]
    assert ttl == "60"


def test_an_ipv6_address_is_an_aaaa_record_beside_the_a_record_however_it_is_written(ansible_play, dns):
    """Written long and in capitals, the address is still the one the server answers, and a second run is a no-op."""
    result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_address="2001:DB8:0:0::7"))
    assert result.rc == 0, result.stdout[-3000:]
    assert dig("127.0.0.1", dns["port"], qtype="AAAA") == ["2001:db8::7"]
    assert dig("127.0.0.1", dns["port"]) == [OLD]
    again = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_address="2001:db8::7"))
    assert again.rc == 0 and "already so at 127.0.0.1" in again.stdout, again.stdout[-3000:]


def test_a_wrong_key_is_refused_by_the_server_and_changes_nothing(ansible_play, dns):
    wrong = tsig_secret()
    result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_key_secret=wrong), verbosity=3)
    assert result.rc != 0
    assert dig("127.0.0.1", dns["port"]) == [OLD]
    assert wrong not in result.stdout + result.stderr and dns["secret"] not in result.stdout + result.stderr


@pytest.mark.parametrize("address", ["chat.example.org", "192.0.2.0/24", "192.0.2.1:53", "", "fe80::1%eth0", " 192.0.2.1"])
def test_a_value_that_is_not_an_address_is_refused_before_any_update(ansible_play, dns, address):
    result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_address=address))
    assert result.rc != 0
    assert "is not an IPv4 or IPv6 address" in result.stdout
    assert dig("127.0.0.1", dns["port"]) == [OLD]


@pytest.mark.parametrize("name", ["chat example.test", "../etc", "chat..example.test", "-chat.example.test"])
def test_a_name_that_is_not_a_dns_name_is_refused_before_any_update(ansible_play, dns, name):
    result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_name=name))
    assert result.rc != 0 and "is not a DNS name" in result.stdout
    assert dig("127.0.0.1", dns["port"]) == [OLD]


def test_an_authoritative_server_that_keeps_the_old_address_fails_the_wait_naming_it(ansible_play, dns):
    """A second server for the zone that never got the update (no zone transfer here): the role waits for it, then
    fails naming it and what it answers; the primary holds the new address."""
    stale = Named(dns["tmp"] / "stale", "::1", dns["port"], dns["secret"], updates=False)
    try:
        result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_check_servers=["127.0.0.1", "::1"],
                                                         dns_record_wait_timeout=4))
    finally:
        stale.stop()
    assert result.rc != 0, result.stdout[-6000:]
    assert f"{NAME}. A {NEW} is not answered by every server after" in result.stdout
    assert f"::1 answers {OLD}" in result.stdout
    assert "127.0.0.1 answers" not in result.stdout
    assert dig("127.0.0.1", dns["port"]) == [NEW]


def test_provider_none_changes_nothing_and_says_what_to_point_where(ansible_play, dns):
    result = ansible_play(ROLE, extra_vars=role_vars(dns, dns_record_provider="none", dns_record_server=""))
    assert result.rc == 0, result.stdout[-3000:]
    assert f"{NAME}. A {NEW}: not updated (dns_record_provider=none)" in result.stdout
    assert dig("127.0.0.1", dns["port"]) == [OLD]


@pytest.mark.parametrize("address, expected", [("192.0.2.1", "A"), ("2001:db8::1", "AAAA"), ("::ffff:192.0.2.1", "AAAA")])
def test_the_record_type_follows_the_address(address, expected):
    assert dns_record_type(address) == expected


@pytest.mark.parametrize("value", [3232235777, None, "localhost", "192.0.2.1 ", "fe80::1%lo"])
def test_the_record_type_of_what_is_not_an_address_is_refused(value):
    with pytest.raises(AnsibleFilterError, match="is not an IPv4 or IPv6 address"):
        dns_record_type(value)


@pytest.mark.parametrize("name, expected", [("chat.example.org", "chat.example.org."), ("chat.example.org.", "chat.example.org."),
                                            ("_acme-challenge.example.org", "_acme-challenge.example.org.")])
def test_a_name_is_made_absolute_once(name, expected):
    assert dns_fqdn(name) == expected


@pytest.mark.parametrize("name", ["", ".", "a..b", "-a.b", "a-.b", "a b", "a/b", "*.example.org", "x" * 64 + ".org", "chät.org", None])
def test_what_is_not_a_host_name_is_refused(name):
    with pytest.raises(AnsibleFilterError, match="is not a DNS name"):
        dns_fqdn(name)
