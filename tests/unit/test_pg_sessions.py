# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_sessions against a real PostgreSQL: real sessions sit idle in a transaction, run a long pg_sleep, hold a lock
others queue behind (A holds, B waits for A, C waits behind both), belong to a superuser, to a walsender or to
another database. The module lists them with the chains, ends exactly the sessions selected (check mode none), never
one it must not end, refuses more than max_terminate, and keeps the login password out of its result, the play's
output and every argv.

Nothing here waits a fixed time: every state a test needs (a session waiting for a lock, a transaction a second
old, a session gone) is polled for with a deadline, so a loaded machine is slower, never wrong."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading

import psycopg2
import pytest

from conftest import PG_BINDIR, wait_until  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pg_sessions

APP, REPLICATOR, OPERATOR, NOBODY = "pgs_app", "pgs_repl", "pgs_operator", "pgs_nobody"
OPERATOR_PASSWORD = "op-Pa55-never-shown-" + "q" * 12
DEADLINE = 30  # seconds a state the test set up may take to show


@pytest.fixture(name="roles", scope="module")
def roles_fixture(pg_server):
    """An application role, a replication role, an operator that may signal and read others' sessions (its password
    checked over TCP), and a role that may do neither."""
    with contextlib.closing(pg_server.connect()) as connection, connection.cursor() as cur:
        connection.autocommit = True
        for role, options in ((APP, "LOGIN"), (REPLICATOR, "LOGIN REPLICATION"), (OPERATOR, "LOGIN IN ROLE pg_signal_backend, pg_read_all_stats"),
                              (NOBODY, "LOGIN")):
            cur.execute("DO $$BEGIN CREATE ROLE %s %s; EXCEPTION WHEN duplicate_object THEN NULL; END$$" % (role, options))
        cur.execute("ALTER ROLE %s PASSWORD %%s" % OPERATOR, (OPERATOR_PASSWORD,))
    pg_server.check_password_of(OPERATOR)
    return pg_server


def database(pg_server, request, suffix=""):
    name = "ses_%s_%s%s" % (request.node.name.split("[")[0][-28:], hashlib.sha256(request.node.name.encode()).hexdigest()[:8], suffix)
    pg_server.create_database(name)
    with contextlib.closing(pg_server.connect(name)) as connection, connection.cursor() as cur:
        connection.autocommit = True
        cur.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT ALL ON t TO %s" % APP)
    return name


@pytest.fixture(name="db")
def db_fixture(roles, request):
    return database(roles, request)


@pytest.fixture(name="conn")
def conn_fixture(pg_server, db):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR), db=db)


class Session:
    """A client session (psycopg2, autocommit): statements run here, or in a thread for one that waits."""

    def __init__(self, server, db, user, name):
        # A lock the test did not mean to wait for ends in an error, not in a test that never ends.
        self.connection = psycopg2.connect(host=server.host, port=server.port, user=user, dbname=db, application_name=name,
                                           options="-c lock_timeout=120s")
        self.connection.autocommit = True
        with self.connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.pid = cur.fetchone()[0]
        self.thread = None
        self.error = None

    def run(self, *statements):
        with self.connection.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        return self

    def start(self, *statements):
        """Run the statements in a thread (the last one waits on the server)."""
        def work():
            try:
                self.run(*statements)
            except psycopg2.Error as exc:
                self.error = exc
        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        return self


class Cluster:
    """The test's sessions, a watcher that reads pg_stat_activity, and the cleanup: every session still there is
    ended by the superuser, its thread joined and its connection closed."""

    def __init__(self, server, db):
        self.server, self.db = server, db
        self.sessions, self.processes = [], []
        self.watcher = server.connect()
        self.watcher.autocommit = True

    def session(self, user=APP, db=None, name="test-client"):
        session = Session(self.server, db or self.db, user, name)
        self.sessions.append(session)
        return session

    def activity(self, pid):
        with self.watcher.cursor() as cur:
            cur.execute("SELECT datname, state, wait_event_type, wait_event, pg_blocking_pids(pid) FROM pg_stat_activity WHERE pid = %s",
                        (pid,))
            row = cur.fetchone()
        return dict(zip(("database", "state", "wait_event_type", "wait_event", "blocked_by"), row)) if row else None

    def alive(self, pid):
        return self.activity(pid) is not None

    def waiting(self, session):
        """`session`, once the server shows it waiting for a lock."""
        wait_until(lambda: (self.activity(session.pid) or {}).get("wait_event_type") == "Lock", "pid %d waiting for a lock" % session.pid)
        return session

    def sleeping(self, session):
        wait_until(lambda: (self.activity(session.pid) or {}).get("wait_event") == "PgSleep", "pid %d in pg_sleep" % session.pid)
        return session

    def walsender(self, db=None):
        """A logical replication connection to the database (a walsender, not a client backend): its pid."""
        proc = subprocess.Popen([str(PG_BINDIR / "psql"), "-X", "-q", "host=%s port=%d user=%s dbname=%s replication=database"
                                 % (self.server.host, self.server.port, REPLICATOR, db or self.db)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(proc)

        def found():
            with self.watcher.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND usename = %s AND datname = %s",
                            (REPLICATOR, db or self.db))
                row = cur.fetchone()
            return row and row[0]
        return wait_until(found, "the walsender")

    def close(self):
        with self.watcher.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY (%s) OR usename = %s",
                        ([session.pid for session in self.sessions], REPLICATOR))
        for session in self.sessions:
            if session.thread:
                session.thread.join(60)
            session.connection.close()
        for proc in self.processes:
            proc.kill()
            proc.wait()
        self.watcher.close()


@pytest.fixture(name="cluster")
def cluster_fixture(pg_server, db):
    cluster = Cluster(pg_server, db)
    yield cluster
    cluster.close()


# An autovacuum worker may visit a test's database at any moment: the tests leave it out of what they compare (the
# module protects it as any process that is no client session).
AUTOVACUUM = "not a client session: backend type autovacuum worker"


def by_pid(result):
    return {session["pid"]: session for session in result["sessions"] if session["backend_type"] != "autovacuum worker"}


def reasons(result):
    return {item["pid"]: item["reason"] for item in result["excluded"] if item["reason"] != AUTOVACUUM}


def lock_chain(cluster):
    """A holds an ACCESS EXCLUSIVE lock on t, B waits for it, C waits behind both."""
    a = cluster.session(name="holder").run("BEGIN", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    b = cluster.waiting(cluster.session(name="queued").start("BEGIN", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))
    c = cluster.waiting(cluster.session(name="reader").start("SELECT count(*) FROM t"))
    wait_until(lambda: sorted(cluster.activity(c.pid)["blocked_by"]) == sorted([a.pid, b.pid]), "C queued behind A and B")
    return a, b, c


# ----------------------------------------------------------------------------------------------- selection
def fake(pid, **fields):
    session = dict(pid=pid, user="app", database="db", backend_type="client backend", superuser=False, state="idle in transaction",
                   seconds=100, transaction_seconds=100, query_seconds=90, idle_seconds=90, blocked_by=[], blocks=[], protected=None)
    session.update(fields)
    return session


def test_selectors_combine_with_and_and_a_protected_match_is_excluded_with_its_reason():
    found = dict(own_pid=9, chains=[], elsewhere={7: fake(7, database="other"), 8: fake(8, database=None, backend_type="checkpointer")},
                 sessions=[fake(1), fake(2, seconds=5, transaction_seconds=5, idle_seconds=5),
                           fake(3, state="active", idle_seconds=None, blocks=[4]), fake(4, state="active", idle_seconds=None, blocked_by=[3], blocks=[5]),
                           fake(5, state="active", idle_seconds=None, blocked_by=[3, 4]), fake(6, superuser=True, protected="superuser role postgres"),
                           fake(9, seconds=0, transaction_seconds=0, state="active", idle_seconds=None, protected="its own session (the module's)"),
                           fake(10, state="idle", seconds=None, transaction_seconds=None, idle_seconds=500)])
    select = _pg_sessions.select
    listed, selected, excluded = select(found, {}, "db")
    assert [s["pid"] for s in listed] == [1, 2, 3, 4, 5, 6, 10] and selected == [] and excluded == []  # no selector: all but its own
    assert select(found, {"older_than": 50}, "db")[1:] == ([1, 3, 4, 5], [{"pid": 6, "reason": "superuser role postgres"}])
    assert select(found, {"older_than": 0}, "db")[2][-1] == {"pid": 9, "reason": "its own session (the module's)"}
    assert select(found, {"idle_for": 90}, "db")[1] == [1, 10]  # idle (outside a transaction) too; never an active one
    assert select(found, {"idle_for": 90, "older_than": 50}, "db")[1] == [1]  # AND: 10 runs no transaction
    assert select(found, {"blocking": True}, "db")[1] == [3]  # the head only, not 4 in the middle of the chain
    assert select(found, {"pids": [2, 3], "idle_for": 0}, "db")[1] == [2]
    listed, selected, excluded = select(found, {"pids": [1, 6, 7, 8, 404]}, "db")
    assert selected == [1] and [s["pid"] for s in listed] == [1, 6]
    assert excluded == [{"pid": 6, "reason": "superuser role postgres"},
                        {"pid": 7, "reason": "a session of database other, not db: never touched"},
                        {"pid": 8, "reason": "not a session of a database: backend type checkpointer"},
                        {"pid": 404, "reason": "no such session (it ended already, or never was one)"}]
    assert select(found, {"pids": []}, "db")[:2] == ([], [])  # an empty list selects nobody, it never widens


# ----------------------------------------------------------------------------------------------- report
def test_the_report_lists_the_sessions_with_their_lock_chains(run_module, conn, cluster, pg_server, request):
    idle = cluster.session(name="idle-tx").run("BEGIN", "SELECT now()")
    a, b, c = lock_chain(cluster)
    sleeper = cluster.sleeping(cluster.session(name="sleeper").start("SELECT pg_sleep(600)"))
    superuser = cluster.session(user="postgres", name="dba").run("BEGIN", "SELECT 1")
    secret = cluster.session(name="secretive").run("BEGIN", "SELECT 'a long statement', 'hunter2-value' AS api_token")
    walsender = cluster.walsender()
    other = cluster.session(db=database(pg_server, request, "_other"), name="elsewhere").run("BEGIN", "SELECT 1")

    result = run_module("pg_sessions", conn)
    assert result["changed"] is False and result["selected"] == [] and result["terminated"] == [] and result["excluded"] == []
    sessions = by_pid(result)
    assert set(sessions) == {idle.pid, a.pid, b.pid, c.pid, sleeper.pid, superuser.pid, secret.pid, walsender}  # not its own, not other's
    assert other.pid not in sessions and cluster.alive(other.pid)
    assert result["blocking_chains"] == [{"pid": b.pid, "blocked_by": [a.pid]}, {"pid": c.pid, "blocked_by": sorted([a.pid, b.pid])}]
    assert sessions[a.pid]["blocks"] == sorted([b.pid, c.pid]) and sessions[a.pid]["blocked_by"] == []
    assert sessions[b.pid]["blocks"] == [c.pid] and sessions[b.pid]["wait_event_type"] == "Lock"
    assert sessions[a.pid]["query"] == "LOCK TABLE t IN ACCESS EXCLUSIVE MODE" and sessions[a.pid]["application"] == "holder"
    first = sessions[idle.pid]
    assert first["state"] == "idle in transaction" and first["user"] == APP and first["database"] == conn["db"]
    assert first["seconds"] == first["transaction_seconds"] >= 0 and first["idle_seconds"] >= 0 and first["protected"] is None
    assert list(first) == list(_pg_sessions.FIELDS)
    slept = sessions[sleeper.pid]
    assert slept["state"] == "active" and slept["idle_seconds"] is None and (slept["wait_event_type"], slept["wait_event"]) == ("Timeout", "PgSleep")
    assert slept["query"] == "SELECT pg_sleep(600)" and slept["seconds"] >= 0
    assert sessions[superuser.pid]["superuser"] is True and sessions[superuser.pid]["protected"] == "superuser role postgres"
    assert sessions[walsender]["protected"] == "not a client session: backend type walsender"
    assert sessions[secret.pid]["query"] == "(statement hidden: it may hold a secret)" and "hunter2" not in json.dumps(result)
    assert result["msg"] == "%d sessions of %s, 2 waiting for a lock" % (len(result["sessions"]), conn["db"])

    short = run_module("pg_sessions", dict(conn, query_chars=12), check_mode=True)
    assert by_pid(short)[a.pid]["query"] == "LOCK TABLE t" and short["blocking_chains"] == result["blocking_chains"]
    # The secret word comes after the characters returned: the statement is still hidden.
    assert by_pid(short)[secret.pid]["query"] == "(statement hidden: it may hold a secret)"
    assert all(session["query"] is None for session in run_module("pg_sessions", dict(conn, query_chars=0))["sessions"])


def test_older_than_selects_by_the_age_of_the_transaction(run_module, conn, cluster):
    old = cluster.session(name="old").run("BEGIN", "SELECT 1")
    wait_until(lambda: by_pid(run_module("pg_sessions", dict(conn, pids=[old.pid])))[old.pid]["transaction_seconds"] >= 2,
               "a transaction 2 s old")
    young = cluster.session(name="young").run("BEGIN", "SELECT 1")
    result = run_module("pg_sessions", dict(conn, older_than=2))
    assert old.pid in result["selected"] and all(session["seconds"] >= 2 for session in result["sessions"])
    assert young.pid not in result["selected"] or by_pid(result)[young.pid]["seconds"] >= 2
    assert "state=terminated would end" in result["msg"] and result["changed"] is False and cluster.alive(old.pid)


# ----------------------------------------------------------------------------------------------- terminate
def test_check_mode_names_who_would_be_ended_and_ends_nobody(run_module, conn, cluster):
    first = cluster.session().run("BEGIN", "SELECT 1")
    second = cluster.session().run("BEGIN", "SELECT 2")
    superuser = cluster.session(user="postgres").run("BEGIN", "SELECT 3")
    walsender = cluster.walsender()
    params = dict(conn, state="terminated", idle_for=0, incident_id="INC-2026-0042")
    result = run_module("pg_sessions", params, check_mode=True)
    assert result["changed"] is True and result["terminated"] == [] and result["selected"] == sorted([first.pid, second.pid])
    assert reasons(result) == {superuser.pid: "superuser role postgres", walsender: "not a client session: backend type walsender"}
    assert result["msg"].startswith("check mode: would terminate 2 sessions of %s" % conn["db"])
    assert all(cluster.alive(pid) for pid in (first.pid, second.pid, superuser.pid, walsender))


def test_terminated_ends_exactly_the_selected_sessions_and_a_rerun_changes_nothing(run_module, conn, cluster, pg_server, request):
    idle = cluster.session(name="idle-tx").run("BEGIN", "SELECT count(*) FROM t")
    sleeper = cluster.sleeping(cluster.session(name="sleeper").start("SELECT pg_sleep(600)"))
    bystander = cluster.session(name="bystander").run("BEGIN", "SELECT 1")
    other_db = database(pg_server, request, "_other")
    other = cluster.session(db=other_db, name="elsewhere").run("BEGIN", "SELECT 1")
    params = dict(conn, state="terminated", pids=[idle.pid, sleeper.pid, other.pid], incident_id="INC-2026-0042")
    result = run_module("pg_sessions", params)
    assert result["changed"] is True and result["terminated"] == result["selected"] == sorted([idle.pid, sleeper.pid]), result
    assert result["incident_id"] == "INC-2026-0042"
    assert reasons(result) == {other.pid: "a session of database %s, not %s: never touched" % (other_db, conn["db"])}
    assert result["warnings"] == ["pids: pid %d: a session of database %s, not %s: never touched" % (other.pid, other_db, conn["db"])]
    assert not cluster.alive(idle.pid) and not cluster.alive(sleeper.pid)
    assert cluster.alive(bystander.pid) and cluster.alive(other.pid)
    sleeper.thread.join(DEADLINE)
    assert isinstance(sleeper.error, psycopg2.OperationalError)  # its client saw the connection end
    for check_mode in (True, False):
        again = run_module("pg_sessions", params, check_mode=check_mode)
        assert again["changed"] is False and again["terminated"] == again["selected"] == [] and by_pid(again) == {}
        assert reasons(again)[idle.pid] == reasons(again)[sleeper.pid] == "no such session (it ended already, or never was one)"
        assert again["msg"].startswith("no session of %s to terminate" % conn["db"])
    assert cluster.alive(bystander.pid) and cluster.alive(other.pid)


def test_blocking_ends_the_head_of_the_chain_and_nothing_else(run_module, conn, cluster):
    a, b, c = lock_chain(cluster)
    idle = cluster.session().run("BEGIN", "SELECT 1")
    params = dict(conn, state="terminated", blocking=True, incident_id="INC-7")
    assert run_module("pg_sessions", params, check_mode=True)["selected"] == [a.pid]
    result = run_module("pg_sessions", params)
    assert result["changed"] is True and result["terminated"] == [a.pid], result
    assert not cluster.alive(a.pid) and all(cluster.alive(pid) for pid in (b.pid, c.pid, idle.pid))
    # B got the lock, C now waits for B alone: B heads the chain now.
    wait_until(lambda: cluster.activity(c.pid)["blocked_by"] == [b.pid], "C blocked by B alone")
    report = run_module("pg_sessions", dict(conn, blocking=True))
    assert report["blocking_chains"] == [{"pid": c.pid, "blocked_by": [b.pid]}] and report["selected"] == [b.pid]


def test_a_protected_session_is_never_ended_even_at_the_head_of_a_chain(run_module, conn, cluster):
    superuser = cluster.session(user="postgres", name="dba").run("BEGIN", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    waiter = cluster.waiting(cluster.session().start("SELECT count(*) FROM t"))
    idle = cluster.session().run("BEGIN", "SELECT 1")
    walsender = cluster.walsender()
    blocked = run_module("pg_sessions", dict(conn, state="terminated", blocking=True, incident_id="INC-7"))
    assert blocked["changed"] is False and blocked["terminated"] == [] and reasons(blocked) == {superuser.pid: "superuser role postgres"}
    named = run_module("pg_sessions", dict(conn, state="terminated", pids=[superuser.pid, walsender], incident_id="INC-7"))
    assert named["changed"] is False and named["terminated"] == [] and named["warnings"] == []
    assert reasons(named) == {superuser.pid: "superuser role postgres", walsender: "not a client session: backend type walsender"}
    # Every session in a transaction, its own included (its transaction is 0 s old): only the application's ends.
    everyone = run_module("pg_sessions", dict(conn, state="terminated", older_than=0, incident_id="INC-7"))
    assert everyone["terminated"] == sorted([idle.pid, waiter.pid]), everyone
    own = [pid for pid, reason in reasons(everyone).items() if reason == "its own session (the module's)"]
    assert len(own) == 1 and own[0] not in (superuser.pid, walsender, idle.pid, waiter.pid)
    assert cluster.alive(superuser.pid) and cluster.alive(walsender)


def test_a_session_login_user_cannot_see_is_never_ended(run_module, conn, cluster):
    victim = cluster.session().run("BEGIN", "SELECT 1")
    result = run_module("pg_sessions", dict(conn, login_user=NOBODY, state="terminated", pids=[victim.pid], incident_id="INC-7"))
    assert result["changed"] is False and result["terminated"] == []
    assert reasons(result) == {victim.pid: "its details are hidden from login_user %s (grant it pg_read_all_stats)" % NOBODY}
    assert cluster.alive(victim.pid)


def test_more_sessions_than_max_terminate_are_refused_and_none_is_ended(run_module, conn, cluster):
    sessions = [cluster.session(name="client-%d" % number).run("BEGIN", "SELECT 1") for number in range(3)]
    pids = sorted(session.pid for session in sessions)
    params = dict(conn, state="terminated", idle_for=0, max_terminate=2, incident_id="INC-7")
    for check_mode in (True, False):
        result = run_module("pg_sessions", params, check_mode=check_mode)
        assert result.get("failed") and result["changed"] is False and result["terminated"] == [], result
        assert "3 sessions of %s selected (pid %s), more than max_terminate=2: none was terminated" % (conn["db"], ", ".join(map(str, pids))) \
            in result["msg"]
        assert result["selected"] == pids
    assert all(cluster.alive(pid) for pid in pids)
    report = run_module("pg_sessions", dict(params, state="report"))
    assert not report.get("failed") and "(more than max_terminate=2: it would refuse)" in report["msg"]
    assert all(cluster.alive(pid) for pid in pids)


@pytest.mark.parametrize("selectors", [{}, {"blocking": False}])
def test_terminated_without_a_selector_fails_and_ends_nobody(run_module, conn, cluster, selectors):
    victim = cluster.session().run("BEGIN", "SELECT 1")
    result = run_module("pg_sessions", dict(conn, state="terminated", incident_id="INC-7", max_terminate=100, **selectors))
    assert result.get("failed") and "needs at least one selector" in result["msg"] and "nothing was changed" in result["msg"]
    assert cluster.alive(victim.pid)


def test_an_empty_pids_list_selects_nobody(run_module, conn, cluster):
    victim = cluster.session().run("BEGIN", "SELECT 1")
    result = run_module("pg_sessions", dict(conn, state="terminated", pids=[], idle_for=0, incident_id="INC-7"))
    assert not result.get("failed") and result["changed"] is False and result["selected"] == result["terminated"] == []
    assert cluster.alive(victim.pid)


@pytest.mark.parametrize("params, message", [
    (dict(older_than=-1), "older_than is -1: it must be a whole number, 0 or more"),
    (dict(idle_for=-30), "idle_for is -30"),
    (dict(pids=[0]), "each of pids is 0: it must be a whole number, 1 to 2147483647"),
    (dict(pids=[-5]), "each of pids is -5"),
    (dict(pids=[2 ** 31]), "each of pids is 2147483648"),
    (dict(pids=["not-a-pid"]), "pids"),
    (dict(pids=[True]), "each of pids is True"),
    (dict(max_terminate=0), "max_terminate is 0: it must be a whole number, 1 or more"),
    (dict(max_terminate=-1), "max_terminate is -1"),
    (dict(query_chars=-1), "query_chars is -1: 0 (no statements) to 10000"),
    (dict(query_chars=10001), "query_chars is 10001"),
    (dict(incident_id="INC 1; SELECT pg_terminate_backend(1)"), "incident_id 'INC 1; SELECT pg_terminate_backend(1)' is not valid"),
    (dict(incident_id=None), "state=terminated needs incident_id"),
    (dict(state="killed"), "value of state must be one of: report, terminated"),
    (dict(db="wa'; SELECT pg_terminate_backend(pid) FROM pg_stat_activity; --"), "is not accepted"),
    (dict(db="no_such_db"), 'database "no_such_db" does not exist'),
    (dict(login_port=1), "cannot reach PostgreSQL"),
])
def test_a_wrong_or_hostile_input_fails_clearly_and_ends_nobody(run_module, conn, cluster, params, message):
    victim = cluster.session().run("BEGIN", "SELECT 1")  # what the run would end, were the input not refused
    base = dict(conn, state="terminated", idle_for=0, incident_id="INC-7")
    result = run_module("pg_sessions", {key: value for key, value in dict(base, **params).items() if value is not None})
    assert result.get("failed") and message in result["msg"], result
    assert "Traceback" not in result["msg"] and not result.get("terminated")
    if "pids" not in params and "state" not in params:  # those are the argument spec's own messages
        assert "nothing was changed" in result["msg"]
    assert cluster.alive(victim.pid)


# ----------------------------------------------------------------------------------------------- secrets
def test_the_login_password_never_shows_in_the_result_the_output_or_argv(ansible_play, cluster, pg_server, db, tmp_path):
    """A role that is no superuser, whose password PostgreSQL checks, ends an application's session through
    ansible-playbook (-vvv, check mode then for real); psql is a shim recording its argv."""
    argv_log, shim_dir = tmp_path / "argv.jsonl", tmp_path / "bin"
    shim_dir.mkdir()
    real = PG_BINDIR / "psql"
    (shim_dir / "psql").write_text("#!%s\nimport json, os, sys\nwith open(%r, 'a') as log:\n    log.write(json.dumps(sys.argv) + '\\n')\n"
                                   "os.execv(%r, [%r] + sys.argv[1:])\n" % (sys.executable, str(argv_log), str(real), str(real)))
    (shim_dir / "psql").chmod(0o755)
    victim = cluster.session().run("BEGIN", "SELECT 1")
    superuser = cluster.session(user="postgres").run("BEGIN", "SELECT 1")
    wrong = run_psql_as_operator(pg_server, db, "not-the-password")
    assert "password authentication failed" in wrong.stderr  # the password really is checked
    task = {"runbooks.incident.pg_sessions": dict(login_host="127.0.0.1", login_port=pg_server.port, login_user=OPERATOR,
                                                  login_password=OPERATOR_PASSWORD, pg_bin_dir=str(shim_dir), db=db, state="terminated",
                                                  pids=[victim.pid, superuser.pid], incident_id="INC-2026-0042"),
            "name": "end", "register": "ended"}
    dry = ansible_play([task], check=True, verbosity=3)
    assert dry.rc == 0, dry.stdout + dry.stderr
    assert dry["end"]["changed"] is True and dry["end"]["selected"] == [victim.pid] and cluster.alive(victim.pid)
    play = ansible_play([task], verbosity=3)
    assert play.rc == 0, play.stdout + play.stderr
    assert play["end"]["terminated"] == [victim.pid] and not cluster.alive(victim.pid) and cluster.alive(superuser.pid)
    assert {item["pid"]: item["reason"] for item in play["end"]["excluded"]} == {superuser.pid: "superuser role postgres"}
    calls = argv_log.read_text()
    assert calls.count("\n") >= 4 and OPERATOR in calls
    for text in (dry.stdout, dry.stderr, play.stdout, play.stderr, calls):
        assert OPERATOR_PASSWORD not in text and OPERATOR_PASSWORD[:10] not in text


def run_psql_as_operator(pg_server, db, password):
    return subprocess.run([str(PG_BINDIR / "psql"), "-X", "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", OPERATOR, "-d", db,
                           "-c", "SELECT 1"], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PGPASSWORD=password, PGCONNECT_TIMEOUT="10"))
