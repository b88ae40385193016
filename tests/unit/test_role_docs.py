# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role's README is what its argument specs say (tests/role_docs.py generates them; `make docs`), and every
task file a playbook or another role enters with tasks_from has argument specs of its own."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))
import role_docs  # noqa: E402  pylint: disable=wrong-import-position


def test_role_readmes_follow_their_argument_specs():
    assert role_docs.drift() == []


def test_a_readme_that_drifted_is_named(tmp_path, monkeypatch):
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump({"argument_specs": {"main": {
        "short_description": "A demo", "options": {"demo_dir": {"description": "Where, C(/srv).", "type": "path", "default": "/srv"}}}}}))
    monkeypatch.setattr(role_docs, "ROOT", tmp_path)
    monkeypatch.setattr(role_docs, "ROLES", tmp_path / "roles")
    assert role_docs.drift() == ["roles/demo/README.md"]
    assert role_docs.main([]) == 0
    assert "| `demo_dir` | path | `/srv` | Where, `/srv`. |" in (role / "README.md").read_text()
    assert role_docs.drift() == []
    (role / "README.md").write_text((role / "README.md").read_text().replace("Where", "Here"))
    assert role_docs.drift() == ["roles/demo/README.md"]


def test_every_entry_point_has_argument_specs():
    entered = set()
    for path in [*REPO_ROOT.glob("playbooks/*.yml"), *REPO_ROOT.glob("roles/*/tasks/*.yml"), *REPO_ROOT.glob("molecule/*.yml")]:
        text = path.read_text()
        for role, tasks_from in re.findall(r"name: runbooks\.incident\.(\w+)\s*\n\s*tasks_from: (\w+)", text):
            entered.add((role, tasks_from))
    assert entered
    missing = [f"{role}: {tasks_from}" for role, tasks_from in sorted(entered)
               if tasks_from not in yaml.safe_load((REPO_ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]]
    assert not missing, missing
