# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_service_db called directly against a real PostgreSQL 15 holding the service's schema (its own migrations):
API keys revoked once per change id, sessions revoked with and without an audit table, a role's password as a
SCRAM verifier, and every value or name reaching the SQL quoted."""
from __future__ import annotations

import re
import uuid

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error
from servicedb import SCHEMA, populate_sql  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _scram, _service_db

OLD, NEW = "0ld0ld0ld0ld0ld0", "11ee11ee11ee11ee"
SESSIONS = SCHEMA.parent / "0002_sessions.sql"


@pytest.fixture(name="runtime")
def runtime_fixture(pg_server):
    return _pg.Runtime(login_user="postgres", login_unix_socket=pg_server.host, login_port=pg_server.port, pg_bin_dir=str(PG_BINDIR))


@pytest.fixture(name="db")
def db_fixture(pg_server):
    """The service's schema: 3 clients whose keys use the old pepper but two on the new one, 3 active sessions with a
    refresh token each, 1 revoked session."""
    name = pg_server.create_database("sdb_" + uuid.uuid4().hex[:16])
    with pg_server.connect(name) as connection, connection.cursor() as cur:
        cur.execute(populate_sql(clients=3, messages=1, audit_rows=2, media=1))
        cur.execute(SESSIONS.read_text())
        cur.execute("UPDATE api_keys SET pepper_fingerprint = %s", (OLD,))
        cur.execute("UPDATE api_keys SET pepper_fingerprint = %s WHERE id IN (SELECT id FROM api_keys ORDER BY id LIMIT 2)", (NEW,))
        for index in range(4):
            cur.execute("INSERT INTO sessions (client_id, revoked_at) VALUES (1, CASE WHEN %s = 3 THEN now() END) RETURNING id", (index,))
            cur.execute("INSERT INTO refresh_tokens (session_id, token_hash, expires_at, revoked_at) "
                        "VALUES (%s, %s, now() + interval '30 days', CASE WHEN %s = 3 THEN now() END)", (cur.fetchone()[0], "%064d" % index, index))
    return name


def fetch(pg_server, db, sql, *args):
    with pg_server.connect(db) as connection, connection.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def audit_rows(pg_server, db, action):
    return fetch(pg_server, db, "SELECT actor, details FROM audit_log WHERE action = %s ORDER BY id", action)


# ------------------------------------------------------------------------------------------------ API keys
def test_the_report_counts_active_keys_per_pepper_and_per_client(runtime, db, pg_server):
    report = _service_db.api_key_report(runtime, db)
    assert report["by_pepper_fingerprint"] == {OLD: 4, NEW: 2} and report["active"] == 6
    assert sorted(c["client"] for c in report["clients"]) == ["client-1", "client-2", "client-3"]
    assert all(c["active_keys"] == sum(c["by_pepper_fingerprint"].values()) for c in report["clients"])
    assert all(c["contact_email"].endswith("@example.com") for c in report["clients"])
    fetch(pg_server, db, "UPDATE api_keys SET revoked_at = now() WHERE pepper_fingerprint = %s RETURNING id", NEW)
    assert _service_db.api_key_report(runtime, db)["by_pepper_fingerprint"] == {OLD: 4}


def test_revoking_predicts_in_check_mode_then_revokes_once_per_change_id(runtime, db, pg_server):
    predicted = _service_db.revoke_api_keys(runtime, db, NEW, "INC-1", "hard rotation", "tester", check_mode=True)
    assert predicted["changed"] is True and predicted["revoked"] == 4 and predicted["active"] == 6
    assert sum(n["revoked_keys"] for n in predicted["notify"]) == 4
    assert audit_rows(pg_server, db, _service_db.API_KEYS_REVOKED) == []
    assert _service_db.api_key_report(runtime, db)["by_pepper_fingerprint"] == {OLD: 4, NEW: 2}

    done = _service_db.revoke_api_keys(runtime, db, NEW, "INC-1", "hard rotation", "tester")
    assert done["changed"] is True and done["revoked"] == 4 and done["by_pepper_fingerprint"] == {NEW: 2} and done["active"] == 2
    assert sorted(done["notify"], key=lambda n: n["client"]) == sorted(predicted["notify"], key=lambda n: n["client"])
    [(actor, details)] = audit_rows(pg_server, db, _service_db.API_KEYS_REVOKED)
    assert actor == "tester" and details["change_id"] == "INC-1" and details["kept_pepper_fingerprint"] == NEW
    assert _service_db.recorded_change(runtime, db, _service_db.API_KEYS_REVOKED, "INC-1") == details
    assert _service_db.recorded_change(runtime, db, _service_db.API_KEYS_REVOKED, "INC-2") is None

    # The same change again, in check mode or not: nothing to revoke, and still whom it notified.
    for check_mode in (True, False):
        again = _service_db.revoke_api_keys(runtime, db, NEW, "INC-1", "hard rotation", "tester", check_mode=check_mode)
        assert again["changed"] is False and again["revoked"] == 4 and again["notify"] == done["notify"]
    assert len(audit_rows(pg_server, db, _service_db.API_KEYS_REVOKED)) == 1


def test_nothing_to_revoke_writes_no_audit_row(runtime, db, pg_server):
    fetch(pg_server, db, "UPDATE api_keys SET pepper_fingerprint = %s RETURNING id", NEW)
    result = _service_db.revoke_api_keys(runtime, db, NEW, "INC-3", "r", "a")
    assert result == dict(changed=False, revoked=0, notify=[], by_pepper_fingerprint={NEW: 6}, active=6)
    assert audit_rows(pg_server, db, _service_db.API_KEYS_REVOKED) == []


HOSTILE = "it's done'); DROP TABLE clients; --"


def test_values_reach_the_audit_row_verbatim(runtime, db, pg_server):
    _service_db.revoke_api_keys(runtime, db, NEW, "INC-4", HOSTILE, HOSTILE + "actor")
    [(actor, details)] = audit_rows(pg_server, db, _service_db.API_KEYS_REVOKED)
    assert actor == HOSTILE + "actor" and details["reason"] == HOSTILE
    # A pepper to keep that is not one: every key is revoked, none of the SQL around it is run.
    result = _service_db.revoke_api_keys(runtime, db, "x' OR '1'='1", "INC-5", "r", "a")
    assert result["revoked"] == 2 and result["active"] == 0
    assert fetch(pg_server, db, "SELECT count(*) FROM clients") == [(3,)]


# ------------------------------------------------------------------------------------------------ sessions
TABLES = ["sessions", "refresh_tokens"]


def revoke_sessions(runtime, db, change_id="INC-S", audit_table="audit_log", check_mode=False, tables=None, reason="suspected key compromise"):
    return _service_db.revoke_sessions(runtime, db, tables or TABLES, "revoked_at", change_id, reason, "tester", audit_table,
                                       check_mode=check_mode)


def test_sessions_are_revoked_once_per_change_id_with_one_audit_row(runtime, db, pg_server):
    predicted = revoke_sessions(runtime, db, check_mode=True)
    assert predicted == dict(changed=True, msg="6 rows to revoke", revoked={"sessions": 3, "refresh_tokens": 3},
                             active={"sessions": 3, "refresh_tokens": 3})
    assert _service_db.active_rows(runtime, db, TABLES, "revoked_at") == {"sessions": 3, "refresh_tokens": 3}

    done = revoke_sessions(runtime, db, reason=HOSTILE)
    assert done == dict(changed=True, msg="revoked 3 in sessions, 3 in refresh_tokens", revoked=predicted["revoked"],
                        active={"sessions": 0, "refresh_tokens": 0})
    [(actor, details)] = audit_rows(pg_server, db, _service_db.SESSIONS_REVOKED)
    assert actor == "tester" and details == dict(change_id="INC-S", reason=HOSTILE, revoked=done["revoked"])
    assert fetch(pg_server, db, "SELECT count(*) FROM sessions") == [(4,)]  # kept for the investigation

    fetch(pg_server, db, "INSERT INTO sessions (client_id) VALUES (2) RETURNING id")  # a user logs in again afterwards
    for check_mode in (True, False):
        again = revoke_sessions(runtime, db, check_mode=check_mode)
        assert again == dict(changed=False, msg="change INC-S already revoked the sessions", revoked=done["revoked"],
                             active={"sessions": 1, "refresh_tokens": 0})
    assert revoke_sessions(runtime, db, change_id="INC-T")["revoked"] == {"sessions": 1, "refresh_tokens": 0}
    assert len(audit_rows(pg_server, db, _service_db.SESSIONS_REVOKED)) == 2


def test_without_an_audit_table_every_run_revokes_what_is_active(runtime, db, pg_server):
    assert revoke_sessions(runtime, db, audit_table="", tables=["public.sessions"])["revoked"] == {"public.sessions": 3}
    assert revoke_sessions(runtime, db, audit_table="", tables=["public.sessions"]) == dict(
        changed=False, msg="0 rows to revoke", revoked={"public.sessions": 0}, active={"public.sessions": 0})
    fetch(pg_server, db, "INSERT INTO sessions (client_id) VALUES (2) RETURNING id")
    assert revoke_sessions(runtime, db, audit_table="", tables=["public.sessions"])["changed"] is True
    assert audit_rows(pg_server, db, _service_db.SESSIONS_REVOKED) == []


@pytest.mark.parametrize("tables,column,audit_table,message", [
    ([], "revoked_at", "audit_log", "tables is empty"),
    (["sessions; DROP TABLE clients"], "revoked_at", "audit_log", "table name 'sessions; DROP TABLE clients' is not accepted"),
    (["sessions"], "revoked_at = now() --", "audit_log", "column name 'revoked_at = now() --' is not accepted"),
    (["sessions"], "revoked_at", 'audit_log" x', "is not accepted"),
])
def test_names_that_are_not_plain_are_refused_before_any_sql(tables, column, audit_table, message):
    with pytest.raises(_pg.PgError, match=re.escape(message)):
        _service_db.check_session_names(tables, column, audit_table)


@pytest.mark.parametrize("tables,column,message", [
    (["sessions", "no_such_table"], "revoked_at", "table no_such_table does not exist"),
    (["sessions"], "ended_at", "has no column ended_at"),
])
def test_a_missing_table_or_column_fails_before_anything_is_revoked(runtime, db, tables, column, message):
    with pytest.raises(_pg.PgError, match=message):
        _service_db.revoke_sessions(runtime, db, tables, column, "INC-S", "r", "a")
    assert _service_db.active_rows(runtime, db, TABLES, "revoked_at") == {"sessions": 3, "refresh_tokens": 3}


# ------------------------------------------------------------------------------------------------ login role
@pytest.fixture(name="role")
def role_fixture(pg_server):
    """A role with no password, named so that only a quoted identifier reaches it."""
    name = "Svc role " + uuid.uuid4().hex[:8]
    with pg_server.connect() as connection, connection.cursor() as cur:
        cur.execute('CREATE ROLE "%s" LOGIN' % name)
    return name


def test_a_role_gets_the_verifier_of_its_password_compared_first(runtime, role):
    password = "pw-" + "p" * 40
    assert _service_db.stored_verifier(runtime, role) == ""
    assert _service_db.set_role_password(runtime, role, password, check_mode=True) is True
    assert _service_db.stored_verifier(runtime, role) == ""
    assert _service_db.set_role_password(runtime, role, password) is True
    stored = _service_db.stored_verifier(runtime, role)
    assert stored.startswith("SCRAM-SHA-256$") and _scram.matches(stored, password)
    assert _service_db.set_role_password(runtime, role, password) is False
    assert _service_db.stored_verifier(runtime, role) == stored  # compared first: not even a new salt
    assert _service_db.set_role_password(runtime, role, "other-" + "o" * 40, check_mode=True) is True
    assert _service_db.stored_verifier(runtime, role) == stored


def test_a_role_that_does_not_exist_fails_clearly(runtime):
    with pytest.raises(_pg.PgError, match="role no_such_role_here does not exist"):
        _service_db.set_role_password(runtime, "no_such_role_here", "pw-" + "p" * 40)
