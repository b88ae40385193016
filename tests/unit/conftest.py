# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures for the unit tests."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg2", reason="psycopg2 is needed to talk to the test PostgreSQL server")
    if not (PG_BINDIR / "initdb").is_file() or not (PG_BINDIR / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BINDIR} (set PG_BINDIR)")
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        # initdb refuses to run as root, so the cluster belongs to the postgres OS user.
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root but there is no 'postgres' OS user to own the test cluster")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="pg-test-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, sockets, port = base / "data", base / "sockets", _free_port()
    sockets.mkdir()
    if owner is not None:
        os.chown(sockets, owner.pw_uid, owner.pw_gid)

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=base)

    try:
        pg(str(PG_BINDIR / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
        # Durability is pointless for a throwaway cluster; turning it off keeps the tests fast.
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        pg(str(PG_BINDIR / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-o", options, "-w", "-t", "30", "start")
    except subprocess.CalledProcessError as exc:
        log = base / "postgres.log"
        details = exc.stderr.decode(errors="replace") + (log.read_text(errors="replace") if log.exists() else "")
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {details}")
    try:
        yield PostgresServer(str(sockets), port)
    finally:
        subprocess.run([*run_as, str(PG_BINDIR / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], check=False, capture_output=True, cwd=base)
        shutil.rmtree(base, ignore_errors=True)
