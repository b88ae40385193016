# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sessions: short-lived access JWTs plus rotating refresh tokens (only their SHA-256 is stored).

Each refresh token works once: refreshing marks it used and hands out the next one. Presenting a used token again
means two parties hold the session (the standard rotation reuse detection), so the whole session is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import timedelta

from . import db, jwt
from .auth import AuthError

ACCESS_TOKEN_TTL = 900
REFRESH_TOKEN_TTL = timedelta(days=30)
REFRESH_TOKEN_PREFIX = "wart_"


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _issue_tokens(cur, session_id: int, client_id: int, secret: bytes) -> dict:
    refresh_token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
    cur.execute(
        "INSERT INTO refresh_tokens (session_id, token_hash, expires_at) VALUES (%s, %s, now() + %s)",
        (session_id, hash_refresh_token(refresh_token), REFRESH_TOKEN_TTL),
    )
    issued_at = int(time.time())
    claims = {"sub": str(client_id), "sid": session_id, "iat": issued_at, "exp": issued_at + ACCESS_TOKEN_TTL, "typ": "access"}
    return {"access_token": jwt.encode(claims, secret), "token_type": "Bearer", "expires_in": ACCESS_TOKEN_TTL, "refresh_token": refresh_token}


def create(cur, client_id: int, secret: bytes, actor: str) -> dict:
    """Open an audited session for the client; return its first access and refresh tokens."""
    cur.execute("INSERT INTO sessions (client_id) VALUES (%s) RETURNING id", (client_id,))
    session_id = cur.fetchone()[0]
    db.audit(cur, actor, "session_created", "success", {"session_id": session_id, "client_id": client_id})
    return _issue_tokens(cur, session_id, client_id, secret)


def refresh(conn, secret: bytes, token: str) -> dict:
    """Exchange a refresh token for new tokens; failures are audited and raised as AuthError.

    A failure is committed, not rolled back: a detected reuse must revoke the session although the request fails.
    """
    with conn, conn.cursor() as cur:
        try:
            return _rotate(cur, secret, token)
        except AuthError as exc:
            db.audit(cur, "anonymous", "auth_failure", "failure", {"reason": exc.reason, **exc.details})
            conn.commit()
            raise


def _rotate(cur, secret: bytes, token: str) -> dict:
    # FOR UPDATE serialises two refreshes with the same token: the second one sees it used, which is a reuse.
    cur.execute(
        "SELECT r.id, r.session_id, s.client_id, r.revoked_at IS NOT NULL, s.revoked_at IS NOT NULL, r.used_at IS NOT NULL, r.expires_at <= now()"
        " FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = %s FOR UPDATE OF r, s",
        (hash_refresh_token(token),),
    )
    row = cur.fetchone()
    if row is None:
        raise AuthError("refresh_token_unknown")
    token_id, session_id, client_id, token_revoked, session_revoked, used, expired = row
    if token_revoked:
        raise AuthError("refresh_token_revoked", session_id=session_id)
    if session_revoked:
        raise AuthError("session_revoked", session_id=session_id)
    if used:
        _revoke(cur, session_id, "refresh_token_reused")
        raise AuthError("refresh_token_reused", session_id=session_id)
    if expired:
        raise AuthError("refresh_token_expired", session_id=session_id)
    cur.execute("UPDATE refresh_tokens SET used_at = now() WHERE id = %s", (token_id,))
    cur.execute("UPDATE sessions SET last_used_at = now() WHERE id = %s", (session_id,))
    db.audit(cur, f"client:{client_id}", "session_refreshed", "success", {"session_id": session_id, "client_id": client_id})
    return _issue_tokens(cur, session_id, client_id, secret)


def _revoke(cur, session_id: int, reason: str) -> None:
    """Revoke the session and its unused refresh tokens (the used ones already say when they were used)."""
    cur.execute("UPDATE sessions SET revoked_at = now() WHERE id = %s", (session_id,))
    cur.execute("UPDATE refresh_tokens SET revoked_at = now() WHERE session_id = %s AND revoked_at IS NULL AND used_at IS NULL", (session_id,))
    db.audit(cur, "anonymous", "session_revoked", "success", {"session_id": session_id, "reason": reason})


def status(cur) -> dict:
    """Sessions not revoked, and refresh tokens that would still be accepted (unused, unexpired, session not revoked)."""
    cur.execute(
        "SELECT (SELECT count(*) FROM sessions WHERE revoked_at IS NULL),"
        " (SELECT count(*) FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id"
        "  WHERE r.revoked_at IS NULL AND r.used_at IS NULL AND r.expires_at > now() AND s.revoked_at IS NULL)"
    )
    sessions, refresh_tokens = cur.fetchone()
    return {"active_sessions": sessions, "active_refresh_tokens": refresh_tokens}
