# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Realistic sandbox data volumes; bulk rows are generated server-side so millions stay cheap."""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg2.extras import execute_values

from . import auth
from .config import Config
from .credentials import fingerprint, load_access_tokens
from .storage import store_media

# Used when no wa_access_token_* file exists yet, so messages still reference a plausible phone number id.
FALLBACK_PHONE_ID = "106540352242922"
CONTENT_TYPES = ("image/jpeg", "image/png", "application/pdf", "audio/ogg", "video/mp4")

MESSAGES_SQL = """
INSERT INTO messages (client_id, phone_id, recipient, body, status, wamid, created_at)
SELECT (%(clients)s)[1 + floor(random() * %(n_clients)s)::int],
       (%(phones)s)[1 + g %% %(n_phones)s],
       '1555' || lpad(floor(random() * 10000000)::int::text, 7, '0'),
       'Order #' || (100000 + g) || ': your parcel is on its way',
       CASE WHEN g %% 29 = 0 THEN 'failed' ELSE 'sent' END,
       CASE WHEN g %% 29 = 0 THEN NULL ELSE 'wamid.' || md5(g::text || random()::text) END,
       now() - random() * interval '30 days'
FROM generate_series(1, %(rows)s) AS g
"""

# Actions rotate with g (three sends for every login and key creation); about one row in 17 is a failure.
AUDIT_SQL = """
INSERT INTO audit_log (occurred_at, actor, action, outcome, details)
SELECT now() - random() * interval '30 days',
       'client:' || (%(clients)s)[1 + floor(random() * %(n_clients)s)::int],
       (ARRAY['send_attempt', 'send_attempt', 'send_attempt', 'login', 'api_key_created'])[1 + g %% 5],
       CASE WHEN g %% 17 = 0 THEN 'failure' ELSE 'success' END,
       CASE WHEN g %% 5 < 3
            THEN jsonb_build_object('phone_id', (%(phones)s)[1 + g %% %(n_phones)s], 'http_status', CASE WHEN g %% 17 = 0 THEN 401 ELSE 200 END)
            ELSE jsonb_build_object('seed', true) END
FROM generate_series(1, %(rows)s) AS g
"""

# Sessions opened in the last 20 days, each with one live refresh token: the hash of a value nobody holds.
SESSIONS_SQL = """
WITH opened AS (
    INSERT INTO sessions (client_id, created_at)
    SELECT (%(clients)s)[1 + floor(random() * %(n_clients)s)::int], now() - random() * interval '20 days'
    FROM generate_series(1, %(rows)s)
    RETURNING id, created_at
)
INSERT INTO refresh_tokens (session_id, token_hash, created_at, expires_at)
SELECT id, encode(sha256(gen_random_uuid()::text::bytea), 'hex'), created_at, created_at + interval '30 days' FROM opened
"""


@dataclass(frozen=True)
class SeedSpec:
    clients: int
    keys_per_client: int
    messages: int
    audit_rows: int
    media_files: int
    media_size: int
    sessions: int


def seed(conn, config: Config, pepper: bytes, spec: SeedSpec, force: bool = False) -> list[str] | None:
    """Insert a batch of sandbox data; return the issued tokens, or None if already seeded (and not forced)."""
    written: list[Path] = []
    try:
        with conn, conn.cursor() as cur:
            # Blocks a concurrent seeder until we commit, so it then sees the clients and reports "already seeded".
            cur.execute("LOCK TABLE clients IN SHARE ROW EXCLUSIVE MODE")
            cur.execute("SELECT EXISTS (SELECT 1 FROM clients)")
            if cur.fetchone()[0] and not force:
                return None
            # A batch tag keeps client names unique when --force seeds on top of existing data.
            cur.execute(
                "INSERT INTO clients (name, contact_email, created_at)"
                " SELECT 'client-' || %(batch)s || '-' || lpad(g::text, 4, '0'), 'ops+' || %(batch)s || '-' || g || '@example.com',"
                " now() - random() * interval '365 days' FROM generate_series(1, %(rows)s) AS g RETURNING id",
                {"batch": secrets.token_hex(3), "rows": spec.clients},
            )
            client_ids = [row[0] for row in cur.fetchall()]
            tokens = _insert_keys(cur, client_ids * spec.keys_per_client, pepper)
            phones = sorted(load_access_tokens(config.secrets_dir)) or [FALLBACK_PHONE_ID]
            params = {"clients": client_ids, "n_clients": len(client_ids), "phones": phones, "n_phones": len(phones)}
            cur.execute(MESSAGES_SQL, {**params, "rows": spec.messages})
            cur.execute(AUDIT_SQL, {**params, "rows": spec.audit_rows})
            cur.execute(SESSIONS_SQL, {**params, "rows": spec.sessions})
            _insert_media(cur, config.media_dir, client_ids, spec, written)
    except BaseException:
        # The transaction rolled back, so no row refers to these blobs any more.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return tokens


def _insert_media(cur, media_dir: Path, client_ids: list[int], spec: SeedSpec, written: list[Path]) -> None:
    """Write random blobs for random clients, recording each path in ``written`` as soon as it exists."""
    rows = []
    for _index in range(spec.media_files):
        client_id = random.choice(client_ids)
        storage_path, sha256, size = store_media(media_dir, client_id, _random_chunks(spec.media_size))
        written.append(media_dir / storage_path)
        rows.append((client_id, storage_path, sha256, size, random.choice(CONTENT_TYPES)))
    execute_values(cur, "INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type) VALUES %s", rows)


def _random_chunks(size: int) -> Iterator[bytes]:
    while size > 0:
        chunk = os.urandom(min(size, 1 << 20))
        size -= len(chunk)
        yield chunk


def _insert_keys(cur, owners: list[int], pepper: bytes) -> list[str]:
    """Bulk-insert one key per owner entry; return the tokens (the caller decides whether any are shown)."""
    pepper_fp = fingerprint(pepper)
    tokens: list[str] = []
    while owners:
        batch: dict[str, tuple[int, str]] = {}
        for client_id in owners:
            prefix, token = auth.new_token()
            while prefix in batch:
                prefix, token = auth.new_token()
            batch[prefix] = (client_id, token)
        rows = [(client_id, prefix, auth.hash_token(pepper, token), pepper_fp) for prefix, (client_id, token) in batch.items()]
        inserted = execute_values(
            cur,
            "INSERT INTO api_keys (client_id, key_prefix, key_hash, pepper_fingerprint) VALUES %s ON CONFLICT (key_prefix) DO NOTHING RETURNING key_prefix",
            rows,
            page_size=1000,
            fetch=True,
        )
        done = {row[0] for row in inserted}
        tokens += [token for prefix, (_client, token) in batch.items() if prefix in done]
        # Prefixes already used by existing keys are simply drawn again.
        owners = [client_id for prefix, (client_id, _token) in batch.items() if prefix not in done]
    return tokens
