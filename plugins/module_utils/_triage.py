# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is wrong with the service, read-only, in well under a minute (triage_info). PRIVATE to the collection: no
compatibility promise.

Two halves:

- collectors (`collect_<check>`), one per check, read the host and return observations (plain dicts). Every command
  is an argv list run with a timeout taken from one time budget (BUDGET seconds for the whole run); a tool that is
  not installed, or a unit that does not exist, makes that check `skipped` with the reason; a check that cannot run
  is that check's `error`, never the module's failure. The `parse_*` functions read what docker, systemctl, ss and
  nginx print.
- a pure judge, `findings(observations, thresholds)`, turns the observations into ranked findings, each naming the
  playbook to run next and the variables to pass.

Nothing returned is a secret: log lines are returned only as signatures (numbers, addresses, ids, quoted strings,
anything that looks like a token, and the value after a secret-looking key replaced by placeholders), statements only
as _pg_info shows them (hidden when they may hold a secret).
"""
from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _certificate, _compose_release, _pg, _pg_info, _pg_sessions, _run_lock, _service

CHECKS = ("units", "containers", "health", "required_files", "ports", "logs", "memory", "disk", "certificates", "database",
          "backups", "audit_integrity", "requests", "connections", "release")
SEVERITIES = ("critical", "high", "warning")
# Ranking within a severity: a root cause (0) before a crash it causes (1) before the red /health it shows as (2).
CAUSE, CRASH, SYMPTOM = 0, 1, 2

BUDGET = 45.0  # seconds every command of a run may take together
COMMAND_TIMEOUT = 10.0  # seconds one command may take
CONNECT_TIMEOUT = 5  # seconds psql may take to connect
STATEMENT_TIMEOUT = "10s"
MAX_LOG_BYTES = 64 << 20
TOP_SIGNATURES = 10
TOP_CLIENTS = 5
WEB_PORTS = (80, 443)
# The kernel's connection tracking table of this network namespace (CONFIG_NF_CONNTRACK_PROCFS); `conntrack -L`
# prints the same lines without the first two fields.
CONNTRACK_PROC = "/proc/net/nf_conntrack"
MAX_CONNTRACK_BYTES = 256 << 20
# Programs that hold the web ports for the compose stack (a published port); any other is a foreign holder.
DOCKER_PROXIES = ("docker-proxy", "dockerd", "rootlesskit", "rootlessport", "slirp4netns")
# MemAvailable below this share of MemTotal is a node in trouble.
MEMORY_AVAILABLE_PERCENT = 5
UNIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9:_.@\\-]{0,255}\Z")
MAX_THRESHOLD = 10 ** 9
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")

PLAYBOOKS = {
    "service": "service_not_starting.yml",
    "node": "node_down.yml",
    "storage": "storage_full.yml",
    "flood": "connection_flood.yml",
    "db": "db_degraded.yml",
    "corruption": "db_corruption.yml",
    "certificate": "renew_certificate.yml",
    "backup": "backup_failed.yml",
    "audit": "audit_integrity.yml",
    "release": "rollback.yml",
}


class TriageError(Exception):
    """A refused option: the message says which and why; nothing was read."""


class Skipped(Exception):
    """The check does not apply on this host (a tool or unit absent, nothing configured): the reason."""


class CheckFailed(Exception):
    """The check could not run: the reason, one line."""


# ------------------------------------------------------------------------------------------------- options
def _whole(params, name, minimum, maximum=MAX_THRESHOLD):
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise TriageError("%s is %r: a whole number from %d to %d" % (name, value, minimum, maximum))
    return value


def _absolute(name, paths):
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise TriageError("%s: %r is not an absolute path" % (name, path))
    return list(paths)


def _plain(name, value):
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}\Z", value):
        raise TriageError("%s %r is not a plain name (letters, digits, and . _ @ -, starting with a letter or digit)" % (name, value))
    return value


def _unit(name, value):
    if not isinstance(value, str) or not UNIT_NAME.match(value):
        raise TriageError("%s: %r is not a systemd unit name" % (name, value))
    return value


def check_params(params):
    """The thresholds the judge compares with, once every option is valid; TriageError otherwise (nothing read)."""
    _pg.check_name(params["db"])
    for name in ("app_service", "web_service", "compose_service"):
        _plain(name, params[name])
    for unit in params["units"]:
        _unit("units", unit)
    _unit("audit_integrity_unit", params["audit_integrity_unit"])
    if params["project_dir"] and not params["project_dir"].startswith("/"):
        raise TriageError("project_dir %r is not an absolute path (an empty string checks no container)" % params["project_dir"])
    url = params["health_url"]
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/?#]+", url) or any(ord(char) < 33 for char in url):
        raise TriageError("health_url %r is not an http:// or https:// URL" % (url,))
    _absolute("required_files", params["required_files"])
    _absolute("disk_paths", params["disk_paths"])
    _absolute("certificates", params["certificates"])
    _absolute("backup_dir", [params["backup_dir"]])
    _absolute("releases_dir", [params["releases_dir"]])
    pattern = params["backup_pattern"]
    if not pattern or "/" in pattern or pattern in (".", ".."):
        raise TriageError("backup_pattern %r must be a file name pattern (no /), such as db-*.manifest.json" % (pattern,))
    share = params["flood_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:  # NaN fails both
        raise TriageError("flood_share is %r: a share above 0 and at most 1 (0.5 is half of all requests)" % (share,))
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(incident_id):
        raise TriageError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))
    unknown = sorted(set(params["checks"]) - set(CHECKS))
    if unknown:
        raise TriageError("checks: %s is no check (the checks: %s)" % (", ".join(map(repr, unknown)), ", ".join(CHECKS)))
    return dict(
        disk_percent=_whole(params, "disk_percent", 1, 100), inode_percent=_whole(params, "inode_percent", 1, 100),
        cert_days=_whole(params, "cert_days", 0, 3650), backup_max_age_hours=_whole(params, "backup_max_age_hours", 1),
        since_minutes=_whole(params, "since_minutes", 1, 7 * 24 * 60), long_query_seconds=_whole(params, "long_query_seconds", 1),
        idle_in_transaction_seconds=_whole(params, "idle_in_transaction_seconds", 1),
        connections_percent=_whole(params, "connections_percent", 1, 100), flood_requests=_whole(params, "flood_requests", 1),
        flood_connections=_whole(params, "flood_connections", 1),
        flood_share=float(share), app_service=params["app_service"], web_service=params["web_service"],
        db_service=params["compose_service"], health_url=url)


# ------------------------------------------------------------------------------------------------ commands
class Host:
    """How the collectors reach the host: commands with timeouts out of one budget, and what it already learned
    (a docker that did not answer is not asked again; the web container's logs are read once)."""

    def __init__(self, budget=BUDGET, command_timeout=COMMAND_TIMEOUT):
        self.deadline = time.monotonic() + budget
        self.command_timeout = command_timeout
        self.docker_broken = None
        self.logs = {}

    def run(self, argv, timeout=None):
        """stdout of a command that exited 0; Skipped when its program is not installed, CheckFailed otherwise."""
        program = shutil.which(argv[0])
        if program is None:
            raise Skipped("%s is not installed" % argv[0])
        if argv[0] == "docker" and self.docker_broken:
            raise CheckFailed(self.docker_broken)
        left = self.deadline - time.monotonic()
        if left <= 0.5:
            raise CheckFailed("the run's time budget (%d s) is spent" % BUDGET)
        limit = min(timeout or self.command_timeout, left)
        try:
            res = subprocess.run([program] + argv[1:], capture_output=True, timeout=limit, check=False,
                                 stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", PAGER="cat"))
        except subprocess.TimeoutExpired:
            reason = "%s did not answer within %d s" % (" ".join(argv[:3]), limit)
            if argv[0] == "docker":
                self.docker_broken = reason
            raise CheckFailed(reason) from None
        except OSError as exc:
            raise CheckFailed("cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None
        out = res.stdout[:MAX_LOG_BYTES].decode("utf-8", "replace")
        if res.returncode != 0:
            raise CheckFailed("%s exited %d: %s" % (" ".join(argv[:3]), res.returncode,
                                                    _pg.first_line(res.stderr.decode("utf-8", "replace"))[:200]))
        return out, res.stderr[:MAX_LOG_BYTES].decode("utf-8", "replace")


def compose(project_dir, *args):
    return ["docker", "compose", "--project-directory", project_dir] + list(args)


def _compose_project(params):
    project_dir = params["project_dir"]
    if not project_dir:
        raise Skipped("project_dir is empty: no container is checked")
    if not os.path.isdir(project_dir):
        raise Skipped("project_dir %s is not a directory: no compose project to check" % project_dir)
    if not any(os.path.isfile(os.path.join(project_dir, name)) for name in COMPOSE_FILES):
        raise Skipped("project_dir %s holds no compose file (%s): no compose project to check" % (project_dir, ", ".join(COMPOSE_FILES)))
    return project_dir


def _systemd():
    if not os.path.isdir("/run/systemd/system"):
        raise Skipped("systemd is not running on this host")


# ------------------------------------------------------------------------------------------------- parsing
def parse_systemctl_show(text, properties=None):
    """The units of `systemctl show -p A,B ...`: key=value blocks separated by a blank line; or, with `properties`
    (the order they were asked in), `--value` output: one value a line, units separated by a blank line."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip("\n"))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    units = []
    for block in blocks:
        if properties is not None:
            units.append(dict(zip(properties, block + [""] * (len(properties) - len(block)))))
        else:
            units.append(dict(line.split("=", 1) for line in block if "=" in line))
    return units


def _json_objects(text):
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):  # compose before v2.21: one JSON array
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    return [json.loads(line) for line in text.splitlines() if line.strip()]  # v2.21 and later: one object a line


def parse_compose_ps(text):
    """The containers of `docker compose ps -a --format json` (a JSON array before compose v2.21, one object a line
    since): [{id, name, service, state, health, exit_code}]."""
    containers = []
    for item in _json_objects(text):
        if not isinstance(item, dict):
            raise ValueError("docker compose ps printed something that is not a container")
        containers.append(dict(id=item.get("ID") or "", name=item.get("Name") or "", service=item.get("Service") or "",
                               state=(item.get("State") or "").lower(), health=(item.get("Health") or "").lower(),
                               exit_code=item.get("ExitCode")))
    return containers


def parse_docker_inspect(text):
    """{container name: {state, restarting, exit_code, oom_killed, health, restarts, service, image (the image id)}} of
    `docker inspect`."""
    found = {}
    for item in _json_objects(text):
        state = item.get("State") or {}
        labels = (item.get("Config") or {}).get("Labels") or {}
        found[(item.get("Name") or "").lstrip("/")] = dict(
            state=(state.get("Status") or "").lower(), restarting=bool(state.get("Restarting")), exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")), health=((state.get("Health") or {}).get("Status") or "").lower(),
            restarts=item.get("RestartCount") or 0, service=labels.get("com.docker.compose.service") or "", image=item.get("Image") or "")
    return found


SS_PROCESS = re.compile(r'\("([^"]*)",pid=(\d+)')


def parse_ss(text):
    """The listening TCP sockets of `ss -ltnpH`: [{address, port, processes: [{program, pid}]}]."""
    listeners = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != "LISTEN":
            continue
        address, _sep, port = fields[3].rpartition(":")
        if not port.isdigit():
            continue
        processes = [dict(program=program, pid=int(pid)) for program, pid in SS_PROCESS.findall(line)]
        listeners.append(dict(address=address, port=int(port), processes=processes))
    return listeners


def parse_meminfo(text):
    """{name: kB} of /proc/meminfo."""
    found = {}
    for line in text.splitlines():
        name, _sep, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            found[name.strip()] = int(parts[0])
    return found


OOM_LINE = re.compile(r"out of memory|oom-kill|oom_kill_process", re.IGNORECASE)
OOM_VICTIM = re.compile(r"Killed process \d+ \(([^)]{1,64})\)")


def parse_oom_kills(text):
    """(number of kills, names of the processes killed) of kernel log lines."""
    kills, victims = 0, []
    for line in text.splitlines():
        victim = OOM_VICTIM.search(line)
        if victim:
            kills += 1
            if victim.group(1) not in victims:
                victims.append(victim.group(1))
    # Each kill prints several lines (the invoker, oom-kill:constraint=..., Out of memory: Killed process ...); the
    # Killed process line counts it. A kernel that words it otherwise still counts as one kill.
    if not kills and any(OOM_LINE.search(line) for line in text.splitlines()):
        kills = 1
    return kills, victims


LOG_PREFIX = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\s+\|\s?")
DOCKER_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})\s?")


def parse_compose_logs(text):
    """The messages of `docker compose logs --no-color --timestamps`: each line without its `service-1  | ` prefix
    and the timestamp docker adds."""
    messages = []
    for line in text.splitlines():
        line = LOG_PREFIX.sub("", line, count=1)
        line = DOCKER_TIMESTAMP.sub("", line, count=1)
        if line.strip():
            messages.append(line)
    return messages


ACCESS_LINE = re.compile(r'^(?P<client>[0-9A-Fa-f.:]+) \S+ \S+ \[[^\]]+\] "(?:[^"\\]|\\.)*" (?P<status>\d{3}) ')


def parse_access_line(line):
    """(client address, HTTP status) of an nginx combined access log line, or None."""
    match = ACCESS_LINE.match(line)
    return (match.group("client"), int(match.group("status"))) if match else None


# ------------------------------------------------------------------------------------------------ signatures
SECRET_VALUE = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|authorization|"
                          r"auth|cookie|session[_-]?id|signature|credentials?|pepper)(\s*[=:]\s*)(?!(?:bearer|basic)\s)"
                          r"(\"[^\"]*\"|'[^']*'|[^\s,;&]+)")
BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}")
URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@")
QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
UUID = re.compile(r"\b[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\b")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b")
IPV6 = re.compile(r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:)*[0-9A-Fa-f]{0,4}::"
                  r"(?:[0-9A-Fa-f]{1,4}:)*[0-9A-Fa-f]{0,4})(?![\w:])")
RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
WORD_PIECE = re.compile(r"[a-z]+|[A-Z]+|(?:[A-Z]?[a-z]+)+")
HEX = re.compile(r"\b0x[0-9A-Fa-f]+\b|\b(?=[0-9A-Fa-f]*\d)(?=[0-9A-Fa-f]*[A-Fa-f])[0-9A-Fa-f]{6,}\b")
NUMBER = re.compile(r"\d+")
LEADING_TIME = re.compile(r"^\[?\d{4}[-/]\d{2}[-/]\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|\s?[+-]\d{2}:?\d{2}|\s[A-Z]{2,5})?\]?\s*")
MAX_SIGNATURE = 160


def _word_like(run):
    """A long run of letters that reads as a name (snake_case, kebab-case, CamelCase, UPPER_CASE), not a token."""
    return not re.search(r"[0-9+/=]", run) and all(WORD_PIECE.fullmatch(piece) for piece in re.split(r"[-_]", run) if piece)


def signature(message):
    """The message with everything that varies, or may be secret, replaced by a placeholder: the value after a
    secret-looking key, credentials in a URL, quoted strings, e-mail addresses, UUIDs, IP addresses, runs of 16 or
    more token-like characters, hex and numbers. Lines that differ only there share a signature."""
    text = LEADING_TIME.sub("", message.strip(), count=1)
    text = URL_CREDENTIALS.sub(r"\1<credentials>@", text)
    text = SECRET_VALUE.sub(r"\1\2<secret>", text)
    text = BEARER.sub(r"\1 <secret>", text)
    text = QUOTED.sub("<str>", text)
    text = EMAIL.sub("<email>", text)
    text = UUID.sub("<uuid>", text)
    text = IPV4.sub("<ip>", text)
    text = IPV6.sub("<ip>", text)
    text = RUN.sub(lambda match: match.group(0) if _word_like(match.group(0)) else "<token>", text)
    text = HEX.sub("<hex>", text)
    text = NUMBER.sub("<n>", text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_SIGNATURE else text[:MAX_SIGNATURE - 3] + "..."


ERROR_LINE = re.compile(r"(?i)\b(error|fatal|panic|critical|exception|traceback|killed|out of memory|no space left|refused|"
                        r"emerg)\b|\[(error|crit|alert|emerg)\]")
# Known causes, by what a line says (read before it becomes a signature); the database's own corruption words only
# count in the database container's log.
CLASSES = (
    ("storage", re.compile(r"no space left on device", re.IGNORECASE), None),
    ("connections", re.compile(r"too many clients already|remaining connection slots", re.IGNORECASE), None),
    ("corruption", re.compile(r"invalid page in block|could not read block|checksum verification failed|could not open file",
                              re.IGNORECASE), "db"),
    ("memory", re.compile(r"out of memory|(?<![\w-])killed\b", re.IGNORECASE), None),
    ("upstream", re.compile(r"connect\(\) failed \(111|econnrefused", re.IGNORECASE), None),
)


def classify(message, role):
    """The known cause a log line names (storage, connections, corruption, memory, upstream), or None. `role` is
    app, web or db."""
    for name, pattern, only in CLASSES:
        if (only is None or only == role) and pattern.search(message):
            return name
    return None


def error_lines(messages):
    """The messages that report an error (an nginx access log line never does: its status is the requests check's)."""
    return [message for message in messages if ERROR_LINE.search(message) and not parse_access_line(message)]


def group_errors(by_role):
    """{roles: {role: {lines, errors}}, signatures: the TOP_SIGNATURES most frequent [{service, signature, count,
    class}], classes: {class: count} over every error line}; `by_role` maps (role, service) to its messages."""
    counts, classes, roles = {}, {}, {}
    for (role, service), messages in by_role.items():
        errors = error_lines(messages)
        roles[service] = dict(role=role, lines=len(messages), errors=len(errors))
        for message in errors:
            kind = classify(message, role)
            if kind:
                classes[kind] = classes.get(kind, 0) + 1
            key = (service, signature(message))
            entry = counts.setdefault(key, dict(service=service, signature=key[1], count=0, **{"class": kind}))
            entry["count"] += 1
            entry["class"] = entry["class"] or kind
    top = sorted(counts.values(), key=lambda item: (-item["count"], item["service"], item["signature"]))[:TOP_SIGNATURES]
    return dict(services=roles, signatures=top, classes=classes)


def count_requests(messages):
    """{total, errors_5xx, top_clients: [{address, count}] (the TOP_CLIENTS busiest)} of nginx access log lines."""
    total = errors = 0
    clients = {}
    for message in messages:
        parsed = parse_access_line(message)
        if not parsed:
            continue
        total += 1
        errors += parsed[1] >= 500
        clients[parsed[0]] = clients.get(parsed[0], 0) + 1
    top = sorted(clients.items(), key=lambda item: (-item[1], item[0]))[:TOP_CLIENTS]
    return dict(total=total, errors_5xx=errors, top_clients=[dict(address=address, count=count) for address, count in top])


def count_connections(text, ports=WEB_PORTS):
    """{total, top_sources: [{address, count}] (the TOP_CLIENTS with most), states: {state: count}} of the tracked
    TCP connections to `ports`, from conntrack lines (/proc/net/nf_conntrack or `conntrack -L`). The first
    src/dport of a line are the original direction's: the client's address and the port it asked for, before any
    DNAT to a container."""
    total = 0
    sources, states = {}, {}
    for line in text.splitlines():
        fields = line.split()
        if "tcp" not in fields[:3]:
            continue
        original = {}
        for field in fields:
            key, sep, value = field.partition("=")
            if sep and key not in original:
                original[key] = value
        if not original.get("dport", "").isdigit() or int(original["dport"]) not in ports or "src" not in original:
            continue
        state = next((field for field in fields[3:6] if field.isupper() and field.replace("_", "").isalpha()), "")
        total += 1
        sources[original["src"]] = sources.get(original["src"], 0) + 1
        states[state] = states.get(state, 0) + 1
    top = sorted(sources.items(), key=lambda item: (-item[1], item[0]))[:TOP_CLIENTS]
    return dict(total=total, top_sources=[dict(address=address, count=count) for address, count in top], states=states)


# ------------------------------------------------------------------------------------------------ collectors
def collect_units(host, params, _observations):
    _systemd()
    properties = ("Id", "LoadState", "ActiveState", "SubState", "Result", "NRestarts")
    units = []
    for unit in params["units"]:
        out, _err = host.run(["systemctl", "show", "-p", ",".join(properties), "--", unit])
        found = parse_systemctl_show(out)
        entry = dict(found[0] if found else {}, unit=unit)
        units.append(dict(unit=unit, load_state=entry.get("LoadState", ""), active_state=entry.get("ActiveState", ""),
                          sub_state=entry.get("SubState", ""), result=entry.get("Result", ""),
                          restarts=int(entry["NRestarts"]) if entry.get("NRestarts", "").isdigit() else 0))
    return dict(units=units)


def collect_containers(host, params, _observations):
    project_dir = _compose_project(params)
    out, _err = host.run(compose(project_dir, "ps", "-a", "--format", "json"))
    containers = parse_compose_ps(out)
    if containers:
        ids = [item["id"] or item["name"] for item in containers]
        details, _err = host.run(["docker", "inspect", "--"] + ids)
        inspected = parse_docker_inspect(details)
        for item in containers:
            more = inspected.get(item["name"]) or {}
            item.update(restarts=more.get("restarts", 0), oom_killed=more.get("oom_killed", False),
                        restarting=more.get("restarting", item["state"] == "restarting"))
            if more.get("exit_code") is not None:
                item["exit_code"] = more["exit_code"]
            item["health"] = item["health"] or more.get("health", "")
            item["image"] = more.get("image", "")
            item.pop("id")
    return dict(containers=containers, expected=[params["app_service"], params["web_service"], params["compose_service"]])


def collect_health(_host, params, _observations):
    status, _document, note = _service.health(params["health_url"])
    return dict(url=params["health_url"], http_status=status, error=None if status is not None else (note or "no answer"))


def collect_required_files(_host, params, _observations):
    files = []
    for path in params["required_files"]:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            state = "missing"
        except OSError as exc:
            state = "unreadable: %s" % (exc.strerror or exc)
        else:
            state = "not a regular file" if not stat.S_ISREG(info.st_mode) else "empty" if info.st_size == 0 else "ok"
        files.append(dict(path=path, state=state))
    return dict(files=files)


def _web_running(observations):
    containers = observations.get("containers") or {}
    if containers.get("status") != "ok":
        return None
    web = [item for item in containers["containers"] if item["service"] == containers["expected"][1]]
    return any(item["state"] == "running" for item in web)


def collect_ports(host, _params, observations):
    health = observations.get("health") or {}
    if health.get("http_status") == 200 and _web_running(observations) is not False:
        raise Skipped("health answered 200 and the web container runs: who holds the ports does not matter")
    out, _err = host.run(["ss", "-ltnpH"])
    return dict(listeners=[item for item in parse_ss(out) if item["port"] in WEB_PORTS])


def _logs(host, params, service, since_minutes):
    """The messages of one compose service's log in the window, read once per run."""
    if service not in host.logs:
        project_dir = _compose_project(params)
        out, err = host.run(compose(project_dir, "logs", "--since", "%dm" % since_minutes, "--no-color", "--timestamps", service),
                            timeout=COMMAND_TIMEOUT)
        host.logs[service] = parse_compose_logs(out) + parse_compose_logs(err)
    return host.logs[service]


def collect_logs(host, params, _observations):
    since = params["since_minutes"]
    by_role = {}
    for role, service in (("app", params["app_service"]), ("web", params["web_service"]), ("db", params["compose_service"])):
        by_role[(role, service)] = _logs(host, params, service, since)
    return dict(group_errors(by_role), since_minutes=since)


def collect_memory(host, params, _observations):
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as handle:
            meminfo = parse_meminfo(handle.read())
    except OSError as exc:
        raise CheckFailed("cannot read /proc/meminfo: %s" % (exc.strerror or exc)) from None
    total, available = meminfo.get("MemTotal"), meminfo.get("MemAvailable")
    found = dict(mem_total_kb=total, mem_available_kb=available,
                 available_percent=round(100.0 * available / total, 1) if total and available is not None else None,
                 oom_kills=None, oom_processes=[], journal=None)
    try:
        out, _err = host.run(["journalctl", "-k", "--since", "-%dmin" % params["since_minutes"], "--no-pager", "-q", "-o", "cat"])
        found["oom_kills"], found["oom_processes"] = parse_oom_kills(out)
    except (Skipped, CheckFailed) as exc:
        found["journal"] = "kernel log not read: %s" % exc
    return found


def _mount_point(path, device):
    current = os.path.realpath(path)
    while current != "/":
        parent = os.path.dirname(current)
        if os.stat(parent).st_dev != device:
            return current
        current = parent
    return "/"


def collect_disk(_host, params, _observations):
    filesystems, missing, seen = [], [], set()
    for path in params["disk_paths"]:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            missing.append(path)
            continue
        if info.st_dev in seen:
            continue
        seen.add(info.st_dev)
        fs = os.statvfs(path)
        used = fs.f_blocks - fs.f_bfree
        usable = used + fs.f_bavail
        inodes_used = fs.f_files - fs.f_ffree
        filesystems.append(dict(
            path=path, mount=_mount_point(path, info.st_dev),
            percent=round(100.0 * used / usable, 1) if usable else 0.0,
            inode_percent=round(100.0 * inodes_used / fs.f_files, 1) if fs.f_files else None,
            free_bytes=fs.f_bavail * fs.f_frsize))
    return dict(filesystems=filesystems, missing=missing)


def _read_regular(path, limit):
    """The bytes of a regular file (symlinks followed: certbot's live/ are links), never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        with os.fdopen(fd, "rb") as handle:
            fd = None
            return handle.read(limit + 1)
    finally:
        if fd is not None:
            os.close(fd)


def collect_certificates(_host, params, _observations, now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    _certificate.require_cryptography()
    found = []
    for path in params["certificates"]:
        entry = dict(path=path, days_left=None, subject=None, not_after=None, problem=None)
        try:
            cert = _certificate.read(_read_regular(path, _certificate.MAX_PEM_CHARS))
        except FileNotFoundError:
            entry["problem"] = "missing"
        except OSError as exc:
            entry["problem"] = "unreadable: %s" % (exc.strerror or exc)
        except _certificate.CertificateError as exc:
            entry["problem"] = "unparseable: %s" % exc
        else:
            entry.update(days_left=_certificate.days_left(cert, now), subject=cert.subject_name,
                         not_after=cert.not_after.strftime(_certificate.TIME_FORMAT))
        found.append(entry)
    return dict(certificates=found)


CONNECTIONS_SQL = ("SELECT jsonb_build_object('max_connections', current_setting('max_connections')::int, "
                   "'reserved', current_setting('superuser_reserved_connections')::int, "
                   "'connections', (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'))")


def database_runtime(params):
    """_pg_info's read-only runtime, with a short connect timeout and statement timeout."""
    runtime = _pg_info.read_only_runtime(params)
    runtime.connect_timeout = CONNECT_TIMEOUT
    runtime.timeout = 2 * COMMAND_TIMEOUT
    runtime.pgoptions = _pg.session_options(_pg_info.READ_ONLY + (("statement_timeout", STATEMENT_TIMEOUT),
                                                                  ("lock_timeout", "2s")))
    return runtime


def collect_database(host, params, _observations, runtime=None):
    if params.get("compose_project_dir") and host.docker_broken:
        raise CheckFailed(host.docker_broken)
    runtime = runtime or database_runtime(params)
    db = params["db"]
    try:
        found = _pg_sessions.read(runtime, db, [], 80)
        connections = _pg_info.answer(runtime, db, CONNECTIONS_SQL)
    except _pg.PgError as exc:
        return dict(reachable=False, error=str(exc)[:300], db=db)
    sessions = [session for session in found["sessions"]
                if session["pid"] != found["own_pid"] and session["backend_type"] == "client backend"]
    return dict(reachable=True, error=None, db=db, connections=connections["connections"],
                max_connections=connections["max_connections"], reserved=connections["reserved"],
                sessions=[{name: session[name] for name in ("pid", "user", "state", "seconds", "query_seconds", "idle_seconds",
                                                            "query", "blocked_by", "blocks")} for session in sessions],
                chains=found["chains"])


def collect_backups(_host, params, _observations, now=None):
    now = now or time.time()
    directory, pattern = params["backup_dir"], params["backup_pattern"]
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return dict(directory=directory, exists=False, newest=None, age_hours=None, ignored=[])
    except OSError as exc:
        raise CheckFailed("cannot list %s: %s" % (directory, exc.strerror or exc)) from None
    newest, ignored = None, []
    for entry in entries:
        if not fnmatch.fnmatchcase(entry.name, pattern):
            continue
        # Only a regular file in the directory itself counts: a link (even to a real manifest) is not followed.
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            ignored.append(entry.name)
            continue
        mtime = entry.stat(follow_symlinks=False).st_mtime
        if newest is None or mtime > newest[1]:
            newest = (entry.name, mtime)
    return dict(directory=directory, exists=True, newest=newest[0] if newest else None,
                age_hours=round((now - newest[1]) / 3600.0, 1) if newest else None, ignored=sorted(ignored))


def collect_audit_integrity(host, params, _observations):
    _systemd()
    unit = params["audit_integrity_unit"]
    out, _err = host.run(["systemctl", "show", "-p", "LoadState,ActiveState,Result,ExecMainStatus", "--", unit])
    found = (parse_systemctl_show(out) or [{}])[0]
    if found.get("LoadState") in ("not-found", ""):
        raise Skipped("unit %s is not installed" % unit)
    status = found.get("ExecMainStatus", "")
    return dict(unit=unit, active_state=found.get("ActiveState", ""), result=found.get("Result", ""),
                exit_status=int(status) if status.isdigit() else None)


def collect_requests(host, params, _observations):
    messages = _logs(host, params, params["web_service"], params["since_minutes"])
    return dict(count_requests(messages), since_minutes=params["since_minutes"])


def collect_connections(host, _params, _observations):
    try:
        with open(CONNTRACK_PROC, "rb") as handle:
            text = handle.read(MAX_CONNTRACK_BYTES).decode("ascii", "replace")
    except FileNotFoundError:
        text, _err = host.run(["conntrack", "-L", "-p", "tcp"])
    except OSError as exc:
        raise CheckFailed("cannot read %s: %s" % (CONNTRACK_PROC, exc.strerror or exc)) from None
    return count_connections(text)


def _app_images(host, params, observations):
    """The image ids the app service's containers run: as the containers check learned them (docker inspect), or
    else `docker inspect --format {{.Image}}` of its containers."""
    service = params["app_service"]
    containers = observations.get("containers") or {}
    if containers.get("status") == "ok":
        app = [item for item in containers["containers"] if item["service"] == service]
        if not app or all(item.get("image") for item in app):
            return sorted({item["image"] for item in app})
    project_dir = _compose_project(params)
    out, _err = host.run(compose(project_dir, "ps", "-a", "-q", service))
    ids = out.split()
    if not ids:
        return []
    out, _err = host.run(["docker", "inspect", "--format", "{{.Image}}", "--"] + ids)
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def _release_ids(record, service):
    """The image ids of a release that count for the app: its service's, or (not recorded by that name) all of them."""
    services = record["services"]
    if service in services:
        return {services[service]["id"]}
    return {image["id"] for image in services.values()}


def collect_release(host, params, observations):
    directory = params["releases_dir"]
    try:
        loaded = _compose_release.read_records(directory)
    except _compose_release.ReleaseError as exc:
        raise CheckFailed(str(exc)) from None
    if loaded is None or loaded == ({}, []):
        raise Skipped("no release recorded in %s: deploys record one with compose_release" % directory)
    records, bad = loaded
    if bad:
        raise CheckFailed("release records in %s that cannot be read: %s" % (directory, "; ".join("%s: %s" % item for item in bad)))
    service = params["app_service"]
    running = _app_images(host, params, observations)
    if not running:
        raise Skipped("no container of compose service %s: the image it runs is not known" % service)
    odd = [value for value in running if not _compose_release.IMAGE_ID.match(value)]
    if odd:
        raise CheckFailed("docker gave no image id for the %s container (%r)" % (service, odd[0][:80]))
    ordered = _compose_release.newest_first(records)
    verified = [record for record in ordered if record["verified"]]
    holding = [record for record in ordered if set(running) <= _release_ids(record, service)]
    in_verified = [record for record in holding if record["verified"]]
    if in_verified:
        state, release = "verified", in_verified[0]["id"]
    elif holding:
        state, release = "unverified", holding[0]["id"]
    else:
        state, release = "unrecorded", None
    newest = verified[0] if verified else None
    return dict(directory=directory, app_service=service, running=running, state=state, release=release, releases=len(records),
                newest_verified=dict(id=newest["id"], label=newest.get("label"), recorded_at=newest["recorded_at"]) if newest else None)


COLLECTORS = {
    "units": collect_units, "containers": collect_containers, "health": collect_health,
    "required_files": collect_required_files, "ports": collect_ports, "logs": collect_logs, "memory": collect_memory,
    "disk": collect_disk, "certificates": collect_certificates, "database": collect_database, "backups": collect_backups,
    "audit_integrity": collect_audit_integrity, "requests": collect_requests, "connections": collect_connections,
    "release": collect_release,
}


def observe(params, host=None, collectors=None):
    """{check: observation} of the checks asked, in CHECKS order; each observation has `status` (ok, skipped or
    error: it ran, did not apply, could not run) and, when not ok, `reason`."""
    host = host or Host()
    collectors = collectors or COLLECTORS
    observations = {}
    for name in CHECKS:
        if name not in params["checks"]:
            continue
        try:
            observation = dict(collectors[name](host, params, observations), status="ok")
        except Skipped as exc:
            observation = dict(status="skipped", reason=str(exc))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # One check failing to run is that check's error, never the module's: the others still tell on-call a lot.
            observation = dict(status="error", reason=("%s" % exc or type(exc).__name__).splitlines()[0][:300])
        observations[name] = observation
    return observations


# ---------------------------------------------------------------------------------------------------- judge
def _finding(check, severity, tier, title, evidence, playbook=None, extra_vars=None):
    return dict(check=check, severity=severity, tier=tier, title=title, evidence=[str(item)[:200] for item in evidence][:10],
                playbook=PLAYBOOKS[playbook] if playbook else None, extra_vars=extra_vars or {})


def judge_units(obs, _thresholds):
    found = []
    for unit in obs["units"]:
        where = "%s: %s/%s, result %s, %d restarts" % (unit["unit"], unit["active_state"] or "?", unit["sub_state"] or "?",
                                                       unit["result"] or "?", unit["restarts"])
        if unit["load_state"] == "not-found":
            found.append(_finding("units", "critical", CRASH, "unit %s is not installed" % unit["unit"], [where], "service"))
        elif unit["active_state"] == "failed" or unit["sub_state"] == "auto-restart":
            found.append(_finding("units", "critical", CRASH, "unit %s has failed" % unit["unit"], [where], "service"))
        elif unit["active_state"] in ("inactive", "deactivating"):
            found.append(_finding("units", "high", CRASH, "unit %s is not running" % unit["unit"], [where], "service"))
        elif unit["restarts"]:
            found.append(_finding("units", "warning", CRASH, "unit %s restarted %d times" % (unit["unit"], unit["restarts"]),
                                  [where]))
    return found


def judge_containers(obs, _thresholds):
    found = []
    services = {item["service"] for item in obs["containers"]}
    for service in obs["expected"]:
        if service not in services:
            found.append(_finding("containers", "critical", CRASH, "no container of compose service %s" % service,
                                  ["docker compose ps -a lists none for %s" % service], "service"))
    for item in obs["containers"]:
        where = "%s: %s, exit code %s, %s restarts%s%s" % (
            item["name"], item["state"] or "?", item.get("exit_code"), item.get("restarts", 0),
            ", health %s" % item["health"] if item["health"] else "", ", OOMKilled" if item.get("oom_killed") else "")
        if item["state"] in ("restarting", "exited", "dead", "created") or item.get("restarting"):
            found.append(_finding("containers", "critical", CRASH, "container %s is %s (crash loop)" % (item["name"], item["state"]),
                                  [where], "service"))
        elif item["health"] == "unhealthy":
            found.append(_finding("containers", "high", CRASH, "container %s is unhealthy" % item["name"], [where], "service"))
        elif item["state"] == "paused":
            found.append(_finding("containers", "high", CRASH, "container %s is paused" % item["name"], [where], "service"))
        elif item.get("restarts"):
            found.append(_finding("containers", "warning", CRASH, "container %s restarted %d times" % (item["name"], item["restarts"]),
                                  [where]))
    return found


def judge_health(obs, _thresholds):
    if obs["http_status"] == 200:
        return []
    said = "HTTP %d" % obs["http_status"] if obs["http_status"] is not None else "no answer: %s" % obs["error"]
    return [_finding("health", "critical", SYMPTOM, "%s is not 200 (%s)" % (obs["url"], said), [said], "service")]


def judge_required_files(obs, _thresholds):
    bad = [item for item in obs["files"] if item["state"] != "ok"]
    if not bad:
        return []
    return [_finding("required_files", "critical", CAUSE, "%d file%s the service needs to start %s missing or empty"
                     % (len(bad), "" if len(bad) == 1 else "s", "is" if len(bad) == 1 else "are"),
                     ["%s: %s" % (item["path"], item["state"]) for item in bad], "service")]


def judge_ports(obs, _thresholds):
    found = []
    for port in WEB_PORTS:
        holders = [item for item in obs["listeners"] if item["port"] == port]
        foreign = [process for item in holders for process in item["processes"] if process["program"] not in DOCKER_PROXIES]
        if foreign:
            found.append(_finding("ports", "critical", CAUSE, "port %d is held by %s, not the web container" % (
                port, ", ".join(sorted({process["program"] for process in foreign}))),
                ["%s pid %d listens on %s:%d" % (process["program"], process["pid"], item["address"], port)
                 for item in holders for process in item["processes"] if process["program"] not in DOCKER_PROXIES], "service"))
    return found


def _fullest(observations):
    disk = observations.get("disk") or {}
    filesystems = disk.get("filesystems") or []
    return max(filesystems, key=lambda item: item["percent"])["mount"] if filesystems else None


def judge_logs(obs, _thresholds, observations=None):
    found = []
    classes = obs["classes"]

    def evidence(kind):
        lines = ["%s: %d x %s" % (item["service"], item["count"], item["signature"]) for item in obs["signatures"]
                 if item["class"] == kind]
        return ["%d line%s in %d min" % (classes[kind], "" if classes[kind] == 1 else "s", obs["since_minutes"])] + lines[:4]

    if classes.get("storage"):
        path = _fullest(observations or {})
        found.append(_finding("logs", "critical", CAUSE, "the logs say: no space left on device", evidence("storage"), "storage",
                              dict(storage_full_path=path) if path else {}))
    if classes.get("corruption"):
        found.append(_finding("logs", "critical", CAUSE, "the database's log reports corrupt or missing data files",
                              evidence("corruption"), "corruption"))
    if classes.get("memory"):
        found.append(_finding("logs", "high", CAUSE, "the logs say processes ran out of memory or were killed",
                              evidence("memory"), "node"))
    if classes.get("connections"):
        found.append(_finding("logs", "high", CRASH, "the database refuses connections: too many clients",
                              evidence("connections"), "db"))
    if classes.get("upstream"):
        if ((observations or {}).get("health") or {}).get("http_status") == 200:
            # Refused within the window, answering now: a restart that is over, worth a look but not a playbook.
            found.append(_finding("logs", "warning", SYMPTOM, "nginx could not reach the app (connection refused); /health answers now",
                                  evidence("upstream")))
        else:
            found.append(_finding("logs", "high", CRASH, "nginx cannot reach the app (connection refused)", evidence("upstream"),
                                  "service"))
    other = [item for item in obs["signatures"] if item["class"] is None]
    if other and not found:
        total = sum(item["errors"] for item in obs["services"].values())
        found.append(_finding("logs", "warning", SYMPTOM, "%d error line%s in the last %d min" % (
            total, "" if total == 1 else "s", obs["since_minutes"]),
            ["%s: %d x %s" % (item["service"], item["count"], item["signature"]) for item in other[:5]]))
    return found


def judge_memory(obs, _thresholds, observations=None):
    found = []
    containers = ((observations or {}).get("containers") or {})
    killed = [item["name"] for item in containers.get("containers") or [] if item.get("oom_killed")]
    if obs.get("oom_kills") or killed:
        evidence = []
        if obs.get("oom_kills"):
            victims = ": %s" % ", ".join(obs["oom_processes"]) if obs["oom_processes"] else ""
            evidence.append("%d OOM kill%s in the kernel log%s" % (obs["oom_kills"], "" if obs["oom_kills"] == 1 else "s", victims))
        if killed:
            evidence.append("OOMKilled container%s: %s" % ("" if len(killed) == 1 else "s", ", ".join(killed)))
        found.append(_finding("memory", "critical", CAUSE, "processes were killed for lack of memory", evidence, "node"))
    percent = obs.get("available_percent")
    if percent is not None and percent < MEMORY_AVAILABLE_PERCENT:
        found.append(_finding("memory", "high", CAUSE, "only %s%% of memory is available" % percent,
                              ["MemAvailable %d kB of MemTotal %d kB" % (obs["mem_available_kb"], obs["mem_total_kb"])], "node"))
    return found


def judge_disk(obs, thresholds):
    found = []
    for item in obs["filesystems"]:
        over = []
        if item["percent"] >= thresholds["disk_percent"]:
            over.append("%s%% of its space used (%d MiB free)" % (item["percent"], item["free_bytes"] // (1 << 20)))
        if item["inode_percent"] is not None and item["inode_percent"] >= thresholds["inode_percent"]:
            over.append("%s%% of its inodes used" % item["inode_percent"])
        if over:
            severity = "critical" if item["percent"] >= 98 or (item["inode_percent"] or 0) >= 98 else "high"
            found.append(_finding("disk", severity, CAUSE, "%s is %s full" % (item["mount"], "nearly" if severity == "high" else "all but"),
                                  ["%s (holds %s): %s" % (item["mount"], item["path"], "; ".join(over))], "storage",
                                  dict(storage_full_path=item["mount"])))
    return found


def judge_certificates(obs, thresholds):
    found = []
    for item in obs["certificates"]:
        if item["problem"]:
            found.append(_finding("certificates", "high", CAUSE, "certificate %s is %s" % (item["path"], item["problem"].split(":")[0]),
                                  ["%s: %s" % (item["path"], item["problem"])], "certificate"))
            continue
        days = item["days_left"]
        if days > thresholds["cert_days"]:
            continue
        evidence = ["%s: %s, not after %s, %d days left" % (item["path"], item["subject"], item["not_after"], days)]
        if days < 0:
            found.append(_finding("certificates", "critical", CAUSE, "certificate %s has expired" % item["path"], evidence, "certificate"))
        else:
            found.append(_finding("certificates", "high" if days <= 3 else "warning", CRASH,
                                  "certificate %s expires in %d days" % (item["path"], days), evidence, "certificate"))
    return found


def _session_line(session, age):
    return "pid %d (%s, %s %s s)%s" % (session["pid"], session["user"] or "?", session["state"] or "?", age,
                                       ": %s" % session["query"] if session["query"] else "")


def judge_database(obs, thresholds):
    if not obs["reachable"]:
        return [_finding("database", "critical", CAUSE, "database %s cannot be reached" % obs["db"], [obs["error"]], "service")]
    found = []
    used = obs["connections"]
    limit = max(obs["max_connections"] - obs["reserved"], 1)
    percent = round(100.0 * used / limit, 1)
    if percent >= thresholds["connections_percent"]:
        found.append(_finding("database", "critical" if used >= limit else "high", CRASH,
                              "%d of %d connections in use (%s%%)" % (used, limit, percent),
                              ["max_connections %d, %d reserved for superusers" % (obs["max_connections"], obs["reserved"])], "db"))
    if obs["chains"]:
        heads = [session for session in obs["sessions"] if session["blocks"] and not session["blocked_by"]]
        found.append(_finding("database", "high", CRASH, "%d session%s for a lock" % (len(obs["chains"]), " waits" if len(obs["chains"]) == 1 else "s wait"),
                              ["%s blocks %s" % (_session_line(session, session["seconds"]), ", ".join(map(str, session["blocks"])))
                               for session in heads] or ["pid %d waits for %s" % (chain["pid"], chain["blocked_by"]) for chain in obs["chains"]],
                              "db", dict(db_degraded_blocking=True)))
    idle = [session for session in obs["sessions"] if (session["state"] or "").startswith("idle in transaction")
            and (session["idle_seconds"] or 0) > thresholds["idle_in_transaction_seconds"]]
    if idle:
        found.append(_finding("database", "high", CRASH, "%d session%s idle in a transaction for more than %d s" % (
            len(idle), "" if len(idle) == 1 else "s", thresholds["idle_in_transaction_seconds"]),
            [_session_line(session, session["idle_seconds"]) for session in idle], "db",
            dict(db_degraded_idle_for=thresholds["idle_in_transaction_seconds"])))
    long = [session for session in obs["sessions"] if session["state"] == "active"
            and (session["seconds"] or 0) > thresholds["long_query_seconds"]]
    if long:
        found.append(_finding("database", "warning", CRASH, "%d quer%s running for more than %d s" % (
            len(long), "y" if len(long) == 1 else "ies", thresholds["long_query_seconds"]),
            [_session_line(session, session["seconds"]) for session in long], "db",
            dict(db_degraded_older_than=thresholds["long_query_seconds"])))
    return found


def judge_backups(obs, thresholds):
    limit = thresholds["backup_max_age_hours"]
    ignored = ["not counted (a link or not a regular file): %s" % ", ".join(obs["ignored"][:5])] if obs["ignored"] else []
    if obs["newest"] is None:
        where = obs["directory"] if obs["exists"] else "%s (it does not exist)" % obs["directory"]
        return [_finding("backups", "high", CRASH, "no backup in %s" % obs["directory"], ["no manifest in %s" % where] + ignored, "backup")]
    if obs["age_hours"] <= limit:
        return []
    return [_finding("backups", "high" if obs["age_hours"] > 2 * limit else "warning", CRASH,
                     "the newest backup is %s hours old (more than %d)" % (obs["age_hours"], limit),
                     ["%s in %s" % (obs["newest"], obs["directory"])] + ignored, "backup")]


def judge_audit_integrity(obs, _thresholds):
    if obs["result"] in ("success", "") and obs["active_state"] != "failed" and not obs["exit_status"]:
        return []
    return [_finding("audit_integrity", "high", CRASH, "the last audit integrity check failed",
                     ["%s: %s, result %s, exit status %s" % (obs["unit"], obs["active_state"], obs["result"], obs["exit_status"])],
                     "audit")]


def _loopback(address):
    """The host's own requests (its health checks, a local probe) are never a flood."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _flood_suspects(top, total, most, share):
    """The busiest clients over `most` that also hold `share` of `total`, never the host's own loopback."""
    return [item for item in top if not _loopback(item["address"]) and item["count"] > most and item["count"] >= share * total]


def judge_requests(obs, thresholds):
    found = []
    total = obs["total"]
    flood = _flood_suspects(obs["top_clients"], total, thresholds["flood_requests"], thresholds["flood_share"])
    if flood:
        plural = "" if len(flood) == 1 else "s"
        evidence = ["%s: %d of %d requests in %d min" % (item["address"], item["count"], total, obs["since_minutes"]) for item in flood]
        found.append(_finding("requests", "high", CAUSE, "%d client%s sent most requests (flood suspect%s)" % (len(flood), plural, plural),
                              evidence, "flood", dict(connection_flood_sources=[item["address"] for item in flood])))
    if total >= 10 and obs["errors_5xx"] * 10 >= total:
        found.append(_finding("requests", "warning", SYMPTOM, "%d of %d requests answered 5xx" % (obs["errors_5xx"], total),
                              ["in the last %d min" % obs["since_minutes"]]))
    return found


def judge_connections(obs, thresholds):
    total = obs["total"]
    flood = _flood_suspects(obs["top_sources"], total, thresholds["flood_connections"], thresholds["flood_share"])
    if not flood:
        return []
    plural = "" if len(flood) == 1 else "s"
    evidence = ["%s: %d of %d tracked connections to ports %s" % (item["address"], item["count"], total, "/".join(map(str, WEB_PORTS)))
                for item in flood]
    title = "%d source%s %s most connections (flood suspect%s)" % (len(flood), plural, "hold" if plural else "holds", plural)
    return [_finding("connections", "high", CAUSE, title, evidence, "flood", dict(connection_flood_sources=[item["address"] for item in flood]))]


def _app_trouble(observations, service):
    """What the containers and health checks saw wrong with the app: its container crash-looping, exited or
    unhealthy, /health not 200 (an empty list when they saw nothing wrong or did not run)."""
    trouble = []
    containers = observations.get("containers") or {}
    if containers.get("status") == "ok":
        for item in containers["containers"]:
            if item["service"] != service:
                continue
            if item["state"] in ("restarting", "exited", "dead", "created") or item.get("restarting"):
                trouble.append("container %s is %s, %s restarts" % (item["name"], item["state"], item.get("restarts", 0)))
            elif item["health"] == "unhealthy":
                trouble.append("container %s is unhealthy" % item["name"])
    health = observations.get("health") or {}
    if health.get("status") == "ok" and health.get("http_status") != 200:
        trouble.append("%s: %s" % (health["url"], "HTTP %d" % health["http_status"] if health["http_status"] is not None else "no answer"))
    return trouble


def _short_ids(ids):
    return ", ".join(value[7:19] if value.startswith("sha256:") else value[:12] for value in ids)


def judge_release(obs, thresholds, observations=None):
    newest = obs["newest_verified"]
    if obs["state"] == "verified" or newest is None:
        return []  # on a verified release, or no verified release to compare with (nor to roll back to)
    runs = "the app (%s) runs image %s: %s" % (obs["app_service"], _short_ids(obs["running"]), "in release %s, not verified" % obs["release"]
                                               if obs["state"] == "unverified" else "in no release recorded")
    last = "newest verified release: %s (%s, recorded %s)" % (newest["id"], newest["label"] or "no label", newest["recorded_at"])
    trouble = _app_trouble(observations or {}, thresholds["app_service"])
    if trouble:
        return [_finding("release", "critical", CAUSE, "the app runs images no verified release has (a bad deploy?)", [runs, last] + trouble,
                         "release", {})]
    # Healthy on what no one verified yet: worth knowing (a deploy not checked, or one done by hand), not a rollback.
    return [_finding("release", "warning", SYMPTOM, "the app runs a release not verified yet", [runs, last])]


JUDGES = {
    "units": judge_units, "containers": judge_containers, "health": judge_health, "required_files": judge_required_files,
    "ports": judge_ports, "logs": judge_logs, "memory": judge_memory, "disk": judge_disk, "certificates": judge_certificates,
    "database": judge_database, "backups": judge_backups, "audit_integrity": judge_audit_integrity, "requests": judge_requests,
    "connections": judge_connections, "release": judge_release,
}
NEEDS_ALL = ("logs", "memory", "release")  # judges that read other checks' observations too


def findings(observations, thresholds):
    """(ranked findings, {check: {status, detail}}) of the observations. Rank: severity, then cause before crash
    before symptom, then check order."""
    found, checks = [], {}
    for name in CHECKS:
        obs = observations.get(name)
        if obs is None:
            continue
        if obs["status"] != "ok":
            checks[name] = dict(status=obs["status"], detail=obs.get("reason") or "")
            continue
        judge = JUDGES[name]
        these = judge(obs, thresholds, observations) if name in NEEDS_ALL else judge(obs, thresholds)
        checks[name] = dict(status="problem" if these else "ok",
                            detail="; ".join(item["title"] for item in these) if these else summary(name, obs))
        found.extend(these)
    order = {name: index for index, name in enumerate(CHECKS)}
    found.sort(key=lambda item: (SEVERITIES.index(item["severity"]), item["tier"], order[item["check"]]))
    for rank, item in enumerate(found, start=1):
        item.pop("tier")
        item["rank"] = rank
    return found, checks


def summary(name, obs):
    """One line of what a check saw when it found nothing wrong."""
    if name == "units":
        return ", ".join("%s %s" % (unit["unit"], unit["active_state"]) for unit in obs["units"]) or "no unit asked"
    if name == "containers":
        return ", ".join("%s %s" % (item["service"], item["state"]) for item in obs["containers"])
    if name == "health":
        return "HTTP 200"
    if name == "required_files":
        return "%d file%s present" % (len(obs["files"]), "" if len(obs["files"]) == 1 else "s")
    if name == "ports":
        return "no foreign holder of ports 80/443" if obs["listeners"] else "nothing listens on ports 80/443"
    if name == "logs":
        return "%d error line%s in %d min" % (sum(item["errors"] for item in obs["services"].values()), "" if sum(
            item["errors"] for item in obs["services"].values()) == 1 else "s", obs["since_minutes"])
    if name == "memory":
        return "%s%% available%s" % (obs["available_percent"], "; %s" % obs["journal"] if obs["journal"] else ", no OOM kill")
    if name == "disk":
        return ", ".join("%s %s%%" % (item["mount"], item["percent"]) for item in obs["filesystems"]) or "no path exists"
    if name == "certificates":
        return ", ".join("%s: %d days left" % (item["path"], item["days_left"]) for item in obs["certificates"]) or "none asked"
    if name == "database":
        return "%d of %d connections" % (obs["connections"], obs["max_connections"])
    if name == "backups":
        return "newest %s, %s hours old" % (obs["newest"], obs["age_hours"])
    if name == "audit_integrity":
        return "%s: %s" % (obs["unit"], obs["result"])
    if name == "release":
        if obs["state"] == "verified":
            return "the app runs verified release %s" % obs["release"]
        return "the app runs %s; no verified release among %d recorded" % (
            "release %s (not verified)" % obs["release"] if obs["release"] else "images in no release", obs["releases"])
    if name == "connections":
        return "%d tracked connections to ports %s" % (obs["total"], "/".join(map(str, WEB_PORTS)))
    return "%d requests, %d 5xx in %d min" % (obs["total"], obs["errors_5xx"], obs["since_minutes"])


def _argument(name, value):
    if isinstance(value, str):
        return shlex.quote("%s=%s" % (name, value))
    return shlex.quote(json.dumps({name: value}))


def next_steps(found, incident_id=None):
    """The command of each finding's playbook, in rank order, each once: `ansible-playbook playbooks/<p> -e
    incident_id=<id> -e k=v ...` (a value that is not a string as JSON, `-e '{"k": [...]}'`), quoted for a shell.
    Without an incident id the placeholder <incident_id>, which the playbooks refuse until it is replaced."""
    steps = []
    for item in found:
        if not item["playbook"]:
            continue
        words = ["ansible-playbook", "playbooks/%s" % item["playbook"], "-e", _argument("incident_id", incident_id or "<incident_id>")]
        for name in sorted(item["extra_vars"]):
            words += ["-e", _argument(name, item["extra_vars"][name])]
        command = " ".join(words)
        if command not in steps:
            steps.append(command)
    return steps


def run(params, host=None, collectors=None):
    """The module's result; TriageError for a refused option (nothing read)."""
    thresholds = check_params(params)
    observations = observe(params, host, collectors)
    found, checks = findings(observations, thresholds)
    healthy = not any(item["severity"] in ("critical", "high") for item in found)
    problems = [name for name, check in checks.items() if check["status"] == "problem"]
    if found:
        msg = "%d finding%s (%s); first: %s" % (len(found), "" if len(found) == 1 else "s", ", ".join(problems), found[0]["title"])
    else:
        msg = "no finding in %d check%s" % (len(checks), "" if len(checks) == 1 else "s")
    not_run = [name for name, check in checks.items() if check["status"] in ("error", "skipped")]
    if not_run:
        msg += "; not run: %s" % ", ".join("%s (%s)" % (name, checks[name]["status"]) for name in not_run)
    result = dict(changed=False, msg=msg, healthy=healthy, findings=found, checks=checks,
                  next_steps=next_steps(found, params.get("incident_id")))
    if params.get("incident_id") is not None:
        result["incident_id"] = params["incident_id"]
    return result
