# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End-to-end smoke checks against a running service (the seeds' "pnpm smoke")."""

from __future__ import annotations

from http.client import HTTPException
from typing import Any

import psycopg2

from . import auth, db, one_line
from .config import Config
from .credentials import load_pepper
from .http_client import request_json

SMOKE_CLIENT = "smoke-test"
SMOKE_ACTOR = "cli:smoke"
# Well-formed but never issued, so a 401 proves that authentication is enforced.
BOGUS_TOKEN = "wamcp_00000000_" + "x" * 43


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'ok' if ok else 'FAIL'}: {name}" + (f" ({detail})" if detail else ""), flush=True)
        self.failed += not ok
        return ok


def _http(method: str, url: str, payload: Any = None, token: str | None = None) -> tuple[int | None, Any, str]:
    """Return (status or None, body, detail for the report line)."""
    try:
        status, body = request_json(method, url, payload, {"Authorization": f"Bearer {token}"} if token else None)
    except (OSError, HTTPException) as exc:
        return None, None, one_line(exc)
    return status, body, f"HTTP {status}"


def smoke(config: Config, base_url: str, send_phone_id: str | None, send_to: str) -> bool:
    report = Report()
    base_url = base_url.rstrip("/")
    status, _body, detail = _http("GET", f"{base_url}/health")
    report.check("GET /health returns 200", status == 200, detail)
    status, _body, detail = _http("GET", f"{base_url}/v1/whoami", token=BOGUS_TOKEN)
    report.check("bogus API key rejected with 401", status == 401, detail)
    try:
        conn = db.connect(config)
    except psycopg2.Error as exc:
        report.check("database reachable", False, one_line(exc))
        return False
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in db.TABLES:
                try:
                    cur.execute(f"SELECT count(*) FROM {table}")  # table names are constants, not input
                    report.check(f"table {table} queryable", True, f"{cur.fetchone()[0]} rows")
                except psycopg2.Error as exc:
                    report.check(f"table {table} queryable", False, one_line(exc))
            if send_phone_id:
                pepper = load_pepper(config.secrets_dir)
                if report.check("API key pepper readable for the smoke key", pepper is not None):
                    _check_send(report, cur, pepper, f"{base_url}/v1/messages", {"phone_id": send_phone_id, "to": send_to, "text": "wa-mcp smoke test"})
    finally:
        conn.close()
    return report.failed == 0


def _check_send(report: Report, cur, pepper: bytes, url: str, message: dict[str, str]) -> None:
    client_id = db.ensure_client(cur, SMOKE_CLIENT, "smoke-test@example.invalid")
    token = auth.issue_key(cur, client_id, pepper, SMOKE_ACTOR)
    prefix = auth.TOKEN_RE.fullmatch(token)[1]
    try:
        status, body, detail = _http("POST", url, message, token)
        if isinstance(body, dict) and body.get("detail"):
            detail += f": {body['detail']}"
        if report.check(f"test send through phone_id {message['phone_id']} accepted", status == 202, detail):
            cur.execute(
                "SELECT count(*) FROM audit_log WHERE action = 'send_attempt' AND outcome = 'success' AND actor = %s AND details->>'message_id' = %s",
                (f"client:{client_id}", str(body["message_id"])),
            )
            report.check("successful send_attempt audited", cur.fetchone()[0] == 1)
    finally:
        report.check(f"smoke API key {prefix} revoked", auth.revoke_key(cur, prefix, SMOKE_ACTOR))
