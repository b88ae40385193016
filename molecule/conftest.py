# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the scenarios' testinfra tests share. pytest loads this file for every molecule/<scenario>/tests/; the tests
import from it (`from conftest import playbook`), as tests/unit do from theirs."""
from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import uuid

import ansible_runner
import testinfra
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

import host_state
from exec_audit import ExecAudit

# The output of molecule's own runs of the scenario (the base config sets the path for them). Verify's runs must not
# add to it: the testinfra hosts' reads of secret files would be logged too, and playbook() scans each run itself.
MOLECULE_RUNS_LOG = os.environ.pop("ANSIBLE_LOG_PATH", None)

# Where the tests' time goes, by part of what playbook() does around each run: printed when the tests end, so a
# scenario's verify says whether its cost is the runs themselves or the checks around them.
SPENT = collections.defaultdict(lambda: [0, 0.0])


@contextlib.contextmanager
def spending(part):
    start = time.monotonic()
    try:
        yield
    finally:
        SPENT[part][0] += 1
        SPENT[part][1] += time.monotonic() - start


def pytest_terminal_summary(terminalreporter):
    if SPENT:
        terminalreporter.section("where the tests' time went")
        for part, (count, seconds) in sorted(SPENT.items(), key=lambda item: -item[1][1]):
            terminalreporter.write_line(f"{seconds:8.1f} s  {count:4d} x  {part}")
        for seconds, units in host_state.WAITS:
            terminalreporter.write_line(f"waited {seconds:.0f} s for the hosts to settle: {', '.join(units)}")
        for seconds, count, task in slowest_tasks():
            terminalreporter.write_line(f"{seconds:8.1f} s  {count:4d} x  task {task}")


def slowest_tasks(limit=25):
    """(seconds, runs, "playbook: task") of the tasks that took longest in all, from the timelines of the runs."""
    spent = collections.defaultdict(lambda: [0.0, 0])
    for path, text in incident_records().items():
        if not path.endswith("timeline.json"):
            continue
        for run in json.loads(text).get("runs", []):
            for task in run.get("tasks", []):
                if task.get("start") and task.get("end"):
                    entry = spent[f"{run.get('playbook')} ({run.get('mode')}): {task.get('task')}"]
                    entry[0] += (stamp(task["end"]) - stamp(task["start"])).total_seconds()
                    entry[1] += 1
    return sorted(((seconds, count, task) for task, (seconds, count) in spent.items()), reverse=True)[:limit]


def stamp(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


# Molecule's verifier forces colours (unfolded() removes what is left).
PLAYBOOK_ENV = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def other(name):
    """Another host of the scenario's inventory (the tests run against `testinfra_hosts`)."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def received_alerts(receiver="offhost"):
    """Every alert the stand-in for Alertmanager on `receiver` got so far (prepare starts it: one POSTed JSON list
    per line of /var/tmp/alerts.jsonl)."""
    lines = other(receiver).check_output("cat /var/tmp/alerts.jsonl 2>/dev/null || true").splitlines()
    return [alert for line in lines for alert in json.loads(line)]


@functools.lru_cache(maxsize=None)
def containers():
    """{inventory name: container} of the scenario's hosts (molecule/instances.py names the containers after the
    scenario: the inventory's `ansible_host`), in the inventory's order. A host of the group `died` is not one any
    more: host_died's prepare destroyed it."""
    runner = AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
    died = set(runner.get_hosts("died"))
    return {name: runner.get_variables(name).get("ansible_host", name) for name in runner.get_hosts("all") if name not in died}


def fed(host, command, data):
    """Run `command` (sh) on a testinfra host with `data` (bytes) on its stdin; the completed process. How a test
    hands a host a secret or a key: a command line is seen by every scan on the machine (the argv of every exec,
    other scenarios' runs included), stdin is not."""
    return subprocess.run(["docker", "exec", "-i", containers()[host.backend.host], "sh", "-c", command], input=data,
                          capture_output=True, check=False)


@functools.lru_cache(maxsize=None)
def runs_systemd(host):
    return host_state.runs_systemd(host_state.inspect(host))


@functools.lru_cache(maxsize=None)
def inventory_s3_secret_key():
    group_vars = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "inventories", "sandbox", "group_vars", "all.yml")
    with open(group_vars, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["offsite_sync_secret_key"]


# Where the hosts keep secrets: the service's decrypted secrets, the age key, the backup signing and audit shipping
# keys, TLS keys, the pager's settings (its routing key).
SECRET_FILES = ["/run/secrets/*", "/etc/whatsapp-mcp/age.key", "/etc/runbooks-incident/*.key", "/etc/whatsapp-mcp/tls/*",
                "/etc/letsencrypt/archive/*/privkey*.pem", "/etc/runbooks-incident/page.json"]
SECRET_READER = ("import glob, json, os, sys; print(json.dumps({p: open(p, errors='replace').read() for g in sys.argv[1:] "
                 "for p in sorted(glob.glob(g)) if os.path.isfile(p)}))")


def searchable(path, content):
    """The values in a secret file worth looking for: a private key's base64 lines, an age key's secret line, a
    pager's routing key, else the whole content. Not secret: certificates, and the records beside a pepper (its
    rotation id and expiry)."""
    if path.endswith("page.json"):
        return {json.loads(content).get("routing_key") or ""}
    if path.endswith((".rotation", "_expires_at")):
        return set()
    if "-----BEGIN" in content:
        if "PRIVATE KEY-----" not in content:
            return set()
        return {line for line in content.splitlines() if len(line) >= 40 and not line.startswith("-----")}
    if "AGE-SECRET-KEY-" in content:
        return {line for line in content.splitlines() if line.startswith("AGE-SECRET-KEY-")}
    return {content.strip()}


def held_secrets(hosts):
    """{value: where it is held} for every secret the scenario's hosts hold now (SECRET_FILES), and the S3 secret
    key the sandbox's inventory hands to the hosts."""
    found = {inventory_s3_secret_key(): "the S3 secret key of the sandbox inventory"}
    for host in hosts:
        if runs_systemd(host):
            res = subprocess.run(["docker", "exec", host, "python3", "-c", SECRET_READER, *SECRET_FILES],
                                 capture_output=True, text=True, check=True)
            for path, content in json.loads(res.stdout).items():
                found.update(dict.fromkeys(searchable(path, content), f"{host}:{path}"))
    return {value: place for value, place in found.items() if len(value) >= 12}


def incident_dir():
    """Where the timeline callback, enabled for every playbook() run, keeps the scenario's incidents: timelines,
    post-mortems, lifecycle records (RUNBOOKS_INCIDENT_DIR)."""
    return os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "incidents")


def incident_records():
    """{path: text} of every file the runs left in incident_dir()."""
    records = {}
    for directory, _dirs, files in os.walk(incident_dir()):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8", errors="replace") as handle:
                records[path] = handle.read()
    return records


def leaks(secrets, out, execs):
    """Where each secret appears: in a run's output, in the incident records (timeline, post-mortem), or in the argv
    of a program started during it."""
    found = [f"the secret held in {place} appears in the output" for value, place in secrets.items() if value in out]
    for path, text in incident_records().items():
        found += [f"the secret held in {place} appears in {path}" for value, place in secrets.items() if value in text]
    for value, place in secrets.items():
        programs = sorted({os.path.basename((args or [b"?"])[0]).decode(errors="replace") for _stamp, args in execs if value.encode() in b" ".join(args)})
        if programs:
            found.append(f"the secret held in {place} appears in the argv of {', '.join(programs)}")
    return found


@contextlib.contextmanager
def unchanged():
    """The block leaves every host of the scenario as it found it (molecule/host_state.py says what is compared):
    for dry runs, and for runs that must refuse before acting."""
    hosts = list(containers().values())
    with spending("the hosts' state before (settled)"):
        before = host_state.take(hosts)
    yield
    with spending("the hosts' state after"):
        found = host_state.differences(before, host_state.take(hosts, settle=False))
    assert not found, "changed on the hosts:\n" + host_state.summary(found)


def playbook(name, *extra, check=False, vars_files=(), artifacts=None, secrets=(), injected=None):
    """Run playbooks/<name> on the scenario's inventory, as an operator would; (rc, its output with colours removed
    and lines unfolded, stderr included: errors go there). Each of `extra` is an extra var ("key=value" or a JSON
    object) or a command-line flag ("--diff"); `vars_files` are passed as -e @file, relative to the project.

    With `artifacts` (a directory), the run goes through ansible-runner as AWX runs a job, verbose and with --diff,
    facts cached in artifacts/facts, and leaves what AWX would keep in a directory of its own under `artifacts`:
    artifacts/ (stdout, job events, command, status) and env/, its input. The extra vars reach it as AWX hands them
    over, in env/extravars, never on a command line (the runner reads env/ only once: one directory per run).

    `injected` ({name: secret}) hands secrets over as the collection's AWX credentials do: each in a file of its own,
    named by RUNBOOKS_<NAME>_FILE (lookup runbooks.incident.injected_secret); they are scanned for too.

    A check-mode run must leave every host as it found it (unchanged()); and no run may show a secret the hosts
    hold before or after it (held_secrets()), or one of `secrets`, in its output, in the incident records the
    timeline callback keeps (incident_dir()), or in the argv of any program started during it (exec_audit: on the
    controller, on the hosts, in their containers). Either fails the test."""
    injected = injected or {}
    secrets = [*secrets, *injected.values()]
    if check:
        with unchanged():
            return _scanned(name, extra, ["--check"], vars_files, artifacts, secrets, injected)
    return _scanned(name, extra, [], vars_files, artifacts, secrets, injected)


def _scanned(name, extra, flags, vars_files, artifacts, given, injected):
    hosts = containers().values()
    with spending("the secrets the hosts hold"):
        secrets = {**dict.fromkeys(given, "the test's list of secrets"), **held_secrets(hosts)}
    audit = ExecAudit().start()
    try:
        with spending("playbook runs"), credential_files(injected) as credentials:
            rc, out = _playbook(name, extra, flags, vars_files, artifacts, credentials)
    finally:
        with spending("the exec capture read"):
            execs = audit.stop()
    with spending("the secrets the hosts hold"):
        secrets.update(held_secrets(hosts))
    with spending("the leak scan"):
        found = leaks(secrets, out, execs)
    assert not found, "\n".join(found)
    return rc, out


def _command(name, extra, flags=(), vars_files=()):
    """(the playbook's path, flags, extra vars, env) of a run of playbooks/<name> (see playbook())."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    flags = list(flags) + [item for item in extra if item.startswith("--")]
    for path in vars_files:
        flags += ["-e", "@" + os.path.join(project, path)]
    extravars = [item for item in extra if not item.startswith("--")]
    env = {"ANSIBLE_COLLECTIONS_PATH": os.path.join(project, ".build", "collections"), **PLAYBOOK_ENV,
           "ANSIBLE_CALLBACKS_ENABLED": "runbooks.incident.timeline", "RUNBOOKS_INCIDENT_DIR": incident_dir()}
    return os.path.join(project, "playbooks", name), flags, extravars, env


def _cli(name, extra, flags=(), vars_files=()):
    """(argv, env) of an ansible-playbook run of playbooks/<name>, from the project directory."""
    path, flags, extravars, env = _command(name, extra, flags, vars_files)
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], path] + flags
    return argv + [arg for item in extravars for arg in ("-e", item)], dict(os.environ, **env)


def started_playbook(name, *extra):
    """A run of playbooks/<name> started in the background, in a process group of its own, so that a test can kill
    it whole as a dying controller would; its output is discarded. Not scanned: such a test scans the run that
    completes the incident."""
    argv, env = _cli(name, extra)
    return subprocess.Popen(argv, cwd=os.environ["MOLECULE_PROJECT_DIRECTORY"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def credential_files(injected):
    """{RUNBOOKS_<NAME>_FILE: path} of `injected` ({name: secret}) written as AWX writes a job's credential files (a
    private directory, a 0600 file each), removed after the run."""
    with tempfile.TemporaryDirectory(prefix="credentials-") as directory:
        env = {}
        for name, value in injected.items():
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
                handle.write(value)
            env["RUNBOOKS_%s_FILE" % name.upper()] = path
        yield env


def _playbook(name, extra, flags, vars_files, artifacts, credentials):
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    if artifacts is None:
        argv, env = _cli(name, extra, flags, vars_files)
        res = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=project, env={**env, **credentials})
        return res.returncode, unfolded(res.stdout + res.stderr)
    path, flags, extravars, env = _command(name, extra, flags, vars_files)
    env.update(credentials)
    given = {}
    for item in extravars:
        given.update(json.loads(item) if item.startswith("{") else [item.split("=", 1)])
    env.update(ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=os.path.join(artifacts, "facts"))
    private = tempfile.mkdtemp(prefix=name + "-", dir=artifacts)
    runner = ansible_runner.run(private_data_dir=private, project_dir=project, playbook=path, inventory=os.environ["MOLECULE_INVENTORY_FILE"],
                                extravars=given, cmdline=shlex.join(["-v", "--diff"] + flags), envvars=env, quiet=True,
                                settings={"idle_timeout": 900})  # a run waiting for an answer fails instead of hanging
    return runner.rc, unfolded(runner.stdout.read())


def unfolded(output):
    """Output without colours, its lines joined, so that a sentence is found wherever the yaml callback folded it."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", output).split())


@contextlib.contextmanager
def restored(host, *paths, then=None):
    """Put `paths` on the host back as they were when the block ends, however it ends; then run `then` (a shell
    command, e.g. a reload), if given. A fault case breaks what it needs inside the block, so the next case starts
    from the same state whether this one passed or not, without a new host. tar keeps contents, owners, modes and
    links; a path that did not exist before is removed."""
    snapshot = "/var/tmp/runbooks-molecule-restore-%s.tar" % uuid.uuid4().hex
    existing = [path for path in paths if host.run("test -e %s -o -L %s" % (shlex.quote(path), shlex.quote(path))).rc == 0]
    members = " ".join(shlex.quote(path.lstrip("/")) for path in existing)
    host.check_output("tar -cpf %s -C / --files-from /dev/null %s" % (snapshot, members))
    try:
        yield
    finally:
        host.check_output("rm -rf -- %s && tar -xpf %s -C / && rm -f %s" % (" ".join(map(shlex.quote, paths)), snapshot, snapshot))
        if then:
            host.check_output(then)


def eventually(probe, timeout=30.0, interval=0.2):
    """Call probe() until it returns something true, for up to `timeout` seconds; its last value. For what happens
    after the command that caused it returned (an OnFailure= unit paging, a receiver writing what it got)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
