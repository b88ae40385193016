# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A database shaped like whatsapp-mcp's (the reference service's schema), filled with generate_series.

Shared by the tests and the benchmark (bench/restore.py): `populate(psql, clients, messages, audit_rows)` where
`psql` runs a SQL script against the target database.
"""
from __future__ import annotations

from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "sandbox" / "images" / "app" / "wa_mcp" / "migrations" / "0001_init.sql"
TABLES = ["api_keys", "audit_log", "clients", "media_objects", "messages", "schema_migrations"]


def populate_sql(clients=20, messages=10000, audit_rows=10000, media=50):
    """Schema plus rows: ~330 bytes per message and ~250 per audit row on disk, with their indexes."""
    return SCHEMA.read_text() + f"""
INSERT INTO schema_migrations (version) VALUES ('0001_init');
INSERT INTO clients (name, contact_email)
  SELECT 'client-' || g, 'ops+' || g || '@example.com' FROM generate_series(1, {clients}) g;
INSERT INTO api_keys (client_id, key_prefix, key_hash, pepper_fingerprint)
  SELECT 1 + g % {clients}, lpad(to_hex(g), 8, '0'), md5(g::text) || md5((g * 7)::text), 'f1ngerpr1nt00000'
  FROM generate_series(1, {clients * 2}) g;
INSERT INTO messages (client_id, phone_id, recipient, body, status, wamid, created_at)
  SELECT 1 + g % {clients}, '109876543210987', '+3361234' || lpad((g % 10000)::text, 4, '0'),
         'message ' || g || ' ' || repeat(md5(g::text), 4), CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'sent' END,
         'wamid.' || md5(g::text), now() - (g || ' seconds')::interval
  FROM generate_series(1, {messages}) g;
INSERT INTO audit_log (occurred_at, actor, action, outcome, details)
  SELECT now() - (g || ' seconds')::interval, 'client:' || (1 + g % {clients}),
         (ARRAY['send_attempt', 'login', 'api_key_created'])[1 + g % 3], CASE WHEN g % 40 = 0 THEN 'failure' ELSE 'success' END,
         jsonb_build_object('phone_id', '109876543210987', 'n', g, 'note', md5(g::text))
  FROM generate_series(1, {audit_rows}) g;
INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type)
  SELECT 1 + g % {clients}, 'media/' || g, encode(sha256(g::text::bytea), 'hex'), 1024 * g, 'image/jpeg'
  FROM generate_series(1, {media}) g;
"""
