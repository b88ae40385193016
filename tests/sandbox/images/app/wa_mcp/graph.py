# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client for the WhatsApp Cloud (Graph) API send endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from http.client import HTTPException
from urllib.parse import quote

from .config import Config
from .http_client import request_json


@dataclass(frozen=True)
class SendResult:
    http_status: int | None
    wamid: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.wamid is not None


def send_text(config: Config, access_token: str, phone_id: str, to: str, text: str) -> SendResult:
    url = f"{config.graph_url}/{config.graph_api_version}/{quote(phone_id, safe='')}/messages"
    payload = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}
    try:
        status, body = request_json("POST", url, payload, {"Authorization": f"Bearer {access_token}"}, timeout=10)
    except (OSError, HTTPException) as exc:
        return SendResult(None, error=_redact(f"connection error: {getattr(exc, 'reason', exc)}", access_token))
    if status == 200:
        try:
            return SendResult(status, wamid=str(body["messages"][0]["id"]))
        except (KeyError, IndexError, TypeError):
            return SendResult(status, error="malformed Graph response")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return SendResult(status, error=_redact(f"{error.get('code')}: {error.get('message')}", access_token))
    return SendResult(status, error=f"HTTP {status}")


def _redact(message: str, access_token: str) -> str:
    # The error text ends up in the audit log and API responses, so it is shortened and scrubbed of the token defensively.
    return message.replace(access_token, "[redacted]")[:200]
