# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the scenarios' testinfra tests share. pytest loads this file for every molecule/<scenario>/tests/; the tests
import from it (`from conftest import playbook`), as tests/unit do from theirs."""
from __future__ import annotations

import contextlib
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


def playbook(name, *extra, check=False, vars_files=(), artifacts=None):
    """Run playbooks/<name> on the scenario's inventory, as an operator would; (rc, its output with colours removed
    and lines unfolded, stderr included: errors go there). Each of `extra` is an extra var ("key=value" or a JSON
    object) or a command-line flag ("--diff"); `vars_files` are passed as -e @file, relative to the project.

    With `artifacts` (a directory), the run goes through ansible-runner as AWX runs a job, verbose and with --diff,
    facts cached in artifacts/facts, and leaves what AWX would keep in a directory of its own under `artifacts`:
    artifacts/ (stdout, job events, command, status) and env/, its input. The extra vars reach it as AWX hands them
    over, in env/extravars, never on a command line (the runner reads env/ only once: one directory per run)."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    flags = (["--check"] if check else []) + [item for item in extra if item.startswith("--")]
    for path in vars_files:
        flags += ["-e", "@" + os.path.join(project, path)]
    extravars = [item for item in extra if not item.startswith("--")]
    env = {"ANSIBLE_COLLECTIONS_PATH": os.path.join(project, ".build", "collections"), **PLAYBOOK_ENV}
    path = os.path.join(project, "playbooks", name)
    if artifacts is None:
        argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], path] + flags
        argv += [arg for item in extravars for arg in ("-e", item)]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=project, env=dict(os.environ, **env))
        return res.returncode, unfolded(res.stdout + res.stderr)
    given = {}
    for item in extravars:
        given.update(json.loads(item) if item.startswith("{") else [item.split("=", 1)])
    env.update(ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=os.path.join(artifacts, "facts"))
    private = tempfile.mkdtemp(prefix=name + "-", dir=artifacts)
    runner = ansible_runner.run(private_data_dir=private, project_dir=project, playbook=path, inventory=os.environ["MOLECULE_INVENTORY_FILE"],
                                extravars=given, cmdline=shlex.join(["-v", "--diff"] + flags), envvars=env, quiet=True)
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
