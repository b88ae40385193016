# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for the AWX / Ansible Automation Platform controller API, on loopback, for testing rulebooks.

It is a stand-in, not AWX: a real AWX needs Kubernetes (the AWX operator), which this machine cannot run. It serves
only the part of API v2 that ansible-rulebook 1.3.2's run_job_template and run_workflow_template actions use
(read in ansible_rulebook/job_template_runner.py and shared_job_monitor.py), in the order it calls them:

    GET  /api/v2/config/                                   at startup, when a rule has a controller action: "version"
    GET  /api/v2/unified_job_templates/?name=NAME          the template by name (ansible-rulebook then keeps the one
                                                           whose type, name and summary_fields.organization.name match)
    POST /api/v2/job_templates/ID/launch/                  run_job_template: 201, {"job": ID, "url": ..., ...}
    POST /api/v2/workflow_job_templates/ID/launch/         run_workflow_template: 201, {"workflow_job": ID, ...}
    GET  /api/v2/jobs/?id__in=ID,...&page_size=N           the monitor's batch poll of the launched jobs
    GET  /api/v2/workflow_jobs/?id__in=ID,...&page_size=N  same for workflow jobs
    GET  /api/v2/jobs/ID/, /api/v2/workflow_jobs/ID/       a job's detail (1.3.2 polls the lists; older versions this)

Every launched job is at once "successful" and finished. A job carries "artifacts" (what the playbook's set_stats
left; run_job_template's post_events / set_facts turn them into an event / a fact): the `artifacts` given for its
template, else {}. A workflow job has no "artifacts" field, as in AWX (WorkflowJobSerializer has none), so
run_workflow_template's post_events / set_facts never get anything from a real AWX; artifacts for a workflow are
refused here rather than let a test pass that AWX would fail.

Templates report ask_limit_on_launch and ask_variables_on_launch true (AWX would ignore a limit or extra_vars its
template does not prompt for, and ansible-rulebook drops a workflow's limit itself unless prompted) and
ask_labels_on_launch false, so ansible-rulebook never calls the labels and organizations endpoints (with it true it
would look the organization up and get-or-create an "eda" label). Surveys are not checked.

A name that is not a template gets an empty page, as from AWX, and the action fails ("... does not exist"); any
other path is a 404. Every request needs `Authorization: Bearer <any token>` (401 without); the tokens are recorded
in `requests`. The `url` has no path, so ansible-rulebook uses the /api/v2/ paths (a URL with a path would make it use
the gateway's v2/ paths under it).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from conftest import require  # pylint: disable=import-error

API = "/api/v2/"


class Kind(NamedTuple):
    """AWX's type of a template and its path under API, and those of its jobs."""
    template_type: str
    template_path: str
    job_type: str
    job_path: str


# The two kinds, by the name a launch records.
KINDS = {
    "job_template": Kind("job_template", "job_templates", "job", "jobs"),
    "workflow": Kind("workflow_job_template", "workflow_job_templates", "workflow_job", "workflow_jobs"),
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _page(results: list) -> dict:
    return {"count": len(results), "next": None, "previous": None, "results": results}


class AwxStandIn:
    """AWX API v2 stand-in on 127.0.0.1 (see the module's docstring). `job_templates` and `workflows` are the names
    that exist, in `organization`; `artifacts` maps a job template's name to the artifacts its jobs report."""

    def __init__(self, job_templates, workflows, artifacts=None, organization="Default", version="24.6.1"):
        self.organization = organization
        self.version = version
        self.artifacts = dict(artifacts or {})
        self.templates = {}  # id -> {"kind", "name"}; job templates and workflows share ids, as in AWX
        for kind, names in (("job_template", job_templates), ("workflow", workflows)):
            for name in names:
                self.templates[len(self.templates) + 1] = {"kind": kind, "name": name}
        unknown = set(self.artifacts) - set(job_templates)
        if unknown:
            raise ValueError(f"artifacts only for job templates (AWX reports none for a workflow job): {sorted(unknown)}")
        self.jobs = {}  # id -> the job as AWX serializes it (jobs and workflow jobs share ids, as in AWX)
        self._launches = []
        self._requests = []
        self._changed = threading.Condition()
        self._server = None
        self._thread = None
        self.url = ""

    # lifecycle

    def start(self) -> AwxStandIn:
        """Listen on a free port of 127.0.0.1; `url` is then http://127.0.0.1:PORT/."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="awx-stand-in", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> AwxStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # what happened

    @property
    def launches(self) -> list[dict]:
        """Every launch so far, in order: {"kind": "job_template"|"workflow", "name", "extra_vars": dict, "limit"
        (None when not sent), "time": time.monotonic()}."""
        with self._changed:
            return copy.deepcopy(self._launches)

    @property
    def requests(self) -> list[dict]:
        """Every request so far, in order: {"method", "path", "query", "token" (None when no bearer token)}."""
        with self._changed:
            return copy.deepcopy(self._requests)

    def wait_for_launches(self, count: int, timeout: float) -> list[dict]:
        """The launches once there are at least `count`; TimeoutError (with those seen) after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._launches) >= count, timeout):
                raise TimeoutError(f"{len(self._launches)} launch(es) of {count} after {timeout}s: {self._launches}")
            return copy.deepcopy(self._launches)

    # the API, called by the handler's threads

    def record_request(self, request: dict) -> None:
        with self._changed:
            self._requests.append(request)

    def _templates_named(self, name: str) -> list[dict]:
        results = []
        for tid, template in self.templates.items():
            if template["name"] == name:
                kind = KINDS[template["kind"]]
                results.append({
                    "id": tid, "type": kind.template_type, "url": f"{API}{kind.template_path}/{tid}/", "name": name,
                    "related": {"launch": f"{API}{kind.template_path}/{tid}/launch/"},
                    "summary_fields": {"organization": {"id": 1, "name": self.organization}},
                    "organization": 1, "status": "successful",
                    "ask_limit_on_launch": True, "ask_variables_on_launch": True,
                    "ask_labels_on_launch": False, "ask_inventory_on_launch": False,
                })
        return results

    def _launch(self, path: str, tid: int, body: dict) -> tuple[HTTPStatus, dict]:
        template = self.templates.get(tid)
        if template is None or KINDS[template["kind"]].template_path != path:
            return HTTPStatus.NOT_FOUND, {"detail": "Not found."}
        extra_vars = body.get("extra_vars") or {}
        if isinstance(extra_vars, str):
            try:
                extra_vars = json.loads(extra_vars)
            except ValueError:
                return HTTPStatus.BAD_REQUEST, {"extra_vars": ["the stand-in takes extra_vars as JSON only"]}
        kind, name = template["kind"], template["name"]
        job_type, job_path = KINDS[kind].job_type, KINDS[kind].job_path
        with self._changed:
            job_id = len(self.jobs) + 1
            when = _now()
            job = {
                "id": job_id, "type": job_type, "url": f"{API}{job_path}/{job_id}/", "name": name,
                "unified_job_template": tid, "launch_type": "manual", "status": "successful", "failed": False,
                "created": when, "started": when, "finished": when, "elapsed": 0.0, "job_explanation": "",
                "extra_vars": json.dumps(extra_vars), "limit": body.get("limit", ""),
            }
            if kind == "job_template":
                job.update(job_template=tid, artifacts=self.artifacts.get(name, {}))
            else:
                job.update(workflow_job_template=tid)
            self.jobs[job_id] = job
            self._launches.append({"kind": kind, "name": name, "extra_vars": extra_vars, "limit": body.get("limit"),
                                   "time": time.monotonic()})
            self._changed.notify_all()
            return HTTPStatus.CREATED, {job_type: job_id, "ignored_fields": {}, **job}

    def _jobs(self, job_type: str, ids: list[str]) -> list[dict]:
        with self._changed:
            return [dict(job) for jid, job in self.jobs.items() if job["type"] == job_type and str(jid) in ids]

    def api_get(self, path: str, query: dict) -> tuple[HTTPStatus, dict]:
        parts = path[len(API):].strip("/").split("/") if path.startswith(API) else []
        if parts == ["config"]:
            return HTTPStatus.OK, {"version": self.version, "ansible_version": "", "license_info": {}}
        if parts == ["unified_job_templates"]:
            return HTTPStatus.OK, _page(self._templates_named(query.get("name", [""])[0]))
        for kind in KINDS.values():
            if parts == [kind.job_path]:
                ids = ",".join(query.get("id__in", [])).split(",")
                return HTTPStatus.OK, _page(self._jobs(kind.job_type, ids))
            if len(parts) == 2 and parts[0] == kind.job_path:
                found = self._jobs(kind.job_type, [parts[1]])
                return (HTTPStatus.OK, found[0]) if found else (HTTPStatus.NOT_FOUND, {"detail": "Not found."})
        return HTTPStatus.NOT_FOUND, {"detail": "Not found."}

    def api_post(self, path: str, body: dict) -> tuple[HTTPStatus, dict]:
        parts = path[len(API):].strip("/").split("/") if path.startswith(API) else []
        if len(parts) == 3 and parts[2] == "launch" and parts[1].isdigit():
            return self._launch(parts[0], int(parts[1]), body)
        return HTTPStatus.NOT_FOUND, {"detail": "Not found."}


def _handler(standin: AwxStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Bearer token check, JSON in and out; the routes are AwxStandIn.api_get and .api_post."""

        def _token(self) -> str | None:
            scheme, token = (self.headers.get("Authorization", "").split(None, 1) + ["", ""])[:2]
            return (token.strip() or None) if scheme.lower() == "bearer" else None

        def _reply(self, code: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == HTTPStatus.CREATED and "url" in body:
                self.send_header("Location", body["url"])
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            token = self._token()
            standin.record_request({"method": method, "path": url.path, "query": url.query, "token": token})
            if token is None:
                self._reply(HTTPStatus.UNAUTHORIZED, {"detail": "Authentication credentials were not provided."})
                return
            if method == "GET":
                self._reply(*standin.api_get(url.path, parse_qs(url.query)))
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError as err:
                self._reply(HTTPStatus.BAD_REQUEST, {"detail": f"JSON parse error - {err}"})
                return
            self._reply(*standin.api_post(url.path, body if isinstance(body, dict) else {}))

        def do_GET(self) -> None:  # noqa: N802  pylint: disable=invalid-name
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802  pylint: disable=invalid-name
            self._serve("POST")

        def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
            """Quiet: the requests are in AwxStandIn.requests."""

    return Handler


def ansible_rulebook() -> str:
    """The ansible-rulebook of the venv running pytest (requirements.txt); a missing one, or a missing java (it runs
    the Drools rule engine), fails the test."""
    found = shutil.which("ansible-rulebook", path=str(Path(sys.executable).parent))
    require(found, "ansible-rulebook", "pip install ansible-rulebook==1.3.2 into the venv running pytest")
    require(os.environ.get("JAVA_HOME") or shutil.which("java"), "java >= 17 for ansible-rulebook", "apt-get install openjdk-17-jre-headless")
    return found
