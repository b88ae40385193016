# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resource limits of compose services, through an override file the module owns, with one previous version kept
as the way back (module compose_limits). PRIVATE to the collection: no compatibility promise.

Files, all written atomically (_fileio), never through a symlink:

- the override (`override_path`): a compose file holding only limits; its first line is MARKER, a `# limits: <json>`
  line holds what it sets in the module's own terms (memory, memory_reservation, cpus, pids), and the YAML under it is
  rendered from that JSON. A file at the path without the marker, or whose YAML is not what the JSON renders, was not
  written (or was edited) by the module: refused.
- the previous version (`<override_path>.previous`): the override as it was before the last change, `# limits: null`
  when there was none. `state=previous` puts it back and removes it, so a second `previous` finds nothing to do.
- with `unit`, a systemd drop-in `<systemd_dir>/<unit>.d/runbooks-limits.conf` setting COMPOSE_FILE to the files
  compose uses by default in the project plus the override, so that the unit's `docker compose up` applies the limits.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _run_lock

STATES = ("present", "absent", "previous")
OVERRIDE_DIR = "/etc/runbooks-incident/compose-limits"
SYSTEMD_DIR = "/etc/systemd/system"
DROPIN_NAME = "runbooks-limits.conf"
PREVIOUS_SUFFIX = ".previous"
MARKER = "# runbooks.incident.compose_limits"
LIMITS_MARK = "# limits: "
INCIDENT_MARK = "# incident: "
# The files compose reads in a project directory when no -f and no COMPOSE_FILE says otherwise: the first of each list
# that exists (compose-go's DefaultFileNames and DefaultOverrideFileNames, in their order).
DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = ("compose.override.yml", "compose.override.yaml", "docker-compose.override.yml", "docker-compose.override.yaml")
LIMIT_KEYS = ("memory", "memory_reservation", "cpus", "pids")
MIN_MEMORY = 6 * 1024 * 1024  # docker refuses a memory limit below 6 MiB
MAX_PIDS = 4194304  # the kernel's pid_max ceiling
MAX_FILE = 1 << 20  # an override or drop-in bigger than this is none the module wrote
COMPOSE_TIMEOUT = 60
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,128}\Z")  # compose's rule for service names
UNIT_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,200}\.service\Z")
# A path that goes into COMPOSE_FILE (':' separates its files) and into a systemd Environment= line unquoted.
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*\Z")
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmg])b?|b)?\s*\Z", re.IGNORECASE)
UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
ENV_COMPOSE_FILE = re.compile(r"^\s*(?:export\s+)?COMPOSE_FILE\s*=", re.MULTILINE)


class LimitsError(Exception):
    """A refused request or a file the module will not touch; nothing was changed."""


class ApplyError(Exception):
    """A write failed after the checks; `done` says which files were already changed."""

    def __init__(self, message, done):
        super().__init__(message)
        self.done = done


# ------------------------------------------------------------------------------------------------- values
def mem_total():
    """Bytes of RAM of this host (MemTotal of /proc/meminfo)."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise LimitsError("cannot read MemTotal from /proc/meminfo")


def parse_memory(value, where):
    """Bytes of a memory value: an int (bytes) or a string such as 512m, 1g, 1.5g, 300000k, 524288000 (k, m, g are
    powers of 1024, an optional trailing b as in 512mb)."""
    if isinstance(value, bool):
        raise LimitsError("%s: %r is not a memory size" % (where, value))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = MEMORY.match(value)
        if match:
            number, unit = match.group(1), (match.group(2) or "").lower() or None
            if "." in number:
                whole, fraction = number.split(".")
                return (int(whole) * UNITS[unit]) + (int(fraction) * UNITS[unit]) // (10 ** len(fraction))
            return int(number) * UNITS[unit]
    raise LimitsError("%s: %r is not a memory size (bytes, or a number with k, m or g: 512m, 1g)" % (where, _short(value)))


def memory_text(size):
    """The shortest exact compose spelling of `size` bytes: 512m, 1g, 300k, or the bytes."""
    for suffix, unit in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % unit == 0:
            return "%d%s" % (size // unit, suffix)
    return "%d" % size


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_service(name, limits, memory_cap, cpu_cap):
    """The limits of one service in canonical form ({memory: '512m', cpus: 0.5, ...}), or LimitsError."""
    if not isinstance(name, str) or not SERVICE_NAME.match(name):
        raise LimitsError("service name %s is not valid (letters, digits and ._-)" % _short(name))
    if not isinstance(limits, dict) or not limits:
        raise LimitsError("services[%s] must be a mapping of at least one of %s" % (name, ", ".join(LIMIT_KEYS)))
    unknown = sorted(str(key)[:60] for key in limits if key not in LIMIT_KEYS)
    if unknown:
        raise LimitsError("services[%s]: unknown limit %s (known: %s)" % (name, ", ".join(unknown), ", ".join(LIMIT_KEYS)))
    out = {}
    sizes = {}
    for key in ("memory", "memory_reservation"):
        if limits.get(key) is None:
            continue
        where = "services[%s].%s" % (name, key)
        size = parse_memory(limits[key], where)
        if size < MIN_MEMORY:
            raise LimitsError("%s: %s is below 6m, the least docker accepts" % (where, memory_text(size) if size >= 0 else size))
        if size > memory_cap:
            raise LimitsError("%s: %s is more than this host's memory (MemTotal %s)" % (where, memory_text(size), memory_text(memory_cap)))
        sizes[key] = size
        out[key] = memory_text(size)
    if "memory" in sizes and "memory_reservation" in sizes and sizes["memory_reservation"] > sizes["memory"]:
        raise LimitsError("services[%s]: memory_reservation %s is above memory %s" % (name, out["memory_reservation"], out["memory"]))
    if limits.get("cpus") is not None:
        cpus = limits["cpus"]
        try:
            if isinstance(cpus, bool):
                raise ValueError()
            cpus = float(cpus)
        except (TypeError, ValueError):
            raise LimitsError("services[%s].cpus: %s is not a number" % (name, _short(cpus))) from None
        if not math.isfinite(cpus) or cpus <= 0 or cpus > cpu_cap:
            raise LimitsError("services[%s].cpus: %s is not above 0 and at most this host's %d CPUs" % (name, _short(limits["cpus"]), cpu_cap))
        out["cpus"] = round(cpus, 3)
        if out["cpus"] <= 0:
            raise LimitsError("services[%s].cpus: %s rounds to 0 (at most 3 decimals)" % (name, _short(limits["cpus"])))
    if limits.get("pids") is not None:
        pids = limits["pids"]
        try:
            if isinstance(pids, bool) or (isinstance(pids, float) and not pids.is_integer()):
                raise ValueError()
            pids = int(pids)
        except (TypeError, ValueError):
            raise LimitsError("services[%s].pids: %s is not a whole number" % (name, _short(pids))) from None
        if not 1 <= pids <= MAX_PIDS:
            raise LimitsError("services[%s].pids: %d is not between 1 and %d" % (name, pids, MAX_PIDS))
        out["pids"] = pids
    if not out:
        raise LimitsError("services[%s] sets no limit (every value is null)" % name)
    return out


def normalize(services, memory_cap=None, cpu_cap=None):
    """The canonical limits of every service of `services`."""
    if not isinstance(services, dict) or not services:
        raise LimitsError("state=present needs services: a mapping of service name to its limits")
    memory_cap = mem_total() if memory_cap is None else memory_cap
    cpu_cap = (os.cpu_count() or 1) if cpu_cap is None else cpu_cap
    return {name: normalize_service(name, limits, memory_cap, cpu_cap) for name, limits in services.items()}


def compose_keys(limits):
    """(compose key, value) pairs of one service's canonical limits: memswap_limit equals mem_limit (no swap)."""
    pairs = []
    if "memory" in limits:
        pairs += [("mem_limit", limits["memory"]), ("memswap_limit", limits["memory"])]
    if "memory_reservation" in limits:
        pairs.append(("mem_reservation", limits["memory_reservation"]))
    if "cpus" in limits:
        pairs.append(("cpus", limits["cpus"]))
    if "pids" in limits:
        pairs.append(("pids_limit", limits["pids"]))
    return pairs


# ------------------------------------------------------------------------------------------------- files
def render_body(limits):
    """The compose YAML of `limits` (JSON scalars are YAML too); empty for None."""
    if limits is None:
        return ""
    lines = ["services:"]
    for service in sorted(limits):
        lines.append("  %s:" % json.dumps(service))
        lines += ["    %s: %s" % (key, json.dumps(value)) for key, value in compose_keys(limits[service])]
    return "\n".join(lines) + "\n"


def render(what, limits, incident_id):
    """An override (or, `limits` None, a previous version recording that there was none)."""
    return "".join([
        "%s: %s; written by the module, do not edit\n" % (MARKER, what),
        "%s%s\n" % (INCIDENT_MARK, incident_id),
        "%s%s\n" % (LIMITS_MARK, json.dumps(limits, sort_keys=True)),
        render_body(limits),
    ])


def _read_small(path, what):
    """The text of the regular file at `path`, or None when nothing is there. A symlink, FIFO, directory or device
    there is refused."""
    try:
        fd = _fileio.open_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EISDIR, errno.ENXIO) or isinstance(exc, _fileio.UnsafePathError):
            raise LimitsError("%s %s is not a regular file the module wrote (%s): move it away" % (what, path, exc.strerror or exc)) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise LimitsError("%s %s is not a file the module wrote (too big): move it away" % (what, path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LimitsError("%s %s is not a file the module wrote (not UTF-8): move it away" % (what, path)) from None


def read_owned(path, what):
    """(limits, incident_id, text) of an override or previous version at `path`; None when there is no file.
    A file the module did not write, or that was edited since, is refused."""
    text = _read_small(path, what)
    if text is None:
        return None
    lines = text.split("\n")
    foreign = "%s %s is not a file the module wrote (no %r first line): move it away" % (what, path, MARKER)
    if not lines[0].startswith(MARKER) or len(lines) < 3 or not lines[1].startswith(INCIDENT_MARK) or not lines[2].startswith(LIMITS_MARK):
        raise LimitsError(foreign)
    try:
        limits = json.loads(lines[2][len(LIMITS_MARK):])
        if limits is not None:
            limits = normalize(limits, memory_cap=float("inf"), cpu_cap=float("inf"))
    except (ValueError, LimitsError):
        raise LimitsError("%s %s: its %r line does not parse: move it away" % (what, path, LIMITS_MARK.strip())) from None
    if "\n".join(lines[3:]) != render_body(limits):
        raise LimitsError("%s %s was edited since the module wrote it (its YAML is not what its %r line says): move it away"
                          % (what, path, LIMITS_MARK.strip()))
    return limits, lines[1][len(INCIDENT_MARK):], text


def render_dropin(unit, files, incident_id):
    return "".join([
        "%s: the compose files of %s, with the limits override; written by the module, do not edit\n" % (MARKER, unit),
        "%s%s\n" % (INCIDENT_MARK, incident_id),
        "[Service]\n",
        "Environment=COMPOSE_FILE=%s\n" % ":".join(files),
    ])


def read_dropin(path):
    """(body after the incident line, text) of the drop-in at `path`, or None; a file the module did not write is refused."""
    text = _read_small(path, "drop-in")
    if text is None:
        return None
    lines = text.split("\n")
    if not lines[0].startswith(MARKER) or len(lines) < 2 or not lines[1].startswith(INCIDENT_MARK):
        raise LimitsError("drop-in %s is not a file the module wrote (no %r first line): move it away" % (path, MARKER))
    return "\n".join(lines[2:]), text


def _dropin_body(text):
    return "\n".join(text.split("\n")[2:])


# ------------------------------------------------------------------------------------------------- compose
def project_files(project_dir):
    """(main compose file, default override file or None) of the project; LimitsError when it has no compose file."""
    def regular(name):
        try:
            return stat.S_ISREG(os.stat(os.path.join(project_dir, name)).st_mode)
        except OSError:
            return False
    try:
        if not stat.S_ISDIR(os.stat(project_dir).st_mode):
            raise LimitsError("project_dir %s is not a directory" % project_dir)
    except OSError as exc:
        raise LimitsError("project_dir %s: %s" % (project_dir, exc.strerror or exc)) from None
    main = next((name for name in DEFAULT_FILES if regular(name)), None)
    if main is None:
        raise LimitsError("project_dir %s has no compose file (%s)" % (project_dir, ", ".join(DEFAULT_FILES)))
    override = next((name for name in OVERRIDE_FILES if regular(name)), None)
    if regular(".env"):
        try:
            dotenv = _read_small(os.path.join(project_dir, ".env"), "the project's .env") or ""
        except LimitsError:
            dotenv = ""
        if ENV_COMPOSE_FILE.search(dotenv):
            raise LimitsError("the .env of %s sets COMPOSE_FILE: the project chooses its own compose files, which the module does not "
                              "handle (set the limits in those files)" % project_dir)
    return os.path.join(project_dir, main), os.path.join(project_dir, override) if override else None


def compose_argv(compose_binary):
    return [compose_binary] if compose_binary else ["docker", "compose"]


def run_compose(compose_binary, args, project_dir):
    """(returncode, stdout, stderr) of compose with `args`, COMPOSE_FILE and its separator out of the environment."""
    env = {key: value for key, value in os.environ.items() if key not in ("COMPOSE_FILE", "COMPOSE_PATH_SEPARATOR")}
    argv = compose_argv(compose_binary) + ["--project-directory", project_dir] + args
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=COMPOSE_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LimitsError("%s did not answer within %d s" % (" ".join(argv[:3]), COMPOSE_TIMEOUT)) from None
    except OSError as exc:
        raise LimitsError("cannot run %s: %s (is the Compose v2 CLI installed? see compose_binary)"
                          % (" ".join(compose_argv(compose_binary)), exc.strerror or exc)) from None
    return res.returncode, res.stdout, res.stderr


def _compose_error(stderr):
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "level=warning" not in line]
    return (lines[-1] if lines else "no message")[:500]


def project_services(compose_binary, project_dir):
    """The services of the project (`docker compose --project-directory <dir> config --services`)."""
    code, out, err = run_compose(compose_binary, ["config", "--services"], project_dir)
    if code != 0:
        raise LimitsError("docker compose config --services in %s failed: %s" % (project_dir, _compose_error(err)))
    return [line.strip() for line in out.splitlines() if line.strip()]


def validate_merged(compose_binary, project_dir, files, limits):
    """`compose -f <each default file> -f <the override> config --quiet` over the override to be, in a private temp dir."""
    tmp = tempfile.mkdtemp(prefix="compose-limits-")
    try:
        candidate = os.path.join(tmp, "override.yaml")
        _fileio.write_bytes(candidate, render_body(limits).encode())
        args = []
        for path in list(files) + [candidate]:
            args += ["-f", path]
        code, _out, err = run_compose(compose_binary, args + ["config", "--quiet"], project_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if code != 0:
        raise LimitsError("the compose project in %s with the override does not validate: %s" % (project_dir, _compose_error(err)))


# ------------------------------------------------------------------------------------------------- run
def default_override_path(project_dir):
    return os.path.join(OVERRIDE_DIR, os.path.basename(project_dir.rstrip("/")) + ".yaml")


def check_params(params):
    """Refuse what no run can do; fills in override_path."""
    if params["state"] not in STATES:
        raise LimitsError("state must be one of %s" % ", ".join(STATES))
    project_dir = params.get("project_dir")
    if not isinstance(project_dir, str) or not PLAIN_PATH.match(project_dir) or project_dir.rstrip("/") in ("", "/"):
        raise LimitsError("project_dir %s is not an absolute path of letters, digits and ._/@+- (it goes into COMPOSE_FILE)"
                          % _short(project_dir))
    params["project_dir"] = project_dir = os.path.normpath(project_dir)
    if not params.get("override_path"):
        params["override_path"] = default_override_path(project_dir)
    for name in ("override_path", "systemd_dir"):
        value = params.get(name)
        if not isinstance(value, str) or not PLAIN_PATH.match(value) or value.rstrip("/") in ("", "/"):
            raise LimitsError("%s %s is not an absolute path of letters, digits and ._/@+-" % (name, _short(value)))
        params[name] = os.path.normpath(value)
    if params.get("unit") is not None and not UNIT_NAME.match(str(params["unit"])):
        raise LimitsError("unit %s is not a service unit name (letters, digits, ._@- and .service)" % _short(params["unit"]))
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(str(incident_id)):
        raise LimitsError("incident_id %s is not valid (letters, digits and ._:-, at most 64)" % _short(incident_id))
    if params["state"] != "present" and params.get("services"):
        raise LimitsError("services is only for state=present (state=%s takes none)" % params["state"])
    if params["state"] == "present":
        params["services"] = normalize(params.get("services"))


def dropin_path(params):
    if not params.get("unit"):
        return None
    return os.path.join(params["systemd_dir"], params["unit"] + ".d", DROPIN_NAME)


def _diff(path, before, after):
    return dict(before_header=path, after_header=path, before=before or "", after=after or "")


def _describe(limits):
    if not limits:
        return "none (the limits of the compose file)"
    return "; ".join("%s %s" % (service, ", ".join("%s %s" % (key, limits[service][key]) for key in LIMIT_KEYS if key in limits[service]))
                     for service in sorted(limits))


def run(params, check_mode, diff=False):
    """Compare the override (and drop-in) with what `params` asks, validate, and write unless `check_mode`."""
    check_params(params)
    state, project_dir, path = params["state"], params["project_dir"], params["override_path"]
    previous_path = path + PREVIOUS_SUFFIX
    compose_binary = params.get("compose_binary")
    main, default_override = project_files(project_dir)
    files = [main] + ([default_override] if default_override else [])
    current = read_owned(path, "override_path")
    kept = read_owned(previous_path, "the previous version")
    current_limits = current[0] if current else None
    dpath = dropin_path(params)
    dropin = read_dropin(dpath) if dpath else None

    nothing_kept = False
    if state == "present":
        unknown = sorted(set(params["services"]) - set(project_services(compose_binary, project_dir)))
        if unknown:
            raise LimitsError("no service %s in the compose project in %s" % (", ".join(unknown), project_dir))
        wanted = params["services"]
    elif state == "absent":
        wanted = None
    else:
        nothing_kept = kept is None
        wanted = current_limits if nothing_kept else kept[0]

    override_changes = wanted != current_limits
    incident_id = params.get("incident_id")
    new_text = render("resource limits of the compose project in %s" % project_dir, wanted, incident_id) if override_changes and wanted is not None else None
    if not override_changes:
        new_text = current[2] if current else None
    new_dropin = None
    if dpath and wanted is not None:
        wanted_dropin = render_dropin(params["unit"], files + [path], incident_id)
        same = dropin is not None and dropin[0] == _dropin_body(wanted_dropin)
        new_dropin = dropin[1] if same else wanted_dropin
    dropin_changes = bool(dpath) and (new_dropin or None) != (dropin[1] if dropin else None)
    previous_changes = override_changes or (state == "previous" and kept is not None)
    changed = override_changes or dropin_changes or previous_changes
    if changed and incident_id is None:
        raise LimitsError("this change needs incident_id (the incident the limits are changed for)")
    if wanted is not None and (override_changes or dropin_changes):
        validate_merged(compose_binary, project_dir, files, wanted)

    result = dict(
        changed=changed,
        state=state,
        project_dir=project_dir,
        compose_files=files,
        override_path=path,
        previous_path=previous_path,
        dropin_path=dpath,
        before=current_limits or {},
        after=wanted or {},
        restart_needed=override_changes or dropin_changes,
        daemon_reload_needed=dropin_changes,
    )
    if incident_id is not None:
        result["incident_id"] = incident_id
    if diff:
        result["diff"] = [_diff(path, current[2] if current else "", new_text or "")]
        if dpath:
            result["diff"].append(_diff(dpath, dropin[1] if dropin else "", new_dropin or ""))
    if changed and not check_mode:
        apply(params, current, kept, new_text, dpath, new_dropin if dropin_changes else False, override_changes)
    verb = ("would put back" if check_mode else "put back") if state == "previous" else "would set" if check_mode else "set"
    if nothing_kept:
        result["msg"] = "no previous version of %s is kept: nothing to put back; the override %s %s" % (
            path, "is" if current else "is absent, limits are", _describe(current_limits))
    elif not changed:
        result["msg"] = "the compose limits of %s are already as asked: %s" % (project_dir, _describe(wanted))
    else:
        result["msg"] = "%s the compose limits of %s, %s: %s (were %s)%s" % (
            verb, project_dir, incident_id, _describe(wanted), _describe(current_limits),
            ("; restart the stack to apply them" + ("; systemctl daemon-reload first (the drop-in changed)" if dropin_changes else ""))
            if result["restart_needed"] else "")
    return result


def apply(params, current, kept, new_text, dpath, new_dropin, override_changes):
    """Write the files: the previous version first, the override, then the drop-in (removed before the override, so
    the unit never names a missing file); with state=previous, the previous version is removed last."""
    path = params["override_path"]
    previous_path = path + PREVIOUS_SUFFIX
    done = []
    try:
        if override_changes and params["state"] != "previous":
            old_limits, old_incident = (current[0], current[1]) if current else (None, params["incident_id"])
            _fileio.makedirs(os.path.dirname(path))
            _fileio.write_bytes(previous_path, render("the previous version of %s" % path, old_limits, old_incident).encode())
            done.append("wrote %s" % previous_path)
        if new_dropin is None and dpath:
            _fileio.remove(dpath)
            done.append("removed %s" % dpath)
        if override_changes:
            if new_text is None:
                _fileio.remove(path)
                done.append("removed %s" % path)
            else:
                _fileio.makedirs(os.path.dirname(path))
                _fileio.write_bytes(path, new_text.encode())
                done.append("wrote %s" % path)
        if new_dropin:
            _fileio.makedirs(os.path.dirname(dpath), mode=0o755)
            _fileio.write_bytes(dpath, new_dropin.encode(), mode=0o644)
            done.append("wrote %s" % dpath)
        if params["state"] == "previous" and kept is not None:
            _fileio.remove(previous_path)
            done.append("removed %s" % previous_path)
    except OSError as exc:
        raise ApplyError("cannot write the compose limits: %s%s" % (
            exc, "; already done: " + ", ".join(done) if done else "; nothing was changed"), done) from None
