# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL access: connections, migrations and the audit log writer."""

from __future__ import annotations

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


def connect(config: Config) -> psycopg2.extensions.connection:
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
    if config.db_password_file.is_file():
        params["password"] = config.db_password_file.read_text(encoding="utf-8").rstrip("\r\n")
    if config.db_sslmode:
        params["sslmode"] = config.db_sslmode
    return psycopg2.connect(**params)


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
