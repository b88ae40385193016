# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for Meta's WhatsApp Cloud (Graph) API: validates access tokens per phone number id and accepts text sends.

Valid tokens live in GRAPH_TOKENS_FILE ({"<phone_id>": ["token", ...]}), re-read on every request so tests and runbooks
can edit it; the /_admin endpoints simulate generating or revoking a System User token in the Meta dashboard.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SEND_PATH = re.compile(r"/v\d+(?:\.\d+)?/([^/]+)/messages")
ADMIN_TOKEN_PATH = re.compile(r"/_admin/tokens/([^/]+)")
INVALID_TOKEN = {"error": {"message": "Error validating access token: Session has expired or is invalid", "type": "OAuthException", "code": 190}}
INVALID_PARAMETER = {"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}}


class TokenStore:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    def load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            print(f"graph-stub: {self.path} is not valid JSON; treating every token as invalid", file=sys.stderr)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(phone_id): [str(token) for token in tokens] for phone_id, tokens in data.items() if isinstance(tokens, list)}

    def valid(self, phone_id: str, token: str) -> bool:
        return any(hmac.compare_digest(token.encode(), known.encode()) for known in self.load().get(phone_id, []))

    def add(self, phone_id: str, token: str) -> int:
        with self.lock:
            data = self.load()
            tokens = data.setdefault(phone_id, [])
            if token not in tokens:
                tokens.append(token)
            self._save(data)
            return len(tokens)

    def remove(self, phone_id: str) -> int:
        with self.lock:
            data = self.load()
            removed = len(data.pop(phone_id, []))
            self._save(data)
            return removed

    def _save(self, data: dict[str, list[str]]) -> None:
        # Atomic replace: a concurrent reader sees either the old or the new file, never a truncated one.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class GraphStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], tokens: TokenStore):
        self.tokens = tokens
        self.sent: Counter[str] = Counter()
        self.sent_lock = threading.Lock()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: GraphStub
    server_version = "graph-stub"

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        if urlsplit(self.path).path == "/_admin/sent":
            with self.server.sent_lock:
                self._send_json(200, dict(self.server.sent))
        else:
            self._send_json(404, {"error": {"message": "Unknown path", "code": 404}})

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        path = urlsplit(self.path).path
        body = self._read_json()
        match = SEND_PATH.fullmatch(path)
        if match:
            self._send_message(match[1], body)
        elif path == "/_admin/tokens":
            phone_id, token = (body or {}).get("phone_id"), (body or {}).get("token")
            if not (isinstance(phone_id, str) and phone_id and isinstance(token, str) and token):
                self._send_json(400, {"error": {"message": "phone_id and token must be non-empty strings", "code": 100}})
                return
            self._send_json(201, {"phone_id": phone_id, "tokens": self.server.tokens.add(phone_id, token)})
        else:
            self._send_json(404, {"error": {"message": "Unknown path", "code": 404}})

    def do_DELETE(self) -> None:  # pylint: disable=invalid-name
        match = ADMIN_TOKEN_PATH.fullmatch(urlsplit(self.path).path)
        if match:
            self._send_json(200, {"phone_id": match[1], "removed": self.server.tokens.remove(match[1])})
        else:
            self._send_json(404, {"error": {"message": "Unknown path", "code": 404}})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Never log headers or bodies: they carry access tokens.
        self.log_message('"%s %s" %s', self.command, urlsplit(self.path).path, code)

    def _send_message(self, phone_id: str, body: Any) -> None:
        scheme, _sep, token = self.headers.get("Authorization", "").partition(" ")
        # Like the real API, the token is checked before the payload.
        if scheme.lower() != "bearer" or not self.server.tokens.valid(phone_id, token.strip()):
            self._send_json(401, INVALID_TOKEN)
            return
        text = body.get("text") if isinstance(body, dict) else None
        valid = (
            isinstance(body, dict) and body.get("messaging_product") == "whatsapp" and body.get("type") == "text"
            and isinstance(body.get("to"), str) and body["to"] and isinstance(text, dict) and isinstance(text.get("body"), str) and text["body"]
        )
        if not valid:
            self._send_json(400, INVALID_PARAMETER)
            return
        with self.server.sent_lock:
            self.server.sent[phone_id] += 1
        self._send_json(200, {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": f"wamid.{secrets.token_hex(16)}"}],
        })

    def _read_json(self) -> Any:
        """Decoded JSON body, or None when absent or invalid (callers answer 400)."""
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    host, _sep, port = os.environ.get("GRAPH_LISTEN", "0.0.0.0:8081").rpartition(":")
    tokens = TokenStore(Path(os.environ.get("GRAPH_TOKENS_FILE", "/var/lib/graph/tokens.json")))
    server = GraphStub((host or "0.0.0.0", int(port)), tokens)
    print(f"graph-stub listening on {host or '0.0.0.0'}:{port}, tokens from {tokens.path}", file=sys.stderr, flush=True)
    # As PID 1 in a container SIGTERM has no default action; exit promptly instead of waiting for SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
