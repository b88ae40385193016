# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup and restore of a service-shaped database: pg_backup / pg_restore against the seeds' pipelines.

Run with `python bench/restore.py [--size-gb 1.0] [--jobs 1,2] [--keep]` (see bench/README.md). Everything runs
against one throwaway PostgreSQL 15 cluster started here; only ratios measured in the same run mean anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pwd
import shutil
import socket
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
sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(REPO_ROOT / "tests"))

# pylint: disable=wrong-import-position
import servicedb  # noqa: E402
from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_backup, _pg_restore  # noqa: E402

PG_BIN = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
DB = "wa_mcp"
TARGET = "target"
# Rows per GB (1e9 bytes of pg_database_size, indexes included), messages and audit rows 3:2 as in the service.
# Calibrated on PostgreSQL 15: 1.75 M messages and 1.17 M audit rows make 1.00 GB (~570 bytes per message with its
# share of audit rows; 3 M messages and 2 M audit rows would make ~1.7 GB).
MESSAGES_PER_GB = 1_750_000
AUDIT_PER_GB = MESSAGES_PER_GB * 2 // 3
# What the pg_restore module sets for its sessions.
RESTORE_PGOPTIONS = "-c maintenance_work_mem=512MB -c synchronous_commit=off"
SEEDS_BACKUP = "pg_dump | gzip (seeds)"
SEEDS_RESTORE = "gunzip | psql (seeds)"
PG_RESTORE_J2 = "pg_restore -j2"
GOALS = {"backup": "ours / pg_dump | gzip <= 0.60", "restore": "ours / pg_restore -j2 <= 1.0", "downtime": "swap downtime <= 5 s"}


class Cluster:
    """A throwaway PostgreSQL cluster (default settings, fsync on) listening on a Unix socket only."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="bench-restore-"))
        self.data, self.sockets = self.base / "data", self.base / "sockets"
        self.run_as = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.sockets.mkdir()
        if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to the postgres OS user
            owner = pwd.getpwnam("postgres")
            for path in (self.base, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]

    def pg_ctl(self, *args):
        return self.run_as + [str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]

    def start(self):
        subprocess.run(self.run_as + [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                      "-E", "UTF8", "--locale=C"], check=True, capture_output=True, cwd=self.base)
        options = "-p %d -k %s -c listen_addresses=''" % (self.port, self.sockets)
        subprocess.run(self.pg_ctl("-l", str(self.base / "postgres.log"), "-o", options, "-w", "-t", "60", "start"),
                       check=True, capture_output=True, cwd=self.base)

    def runtime(self, pgoptions=None):
        return _pg.Runtime(login_user="postgres", login_unix_socket=str(self.sockets), login_port=self.port,
                           pg_bin_dir=str(PG_BIN), pgoptions=pgoptions)

    def remove(self):
        subprocess.run(self.pg_ctl("-m", "fast", "-w", "stop"), check=False, capture_output=True, cwd=self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def pipeline(commands, env, stdout=subprocess.DEVNULL):
    """Run argv lists connected by pipes (the last one writing to `stdout`); raise if any of them fails."""
    procs, source = [], None
    for index, argv in enumerate(commands):
        errors = tempfile.TemporaryFile()  # pylint: disable=consider-using-with
        proc = subprocess.Popen(argv, stdin=source, stdout=stdout if index == len(commands) - 1 else subprocess.PIPE,
                                stderr=errors, env=env)
        if source is not None:
            source.close()
        source = proc.stdout
        procs.append((argv, proc, errors))
    failures = []
    for argv, proc, errors in procs:
        if proc.wait() != 0:
            errors.seek(0)
            failures.append("%s: %s" % (os.path.basename(argv[0]), _pg.first_line(errors.read().decode(errors="replace"))))
        errors.close()
    if failures:
        raise RuntimeError("; ".join(failures))


def timed(func, *args, **kwargs):
    """(wall-clock seconds, rounded to the millisecond; result) of one call."""
    start = time.monotonic()
    result = func(*args, **kwargs)
    return round(time.monotonic() - start, 3), result


def dump_to(runtime, filters, path):
    with open(path, "wb") as out:
        pipeline([runtime.command("pg_dump", "-d", DB)] + filters, runtime.env(), stdout=out)


def reset_target(runtime, template="template0"):
    """A fresh TARGET (empty, or a copy of `template`), with no staging or pre-restore databases around it."""
    leftovers = runtime.databases_like("^%s_(pre_restore_.*|failed_restore_.*|restore_staging)$" % TARGET)
    for name in [TARGET] + leftovers:
        runtime.execute("DROP DATABASE IF EXISTS %s" % _pg.quote_ident(name))
    runtime.execute("CREATE DATABASE %s TEMPLATE %s" % (_pg.quote_ident(TARGET), _pg.quote_ident(template)))
    runtime.execute("CHECKPOINT")  # the copy's dirty pages must not be flushed during the timed run


def check_target(runtime, expected):
    counts = runtime.row_counts(TARGET, sorted(expected))
    if counts != expected:
        raise RuntimeError("%s holds wrong row counts after the restore: %s, expected %s" % (TARGET, counts, expected))


def populate(runtime, size_gb):
    messages, audit = round(MESSAGES_PER_GB * size_gb), round(AUDIT_PER_GB * size_gb)
    runtime.execute("CREATE DATABASE %s" % DB)
    seconds, _result = timed(runtime.execute, servicedb.populate_sql(messages=messages, audit_rows=audit), db=DB)
    runtime.execute("VACUUM ANALYZE", db=DB)
    size = int(runtime.scalar("SELECT pg_database_size(%s)" % _pg.quote_literal(DB)))
    return dict(messages=messages, audit_rows=audit, size_bytes=size, populate_s=seconds)


def bench_backup(runtime, work):
    gzip, pigz = shutil.which("gzip") or "gzip", shutil.which("pigz") or "pigz"
    rows = []
    for name, filters in ((SEEDS_BACKUP, [[gzip, "-c"]]), ("pg_dump | pigz -p2", [[pigz, "-p2", "-c"]]),
                          ("pg_dump | pigz -p2 -1", [[pigz, "-p2", "-1", "-c"]])):
        path = work / ("%s.sql.gz" % len(rows))
        runtime.execute("CHECKPOINT")
        seconds, _result = timed(dump_to, runtime, filters, path)
        rows.append(dict(name=name, seconds=seconds, bytes=path.stat().st_size))
        print("  %-34s %8.1f s" % (name, seconds), flush=True)
        path.unlink()
    ours_dir = work / "ours"
    ours_dir.mkdir()
    runtime.execute("CHECKPOINT")
    seconds, result = timed(_pg_backup.backup, runtime, DB, str(ours_dir), fmt="plain")
    rows.append(dict(name="ours: pg_backup (plain, pigz -1)", seconds=seconds, bytes=result["manifest"]["size"], ours=True))
    print("  %-34s %8.1f s" % (rows[-1]["name"], seconds), flush=True)
    directory = work / "dump.dir"
    runtime.execute("CHECKPOINT")
    seconds, _result = timed(runtime.run, runtime.command("pg_dump", "-Fd", "-j2", "-Z1", "-f", str(directory), "-d", DB))
    rows.append(dict(name="pg_dump -Fd -j2 -Z1 (reference)", seconds=seconds,
                     bytes=sum(entry.stat().st_size for entry in directory.iterdir())))
    print("  %-34s %8.1f s" % (rows[-1]["name"], seconds), flush=True)
    for row in rows:
        row["ratio"] = round(row["seconds"] / rows[0]["seconds"], 3)
    return rows, result, directory


def bench_restore(runtime, restore_runtime, backup, directory, jobs_list):
    path, expected = backup["path"], backup["manifest"]["row_counts"]
    gunzip = shutil.which("gunzip") or "gunzip"
    runs = [(SEEDS_RESTORE, lambda: pipeline([[gunzip, "-c", path], runtime.psql_command(TARGET)], runtime.env())),
            (PG_RESTORE_J2, lambda: runtime.run(runtime.command("pg_restore", "--exit-on-error", "-j2", "-d", TARGET, str(directory)))),
            ("pg_restore -j1", lambda: runtime.run(runtime.command("pg_restore", "--exit-on-error", "-j1", "-d", TARGET, str(directory))))]
    rows = []
    for name, func in runs:
        reset_target(runtime)
        seconds, _result = timed(func)
        check_target(runtime, expected)
        rows.append(dict(name=name, seconds=seconds))
        print("  %-34s %8.1f s" % (name, seconds), flush=True)
    for number, jobs in enumerate(jobs_list, 1):
        reset_target(runtime, template=DB)  # a live database holding the data: the restore really swaps
        # The dump is of DB, restored into TARGET: allow_other_db, as an operator restoring into a copy would pass.
        seconds, result = timed(_pg_restore.restore, restore_runtime, path, TARGET, "BENCH-%d" % number, state="restored", jobs=jobs,
                                allow_other_db=True)
        if not (result["changed"] and result["verified"] and result["previous_db"]):
            raise RuntimeError("the restore did not swap a verified database into place: %s" % result.get("msg"))
        check_target(runtime, expected)
        rows.append(dict(name="ours: pg_restore jobs=%d" % jobs, seconds=seconds, jobs=jobs, downtime_s=result["downtime_s"],
                         function_s=result["duration_s"], ours=True))
        print("  %-34s %8.1f s (swap downtime %.3f s)" % (rows[-1]["name"], seconds, result["downtime_s"]), flush=True)
    by_name = {row["name"]: row["seconds"] for row in rows}
    for row in rows:
        row["ratio_seeds"] = round(row["seconds"] / by_name[SEEDS_RESTORE], 3)
        row["ratio_pg_restore_j2"] = round(row["seconds"] / by_name[PG_RESTORE_J2], 3)
    return rows


def report(meta, backup_rows, restore_rows):
    print("\n=== Results: %s database %.2f GB (%d bytes), %d messages, %d audit rows; %d CPUs; PostgreSQL %s ==="
          % (DB, meta["size_bytes"] / 1e9, meta["size_bytes"], meta["messages"], meta["audit_rows"], meta["cpus"],
             meta["server_version"]))
    print("\nBackup (ratio baseline: %s)" % SEEDS_BACKUP)
    print("  %-34s %9s %10s %10s" % ("method", "seconds", "MB", "/ seeds"))
    for row in backup_rows:
        print("  %-34s %9.1f %10.1f %10.2f" % (row["name"], row["seconds"], row["bytes"] / 1e6, row["ratio"]))
    print("\nRestore (ratio baselines: %s; %s)" % (SEEDS_RESTORE, PG_RESTORE_J2))
    print("  %-34s %9s %10s %16s %12s" % ("method", "seconds", "/ seeds", "/ pg_restore -j2", "downtime s"))
    for row in restore_rows:
        downtime = "%.3f" % row["downtime_s"] if "downtime_s" in row else "-"
        print("  %-34s %9.1f %10.2f %16.2f %12s" % (row["name"], row["seconds"], row["ratio_seeds"], row["ratio_pg_restore_j2"], downtime))
    ours = [row for row in restore_rows if row.get("jobs")]
    by_name = {row["name"]: row["seconds"] for row in restore_rows}
    print("\nScaling with jobs (speed-up against the same tool with one job)")
    print("  pg_restore: -j1 / -j2 = %.2f" % (by_name["pg_restore -j1"] / by_name[PG_RESTORE_J2]))
    for row in ours[1:]:
        print("  ours: jobs=%d / jobs=%d = %.2f" % (ours[0]["jobs"], row["jobs"], ours[0]["seconds"] / row["seconds"]))
    ours_backup = [row for row in backup_rows if row.get("ours")][0]
    best = min(ours, key=lambda row: row["seconds"])
    print("\nGoals")
    print("  backup:   ours / %s = %.2f (goal <= 0.60) %s" % (SEEDS_BACKUP, ours_backup["ratio"], verdict(ours_backup["ratio"] <= 0.60)))
    for row in ours:
        ratio = row["ratio_pg_restore_j2"]
        print("  restore:  jobs=%d: ours / %s = %.2f (goal <= 1.0) %s" % (row["jobs"], PG_RESTORE_J2, ratio, verdict(ratio <= 1.0)))
    worst = max(row["downtime_s"] for row in ours)
    print("  downtime: max swap downtime %.3f s (goal <= 5 s) %s" % (worst, verdict(worst <= 5)))
    return dict(backup=ours_backup["ratio"], restore_best=best["ratio_pg_restore_j2"], downtime_max_s=worst)


def verdict(met):
    return "MET" if met else "NOT MET"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="approximate database size (default 1.0)")
    parser.add_argument("--jobs", default="1,2", help="comma-separated jobs values for our restore (default 1,2)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running and its directory in place")
    args = parser.parse_args()
    jobs_list = [int(value) for value in args.jobs.split(",") if value.strip()]
    if not jobs_list or min(jobs_list) < 1:
        parser.error("--jobs needs one or more positive integers, e.g. 1,2")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    cluster = Cluster()
    try:
        cluster.start()
        runtime = cluster.runtime()
        print("cluster in %s (socket %s, port %d)" % (cluster.base, cluster.sockets, cluster.port), flush=True)
        meta = dict(size_gb_requested=args.size_gb, jobs=jobs_list, cpus=os.cpu_count(), server_version=runtime.ping())
        print("populating %s for ~%.2f GB ..." % (DB, args.size_gb), flush=True)
        meta.update(populate(runtime, args.size_gb))
        print("  %.3f GB in %.1f s" % (meta["size_bytes"] / 1e9, meta["populate_s"]), flush=True)
        work = cluster.base / "dumps"
        work.mkdir()
        print("backup:", flush=True)
        backup_rows, backup, directory = bench_backup(runtime, work)
        print("restore:", flush=True)
        restore_rows = bench_restore(runtime, cluster.runtime(RESTORE_PGOPTIONS), backup, directory, jobs_list)
        ratios = report(meta, backup_rows, restore_rows)
        results = Path(__file__).resolve().parent / "results"
        results.mkdir(exist_ok=True)
        out = results / ("restore-%s.json" % stamp)
        out.write_text(json.dumps(dict(timestamp=stamp, database=meta, backup=backup_rows, restore=restore_rows,
                                       ratios=ratios, goals=GOALS, baselines=dict(backup=SEEDS_BACKUP, restore=[SEEDS_RESTORE, PG_RESTORE_J2])),
                                  indent=2) + "\n")
        print("\nresults written to %s" % out)
    finally:
        if args.keep:
            print("cluster kept running: psql -h %s -p %d -U postgres; stop it with: %s"
                  % (cluster.sockets, cluster.port, " ".join(cluster.pg_ctl("stop"))))
        else:
            cluster.remove()


if __name__ == "__main__":
    main()
