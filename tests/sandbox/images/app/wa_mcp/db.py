# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL access: connections, migrations and the audit log writer."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extras import Json

from .config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary constant shared by every `migrate` run ("wa_mcp" in ASCII) so concurrent runs queue up instead of racing.
MIGRATION_LOCK_ID = 0x77615F6D6370
TABLES = ("schema_migrations", "clients", "api_keys", "messages", "audit_log", "media_objects", "sessions", "refresh_tokens")
PREVIOUS_PASSWORD_SUFFIX = ".previous"

_credential_lock = threading.Lock()
_last_credential: str | None = None


def last_credential() -> str | None:
    """Which password file the last successful connection used: "current", "previous", or None before any."""
    return _last_credential


def _record_credential(which: str) -> None:
    """Remember which password worked; say so (once per switch, never the value) when it is the previous one."""
    global _last_credential  # pylint: disable=global-statement
    with _credential_lock:
        changed, _last_credential = _last_credential != which, which
    if changed and which == "previous":
        print(f"wa-mcp: database refused the current password; connected with the {PREVIOUS_PASSWORD_SUFFIX} one", file=sys.stderr, flush=True)


def _read_password(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").rstrip("\r\n") or None


def connect(config: Config) -> psycopg2.extensions.connection:
    """Connect with the password file; if the server refuses it and ``<file>.previous`` exists, with that one.

    The fallback makes a DB password rotation safe at every crash point: the runbook writes the new password
    beside the old one (``.previous``), then changes the role, restarts the app, and only then drops ``.previous``.
    Passwords are read at every connect, so whichever state the files and the role are in, the app connects.
    """
    # Keyword arguments rather than a DSN string, so the password can never end up in a logged connection string.
    params: dict[str, Any] = {
        "host": config.db_host,
        "port": config.db_port,
        "dbname": config.db_name,
        "user": config.db_user,
        "application_name": "wa-mcp",
        "connect_timeout": 5,
        # Timestamps come back in UTC whatever the server's default zone, which the archive layout relies on.
        "options": "-c timezone=UTC",
    }
    if config.db_sslmode:
        params["sslmode"] = config.db_sslmode
    current = _read_password(config.db_password_file)
    if current is not None:
        params["password"] = current
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.OperationalError as exc:
        previous = _read_password(config.db_password_file.with_name(config.db_password_file.name + PREVIOUS_PASSWORD_SUFFIX))
        if previous is None or "password authentication failed" not in str(exc):
            raise
        conn = psycopg2.connect(**{**params, "password": previous})
        _record_credential("previous")
    else:
        _record_credential("current")
    return conn


@contextmanager
def connection(config: Config) -> Iterator[psycopg2.extensions.connection]:
    """Like ``connect`` but closes the connection afterwards (psycopg2's own context manager only ends the transaction)."""
    conn = connect(config)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(config: Config) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor on a fresh connection, committed on success or rolled back on error, then closed."""
    with connection(config) as conn:
        with conn, conn.cursor() as cur:
            yield cur


def audit(cur, actor: str, action: str, outcome: str, details: dict[str, Any]) -> None:
    cur.execute(
        "INSERT INTO audit_log (actor, action, outcome, details) VALUES (%s, %s, %s, %s)",
        (actor, action, outcome, Json(details)),
    )


def ensure_client(cur, name: str, contact_email: str) -> int:
    """Return the id of the named client, creating it if needed."""
    cur.execute("INSERT INTO clients (name, contact_email) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, contact_email))
    cur.execute("SELECT id FROM clients WHERE name = %s", (name,))
    return cur.fetchone()[0]


def migrate(conn) -> list[str]:
    """Apply pending migrations, one transaction each; return the versions applied."""
    with conn.cursor() as cur:
        # Session-level lock: it outlives the per-migration commits below; if a migration fails, closing the connection releases it.
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied: set[str] = set()
        if cur.fetchone()[0]:
            cur.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in cur}
        conn.commit()
        done = []
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.stem in applied:
                continue
            cur.execute(path.read_text(encoding="utf-8"))
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            conn.commit()
            done.append(path.stem)
        cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
        conn.commit()
    return done
