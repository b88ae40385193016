# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs on a scenario host (its own python3, standard library only), fed on stdin by host_state.py: prints the
host's state as JSON. argv[1]: the seconds within which a due timer counts as due."""
import hashlib
import json
import os
import stat
import subprocess
import sys
import time

ROOTS = ["/etc", "/opt", "/srv", "/usr/local", "/var", "/root", "/home"]
# State of the system's own bookkeeping, logs and scratch space: written by whatever runs, not by a runbook.
SKIP = {"/var/log", "/var/cache", "/var/tmp", "/var/lib/systemd", "/var/lib/apt", "/var/lib/dhcp", "/var/lib/private",
        "/var/lib/logrotate", "/var/lib/docker", "/var/lib/containerd", "/root/.ansible", "/root/.cache"}
WINDOW = float(sys.argv[1])
TRANSIENT_UNIT_SUFFIXES = (".device", ".scope", ".mount", ".swap", ".slice")


def run(*argv):
    """The completed process; a program the host does not have (docker on a bare host) exits 127."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not installed")


def digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def files():
    found, root_dev = {}, os.lstat("/").st_dev

    def add(path, info):
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "link" if stat.S_ISLNK(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
        entry = [kind, oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid]
        if kind == "file":
            entry += [info.st_size, info.st_mtime_ns, digest(path)]
        elif kind == "link":
            entry += [os.readlink(path)]
        found[path] = entry

    def walk(top, same_device):
        for path, dirs, names in os.walk(top):
            if "PG_VERSION" in names:
                dirs[:] = []
                found[path] = ["postgresql cluster, compared through SQL"]
                continue
            kept = []
            for name in dirs:
                full = os.path.join(path, name)
                info = os.lstat(full)
                if full in SKIP or (same_device and info.st_dev != root_dev):
                    continue
                add(full, info)
                kept.append(name)
            dirs[:] = kept
            for name in names:
                full = os.path.join(path, name)
                try:
                    add(full, os.lstat(full))
                except FileNotFoundError:
                    continue

    for top in ROOTS:
        if os.path.isdir(top):
            walk(top, same_device=True)
    if os.path.isdir("/run/secrets"):
        walk("/run/secrets", same_device=False)
    return found


def units():
    listed = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "--full").stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip() and not line.split()[0].endswith(TRANSIENT_UNIT_SUFFIXES)]
    props = "Id,LoadState,ActiveState,SubState,UnitFileState,InvocationID"
    found, unit = {}, {}
    for line in run("systemctl", "show", "-p", props, "--", *names).stdout.split("\n") + [""]:
        if line.strip():
            key, _sep, value = line.partition("=")
            unit[key] = value
        elif unit:
            found[unit.pop("Id")] = unit
            unit = {}
    timers = json.loads(run("systemctl", "list-timers", "--all", "--output=json").stdout or "[]")
    due = [timer["unit"] for timer in timers if timer.get("next") and timer["next"] / 1e6 - time.time() < WINDOW]
    # Units being started, stopped or reloaded right now (a crash-looping service between restarts has no job).
    busy = [line.split()[1] for line in run("systemctl", "list-jobs", "--no-legend", "--plain").stdout.splitlines() if line.strip()]
    return found, due, busy


def docker(*argv):
    res = run("docker", *argv)
    return res.stdout.split() if res.returncode == 0 else []


def containers():
    """(each container's state, the engine's images, volumes and networks, what `docker inspect` said of them)."""
    ids = docker("ps", "-aq", "--no-trunc")
    inspected = json.loads(run("docker", "inspect", *ids).stdout) if ids else []
    found = {item["Name"]: {"id": item["Id"], "image": item["Image"], "status": item["State"]["Status"],
                            "started": item["State"]["StartedAt"], "restarts": item["RestartCount"]} for item in inspected}
    return found, {"images": sorted(docker("image", "ls", "-aq", "--no-trunc")), "volumes": sorted(docker("volume", "ls", "-q")),
                   "networks": sorted(docker("network", "ls", "-q", "--no-trunc"))}, inspected


LOCK_WAIT = "10s"
TABLES = r"""SELECT format('SELECT %L, count(*), md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) FROM %s t',
                     c.oid::regclass, c.oid::regclass)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1 \gexec"""


def databases(inspected):
    found = {}
    for item in inspected:
        env = dict(var.partition("=")[::2] for var in item["Config"]["Env"] or [])
        if "PGDATA" not in env or item["State"]["Status"] != "running":
            continue
        user, name = env.get("POSTGRES_USER", "postgres"), item["Name"]
        # A session holding a lock (a fault a scenario injects) must not stall the reads for as long as it holds it:
        # they give up after LOCK_WAIT and the database is recorded as unreadable with the error (a dry run that
        # released the lock then shows as a change).
        exec_ = ["docker", "exec", "-i", "-e", f"PGOPTIONS=-c lock_timeout={LOCK_WAIT}", item["Id"]]
        psql = exec_ + ["psql", "-X", "-q", "-U", user, "-At", "-v", "ON_ERROR_STOP=1"]
        res = run(*psql, "-d", "postgres", "-c", "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate ORDER BY 1")
        if res.returncode != 0:
            found[name] = {"error": res.stderr.strip()}
            continue
        roles = run(*psql, "-d", "postgres", "-c",
                    "SELECT rolname, rolsuper, rolcanlogin, md5(coalesce(rolpassword, '')), rolvaliduntil FROM pg_authid ORDER BY 1").stdout
        cluster = {"roles": roles.splitlines(), "databases": {}}
        for db, allowed in (line.split("|") for line in res.stdout.splitlines()):
            if allowed != "t":  # nobody can connect to it (ALLOW_CONNECTIONS false): its content cannot change either
                cluster["databases"][db] = {"schema": "not connectable", "tables": {}}
                continue
            dumped = run(*exec_, "pg_dump", "-U", user, "--schema-only", "-d", db)
            tables = subprocess.run(psql + ["-d", db], input=TABLES, capture_output=True, text=True, check=False)
            if dumped.returncode != 0 or tables.returncode != 0:
                error = next((line for line in (dumped.stderr + tables.stderr).splitlines() if "ERROR" in line), "failed")
                cluster["databases"][db] = {"schema": f"unreadable: {error}", "tables": {}}
                continue
            dump = dumped.stdout
            # pg_dump 15.14+ fences its output with a random key (\restrict KEY ... \unrestrict KEY).
            schema = "\n".join(line for line in dump.splitlines() if not line.startswith(("\\restrict ", "\\unrestrict ")))
            cluster["databases"][db] = {"schema": hashlib.sha256(schema.encode()).hexdigest(),
                                        "tables": {row.split("|")[0]: row.split("|")[1:] for row in tables.stdout.splitlines()}}
        found[name] = cluster
    return found


unit_states, due, busy = units()
container_states, engine, inspected = containers()
print(json.dumps({"files": files(), "units": unit_states, "containers": container_states, "engine": engine,
                  "databases": databases(inspected), "due": due, "busy": busy}))
