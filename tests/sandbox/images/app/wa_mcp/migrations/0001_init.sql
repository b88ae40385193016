-- Copyright: contributors to runbooks.incident
-- GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

CREATE TABLE schema_migrations (
    version text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE clients (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    contact_email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    client_id bigint NOT NULL REFERENCES clients ON DELETE CASCADE,
    key_prefix text NOT NULL UNIQUE CHECK (key_prefix ~ '^[0-9a-f]{8}$'),
    key_hash text NOT NULL,
    pepper_fingerprint text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

CREATE TABLE messages (
    id bigserial PRIMARY KEY,
    client_id bigint NOT NULL REFERENCES clients,
    phone_id text NOT NULL,
    recipient text NOT NULL,
    body text NOT NULL,
    status text NOT NULL CHECK (status IN ('sent', 'failed')),
    wamid text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_client_id_created_at_idx ON messages (client_id, created_at);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('success', 'failure')),
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_occurred_at_idx ON audit_log (occurred_at);
CREATE INDEX audit_log_action_occurred_at_idx ON audit_log (action, occurred_at);

CREATE TABLE media_objects (
    id bigserial PRIMARY KEY,
    client_id bigint NOT NULL REFERENCES clients,
    storage_path text NOT NULL UNIQUE,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    content_type text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
