# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_read_only against a real PostgreSQL: after state=read_only a new session of an application role can read but
not write (the server's own error), the sessions that were there are ended so they reconnect with it, a superuser's
is reported and left, and read_write gives the writes back. Check mode, a refusal over max_terminate and a refused
database change nothing; a second run changes nothing; the login password shows nowhere.

Nothing waits a fixed time: a state a test needs is polled for with a deadline."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys

import psycopg2
import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error

APP, OPERATOR = "pgr_app", "pgr_operator"
OPERATOR_PASSWORD = "ro-Pa55-never-shown-" + "z" * 12


@pytest.fixture(name="roles", scope="module")
def roles_fixture(pg_server):
    """An application role, and an operator that may signal and see others' sessions (its password checked over TCP)."""
    with contextlib.closing(pg_server.connect()) as connection, connection.cursor() as cur:
        connection.autocommit = True
        for role, options in ((APP, "LOGIN"), (OPERATOR, "LOGIN IN ROLE pg_signal_backend, pg_read_all_stats")):
            cur.execute("DO $$BEGIN CREATE ROLE %s %s; EXCEPTION WHEN duplicate_object THEN NULL; END$$" % (role, options))
        cur.execute("ALTER ROLE %s PASSWORD %%s" % OPERATOR, (OPERATOR_PASSWORD,))
    pg_server.check_password_of(OPERATOR)
    return pg_server


@pytest.fixture(name="db")
def db_fixture(roles, request):
    name = "pro_%s_%s" % (request.node.name.split("[")[0][-28:], hashlib.sha256(request.node.name.encode()).hexdigest()[:8])
    roles.create_database(name)
    with contextlib.closing(roles.connect(name)) as connection, connection.cursor() as cur:
        connection.autocommit = True
        cur.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT ALL ON t TO %s" % APP)
    return name


@pytest.fixture(name="conn")
def conn_fixture(pg_server, db):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR), db=db,
                incident_id="INC-2026-0042")


class Sessions:
    """Client sessions of the test (psycopg2, autocommit), and a superuser watcher; every one left is closed."""

    def __init__(self, server, db):
        self.server, self.db = server, db
        self.opened = []
        self.watcher = server.connect()
        self.watcher.autocommit = True

    def open(self, user=APP):
        connection = psycopg2.connect(host=self.server.host, port=self.server.port, user=user, dbname=self.db, application_name="test-app")
        connection.autocommit = True
        self.opened.append(connection)
        return connection

    @staticmethod
    def pid(connection):
        return connection.get_backend_pid()

    def alive(self, connection):
        with self.watcher.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (connection.get_backend_pid(),))
            return cur.fetchone() is not None

    def setting(self):
        """The database's own default_transaction_read_only, or None."""
        with self.watcher.cursor() as cur:
            cur.execute("SELECT c FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) c "
                        "WHERE d.datname = %s AND s.setrole = 0 AND c LIKE 'default_transaction_read_only=%%'", (self.db,))
            row = cur.fetchone()
        return row and row[0].split("=", 1)[1]

    def close(self):
        for connection in self.opened:
            connection.close()
        with self.watcher.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (self.db,))
        self.watcher.close()


@pytest.fixture(name="sessions")
def sessions_fixture(pg_server, db):
    sessions = Sessions(pg_server, db)
    yield sessions
    sessions.close()


def insert(connection):
    with connection.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2)")


def select_count(connection):
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        return cur.fetchone()[0]


def is_ended(connection):
    try:
        select_count(connection)
    except psycopg2.OperationalError:
        return True
    return False


# ------------------------------------------------------------------------------------------------ the change
def test_read_only_stops_the_writes_keeps_the_reads_and_read_write_gives_them_back(run_module, conn, sessions):
    before = sessions.open()
    pid = sessions.pid(before)
    result = run_module("pg_read_only", conn)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["previous"] == "read_write" and result["state"] == "read_only"
    assert result["terminated"] == [pid] and result["still_writable"] == [] and result["incident_id"] == "INC-2026-0042"
    assert is_ended(before) and sessions.setting() == "on"
    app = sessions.open()
    assert select_count(app) == 1
    with pytest.raises(psycopg2.Error, match="cannot execute INSERT in a read-only transaction"):
        insert(app)

    again = run_module("pg_read_only", conn)
    assert again["changed"] is False and again["previous"] == "read_only" and again["terminated"] == [], again
    assert sessions.alive(app) and "already" in again["msg"]

    back = run_module("pg_read_only", dict(conn, state="read_write"))
    assert back["changed"] is True and back["previous"] == "read_only" and back["terminated"] == [sessions.pid(app)], back
    assert sessions.setting() is None
    writer = sessions.open()
    insert(writer)
    assert select_count(writer) == 2
    assert run_module("pg_read_only", dict(conn, state="read_write"))["changed"] is False


def test_check_mode_changes_nothing_and_says_what_it_would_end(run_module, conn, sessions):
    app = sessions.open()
    result = run_module("pg_read_only", conn, check_mode=True, diff=True)
    assert result["changed"] is True and result["terminated"] == [], result
    assert "would set" in result["msg"] and str(sessions.pid(app)) in result["msg"]
    assert result["diff"] == {"before": {"db": conn["db"], "state": "read_write", "default_transaction_read_only": None},
                              "after": {"db": conn["db"], "state": "read_only", "default_transaction_read_only": "on"}}
    assert sessions.setting() is None and sessions.alive(app)
    insert(app)


def test_a_superuser_session_is_reported_still_writable_and_left_running(run_module, conn, sessions):
    superuser, app = sessions.open("postgres"), sessions.open()
    result = run_module("pg_read_only", conn)
    assert result["changed"] is True and result["terminated"] == [sessions.pid(app)], result
    assert result["still_writable"] == [dict(pid=sessions.pid(superuser), user="postgres", reason="superuser role postgres")]
    assert "still writable" in result["msg"]
    assert sessions.alive(superuser) and is_ended(app)
    insert(superuser)  # it started before the change: it still writes, which is why it is reported


def test_end_sessions_false_ends_none_and_lists_every_session_as_still_writable(run_module, conn, sessions):
    app = sessions.open()
    result = run_module("pg_read_only", dict(conn, end_sessions=False))
    assert result["changed"] is True and result["terminated"] == [] and sessions.alive(app), result
    assert result["still_writable"] == [dict(pid=sessions.pid(app), user=APP, reason="end_sessions=false")]
    assert sessions.setting() == "on"


def test_a_role_setting_that_overrides_the_database_is_warned_about(run_module, conn, sessions, pg_server):
    with sessions.watcher.cursor() as cur:
        cur.execute('ALTER ROLE %s IN DATABASE "%s" SET default_transaction_read_only = off' % (APP, conn["db"]))
    try:
        result = run_module("pg_read_only", conn)
        assert result["changed"] is True, result
        assert any(APP in warning and "stay writable" in warning for warning in result["warnings"]), result["warnings"]
        insert(sessions.open())  # the role's own setting wins, as warned
    finally:
        with contextlib.closing(pg_server.connect()) as connection, connection.cursor() as cur:
            connection.autocommit = True
            cur.execute('ALTER ROLE %s IN DATABASE "%s" RESET default_transaction_read_only' % (APP, conn["db"]))


# -------------------------------------------------------------------------------------------------- refusals
def test_more_sessions_than_max_terminate_are_refused_and_nothing_changes(run_module, conn, sessions):
    apps = [sessions.open() for _count in range(3)]
    result = run_module("pg_read_only", dict(conn, max_terminate=2))
    assert result.get("failed") and "more than max_terminate=2" in result["msg"] and "nothing was changed" in result["msg"], result
    assert result["changed"] is False and result["terminated"] == []
    assert sessions.setting() is None and all(sessions.alive(app) for app in apps)
    insert(apps[0])


@pytest.mark.parametrize("name", ["template1", "template0"])
def test_a_template_database_is_refused(run_module, conn, pg_server, name):
    result = run_module("pg_read_only", dict(conn, db=name))
    assert result.get("failed") and "template database" in result["msg"] and "nothing was changed" in result["msg"], result
    with contextlib.closing(pg_server.connect()) as connection, connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s", (name,))
        assert cur.fetchone()[0] == 0


@pytest.mark.parametrize("params, message", [
    (dict(db="pro_no_such_database"), "does not exist"),
    (dict(db="bad;name"), "not accepted"),
    (dict(max_terminate=-1), "max_terminate"),
    (dict(incident_id="bad id!"), "incident_id"),
])
def test_a_wrong_input_fails_clearly_and_changes_nothing(run_module, conn, sessions, params, message):
    app = sessions.open()
    result = run_module("pg_read_only", dict(conn, **params))
    assert result.get("failed") and message in result["msg"], result
    assert sessions.setting() is None and sessions.alive(app)


# ---------------------------------------------------------------------------------------------------- secrets
def test_the_login_password_never_shows_in_the_result_the_output_or_argv(ansible_play, sessions, pg_server, db, tmp_path):
    """The database's owner, no superuser, whose password PostgreSQL checks, sets it read-only through
    ansible-playbook (-vvv, diff, check mode then for real); psql is a shim recording its argv."""
    with sessions.watcher.cursor() as cur:
        cur.execute('ALTER DATABASE "%s" OWNER TO %s' % (db, OPERATOR))
    argv_log, shim_dir = tmp_path / "argv.jsonl", tmp_path / "bin"
    shim_dir.mkdir()
    real = PG_BINDIR / "psql"
    (shim_dir / "psql").write_text("#!%s\nimport json, os, sys\nwith open(%r, 'a') as log:\n    log.write(json.dumps(sys.argv) + '\\n')\n"
                                   "os.execv(%r, [%r] + sys.argv[1:])\n" % (sys.executable, str(argv_log), str(real), str(real)))
    (shim_dir / "psql").chmod(0o755)
    app = sessions.open()
    wrong = subprocess.run([str(real), "-X", "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", OPERATOR, "-d", db, "-c", "SELECT 1"],
                           capture_output=True, text=True, check=False, env=dict(os.environ, PGPASSWORD="not-the-password", PGCONNECT_TIMEOUT="10"))
    assert "password authentication failed" in wrong.stderr  # the password really is checked
    task = {"runbooks.incident.pg_read_only": dict(login_host="127.0.0.1", login_port=pg_server.port, login_user=OPERATOR,
                                                   login_password=OPERATOR_PASSWORD, pg_bin_dir=str(shim_dir), db=db,
                                                   incident_id="INC-2026-0042"),
            "name": "read only", "register": "done"}
    dry = ansible_play([task], check=True, diff=True, verbosity=3)
    assert dry.rc == 0, dry.stdout + dry.stderr
    assert dry["read only"]["changed"] is True and sessions.setting() is None and sessions.alive(app)
    play = ansible_play([task], diff=True, verbosity=3)
    assert play.rc == 0, play.stdout + play.stderr
    assert play["read only"]["terminated"] == [sessions.pid(app)] and sessions.setting() == "on"
    calls = argv_log.read_text()
    assert calls.count("\n") >= 4 and OPERATOR in calls
    for text in (dry.stdout, dry.stderr, play.stdout, play.stderr, calls):
        assert OPERATOR_PASSWORD not in text and OPERATOR_PASSWORD[:10] not in text
