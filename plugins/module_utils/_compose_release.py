# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Releases of a docker compose deployment, recorded at each deploy and put back in a rollback (module
compose_release). PRIVATE to the collection: no compatibility promise.

A release is what was deployed: the image id each service's image reference resolved to, the git commit of the
project directory, and the schema migrations the database had. Each is one JSON record `<id>.json` (0600, written
atomically) in a directory of the module's (0700), never reached through a symlink; a record that is not a regular
file of this user, does not parse or says another id than its name is refused (ignored, never overwritten or
removed, with `force`).

Each release's image ids are tagged `<repository of the reference>:runbooks-release-<id>`, so that neither a new
build or pull under the same tag nor `docker image prune` can delete them; a release record pruned (beyond `keep`)
loses exactly the tags the record says it made (`docker rmi <tag>`, never by id, never forced).

A rollback (state=deployed) tags the target's image ids back as the references the compose file uses and checks out
its git commit; `docker compose up -d` is the caller's. Everything is decided before the first change.
"""
from __future__ import annotations

import copy
import datetime
import errno
import json
import os
import re
import shutil
import stat
import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _git, _pg, _pg_info, _run_lock

STATES = ("report", "recorded", "deployed")
PREVIOUS = "previous"
DEFAULT_DIR = "/var/lib/runbooks-incident/releases/whatsapp-mcp"
TAG_PREFIX = "runbooks-release-"
FORMAT = 1
MAX_RECORD = 1 << 20  # a record bigger than this is none the module wrote
COMMAND_TIMEOUT = 120
RELEASE_ID = re.compile(r"^([0-9]{8}T[0-9]{6}Z)(?:-([1-9][0-9]{0,5}))?\Z")
# compose's rule for service names, bounded so that a tag made of one stays within docker's 128 characters.
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}\Z")
IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}\Z")
# A docker image reference: [registry[:port]/]path[:tag][@digest] (checked loosely; docker checks the rest).
IMAGE_REF = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@-]{0,511}\Z")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")
TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z\Z")
MAX_TEXT = 200
MAX_MIGRATION = 1000


class ReleaseError(Exception):
    """A refusal or failure before any change: the message says what to do; nothing was changed."""


class Refused(ReleaseError):
    """A refused rollback; `result` holds what was read (releases, unknown_migrations, ...)."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class ApplyError(Exception):
    """A failure part way through the changes; `done` lists what was done."""

    def __init__(self, message, done):
        super().__init__(message)
        self.done = done


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def id_key(release_id):
    """Sort key of a release id: its stamp, then its suffix (none is 1)."""
    match = RELEASE_ID.match(release_id)
    return (match.group(1), int(match.group(2) or 1)) if match else ("", 0)


def new_id(moment, taken):
    """A release id for `moment` not among `taken` (names in use): the stamp, or the stamp with -2, -3, ..."""
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    candidate, suffix = stamp, 1
    while candidate in taken:
        suffix += 1
        candidate = "%s-%d" % (stamp, suffix)
    return candidate


def repository(ref):
    """The repository of an image reference: without its digest and tag (`reg:5000/a/b:1.2` -> `reg:5000/a/b`)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def release_tags(release_id, refs, ids):
    """{service: tag} keeping each service's image of a release: `<repository>:runbooks-release-<id>`, with
    `-<service>` added where two services of the release share a repository but not an image."""
    by_repo = {}
    for service, ref in refs.items():
        by_repo.setdefault(repository(ref), set()).add(ids[service])
    tags = {}
    for service, ref in sorted(refs.items()):
        repo = repository(ref)
        tag = TAG_PREFIX + release_id + ("-" + service if len(by_repo[repo]) > 1 else "")
        tags[service] = "%s:%s" % (repo, tag)
    return tags


# ------------------------------------------------------------------------------------------------- options
def parse_table(value):
    """(schema or None, table) of migrations_table: `table`, `schema.table` (each part the name as it is, split at
    the last dot) or SQL-quoted parts (`"My Schema"."t.1"`, `"qu""ote"`)."""
    match = _pg.KEY.match(value)
    if match:
        parts = [part[1:-1].replace('""', '"') if part and part.startswith('"') else part for part in match.groups()]
        return parts[0], parts[1]
    schema, dot, name = value.rpartition(".")
    if not name or (dot and not schema):
        raise ReleaseError("migrations_table %s is not a table name (table or schema.table)" % _short(value))
    return (schema or None), name


def table_sql(schema, name):
    return ("%s.%s" % (_pg.quote_ident(schema), _pg.quote_ident(name))) if schema else _pg.quote_ident(name)


def _list_of_text(name, value, pattern=None):
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ReleaseError("%s must be a non-empty list of strings" % name)
    if pattern is not None:
        for item in value:
            if not pattern.match(item):
                raise ReleaseError("%s: %s is not valid (letters, digits and ._-, starting with a letter or digit)" % (name, _short(item)))
    return list(value)


def check_params(params):
    """Refuse what no run can do; normalises the paths and fills in release."""
    state = params.get("state")
    if state not in STATES:
        raise ReleaseError("state must be one of %s" % ", ".join(STATES))
    for name in ("project_dir", "dir"):
        value = params.get(name)
        if not isinstance(value, str) or not value.startswith("/") or value.rstrip("/") == "":
            raise ReleaseError("%s %s must be an absolute path (not /)" % (name, _short(value)))
        params[name] = os.path.normpath(value)
    params["compose_command"] = _list_of_text("compose_command", params.get("compose_command"))
    params["docker_command"] = _list_of_text("docker_command", params.get("docker_command"))
    services = _list_of_text("services", params.get("services"), SERVICE_NAME)
    if len(set(services)) != len(services):
        raise ReleaseError("services names a service twice")
    params["services"] = sorted(services)
    _pg.check_name(params.get("db"))
    table = params.get("migrations_table")
    if table is None:
        table = params["migrations_table"] = ""
    if table:
        parse_table(table)
        column = params.get("migrations_column")
        if not isinstance(column, str) or not column or len(column.encode()) > 63:
            raise ReleaseError("migrations_column %s is not a column name (1 to 63 bytes)" % _short(column))
    keep = params.get("keep")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ReleaseError("keep is %s: it must be a whole number, 1 or more" % _short(keep))
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(str(incident_id)):
        raise ReleaseError("incident_id %s is not valid (letters, digits and ._:-, at most 64)" % _short(incident_id))
    label = params.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_TEXT or any(ord(char) < 32 or ord(char) == 127 for char in label)):
        raise ReleaseError("label must be at most %d characters, without control characters" % MAX_TEXT)
    release = params.get("release")
    if release is not None:
        if state == "recorded":
            raise ReleaseError("release is not for state=recorded (a record is made of what is deployed now)")
        if release != PREVIOUS and not RELEASE_ID.match(str(release)):
            raise ReleaseError("release %s is neither 'previous' nor a release id (like 20261206T220000Z)" % _short(release))
    elif state == "deployed":
        params["release"] = PREVIOUS
    if params.get("verified") and state != "recorded":
        raise ReleaseError("verified is only for state=recorded")
    if label is not None and state != "recorded":
        raise ReleaseError("label is only for state=recorded")


# ------------------------------------------------------------------------------------------------- commands
def _run(argv, what, cwd=None):
    """(returncode, stdout, stderr) of `argv`; ReleaseError when it cannot run or gives no answer in time."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=cwd,
                             timeout=COMMAND_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ReleaseError("%s gave no answer within %d s" % (what, COMMAND_TIMEOUT)) from None
    except OSError as exc:
        raise ReleaseError("cannot run %s (%s): %s" % (what, argv[0], exc.strerror or exc)) from None
    return res.returncode, res.stdout, res.stderr


def _last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip() and "level=warning" not in line]
    return (lines[-1] if lines else "no message")[:500]


class Docker:
    def __init__(self, command):
        self.command = list(command)

    def image_id(self, ref):
        """The id `ref` (a reference or an id) resolves to, or None when there is no such image."""
        code, out, err = _run(self.command + ["image", "inspect", "--format", "{{.Id}}", ref], "docker image inspect")
        if code != 0:
            if "no such image" in err.lower() or "no such object" in err.lower():
                return None
            raise ReleaseError("docker image inspect %s failed: %s" % (ref, _last_line(err)))
        value = out.strip()
        if not IMAGE_ID.match(value):
            raise ReleaseError("docker image inspect %s gave no image id (%s)" % (ref, _short(value)))
        return value

    def tag(self, image_id, ref):
        code, _out, err = _run(self.command + ["tag", image_id, ref], "docker tag")
        if code != 0:
            raise OSError(errno.EIO, "docker tag %s %s failed: %s" % (image_id, ref, _last_line(err)))

    def untag(self, tag):
        """`docker rmi <tag>` (the tag only; docker deletes the image when it was its last name and no container
        uses it). Returns None, or docker's error."""
        code, _out, err = _run(self.command + ["rmi", tag], "docker rmi")
        return None if code == 0 else _last_line(err)


def compose_refs(params):
    """{service: image reference} of `services`, from `compose config --format json` in project_dir (the
    environment as it is: COMPOSE_FILE and the project's .env are honoured). A service the project does not have
    is refused."""
    project_dir = params["project_dir"]
    if not os.path.isdir(project_dir):
        raise ReleaseError("project_dir %s is not a directory" % project_dir)
    argv = params["compose_command"] + ["--project-directory", project_dir, "config", "--format", "json"]
    code, out, err = _run(argv, " ".join(params["compose_command"]) + " config", cwd=project_dir)
    if code != 0:
        raise ReleaseError("%s config in %s failed: %s" % (" ".join(params["compose_command"]), project_dir, _last_line(err)))
    try:
        config = json.loads(out)
        services = config["services"]
        if not isinstance(services, dict):
            raise ValueError("services is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError("compose config in %s gave no project: %s" % (project_dir, exc)) from None
    unknown = [service for service in params["services"] if service not in services]
    if unknown:
        raise ReleaseError("the compose project in %s has no service %s (it has %s)" % (
            project_dir, ", ".join(unknown), ", ".join(sorted(services)) or "none"))
    refs = {}
    for service in params["services"]:
        ref = (services[service] or {}).get("image")
        if not ref and config.get("name"):
            ref = "%s-%s" % (config["name"], service)  # what compose names the image it builds
        if not isinstance(ref, str) or not IMAGE_REF.match(ref):
            raise ReleaseError("the image of service %s in %s is %s: not an image reference" % (service, project_dir, _short(ref)))
        refs[service] = ref
    return refs


class GitState:
    """The project directory's git work tree, if it is one: HEAD and whether tracked files are modified."""

    def __init__(self, project_dir):
        self.checkout = _git.Checkout(project_dir)
        self.commit = None
        self.dirty = []
        if shutil.which(self.checkout.git) is None:
            return  # no git on the host: no work tree either
        res = self._run("rev-parse", "--is-inside-work-tree", check=False)
        if res.returncode != 0 or res.stdout.strip() != "true":
            message = (res.stderr or "").strip()
            if res.returncode != 0 and "not a git repository" not in message:
                raise ReleaseError("git cannot read %s: %s" % (project_dir, _last_line(message)))
            return
        head = self._run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).stdout.strip()
        self.commit = head if COMMIT.match(head) else None
        status = self._run("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
        self.dirty = [line[3:] for line in status.stdout.splitlines() if line.strip()]

    def _run(self, *args, check=True):
        try:
            return self.checkout.run(*args, check=check)
        except _git.GitError as exc:
            raise ReleaseError(str(exc)) from None

    @property
    def is_repo(self):
        return self.commit is not None

    def has_commit(self, commit):
        return self._run("cat-file", "-e", commit + "^{commit}", check=False).returncode == 0

    def checkout_detached(self, commit):
        try:
            self.checkout.run("checkout", "--quiet", "--detach", commit)
        except _git.GitError as exc:
            raise OSError(errno.EIO, str(exc)) from None


def read_migrations(params):
    """The sorted versions in the migrations table, read in a read-only transaction."""
    schema, name = parse_table(params["migrations_table"])
    column = _pg.quote_ident(params["migrations_column"])
    sql = ("SELECT coalesce(json_agg(v), '[]'::json) FROM (SELECT DISTINCT CAST(%s AS text) AS v FROM %s WHERE %s IS NOT NULL) s"
           % (column, table_sql(schema, name), column))
    try:
        versions = _pg_info.answer(_pg_info.read_only_runtime(params), params["db"], sql)
    except (_pg.PgError, ValueError) as exc:
        raise ReleaseError("cannot read the migrations (%s.%s of %s): %s (migrations_table: '' records none)" % (
            params["migrations_table"], params["migrations_column"], params["db"], exc)) from None
    if not isinstance(versions, list) or not all(isinstance(item, str) for item in versions):
        raise ReleaseError("the migrations table of %s gave no list of versions" % params["db"])
    return sorted(versions)


# ------------------------------------------------------------------------------------------------- records
def validate_record(data, name):
    """The record in `data` (parsed JSON of file `name`) checked field by field; ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    release_id = data.get("id")
    if not isinstance(release_id, str) or not RELEASE_ID.match(release_id) or name != release_id + ".json":
        raise ValueError("its id %s is not its file name" % _short(release_id))
    if data.get("format") != FORMAT:
        raise ValueError("format %s is not %d" % (_short(data.get("format")), FORMAT))
    if not isinstance(data.get("recorded_at"), str) or not TIME.match(data["recorded_at"]):
        raise ValueError("recorded_at is not a time")
    if data.get("label") is not None and (not isinstance(data["label"], str) or len(data["label"]) > MAX_TEXT):
        raise ValueError("label is not a short text")
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise ValueError("no services")
    tags = data.get("tags")
    if not isinstance(tags, dict) or set(tags) != set(services):
        raise ValueError("its tags are not those of its services")
    for service, image in services.items():
        if not SERVICE_NAME.match(service) or not isinstance(image, dict):
            raise ValueError("service %s is not valid" % _short(service))
        if not isinstance(image.get("image"), str) or not IMAGE_REF.match(image["image"]):
            raise ValueError("the image of %s is not an image reference" % service)
        if not isinstance(image.get("id"), str) or not IMAGE_ID.match(image["id"]):
            raise ValueError("the image id of %s is not sha256:<64 hex>" % service)
        tag = tags[service]
        if not isinstance(tag, str) or ":" not in tag or not tag.rsplit(":", 1)[1].startswith(TAG_PREFIX + release_id) \
                or not TAG.match(tag.rsplit(":", 1)[1]) or not IMAGE_REF.match(tag):
            raise ValueError("the tag of %s is not one the module makes" % service)
    if data.get("git") is not None and (not isinstance(data["git"], str) or not COMMIT.match(data["git"])):
        raise ValueError("git is not a commit")
    migrations = data.get("migrations")
    if migrations is not None and (not isinstance(migrations, list) or not all(isinstance(item, str) and len(item) <= MAX_MIGRATION for item in migrations)):
        raise ValueError("migrations is not a list of versions")
    if not isinstance(data.get("verified"), bool):
        raise ValueError("verified is not true or false")
    deployed = data.get("deployed_at", [])
    if not isinstance(deployed, list) or not all(isinstance(item, dict) and isinstance(item.get("time"), str) and TIME.match(item["time"])
                                                 for item in deployed):
        raise ValueError("deployed_at is not a list of deployments")
    return data


class Store:
    """The records directory, held by a descriptor (never reached through a symlink at its last component)."""

    def __init__(self, path):
        self.path = path
        self.fd = None
        self.names = set()  # every name in the directory (a new id never takes one)
        self.records = {}
        self.bad = []  # (name, why) of records refused or, with force, ignored
        self._open(create=False)

    def _open(self, create):
        parent, name = os.path.split(self.path)
        try:
            parent_fd = _fileio.open_dir(parent, create_mode=0o700 if create else None)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ReleaseError("dir %s: %s" % (self.path, exc)) from None
        try:
            self.fd = _fileio.subdir(parent_fd, name, create_mode=0o700 if create else None)
        except FileNotFoundError:
            return
        except _fileio.UnsafePathError:
            raise ReleaseError("dir %s is a symlink: the records are never reached through one; make it a directory (0700)" % self.path) from None
        except OSError as exc:
            raise ReleaseError("dir %s: %s" % (self.path, exc.strerror or exc)) from None
        finally:
            os.close(parent_fd)
        info = os.fstat(self.fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            self.close()
            raise ReleaseError("dir %s is owned by uid %d with mode %04o: not the module's (it must be 0700 and owned by uid %d); "
                               "fix it or move it away" % (self.path, info.st_uid, stat.S_IMODE(info.st_mode), os.geteuid()))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def load(self):
        if self.fd is None:
            return
        self.names = set(_fileio.listdir_at(self.fd))
        for name in sorted(self.names):
            if name.startswith("."):
                continue
            stem = name[:-5] if name.endswith(".json") else None
            if stem is None:
                continue
            if not RELEASE_ID.match(stem):
                self.bad.append((name, "not a release record name (<id>.json)"))
                continue
            try:
                self.records[stem] = validate_record(self._read(name), name)
            except ValueError as exc:
                self.bad.append((name, str(exc)))

    def _read(self, name):
        try:
            fd = os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError("a symlink") from None
            raise ValueError(exc.strerror or str(exc)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_uid != os.geteuid() or info.st_mode & 0o022:
                raise ValueError("owned by uid %d with mode %04o, not written by the module" % (info.st_uid, stat.S_IMODE(info.st_mode)))
            if info.st_size > MAX_RECORD:
                raise ValueError("too big")
            data = os.read(fd, MAX_RECORD + 1)
        finally:
            os.close(fd)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError("does not parse as JSON") from None

    def write(self, record):
        if self.fd is None:
            self._open(create=True)
        name = record["id"] + ".json"
        with _fileio.atomic_writer_at(self.fd, name, mode=0o600) as handle:
            handle.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        self.names.add(name)
        self.records[record["id"]] = record

    def remove(self, release_id):
        os.unlink(release_id + ".json", dir_fd=self.fd)
        self.names.discard(release_id + ".json")
        del self.records[release_id]


def read_records(path):
    """({id: record}, [(name, why)] of the records refused) of the records directory `path`, only read: nothing is
    created, written or removed, never through a symlink (as Store reads them). None when it does not exist;
    ReleaseError when it is not the module's (a symlink, another owner, writable by others)."""
    store = Store(path)
    try:
        if store.fd is None:
            return None
        store.load()
        return dict(store.records), list(store.bad)
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------- releases
def newest_first(records):
    return sorted(records.values(), key=lambda record: id_key(record["id"]), reverse=True)


def images_of(record, services):
    """{service: image id} of `services` in `record`, or None when it lacks one of them."""
    if not all(service in record["services"] for service in services):
        return None
    return {service: record["services"][service]["id"] for service in services}


def find_current(records, ids, commit, services):
    """The record whose images are those the references resolve to now (the one with the git commit too, if
    several), or None."""
    if any(value is None for value in ids.values()):
        return None
    matching = [record for record in newest_first(records) if images_of(record, services) == ids]
    for record in matching:
        if record.get("git") == commit:
            return record
    return matching[0] if matching else None


def last_event(records):
    """(time, kind, record, entry) of the newest recording or deployment."""
    events = []
    for record in records.values():
        events.append((record["recorded_at"], 0, record, None))
        for entry in record.get("deployed_at", []):
            events.append((entry["time"], 1, record, entry))
    return max(events, key=lambda event: (event[0], event[1])) if events else None


def resolve_previous(records, ids, current, services):
    """What release=previous means now: the release the last rollback to `previous` put in place, when it is still
    the current one and nothing was recorded or deployed since (so a second run changes nothing); else the newest
    verified release that is not the current one and whose images differ from those in use."""
    event = last_event(records)
    if current is not None and event is not None and event[1] == 1 and event[2]["id"] == current["id"] and event[3].get("release") == PREVIOUS:
        return current
    for record in newest_first(records):
        if not record["verified"] or (current is not None and record["id"] == current["id"]):
            continue
        if images_of(record, services) is None or images_of(record, services) == ids:
            continue
        return record
    return None


def summary(record, current_id):
    return dict(id=record["id"], recorded_at=record["recorded_at"], label=record.get("label"), verified=record["verified"],
                git=record.get("git"), services=copy.deepcopy(record["services"]), current=record["id"] == current_id,
                deployed_at=copy.deepcopy(record.get("deployed_at", [])))


class Context:
    """What a run reads before deciding anything."""

    def __init__(self, params, warn):
        self.params = params
        self.warn = warn
        self.docker = Docker(params["docker_command"])
        self.services = params["services"]
        self.refs = compose_refs(params)
        self.store = Store(params["dir"])
        try:
            self.store.load()
            if self.store.bad:
                listed = "; ".join("%s: %s" % item for item in self.store.bad)
                if not params["force"]:
                    raise ReleaseError("release records in %s the module cannot use: %s; move them away (or force: true to ignore "
                                       "them: they are never overwritten nor removed)" % (params["dir"], listed))
                warn("release records ignored (force): %s" % listed)
            self.ids = self.git = self.current = None
            self.reread(refs=False)
        except BaseException:
            self.store.close()
            raise

    def reread(self, refs=True):
        """Read again what is deployed: the references (with `refs`), their images, git, the current release."""
        if refs:
            self.refs = compose_refs(self.params)
        self.ids = {service: self.docker.image_id(ref) for service, ref in self.refs.items()}
        self.git = GitState(self.params["project_dir"])
        self.current = find_current(self.store.records, self.ids, self.git.commit, self.services)

    @property
    def records(self):
        return self.store.records

    def result(self, **more):
        current_id = self.current["id"] if self.current else None
        result = dict(
            changed=False,
            state=self.params["state"],
            project_dir=self.params["project_dir"],
            dir=self.params["dir"],
            services={service: dict(image=self.refs[service], id=self.ids[service]) for service in self.services},
            git=self.git.commit,
            releases=[summary(record, current_id) for record in newest_first(self.records)],
            current=current_id,
            target=None,
            unknown_migrations=None,
        )
        result.update(more)
        return result

    def migrations(self, required):
        """The database's migrations, None when the check is disabled; with `required` false an unreadable database
        is a warning (and None)."""
        if not self.params["migrations_table"]:
            return None
        if required:
            return read_migrations(self.params)
        try:
            return read_migrations(self.params)
        except ReleaseError as exc:
            self.warn(str(exc))
            return None

    def untagged(self, record):
        """{service: (tag, image id)} of the record's tags that do not resolve to its images."""
        missing = {}
        for service, tag in sorted(record["tags"].items()):
            if self.docker.image_id(tag) != record["services"][service]["id"]:
                missing[service] = (tag, record["services"][service]["id"])
        return missing

    def new_record(self, moment, label, verified, migrations):
        release_id = new_id(moment, {name[:-5] for name in self.store.names if name.endswith(".json")})
        return dict(format=FORMAT, id=release_id, recorded_at=iso(moment), label=label,
                    services={service: dict(image=self.refs[service], id=self.ids[service]) for service in self.services},
                    tags=release_tags(release_id, self.refs, self.ids), git=self.git.commit, migrations=migrations,
                    verified=bool(verified), deployed_at=[])


def unknown_migrations(target, migrations):
    """The versions the database has that `target` does not know; None when either is not known."""
    if target is None or migrations is None or target.get("migrations") is None:
        return None
    return sorted(set(migrations) - set(target["migrations"]))


def _ids_text(ids, services):
    """`app 0123456789ab, ...`: the short image ids of `services` in {service: id}."""
    return ", ".join("%s %s" % (service, ids[service][7:19] if ids and ids.get(service) else "missing") for service in services)


# ------------------------------------------------------------------------------------------------- states
def run(params, check_mode=False, diff=False, warn=lambda message: None):
    check_params(params)
    ctx = Context(params, warn)
    try:
        if params["state"] == "report":
            return report(ctx)
        if params["state"] == "recorded":
            return recorded(ctx, check_mode, diff)
        return deployed(ctx, check_mode, diff)
    finally:
        ctx.store.close()


def _resolve(ctx, release):
    if release in (None, PREVIOUS):
        return resolve_previous(ctx.records, ctx.ids, ctx.current, ctx.services)
    return ctx.records.get(release)


def report(ctx):
    target = _resolve(ctx, ctx.params.get("release"))
    if ctx.params.get("release") not in (None, PREVIOUS) and target is None:
        raise ReleaseError("there is no release %s in %s" % (ctx.params["release"], ctx.params["dir"]))
    migrations = ctx.migrations(required=False)
    result = ctx.result(target=target["id"] if target else None, unknown_migrations=unknown_migrations(target, migrations), migrations=migrations)
    if ctx.current:
        now = "the deployed release is %s%s" % (ctx.current["id"], " (verified)" if ctx.current["verified"] else " (not verified)")
    elif any(value is None for value in ctx.ids.values()):
        now = "the images of %s are not all present (%s)" % (ctx.params["project_dir"], _ids_text(ctx.ids, ctx.services))
    else:
        now = "the deployed images (%s) are unrecorded: in no release record (pulled or built by hand?)" % _ids_text(ctx.ids, ctx.services)
    if target is None:
        then = "no verified release to roll back to" if ctx.params.get("release") in (None, PREVIOUS) else ""
    elif ctx.current and target["id"] == ctx.current["id"]:
        then = "previous is %s, already deployed" % target["id"]
    else:
        then = "a rollback would deploy %s (%s)%s" % (target["id"], target.get("label") or "no label", (
            "; the database has migrations it does not know: %s" % ", ".join(result["unknown_migrations"])) if result["unknown_migrations"] else "")
    result["msg"] = "%s: %s; %d release(s) recorded; %s" % (ctx.params["project_dir"], now, len(ctx.records), then)
    return result


def prune_plan(records, keep, keep_ids):
    """Ids of the records to remove so that `keep` remain, oldest first; never one of `keep_ids`."""
    records = newest_first(records)
    excess = len(records) - keep
    plan = []
    for record in reversed(records):
        if excess <= 0:
            break
        if record["id"] in keep_ids:
            continue
        plan.append(record["id"])
        excess -= 1
    return plan


def recorded(ctx, check_mode, diff):
    params = ctx.params
    missing = [service for service in ctx.services if ctx.ids[service] is None]
    if missing:
        raise ReleaseError("no image %s for service %s: build or pull it before recording the release" % (
            ", ".join(ctx.refs[service] for service in missing), ", ".join(missing)))
    migrations = ctx.migrations(required=True)
    same = [record for record in newest_first(ctx.records)
            if set(record["services"]) == set(ctx.services) and images_of(record, ctx.services) == ctx.ids and record.get("git") == ctx.git.commit]
    moment = now_utc()
    changes = []
    if same:
        before = same[0]
        record = copy.deepcopy(before)
        if params["verified"] and not record["verified"]:
            record["verified"] = True
            changes.append("verified")
        if migrations is not None:
            union = sorted(set(record.get("migrations") or []) | set(migrations))
            if union != record.get("migrations"):
                changes.append("migrations %s" % ", ".join(sorted(set(union) - set(record.get("migrations") or []))))
                record["migrations"] = union
        if params.get("label") is not None and params["label"] != record.get("label"):
            record["label"] = params["label"]
            changes.append("label")
    else:
        before = None
        record = ctx.new_record(moment, params.get("label"), params["verified"], migrations)
        changes.append("new record")
    to_tag = ctx.untagged(record) if before is not None else {
        service: (record["tags"][service], record["services"][service]["id"]) for service in sorted(record["tags"])}
    write = bool(changes)
    # After the record: the current release is this one; never pruned either: the newest verified and what
    # `previous` would resolve to.
    records_after = dict(ctx.records)
    records_after[record["id"]] = record
    verified = [item for item in newest_first(records_after) if item["verified"]]
    target = resolve_previous(records_after, ctx.ids, record, ctx.services)
    keep_ids = {record["id"]} | ({verified[0]["id"]} if verified else set()) | ({target["id"]} if target else set())
    prune = prune_plan(records_after, params["keep"], keep_ids)
    changed = write or bool(to_tag) or bool(prune)
    warnings = []
    if check_mode:
        done = dict(tagged=[tag for tag, _id in to_tag.values()], pruned=list(prune),
                    untagged=[tag for rid in prune for tag in sorted(records_after[rid]["tags"].values())])
        view = {rid: item for rid, item in records_after.items() if rid not in prune}
    else:
        done = apply_record(ctx, record if write else None, to_tag, prune, warnings) if changed else dict(tagged=[], untagged=[], pruned=[])
        view = ctx.records
    for message in warnings:
        ctx.warn(message)
    ctx.current = record
    target = resolve_previous(view, ctx.ids, record, ctx.services)
    result = ctx.result(changed=changed, release=summary(record, record["id"]), migrations=migrations, tagged=done["tagged"],
                        untagged=done["untagged"], pruned=done["pruned"], target=target["id"] if target else None,
                        unknown_migrations=unknown_migrations(target, migrations))
    result["releases"] = [summary(item, record["id"]) for item in newest_first(view)]
    if diff:
        header = os.path.join(params["dir"], record["id"] + ".json")
        result["diff"] = dict(before_header=header, after_header=header,
                              before=_record_text(before), after=_record_text(record))
    verb = "would " if check_mode else ""
    if before is None:
        what = "%srecord release %s (%s%s)" % (
            verb, record["id"], _ids_text(images_of(record, ctx.services), ctx.services), ", verified" if record["verified"] else "")
    elif changes:
        what = "%supdate release %s: %s" % (verb, record["id"], ", ".join(changes))
    else:
        what = "release %s is recorded already (%s)" % (record["id"], "verified" if record["verified"] else "not verified")
    extra = []
    if to_tag and before is not None:
        extra.append("%stag %s again" % (verb, ", ".join(tag for tag, _id in to_tag.values())))
    if prune:
        extra.append("%sremove release(s) %s beyond keep=%d" % (verb, ", ".join(prune), params["keep"]))
    result["msg"] = "; ".join([what] + extra)
    return result


def _record_text(record):
    return "" if record is None else json.dumps(record, indent=2, sort_keys=True) + "\n"


def apply_record(ctx, record, to_tag, prune, warnings):
    """Write the record (when given), tag its images, then prune; what was done is returned, or in ApplyError."""
    done = dict(tagged=[], untagged=[], pruned=[])
    steps = []
    try:
        for service in sorted(to_tag):
            tag, image_id = to_tag[service]
            ctx.docker.tag(image_id, tag)
            done["tagged"].append(tag)
            steps.append("tagged %s" % tag)
        if record is not None:
            ctx.store.write(record)
            steps.append("wrote release %s" % record["id"])
        for release_id in prune:
            old = ctx.records[release_id]
            left = []
            for service, tag in sorted(old["tags"].items()):
                found = ctx.docker.image_id(tag)
                if found is None:
                    continue
                if found != old["services"][service]["id"]:
                    warnings.append("tag %s of release %s now names another image: left as it is" % (tag, release_id))
                    continue
                error = ctx.docker.untag(tag)
                if error:
                    left.append("%s (%s)" % (tag, error))
                else:
                    done["untagged"].append(tag)
                    steps.append("untagged %s" % tag)
            if left:
                warnings.append("release %s is kept beyond keep: docker would not remove its tag %s" % (release_id, "; ".join(left)))
                continue
            ctx.store.remove(release_id)
            done["pruned"].append(release_id)
            steps.append("removed release %s" % release_id)
    except (OSError, ReleaseError) as exc:
        raise ApplyError("cannot record the release: %s%s" % (exc, "; already done: " + ", ".join(steps) if steps else "; nothing was changed"),
                         steps) from None
    return done


def deployed(ctx, check_mode, diff):
    params = ctx.params
    force = params["force"]
    release = params["release"]
    target = _resolve(ctx, release)
    base = dict(unknown_migrations=None)

    def refuse(message, **more):
        result = ctx.result(**dict(base, **more))
        result["target"] = target["id"] if target else None
        raise Refused("%s; nothing was changed" % message, result)

    if target is None:
        if release == PREVIOUS:
            refuse("there is no verified release to roll back to in %s (one whose images differ from those deployed); name one with "
                   "release: <id>" % params["dir"])
        refuse("there is no release %s in %s" % (release, params["dir"]))
    lacking = [service for service in ctx.services if service not in target["services"]]
    if lacking:
        refuse("release %s records no image for service %s" % (target["id"], ", ".join(lacking)))
    gone = [service for service in ctx.services if ctx.docker.image_id(target["services"][service]["id"]) is None]
    if gone:
        refuse("the image of release %s for service %s is gone from docker (%s): it cannot be deployed; rebuild or pull %s" % (
            target["id"], ", ".join(gone), ", ".join(target["services"][service]["id"] for service in gone),
            ", ".join(target["services"][service]["image"] for service in gone)))
    try:
        migrations = ctx.migrations(required=True)
    except ReleaseError as exc:
        if not force:
            refuse("%s: the database's schema cannot be checked against release %s (force: true deploys anyway)" % (exc, target["id"]))
        ctx.warn("%s; deployed without the schema check (force)" % exc)
        migrations = None
    unknown = unknown_migrations(target, migrations)
    base["unknown_migrations"] = unknown
    if migrations is not None and target.get("migrations") is None and not force:
        refuse("release %s recorded no migrations: whether it knows the database's schema cannot be checked (force: true deploys "
               "anyway)" % target["id"])
    if unknown and not force:
        refuse("the database %s has migrations release %s does not know: %s; roll the schema back first, or force: true deploys it "
               "anyway" % (params["db"], target["id"], ", ".join(unknown)))
    checkout = None
    if target.get("git") and target["git"] != ctx.git.commit:
        if not ctx.git.is_repo:
            if not force:
                refuse("release %s was deployed from git commit %s, but %s is no git work tree now (force: true deploys its images "
                       "only)" % (target["id"], target["git"], params["project_dir"]))
            ctx.warn("%s is no git work tree: commit %s of release %s not checked out (force)" % (params["project_dir"], target["git"], target["id"]))
        elif not ctx.git.has_commit(target["git"]):
            refuse("git commit %s of release %s is not in %s (fetch it first)" % (target["git"], target["id"], params["project_dir"]))
        elif ctx.git.dirty and not force:
            refuse("%s has local modifications of tracked files (%s) and release %s is commit %s: commit or stash them, or force: "
                   "true (git may still refuse to check out over them)"
                   % (params["project_dir"], ", ".join(ctx.git.dirty[:10]), target["id"], target["git"][:12]))
        else:
            checkout = target["git"]
    if checkout:
        refs_after = {service: target["services"][service]["image"] for service in ctx.services}
    else:
        refs_after = dict(ctx.refs)
    pinned = [service for service in ctx.services if "@" in refs_after[service]]
    if pinned:
        refuse("the image of service %s is pinned by digest (%s): retagging cannot roll it back; change the compose file instead" % (
            ", ".join(pinned), ", ".join(refs_after[service] for service in pinned)))
    wanted = {service: target["services"][service]["id"] for service in ctx.services}
    to_tag = {service: refs_after[service] for service in ctx.services
              if (ctx.ids[service] if refs_after[service] == ctx.refs[service] else ctx.docker.image_id(refs_after[service])) != wanted[service]}
    changed = bool(to_tag or checkout)
    way_forward = None
    keep_tags = {}
    if changed and ctx.current is None and all(ctx.ids.values()):
        way_forward = ctx.new_record(now_utc(), "unrecorded, before the rollback%s" % (
            " of " + params["incident_id"] if params.get("incident_id") else ""), False, migrations)
        keep_tags = {service: (way_forward["tags"][service], ctx.ids[service]) for service in ctx.services}
    elif changed and ctx.current is not None:
        keep_tags = ctx.untagged(ctx.current)  # the release replaced keeps its images (its tags put back if removed)
    source = ctx.current or way_forward
    source_id = source["id"] if source else None
    result = ctx.result(changed=changed, target=target["id"], unknown_migrations=unknown, migrations=migrations,
                        restart_needed=changed, tagged=[], checkout=checkout, recorded=None)
    result["from"] = dict(id=source_id, services=copy.deepcopy(result["services"]), git=ctx.git.commit)
    result["to"] = summary(target, target["id"])
    if diff:
        result["diff"] = dict(before_header="deployed images", after_header="deployed images",
                              before=dict(git=ctx.git.commit, images={service: ctx.ids[service] for service in ctx.services}),
                              after=dict(git=checkout or ctx.git.commit, images=wanted))
    if not changed:
        result["msg"] = "release %s is deployed already (%s)" % (target["id"], _ids_text(wanted, ctx.services))
        return result
    if check_mode:
        result["tagged"] = ["%s -> %s" % (tag, image_id) for tag, image_id in keep_tags.values()]
        result["tagged"] += ["%s -> %s" % (ref, wanted[service]) for service, ref in sorted(to_tag.items())]
        result["recorded"] = way_forward["id"] if way_forward else None
    else:
        result["tagged"] = apply_deploy(ctx, target, dict(to_tag=to_tag, checkout=checkout, way_forward=way_forward, keep_tags=keep_tags,
                                                          wanted=wanted, source=source_id))
        result["recorded"] = way_forward["id"] if way_forward else None
        ctx.reread(refs=bool(checkout))
        fresh = ctx.result()
        result.update(releases=fresh["releases"], current=fresh["current"], services=fresh["services"], git=fresh["git"])
        result["to"] = summary(ctx.records[target["id"]], fresh["current"])
    result["msg"] = "%s release %s (%s)%s, was %s%s%s; run docker compose up -d and verify" % (
        "would deploy" if check_mode else "deployed", target["id"], _ids_text(wanted, ctx.services),
        "; git checkout %s" % checkout[:12] if checkout else "", source_id or "unrecorded",
        "; the images deployed before are kept as release %s (the way forward)" % way_forward["id"] if way_forward else "",
        "; forced: the database has migrations it does not know: %s" % ", ".join(unknown) if unknown else "")
    return result


def apply_deploy(ctx, target, plan):
    """Record the images in use when unrecorded (or tag them again), check out the commit, tag the target's images
    as the references, note the deployment in the target's record. Returns `ref -> id` of each reference tagged."""
    params = ctx.params
    wanted, to_tag = plan["wanted"], plan["to_tag"]
    steps = []
    tagged = []
    try:
        for tag, image_id in plan["keep_tags"].values():
            ctx.docker.tag(image_id, tag)
            steps.append("tagged %s" % tag)
        if plan["way_forward"]:
            ctx.store.write(plan["way_forward"])
            steps.append("recorded the images deployed before as release %s" % plan["way_forward"]["id"])
        if plan["checkout"]:
            ctx.git.checkout_detached(plan["checkout"])
            steps.append("checked out %s" % plan["checkout"])
            refs = compose_refs(params)  # the compose file of that commit
            to_tag = {service: refs[service] for service in ctx.services if ctx.docker.image_id(refs[service]) != wanted[service]}
        for service in sorted(to_tag):
            ctx.docker.tag(wanted[service], to_tag[service])
            tagged.append("%s -> %s" % (to_tag[service], wanted[service]))
            steps.append("tagged %s as %s" % (wanted[service], to_tag[service]))
        record = copy.deepcopy(target)
        record.setdefault("deployed_at", []).append({"time": iso(now_utc()), "incident_id": params.get("incident_id"),
                                                     "release": params["release"], "from": plan["source"]})
        ctx.store.write(record)
    except (OSError, ReleaseError) as exc:
        raise ApplyError("cannot deploy release %s: %s%s" % (target["id"], exc, "; already done: " + ", ".join(steps) if steps else "; nothing was changed"),
                         steps) from None
    return tagged
