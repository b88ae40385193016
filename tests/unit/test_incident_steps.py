# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""incident_steps: a step recorded once per incident, on real files; what a crash, an attacker or a typo leaves."""
from __future__ import annotations

import json
import os
import stat

import pytest

NOBODY = 65534


def tree(root):
    """Every path under root with its mode and, for files, content."""
    found = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            info = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
            found[os.path.relpath(path, root)] = (stat.S_IMODE(info.st_mode), content)
    return found


def test_four_runs_and_the_record(run_module, tmp_path):
    params = {"dir": str(tmp_path / "kc"), "incident_id": "INC-2026:0042.a", "step": "sessions", "details": {"revoked": 3}}
    check = run_module("incident_steps", params, check_mode=True)
    assert check["changed"] and check["steps"] == [] and tree(tmp_path) == {}
    first = run_module("incident_steps", params)
    assert first["changed"] and first["steps"] == ["sessions"]
    record = json.loads((tmp_path / "kc" / "INC-2026:0042.a" / "sessions.json").read_text())
    assert record == first["done"]["sessions"] and record["revoked"] == 3 and record["incident_id"] == "INC-2026:0042.a"
    assert stat.S_IMODE((tmp_path / "kc" / "INC-2026:0042.a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "kc" / "INC-2026:0042.a" / "sessions.json").stat().st_mode) == 0o600
    after = tree(tmp_path)
    assert not run_module("incident_steps", params, check_mode=True)["changed"]
    again = run_module("incident_steps", dict(params, details={"revoked": 99}))
    assert not again["changed"] and again["done"]["sessions"]["revoked"] == 3 and tree(tmp_path) == after


def test_steps_of_one_incident_only(run_module, tmp_path):
    for incident, step in (("INC-1", "tls"), ("INC-1", "sessions"), ("INC-2", "db_password")):
        run_module("incident_steps", {"dir": str(tmp_path), "incident_id": incident, "step": step})
    read = run_module("incident_steps", {"dir": str(tmp_path), "incident_id": "INC-1"})
    assert not read["changed"] and read["steps"] == ["sessions", "tls"]
    fresh = run_module("incident_steps", {"dir": str(tmp_path / "none"), "incident_id": "INC-3"})
    assert fresh["steps"] == [] and not (tmp_path / "none").exists()


def test_a_partial_write_is_not_a_record(run_module, tmp_path):
    """A run killed inside the atomic write leaves only its hidden temp file: the step is not done."""
    (tmp_path / "INC-1").mkdir()
    (tmp_path / "INC-1" / ".tls.json.1a2b3c4d.partial").write_text('{"step": "tls"')
    assert run_module("incident_steps", {"dir": str(tmp_path), "incident_id": "INC-1"})["steps"] == []


@pytest.mark.parametrize("incident_id, step, message", [
    ("../etc", "tls", "incident id"),
    ("INC/1", "tls", "incident id"),
    ("", "tls", "incident id"),
    ("INC-1", "../../passwd", "step"),
    ("INC-1", "TLS", "step"),
    ("INC-1", "", "step"),
])
def test_names_that_would_leave_the_directory_are_refused(run_module, tmp_path, incident_id, step, message):
    result = run_module("incident_steps", {"dir": str(tmp_path / "kc"), "incident_id": incident_id, "step": step})
    assert result["failed"] and message in result["msg"] and "nothing was changed" in result["msg"], result["msg"]
    assert tree(tmp_path) == {}


def test_garbage_where_a_record_should_be_is_named_not_overwritten(run_module, tmp_path):
    (tmp_path / "INC-1").mkdir()
    (tmp_path / "INC-1" / "tls.json").write_text("not json")
    before = tree(tmp_path)
    result = run_module("incident_steps", {"dir": str(tmp_path), "incident_id": "INC-1", "step": "tls"})
    assert result["failed"] and "tls.json is not a step record" in result["msg"] and tree(tmp_path) == before


def test_a_link_planted_in_a_directory_others_can_write_is_not_followed(run_module, tmp_path):
    """The runbook's directory belongs to another user: a link there to a root directory must not receive records."""
    runbook = tmp_path / "kc"
    runbook.mkdir()
    os.chown(runbook, NOBODY, NOBODY)
    target = tmp_path / "target"
    target.mkdir()
    (runbook / "INC-1").symlink_to(target)
    result = run_module("incident_steps", {"dir": str(runbook), "incident_id": "INC-1", "step": "tls"})
    assert result["failed"] and "symlink" in result["msg"], result["msg"]
    assert list(target.iterdir()) == []


def test_a_link_at_the_record_is_refused(run_module, tmp_path):
    (tmp_path / "INC-1").mkdir()
    (tmp_path / "secret").write_text("root only")
    (tmp_path / "INC-1" / "tls.json").symlink_to(tmp_path / "secret")
    result = run_module("incident_steps", {"dir": str(tmp_path), "incident_id": "INC-1"})
    assert result["failed"] and "symlink" in result["msg"], result["msg"]
