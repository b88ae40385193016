# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An incident's directory kept in an S3-compatible bucket as well, for controllers that are thrown away after each
job (an AWX execution environment, a CI runner). PRIVATE to the collection: no compatibility promise.

The timeline callback configures it from the environment (RUNBOOKS_INCIDENT_STORE=s3://bucket/some/prefix, the
endpoint and region beside it; credentials from boto3's own chain only). The incident INC-X lives under
`<prefix>/INC-X/`: timeline.json, incident.json, postmortem.md, timeline.html.

pull(), when a run's incident id is known (before its first task) and again at its end, brings the bucket's copy
into the local directory:

- timeline.json is merged with the local one under the timeline's lock: a run only in the bucket is added with its
  events; a run on both sides stays the local one unless the bucket's is further on (ended where the local one is
  still running, else more task records, else more events), so a local run is never lost or shortened. Runs are
  kept in start order, events in time order (_timeline.merge).
- incident.json is not merged entry by entry: one whole file wins, under the lifecycle's lock. The bucket's is taken
  when there is none locally; else when its history is longer than the local one's; at equal length when its
  `updated` is later; else the local one stays. A local incident.json that does not parse is kept as it is (the
  lifecycle refuses it until `force`), neither replaced nor pushed (one warning).
- A file of the bucket that does not parse, is not this incident's (a timeline of another format, a state without
  the incident's id and history) or is larger than MAX_BYTES is not merged (one warning: the local records stand).
  At the end of the run, before the local file is pushed in its place, it is moved aside in the bucket (a
  server-side copy to `<name>.corrupt-<stamp>`): never overwritten blindly. When it cannot be copied, the push
  stops there (one warning).

push(), at the end of the run (after the run's last save and rendering), pulls and merges again (and renders again
when that added runs), uploads timeline.json, incident.json, postmortem.md and timeline.html (each with
Content-MD5, through _s3store.Store.put), then reads the bucket's timeline and incident.json again: when another
controller's push in between dropped a local run (or history entries), it pulls, merges and pushes again (at most
PUSH_ATTEMPTS times). Nothing is pushed when the pull before it failed: the bucket's copy is never replaced by a
file that has not seen it. `<dir>/metrics.json` is not kept in the bucket: it is computed from the incidents in one
directory, and a controller that holds only one incident would replace the others' figures.

Every failure (boto3 missing, no credentials, access denied, a missing bucket, the network) is one StoreProblem for
the caller to show as a warning: the local records stand. Messages name the bucket and prefix only: an endpoint URL
is reduced to its scheme, host and port, and the credentials of the environment are blanked out of them.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import stat
import urllib.parse

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _lifecycle, _postmortem, _s3store, _timeline

MAX_BYTES = 20 << 20
PUSHED = (_timeline.TIMELINE, _lifecycle.STATE_FILE, _postmortem.POSTMORTEM, _postmortem.GANTT)
PUSH_ATTEMPTS = 3
# Fewer retries than the backups' (a callback must not hold a finished run for minutes): a store that is down costs
# at most a few seconds at the start of the run and again at its end.
ATTEMPTS = 3
READ_TIMEOUT = 30
BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()=+,@~-]+")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


class StoreProblem(Exception):
    """The store could not be used; the message is safe to show (bucket and prefix only, no secret)."""


class RemoteCorrupt(Exception):
    """An object in the bucket that is not what its name says (not JSON, not this incident's, too large)."""


def parse_store(value):
    """(bucket, key prefix ending in '/' or "") of `s3://bucket/some/prefix`; StoreProblem when it is not one."""
    if not isinstance(value, str) or not value.startswith("s3://") or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise StoreProblem("the incident store must be s3://bucket or s3://bucket/some/prefix")
    rest = value[len("s3://"):]
    bucket, _slash, prefix = rest.partition("/")
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StoreProblem("the incident store's bucket is not a bucket name (letters, digits, '.', '_', '-'; 3 to 63)")
    if "?" in value or "#" in value or "@" in bucket:
        raise StoreProblem("the incident store is s3://bucket/prefix, without a query, fragment or user")
    prefix = prefix[:-1] if prefix.endswith("/") else prefix
    if prefix:
        segments = prefix.split("/")
        if any(segment in ("", ".", "..") or not SEGMENT.fullmatch(segment) for segment in segments) or len(prefix) > 512:
            raise StoreProblem("the incident store's prefix %r is not a key prefix (no leading '/', no empty, '.' or '..' "
                               "part; letters, digits and !_.*'()=+,@~-)" % prefix)
        prefix += "/"
    return bucket, prefix


def endpoint_shown(url):
    """scheme://host[:port] of an endpoint URL: no user, password, path or query."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = ":%d" % parts.port if parts.port else ""
    except ValueError:
        return "<the endpoint>"
    return "%s://%s%s" % (parts.scheme or "?", "[%s]" % host if ":" in host else host, port)


def url_secrets(url):
    """The parts of a URL that may be secret: its user, password and query."""
    try:
        parts = urllib.parse.urlsplit(url or "")
        return [parts.username, parts.password, parts.query]
    except ValueError:
        return [url]


def scrub(message, secrets=None):
    """`message` with every URL reduced to scheme://host[:port] and every secret (default: the environment's AWS
    credentials) blanked out."""
    if secrets is None:
        secrets = [os.environ.get(name) for name in SECRET_ENV]
    message = URL.sub(lambda match: endpoint_shown(match.group(0)), str(message))
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return _timeline.text(message, 400)


def s3_client(endpoint_url=None, region="us-east-1"):
    """A boto3 S3 client with boto3's credential chain (never credentials of ours) and short retries."""
    return _s3store.s3_client(endpoint_url, region or "us-east-1", attempts=ATTEMPTS, read_timeout=READ_TIMEOUT)


def _error_code(exc):
    response = getattr(exc, "response", None)
    return str(((response or {}).get("Error") or {}).get("Code") or "") if isinstance(response, dict) else ""


def _is_state(data, incident_id):
    return isinstance(data, dict) and data.get("id") == incident_id and isinstance(data.get("history"), list)


def _parsed(data, name, incident_id):
    """The bucket's file `name` parsed and checked; RemoteCorrupt when it is not what its name says."""
    if isinstance(data, RemoteCorrupt):
        raise data
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise RemoteCorrupt("%s is not JSON" % name) from None
    if name == _timeline.TIMELINE and not _timeline.is_timeline(parsed, incident_id):
        raise RemoteCorrupt("%s is not the timeline of incident %s in format %d" % (name, incident_id, _timeline.FORMAT))
    if name == _lifecycle.STATE_FILE and not _is_state(parsed, incident_id):
        raise RemoteCorrupt("%s is not the state of incident %s" % (name, incident_id))
    return parsed


def _read_local(dir_fd, name):
    """The bytes of the regular file `name` in the directory of `dir_fd` (never through a symlink; at most
    MAX_BYTES + 1), or None when there is none."""
    try:
        fd = os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return handle.read(MAX_BYTES + 1)


def run_rank(run, events):
    """How far a run's record has come: (ended, task records, events)."""
    return (bool(run.get("end")) and run.get("outcome") != "running", len(run.get("tasks") or []), len(events))


def merge_timelines(local, remote):
    """`local` with what `remote` adds (both valid timelines of one incident): the runs only in `remote` and the runs
    whose remote record is further on (run_rank), each with its events; `local` wins a tie. Returns (merged, changed)."""
    def events_by_run(timeline):
        found = {}
        for event in timeline["events"]:
            found.setdefault(event.get("run_id"), []).append(event)
        return found

    local_runs = {run["run_id"]: run for run in local["runs"]}
    local_events, remote_events = events_by_run(local), events_by_run(remote)
    merged, changed = local, False
    for run in remote["runs"]:
        run_id = run["run_id"]
        theirs = remote_events.get(run_id, [])
        mine = local_runs.get(run_id)
        if mine is not None and run_rank(run, theirs) <= run_rank(mine, local_events.get(run_id, [])):
            continue
        merged = _timeline.merge(merged, run, theirs)
        changed = True
    # Events of no run on either side (a run writes none, a hand-edited file may hold some): kept from both.
    known = {run["run_id"] for run in merged["runs"]}
    seen = {json.dumps(event, sort_keys=True) for event in merged["events"]}
    extra = []
    for event in remote["events"]:
        key = json.dumps(event, sort_keys=True)
        if event.get("run_id") not in known and key not in seen:
            extra.append(event)
            seen.add(key)
    if extra:
        merged = dict(merged, events=sorted(merged["events"] + extra, key=lambda item: str(item.get("time") or "")))
        changed = True
    return merged, changed


def state_wins(remote, local):
    """Whether the bucket's incident.json replaces the local one: there is no local one; its history is longer; at
    equal length, its `updated` is later."""
    if local is None:
        return True
    if len(remote["history"]) != len(local["history"]):
        return len(remote["history"]) > len(local["history"])
    theirs, mine = _timeline.parse_time(remote.get("updated")), _timeline.parse_time(local.get("updated"))
    return theirs is not None and (mine is None or theirs > mine)


class IncidentStore:
    """The bucket's copy of the incidents, `s3://bucket/prefix`, through one boto3 client made on first use."""

    def __init__(self, store, endpoint_url=None, region=None, client=None):
        self.bucket, self.prefix = parse_store(store)
        self.endpoint_url = endpoint_url or None
        self.region = region or "us-east-1"
        self._client = client
        self.bad = {}  # incident id: {name: why} of the bucket's files found bad by the last pull

    def where(self, incident_id=None, name=""):
        """s3://bucket/prefix[/incident/name]: what messages show of the store."""
        return "s3://%s/%s%s" % (self.bucket, self.prefix, "%s/%s" % (incident_id, name) if incident_id else "")

    @contextlib.contextmanager
    def _problem(self, what):
        """Any failure in the block becomes one StoreProblem with a safe message."""
        try:
            yield
        except StoreProblem:
            raise
        except ImportError:
            raise StoreProblem("%s: boto3 is not installed on the controller" % what) from None
        except Exception as exc:  # pylint: disable=broad-exception-caught
            secrets = [os.environ.get(name) for name in SECRET_ENV] + url_secrets(self.endpoint_url)
            raise StoreProblem("%s: %s: %s" % (what, type(exc).__name__, scrub(exc, secrets))) from None

    def client(self):
        if self._client is None:
            self._client = s3_client(self.endpoint_url, self.region)
        return self._client

    def objects(self, incident_id):
        """The Store of one incident's objects (`<prefix><incident id>/`)."""
        if not _timeline.valid_incident_id(incident_id):
            raise StoreProblem("incident id %r is not letters, digits and ._:- (at most 64)" % (incident_id,))
        return _s3store.Store(self.client(), self.bucket, "%s%s/" % (self.prefix, incident_id))

    @staticmethod
    def _get(objects, name):
        """The object's bytes; None when there is none; a RemoteCorrupt (returned) beyond MAX_BYTES, not read."""
        try:
            response = objects.client.get_object(Bucket=objects.bucket, Key=objects.key(name))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if _error_code(exc) == "NoSuchKey":
                return None
            raise
        body = response["Body"]
        try:
            if int(response.get("ContentLength") or 0) > MAX_BYTES:
                return RemoteCorrupt("%s is larger than %d MiB" % (name, MAX_BYTES >> 20))
            data = body.read(MAX_BYTES + 1)
        finally:
            body.close()
        return RemoteCorrupt("%s is larger than %d MiB" % (name, MAX_BYTES >> 20)) if len(data) > MAX_BYTES else data

    # --- pull ------------------------------------------------------------------------------------------------------

    def pull(self, base, incident_id):
        """Merge the bucket's timeline.json and incident.json into `<base>/<incident_id>` (the rules: the module's
        docstring). Returns (whether the local timeline changed, [problems]): a problem is a file of the bucket that
        was not merged, or a local incident.json that does not parse. StoreProblem when the bucket could not be read:
        nothing changed then."""
        with self._problem("the incident store %s could not be read" % self.where(incident_id)):
            objects = self.objects(incident_id)
            remote = {name: self._get(objects, name) for name in (_timeline.TIMELINE, _lifecycle.STATE_FILE)}
        bad, problems, changed = {}, [], False
        for name, data in remote.items():
            if data is None:
                continue
            try:
                parsed = _parsed(data, name, incident_id)
            except RemoteCorrupt as exc:
                bad[name] = str(exc)
                continue
            if name == _timeline.TIMELINE:
                changed = self._merge_timeline(base, incident_id, parsed)
                if changed is None:
                    problems.append("the local %s of incident %s is not a timeline: the bucket's is not merged into it (the "
                                    "run moves it aside)" % (name, incident_id))
                    changed = False
            elif not self._take_state(base, incident_id, parsed):
                problems.append("the local %s of incident %s does not parse: kept as it is, the bucket's is not taken"
                                % (name, incident_id))
        self.bad[incident_id] = bad
        if bad:
            problems.insert(0, "the incident store %s: %s: not merged, the local records stand; at the end of the run it "
                               "is moved aside there (<name>.corrupt-<stamp>) and replaced by the local file"
                            % (self.where(incident_id), "; ".join(sorted(bad.values()))))
        return changed, problems

    @staticmethod
    def _merge_timeline(base, incident_id, remote):
        """Merge `remote` into the local timeline; whether that changed it, None when the local file is not a
        timeline (left as it is: the callback's next save moves it aside with its warning)."""
        with _timeline.incident_dir(base, incident_id) as (_base_fd, fd):
            with _timeline.locked(fd, _timeline.LOCK):
                try:
                    local = _timeline.read_json_at(fd, _timeline.TIMELINE)
                except (ValueError, UnicodeDecodeError):
                    return None
                if local is None:
                    local = _timeline.empty(incident_id)
                elif not _timeline.is_timeline(local, incident_id):
                    return None
                merged, changed = merge_timelines(local, remote)
                if changed or _read_local(fd, _timeline.TIMELINE) is None:
                    _timeline.write_json_at(fd, _timeline.TIMELINE, merged)
        return changed

    @staticmethod
    def _take_state(base, incident_id, remote):
        """Take the bucket's incident.json when it wins (state_wins); False when the local one does not parse."""
        store = _lifecycle.StateStore(base, incident_id)
        with store.locked(create=True):
            try:
                local = store.read()
            except _lifecycle.CorruptState:
                return False
            if state_wins(remote, local):
                store.write(remote)
        return True

    # --- push ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _local(base, incident_id):
        """{name: bytes} of the local files to push: a local incident.json that does not parse is not pushed, nor a
        file larger than MAX_BYTES."""
        found = {}
        with _timeline.incident_dir(base, incident_id, create=False) as (_base_fd, fd):
            with _timeline.locked(fd, _timeline.LOCK):
                for name in (_timeline.TIMELINE, _postmortem.POSTMORTEM, _postmortem.GANTT):
                    found[name] = _read_local(fd, name)
        store = _lifecycle.StateStore(base, incident_id)
        with store.locked(create=False):
            with contextlib.suppress(_lifecycle.CorruptState):
                state = store.read()
                if state is not None:
                    found[_lifecycle.STATE_FILE] = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        return {name: data for name, data in found.items() if data is not None and len(data) <= MAX_BYTES}

    def push(self, base, incident_id):
        """Pull and merge again, render again when that changed the timeline, then upload the local files (the rules:
        the module's docstring). Returns ([names pushed], [problems]); StoreProblem when the bucket could not be read
        (nothing pushed) or written."""
        problems, pushed = [], []
        for _attempt in range(PUSH_ATTEMPTS):
            changed, found = self.pull(base, incident_id)
            problems += [problem for problem in found if problem not in problems]
            if changed:
                _postmortem.render(base, incident_id)
            with self._problem("the incident store %s could not be written" % self.where(incident_id)):
                objects = self.objects(incident_id)
                local = self._local(base, incident_id)
                meta = {"incident": incident_id, "writer": "runbooks.incident.timeline"}
                for name in PUSHED:
                    if name not in local:
                        continue
                    if name in self.bad.get(incident_id, {}):
                        aside = "%s.corrupt-%s" % (name, datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"))
                        objects.client.copy_object(Bucket=objects.bucket, Key=objects.key(aside),
                                                   CopySource={"Bucket": objects.bucket, "Key": objects.key(name)})
                        problems.append("the incident store's %s was moved aside to %s" % (name, aside))
                        del self.bad[incident_id][name]
                    objects.put(name, local[name], meta)
                    if name not in pushed:
                        pushed.append(name)
                if self._kept(objects, incident_id, local):
                    return pushed, problems
        problems.append("the incident store %s kept being replaced by other runs: it may lack this run (the local "
                        "records stand; the next run of the incident adds them)" % self.where(incident_id))
        return pushed, problems

    def _kept(self, objects, incident_id, local):
        """Whether the bucket holds every local run and at least the local incident.json's history (another
        controller's push in between may have replaced them with its own merge)."""
        checks = {_timeline.TIMELINE: lambda mine, theirs: {run["run_id"] for run in mine["runs"]} <= {run["run_id"] for run in theirs["runs"]},
                  _lifecycle.STATE_FILE: lambda mine, theirs: len(theirs["history"]) >= len(mine["history"])}
        for name, check in checks.items():
            if name not in local:
                continue
            data = self._get(objects, name)
            try:
                theirs = _parsed(data, name, incident_id) if data is not None else None
            except RemoteCorrupt:
                theirs = None
            if theirs is None or not check(json.loads(local[name].decode("utf-8")), theirs):
                return False
        return True
