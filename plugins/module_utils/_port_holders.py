# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who holds a TCP port, and freeing it (port_holders). PRIVATE to the collection: no compatibility promise.

The listeners come from `ss -ltnpH` (_triage.parse_ss, as triage_info reads them); each process holding a requested
port is described from /proc: its user, its start time (field 22 of /proc/<pid>/stat, the identity every signal is
checked against), its systemd unit (from /proc/<pid>/cgroup) and its command line, shown only as _triage.signature
masks log lines (a command line may carry a token).

Some holders are never stopped (`protection`): pid 1, the module's own process and its ancestors, a kernel thread, a
program of `keep` (by default the docker proxies: a port the service's own containers publish), and a process whose
unit also runs this module or a kept holder. The others are stopped the way that keeps them stopped: a process in a
systemd service unit by `systemctl stop --no-block <unit>` (killing it would only make systemd restart it), any other
by SIGTERM, sent through a pidfd only while the pid is still the process that was read (same start time). Then the
ports are polled until no holder that is not kept listens, up to `timeout`; with `force`, the processes that
outlived it get SIGKILL (same identity check) and are waited for again.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time

from ansible_collections.runbooks.incident.plugins.module_utils import _run_lock, _triage

STATES = ("report", "absent")
MAX_PORTS = 32
MAX_TIMEOUT = 600
POLL = 0.2  # seconds between two looks at the listeners while waiting
SYSTEMCTL_TIMEOUT = 30  # seconds `systemctl stop --no-block` may take to queue the job
MAX_PROGRAM = 64
PROC = "/proc"
# A holder as returned, in this order.
FIELDS = ("port", "address", "pid", "program", "user", "started", "unit", "cmdline", "kept", "action", "killed")
STOP_UNIT, TERM = "stop_unit", "term"


class PortsError(Exception):
    """A refused input, or the ports cannot be read: the message says what; nothing was stopped."""


class NotFreed(PortsError):
    """Holders were (or may have been) signalled and a port is still held; `result` says what was done."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise PortsError("%s is %r: a whole number from %d to %d" % (name, value, minimum, maximum))
    return value


def check_params(params):
    """{'ports': sorted unique ports, 'keep': set of program names} once every option is valid; PortsError otherwise,
    before anything is read."""
    if params["state"] not in STATES:
        raise PortsError("state is %r: one of %s" % (params["state"], ", ".join(STATES)))
    ports = params["ports"]
    if not isinstance(ports, list) or not ports:
        raise PortsError("ports is %r: name at least one port" % (ports,))
    if len(ports) > MAX_PORTS:
        raise PortsError("ports names %d ports: at most %d" % (len(ports), MAX_PORTS))
    chosen = sorted({_whole("each of ports", port, 1, 65535) for port in ports})
    keep = params["keep"]
    if not isinstance(keep, list):
        raise PortsError("keep is %r: a list of program names" % (keep,))
    for name in keep:
        if not isinstance(name, str) or not name or len(name) > MAX_PROGRAM or any(char.isspace() or not char.isprintable() for char in name):
            raise PortsError("keep: %r is not a program name (as ss shows it: no blank or control character, 1 to %d characters)"
                             % (name, MAX_PROGRAM))
    _whole("timeout", params["timeout"], 1, MAX_TIMEOUT)
    incident_id = params.get("incident_id")
    if incident_id is not None and not _run_lock.INCIDENT_ID.match(incident_id):
        raise PortsError("incident_id %r is not valid (letters, digits and ._:-, at most 64)" % (incident_id,))
    if params["state"] == "absent" and incident_id is None:
        raise PortsError("state=absent needs incident_id (the incident the ports are freed for)")
    return dict(ports=chosen, keep=set(keep))


# ---------------------------------------------------------------------------------------------------- /proc
def _read(pid, name, proc=PROC):
    with open("%s/%d/%s" % (proc, pid, name), "rb") as handle:
        return handle.read()


def parse_stat(text):
    """{'ppid', 'started'} of /proc/<pid>/stat: fields 4 and 22, counted after the command name (which may hold
    blanks and parentheses, so it ends at the last `)`)."""
    fields = text[text.rindex(")") + 1:].split()
    return dict(ppid=int(fields[1]), started=int(fields[19]))


def start_time(pid, proc=PROC):
    """The process's start time (clock ticks after boot), or None when there is no such process."""
    try:
        return parse_stat(_read(pid, "stat", proc).decode("utf-8", "replace"))["started"]
    except (FileNotFoundError, ProcessLookupError):
        return None


def parse_uid(status_text):
    """The effective uid of /proc/<pid>/status (its Uid: line is real, effective, saved, filesystem)."""
    for line in status_text.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise ValueError("no Uid line")


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _cgroup_path(cgroup_text):
    """The path systemd placed the process at: the name=systemd hierarchy (cgroup v1), else the unified one (`0::`,
    cgroup v2 or hybrid), else the first hierarchy listed."""
    paths = {}
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.setdefault(parts[1], parts[2])
    for controllers in ("name=systemd", ""):
        if controllers in paths:
            return paths[controllers]
    return next(iter(paths.values()), "")


def unit_of(cgroup_text):
    """The system service unit the process runs in, from /proc/<pid>/cgroup, or None.

    systemd's system units sit under slices (`/system.slice/apache2.service`, `/system.slice/system-x.slice/x@1.service`):
    the first component that is no slice is the unit, and only a `.service` is one to stop. A `.scope` (a login
    session, a container started by docker or podman, `init.scope`) is none, and so is anything below it (a service
    of a container's own systemd is no unit of this host's systemd). `user@<uid>.service` is a user's own service
    manager: stopping it would end all of that user's services, so it is none either. A path below the unit (a
    sub-cgroup a service made) keeps the unit."""
    for component in _cgroup_path(cgroup_text).strip().split("/"):
        if not component or component.endswith(".slice"):
            continue
        if component.endswith(".service") and not component.startswith("user@") and _triage.UNIT_NAME.match(component):
            return component
        return None
    return None


def lineage(pid=None, proc=PROC):
    """The pid (default the module's own) and every ancestor's: the processes the module never stops."""
    pid = os.getpid() if pid is None else pid
    found = set()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            pid = parse_stat(_read(pid, "stat", proc).decode("utf-8", "replace"))["ppid"]
        except (FileNotFoundError, ProcessLookupError):
            break
    return found


def own_unit(proc=PROC):
    """The unit the module runs in (a holder in it is never stopped: that would stop the module), or None."""
    try:
        return unit_of(_read(os.getpid(), "cgroup", proc).decode("utf-8", "replace"))
    except OSError:
        return None


def _secret_option(arg):
    """Whether `arg` is an option whose value, the next argument, may be a secret (--password, --api-key, -token)."""
    if not arg.startswith("-") or "=" in arg:
        return False
    found = _triage.SECRET_VALUE.search(arg + "=x")
    return found is not None and found.end() == len(arg) + 2


def masked_cmdline(argv):
    """The command line as a signature (_triage.signature, as log lines are shown), argument by argument: the
    argument after a secret-looking option (--password VALUE) is <secret>. An argument that names an existing file
    by its absolute path is masked one component at a time, so that /usr/bin/python3 reads as a path and not as a
    token; any other argument is masked whole, so that a token holding a `/` is still one."""
    words, hide = [], False
    for arg in argv:
        if hide:
            words.append("<secret>")
        elif arg.startswith("/") and os.path.exists(arg):
            words.append("/".join(_triage.signature(part) for part in arg.split("/")))
        else:
            words.append(_triage.signature(arg))
        hide = _secret_option(arg)
    text = " ".join(word for word in words if word)
    return text if len(text) <= _triage.MAX_SIGNATURE else text[:_triage.MAX_SIGNATURE - 3] + "..."


def describe(pid, proc=PROC):
    """{'user', 'started', 'unit', 'cmdline' (masked), 'kernel_thread'} of a process, or None when it is gone."""
    try:
        stat_text = _read(pid, "stat", proc).decode("utf-8", "replace")
        status = _read(pid, "status", proc).decode("utf-8", "replace")
        argv = [arg.decode("utf-8", "replace") for arg in _read(pid, "cmdline", proc).split(b"\0") if arg]
        try:
            cgroup = _read(pid, "cgroup", proc).decode("utf-8", "replace")
        except PermissionError:
            cgroup = ""
    except (FileNotFoundError, ProcessLookupError):
        return None
    return dict(user=user_name(parse_uid(status)), started=parse_stat(stat_text)["started"], unit=unit_of(cgroup),
                cmdline=masked_cmdline(argv) if argv else None, kernel_thread=not argv)


# ---------------------------------------------------------------------------------------------------- read
class Guard:
    """What the module never stops: its own process and ancestors, its own unit, and the programs of `keep`."""

    def __init__(self, keep, own=None, unit=None):
        self.keep = set(keep)
        self.own = lineage() if own is None else set(own)
        self.unit = own_unit() if unit is None else unit


def protection(holder, guard):
    """Why the module never stops this holder, or None."""
    if holder["pid"] is None:
        return "ss names no process for this socket (the module is not root, or the process is in another pid namespace)"
    if holder["pid"] == 1:
        return "pid 1, the init process"
    if holder["pid"] in guard.own:
        return "the module's own process or one of its ancestors"
    if holder["kernel_thread"]:
        return "a kernel thread (no command line)"
    if holder["program"] in guard.keep:
        return "program %s is in keep" % holder["program"]
    if holder["unit"] is not None and holder["unit"] == guard.unit:
        return "its unit %s runs this module too" % holder["unit"]
    return None


def listening():
    """The TCP listeners of `ss -ltnpH` (_triage.parse_ss); PortsError when ss is missing or fails."""
    try:
        out, _err = _triage.Host().run(["ss", "-ltnpH"])
    except _triage.Skipped:
        raise PortsError("ss is not installed (package iproute2): cannot tell which process holds a port") from None
    except _triage.CheckFailed as exc:
        raise PortsError("cannot list the listening sockets: %s" % exc) from None
    return _triage.parse_ss(out)


def holders(listeners, ports, guard, proc=PROC):
    """Every process listening on one of `ports` (a holder per port, address and pid), described from /proc, each
    with `kept` (the reason it is never stopped, or None). A process gone since ss listed it is left out."""
    found = []
    for listener in listeners:
        if listener["port"] not in ports:
            continue
        base = dict(port=listener["port"], address=listener["address"])
        processes = {process["pid"]: process["program"] for process in listener["processes"]}
        if not processes:
            found.append(dict(base, pid=None, program=None, user=None, started=None, unit=None, cmdline=None, kernel_thread=False))
        for pid, program in sorted(processes.items()):
            details = describe(pid, proc)
            if details is not None:
                found.append(dict(base, pid=pid, program=program, **details))
    for holder in found:
        holder["kept"] = protection(holder, guard)
    # Stopping a unit stops every process in it: a unit that also runs a kept holder is never stopped.
    kept_units = {holder["unit"]: holder for holder in found if holder["kept"] and holder["unit"]}
    for holder in found:
        if holder["kept"] is None and holder["unit"] in kept_units:
            other = kept_units[holder["unit"]]
            holder["kept"] = "its unit %s also runs kept %s pid %d" % (holder["unit"], other["program"], other["pid"])
    found.sort(key=lambda holder: (holder["port"], holder["address"], holder["pid"] or 0))
    return found


def action(holder):
    """How a holder that is not kept is stopped: its service unit with systemctl (killing a service's process makes
    systemd restart it), any other process with SIGTERM. None for a kept holder."""
    if holder["kept"] is not None:
        return None
    return STOP_UNIT if holder["unit"] else TERM


# --------------------------------------------------------------------------------------------------- stop
def signal_process(pid, started, signum, proc=PROC):
    """Send `signum` to `pid` only while it is the process that was read (same start time): True when sent, False
    when it is gone or the pid now belongs to another process. The pidfd is opened before the start time is read, so
    the signal reaches the process whose start time matched, never one that took its pid since."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (Python before 3.9, Linux before 5.3): a check, then kill
        if start_time(pid, proc) != started:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
    try:
        if start_time(pid, proc) != started:
            return False
        signal.pidfd_send_signal(handle, signum)
    except ProcessLookupError:
        return False
    finally:
        os.close(handle)
    return True


def systemd_running():
    return os.path.isdir("/run/systemd/system")


def stop_unit(unit):
    """Queue the stop job of `unit` (`systemctl stop --no-block`); the caller waits for the ports. PortsError when
    systemctl refuses (the unit unknown, no systemd)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise PortsError("systemctl is not installed: cannot stop unit %s" % unit)
    try:
        res = subprocess.run([systemctl, "stop", "--no-block", "--", unit], capture_output=True, timeout=SYSTEMCTL_TIMEOUT,
                             check=False, stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C", SYSTEMD_PAGER=""))
    except subprocess.TimeoutExpired:
        raise PortsError("systemctl stop %s did not answer within %d s" % (unit, SYSTEMCTL_TIMEOUT)) from None
    if res.returncode != 0:
        raise PortsError("systemctl stop %s exited %d: %s" % (unit, res.returncode, res.stderr.decode("utf-8", "replace").strip()[:200]))


def still_held(ports, guard, read=listening, proc=PROC):
    """The holders of `ports` that are not kept, read again."""
    return [holder for holder in holders(read(), ports, guard, proc) if holder["kept"] is None]


def wait_free(ports, guard, timeout, read=listening, proc=PROC):
    """The holders not kept still on `ports` after up to `timeout` seconds (empty once none is left)."""
    deadline = time.monotonic() + timeout
    remaining = still_held(ports, guard, read, proc)
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL)
        remaining = still_held(ports, guard, read, proc)
    return remaining


# ---------------------------------------------------------------------------------------------------- text
def _who(holder):
    return "%s pid %d" % (holder["program"], holder["pid"]) if holder["pid"] is not None else "an unnamed process"


def _steps(found):
    """What stopping does, once per unit and pid: 'stop apache2.service', 'term python3 pid 4242'."""
    steps = []
    for holder in found:
        if holder["action"] == STOP_UNIT:
            step = "stop %s" % holder["unit"]
        elif holder["action"] == TERM:
            step = "term %s" % _who(holder)
        else:
            continue
        if step not in steps:
            steps.append(step)
    return steps


def _kept_reason(kept):
    """`held by docker-proxy pid 999, kept: program docker-proxy is in keep`, once per process."""
    parts = []
    for holder in kept:
        part = "%s, kept: %s" % (_who(holder), holder["kept"])
        if part not in parts:
            parts.append(part)
    return "held by " + "; ".join(parts)


def _ports(ports):
    return ("port " if len(ports) == 1 else "ports ") + ", ".join("%d" % port for port in ports)


def _not_freed(ports, found):
    """[{'port', 'reason'}] of the ports a kept holder still holds once the others are stopped."""
    items = []
    for port in ports:
        kept = [holder for holder in found if holder["port"] == port and holder["kept"] is not None]
        if kept:
            items.append(dict(port=port, reason=_kept_reason(kept)))
    return items


def _kept_text(not_freed):
    return "; not freed: %s" % "; ".join("port %d %s" % (item["port"], item["reason"]) for item in not_freed) if not_freed else ""


# ----------------------------------------------------------------------------------------------------- run
def _identity(holder):
    return holder["pid"], holder["started"]


def _listed(found):
    return [{name: holder[name] for name in FIELDS} for holder in found]


def run(params, check_mode=False, guard=None, read=listening, proc=PROC):
    """The module's result. PortsError for a refused input or unreadable ports (nothing stopped); NotFreed when a
    port is still held by a process that is not kept after the stop (with `result`)."""
    chosen = check_params(params)
    ports, state = chosen["ports"], params["state"]
    guard = guard or Guard(chosen["keep"])
    found = holders(read(), ports, guard, proc)
    for holder in found:
        holder.update(action=action(holder), killed=False)
    foreign = [holder for holder in found if holder["action"]]
    foreign_ports = sorted({holder["port"] for holder in foreign})
    not_freed = _not_freed(ports, found)
    result = dict(changed=False, state=state, ports=ports, holders=_listed(found), freed=[], not_freed=not_freed)
    if params.get("incident_id") is not None:
        result["incident_id"] = params["incident_id"]
    if not foreign:
        result["msg"] = "no process to stop on %s%s" % (_ports(ports), _kept_text(not_freed))
        return result
    would_free = [port for port in foreign_ports if port not in {item["port"] for item in not_freed}]
    steps = ", ".join(_steps(found))
    if state == "report":
        result["msg"] = "%s held by %s; state=absent would %s%s" % (
            _ports(foreign_ports), ", ".join(sorted({_who(holder) for holder in foreign})), steps, _kept_text(not_freed))
        return result
    if check_mode:
        result.update(changed=True, freed=would_free, msg="check mode: would %s to free %s; nothing was stopped%s" % (
            steps, _ports(foreign_ports), _kept_text(not_freed)))
        return result
    if any(holder["action"] == STOP_UNIT for holder in foreign) and not systemd_running():
        raise PortsError("%s runs in a systemd unit, but systemd is not running here (no /run/systemd/system)" % ", ".join(
            "%s (%s)" % (_who(holder), holder["unit"]) for holder in foreign if holder["action"] == STOP_UNIT))
    done, acted = [], set()  # what was done, in words; the identities of the holders it reached
    try:
        for unit in sorted({holder["unit"] for holder in foreign if holder["action"] == STOP_UNIT}):
            stop_unit(unit)
            done.append("stop %s" % unit)
            acted.update(_identity(holder) for holder in foreign if holder["unit"] == unit)
        for holder in foreign:
            if holder["action"] == TERM and _identity(holder) not in acted and signal_process(holder["pid"], holder["started"], signal.SIGTERM, proc):
                done.append("term %s" % _who(holder))
                acted.add(_identity(holder))
    except PortsError as exc:
        result["changed"] = bool(done)
        raise NotFreed("%s; done before: %s" % (exc, ", ".join(done) if done else "nothing (nothing was changed)"), result) from None
    result["changed"] = bool(done)

    def wait():
        try:
            return wait_free(ports, guard, params["timeout"], read, proc)
        except (PortsError, OSError, ValueError) as exc:
            raise NotFreed("done: %s; but cannot see whether %s are free: %s" % (", ".join(done) if done else "nothing", _ports(ports), exc),
                           result) from None

    remaining = wait()
    if remaining and params["force"]:
        killed = set()
        for holder in remaining:
            if _identity(holder) in acted and _identity(holder) not in killed and signal_process(holder["pid"], holder["started"], signal.SIGKILL, proc):
                killed.add(_identity(holder))
                done.append("kill %s" % _who(holder))
        for holder in found:
            holder["killed"] = _identity(holder) in killed
        result["changed"] = result["changed"] or bool(killed)
        if killed:
            remaining = wait()
    result["holders"] = _listed(found)
    held = sorted({holder["port"] for holder in remaining})
    result["freed"] = [port for port in would_free if port not in held and any(
        holder["port"] == port and _identity(holder) in acted for holder in foreign)]
    result["not_freed"] = sorted(not_freed + [dict(port=port, reason="still held after %d s by %s" % (
        params["timeout"], ", ".join(sorted({_who(holder) for holder in remaining if holder["port"] == port})))) for port in held],
        key=lambda item: item["port"])
    if remaining:
        stubborn = sorted({_who(holder) for holder in remaining if _identity(holder) in acted})
        newcomers = sorted({_who(holder) for holder in remaining if _identity(holder) not in acted})
        why = []
        if stubborn:
            hint = "even after SIGKILL" if params["force"] else "it ignores SIGTERM? force=true sends SIGKILL after timeout"
            why.append("%s did not exit (%s)" % (", ".join(stubborn), hint))
        if newcomers:
            why.append("%s took the port since (restarted by a supervisor?)" % ", ".join(newcomers))
        raise NotFreed("%s still held after %d s: %s; done: %s" % (
            _ports(held), params["timeout"], "; ".join(why), ", ".join(done) if done else "nothing"), result)
    result["msg"] = "freed %s for %s: %s%s" % (
        _ports(result["freed"]) if result["freed"] else "no port", params["incident_id"],
        ", ".join(done) if done else "the holders had exited already", _kept_text(not_freed))
    return result
