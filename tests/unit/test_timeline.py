# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The timeline callback on real ansible-playbook runs (localhost, an unreachable host, a collection module), its
storage (append, lock, corrupt file, symlinks) and its renderers: the post-mortem, the Gantt page opened in headless
Chromium, the metrics."""
from __future__ import annotations

import getpass
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import COLLECTIONS, REPO_ROOT, require  # pylint: disable=import-error
from ansible_collections.runbooks.incident.plugins.module_utils import _postmortem, _timeline

SECRET = "s3cr3t-VALUE-7f0c9a"
ODD_NAME = "pipe | and <b>tag</b>"


def closed_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_playbook(tmp_path: Path, plays: list, incidents: Path, *extra: str, check: bool = False, wait: bool = True):
    """ansible-playbook with the timeline callback enabled, on an inventory of localhost and `ghost` (SSH to a closed
    port of 127.0.0.1: unreachable at once)."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
                         f"ghost ansible_host=127.0.0.1 ansible_port={closed_port()} ansible_connection=ssh ansible_user=nobody\n")
    playbook = tmp_path / "incident_play.yml"
    playbook.write_text(json.dumps(plays))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook), *extra]
    if check:
        command.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_CALLBACKS_ENABLED="runbooks.incident.timeline", RUNBOOKS_INCIDENT_DIR=str(incidents),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_HOST_KEY_CHECKING="false", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_SSH_ARGS="-o ConnectTimeout=5 -o BatchMode=yes")
    if not wait:
        return subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)


def incident_plays(steps_dir: Path) -> list:
    """One play of every kind of task on localhost, then one on the unreachable host. Of the collection's modules:
    incident_steps (bookkeeping) and media_snapshot (a remediation: a snapshot of a media directory)."""
    media = steps_dir.parent / "media"
    media.mkdir(exist_ok=True)
    (media / "photo.jpg").write_bytes(b"jpeg")
    (steps_dir.parent / "snapshots").mkdir(exist_ok=True)
    return [
        {"name": "local work", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "an ok task", "ansible.builtin.debug": {"msg": "hello"}},
            {"name": "a changed task", "ansible.builtin.command": "true"},
            {"name": "a failing task", "ansible.builtin.command": "false", "ignore_errors": True},
            {"name": "a skipped task", "ansible.builtin.debug": {"msg": "never"}, "when": False},
            {"name": "a secret task", "ansible.builtin.set_fact": {"token": SECRET}, "no_log": True},
            {"name": "a secret result", "ansible.builtin.command": f"echo {SECRET}", "no_log": True, "register": "leaked"},
            {"name": "journal marker", "community.general.syslogger": {
                "ident": "runbooks-incident-test", "msg": "BEGIN incident={{ incident_id }} mode={{ 'check' if ansible_check_mode else 'apply' }}"},
             "changed_when": False, "check_mode": False},
            {"name": "record the step", "runbooks.incident.incident_steps": {
                "dir": str(steps_dir), "incident_id": "{{ incident_id }}", "step": "sessions", "details": {"revoked": 3}}},
            {"name": "snapshot the media", "runbooks.incident.media_snapshot": {
                "src": str(media), "dest": str(steps_dir.parent / "snapshots")}},
            {"name": "a loop", "ansible.builtin.command": "echo {{ item }}", "loop": ["a", "b"]},
            {"name": ODD_NAME, "ansible.builtin.debug": {"msg": "odd"}},
        ]},
        {"name": "gone", "hosts": "ghost", "gather_facts": False, "tasks": [
            {"name": "reach the ghost", "ansible.builtin.ping": {}},
        ]},
    ]


def timeline_of(incidents: Path, incident_id: str) -> dict:
    return json.loads((incidents / incident_id / "timeline.json").read_text())


def by_task(run: dict) -> dict:
    return {(task["host"], task["task"]): task for task in run["tasks"]}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One incident recorded by a dry run and then a real run of the same playbook: (incidents dir, timeline, outputs)."""
    tmp_path = tmp_path_factory.mktemp("timeline")
    incidents = tmp_path / "incidents"
    plays = incident_plays(tmp_path / "steps")
    dry = run_playbook(tmp_path, plays, incidents, "-e", "incident_id=INC-2026-0042", "-e", "severity=P1", check=True)
    real = run_playbook(tmp_path, plays, incidents, "-e", "incident_id=INC-2026-0042", "-e", "severity=P1")
    return incidents, timeline_of(incidents, "INC-2026-0042"), (dry, real)


# --- the callback on real runs -------------------------------------------------------------------------------------

def test_every_task_and_host_is_recorded_with_its_status(recorded):
    incidents, timeline, (_dry, real) = recorded
    assert real.returncode != 0 and "UNREACHABLE" in real.stdout  # the ghost; the run itself is not broken by the callback
    assert "runbooks.incident.timeline" not in real.stdout + real.stderr  # no warning of the callback
    assert timeline["format"] == 1 and timeline["incident_id"] == "INC-2026-0042"
    run = timeline["runs"][1]
    assert run["mode"] == "apply" and run["playbook"] == "incident_play.yml" and run["severity"] == "P1"
    assert run["operator"] == {"user": getpass.getuser(), "via": "local"}
    assert run["outcome"] == "failed" and run["hosts"]["ghost"]["unreachable"] == 1
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", run["run_id"])
    tasks = by_task(run)
    assert {key: task["status"] for key, task in tasks.items()} == {
        ("localhost", "an ok task"): "ok", ("localhost", "a changed task"): "changed",
        ("localhost", "a failing task"): "failed", ("localhost", "a skipped task"): "skipped",
        ("localhost", "a secret task"): "ok", ("localhost", "a secret result"): "changed",
        ("localhost", "journal marker"): "ok", ("localhost", "record the step"): "changed",
        ("localhost", "snapshot the media"): "changed",
        ("localhost", "a loop"): "changed", ("localhost", ODD_NAME): "ok", ("ghost", "reach the ghost"): "unreachable"}
    failing = tasks[("localhost", "a failing task")]
    assert failing["ignored"] is True and failing["msg"] == "non-zero return code" and failing["action"] == "ansible.builtin.command"
    assert "Connection refused" in tasks[("ghost", "reach the ghost")]["msg"]
    assert tasks[("localhost", "a loop")]["items"] == {"total": 2, "ok": 0, "changed": 2, "failed": 0, "skipped": 0}
    for task in run["tasks"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", task["start"]) and task["start"] <= task["end"]
        assert run["start"] <= task["start"] and task["end"] <= run["end"]
        assert "args" not in task and "stdout" not in json.dumps(task)
    assert [task["task"] for task in run["tasks"]][:3] == ["an ok task", "a changed task", "a failing task"]
    assert not (incidents / "INC-2026-0042" / "timeline.json").stat().st_mode & 0o077
    assert not (incidents / "INC-2026-0042").stat().st_mode & 0o077


def test_a_no_log_task_is_censored_and_its_secret_is_in_no_file(recorded):
    incidents, timeline, _outputs = recorded
    for run in timeline["runs"]:
        for name in ("a secret task", "a secret result"):
            task = by_task(run)[("localhost", name)]
            assert task["censored"] is True and "results" not in task and "msg" not in task
    files = [path for path in incidents.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"timeline.json", "postmortem.md", "timeline.html", "metrics.json"}
    for path in files:
        assert SECRET not in path.read_text(errors="replace"), path


def test_a_check_run_and_the_real_run_append_to_one_timeline(recorded):
    _incidents, timeline, (dry, _real) = recorded
    assert "runbooks.incident.timeline" not in dry.stdout + dry.stderr
    check, apply = timeline["runs"]
    assert (check["mode"], apply["mode"]) == ("check", "apply") and check["run_id"] != apply["run_id"]
    assert check["end"] <= apply["start"]
    journal = [event for event in timeline["events"] if event["kind"] == "journal"]
    assert [(event["run_id"], event["summary"]) for event in journal] == [
        (check["run_id"], "BEGIN incident=INC-2026-0042 mode=check"), (apply["run_id"], "BEGIN incident=INC-2026-0042 mode=apply")]


def test_a_collection_module_s_whitelisted_results_are_recorded(recorded):
    _incidents, timeline, _outputs = recorded
    check, apply = timeline["runs"]
    step = by_task(apply)[("localhost", "record the step")]
    assert step["action"] == "runbooks.incident.incident_steps"
    assert step["results"] == {"changed": True, "steps": ["sessions"]}  # `done` (the records, a dict of dicts) is not kept
    assert by_task(check)[("localhost", "record the step")]["results"] == {"changed": True, "steps": []}  # would record
    assert "results" not in by_task(apply)[("localhost", "a changed task")]  # not a module of the collection


def test_the_post_mortem_and_the_gantt_page_render_from_the_runs(recorded):
    incidents, timeline, _outputs = recorded
    text = (incidents / "INC-2026-0042" / "postmortem.md").read_text()
    for section in ("# Post-Mortem: Incident INC-2026-0042", "## Summary", "## Timeline", "## Root Cause", "## Resolution",
                    "## Impact", "## Metrics", "## Action Items", "## Lessons Learned", "## Post-Incident Checklist",
                    "## War Room Checklist", "## Follow-up"):
        assert section in text
    assert "**Severity**: P1" in text and "Edit a copy" in text.splitlines()[1]
    assert "Task failed (ignored): localhost: a failing task — non-zero return code" in text
    assert "Host unreachable: ghost: reach the ghost" in text
    assert "Changed: localhost: record the step (runbooks.incident.incident_steps)" in text
    assert "Would change (check mode): localhost: record the step" in text
    assert "Journal marker on localhost: BEGIN incident=INC-2026-0042 mode=apply" in text
    for run in timeline["runs"]:
        assert "Run started: incident_play.yml (%s, run %s" % (run["mode"], run["run_id"]) in text
    # The outcome was failed (unreachable ghost): no mitigation ticked, nothing the runs did not do.
    assert "- [ ] Mitigation deployed" in text and "- [ ] Status page updated" in text and "- [x] Investigation started" in text
    page = (incidents / "INC-2026-0042" / "timeline.html").read_text()
    assert page.count("data-row=") == sum(len(run["tasks"]) for run in timeline["runs"])
    assert "<b>tag</b>" not in page and "pipe | and &lt;b&gt;tag&lt;/b&gt;" in page
    metrics = json.loads((incidents / "metrics.json").read_text())
    assert metrics["incidents"]["INC-2026-0042"]["severity"] == "P1" and metrics["by_severity"]["P1"]["incidents"] == 1


def test_a_corrupt_timeline_is_moved_aside_never_overwritten(tmp_path):
    incidents = tmp_path / "incidents"
    (incidents / "INC-9").mkdir(parents=True)
    (incidents / "INC-9" / "timeline.json").write_text('{"format": 1, "runs": [')
    result = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "ok", "ansible.builtin.debug": {}}]}],
                          incidents, "-e", "incident_id=INC-9")
    assert result.returncode == 0, result.stdout
    assert "moved aside to timeline.json.corrupt-" in " ".join((result.stdout + result.stderr).split())
    aside = list((incidents / "INC-9").glob("timeline.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"format": 1, "runs": ['
    assert len(timeline_of(incidents, "INC-9")["runs"]) == 1


def test_a_symlinked_incident_dir_is_refused_and_nothing_is_written_through_it(tmp_path):
    incidents = tmp_path / "incidents"
    incidents.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (incidents / "INC-L").symlink_to(elsewhere)
    result = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "one", "ansible.builtin.debug": {}}, {"name": "two", "ansible.builtin.debug": {}}]}], incidents, "-e", "incident_id=INC-L")
    assert result.returncode == 0, result.stdout  # the callback never fails a playbook
    output = result.stdout + result.stderr
    assert output.count("runbooks.incident.timeline:") == 1 and "symlink" in output
    assert list(elsewhere.iterdir()) == [] and (incidents / "INC-L").is_symlink()


def test_an_invalid_incident_id_records_nothing_and_warns_once(tmp_path):
    incidents = tmp_path / "incidents"
    result = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "ok", "ansible.builtin.debug": {}}]},
                                     {"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "ok", "ansible.builtin.debug": {}}]}],
                          incidents, "-e", '{"incident_id": "../INC 1"}')
    assert result.returncode == 0, result.stdout
    assert (result.stdout + result.stderr).count("no timeline is recorded") == 1
    assert not incidents.exists()
    without = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "ok", "ansible.builtin.debug": {}}]}],
                           incidents)
    assert without.returncode == 0 and "runbooks.incident.timeline" not in without.stdout + without.stderr and not incidents.exists()


def test_an_awx_job_records_its_launcher(tmp_path):
    incidents = tmp_path / "incidents"
    result = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "ok", "ansible.builtin.debug": {}}]}],
                          incidents, "-e", json.dumps({"incident_id": "INC-A", "awx_job_id": 1234, "awx_user_name": "alice", "severity": "bad severity!"}))
    assert result.returncode == 0, result.stdout
    run = timeline_of(incidents, "INC-A")["runs"][0]
    assert run["operator"] == {"user": "alice", "via": "awx", "awx_job_id": "1234"} and run["severity"] is None
    assert run["outcome"] == "ok"


def test_two_playbooks_of_one_command_are_two_runs(tmp_path):
    incidents = tmp_path / "incidents"
    second = tmp_path / "second.yml"
    second.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "two", "ansible.builtin.command": "false"}]}]))
    result = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "one", "ansible.builtin.debug": {}}]}],
                          incidents, str(second), "-e", "incident_id=INC-2")
    assert result.returncode != 0
    runs = timeline_of(incidents, "INC-2")["runs"]
    assert [(run["playbook"], run["outcome"], [task["task"] for task in run["tasks"]]) for run in runs] == [
        ("incident_play.yml", "ok", ["one"]), ("second.yml", "failed", ["two"])]
    assert runs[0]["end"] <= runs[1]["start"]


def test_a_killed_run_leaves_what_it_did_so_far(tmp_path):
    incidents = tmp_path / "incidents"
    proc = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "before", "ansible.builtin.command": "true"},
        {"name": "hangs", "ansible.builtin.command": "sleep 60"}]}], incidents, "-e", "incident_id=INC-K", wait=False)
    deadline = time.monotonic() + 60
    path = incidents / "INC-K" / "timeline.json"
    while not (path.exists() and "before" in path.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run = timeline_of(incidents, "INC-K")["runs"][0]
    assert run["outcome"] == "running" and run["end"] is None
    assert [(task["task"], task["status"]) for task in run["tasks"]] == [("before", "changed")]
    assert _postmortem.render(str(incidents), "INC-K")
    assert "has no end recorded" in (incidents / "INC-K" / "postmortem.md").read_text()


# --- renderers -----------------------------------------------------------------------------------------------------

def lifecycle_events(run_id: str, start: str) -> list:
    """The events runbooks.incident.incident_lifecycle returns, built by hand here (that module is tested apart)."""
    base = _timeline.parse_time(start)

    def at(minutes):
        return _timeline.stamp(base + __import__("datetime").timedelta(minutes=minutes))
    raw = [
        {"kind": "declared", "summary": "Database corrupt | restore needed", "severity": "P1", "time": at(-10), "detected": at(-25)},
        {"kind": "notification", "summary": "paged the on-call", "channel": "pagerduty", "ok": True, "time": at(-9)},
        {"kind": "notification", "summary": "status page: investigating", "channel": "statuspage", "status": "investigating",
         "ok": True, "time": at(-8)},
        {"kind": "notification", "summary": "slack webhook down", "channel": "slack", "ok": False, "time": at(-8)},
        {"kind": "updated", "summary": "restore started", "status": "identified", "time": at(5)},
        {"kind": "resolved", "summary": "service verified", "status": "resolved", "time": at(20)},
    ]
    return [_timeline.event_from(entry, start, run_id) for entry in raw]


def test_checklist_items_are_ticked_only_when_the_timeline_shows_them(recorded):
    _incidents, timeline, _outputs = recorded
    timeline = json.loads(json.dumps(timeline))
    check, apply = timeline["runs"]
    post_incident, war_room = _postmortem.checklists(timeline)
    assert [done for done, _item, _evidence in war_room] == [False, False, False, True, False, False, False, False]
    assert not any(done for done, _item, _evidence in post_incident)
    # The real run, as if it had ended ok (the ghost reachable), and the lifecycle's events.
    apply["outcome"] = "ok"
    timeline["events"] += lifecycle_events(apply["run_id"], apply["start"])
    timeline["events"].sort(key=lambda event: event["time"])
    ticks = {item: done for done, item, _evidence in _postmortem.checklists(timeline)[1]}
    assert ticks == {"Incident logged in tracker": True, "Status page updated": True, "Stakeholders notified": True,
                     "Investigation started": True, "Regular updates (every 15-30 min)": True, "Mitigation deployed": True,
                     "Resolution confirmed": True, "Post-mortem scheduled": False}
    text = _postmortem.postmortem(timeline)
    assert "# Post-Mortem: INC-2026-0042: Database corrupt | restore needed" in text
    assert "**Duration**: 30min 00s (declared to resolved" in text
    assert "| Incident declared [P1]: Database corrupt \\| restore needed |" in text
    assert "Notification FAILED (slack): slack webhook down" in text
    assert "Notification sent (statuspage) [investigating]: status page: investigating" in text
    assert "- [x] Status page updated — statuspage notification at" in text
    assert "5. [x] **Communicate**" in text and "2. [ ] **Verify**" in text
    assert "| Time to detect | 15min 00s |" in text and "| Time to resolve | 30min 00s |" in text
    # A check run that changed something is no mitigation; a failed notification notifies no one.
    apply["mode"] = "check"
    timeline["events"] = [event for event in timeline["events"] if event.get("channel") not in ("pagerduty", "statuspage")]
    ticks = {item: done for done, item, _evidence in _postmortem.checklists(timeline)[1]}
    assert not ticks["Mitigation deployed"] and not ticks["Stakeholders notified"] and not ticks["Status page updated"]
    del check


def test_the_gantt_page_opens_in_headless_chromium(recorded, tmp_path):
    incidents, timeline, _outputs = recorded
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium, "chromium (Debian package chromium)", "make deps installs it (tests/sandbox/sandbox.py APT_PACKAGES)")
    page = incidents / "INC-2026-0042" / "timeline.html"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    rows = re.findall(r'<div class="row" data-row="(\d+)" data-status="(\w+)"', dom)
    records = [task for run in timeline["runs"] for task in run["tasks"]]
    assert len(rows) == len(records) == 24
    assert [status for _number, status in rows] == [task["status"] for task in records]
    assert "<script" not in page.read_text() and "http" not in page.read_text()
    shot = tmp_path / "timeline.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10000


# --- the logic -----------------------------------------------------------------------------------------------------

def test_only_whitelisted_bounded_results_of_the_collection_are_kept():
    result = {"changed": True, "downtime_s": 1.5, "verified": True, "fingerprint": "sha256:ab", "password": "x", "msg": "m",
              "row_counts": {"users": 3}, "done": {"a": {"b": 1}}, "kept": list(range(50)), "db": "x" * 1000,
              "revoked": {"sessions": 2, "nested": [1]}, "timeline_events": [{"kind": "declared", "summary": "s"}]}
    kept = _timeline.key_results("runbooks.incident.pg_restore", result)
    assert set(kept) == {"changed", "downtime_s", "verified", "fingerprint", "row_counts", "db"}
    assert len(kept["db"]) == _timeline.MAX_NAME
    assert _timeline.key_results("ansible.builtin.command", result) == {}
    assert _timeline.key_results("runbooks.incidentx.evil", result) == {}


def test_events_are_validated_unknown_keys_dropped_and_bounded():
    at = "2026-12-06T10:00:00.000Z"
    good = {"kind": "notification", "summary": "x" * 2000, "channel": "statuspage", "ok": True, "status": "monitoring",
            "time": "2026-12-06T11:00:00+01:00", "secret": "no", "payload": {"a": 1}}
    events = _timeline.module_events("runbooks.incident.incident_lifecycle",
                                     {"timeline_events": [good, {"kind": "nope", "summary": "s"}, {"kind": "declared"}, "junk"]},
                                     at, "RUN", "h", "t")
    assert len(events) == 1
    event = events[0]
    assert set(event) == {"run_id", "kind", "summary", "time", "channel", "ok", "status", "host", "task"}
    assert event["time"] == "2026-12-06T10:00:00.000Z" and len(event["summary"]) == _timeline.MAX_SUMMARY
    assert _timeline.module_events("ansible.builtin.set_fact", {"timeline_events": [good]}, at, "RUN", "h", "t") == []
    looped = _timeline.module_events("runbooks.incident.incident_lifecycle",
                                     {"results": [{"timeline_events": [{"kind": "updated", "summary": "u", "time": "garbage"}]}]}, at, "R", "h", "t")
    assert looped[0]["time"] == at


def test_a_merge_replaces_its_own_run_and_keeps_the_others():
    timeline = _timeline.empty("INC-1")
    one = {"run_id": "A", "start": "2026-01-01T00:00:00.000Z", "tasks": []}
    two = {"run_id": "B", "start": "2026-01-01T01:00:00.000Z", "tasks": []}
    timeline = _timeline.merge(timeline, two, [{"run_id": "B", "kind": "journal", "time": "2026-01-01T01:00:01.000Z"}])
    timeline = _timeline.merge(timeline, one, [{"run_id": "A", "kind": "journal", "time": "2026-01-01T00:00:01.000Z"}])
    timeline = _timeline.merge(timeline, dict(one, outcome="ok"), [])
    assert [run["run_id"] for run in timeline["runs"]] == ["A", "B"] and timeline["runs"][0]["outcome"] == "ok"
    assert [event["run_id"] for event in timeline["events"]] == ["B"]


def _save_runs(base, prefix, count):
    for number in range(count):
        run = _timeline.Run("INC-C", "p.yml", "apply", {"user": "u", "via": "local"}, run_id="%s-%d" % (prefix, number))
        _timeline.save_run(base, run)


def test_concurrent_runs_of_one_incident_lose_nothing(tmp_path):
    base = str(tmp_path / "incidents")
    workers = [multiprocessing.get_context("fork").Process(target=_save_runs, args=(base, prefix, 15)) for prefix in "XY"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(_timeline.load(base, "INC-C")["runs"]) == 30


def test_markdown_cells_and_html_are_escaped():
    assert _postmortem.cell("a | b\nc\\d <b>") == "a \\| b c\\\\d &lt;b&gt;"
    timeline = _timeline.empty("INC-E")
    timeline["runs"].append({"run_id": "R", "playbook": "<i>p</i>", "mode": "apply", "start": "2026-01-01T00:00:00.000Z",
                             "end": "2026-01-01T00:00:10.000Z", "outcome": "ok", "operator": {"user": "u"},
                             "tasks": [{"task": "t|\n<script>alert(1)</script>", "host": "h&h", "action": "runbooks.incident.x", "status": "changed",
                                        "start": "2026-01-01T00:00:01.000Z", "end": "2026-01-01T00:00:05.000Z"}]})
    page = _postmortem.gantt(timeline)
    assert "<script>" not in page and "&lt;script&gt;" in page and "h&amp;h" in page and "<i>p</i>" not in page
    assert 'style="left:10.00%;width:40.00%"' in page
    lines = _postmortem.postmortem(timeline).splitlines()
    table = lines[lines.index("| Time | Event |") + 2:]
    table = table[:table.index("")]
    assert len(table) == 3 and "Changed: h&amp;h: t\\| &lt;script&gt;alert(1)&lt;/script&gt; (runbooks.incident.x)" in table[1]
    assert all(line.count("|") - line.count("\\|") == 3 for line in table)


def test_metrics_per_incident_and_per_severity():
    def incident(incident_id, severity, minutes_to_mitigate, minutes_to_resolve):
        timeline = _timeline.empty(incident_id)
        start = _timeline.parse_time("2026-01-01T00:00:00Z")
        delta = __import__("datetime").timedelta
        timeline["events"] = [{"kind": "declared", "summary": "d", "severity": severity, "time": _timeline.stamp(start),
                               "detected": _timeline.stamp(start - delta(minutes=5))}]
        if minutes_to_resolve is not None:
            timeline["events"].append({"kind": "resolved", "summary": "r", "time": _timeline.stamp(start + delta(minutes=minutes_to_resolve))})
        timeline["runs"] = [
            {"run_id": "C", "mode": "check", "outcome": "ok", "start": _timeline.stamp(start), "end": _timeline.stamp(start + delta(minutes=1)),
             "tasks": [{"action": "runbooks.incident.pg_restore", "status": "changed"}]},
            {"run_id": "A", "mode": "apply", "outcome": "ok", "start": _timeline.stamp(start + delta(minutes=2)),
             "end": _timeline.stamp(start + delta(minutes=minutes_to_mitigate)),
             "tasks": [{"action": "runbooks.incident.pg_restore", "status": "changed"}]}]
        return timeline
    data = _timeline.metrics({"A": incident("A", "P1", 10, 30), "B": incident("B", "P1", 20, None), "C": incident("C", "P2", 4, 8)})
    assert data["incidents"]["A"]["time_to_mitigate_s"] == 600 and data["incidents"]["A"]["time_to_resolve_s"] == 1800
    assert data["incidents"]["A"]["time_to_detect_s"] == 300 and data["incidents"]["B"]["resolved"] is None
    assert data["by_severity"]["P1"] == {"incidents": 2, "mttd_s": 300, "mttm_s": 900, "mttr_s": 1800, "mitigated": 2, "resolved": 1}
    assert data["by_severity"]["P2"]["mttr_s"] == 480
