# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""port_holders against real processes: listeners started here (a socket bound on a free port, `ready` printed, then
asleep; one ignores SIGTERM, one carries a token in its command line, one listens on IPv4 and IPv6) are named with
their pid, program, user and start time, left alone in report and check mode and by `keep`, stopped by state=absent
(SIGTERM, and SIGKILL with force after timeout) and not again by a second run.

The guards (pid 1, the module's own process and ancestors, a kernel thread, the module's unit) and the identity check
(a pid whose start time changed is not signalled) are tested on their functions; the unit a process runs in on the
text of /proc/<pid>/cgroup (cgroup v2, v1, a login session's scope, a container's).

`systemctl stop` cannot run here (no systemd on this machine): which action each holder gets, that a unit is stopped
once and that a unit running a kept holder is never stopped are tested with systemctl replaced by a recorder and a
/proc tree written for the purpose; the stop itself is left to a molecule scenario where systemd runs (the service
not starting scenario, not written yet).

Nothing waits a fixed time: a listener is used once it printed `ready` (its socket listens then), and a process's
end is waited for with a deadline."""
from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _port_holders, _triage

DEADLINE = 30  # seconds a process may take to start listening or to end

LISTENER = """
import signal, socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sockets = [socket.socket(socket.AF_INET)]
if mode == "dual-stack":
    sockets.append(socket.socket(socket.AF_INET6))
    sockets[1].setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
sockets[0].bind(("127.0.0.1", port))
if mode == "dual-stack":
    sockets[1].bind(("::1", port))
for sock in sockets:
    sock.listen()
print("ready", flush=True)
while True:
    time.sleep(60)
"""


class Listener:
    """A python process listening on `port` (127.0.0.1; with dual-stack also ::1), extra words in its argv. The code is
    a script, so that the command line stays short (a signature is cut at 160 characters)."""

    def __init__(self, script, port, mode="plain", extra=()):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, str(script), str(port), mode, *extra], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", "the listener did not start (%r, exit %s)" % (line, self.proc.poll())

    @property
    def pid(self):
        return self.proc.pid

    def comm(self):
        with open("/proc/%d/comm" % self.pid, encoding="utf-8") as handle:
            return handle.read().strip()

    def started(self):
        with open("/proc/%d/stat" % self.pid, encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])

    def alive(self):
        return self.proc.poll() is None

    def ended(self):
        """How the process ended (its negative signal number), waiting for it at most DEADLINE seconds."""
        return self.proc.wait(DEADLINE)

    def stop(self):
        if self.alive():
            self.proc.kill()
        self.proc.wait(DEADLINE)
        self.proc.stdout.close()


@pytest.fixture(name="listener")
def listener_fixture(free_port, tmp_path):
    script = tmp_path / "listener.py"
    script.write_text(LISTENER)
    started = []

    def start(mode="plain", extra=()):
        started.append(Listener(script, free_port(), mode, extra))
        return started[-1]
    yield start
    for item in started:
        item.stop()


def params(port, **kwargs):
    return dict(dict(ports=[port], state="report", keep=list(_triage.DOCKER_PROXIES), timeout=15, force=False, incident_id=None),
                **kwargs)


def held(port):
    """The pids ss shows on `port`."""
    return sorted(process["pid"] for item in _port_holders.listening() if item["port"] == port for process in item["processes"])


# --------------------------------------------------------------------------------------------- real processes
def test_report_names_pid_program_user_and_start_time(listener):
    served = listener()
    result = _port_holders.run(params(served.port))
    assert result["changed"] is False and result["freed"] == [] and result["not_freed"] == []
    (holder,) = result["holders"]
    assert holder == dict(port=served.port, address="127.0.0.1", pid=served.pid, program=served.comm(),
                          user=pwd.getpwuid(os.geteuid()).pw_name, started=served.started(), unit=None,
                          cmdline=holder["cmdline"], kept=None, action="term", killed=False)
    assert holder["cmdline"].startswith("/") and holder["cmdline"].endswith("/listener.py <n> plain"), holder["cmdline"]
    assert "state=absent would term %s pid %d" % (served.comm(), served.pid) in result["msg"]
    assert served.alive()


def test_a_process_on_ipv4_and_ipv6_is_named_twice_and_stopped_once(listener, run_module):
    served = listener("dual-stack")
    result = run_module("port_holders", dict(ports=[served.port], state="absent", incident_id="INC-1"))
    assert [(holder["address"], holder["pid"]) for holder in result["holders"]] == [("127.0.0.1", served.pid), ("[::1]", served.pid)]
    assert result["changed"] is True and result["freed"] == [served.port]
    assert result["msg"].count("term ") == 1, result["msg"]
    assert served.ended() == -signal.SIGTERM


def test_check_run_check_run_frees_the_port_once(listener, run_module):
    served = listener()
    args = dict(ports=[served.port], state="absent", incident_id="INC-2026-0042")
    check = run_module("port_holders", args, check_mode=True)
    assert check["changed"] is True and check["freed"] == [served.port], check
    assert [holder["action"] for holder in check["holders"]] == ["term"]
    assert "nothing was stopped" in check["msg"] and served.alive() and held(served.port) == [served.pid]

    done = run_module("port_holders", args)
    assert done["changed"] is True and done["freed"] == [served.port] and done["not_freed"] == [], done
    assert done["incident_id"] == "INC-2026-0042" and "INC-2026-0042" in done["msg"]
    assert served.ended() == -signal.SIGTERM and held(served.port) == []

    for check_mode in (True, False):
        again = run_module("port_holders", args, check_mode=check_mode)
        assert again["changed"] is False and again["holders"] == [] and again["freed"] == [], again


def test_a_holder_ignoring_sigterm_fails_the_run_without_force_and_is_killed_with_force(listener, run_module):
    stubborn = listener("ignore-term")
    args = dict(ports=[stubborn.port], state="absent", incident_id="INC-3", timeout=1)
    failed = run_module("port_holders", args)
    assert failed.get("failed") and failed["changed"] is True, failed  # SIGTERM was sent
    assert "pid %d did not exit" % stubborn.pid in failed["msg"] and "force=true" in failed["msg"]
    assert failed["not_freed"] == [dict(port=stubborn.port, reason="still held after 1 s by %s pid %d" % (stubborn.comm(), stubborn.pid))]
    assert stubborn.alive() and held(stubborn.port) == [stubborn.pid]

    forced = run_module("port_holders", dict(args, force=True))
    assert not forced.get("failed") and forced["changed"] is True and forced["freed"] == [stubborn.port], forced
    assert [holder["killed"] for holder in forced["holders"]] == [True] and "kill " in forced["msg"]
    assert stubborn.ended() == -signal.SIGKILL


def test_a_token_in_a_command_line_is_never_returned(listener, run_module):
    token = secrets.token_hex(16)
    assert len(token) == 32
    served = listener(extra=(token, "--token=" + token[:20]))
    result = run_module("port_holders", dict(ports=[served.port]))
    (holder,) = result["holders"]
    assert holder["cmdline"].endswith(" <n> plain <token> --token=<secret>"), holder["cmdline"]
    assert token not in json.dumps(result) and token[:20] not in json.dumps(result)


@pytest.mark.parametrize("argv, shown", [
    (["/usr/bin/python3", "-m", "http.server", "80"], "/usr/bin/python<n> -m http.server <n>"),  # an existing path is a path
    (["/usr/sbin/apache2-" + "a1" * 20, "-k", "start"], "<token> -k start"),  # a path that does not exist is masked whole
    (["app", "--password", "hunter2", "--db-token", "x", "--token=abc/def"], "app --password <secret> --db-token <secret> --token=<secret>"),
    (["curl", "-H", "Authorization: Bearer abc/defghijkl", "https://u:pw@db:5432/x"],
     "curl -H Authorization: Bearer <secret> https://<credentials>@db:<n>/x"),
    (["x", "abcdEFGH12/xyzXYZ789+/aa=="], "x <token>"),  # a token holding a / is one token
    (["/bin/sh", "-c", "echo 'hi there' 42"], "/bin/sh -c echo <str> <n>"),
])
def test_a_command_line_is_shown_as_a_signature(argv, shown):
    assert _port_holders.masked_cmdline(argv) == shown


def test_keep_protects_a_program_and_its_port_is_reported_not_freed(listener, run_module):
    served = listener()
    result = run_module("port_holders", dict(ports=[served.port], state="absent", incident_id="INC-4", keep=[served.comm()]))
    assert result["changed"] is False and result["freed"] == [], result
    (holder,) = result["holders"]
    assert holder["kept"] == "program %s is in keep" % served.comm() and holder["action"] is None
    assert result["not_freed"] == [dict(port=served.port, reason="held by %s pid %d, kept: program %s is in keep" % (
        served.comm(), served.pid, served.comm()))]
    assert served.alive()


def test_a_port_nobody_holds_is_unchanged(free_port, run_module):
    port = free_port()
    result = run_module("port_holders", dict(ports=[port, port], state="absent", incident_id="INC-5"))
    assert result["changed"] is False and result["ports"] == [port] and result["holders"] == [] and result["not_freed"] == []


def test_without_ss_it_fails_saying_so_and_changes_nothing(listener, run_module, tmp_path, monkeypatch):
    served = listener()
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_module("port_holders", dict(ports=[served.port], state="absent", incident_id="INC-6"))
    assert result["failed"] and "ss is not installed" in result["msg"] and "nothing was changed" in result["msg"]
    assert served.alive()


@pytest.mark.parametrize("bad, words", [
    (dict(ports=[]), "at least one port"),
    (dict(ports=[0]), "each of ports is 0"),
    (dict(ports=[65536]), "each of ports is 65536"),
    (dict(ports=list(range(1000, 1033))), "at most 32"),
    (dict(state="absent"), "state=absent needs incident_id"),
    (dict(incident_id="INC 1; rm"), "incident_id 'INC 1; rm' is not valid"),
    (dict(incident_id="x" * 65), "is not valid"),
    (dict(keep=["docker proxy"]), "is not a program name"),
    (dict(keep=[""]), "is not a program name"),
    (dict(timeout=0), "timeout is 0"),
    (dict(timeout=601), "timeout is 601"),
])
def test_refused_options_say_why_and_that_nothing_changed(run_module, bad, words):
    result = run_module("port_holders", dict(dict(ports=[80]), **bad))
    assert result["failed"] and words in result["msg"] and "nothing was changed" in result["msg"], result


# ------------------------------------------------------------------------------------------------- guards
def holder(pid, program="python3", unit=None, kernel_thread=False):
    return dict(port=80, address="0.0.0.0", pid=pid, program=program, user="root", started=1, unit=unit, cmdline=None,
                kernel_thread=kernel_thread)


def test_the_module_never_stops_pid_1_itself_its_ancestors_a_kernel_thread_or_its_unit():
    own = _port_holders.lineage()
    assert {os.getpid(), os.getppid()} <= own
    guard = _port_holders.Guard(keep=["docker-proxy"], own=own, unit="runner.service")
    assert _port_holders.protection(holder(1), guard) == "pid 1, the init process"
    assert _port_holders.protection(holder(os.getpid()), guard) == "the module's own process or one of its ancestors"
    assert _port_holders.protection(holder(os.getppid()), guard) == "the module's own process or one of its ancestors"
    assert _port_holders.protection(holder(4242, kernel_thread=True), guard) == "a kernel thread (no command line)"
    assert _port_holders.protection(holder(4242, program="docker-proxy"), guard) == "program docker-proxy is in keep"
    assert _port_holders.protection(holder(4242, unit="runner.service"), guard) == "its unit runner.service runs this module too"
    assert "ss names no process" in _port_holders.protection(holder(None), guard)
    assert _port_holders.protection(holder(4242, unit="apache2.service"), guard) is None


def test_a_pid_whose_start_time_changed_is_not_signalled(monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = _port_holders.start_time(sleeper.pid)
        assert started is not None
        assert _port_holders.signal_process(sleeper.pid, started + 1, signal.SIGTERM) is False
        with monkeypatch.context() as patched:  # the path without pidfd (older Python or kernel) checks the same
            patched.delattr(os, "pidfd_open")
            assert _port_holders.signal_process(sleeper.pid, started + 1, signal.SIGTERM) is False
        assert sleeper.poll() is None
        assert _port_holders.signal_process(sleeper.pid, started, signal.SIGTERM) is True
        assert sleeper.wait(DEADLINE) == -signal.SIGTERM
        assert _port_holders.signal_process(sleeper.pid, started, signal.SIGTERM) is False  # gone (reaped)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


# ----------------------------------------------------------------------------------------------------- units
CGROUP_V1 = """12:pids:/system.slice/apache2.service
11:memory:/system.slice/apache2.service
4:cpu,cpuacct:/system.slice/apache2.service
1:name=systemd:/system.slice/apache2.service
0::/system.slice/apache2.service
"""


@pytest.mark.parametrize("text, unit", [
    ("0::/system.slice/apache2.service\n", "apache2.service"),
    ("0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service"),
    ("0::/system.slice/containerd.service/sub\n", "containerd.service"),  # a sub-cgroup the service made
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),  # a login session
    ("0::/system.slice/docker-" + "ab12" * 16 + ".scope\n", None),  # a container
    ("0::/system.slice/docker-" + "ab12" * 16 + ".scope/system.slice/nginx.service\n", None),  # a container's own systemd
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/http.service\n", None),  # a user's service manager
    ("0::/init.scope\n", None),
    ("0::/\n", None),
    (CGROUP_V1, "apache2.service"),
    ("12:pids:/\n1:name=systemd:/system.slice/nginx.service\n", "nginx.service"),  # v1: systemd's hierarchy wins
    ("4:memory:/docker/" + "ab12" * 16 + "\n1:name=systemd:/docker/" + "ab12" * 16 + "\n", None),  # cgroupfs driver
    ("", None),
])
def test_the_unit_is_read_from_proc_cgroup(text, unit):
    assert _port_holders.unit_of(text) == unit


class FakeProc:
    """A /proc tree for processes that do not exist here (in units of a systemd that does not run here)."""

    def __init__(self, root):
        self.root = root

    def add(self, pid, unit, comm="apache2", uid=33):
        base = self.root / str(pid)
        base.mkdir()
        (base / "stat").write_text("%d (%s) S 1 %d %d 0 -1 4194560 %s 1000 0 0\n" % (pid, comm, pid, pid, " ".join(["0"] * 12)))
        (base / "status").write_text("Name:\t%s\nUid:\t%d\t%d\t%d\t%d\n" % (comm, uid, uid, uid, uid))
        (base / "cmdline").write_bytes(b"/usr/sbin/%s\0-k\0start\0" % comm.encode())
        (base / "cgroup").write_text("0::/system.slice/%s\n" % unit)
        return self


def test_a_holder_in_a_service_unit_is_stopped_with_systemctl_once_per_unit(tmp_path, monkeypatch):
    """apache2.service's parent and worker hold 80 and 443 (on IPv4 and IPv6): one `systemctl stop`. docker-proxy
    (kept) holds 8443 from docker.service, where a helper also listens on 8080: docker.service is never stopped."""
    proc = FakeProc(tmp_path).add(700, "apache2.service", uid=0).add(701, "apache2.service")
    proc.add(900, "docker.service", comm="docker-proxy", uid=0).add(901, "docker.service", comm="helper", uid=0)
    apache = "".join("LISTEN 0 511 %s:%d %s:* users:((\"apache2\",pid=700,fd=4),(\"apache2\",pid=701,fd=4))\n" % (address, port, address)
                     for port in (80, 443) for address in ("0.0.0.0", "[::]"))
    docker = ("LISTEN 0 4096 0.0.0.0:8443 0.0.0.0:* users:((\"docker-proxy\",pid=900,fd=4))\n"
              "LISTEN 0 4096 0.0.0.0:8080 0.0.0.0:* users:((\"helper\",pid=901,fd=4))\n")
    stopped = []
    monkeypatch.setattr(_port_holders, "systemd_running", lambda: True)
    monkeypatch.setattr(_port_holders, "stop_unit", stopped.append)
    monkeypatch.setattr(_port_holders, "signal_process", lambda *args: pytest.fail("no process is signalled: %r" % (args,)))

    def read():  # apache2's processes are gone once its unit was stopped
        return _triage.parse_ss(docker if stopped else apache + docker)

    guard = _port_holders.Guard(keep=_triage.DOCKER_PROXIES, own={1}, unit=None)
    args = params(80, ports=[80, 443, 8080, 8443], state="absent", incident_id="INC-7")
    planned = _port_holders.run(dict(args, state="report"), guard=guard, read=read, proc=str(tmp_path))
    actions = {(item["port"], item["address"], item["pid"]): (item["unit"], item["user"], item["action"], item["kept"]) for item in planned["holders"]}
    assert actions[(80, "0.0.0.0", 700)] == ("apache2.service", "root", "stop_unit", None)
    assert actions[(443, "[::]", 701)] == ("apache2.service", "www-data", "stop_unit", None)
    assert actions[(8443, "0.0.0.0", 900)] == ("docker.service", "root", None, "program docker-proxy is in keep")
    assert actions[(8080, "0.0.0.0", 901)] == ("docker.service", "root", None, "its unit docker.service also runs kept docker-proxy pid 900")
    assert "state=absent would stop apache2.service" in planned["msg"] and stopped == []

    done = _port_holders.run(args, guard=guard, read=read, proc=str(tmp_path))
    assert stopped == ["apache2.service"]
    assert done["changed"] is True and done["freed"] == [80, 443] and "stop apache2.service" in done["msg"]
    assert [item["port"] for item in done["not_freed"]] == [8080, 8443]


def test_a_holder_in_a_unit_is_refused_before_anything_stops_when_systemd_does_not_run(tmp_path, monkeypatch):
    FakeProc(tmp_path).add(700, "apache2.service")
    monkeypatch.setattr(_port_holders, "systemd_running", lambda: False)
    monkeypatch.setattr(_port_holders, "stop_unit", lambda unit: pytest.fail("stopped %s" % unit))

    def read():
        return _triage.parse_ss("LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:((\"apache2\",pid=700,fd=4))\n")
    guard = _port_holders.Guard(keep=_triage.DOCKER_PROXIES, own={1}, unit=None)
    with pytest.raises(_port_holders.PortsError, match="systemd is not running") as raised:
        _port_holders.run(params(80, state="absent", incident_id="INC-8"), guard=guard, read=read, proc=str(tmp_path))
    assert not isinstance(raised.value, _port_holders.NotFreed)


def test_stat_is_read_after_the_command_name_whatever_it_holds():
    text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 81234567 1000 0\n"
    assert _port_holders.parse_stat(text) == dict(ppid=1, started=81234567)
