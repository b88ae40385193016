# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blocking source addresses with nftables (nft_blocklist). PRIVATE to the collection: no compatibility promise.

The blocklist lives in a table of its own (`inet runbooks_incident` by default): two sets, `blocked4` and `blocked6`
(`flags interval, timeout`: networks, and elements that expire by themselves), and a chain `prerouting` of type filter
on hook prerouting at priority -150 dropping what comes from them. Prerouting, not input: traffic to a container's
published port is DNATed (at -100) and forwarded, so a drop on the input hook never sees it; at -150 the drop comes
before the DNAT and sees traffic to the host and to the containers alike. No other table is ever read or touched,
and the ruleset is never flushed.

Every change is one nft script (`nft -f -`: one transaction, all or nothing), validated first with `nft -c -f -`,
where check mode stops. The state is read from `nft -j list table`. Refreshing an element is a delete and an add in
the same transaction (an `add` of an existing element keeps its old timeout); an element that expired between the
read and the apply makes the transaction fail as a whole, and the plan is made again from a new read, once.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _run_lock

STATES = ("present", "absent")
DEFAULT_TABLE = "runbooks_incident"
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}\Z")
SETS = {4: "blocked4", 6: "blocked6"}
SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
MATCH = {4: "ip", 6: "ip6"}  # the payload protocol whose saddr each set is matched against
CHAIN = "prerouting"
PRIORITY = -150  # after raw (-300), before DNAT (-100)
MIN_TIMEOUT, MAX_TIMEOUT = 60, 30 * 24 * 3600
MAX_ADDRESSES = 1000  # the highest max_addresses accepted
PREFIX_BOUNDS = {4: (8, 32), 6: (16, 128)}  # the values min_prefix4 / min_prefix6 may take
NFT_TIMEOUT = 30  # seconds one nft call may take
MAX_TEXT = 64  # an address longer than this is not one (and is not echoed whole)
# The script that rebuilds the blocklist at boot (runbooks-nft-blocklist.service loads it), once persisting was asked.
PERSIST_PATH = "/etc/runbooks-incident/nft_blocklist.nft"
PERSISTED_MARK = "# elements: "  # the header line naming what the file blocks: a change of them rewrites it
MAX_PERSISTED = 1 << 20

# Never blocked, whatever `allow` says: blocking them cuts the host off from itself or from its own network.
SPECIAL = [(ipaddress.ip_network(net), why) for net, why in (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped (ip6 saddr never matches IPv4 traffic: block the IPv4 address)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)]


class BlocklistError(Exception):
    """A refused input, or nft cannot be used: the message says what; nothing was changed."""


class ReadAfterFailed(Exception):
    """The change was applied, and the sets cannot be read after it; `result` says what was done."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class NftFailed(BlocklistError):
    """nft refused a script or a listing; `text` is its message."""


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BlocklistError("%s is %r: a whole number from %d to %d" % (name, value, minimum, maximum))
    return value


def _shown(value):
    text = repr(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def parse_network(value, option):
    """The network an address or CIDR names (host bits dropped; a host address is a /32 or /128)."""
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or any(char.isspace() or not char.isprintable() for char in value):
        raise BlocklistError("%s: %s is not an IP address or network" % (option, _shown(value)))
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise BlocklistError("%s: %s is not an IP address or network" % (option, _shown(value))) from None


def text_of(net):
    return net.with_prefixlen


def special(net):
    """Why `net` is never blocked (it is or holds a loopback, unspecified, ... address), or None."""
    for reserved, why in SPECIAL:
        if reserved.version == net.version and reserved.overlaps(net):
            return "is %s" % why if net.subnet_of(reserved) else "holds %s addresses (%s)" % (why, reserved)
    return None


def _covered(net, others):
    """The network of `others` (same version) that holds `net`, or None."""
    for other in others:
        if other.version == net.version and other != net and net.subnet_of(other):
            return other
    return None


def check_params(params):
    """{'addresses': [networks], 'allow': [networks]} once every option is valid; BlocklistError otherwise, before nft
    runs. The addresses are deduplicated and a network held by another one asked for is dropped."""
    state = params["state"]
    if state not in STATES:
        raise BlocklistError("state is %r: one of %s" % (state, ", ".join(STATES)))
    table = params["table"]
    if not isinstance(table, str) or not TABLE_NAME.match(table):
        raise BlocklistError("table %s is not a table name (a letter, then letters, digits and _, at most 32)" % _shown(table))
    _whole("timeout", params["timeout"], MIN_TIMEOUT, MAX_TIMEOUT)
    _whole("max_addresses", params["max_addresses"], 1, MAX_ADDRESSES)
    _whole("min_prefix4", params["min_prefix4"], *PREFIX_BOUNDS[4])
    _whole("min_prefix6", params["min_prefix6"], *PREFIX_BOUNDS[6])
    for name in ("addresses", "allow"):
        if not isinstance(params[name], list):
            raise BlocklistError("%s is %s: a list of IP addresses or networks" % (name, _shown(params[name])))
    allow = [parse_network(value, "allow") for value in params["allow"]]
    asked = []
    for value in params["addresses"]:
        net = parse_network(value, "addresses")
        if net not in asked:
            asked.append(net)
    if len(asked) > params["max_addresses"]:
        raise BlocklistError("addresses names %d addresses or networks: at most max_addresses=%d in one run"
                             % (len(asked), params["max_addresses"]))
    if params["all"] and state != "absent":
        raise BlocklistError("all=true unblocks everything: it goes with state=absent")
    if params["all"] and asked:
        raise BlocklistError("all=true unblocks everything: leave addresses empty with it")
    incident_id = params.get("incident_id")
    if incident_id is not None and (not isinstance(incident_id, str) or not _run_lock.INCIDENT_ID.match(incident_id)):
        raise BlocklistError("incident_id %s is not valid (letters, digits and ._:-, at most 64)" % _shown(incident_id))
    persist_path = params.get("persist_path") or PERSIST_PATH
    if not isinstance(persist_path, str) or not persist_path.startswith("/") or "\n" in persist_path:
        raise BlocklistError("persist_path %s is not an absolute path" % _shown(persist_path))
    if (asked or params["all"]) and incident_id is None:
        raise BlocklistError("state=%s with addresses needs incident_id (the incident the addresses are %s for)"
                             % (state, "blocked" if state == "present" else "unblocked"))
    if state == "present":
        for net in asked:
            refusal(net, allow, params)
    addresses = [net for net in asked if _covered(net, asked) is None]
    return dict(addresses=addresses, allow=allow, persist_path=persist_path)


def refusal(net, allow, params):
    """Raise BlocklistError naming `net` and why it is never blocked: special, allowed, or too broad."""
    why = special(net)
    if why:
        raise BlocklistError("refused to block %s: it %s" % (text_of(net), why))
    for allowed in allow:
        if allowed.version == net.version and allowed.overlaps(net):
            raise BlocklistError("refused to block %s: it %s allowed %s" % (
                text_of(net), "is in" if net.subnet_of(allowed) else "overlaps", text_of(allowed)))
    minimum = params["min_prefix%d" % net.version]
    if net.prefixlen < minimum:
        raise BlocklistError("refused to block %s: broader than min_prefix%d=%d" % (text_of(net), net.version, minimum))


# ---------------------------------------------------------------------------------------------------- nft
class Nft:
    """nft, run as an argv list with the script on stdin."""

    def __init__(self, binary=None):
        self.binary = binary or shutil.which("nft")

    def run(self, args, script=None):
        """nft's stdout; NftFailed with its message when it exits non-zero, BlocklistError when it cannot run or is
        not permitted."""
        if self.binary is None:
            raise BlocklistError("nft is not installed (package nftables): cannot read or change the blocklist")
        try:
            res = subprocess.run([self.binary, *args], input=(script or "").encode(), capture_output=True, timeout=NFT_TIMEOUT,
                                 check=False, env=dict(os.environ, LC_ALL="C"))
        except subprocess.TimeoutExpired:
            raise BlocklistError("nft %s did not answer within %d s" % (" ".join(args), NFT_TIMEOUT)) from None
        except OSError as exc:
            raise BlocklistError("cannot run %s: %s" % (self.binary, exc.strerror or exc)) from None
        err = res.stderr.decode("utf-8", "replace").strip()
        if res.returncode != 0:
            if "Operation not permitted" in err:
                raise BlocklistError("nft is not permitted to read or change the firewall here (run as root, with CAP_NET_ADMIN)")
            raise NftFailed(" ".join(line.strip() for line in err.splitlines()[:6])[:600] or "nft exited %d" % res.returncode)
        return res.stdout.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------- read
def _value_text(value):
    """(text as nft takes it, [networks]) of a set element's value: a prefix, a range or an address."""
    if isinstance(value, dict) and "prefix" in value:
        net = ipaddress.ip_network("%s/%s" % (value["prefix"]["addr"], value["prefix"]["len"]), strict=False)
        return text_of(net), [net]
    if isinstance(value, dict) and "range" in value:
        low, high = (ipaddress.ip_address(end) for end in value["range"])
        return "%s-%s" % (low, high), list(ipaddress.summarize_address_range(low, high))
    net = ipaddress.ip_network(value)
    return text_of(net), [net]


def parse_elements(items):
    """[{'address', 'networks', 'timeout', 'expires_in', 'incident_id'}] of a set's `elem` list as `nft -j` shows it:
    each a plain value or {'elem': {'val', 'timeout', 'expires', 'comment'}}; a value is an address, a prefix
    {'prefix': {'addr', 'len'}} or a range."""
    found = []
    for item in items or []:
        details = item["elem"] if isinstance(item, dict) and "elem" in item else {"val": item}
        address, networks = _value_text(details["val"])
        found.append(dict(address=address, networks=networks, timeout=details.get("timeout"),
                          expires_in=details.get("expires"), incident_id=details.get("comment")))
    return found


def _is_drop_rule(rule, version):
    """`ip saddr @blocked4 ... drop` (or the ip6 one), whatever counter it carries."""
    expr = rule.get("expr") or []
    matches = [part["match"] for part in expr if isinstance(part, dict) and "match" in part]
    return any(match.get("op") == "==" and match.get("right") == "@" + SETS[version]
               and match.get("left") == {"payload": {"protocol": MATCH[version], "field": "saddr"}} for match in matches) \
        and any(isinstance(part, dict) and "drop" in part for part in expr)


def parse_listing(text, table):
    """The blocklist's state from `nft -j list table inet <table>`: {'table': True, 'sets': {version: elements or
    None when the set is missing}, 'chain': bool, 'rules': {version: bool}}. BlocklistError when a set or the chain
    of that name is not the blocklist's (another type, flags or hook: the table is someone else's)."""
    state = dict(table=True, sets={4: None, 6: None}, chain=False, rules={4: False, 6: False})
    try:
        objects = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BlocklistError("cannot read nft's listing of table inet %s: %s" % (table, exc)) from None
    where = "table inet %s" % table
    for obj in objects:
        if "set" in obj:
            found = obj["set"]
            for version, name in SETS.items():
                if found.get("name") != name:
                    continue
                if found.get("type") != SET_TYPES[version] or not {"interval", "timeout"} <= set(found.get("flags") or []):
                    raise BlocklistError("set %s in %s is not a blocklist set (type %s, flags %s; expected %s, interval and timeout):"
                                         " choose another table" % (name, where, found.get("type"), ",".join(found.get("flags") or []),
                                                                    SET_TYPES[version]))
                try:
                    state["sets"][version] = parse_elements(found.get("elem"))
                except (ValueError, KeyError, TypeError) as exc:
                    raise BlocklistError("cannot read the elements of set %s in %s: %s" % (name, where, exc)) from None
        elif "chain" in obj and obj["chain"].get("name") == CHAIN:
            chain = obj["chain"]
            shape = (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy"))
            if shape != ("filter", "prerouting", PRIORITY, "accept"):
                raise BlocklistError("chain %s in %s is type %s hook %s priority %s policy %s, not the blocklist's (filter, prerouting, %d,"
                                     " accept): choose another table" % ((CHAIN, where) + shape + (PRIORITY,)))
            state["chain"] = True
        elif "rule" in obj and obj["rule"].get("chain") == CHAIN:
            for version in SETS:
                state["rules"][version] = state["rules"][version] or _is_drop_rule(obj["rule"], version)
    return state


def read(nft, table):
    """The blocklist's state (parse_listing); {'table': False, ...} when the table does not exist."""
    try:
        text = nft.run(["-j", "list", "table", "inet", table])
    except NftFailed as exc:
        if "No such file or directory" in str(exc):
            return dict(table=False, sets={4: None, 6: None}, chain=False, rules={4: False, 6: False})
        raise BlocklistError("cannot list table inet %s: %s" % (table, exc)) from None
    return parse_listing(text, table)


def blocked(state):
    """[{'address', 'expires_in', 'timeout', 'incident_id'}] of both sets, IPv4 first."""
    return [{key: element[key] for key in ("address", "expires_in", "timeout", "incident_id")}
            for version in (4, 6) for element in state["sets"][version] or []]


# ---------------------------------------------------------------------------------------------------- plan
def structure(state, table):
    """The lines that create what is missing of the table, sets, chain and drop rules."""
    lines = []
    if not state["table"]:
        lines.append("add table inet %s" % table)
    for version, name in SETS.items():
        if state["sets"][version] is None:
            lines.append("add set inet %s %s { type %s; flags interval, timeout; }" % (table, name, SET_TYPES[version]))
    if not state["chain"]:
        lines.append("add chain inet %s %s { type filter hook prerouting priority %d; policy accept; }" % (table, CHAIN, PRIORITY))
    for version, name in SETS.items():
        if not state["rules"][version]:
            lines.append("add rule inet %s %s %s saddr @%s counter drop" % (table, CHAIN, MATCH[version], name))
    return lines


def _holding(net, elements):
    """The element whose networks hold `net`, or None."""
    for element in elements:
        if any(net.subnet_of(other) for other in element["networks"]):
            return element
    return None


def _within(net, elements):
    """The elements lying inside `net` (that `net` is not itself held by)."""
    return [element for element in elements if all(other.subnet_of(net) for other in element["networks"])]


def plan(state, params, addresses):
    """{'add': [(version, text)], 'remove': [(version, text)], 'refresh': [texts], 'kept': [(text, why)], 'lines': [...]}:
    what to change for `addresses` (check_params' networks) against `state`. BlocklistError for an address to unblock
    that is blocked only as part of a broader element, or an element that partly overlaps one asked for."""
    table, timeout = params["table"], params["timeout"]
    add, remove, refresh, kept = [], [], [], []
    elements = {version: list(state["sets"][version] or []) for version in SETS}
    if params["state"] == "absent" and params["all"]:
        remove = [(version, element["address"]) for version in SETS for element in elements[version]]
    for net in addresses:
        present = elements[net.version]
        holder = _holding(net, present)
        inside = _within(net, present)
        partial = [element for element in present if element is not holder and element not in inside
                   and any(other.overlaps(net) for other in element["networks"])]
        if partial:
            raise BlocklistError("%s partly overlaps blocked %s: unblock that first" % (text_of(net), partial[0]["address"]))
        if params["state"] == "present":
            if holder is not None:
                if params["refresh"]:
                    pair = (net.version, holder["address"])
                    if pair not in add:
                        remove.append(pair)
                        add.append(pair)
                        refresh.append(holder["address"])
                else:
                    kept.append((text_of(net), "already blocked" if holder["address"] == text_of(net) else "already blocked by %s" % holder["address"]))
                continue
            remove.extend((net.version, element["address"]) for element in inside)  # replaced by the broader network
            add.append((net.version, text_of(net)))
        else:
            if holder is not None and holder["address"] != text_of(net):
                raise BlocklistError("%s is blocked as part of %s: unblock %s (or nothing)" % (text_of(net), holder["address"], holder["address"]))
            remove.extend((net.version, element["address"]) for element in ([holder] if holder else inside))
    lines = []
    if params["state"] == "present" and addresses:
        lines = structure(state, table)
    comment = ' comment "%s"' % params["incident_id"] if params.get("incident_id") else ""
    for version, name in SETS.items():
        gone = [text for item_version, text in remove if item_version == version]
        if gone:
            lines.append("delete element inet %s %s { %s }" % (table, name, ", ".join(gone)))
    for version, name in SETS.items():
        new = [text for item_version, text in add if item_version == version]
        if new:
            lines.append("add element inet %s %s { %s }" % (table, name, ", ".join("%s timeout %ds%s" % (text, timeout, comment) for text in new)))
    return dict(add=add, remove=remove, refresh=refresh, kept=kept, lines=lines)


# ------------------------------------------------------------------------------------------------- persist
def _persisted_elements(state):
    return ["%s %s" % (element["address"], element["incident_id"] or "") for version in (4, 6) for element in state["sets"][version] or []]


def boot_script(state, table):
    """The nft script that rebuilds the blocklist as `state` holds it (one transaction: the table is replaced whole,
    so loading it twice gives the same table). Each element keeps the time it had left, counted again from the load:
    a host down for an hour blocks an hour longer, never shorter."""
    empty = dict(table=False, sets={4: None, 6: None}, chain=False, rules={4: False, 6: False})
    lines = ["# runbooks.incident nft_blocklist: table inet %s as it was at the last change, loaded at boot by" % table,
             "# runbooks-nft-blocklist.service. Written by the module; a hand edit is lost at its next change.",
             PERSISTED_MARK + json.dumps(_persisted_elements(state)),
             "add table inet %s" % table, "delete table inet %s" % table] + structure(empty, table)
    for version, name in SETS.items():
        items = []
        for element in state["sets"][version] or []:
            item = element["address"]
            if element["timeout"]:
                item += " timeout %ds" % element["timeout"]
                if element["expires_in"]:
                    item += " expires %ds" % max(1, element["expires_in"])
            if element["incident_id"] and _run_lock.INCIDENT_ID.match(element["incident_id"]):
                item += ' comment "%s"' % element["incident_id"]
            items.append(item)
        if items:
            lines.append("add element inet %s %s { %s }" % (table, name, ", ".join(items)))
    return "".join(line + "\n" for line in lines)


def persisted(path):
    """The elements line of the boot script at `path` (a list), or None when there is none; BlocklistError when
    something else is there (a symlink, a FIFO, a file the module did not write)."""
    try:
        fd = _fileio.open_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BlocklistError("persist_path %s: %s" % (path, exc.strerror or exc)) from None
    with os.fdopen(fd, "rb") as handle:
        text = handle.read(MAX_PERSISTED).decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith(PERSISTED_MARK):
            try:
                found = json.loads(line[len(PERSISTED_MARK):])
            except ValueError:
                break
            if isinstance(found, list):
                return found
    raise BlocklistError("persist_path %s is not a blocklist the module wrote (no %r line): move it away" % (path, PERSISTED_MARK.strip()))


def persist(nft, path, params, state, check_mode):
    """Write the boot script of `state` at `path` when persisting was asked or was asked before (the file is there)
    and what it blocks differs from `state`. The path written, or None."""
    current = persisted(path)
    if current is None and not params.get("persist"):
        return None
    if current == _persisted_elements(state):
        return None
    script = boot_script(state, params["table"])
    try:
        nft.run(["-c", "-f", "-"], script)
    except NftFailed as exc:
        raise BlocklistError("nft refused the boot script (nft -c): %s" % exc) from None
    if not check_mode:
        try:
            _fileio.makedirs(os.path.dirname(path), 0o700)
            _fileio.write_bytes(path, script.encode(), 0o600)
        except OSError as exc:
            raise BlocklistError("cannot write persist_path %s: %s" % (path, exc.strerror or exc)) from None
    return path


# ----------------------------------------------------------------------------------------------------- run
def _texts(pairs, skip=()):
    return [text for _version, text in pairs if text not in skip]


def _summary(changes, params, check_mode):
    would = "would " if check_mode else ""
    words = []
    added = _texts(changes["add"], changes["refresh"])
    removed = _texts(changes["remove"], changes["refresh"])
    if added:
        words.append("%sblock %s for %d s" % (would, ", ".join(added), params["timeout"]))
    if changes["refresh"]:
        words.append("%srenew %s for %d s" % (would, ", ".join(changes["refresh"]), params["timeout"]))
    if removed:
        words.append("%sunblock %s" % (would, ", ".join(removed)))
    if not words:
        words.append("%screate the blocklist's table, sets, chain or rules that were missing" % would
                     if changes["lines"] else "no change")
    text = "; ".join(words)
    if changes["kept"]:
        text += "; left as they are: %s" % ", ".join("%s (%s)" % pair for pair in changes["kept"])
    return text


def _elements(state):
    return [element["address"] for version in (4, 6) for element in state["sets"][version] or []]


def run(params, check_mode=False, nft=None):
    """The module's result. BlocklistError when an input is refused or nft cannot be used (nothing changed)."""
    chosen = check_params(params)
    nft = nft or Nft()
    table, path = params["table"], chosen["persist_path"]
    persisting = None  # whether a change of the sets is persisted, known whenever the sets may change
    if chosen["addresses"] or params["all"] or params.get("persist"):
        # Read before any change, so a path holding something else is refused with nothing changed.
        persisting = persisted(path) is not None or bool(params.get("persist"))
    for attempt in (1, 2):
        before = read(nft, table)
        changes = plan(before, params, chosen["addresses"])
        script = "".join(line + "\n" for line in changes["lines"])
        result = dict(changed=bool(script), state=params["state"], table=table, added=_texts(changes["add"], changes["refresh"]),
                      removed=_texts(changes["remove"], changes["refresh"]), refreshed=changes["refresh"],
                      blocked_before=blocked(before), blocked=blocked(before), script=script)
        if params.get("incident_id") is not None:
            result["incident_id"] = params["incident_id"]
        if not script:
            result["persisted"] = persist(nft, path, params, before, check_mode)
            result["changed"] = bool(result["persisted"])
            result["msg"] = "table inet %s: %s" % (table, _summary(changes, params, check_mode))
            if result["persisted"]:
                result["msg"] += "; %s %s" % ("would write" if check_mode else "wrote", result["persisted"])
            return result
        try:
            nft.run(["-c", "-f", "-"], script)
        except NftFailed as exc:
            raise BlocklistError("nft refused the change (nft -c): %s" % exc) from None
        if check_mode:
            # The elements change, so the boot script would be written whenever persisting applies.
            result["persisted"] = path if persisting else None
            result["msg"] = "check mode: table inet %s: %s; nothing was changed" % (table, _summary(changes, params, True))
            return result
        try:
            nft.run(["-f", "-"], script)
        except NftFailed as exc:
            if attempt == 1 and _elements(read(nft, table)) != _elements(before):
                continue  # an element expired or was changed since the read: plan again from what is there now
            raise BlocklistError("nft refused the change: %s" % exc) from None
        break
    try:
        after = read(nft, table)
        result["blocked"] = blocked(after)
        result["persisted"] = persist(nft, path, params, after, False)
    except BlocklistError as exc:
        raise ReadAfterFailed("table inet %s: %s, but cannot read the sets or write the boot script after it: %s" % (
            table, _summary(changes, params, False), exc), result) from None
    result["msg"] = "table inet %s, incident %s: %s" % (table, params["incident_id"], _summary(changes, params, False))
    if result["persisted"]:
        result["msg"] += "; wrote %s" % result["persisted"]
    return result
