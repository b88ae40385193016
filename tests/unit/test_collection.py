# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as a user gets it: built, installed offline, every module documented, every playbook parseable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = sorted(p.stem for p in (REPO_ROOT / "plugins" / "modules").glob("*.py"))
PLAYBOOKS = sorted(p.stem for p in (REPO_ROOT / "playbooks").glob("*.yml"))


@pytest.fixture(scope="module", name="installed")
def installed_fixture(tmp_path_factory):
    work = tmp_path_factory.mktemp("collection")
    (work / "ansible.cfg").write_text("[defaults]\n")
    # Only the installed copy may be visible, not this checkout's .build link.
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(work / "collections"), ANSIBLE_CONFIG=str(work / "ansible.cfg"))
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", "--output-path", work, REPO_ROOT], check=True, capture_output=True, env=env)
    tarball = next(work.glob("runbooks-incident-*.tar.gz"))
    # --no-deps: the dependencies come with the ansible bundle; Galaxy is never contacted.
    subprocess.run([BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", work / "collections", tarball],
                   check=True, capture_output=True, env=env)
    return work / "collections" / "ansible_collections" / "runbooks" / "incident", env


def test_build_leaves_development_state_out(installed):
    root, _env = installed
    for unwanted in (".venv", ".build", ".sandbox", ".config", "tests/output"):
        assert not (root / unwanted).exists(), unwanted
    assert (root / "MANIFEST.json").exists() and (root / "roles" / "whatsapp_mcp" / "meta" / "argument_specs.yml").exists()


@pytest.mark.parametrize("module", MODULES)
def test_every_module_renders_in_ansible_doc(installed, module):
    root, env = installed
    res = subprocess.run([BIN / "ansible-doc", "--json", f"runbooks.incident.{module}"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert str(root) in res.stdout  # the installed copy, not the checkout
    assert '"examples"' in res.stdout and '"return"' in res.stdout


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_every_playbook_is_callable_by_fqcn(installed, playbook):
    _root, env = installed
    res = subprocess.run([BIN / "ansible-playbook", "--syntax-check", "-i", "localhost,", f"runbooks.incident.{playbook}"],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
