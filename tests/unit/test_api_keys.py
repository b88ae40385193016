# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""api_keys against a real PostgreSQL 15 holding the service's schema: report per pepper, revoke after a hard
rotation, the notification list, idempotence per change id and check mode."""
from __future__ import annotations

import hashlib

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error
from servicedb import populate_sql  # pylint: disable=import-error

OLD, NEW = "0ld0ld0ld0ld0ld0", "11ee11ee11ee11ee"


@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


@pytest.fixture(name="keys_db")
def keys_db_fixture(pg_server, request):
    """A fresh service database: its seeded keys are re-labelled with the old pepper, plus two keys on the new one."""
    name = pg_server.create_database("api_keys_%s_%s" % (request.node.name.split("[")[0][-30:],
                                                         hashlib.sha256(request.node.name.encode()).hexdigest()[:8]))
    with pg_server.connect(name) as connection, connection.cursor() as cur:
        cur.execute(populate_sql(clients=4, messages=10, audit_rows=5, media=1))
        cur.execute("UPDATE api_keys SET pepper_fingerprint = %s, revoked_at = NULL", (OLD,))
        cur.execute("INSERT INTO api_keys (client_id, key_prefix, key_hash, pepper_fingerprint) "
                    "SELECT id, lpad(to_hex(id + 4000000), 8, '0'), 'h', %s FROM clients ORDER BY id LIMIT 2", (NEW,))
    return name


def state(pg_server, db):
    with pg_server.connect(db) as connection, connection.cursor() as cur:
        cur.execute("SELECT pepper_fingerprint, revoked_at IS NULL, count(*) FROM api_keys GROUP BY 1, 2 ORDER BY 1, 2")
        keys = cur.fetchall()
        cur.execute("SELECT count(*) FROM audit_log WHERE action = 'api_keys_revoked'")
        return keys, cur.fetchone()[0]


def test_report_counts_active_keys_per_pepper_and_client(run_module, conn, keys_db, pg_server):
    with pg_server.connect(keys_db) as connection, connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM api_keys WHERE pepper_fingerprint = %s", (OLD,))
        old_count = cur.fetchone()[0]
    result = run_module("api_keys", dict(db=keys_db, **conn))
    assert result["changed"] is False
    assert result["by_pepper_fingerprint"] == {OLD: old_count, NEW: 2} and result["active"] == old_count + 2
    assert len(result["clients"]) == 4 and all("@" in client["contact_email"] for client in result["clients"])
    assert sum(client["active_keys"] for client in result["clients"]) == result["active"]


def test_revocation_keeps_the_new_pepper_records_the_audit_row_and_returns_who_to_notify(run_module, conn, keys_db, pg_server):
    params = dict(db=keys_db, state="revoked", keep_pepper_fingerprint=NEW, change_id="INC-77", **conn)
    before = state(pg_server, keys_db)
    predicted = run_module("api_keys", params, check_mode=True)
    assert predicted["changed"] is True and state(pg_server, keys_db) == before
    result = run_module("api_keys", params)
    assert result["changed"] is True and result["by_pepper_fingerprint"] == {NEW: 2}
    assert result["revoked"] == predicted["revoked"] > 0
    assert sorted(item["client"] for item in result["notify"]) == sorted(item["client"] for item in predicted["notify"])
    assert sum(item["revoked_keys"] for item in result["notify"]) == result["revoked"]
    keys, audit_rows = state(pg_server, keys_db)
    assert (OLD, True, 0) not in keys and audit_rows == 1
    with pg_server.connect(keys_db) as connection, connection.cursor() as cur:
        cur.execute("SELECT details FROM audit_log WHERE action = 'api_keys_revoked'")
        details = cur.fetchone()[0]
    assert details["change_id"] == "INC-77" and details["kept_pepper_fingerprint"] == NEW
    # A retried job changes nothing and still knows whom to notify.
    again = run_module("api_keys", params)
    assert again["changed"] is False and again["notify"] == result["notify"] and state(pg_server, keys_db)[1] == 1


def test_revocation_needs_the_pepper_to_keep(run_module, conn, keys_db):
    result = run_module("api_keys", dict(db=keys_db, state="revoked", change_id="INC-1", **conn))
    assert result["failed"] and "keep_pepper_fingerprint" in result["msg"]


@pytest.mark.parametrize("extra,message", [
    (dict(db="host=127.0.0.1 dbname=postgres"), "database name 'host=127.0.0.1 dbname=postgres' is not accepted"),
    (dict(db="wa_mcp' OR '1'='1"), "is not accepted"),
    (dict(pg_bin_dir="/nonexistent/bin"), "No such file or directory"),
])
def test_hostile_connection_settings_fail_clearly_and_change_nothing(run_module, conn, keys_db, pg_server, extra, message):
    """A db that is a connection string would point psql at another server or database with the module's login."""
    before = state(pg_server, keys_db)
    params = dict(dict(db=keys_db, state="revoked", keep_pepper_fingerprint=NEW, change_id="INC-9", **conn), **extra)
    result = run_module("api_keys", params)
    assert result.get("failed") and message in result["msg"], result
    assert state(pg_server, keys_db) == before
