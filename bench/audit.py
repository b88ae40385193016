# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Audit archive verification (audit_manifest / audit_diff) against sha256sum and rsync -anc, in one run.

Run with `python bench/audit.py [--size-mb 500] [--files 8760,40000] [--repeat 3] [--fleet 20] [--keep]` (see
bench/README.md). Generates each archive (one year of hourly files, and a many-small-files variant) plus an
identical copy standing for the log server's, warms the page cache, and times each contender `--repeat` times
(median). Then, with Docker, playbooks/audit_integrity.yml over a fleet of containers against one host.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO_ROOT / ".build" / "collections"
LINK = COLLECTIONS / "ansible_collections" / "runbooks" / "incident"
if not LINK.exists():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    LINK.symlink_to(REPO_ROOT)

GOALS = {"sha256sum": "full verification / sha256sum <= 0.30", "rsync": "full verification of both copies / rsync -anc <= 2.0",
         "incremental": "incremental check of an unchanged archive <= 1 s", "fleet": "fleet check / 1-host check <= 3"}
HOST_IMAGE = "runbooks-sandbox/host:bookworm"
FLEET_NETWORK = "runbooks-bench-fleet"
# 30 days of hourly files per app host, written in the container; the log server holds the same under <root>/<host>.
WRITER = ("import json, os, sys, time; start = time.mktime((2026, 10, 1, 0, 0, 0, 0, 0, 0)); root = sys.argv[1]; host = sys.argv[2]\n"
          "for h in range(720):\n"
          "    p = time.strftime(root + '/%Y/%m/%d/%H.jsonl', time.gmtime(start + h * 3600)); os.makedirs(os.path.dirname(p), exist_ok=True)\n"
          "    open(p, 'w').write(''.join(json.dumps({'host': host, 'hour': h, 'row': r}) + '\\n' for r in range(100)))\n"
          "    os.utime(p, (start + h * 3600 + 3599,) * 2)\n")
# One process per measurement, as the hourly timer runs it: interpreter start and imports are included.
MANIFEST = ("import json, sys; sys.path.insert(0, %r); "
            "from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest as m; "
            "r = m.build(sys.argv[1], cache_path=sys.argv[2] or None, full=sys.argv[3] == 'full'); "
            "print(json.dumps(dict(root=r['root'], count=r['count'], hashed=r['hashed'])))" % str(COLLECTIONS))
DIFF = ("import json, sys; sys.path.insert(0, %r); "
        "from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest as m; "
        "a, b = m.build(sys.argv[1], full=True), m.build(sys.argv[2], full=True); d = m.diff(a, b); "
        "print(json.dumps(dict(ok=d['ok'], mismatches=len(d['mismatches']))))" % str(COLLECTIONS))


def generate(root, files, total_bytes, seed):
    """`files` files of about total_bytes/files bytes each, laid out YYYY/MM/DD/HH[-n].jsonl, old mtimes."""
    rng = random.Random(seed)
    size = max(1, total_bytes // files)
    start = time.mktime((2025, 1, 1, 0, 0, 0, 0, 0, 0))
    per_hour = max(1, -(-files // 8760))
    for index in range(files):
        hour, part = divmod(index, per_hour)
        stamp = start + hour * 3600
        name = time.strftime("%Y/%m/%d/%H", time.gmtime(stamp)) + ("-%d" % part if per_hour > 1 else "") + ".jsonl"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        os.utime(path, (stamp + 3599, stamp + 3599))


def file_list(root):
    return sorted(str(path) for path in root.rglob("*") if path.is_file())


def timed(argv, repeat, **kwargs):
    """Median wall time of `repeat` runs, and the last run's stdout."""
    times, out = [], ""
    for _run in range(repeat):
        started = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs)
        times.append(time.perf_counter() - started)
        out = res.stdout
    return statistics.median(times), out


def bench_archive(work, files, total_bytes, repeat):
    local, remote, cache = work / ("local-%d" % files), work / ("remote-%d" % files), work / ("cache-%d.json" % files)
    generate(local, files, total_bytes, seed=files)
    subprocess.run(["cp", "-a", str(local) + "/.", str(remote)], check=True)
    listing = work / ("files-%d" % files)
    listing.write_text("\0".join(file_list(local)) + "\0")
    sha256sum = ["sh", "-c", "xargs -0 sha256sum < %s > /dev/null" % listing]
    manifest_full = [sys.executable, "-c", MANIFEST, str(local), "", "full"]
    manifest_incremental = [sys.executable, "-c", MANIFEST, str(local), str(cache), "incremental"]
    both = [sys.executable, "-c", DIFF, str(local), str(remote)]
    rsync = ["rsync", "-anc", "--delete", str(local) + "/", str(remote) + "/"]
    for warm in (sha256sum, rsync):  # page cache warm for everyone, as on a host that just wrote its archive
        subprocess.run(warm, check=True, capture_output=True)
    subprocess.run(manifest_incremental, check=True, capture_output=True)  # fills the cache
    rows = {}
    rows["sha256sum"] = timed(sha256sum, repeat)[0]
    rows["full"], out = timed(manifest_full, repeat)
    rows["rsync"] = timed(rsync, repeat)[0]
    rows["both"], both_out = timed(both, repeat)
    rows["incremental"], incremental_out = timed(manifest_incremental, repeat)
    assert json.loads(both_out) == {"ok": True, "mismatches": 0}
    assert json.loads(incremental_out)["hashed"] == 0 and json.loads(out)["count"] == files
    shutil.rmtree(local)
    shutil.rmtree(remote)
    return rows


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def fleet_containers(count):
    names = ["bench-app%02d" % index for index in range(1, count + 1)]
    return names, "bench-logs"


def fleet_up(count):
    apps, logs = fleet_containers(count)
    docker("network", "create", FLEET_NETWORK, check=False)
    for name in apps + [logs]:
        docker("rm", "-f", name, check=False)
        docker("run", "--detach", "--name", name, "--hostname", name, "--network", FLEET_NETWORK, "--tmpfs", "/run",
               "--tmpfs", "/run/lock", "--cap-add", "SYS_ADMIN", "--cgroupns=private", "--stop-signal", "SIGRTMIN+3", HOST_IMAGE)
    for name in apps:
        docker("exec", name, "python3", "-c", WRITER, "/var/lib/whatsapp-mcp/audit-archive", name)
        docker("exec", logs, "python3", "-c", WRITER, "/srv/audit-archive/" + name, name)
    return apps, logs


def fleet_down(count):
    apps, logs = fleet_containers(count)
    docker("rm", "-f", *apps, logs, check=False)
    docker("network", "rm", FLEET_NETWORK, check=False)


def bench_fleet(work, count, repeat):
    """Median wall time of playbooks/audit_integrity.yml (incremental, caches warm) on 1 and on `count` app hosts."""
    apps, logs = fleet_up(count)
    inventory = work / "fleet.yml"
    inventory.write_text(json.dumps({"all": {
        "vars": {"ansible_connection": "community.docker.docker", "ansible_python_interpreter": "/usr/bin/python3"},
        "children": {"whatsapp_mcp": {"hosts": {name: {} for name in apps}}, "offhost": {"hosts": {logs: {}}}}}}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"))

    def play(target):
        argv = ["ansible-playbook", "-i", str(inventory), str(REPO_ROOT / "playbooks" / "audit_integrity.yml"),
                "-f", str(count + 1), "-e", "incident_id=BENCH", "-e", "target=" + target]
        subprocess.run(argv, check=True, capture_output=True, env=env)  # warms the caches
        return timed(argv, repeat, env=env)[0]

    one = play(apps[0])
    fleet = play("whatsapp_mcp")
    return one, fleet


def verdict(met):
    return "met" if met else "NOT met"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500, help="size of each archive (default 500)")
    parser.add_argument("--files", default="8760,40000", help="file counts, comma-separated (default one year hourly, and 40k)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=20, help="app host containers for the fleet check (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (and the fleet's containers)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    print("audit archive verification: %d MB archives, %s files, %d CPUs, median of %d runs, page cache warm"
          % (args.size_mb, args.files, os.cpu_count(), args.repeat))
    print("%-8s %-34s %10s %10s" % ("files", "measure", "seconds", "ratio"))
    try:
        for files in (int(item) for item in args.files.split(",")):
            rows = bench_archive(work, files, args.size_mb * 1_000_000, args.repeat)
            ratio_sha = rows["full"] / rows["sha256sum"]
            ratio_rsync = rows["both"] / rows["rsync"]
            print("%-8d %-34s %10.3f %10s" % (files, "sha256sum (baseline)", rows["sha256sum"], "1.00"))
            print("%-8d %-34s %10.3f %10.2f" % (files, "audit_manifest full", rows["full"], ratio_sha))
            print("%-8d %-34s %10.3f %10s" % (files, "rsync -anc local remote (baseline)", rows["rsync"], "1.00"))
            print("%-8d %-34s %10.3f %10.2f" % (files, "manifests of both + audit_diff", rows["both"], ratio_rsync))
            ratio_incremental = rows["incremental"] / rows["sha256sum"]
            print("%-8d %-34s %10.3f %10.3f" % (files, "audit_manifest incremental", rows["incremental"], ratio_incremental))
            print("         goals: %s: %s; %s: %s; %s: %s" % (
                GOALS["sha256sum"], verdict(ratio_sha <= 0.30), GOALS["rsync"], verdict(ratio_rsync <= 2.0),
                GOALS["incremental"], verdict(rows["incremental"] <= 1.0)))
        if args.fleet:
            one, fleet = bench_fleet(work, args.fleet, args.repeat)
            print("%-8s %-34s %10.3f %10s" % ("1 host", "audit_integrity.yml (baseline)", one, "1.00"))
            print("%-8s %-34s %10.3f %10.2f" % ("%d hosts" % args.fleet, "audit_integrity.yml", fleet, fleet / one))
            print("         goal: %s: %s" % (GOALS["fleet"], verdict(fleet / one <= 3.0)))
    finally:
        if args.fleet and not args.keep:
            fleet_down(args.fleet)
        if args.keep:
            print("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
