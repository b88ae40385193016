# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a dry run must leave as it found it (docs/conventions.md, 1): the state of a scenario's hosts, taken before
and after each check-mode run and compared.

A host that runs systemd contributes:
- every file, directory and link of its root filesystem below /etc, /opt, /srv, /usr/local, /var, /root and /home,
  and of /run/secrets: type, mode, owner, size, modification time and the SHA-256 of the content; not /var/log,
  /var/cache, /var/tmp and the state systemd and apt keep of their own;
- every unit: load, active and enablement state, and the invocation id, so that a restart or a job run shows;
- the containers of its Docker engine (id, image, state, start time, restarts), its images, volumes and networks;
- every database of the PostgreSQL servers it runs in containers: the roles (with a digest of their password
  verifiers), the schema (a digest of `pg_dump --schema-only`) and each table's row count and a digest of all its
  rows. The cluster's files change on their own (WAL, statistics), so a directory holding a PG_VERSION is compared
  through SQL only.
An S3 emulator contributes every object of every bucket (key, size, ETag). Any other container (pebble) keeps its
state in memory with no listing to compare, and contributes nothing.

Run as a script: `host_state.py save FILE HOST...` keeps the state, `host_state.py compare FILE HOST...` prints what
differs and exits 1 if anything does. The hosts are named by their containers (molecule/instances.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

COLLECTOR = Path(__file__).with_name("host_state_collector.py")


# A timer due this soon (seconds) is let run first: a scheduled job that ran during the dry run would be a change
# the dry run did not make. Check runs in the scenarios take about a minute.
WINDOW = 150
SETTLE_TIMEOUT = 900
# (seconds, units) of each wait for the hosts to settle: what a scenario's check runs waited for.
WAITS: list = []


def inspect(host: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", host], capture_output=True, text=True, check=True).stdout)[0]


def s3_objects(address: str, port: str) -> dict:
    """Every object of every bucket of a moto server (its S3 REST API accepts unsigned requests)."""
    def listing(path):
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=30) as response:
            return ET.fromstring(response.read())

    def strip(tag):
        return tag.rsplit("}", 1)[-1]  # the XML namespace
    found = {}
    for bucket in (node.text for node in listing("/").iter() if strip(node.tag) == "Name"):
        token = ""
        while True:
            page = listing(f"/{bucket}?list-type=2" + (f"&continuation-token={urllib.parse.quote(token)}" if token else ""))
            for item in (node for node in page if strip(node.tag) == "Contents"):
                fields = {strip(child.tag): child.text for child in item}
                found[f"s3://{bucket}/{fields['Key']}"] = [fields["Size"], fields["ETag"]]
            token = next((node.text for node in page if strip(node.tag) == "NextContinuationToken"), "")
            if not token:
                break
        found.setdefault(f"s3://{bucket}/", ["bucket"])
    return found


def runs_systemd(info: dict) -> bool:
    """Whether a container (its `docker inspect`) is a host booted with systemd, not an emulator."""
    return info["Path"].endswith("/systemd")


def take_one(host: str) -> dict:
    info = inspect(host)
    command = [info["Path"], *info["Args"]]
    if runs_systemd(info):
        res = subprocess.run(["docker", "exec", "-i", host, "python3", "-", str(WINDOW)], input=COLLECTOR.read_text(),
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{host}: taking its state failed: {res.stderr.strip()[-2000:]}")
        return json.loads(res.stdout)
    if any(part.endswith("moto_server") for part in command):
        port = command[command.index("-p") + 1] if "-p" in command else "5000"
        address = next(iter(info["NetworkSettings"]["Networks"].values()))["IPAddress"]
        return {"s3": s3_objects(address, port), "due": [], "busy": []}
    return {"due": [], "busy": []}


def take(hosts: list[str], settle: bool = True) -> dict:
    """The state of `hosts`; with `settle`, once no unit is starting or stopping and no timer is due within WINDOW
    seconds (waits for them, up to SETTLE_TIMEOUT)."""
    start = time.monotonic()
    deadline = start + SETTLE_TIMEOUT
    waited_for = set()
    while True:
        state = {host: take_one(host) for host in hosts}
        waiting = {host: part["due"] + part["busy"] for host, part in state.items() if part["due"] or part["busy"]}
        if not waiting or not settle:
            if waited_for:
                WAITS.append((time.monotonic() - start, sorted(waited_for)))
            return state
        waited_for.update(f"{host}: {unit}" for host, units in waiting.items() for unit in units)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the hosts did not settle in {SETTLE_TIMEOUT} s (units due or busy: {waiting})")
        time.sleep(5)


def differences(before: dict, after: dict) -> list[str]:
    """What changed between two states, one line each, naming what changed and never a content (a file may be a
    secret: only that its digest differs is said)."""
    found = []
    for host in sorted(set(before) | set(after)):
        old, new = before.get(host, {}), after.get(host, {})
        for part in ("files", "units", "containers", "engine", "s3"):
            old_part = old.get(part, {})
            if part == "units":
                # A daemon-reload unloads units that are not running and nothing refers to (a page@ instance that ran
                # days ago): gone from the list, yet nothing was done to them. One that appears or runs still shows.
                old_part = {name: unit for name, unit in old_part.items()
                            if name in new.get(part, {}) or not (unit.get("ActiveState") == "inactive" and unit.get("SubState") == "dead")}
            found += compared(f"{host}: {part}", old_part, new.get(part, {}))
        for server in sorted(set(old.get("databases", {})) | set(new.get("databases", {}))):
            old_cluster, new_cluster = old.get("databases", {}).get(server, {}), new.get("databases", {}).get(server, {})
            label = f"{host}: postgres {server}"
            found += compared(f"{label} roles", dict.fromkeys(old_cluster.get("roles", []), True),
                              dict.fromkeys(new_cluster.get("roles", []), True), values=False)
            old_dbs, new_dbs = old_cluster.get("databases", {}), new_cluster.get("databases", {})
            found += compared(f"{label} databases", dict.fromkeys(old_dbs, True), dict.fromkeys(new_dbs, True))
            for db in sorted(set(old_dbs) & set(new_dbs)):
                if old_dbs[db]["schema"] != new_dbs[db]["schema"]:
                    found.append(f"{label} database {db}: the schema changed")
                found += compared(f"{label} database {db} table", old_dbs[db]["tables"], new_dbs[db]["tables"], values=False)
    return found


def summary(found: list[str], limit: int = 60) -> str:
    """The differences, at most `limit` lines of them (a package install alone is hundreds of files)."""
    more = f"\n... and {len(found) - limit} more" if len(found) > limit else ""
    return "\n".join(found[:limit]) + more


def compared(label: str, old: dict, new: dict, values: bool = True) -> list[str]:
    lines = [f"{label}: {key} appeared" for key in sorted(set(new) - set(old))]
    lines += [f"{label}: {key} disappeared" for key in sorted(set(old) - set(new))]
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            lines.append(f"{label}: {key} changed" + (f" ({described(old[key], new[key])})" if values else ""))
    return lines


def described(old, new) -> str:
    """Which fields of an entry changed, with the values where they are not digests."""
    if isinstance(old, dict):
        return ", ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))
    if isinstance(old, list) and old[:1] == new[:1] == ["file"]:
        fields = ("type", "mode", "uid", "gid", "size", "mtime", "content")
        return ", ".join(name for name, a, b in zip(fields, old, new) if a != b)
    return f"{old!r} -> {new!r}"


def main(argv: list[str]) -> int:
    command, path, hosts = argv[0], argv[1], argv[2:]
    if command == "save":
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(take(hosts), handle)
        return 0
    with open(path, encoding="utf-8") as handle:
        before = json.load(handle)
    found = differences(before, take(hosts, settle=False))
    if found:
        print(summary(found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
