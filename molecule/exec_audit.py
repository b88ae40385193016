# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every program started on this machine, from the kernel's audit records of execve: the controller, the scenario's
host containers and the containers nested in them share one kernel, so one rule sees all of them. Nothing is
sampled: a process that lives a millisecond is recorded as well as a long one, and a record the kernel could not
deliver is counted (`lost`), which fails the capture instead of passing it with a hole."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid

# a0="plain" | a0=HEX (an argument with spaces, quotes or bytes outside ASCII) | a1[0]=... (a long one, in parts).
_ARG = re.compile(r' a(\d+)(?:\[(\d+)\])?=("[^"]*"|[0-9A-F]+|\(null\))')
_EVENT = re.compile(r"msg=audit\((\d+\.\d+):(\d+)\)")


def _auditctl(*args: str) -> str:
    return subprocess.run(["auditctl", *args], capture_output=True, text=True, check=True).stdout


def _lost() -> int:
    return int(re.search(r"^lost (\d+)$", _auditctl("-s"), re.M).group(1))


def _value(token: str) -> bytes:
    if token.startswith('"'):
        return token[1:-1].encode()
    return b"" if token == "(null)" else bytes.fromhex(token)


def parse(raw: str) -> list[tuple[float, list[bytes]]]:
    """(time, argv) of each execve in raw audit log lines (an event's EXECVE records joined, parts in order)."""
    events: dict[str, tuple[float, dict[int, dict[int, bytes]]]] = {}
    for line in raw.splitlines():
        if not line.startswith("type=EXECVE "):
            continue
        stamp, serial = _EVENT.search(line).groups()
        args = events.setdefault(serial, (float(stamp), {}))[1]
        for index, part, token in _ARG.findall(line):
            args.setdefault(int(index), {})[int(part or 0)] = _value(token)
    return [(stamp, [b"".join(parts[i] for i in sorted(parts)) for _index, parts in sorted(args.items())])
            for stamp, args in events.values()]


# When no auditd runs (CI: no systemd), one is started with this configuration and left running, as dockerd is:
# one log that does not rotate during a suite, so a run's records are all in it.
AUDITD_DIR = "/run/runbooks-molecule-auditd"
AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = /var/log/runbooks-molecule-audit.log
log_format = RAW
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 4096
num_logs = 2
max_log_file_action = ROTATE
space_left = 75
space_left_action = SYSLOG
admin_space_left = 50
admin_space_left_action = SYSLOG
disk_full_action = SYSLOG
disk_error_action = SYSLOG
"""


def _running() -> bool:
    return not re.search(r"^pid 0$", _auditctl("-s"), re.M)


def log_file() -> str:
    """The log the running auditd writes: this suite's, or a system auditd's own (its auditd.conf)."""
    conf = os.path.join(AUDITD_DIR, "auditd.conf") if os.path.exists(os.path.join(AUDITD_DIR, "auditd.conf")) else "/etc/audit/auditd.conf"
    with open(conf, encoding="utf-8") as handle:
        found = re.search(r"^\s*log_file\s*=\s*(\S+)", handle.read(), re.M)
    return found.group(1) if found else "/var/log/audit/audit.log"


def ensure_auditd() -> None:
    if os.geteuid() != 0 or not shutil.which("auditctl"):
        raise RuntimeError("capturing every exec needs root and auditd (apt install auditd; make deps installs it)")
    if _running():
        return
    os.makedirs(AUDITD_DIR, mode=0o750, exist_ok=True)
    conf = os.path.join(AUDITD_DIR, "auditd.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(AUDITD_CONF)
    os.chmod(conf, 0o640)
    subprocess.run(["auditd", "-c", AUDITD_DIR], check=True)
    deadline = time.monotonic() + 10
    while not _running():
        if time.monotonic() > deadline:
            raise RuntimeError("auditd did not start")
        time.sleep(0.1)


# A capture's rules carry its process id in their key: the rules of a process that died before stop() (a test run
# killed) would go on recording every exec on the machine into the log for ever.
KEY_PREFIX = "runbooks-molecule-"
_RULE_KEY = re.compile(r"key=" + re.escape(KEY_PREFIX) + r"(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_rules() -> list[str]:
    """Delete the capture rules whose process is gone; the rules removed."""
    stale = [line for line in _auditctl("-l").splitlines() if (found := _RULE_KEY.search(line)) and not _alive(int(found.group(1)))]
    for line in stale:
        _auditctl("-d", *line.split()[1:])
    return stale


class ExecAudit:
    """Every exec between start() and stop(): an audit rule on execve while it exists, and the records the log
    gained meanwhile (whichever rule made them: two captures may overlap). Needs root and the audit framework
    (Debian's auditd; ensure_auditd() starts one when none runs)."""

    def __init__(self) -> None:
        self.key = f"{KEY_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # execveat too: fexecve() (systemd 255 starts services with it) is an execveat.
        self.rules = [["-F", f"arch={arch}", "-S", "execve", "-S", "execveat", "-k", self.key] for arch in ("b64", "b32")]
        self.lost = self.offset = self.inode = 0
        self.log = ""

    def start(self) -> "ExecAudit":
        ensure_auditd()
        remove_stale_rules()
        # Room for the bursts of a playbook run: a full backlog loses records (counted below).
        _auditctl("-b", "65536")
        self.log = log_file()
        info = os.stat(self.log)
        self.lost, self.offset, self.inode = _lost(), info.st_size, info.st_ino
        for rule in self.rules:
            _auditctl("-a", "always,exit", *rule)
        return self

    def stop(self) -> list[tuple[float, list[bytes]]]:
        """Remove the rule; (time, argv) of every exec since start()."""
        for rule in self.rules:
            _auditctl("-d", "always,exit", *rule)
        lost = _lost() - self.lost
        if lost:
            raise RuntimeError(f"the kernel lost {lost} audit record(s) while execs were captured: an exec may be missing")
        # auditd writes the records in the order the kernel sent them: once the removals of this capture's rules are in
        # the log, so is every exec they recorded.
        removed = f'op=remove_rule key="{self.key}"'
        deadline = time.monotonic() + 60
        while True:
            if os.stat(self.log).st_ino != self.inode:
                raise RuntimeError(f"{self.log} was rotated while execs were captured: some may be missing")
            with open(self.log, "rb") as handle:
                handle.seek(self.offset)
                raw = handle.read().decode(errors="replace")
            if raw.count(removed) >= len(self.rules):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the removal of the capture's audit rules did not reach {self.log} in 60 s: execs may be missing")
            time.sleep(0.1)
        return parse(raw)
