# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nft_blocklist against the real nftables of network namespaces the tests make, never this machine's firewall.

Each test gets a fresh network namespace (a process started with `unshare --net` holds it) and runs the module as its
own process inside it (`nsenter --net=/proc/<pid>/ns/net --`, conftest.run_module_under), so every nft it runs reads
and changes that namespace only; what the test checks there it reads with nft there. A session fixture checks that
the machine's own ruleset has no blocklist table before and after.

The four-run pattern from nothing (check mode creates nothing), blocking IPv4 addresses, a network and IPv6, refresh,
unblocking one and all, each refusal leaving the table as it was, a table of someone else's left untouched, a foreign
set or chain of the blocklist's name refused, nft missing and nft not permitted (an unprivileged user namespace).
The last test sends real traffic: a client namespace connects over a veth pair to a listener of the "host" namespace
and, through the host's DNAT (as docker publishes a port), to one in a "container" namespace; both connect before
the block and both time out after it (the drop at prerouting -150 comes before the DNAT), and again succeed once
unblocked. Parsing of nft's JSON (prefix, plain address, range, an element without timeout) is tested on text.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _nft_blocklist
from conftest import require, run_module_under  # pylint: disable=import-error

TABLE = "inet runbooks_incident"
DEADLINE = 30  # seconds a helper process may take to start


def need_nft():
    require(shutil.which("nft"), "nft (Debian package nftables)", "make deps installs it (tests/sandbox/sandbox.py APT_PACKAGES)")
    require(os.geteuid() == 0, "root (unshare --net, nsenter)", "the suite runs as root")


@pytest.fixture(scope="session", autouse=True)
def host_firewall_untouched():
    """This machine's own ruleset never gets a blocklist table from these tests (it is only read)."""
    if not shutil.which("nft") or os.geteuid() != 0:
        yield
        return

    def tables():
        res = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
        return sorted(line for line in res.stdout.splitlines() if "runbooks_incident" in line or "nft_test" in line)
    before = tables()
    yield
    assert tables() == before, "a test changed this machine's own firewall"


class NetNamespace:
    """A network namespace of the test's own, held by a sleeping process started with `unshare --net`."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.proc = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep 3600"], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.path = "/proc/%d/ns/net" % self.proc.pid
        assert os.stat(self.path).st_ino != os.stat("/proc/self/ns/net").st_ino, "not a namespace of its own"
        self.prefix = ["nsenter", "--net=" + self.path, "--"]

    def run(self, *argv, stdin=None, check=True):
        return subprocess.run([*self.prefix, *argv], input=stdin, capture_output=True, text=True, check=check, timeout=DEADLINE)

    def nft(self, *args, stdin=None):
        return self.run("nft", *args, stdin=stdin).stdout

    def tables(self):
        return self.nft("list", "tables").split()

    def elements(self):
        """{address: (timeout, incident id)} of both sets, read with nft here; None without the table."""
        res = self.run("nft", "-j", "list", "table", "inet", "runbooks_incident", check=False)
        if res.returncode != 0:
            return None
        state = _nft_blocklist.parse_listing(res.stdout, "runbooks_incident")
        return {item["address"]: (item["timeout"], item["incident_id"]) for item in _nft_blocklist.blocked(state)}

    def module(self, params, check_mode=False, prefix=None):
        return run_module_under(prefix or self.prefix, "nft_blocklist", params, check_mode=check_mode, tmpdir=str(self.tmp_path))

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture(name="netns")
def netns_fixture(tmp_path):
    need_nft()
    made = []

    def make():
        made.append(NetNamespace(tmp_path))
        return made[-1]
    yield make
    for item in made:
        item.close()


def block(*addresses, **kwargs):
    return dict(dict(addresses=list(addresses), incident_id="INC-7"), **kwargs)


# --------------------------------------------------------------------------------------------- in a namespace
def test_check_run_check_run_from_nothing(netns):
    ns = netns()
    args = block("203.0.113.7", "203.0.113.9/32", "198.51.100.77/24", timeout=600)
    check = ns.module(args, check_mode=True)
    assert check["changed"] is True and check["added"] == ["203.0.113.7/32", "203.0.113.9/32", "198.51.100.0/24"], check
    assert "add table inet runbooks_incident\n" in check["script"] and "nothing was changed" in check["msg"]
    assert check["blocked"] == [] and ns.tables() == []  # validated with nft -c, not applied

    done = ns.module(args)
    assert done["changed"] is True and done["added"] == check["added"] and done["removed"] == [], done
    assert done["script"] == check["script"] and done["blocked_before"] == []
    assert [item["address"] for item in done["blocked"]] == ["198.51.100.0/24", "203.0.113.7/32", "203.0.113.9/32"]
    for item in done["blocked"]:
        assert item["timeout"] == 600 and 570 <= item["expires_in"] <= 600 and item["incident_id"] == "INC-7", item
    assert ns.elements() == {"198.51.100.0/24": (600, "INC-7"), "203.0.113.7/32": (600, "INC-7"), "203.0.113.9/32": (600, "INC-7")}
    chain = ns.nft("list", "chain", "inet", "runbooks_incident", "prerouting")
    assert "type filter hook prerouting priority mangle; policy accept;" in chain  # mangle is -150
    assert "ip saddr @blocked4 counter packets 0 bytes 0 drop" in chain and "ip6 saddr @blocked6 counter packets 0 bytes 0 drop" in chain

    for check_mode in (True, False):
        again = ns.module(args, check_mode=check_mode)
        assert again["changed"] is False and again["added"] == [] and again["script"] == "", again
        assert "already blocked" in again["msg"]
    assert chain == ns.nft("list", "chain", "inet", "runbooks_incident", "prerouting")  # no rule added twice


def test_check_mode_on_an_existing_table_adds_nothing(netns):
    ns = netns()
    ns.module(block("203.0.113.7"))
    before = ns.elements()
    check = ns.module(block("203.0.113.8", "2001:db8::8"), check_mode=True)
    assert check["changed"] is True and check["added"] == ["203.0.113.8/32", "2001:db8::8/128"]
    assert check["script"].startswith("add element inet runbooks_incident blocked4 { 203.0.113.8/32 timeout 3600s comment \"INC-7\" }\n")
    assert ns.elements() == before


def test_an_address_in_a_blocked_network_is_already_blocked_and_a_network_replaces_its_addresses(netns):
    ns = netns()
    ns.module(block("198.51.100.0/24", "203.0.113.7", "203.0.113.9"))
    inside = ns.module(block("198.51.100.5"))
    assert inside["changed"] is False and "198.51.100.5/32 (already blocked by 198.51.100.0/24)" in inside["msg"]
    wider = ns.module(block("203.0.113.0/24", incident_id="INC-8"))
    assert wider["changed"] is True and wider["added"] == ["203.0.113.0/24"] and wider["removed"] == ["203.0.113.7/32", "203.0.113.9/32"]
    assert ns.elements() == {"198.51.100.0/24": (3600, "INC-7"), "203.0.113.0/24": (3600, "INC-8")}


def test_refresh_renews_the_timeout(netns):
    ns = netns()
    ns.module(block("203.0.113.7", "203.0.113.8", timeout=600))
    same = ns.module(block("203.0.113.7", timeout=7200, incident_id="INC-9"))
    assert same["changed"] is False and ns.elements()["203.0.113.7/32"] == (600, "INC-7")
    renewed = ns.module(block("203.0.113.7", timeout=7200, incident_id="INC-9", refresh=True))
    assert renewed["changed"] is True and renewed["refreshed"] == ["203.0.113.7/32"], renewed
    assert renewed["added"] == [] and renewed["removed"] == []
    assert renewed["script"].startswith("delete element inet runbooks_incident blocked4 { 203.0.113.7/32 }\n")
    assert ns.elements() == {"203.0.113.7/32": (7200, "INC-9"), "203.0.113.8/32": (600, "INC-7")}
    (item,) = [item for item in renewed["blocked"] if item["address"] == "203.0.113.7/32"]
    assert item["expires_in"] > 7000


def test_unblock_one_then_all(netns):
    ns = netns()
    ns.module(block("203.0.113.7", "198.51.100.0/24", "2001:db8::1"))
    one = ns.module(block("203.0.113.7", state="absent"))
    assert one["changed"] is True and one["removed"] == ["203.0.113.7/32"] and one["added"] == []
    assert set(ns.elements()) == {"198.51.100.0/24", "2001:db8::1/128"}
    for check_mode in (True, False):
        again = ns.module(block("203.0.113.7", state="absent"), check_mode=check_mode)
        assert again["changed"] is False and again["script"] == ""
    part = ns.module(block("198.51.100.4", state="absent"))
    assert part["failed"] and "198.51.100.4/32 is blocked as part of 198.51.100.0/24" in part["msg"] and "nothing was changed" in part["msg"]

    check = ns.module(dict(state="absent", all=True, incident_id="INC-7"), check_mode=True)
    assert check["changed"] is True and check["removed"] == ["198.51.100.0/24", "2001:db8::1/128"] and len(ns.elements()) == 2
    everything = ns.module(dict(state="absent", all=True, incident_id="INC-7"))
    assert everything["changed"] is True and everything["blocked"] == [] and ns.elements() == {}
    assert ns.module(dict(state="absent", all=True, incident_id="INC-7"))["changed"] is False


def test_persisting_writes_a_boot_script_that_rebuilds_the_blocklist(netns, tmp_path):
    ns = netns()
    boot = tmp_path / "etc" / "nft_blocklist.nft"
    args = block("203.0.113.7", "198.51.100.0/24", "2001:db8::1", timeout=7200, persist=True, persist_path=str(boot))
    assert ns.module(args, check_mode=True)["persisted"] == str(boot) and not boot.exists()
    done = ns.module(args)
    assert done["changed"] is True and done["persisted"] == str(boot) and "wrote %s" % boot in done["msg"]
    assert oct(boot.stat().st_mode & 0o7777) == "0o600"
    for check_mode in (True, False):  # idempotent: the file already holds what is blocked
        again = ns.module(args, check_mode=check_mode)
        assert again["changed"] is False and again["persisted"] is None, again

    # A fresh host (namespace) loads it at boot: the same elements, the same incident, about the time they had left.
    fresh = netns()
    for _load in (1, 2):  # loading twice gives the same table
        fresh.run("nft", "-f", str(boot))
        loaded = fresh.elements()
        expected = {"198.51.100.0/24": "INC-7", "203.0.113.7/32": "INC-7", "2001:db8::1/128": "INC-7"}
        assert {address: item[1] for address, item in loaded.items()} == expected
        assert all(item[0] == 7200 for item in loaded.values()), loaded
    assert fresh.nft("list", "chain", "inet", "runbooks_incident", "prerouting").count("drop") == 2

    # Once persisted, an unblock is persisted too, with or without persist; check mode writes nothing.
    written = boot.read_text()
    assert ns.module(block("203.0.113.7", state="absent", persist_path=str(boot)), check_mode=True)["persisted"] == str(boot)
    assert boot.read_text() == written
    unblocked = ns.module(block("203.0.113.7", state="absent", persist_path=str(boot)))
    assert unblocked["persisted"] == str(boot) and "203.0.113.7" not in boot.read_text()
    emptied = ns.module(dict(state="absent", all=True, incident_id="INC-7", persist_path=str(boot)))
    assert emptied["persisted"] == str(boot)
    fresh.run("nft", "-f", str(boot))
    assert fresh.elements() == {}


@pytest.mark.parametrize("planted, words", [("symlink", "symlink"), ("foreign", "not a blocklist the module wrote"), ("fifo", "not a regular file")])
def test_a_boot_script_path_holding_something_else_is_refused(netns, tmp_path, planted, words):
    ns = netns()
    boot = tmp_path / "boot.nft"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious\n")
    if planted == "symlink":
        boot.symlink_to(elsewhere)
    elif planted == "foreign":
        boot.write_text("flush ruleset\n")
    else:
        os.mkfifo(boot)
    failed = ns.module(block("203.0.113.7", persist=True, persist_path=str(boot)))
    assert failed["failed"] and words in failed["msg"], failed
    assert elsewhere.read_text() == "precious\n"
    if planted == "foreign":
        assert boot.read_text() == "flush ruleset\n" and ns.tables() == []  # refused before anything was blocked


def test_unblocking_without_the_table_is_no_change_and_creates_nothing(netns):
    ns = netns()
    result = ns.module(block("203.0.113.7", state="absent"))
    assert result["changed"] is False and result["blocked"] == [] and ns.tables() == []


def test_a_run_without_addresses_only_reads(netns):
    ns = netns()
    empty = ns.module({})
    assert empty["changed"] is False and empty["blocked"] == [] and ns.tables() == []
    ns.module(block("203.0.113.7", timeout=120))
    (item,) = ns.module({})["blocked"]
    assert item["address"] == "203.0.113.7/32" and item["timeout"] == 120 and 100 <= item["expires_in"] <= 120


def test_ipv6(netns):
    ns = netns()
    done = ns.module(block("2001:DB8::1", "2001:db8:1::99/64", "2001:db8:2::/56", min_prefix6=56))
    assert done["added"] == ["2001:db8::1/128", "2001:db8:1::/64", "2001:db8:2::/56"], done
    assert set(ns.elements()) == {"2001:db8::1/128", "2001:db8:1::/64", "2001:db8:2::/56"}
    broad = ns.module(block("2001:db8:3::/48"))
    assert broad["failed"] and "broader than min_prefix6=64" in broad["msg"]


@pytest.mark.parametrize("bad, words", [
    (block("127.0.0.1"), "refused to block 127.0.0.1/32: it is loopback"),
    (block("::1"), "refused to block ::1/128: it is loopback"),
    (block("0.0.0.0"), "is unspecified"),
    (block("::"), "refused to block ::/128: it is unspecified"),
    (block("224.0.0.1"), "is multicast"),
    (block("ff02::1"), "is multicast"),
    (block("169.254.10.1"), "is link-local"),
    (block("fe80::1"), "is link-local"),
    (block("255.255.255.255"), "is broadcast"),
    (block("::ffff:203.0.113.7"), "IPv4-mapped"),
    (block("127.0.0.0/7", min_prefix4=8), "holds loopback addresses"),
    (block("203.0.113.7", "192.0.2.10", allow=["192.0.2.10"]), "refused to block 192.0.2.10/32: it is in allowed 192.0.2.10/32"),
    (block("192.0.2.0/24", allow=["192.0.2.10"]), "refused to block 192.0.2.0/24: it overlaps allowed 192.0.2.10/32"),
    (block(*["203.0.113.%d" % last for last in range(1, 22)]), "names 21 addresses or networks: at most max_addresses=20"),
    (block("203.0.113.1", "203.0.113.2", max_addresses=1), "at most max_addresses=1"),
    (block("10.0.0.0/8"), "refused to block 10.0.0.0/8: broader than min_prefix4=24"),
    (block("203.0.113.7", "not-an-address"), "addresses: 'not-an-address' is not an IP address or network"),
    (block("203.0.113.7/33"), "is not an IP address or network"),
    (block("203.0.113.7; flush ruleset"), "is not an IP address or network"),
    (block("203.0.113.7", allow=["garbage"]), "allow: 'garbage' is not an IP address or network"),
    (block("203.0.113.7", incident_id=None), "needs incident_id"),
    (block("203.0.113.7", incident_id='INC" }; flush ruleset'), "is not valid"),
    (block("203.0.113.7", timeout=59), "timeout is 59"),
    (block("203.0.113.7", table="filter; flush ruleset"), "is not a table name"),
    (block("203.0.113.7", all=True, state="absent"), "leave addresses empty"),
    (dict(all=True, incident_id="INC-7"), "it goes with state=absent"),
])
def test_refusals_say_why_and_leave_the_table_as_it_was(netns, bad, words):
    ns = netns()
    ns.module(block("198.51.100.0/24", "2001:db8::1"))
    before, chain = ns.elements(), ns.nft("list", "table", "inet", "runbooks_incident").count("\n")
    result = ns.module(bad)
    assert result["failed"] and words in result["msg"] and result["msg"].endswith("nothing was changed"), result
    assert ns.elements() == before and ns.nft("list", "table", "inet", "runbooks_incident").count("\n") == chain
    assert ns.tables() == ["table", "inet", "runbooks_incident"]


FOREIGN = """table ip nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 8080 dnat to 10.9.9.9:80
    }
}
table inet filter {
    set admins { type ipv4_addr; elements = { 192.0.2.1 } }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @admins accept
    }
}
"""


def test_other_tables_are_never_touched(netns):
    ns = netns()
    ns.nft("-f", "-", stdin=FOREIGN)
    before = ns.nft("-j", "list", "ruleset")
    ns.module(block("203.0.113.7"))
    ns.module(block("203.0.113.7", state="absent"))
    ns.module(dict(state="absent", all=True, incident_id="INC-7"))
    after = json.loads(ns.nft("-j", "list", "ruleset"))["nftables"]
    ours = [item for item in after if "runbooks_incident" in json.dumps(item)]
    assert [item for item in after if item not in ours] == json.loads(before)["nftables"]


@pytest.mark.parametrize("foreign, words", [
    ("add table inet runbooks_incident\nadd set inet runbooks_incident blocked4 { type ipv4_addr; }\n",
     "set blocked4 in table inet runbooks_incident is not a blocklist set"),
    ("add table inet runbooks_incident\nadd chain inet runbooks_incident prerouting { type filter hook prerouting priority 0; policy drop; }\n",
     "chain prerouting in table inet runbooks_incident is type filter hook prerouting priority 0 policy drop"),
])
def test_a_table_of_that_name_that_is_not_a_blocklist_is_refused(netns, foreign, words):
    ns = netns()
    ns.nft("-f", "-", stdin=foreign)
    before = ns.nft("list", "ruleset")
    result = ns.module(block("203.0.113.7"))
    assert result["failed"] and words in result["msg"] and "choose another table" in result["msg"]
    assert ns.nft("list", "ruleset") == before
    other = ns.module(block("203.0.113.7", table="nft_test_other"))
    assert other["changed"] is True and "table inet nft_test_other" in ns.nft("list", "tables")


def test_without_nft_it_fails_saying_so(netns, tmp_path):
    ns = netns()
    bare = tmp_path / "bin"
    bare.mkdir()
    result = ns.module(block("203.0.113.7"), prefix=ns.prefix + ["env", "PATH=%s" % bare])
    assert result["failed"] and "nft is not installed (package nftables)" in result["msg"] and "nothing was changed" in result["msg"]
    assert ns.tables() == []


def test_nft_not_permitted_fails_saying_so(netns):
    """In a user namespace of its own without a uid map, the module is not root: nft gets EPERM from the kernel."""
    need_nft()
    readable = tempfile.mkdtemp(prefix="nft-blocklist-")
    try:
        os.chmod(readable, 0o755)
        result = run_module_under(["unshare", "--user", "--net", "--"], "nft_blocklist", block("203.0.113.7"), tmpdir=readable)
    finally:
        shutil.rmtree(readable)
    assert result["failed"] and "nft is not permitted" in result["msg"] and "nothing was changed" in result["msg"], result


# ------------------------------------------------------------------------------------------------ real traffic
SERVER = """
import socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen()
print("ready", flush=True)
while True:
    conn, _peer = sock.accept()
    conn.close()
"""
CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as exc:
    print(type(exc).__name__)
    sys.exit(1)
"""


def link(left, right, left_name, right_name):
    """A veth pair between two namespaces."""
    left.run("ip", "link", "add", left_name, "type", "veth", "peer", "name", right_name, "netns", str(right.proc.pid))
    for ns, name in ((left, left_name), (right, right_name)):
        ns.run("ip", "link", "set", name, "up")


def test_a_blocked_source_cannot_reach_the_host_nor_a_published_container_port(netns, tmp_path):
    host, client, container = netns(), netns(), netns()
    link(host, client, "to-client", "eth0")
    link(host, container, "to-app", "eth0")
    host.run("ip", "addr", "add", "10.231.1.1/24", "dev", "to-client")
    host.run("ip", "addr", "add", "10.231.2.1/24", "dev", "to-app")
    client.run("ip", "addr", "add", "10.231.1.2/24", "dev", "eth0")
    container.run("ip", "addr", "add", "10.231.2.2/24", "dev", "eth0")
    container.run("ip", "route", "add", "default", "via", "10.231.2.1")
    host.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    # As docker publishes a container's port: DNAT in an nat prerouting chain, then forwarded.
    host.nft("-f", "-", stdin="table ip nat {\n chain prerouting {\n type nat hook prerouting priority dstnat; policy accept;\n"
             " tcp dport 8080 dnat to 10.231.2.2:80\n }\n}\n")
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    servers = [subprocess.Popen([*ns.prefix, sys.executable, str(script), address, port], stdout=subprocess.PIPE, text=True)
               for ns, address, port in ((host, "10.231.1.1", "22022"), (container, "10.231.2.2", "80"))]
    try:
        for server in servers:
            assert server.stdout.readline().strip() == "ready"

        def reaches(port):
            return client.run(sys.executable, "-c", CLIENT, "10.231.1.1", str(port), "2", check=False).returncode == 0

        assert reaches(22022) and reaches(8080)
        blocked = host.module(block("10.231.1.2", allow=["10.231.2.0/24"]))
        assert blocked["changed"] is True and blocked["added"] == ["10.231.1.2/32"], blocked
        assert not reaches(22022) and not reaches(8080)
        counters = host.nft("list", "chain", "inet", "runbooks_incident", "prerouting")
        assert "ip saddr @blocked4 counter packets 0 " not in counters  # the drops were counted
        host.module(block("10.231.1.2", state="absent"))
        assert reaches(22022) and reaches(8080)
    finally:
        for server in servers:
            server.kill()
            server.wait()
            server.stdout.close()


# ----------------------------------------------------------------------------------------------------- parsing
def test_the_elements_of_nft_json_are_read_in_every_shape():
    items = [
        {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}, "timeout": 60, "expires": 59, "comment": "INC-2"}},
        {"elem": {"val": "203.0.113.7", "timeout": 3600, "expires": 3599}},
        "192.0.2.9",  # an element without timeout (someone else's): it never expires
        {"elem": {"val": {"range": ["192.0.2.20", "192.0.2.23"]}, "timeout": 60, "expires": 1}},
        {"prefix": {"addr": "2001:db8:1::", "len": 64}},
    ]
    found = _nft_blocklist.parse_elements(items)
    assert [(item["address"], item["timeout"], item["expires_in"], item["incident_id"]) for item in found] == [
        ("198.51.100.0/24", 60, 59, "INC-2"), ("203.0.113.7/32", 3600, 3599, None), ("192.0.2.9/32", None, None, None),
        ("192.0.2.20-192.0.2.23", 60, 1, None), ("2001:db8:1::/64", None, None, None)]
    assert [str(net) for net in found[3]["networks"]] == ["192.0.2.20/30"]


class ScriptedNft:
    """Stands in for nft in the two tests of what no real namespace shows on demand: a listing that changes between
    the read and the apply. It answers each `list` with the next listing and refuses the first apply."""

    def __init__(self, listings, refuse_first_apply):
        self.listings, self.refuse, self.scripts = list(listings), refuse_first_apply, []

    def run(self, args, script=None):
        if args[-2:] == ["-f", "-"] and args[0] != "-c":
            self.scripts.append(script)
            if self.refuse:
                self.refuse = False
                raise _nft_blocklist.NftFailed("Error: element does not exist")
            return ""
        if args[0] == "-c":
            return ""
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]


def listing(*elements):
    sets = [{"set": {"family": "inet", "name": name, "table": "runbooks_incident", "type": kind, "flags": ["interval", "timeout"],
                     "elem": [{"elem": {"val": value, "timeout": 600, "expires": 5}} for value in elements if (":" in value) == (version == 6)]}}
            for version, name, kind in ((4, "blocked4", "ipv4_addr"), (6, "blocked6", "ipv6_addr"))]
    chain = {"chain": {"family": "inet", "table": "runbooks_incident", "name": "prerouting", "type": "filter", "hook": "prerouting",
                       "prio": -150, "policy": "accept"}}
    rules = [{"rule": {"chain": "prerouting", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                                                                  "right": "@" + name}}, {"counter": None}, {"drop": None}]}}
             for proto, name in (("ip", "blocked4"), ("ip6", "blocked6"))]
    return json.dumps({"nftables": [{"table": {"family": "inet", "name": "runbooks_incident"}}, *sets, chain, *rules]})


def params(**kwargs):
    return dict(dict(state="present", addresses=[], all=False, allow=[], timeout=3600, refresh=False, max_addresses=20, min_prefix4=24,
                     min_prefix6=64, table="runbooks_incident", incident_id="INC-7"), **kwargs)


def test_an_element_that_expired_between_read_and_apply_is_planned_again():
    nft = ScriptedNft([listing("203.0.113.7"), listing(), listing(), listing("203.0.113.7")], refuse_first_apply=True)
    result = _nft_blocklist.run(params(addresses=["203.0.113.7"], refresh=True), nft=nft)
    assert nft.scripts[0].startswith("delete element") and nft.scripts[1].startswith("add element"), nft.scripts
    assert result["added"] == ["203.0.113.7/32"] and result["refreshed"] == [] and result["changed"] is True


def test_a_refused_apply_on_an_unchanged_set_fails_saying_nothing_changed():
    nft = ScriptedNft([listing("203.0.113.7")], refuse_first_apply=True)
    with pytest.raises(_nft_blocklist.BlocklistError, match="nft refused the change: Error: element does not exist"):
        _nft_blocklist.run(params(addresses=["203.0.113.8"]), nft=nft)
    assert len(nft.scripts) == 1
