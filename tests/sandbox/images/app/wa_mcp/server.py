# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP API of the reference whatsapp-mcp service."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import psycopg2

from . import auth, db, graph, one_line, sessions, storage
from .config import Config
from .credentials import JWT_SECRET_FILE, Credentials

MAX_JSON_BYTES = 1 << 20
MAX_MEDIA_BYTES = 64 << 20


class Route(NamedTuple):
    method: str
    pattern: re.Pattern
    handler: str
    # What the Authorization header may carry: "api_key_or_jwt", "api_key" (so a stolen access token cannot open
    # sessions that outlive a JWT secret rotation), or None (the body carries a refresh token).
    auth: str | None = "api_key_or_jwt"
    issues_tokens: bool = False


# /health is handled before these.
ROUTES = (
    Route("GET", re.compile(r"/v1/whoami"), "whoami"),
    Route("POST", re.compile(r"/v1/messages"), "send_message"),
    Route("POST", re.compile(r"/v1/media"), "upload_media"),
    Route("GET", re.compile(r"/v1/media/(\d{1,18})"), "download_media"),
    Route("POST", re.compile(r"/v1/sessions"), "create_session", auth="api_key", issues_tokens=True),
    Route("POST", re.compile(r"/v1/sessions/refresh"), "refresh_session", auth=None, issues_tokens=True),
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: Config, creds: Credentials):
        self.config = config
        # Loaded once: runbooks restart the service to pick up rotated secrets.
        self.creds = creds
        super().__init__(config.listen_address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "wa-mcp"

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        self._dispatch("GET")

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        self._dispatch("POST")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Method, path without query string, and status only: headers and bodies may carry credentials.
        self.log_message('"%s %s" %s', self.command, urlsplit(self.path).path, code)

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            if method == "GET" and path == "/health":
                self._health()
                return
            for route in ROUTES:
                match = route.pattern.fullmatch(path)
                if match and route.method == method:
                    break
            else:
                raise ApiError(404, "not found")
            if route.issues_tokens and self.server.creds.jwt_secret is None:
                raise ApiError(503, f"{JWT_SECRET_FILE} not loaded")
            with db.connection(self.server.config) as conn:
                principal = self._authenticate(conn, route) if route.auth else None
                getattr(self, route.handler)(conn, principal, *match.groups())
        except ApiError as exc:
            self._send_json(exc.status, exc.body)
        except psycopg2.OperationalError as exc:
            self.log_message("database unavailable in %s %s: %s", method, path, one_line(exc))
            self._send_json(503, {"error": "database unavailable"})
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self.log_message("error in %s %s: %s", method, path, one_line(exc))
            self._send_json(500, {"error": "internal error"})

    def _authenticate(self, conn, route: Route) -> auth.Principal:
        try:
            return auth.authenticate(
                conn, self.server.creds, self.headers.get("Authorization"), datetime.now(timezone.utc), accept_jwt=route.auth == "api_key_or_jwt",
            )
        except auth.AuthError:
            raise ApiError(401, "unauthorized") from None
        except auth.Unavailable as exc:
            raise ApiError(503, str(exc)) from None

    def _health(self) -> None:
        creds = self.server.creds
        now = datetime.now(timezone.utc)
        checks = {"db": "ok", "secrets": "; ".join(creds.problems()) or "ok"}
        try:
            with db.connection(self.server.config) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            # "previous" still works, but a DB password rotation is complete only once the current one is accepted.
            checks["db_credential"] = db.last_credential()
        except psycopg2.Error as exc:
            checks["db"] = f"error: {one_line(exc)}"
        if creds.previous is not None:
            checks["previous_pepper"] = creds.previous.status(now)
        healthy = checks["db"] == "ok" and checks["secrets"] == "ok"
        self._send_json(200 if healthy else 503, {"status": "ok" if healthy else "degraded", "checks": checks, **creds.describe(now)})

    def whoami(self, _conn, principal: auth.Principal) -> None:
        self._send_json(200, {
            "client_id": principal.client_id,
            "client_name": principal.client_name,
            "key_prefix": principal.key_prefix,
            "session_id": principal.session_id,
        })

    def create_session(self, conn, principal: auth.Principal) -> None:
        with conn, conn.cursor() as cur:
            tokens = sessions.create(cur, principal.client_id, self.server.creds.jwt_secret, principal.actor)
        self._send_json(201, tokens)

    def refresh_session(self, conn, _principal: None) -> None:
        token = self._read_json().get("refresh_token")
        if not isinstance(token, str) or not token:
            raise ApiError(400, "refresh_token must be a non-empty string")
        try:
            tokens = sessions.refresh(conn, self.server.creds.jwt_secret, token)
        except auth.AuthError:
            raise ApiError(401, "unauthorized") from None
        self._send_json(200, tokens)

    def send_message(self, conn, principal: auth.Principal) -> None:
        body = self._read_json()
        phone_id, to, text = (body.get(key) for key in ("phone_id", "to", "text"))
        if not all(isinstance(value, str) and value for value in (phone_id, to, text)):
            raise ApiError(400, "phone_id, to and text must be non-empty strings")
        token = self.server.creds.access_tokens.get(phone_id)
        if token:
            result = graph.send_text(self.server.config, token, phone_id, to, text)
        else:
            result = graph.SendResult(None, error="no access token for phone_id")
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO messages (client_id, phone_id, recipient, body, status, wamid) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (principal.client_id, phone_id, to, text, "sent" if result.ok else "failed", result.wamid),
            )
            message_id = cur.fetchone()[0]
            details = {"phone_id": phone_id, "message_id": message_id, "http_status": result.http_status}
            if not result.ok:
                details["error"] = result.error
            db.audit(cur, principal.actor, "send_attempt", "success" if result.ok else "failure", details)
        if not result.ok:
            raise ApiError(502, "send failed", message_id=message_id, http_status=result.http_status, detail=result.error)
        self._send_json(202, {"message_id": message_id, "wamid": result.wamid})

    def upload_media(self, conn, principal: auth.Principal) -> None:
        length = self._content_length(MAX_MEDIA_BYTES)
        if length == 0:
            raise ApiError(400, "empty body")
        media_dir = self.server.config.media_dir
        storage_path, sha256, size = storage.store_media(media_dir, principal.client_id, self._body_chunks(length))
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO media_objects (client_id, storage_path, sha256, size_bytes, content_type) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (principal.client_id, storage_path, sha256, size, self.headers.get("Content-Type") or "application/octet-stream"),
                )
                media_id = cur.fetchone()[0]
        except BaseException:
            # No row will reference the blob, so do not leave it behind.
            (media_dir / storage_path).unlink(missing_ok=True)
            raise
        self._send_json(201, {"id": media_id, "storage_path": storage_path, "sha256": sha256, "size_bytes": size})

    def download_media(self, conn, principal: auth.Principal, media_id: str) -> None:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT storage_path, sha256, content_type FROM media_objects WHERE id = %s AND client_id = %s",
                (int(media_id), principal.client_id),
            )
            row = cur.fetchone()
        if row is None:
            raise ApiError(404, "not found")
        storage_path, sha256, content_type = row
        try:
            data = (self.server.config.media_dir / storage_path).read_bytes()
        except FileNotFoundError:
            raise ApiError(500, "media content missing") from None
        # Verifying on read turns silent storage corruption (or a bad restore) into a visible error.
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ApiError(500, "media content corrupted")
        self._send(200, data, content_type)

    def _content_length(self, limit: int) -> int:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "Content-Length required") from None
        if length < 0:
            raise ApiError(400, "invalid Content-Length")
        if length > limit:
            raise ApiError(413, "body too large")
        return length

    def _body_chunks(self, length: int) -> Iterator[bytes]:
        while length:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                raise ApiError(400, "incomplete body")
            length -= len(chunk)
            yield chunk

    def _read_json(self) -> dict:
        raw = b"".join(self._body_chunks(self._content_length(MAX_JSON_BYTES)))
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "invalid JSON body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "JSON object expected")
        return body

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(config: Config) -> None:
    creds = Credentials.load(config.secrets_dir)
    server = Server(config, creds)
    summary = creds.describe()
    print(
        f"wa-mcp listening on {config.listen}; pepper fingerprint {summary['pepper_fingerprint']};"
        f" previous pepper {json.dumps(summary['previous_pepper'])}; JWT secret fingerprint {summary['jwt_secret_fingerprint']};"
        f" phone ids {summary['phone_ids']}",
        file=sys.stderr,
    )
    for problem in creds.problems():
        print(f"wa-mcp warning: {problem}", file=sys.stderr)
    # As PID 1 in a container SIGTERM has no default action; exit promptly so runbook restarts do not wait for SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
