# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: timeline
type: aggregate
short_description: Record an incident's timeline from the runs themselves; render its post-mortem draft
version_added: 0.1.0
description:
  - For every playbook run given an extra variable C(incident_id), records who ran which playbook, in check or apply
    mode, when, with which outcome, and for each task and host its start, end and status (ok, changed, failed, skipped,
    unreachable), a short failure message and the key results of the collection's modules (durations, verdicts,
    fingerprints, counts; never a secret). A C(no_log) task is recorded as censored. Task arguments and registered
    variables are never recorded.
  - Events the collection's modules return in C(timeline_events) (declared, updated, resolved, outcome, notification)
    and the journal markers of the C(incident_run) role are events of the timeline.
  - Writes C(<incident_dir>/<incident_id>/timeline.json) after every task result and at the end of the run; several
    runs of one incident append to one timeline. At the end of the run it renders C(postmortem.md) and
    C(timeline.html) beside it, and C(<incident_dir>/metrics.json) across incidents.
  - With O(store) set (C(RUNBOOKS_INCIDENT_STORE=s3://bucket/prefix)), the incident's directory is also kept in an
    S3-compatible bucket, for controllers that are thrown away after each job (an AWX execution environment, a CI
    runner). When the run's incident id is known, before its first task, the bucket's C(timeline.json) is merged into
    the local one (by run id) and its C(incident.json) taken when there is none locally or when its history is longer
    (at equal length, when it was updated later), so that the lifecycle sees an incident declared on another
    controller. At the end of the run, after rendering, it merges again and pushes C(timeline.json),
    C(incident.json), C(postmortem.md) and C(timeline.html) to C(<prefix>/<incident_id>/). C(metrics.json) is not
    pushed. A file of the bucket that does not parse is not merged, and is moved aside there
    (C(<name>.corrupt-<stamp>)) before it is replaced.
  - Credentials come from boto3's own chain only (C(AWS_ACCESS_KEY_ID) and C(AWS_SECRET_ACCESS_KEY), as the AWX
    credential type of Amazon Web Services injects them, a profile, an instance role); they are never an option and
    never recorded.
  - It never fails a playbook; a problem is shown once as a warning, and a problem of the store (boto3 missing, the
    network, credentials, access denied, a missing bucket, a corrupt file there) once more, naming the bucket and
    prefix only. The local records stand.
requirements:
  - enabled in C(callbacks_enabled) (ansible.cfg) or C(ANSIBLE_CALLBACKS_ENABLED)
  - boto3 on the controller, for O(store) only
options:
  incident_dir:
    description:
      - The directory of the incidents' timelines, created with mode 0700 when missing.
      - A relative path is relative to the controller's working directory.
      - Only the environment sets it, as it does for the C(incident_lifecycle) module's records beside the timelines.
    type: path
    default: incidents
    env:
      - name: RUNBOOKS_INCIDENT_DIR
  store:
    description:
      - Where the incidents' directories are also kept, C(s3://bucket) or C(s3://bucket/some/prefix) (no C(..) or empty
        part, no leading C(/) in the prefix); the incident C(INC-1) is under C(some/prefix/INC-1/).
      - Empty or unset, nothing is kept off the controller.
      - Only the environment sets it.
    type: str
    env:
      - name: RUNBOOKS_INCIDENT_STORE
  store_endpoint_url:
    description:
      - The S3 endpoint of a service other than AWS S3 (Backblaze B2, MinIO, Ceph), such as
        C(https://s3.eu-central-003.backblazeb2.com). Unset, AWS S3 of O(store_region).
      - Never shown in a message but as its scheme, host and port.
    type: str
    env:
      - name: RUNBOOKS_INCIDENT_STORE_ENDPOINT_URL
  store_region:
    description:
      - The bucket's region.
    type: str
    default: us-east-1
    env:
      - name: RUNBOOKS_INCIDENT_STORE_REGION
author:
  - runbooks.incident contributors (@runbooks)
"""

import getpass

from ansible import context
from ansible.plugins.callback import CallbackBase

from ansible_collections.runbooks.incident.plugins.module_utils import _incident_store, _postmortem, _timeline


def _guarded(method):
    """A hook that never raises: the first problem is shown as a warning, the playbook goes on."""
    def hook(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self.warn_once("runbooks.incident.timeline: %s: %s; the incident timeline may be incomplete" % (type(exc).__name__, exc))
            return None
    hook.__name__ = method.__name__
    hook.__doc__ = method.__doc__
    return hook


def _text(value):
    return str(value) if value is not None else None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "runbooks.incident.timeline"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._run = None
        self._decided = False
        self._playbook = None
        self._started = None
        self._play = None
        self._warned = False
        self._base = None
        self._store = None
        self._store_decided = False
        self._store_warned = False

    def warn_once(self, message):
        if not self._warned:
            self._warned = True
            self._display.warning(message)

    def _store_warn(self, message):
        """The store's problems: one warning per ansible-playbook command (the first), apart from the timeline's."""
        if not self._store_warned:
            self._store_warned = True
            self._display.warning("runbooks.incident.timeline: %s" % message)

    def _incident_store(self):
        """The IncidentStore of the environment's settings, or None (unset, or its settings refused: one warning)."""
        if not self._store_decided:
            self._store_decided = True
            store = self.get_option("store")
            if store:
                try:
                    self._store = _incident_store.IncidentStore(store, self.get_option("store_endpoint_url"), self.get_option("store_region"))
                except _incident_store.StoreProblem as exc:
                    self._store_warn("%s; the incident's records are kept on this controller only" % exc)
        return self._store

    def _pull(self):
        """Before the run's first task: the bucket's records of the incident merged into the local ones."""
        self._sync("pull", "the bucket is tried again at the end of the run")

    def _push(self):
        """At the end of the run, after rendering: merged again with the bucket's, and pushed there."""
        self._sync("push")

    def _sync(self, operation, then=None):
        """The store's pull or push for this run's incident; a problem is a warning, the local records stand."""
        store = self._incident_store()
        if store is None or self._run is None:
            return
        try:
            _done, problems = getattr(store, operation)(self._base, self._run.incident_id)
        except _incident_store.StoreProblem as exc:
            problems = ["%s; the local records stand%s" % (exc, " (%s)" % then if then else "")]
        except Exception as exc:  # pylint: disable=broad-exception-caught
            problems = ["the incident store %s: %s: %s; the local records stand"
                        % (store.where(self._run.incident_id), type(exc).__name__, _incident_store.scrub(exc))]
        for problem in problems:
            self._store_warn(problem)

    def _save(self, after=None):
        if self._run is not None:
            _timeline.save_run(self._base, self._run, warn=self._display.warning, after=after)

    @_guarded
    def v2_playbook_on_start(self, playbook):
        if self._run is not None:  # one command, several playbooks: a run each
            self._run.finish_without_stats()
            self._save(after=_postmortem.write_at)
            self._push()
            self._run = None
        self._decided = False
        self._playbook = str(getattr(playbook, "_file_name", "") or "").rsplit("/", 1)[-1]
        self._started = _timeline.utc_now()

    @_guarded
    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()
        check = bool(context.CLIARGS.get("check")) or play.check_mode is True
        if self._decided:
            if self._run is not None and check and self._run.data["mode"] != "check":
                self._run.data["mode"] = "check"
                self._save()
            return
        self._decided = True
        extra = play.get_variable_manager().extra_vars
        if "incident_id" not in extra:
            return
        incident_id = extra.get("incident_id")
        if not _timeline.valid_incident_id(incident_id):
            self.warn_once("runbooks.incident.timeline: the incident_id extra variable is not letters, digits and ._:- "
                           "(at most 64): no timeline is recorded for this run")
            return
        severity = extra.get("severity")
        severity = str(severity) if _timeline.valid_severity(severity) else None
        job = _text(extra.get("awx_job_id", extra.get("tower_job_id")))
        if job is not None:
            operator = {"user": _text(extra.get("awx_user_name", extra.get("tower_user_name"))) or "unknown", "via": "awx",
                        "awx_job_id": _timeline.text(job, 64)}
        else:
            operator = {"user": getpass.getuser(), "via": "local"}
        operator["user"] = _timeline.text(operator["user"], 64)
        self._base = self.get_option("incident_dir")
        self._run = _timeline.Run(str(incident_id), self._playbook or "unknown", "check" if check else "apply", operator,
                                  severity=severity, start=self._started)
        self._pull()
        self._save()

    @_guarded
    def v2_playbook_on_task_start(self, task, is_conditional):
        if self._run is not None:
            self._run.task_started(task._uuid)

    @_guarded
    def v2_playbook_on_handler_task_start(self, task):
        if self._run is not None:
            self._run.task_started(task._uuid)

    @_guarded
    def v2_runner_on_start(self, host, task):
        if self._run is not None:
            self._run.host_started(task._uuid, host.get_name())

    def _record(self, result, status, ignored=False):
        if self._run is None:
            return
        task = result.task
        data = result.result
        action = getattr(task, "resolved_action", None) or task.action
        no_log = task.no_log not in (None, False)
        message = None
        if action in _timeline.JOURNAL_ACTIONS:
            args = result.task_fields.get("args") if isinstance(result.task_fields, dict) else None
            message = (args or {}).get("msg") or task.args.get("msg")
        self._run.host_done(task._uuid, result.host.get_name(), status, play=self._play, task=result.task_name,
                            action=action, result=data, no_log=no_log, ignored=ignored, journal_message=message)
        self._save()

    @_guarded
    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result.is_changed() else "ok")

    @_guarded
    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed", ignored=ignore_errors)

    @_guarded
    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    @_guarded
    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    @_guarded
    def v2_playbook_on_stats(self, stats):
        if self._run is None:
            return
        self._run.finish({host: stats.summarize(host) for host in sorted(stats.processed)})
        self._save(after=_postmortem.write_at)
        self._push()
