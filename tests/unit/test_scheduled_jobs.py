# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-side job code the timers run (`python3 -m ..._cli <job>`), as systemd runs it, against a real PostgreSQL."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import COLLECTIONS, PG_BINDIR  # pylint: disable=import-error
from servicedb import populate_sql  # pylint: disable=import-error


def run_job(job, config_path):
    # Only the copied package tree on PYTHONPATH, as on the host: no Ansible import may be needed.
    return subprocess.run([sys.executable, "-m", "ansible_collections.runbooks.incident.plugins.module_utils._cli", job, "--config", str(config_path)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)


@pytest.fixture(name="job_config")
def job_config_fixture(pg_server, tmp_path):
    psql = [str(PG_BINDIR / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    env = dict(os.environ, **pg_server.env)
    subprocess.run(psql + ["-d", "postgres"], input="DROP DATABASE IF EXISTS nightly; CREATE DATABASE nightly", text=True, check=True, env=env)
    subprocess.run(psql + ["-d", "nightly"], input=populate_sql(), text=True, check=True, env=env)
    dest = tmp_path / "backups"
    dest.mkdir()
    config = dict(db="nightly", dest=str(dest), login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres",
                  pg_bin_dir=str(PG_BINDIR), expect_tables=["clients", "messages"], keep_daily=2, keep_monthly=1)
    path = tmp_path / "backup-db.json"
    path.write_text(json.dumps(config))
    return path, dest


def test_backup_job_dumps_verifies_and_prunes(job_config):
    path, dest = job_config
    for stamp in ("2025-12-31", "2026-01-15", "2026-01-20", "2026-01-21"):  # older dumps the policy partly keeps
        (dest / f"db-{stamp}.sql.gz").write_bytes(b"old")
        (dest / f"db-{stamp}.manifest.json").write_text("{}")
    res = run_job("backup-db", path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["changed"] and summary["verified"] and summary["row_counts"]["messages"] == 10000
    # keep_daily=2: today and 2026-01-21; keep_monthly=1: the newest of this month (today's).
    assert sorted(p.name for p in dest.iterdir() if p.name.endswith(".sql.gz")) == sorted(
        ["db-2026-01-21.sql.gz", os.path.basename(summary["path"])])
    assert "db-2025-12-31.manifest.json" not in os.listdir(dest)
    again = json.loads(run_job("backup-db", path).stdout)
    assert again["verified"]
    # The job stamps its dump with the UTC date at its start (no clock to set): the expectation follows the two
    # dates the runs used, so a UTC midnight between them is not a failure.
    first, second = os.path.basename(summary["path"]), os.path.basename(again["path"])
    if second == first:
        assert not again["changed"] and again["pruned"] == []  # today's dump exists and verifies: nothing is rewritten
    else:
        assert again["changed"] and second > first  # a new day's dump; keep_daily=2 keeps both days, and only them
        assert sorted(p.name for p in dest.iterdir() if p.name.endswith(".sql.gz")) == [first, second]


def test_backup_job_failure_exits_non_zero_with_one_line(job_config, tmp_path):
    path, _dest = job_config
    config = json.loads(path.read_text())
    config["db"] = "gone"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(config))
    res = run_job("backup-db", broken)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("runbooks-incident backup-db failed:") and "gone" in res.stderr and len(res.stderr.splitlines()) == 1


def test_the_role_installs_every_module_the_jobs_import():
    """scheduled_jobs copies a fixed list of module_utils to the host: it must hold _cli.py's whole import closure."""
    import re  # pylint: disable=import-outside-toplevel
    import yaml  # pylint: disable=import-outside-toplevel
    from conftest import REPO_ROOT  # pylint: disable=import-error,import-outside-toplevel
    utils = REPO_ROOT / "plugins" / "module_utils"
    needed, todo = set(), ["_cli"]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        source = (utils / f"{name}.py").read_text()
        pattern = r"^from ansible_collections\.runbooks\.incident\.plugins\.module_utils(?:\.(\w+))? import (?:\(([^)]*)\)|([\w, ]+))"
        for module, parenthesized, listed in re.findall(pattern, source, re.M):
            todo.extend([module] if module else [part.strip() for part in (parenthesized or listed).split(",") if part.strip()])
        assert "from ansible." not in source and "import ansible" not in source, f"{name} needs Ansible, which hosts do not have"
    installed = yaml.safe_load((REPO_ROOT / "roles" / "scheduled_jobs" / "vars" / "main.yml").read_text())["__scheduled_jobs_module_utils"]
    assert {f"{name}.py" for name in needed} == set(installed)


def install_job_code(lib_dir, tmp_path):
    """The role's job code install, through ansible-playbook on this machine (connection local, as root here)."""
    from pathlib import Path  # pylint: disable=import-outside-toplevel
    playbook = tmp_path / "install.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.import_role:\n        name: runbooks.incident.scheduled_jobs\n"
        f"      vars:\n        scheduled_jobs_lib_dir: {lib_dir}\n        scheduled_jobs_config_dir: {tmp_path / 'etc'}\n")
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                          "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)], capture_output=True, text=True, check=False,
                         env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    return int(re.search(r"changed=(\d+)", res.stdout).group(1))


@pytest.mark.skipif(os.geteuid() != 0, reason="the job code is installed owned by root")
def test_the_role_copies_only_the_job_code_that_differs(tmp_path):
    """One read of every installed file's digest, mode and owner; a copy only of a file that is missing, altered, of
    another mode or a symlink - so a run on a host that has the code makes no copy, and a tampered file is put back."""
    from conftest import REPO_ROOT  # pylint: disable=import-error,import-outside-toplevel
    lib = tmp_path / "lib"
    package = lib / "ansible_collections" / "runbooks" / "incident" / "plugins" / "module_utils"
    assert install_job_code(lib, tmp_path) >= 2  # the directories and the files
    source = REPO_ROOT / "plugins" / "module_utils"
    installed = sorted(path.name for path in package.iterdir())
    assert installed and all((package / name).read_bytes() == (source / name).read_bytes() for name in installed)
    assert install_job_code(lib, tmp_path) == 0

    (package / "_cli.py").write_text("import os; os.system('id')\n")
    (package / "_pg.py").chmod(0o666)
    (package / "_page.py").unlink()
    (package / "_page.py").symlink_to(tmp_path / "elsewhere.py")
    assert install_job_code(lib, tmp_path) == 1  # one task, three files
    for name in ("_cli.py", "_pg.py", "_page.py"):
        path = package / name
        assert not path.is_symlink() and path.read_bytes() == (source / name).read_bytes() and (path.stat().st_mode & 0o777) == 0o644, name
    assert install_job_code(lib, tmp_path) == 0
