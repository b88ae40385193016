# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Request authentication: API keys (HMAC-SHA256 with a server-side pepper) and access JWTs (see sessions.py)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import db, jwt
from .credentials import JWT_SECRET_FILE, Credentials, fingerprint

TOKEN_RE = re.compile(r"wamcp_([0-9a-f]{8})_[A-Za-z0-9_-]+")
CLIENT_ID_RE = re.compile(r"[1-9][0-9]{0,17}")


class AuthError(Exception):
    def __init__(self, reason: str, **details: Any):
        super().__init__(reason)
        self.reason = reason
        # Audited beside the reason, so never a token or a secret.
        self.details = details


class Unavailable(Exception):
    """The secret needed to verify this kind of credential is not loaded: the server's fault, so 503 and no audit."""


@dataclass(frozen=True)
class Principal:
    client_id: int
    client_name: str
    key_prefix: str | None = None
    session_id: int | None = None

    @property
    def actor(self) -> str:
        return f"client:{self.client_id}"


def hash_token(pepper: bytes, token: str) -> str:
    return hmac.new(pepper, token.encode(), hashlib.sha256).hexdigest()


def new_token() -> tuple[str, str]:
    """Return (key_prefix, token)."""
    prefix = secrets.token_hex(4)
    return prefix, f"wamcp_{prefix}_{secrets.token_urlsafe(32)}"


def issue_key(cur, client_id: int, pepper: bytes, actor: str) -> str:
    """Insert an audited key for the client and return its token, which is not stored anywhere."""
    pepper_fp = fingerprint(pepper)
    while True:
        prefix, token = new_token()
        cur.execute(
            "INSERT INTO api_keys (client_id, key_prefix, key_hash, pepper_fingerprint) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key_prefix) DO NOTHING RETURNING id",
            (client_id, prefix, hash_token(pepper, token), pepper_fp),
        )
        # A prefix collision (32 random bits) just means drawing again.
        if cur.fetchone():
            db.audit(cur, actor, "api_key_created", "success", {"key_prefix": prefix, "client_id": client_id, "pepper_fingerprint": pepper_fp})
            return token


def revoke_key(cur, key_prefix: str, actor: str) -> bool:
    """Revoke an active key; False if there is none with that prefix."""
    cur.execute("UPDATE api_keys SET revoked_at = now() WHERE key_prefix = %s AND revoked_at IS NULL", (key_prefix,))
    if cur.rowcount:
        db.audit(cur, actor, "api_key_revoked", "success", {"key_prefix": key_prefix})
    return bool(cur.rowcount)


def authenticate(conn, creds: Credentials, authorization: str | None, now: datetime, accept_jwt: bool = True) -> Principal:
    """Verify an Authorization header value (an API key, or an access JWT if ``accept_jwt``).

    Failures are audited and raised as AuthError; a credential whose secret is not loaded raises Unavailable.
    """
    try:
        with conn, conn.cursor() as cur:
            return _verify(cur, creds, authorization, now, accept_jwt)
    except AuthError as exc:
        with conn, conn.cursor() as cur:
            db.audit(cur, "anonymous", "auth_failure", "failure", {"reason": exc.reason, **exc.details})
        raise


def _verify(cur, creds: Credentials, authorization: str | None, now: datetime, accept_jwt: bool) -> Principal:
    scheme, _sep, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing_bearer_token")
    token = token.strip()
    # API keys never contain a dot, so the shape alone tells the two apart.
    if jwt.looks_like_jwt(token):
        if not accept_jwt:
            raise AuthError("api_key_required")
        if creds.jwt_secret is None:
            raise Unavailable(f"{JWT_SECRET_FILE} not loaded")
        return _verify_access_token(cur, creds.jwt_secret, token, now)
    if creds.pepper is None:
        raise Unavailable("API key pepper not loaded")
    return _verify_api_key(cur, creds, token, now)


def _verify_access_token(cur, secret: bytes, token: str, now: datetime) -> Principal:
    """Check signature, algorithm and expiry only: deliberately stateless, the sessions table is not consulted.

    Revoking a session therefore stops its refreshes but not the access tokens already handed out; those stay valid
    until they expire (15 minutes) or until ``auth_jwt_secret`` is rotated, which is how a key compromise kills them.
    """
    try:
        claims = jwt.decode(token, secret, int(now.timestamp()))
    except jwt.JwtError as exc:
        raise AuthError(exc.reason) from None
    subject, session_id = claims.get("sub"), claims.get("sid")
    if claims.get("typ") != "access" or not isinstance(subject, str) or not CLIENT_ID_RE.fullmatch(subject) or not isinstance(session_id, int):
        raise AuthError("jwt_malformed")
    # The client row gives the name; a deleted client's tokens must not act for anyone.
    cur.execute("SELECT name FROM clients WHERE id = %s", (int(subject),))
    row = cur.fetchone()
    if row is None:
        raise AuthError("jwt_unknown_client", session_id=session_id)
    return Principal(int(subject), row[0], session_id=session_id)


def _verify_api_key(cur, creds: Credentials, token: str, now: datetime) -> Principal:
    match = TOKEN_RE.fullmatch(token)
    if not match:
        raise AuthError("malformed_token")
    prefix = match[1]
    # FOR UPDATE serialises concurrent requests with the same key, so a re-hash happens (and is audited) once.
    cur.execute(
        "SELECT k.id, k.client_id, c.name, k.key_hash, k.revoked_at FROM api_keys k JOIN clients c ON c.id = k.client_id"
        " WHERE k.key_prefix = %s FOR UPDATE OF k",
        (prefix,),
    )
    row = cur.fetchone()
    if row is None:
        raise AuthError("unknown_key", key_prefix=prefix)
    key_id, client_id, client_name, key_hash, revoked_at = row
    principal = Principal(client_id, client_name, key_prefix=prefix)
    if revoked_at is not None:
        raise AuthError("revoked", key_prefix=prefix)
    if not hmac.compare_digest(key_hash, hash_token(creds.pepper, token)):
        previous = creds.previous
        if previous is None or not hmac.compare_digest(key_hash, hash_token(previous.key, token)):
            raise AuthError("hash_mismatch", key_prefix=prefix)
        if not previous.accepted(now):
            # Distinct reason so runbooks can tell "key hashed with a retired pepper" from a wrong secret.
            raise AuthError("previous_pepper_not_accepted", key_prefix=prefix)
        cur.execute(
            "UPDATE api_keys SET key_hash = %s, pepper_fingerprint = %s WHERE id = %s",
            (hash_token(creds.pepper, token), creds.pepper_fingerprint, key_id),
        )
        db.audit(
            cur, principal.actor, "api_key_rehashed", "success",
            {"key_prefix": prefix, "from_fingerprint": previous.fingerprint, "to_fingerprint": creds.pepper_fingerprint},
        )
    cur.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (key_id,))
    return principal
