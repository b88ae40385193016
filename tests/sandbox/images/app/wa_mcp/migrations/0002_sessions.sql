-- Copyright: contributors to runbooks.incident
-- GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

-- A session is what a client's refresh tokens belong to: revoking it stops every refresh (not the access tokens
-- already handed out, which are stateless JWTs that only a new auth_jwt_secret invalidates).
CREATE TABLE sessions (
    id bigserial PRIMARY KEY,
    client_id bigint NOT NULL REFERENCES clients ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX sessions_client_id_idx ON sessions (client_id);

-- Only sha256(token) is stored; each refresh marks its token used and issues the next one (rotation).
CREATE TABLE refresh_tokens (
    id bigserial PRIMARY KEY,
    session_id bigint NOT NULL REFERENCES sessions ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
