# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident's directory kept in an S3 bucket by the timeline callback (RUNBOOKS_INCIDENT_STORE): two controllers
(two incident directories, nothing else shared) working on one incident through the bucket, a store that is down or
missing, a corrupt file in the bucket, and no credential in any record or output.

S3 is the only stand-in: moto's S3 server (the `moto` fixture, a real HTTP server on loopback), reached by boto3
with credentials from the environment only, as AWX's credential type injects them. The runs are real
ansible-playbook runs with the callback on."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COLLECTIONS, REPO_ROOT, fresh_bucket, s3_test_client, without_ambient_aws  # pylint: disable=import-error
from ansible_collections.runbooks.incident.plugins.module_utils import _incident_store, _lifecycle, _timeline

ACCESS = "AKIAINCIDENTSTORE01"
SECRET = "s3cr3t-Incident-Store-Key-5e1d"
PREFIX = "teams/ops"


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch):
    without_ambient_aws(monkeypatch, "RUNBOOKS_INCIDENT_STORE", "RUNBOOKS_INCIDENT_STORE_ENDPOINT_URL", "RUNBOOKS_INCIDENT_STORE_REGION")


def client(endpoint):
    return s3_test_client(endpoint, ACCESS, SECRET)


@pytest.fixture
def bucket(moto, request):
    """A fresh bucket per test: its name."""
    return fresh_bucket(moto, request, "inc-", ACCESS, SECRET)


def objects(moto, bucket, incident_id):
    """{name: bytes} of the incident's objects in the bucket."""
    s3, found = client(moto), {}
    prefix = "%s/%s/" % (PREFIX, incident_id)
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        found[item["Key"][len(prefix):]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Controller:
    """A controller of its own: its working directory and incident directory; the store settings of the job."""

    def __init__(self, root: Path, name: str, store_env: dict):
        self.cwd = root / name
        self.cwd.mkdir()
        self.incidents = self.cwd / "incidents"
        self.store_env = store_env
        self.outputs = []

    def run(self, playbook, *extra):
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                   ANSIBLE_CALLBACKS_ENABLED="runbooks.incident.timeline", RUNBOOKS_INCIDENT_DIR=str(self.incidents),
                   ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_FORCE_COLOR="0", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                   ANSIBLE_NOCOLOR="1", **self.store_env)
        command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook), *extra]
        res = subprocess.run(command, env=env, cwd=self.cwd, capture_output=True, text=True, check=False)
        self.outputs.append(res.stdout + res.stderr)
        return res

    def guarded(self, incident_id, *extra):
        """A playbook of the collection's shape (incident_run begin, the work, end in always) on localhost."""
        playbook = self.cwd / "remediate.yml"
        role = "runbooks.incident.incident_run"
        playbook.write_text(json.dumps([{"name": "remediate", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "begin", "ansible.builtin.include_role": {"name": role, "tasks_from": "begin"}},
            {"name": "work", "block": [{"name": "remediate", "ansible.builtin.command": "true"}],
             "rescue": [{"name": "failed", "ansible.builtin.include_role": {"name": role, "tasks_from": "failed"}}],
             "always": [{"name": "end", "ansible.builtin.include_role": {"name": role, "tasks_from": "end"}}]}]}]))
        return self.run(playbook, "-e", "incident_id=%s" % incident_id, "-e", "incident_run_lock_path=%s" % (self.cwd / "run.lock"), *extra)

    def timeline(self, incident_id):
        return json.loads((self.incidents / incident_id / "timeline.json").read_text())

    def state(self, incident_id):
        return json.loads((self.incidents / incident_id / "incident.json").read_text())


def store_env(endpoint, bucket):
    return {"RUNBOOKS_INCIDENT_STORE": "s3://%s/%s" % (bucket, PREFIX), "RUNBOOKS_INCIDENT_STORE_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}


def store_warnings(output):
    return [line for line in output.splitlines() if "[WARNING]" in line and "runbooks.incident.timeline" in line]


# --- two controllers, one incident ------------------------------------------------------------------------------------

def test_two_controllers_share_one_incident_through_the_bucket(moto, bucket, tmp_path):
    env = store_env(moto, bucket)
    first, second = Controller(tmp_path, "a", env), Controller(tmp_path, "b", env)

    declared = first.guarded("INC-X", "-e", "severity=P1")
    assert declared.returncode == 0, declared.stdout + declared.stderr
    assert not store_warnings(first.outputs[-1])
    stored = objects(moto, bucket, "INC-X")
    assert sorted(stored) == ["incident.json", "postmortem.md", "timeline.html", "timeline.json"]  # no metrics.json
    assert json.loads(stored["incident.json"])["severity"] == "P1"
    assert len(json.loads(stored["timeline.json"])["runs"]) == 1

    # Another controller that never saw the incident: the update needs it declared, and it is, in the bucket.
    updated = second.run(REPO_ROOT / "playbooks" / "incident_update.yml", "-e", "incident_id=INC-X", "-e", "status=identified")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert not store_warnings(second.outputs[-1])
    state = second.state("INC-X")
    assert state["status"] == "identified" and state["severity"] == "P1"
    assert [entry["event"] for entry in state["history"]] == ["declare", "outcome", "update"]
    runs = second.timeline("INC-X")["runs"]
    assert [run["playbook"] for run in runs] == ["remediate.yml", "incident_update.yml"]
    assert all(run["outcome"] == "ok" for run in runs)
    kinds = [event["kind"] for event in second.timeline("INC-X")["events"]]
    assert kinds.count("declared") == 1 and kinds.count("updated") == 1
    assert "incident_update.yml" in (second.incidents / "INC-X" / "postmortem.md").read_text()
    stored = objects(moto, bucket, "INC-X")
    assert [run["run_id"] for run in json.loads(stored["timeline.json"])["runs"]] == [run["run_id"] for run in runs]
    assert json.loads(stored["incident.json"])["status"] == "identified"
    assert "incident_update.yml" in stored["postmortem.md"].decode() and "incident_update.yml" in stored["timeline.html"].decode()

    # The first controller again: it sees the other's run and update; nothing of its own is lost.
    again = first.guarded("INC-X")
    assert again.returncode == 0, again.stdout + again.stderr
    runs = first.timeline("INC-X")["runs"]
    assert [run["playbook"] for run in runs] == ["remediate.yml", "incident_update.yml", "remediate.yml"]
    assert runs[0]["run_id"] == json.loads(stored["timeline.json"])["runs"][0]["run_id"]
    state = first.state("INC-X")
    assert state["status"] == "identified" and [entry["event"] for entry in state["history"]] == ["declare", "outcome", "update", "outcome"]
    assert len(json.loads(objects(moto, bucket, "INC-X")["timeline.json"])["runs"]) == 3
    assert not (first.incidents / "INC-X" / "incident.json").stat().st_mode & 0o077

    # No credential anywhere: the records of both controllers, the bucket, the outputs.
    for controller in (first, second):
        for path in controller.incidents.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes() and ACCESS.encode() not in path.read_bytes(), path
        for output in controller.outputs:
            assert SECRET not in output and ACCESS not in output
    for data in objects(moto, bucket, "INC-X").values():
        assert SECRET.encode() not in data and ACCESS.encode() not in data


# --- the store unusable: the run goes on -------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["closed port", "endpoint with a password", "missing bucket", "bad prefix"])
def test_a_store_that_cannot_be_used_never_fails_the_run(moto, tmp_path, where):
    env = store_env(moto, "no-such-bucket-here")
    if where == "closed port":
        env = store_env("http://127.0.0.1:%d" % closed_port(), "some-bucket")
    elif where == "endpoint with a password":
        env = store_env("http://user:pa55word@127.0.0.1:%d/?token=t0ken" % closed_port(), "some-bucket")
    elif where == "bad prefix":
        env["RUNBOOKS_INCIDENT_STORE"] = "s3://some-bucket/../elsewhere"
    controller = Controller(tmp_path, "a", env)
    result = controller.guarded("INC-Y", "-e", "severity=P2")
    assert result.returncode == 0, result.stdout + result.stderr
    output = controller.outputs[-1]
    warnings = store_warnings(output)
    assert len(warnings) == 1, output
    if where == "bad prefix":
        assert "is not a key prefix" in output
    else:
        assert "s3://%s/%s/INC-Y/" % ("no-such-bucket-here" if where == "missing bucket" else "some-bucket", PREFIX) in output
        assert "the local records stand" in output
    assert "pa55word" not in output and "t0ken" not in output and SECRET not in output
    assert {"closed port": "EndpointConnectionError", "missing bucket": "NoSuchBucket"}.get(where, "") in output
    assert controller.state("INC-Y")["severity"] == "P2"
    assert controller.timeline("INC-Y")["runs"][0]["outcome"] == "ok"
    assert (controller.incidents / "INC-Y" / "postmortem.md").is_file()


# --- a corrupt file in the bucket -------------------------------------------------------------------------------------

def test_a_corrupt_timeline_in_the_bucket_is_not_merged_and_moved_aside(moto, bucket, tmp_path):
    s3 = client(moto)
    s3.put_object(Bucket=bucket, Key="%s/INC-Z/timeline.json" % PREFIX, Body=b"{ not json")
    s3.put_object(Bucket=bucket, Key="%s/INC-Z/incident.json" % PREFIX, Body=json.dumps({"id": "INC-OTHER", "history": []}).encode())
    controller = Controller(tmp_path, "a", store_env(moto, bucket))
    result = controller.guarded("INC-Z", "-e", "severity=P3")
    assert result.returncode == 0, result.stdout + result.stderr
    output = controller.outputs[-1]
    assert len(store_warnings(output)) == 1 and "timeline.json is not JSON" in output and "not merged" in output, output
    assert len(controller.timeline("INC-Z")["runs"]) == 1 and controller.state("INC-Z")["id"] == "INC-Z"
    stored = objects(moto, bucket, "INC-Z")
    aside = [name for name in stored if name.startswith("timeline.json.corrupt-")]
    assert len(aside) == 1 and stored[aside[0]] == b"{ not json"
    assert [name for name in stored if name.startswith("incident.json.corrupt-")]
    assert json.loads(stored["timeline.json"])["runs"] == controller.timeline("INC-Z")["runs"]
    assert json.loads(stored["incident.json"])["id"] == "INC-Z"


# --- the rules, in-process ------------------------------------------------------------------------------------------

def run_record(run_id, start, end=None, tasks=0):
    return {"run_id": run_id, "start": start, "end": end, "outcome": "ok" if end else "running",
            "tasks": [{"task": "t%d" % index} for index in range(tasks)]}


def test_merge_adds_the_bucket_s_runs_and_never_loses_or_shortens_a_local_one():
    local_runs = [run_record("a", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", 3), run_record("c", "2026-01-01T00:05:00Z", None, 1)]
    remote_runs = [run_record("a", "2026-01-01T00:00:00Z", None, 1),
                   run_record("b", "2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z", 2),
                   run_record("c", "2026-01-01T00:05:00Z", "2026-01-01T00:06:00Z", 4)]
    local = dict(_timeline.empty("INC-1"), runs=local_runs,
                 events=[{"run_id": "a", "kind": "declared", "summary": "x", "time": "2026-01-01T00:00:10Z"}])
    remote = dict(_timeline.empty("INC-1"), runs=remote_runs,
                  events=[{"run_id": "b", "kind": "updated", "summary": "y", "time": "2026-01-01T00:02:30Z"}])
    merged, changed = _incident_store.merge_timelines(local, remote)
    assert changed
    assert [run["run_id"] for run in merged["runs"]] == ["a", "b", "c"]
    assert len(merged["runs"][0]["tasks"]) == 3  # the local, further on, stays
    assert merged["runs"][2]["outcome"] == "ok"  # the bucket's ended record of c wins over a running one
    assert [event["run_id"] for event in merged["events"]] == ["a", "b"]
    assert _incident_store.merge_timelines(merged, remote) == (merged, False)
    assert _incident_store.merge_timelines(merged, local) == (merged, False)


def test_the_incident_state_with_the_longer_history_or_the_later_update_wins():
    def state(entries, updated):
        return {"id": "INC-1", "history": [{}] * entries, "updated": updated}
    assert _incident_store.state_wins(state(1, "2026-01-01T00:00:00Z"), None)
    assert _incident_store.state_wins(state(3, "2026-01-01T00:00:00Z"), state(2, "2026-01-02T00:00:00Z"))
    assert not _incident_store.state_wins(state(2, "2026-01-03T00:00:00Z"), state(3, "2026-01-01T00:00:00Z"))
    assert _incident_store.state_wins(state(2, "2026-01-02T00:00:00Z"), state(2, "2026-01-01T00:00:00Z"))
    assert not _incident_store.state_wins(state(2, "2026-01-01T00:00:00Z"), state(2, "2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("value", ["s3://bucket//x", "s3://bucket/../x", "s3://bucket/a/../b", "s3://bucket/a/./b", "s3://b",
                                   "https://bucket/x", "s3://user:pw@bucket/x", "s3://bucket/x?versionId=1", "s3://bucket/a b",
                                   "s3://bucket/x\n"])
def test_a_store_that_is_not_a_bucket_and_key_prefix_is_refused(value):
    with pytest.raises(_incident_store.StoreProblem):
        _incident_store.parse_store(value)


def test_bucket_and_prefix_are_parsed():
    assert _incident_store.parse_store("s3://my-bucket") == ("my-bucket", "")
    assert _incident_store.parse_store("s3://my-bucket/some/prefix") == ("my-bucket", "some/prefix/")
    assert _incident_store.parse_store("s3://my-bucket/some/prefix/") == ("my-bucket", "some/prefix/")


def test_messages_show_no_endpoint_credentials_or_query(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    message = _incident_store.scrub('Could not connect to "https://joe:pw1234@minio.example:9000/b/k?X-Amz-Signature=abcd" with %s' % SECRET)
    assert message == 'Could not connect to "https://minio.example:9000" with ***'


def test_without_boto3_the_pull_is_one_problem(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)
    store = _incident_store.IncidentStore("s3://some-bucket/p")
    with pytest.raises(_incident_store.StoreProblem, match="boto3 is not installed"):
        store.pull(str(tmp_path), "INC-1")
    assert not (tmp_path / "INC-1").exists()


def test_a_local_incident_state_that_does_not_parse_is_kept_and_not_pushed(moto, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    remote = {"id": "INC-1", "history": [{"event": "declare"}], "updated": "2026-01-01T00:00:00Z"}
    client(moto).put_object(Bucket=bucket, Key="p/INC-1/incident.json", Body=json.dumps(remote).encode())
    (tmp_path / "INC-1").mkdir(mode=0o700)
    (tmp_path / "INC-1" / _lifecycle.STATE_FILE).write_text("{ broken")
    store = _incident_store.IncidentStore("s3://%s/p" % bucket, moto)
    changed, problems = store.pull(str(tmp_path), "INC-1")
    assert not changed and len(problems) == 1 and "does not parse" in problems[0]
    assert (tmp_path / "INC-1" / _lifecycle.STATE_FILE).read_text() == "{ broken"
    pushed, _problems = store.push(str(tmp_path), "INC-1")
    assert _lifecycle.STATE_FILE not in pushed
    body = client(moto).get_object(Bucket=bucket, Key="p/INC-1/incident.json")["Body"].read()
    assert json.loads(body) == remote


def test_a_local_timeline_that_does_not_parse_is_left_to_the_callback(moto, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    remote = dict(_timeline.empty("INC-2"), runs=[run_record("a", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", 1)])
    client(moto).put_object(Bucket=bucket, Key="p/INC-2/timeline.json", Body=json.dumps(remote).encode())
    (tmp_path / "INC-2").mkdir(mode=0o700)
    (tmp_path / "INC-2" / "timeline.json").write_text("{ broken")
    store = _incident_store.IncidentStore("s3://%s/p" % bucket, moto)
    changed, problems = store.pull(str(tmp_path), "INC-2")
    assert not changed and len(problems) == 1 and "is not a timeline" in problems[0]
    assert (tmp_path / "INC-2" / "timeline.json").read_text() == "{ broken"
    (tmp_path / "INC-2" / "timeline.json").unlink()
    assert store.pull(str(tmp_path), "INC-2") == (True, [])
    assert json.loads((tmp_path / "INC-2" / "timeline.json").read_text())["runs"] == remote["runs"]
