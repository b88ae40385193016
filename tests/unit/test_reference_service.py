# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End-to-end tests of the reference whatsapp-mcp service against a real PostgreSQL and the Graph API stub."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "tests" / "sandbox" / "images" / "app"
sys.path.insert(0, str(APP_DIR))

from wa_mcp.archive import archive_path  # noqa: E402 pylint: disable=wrong-import-position
from wa_mcp.credentials import fingerprint  # noqa: E402 pylint: disable=wrong-import-position

PEPPER_1 = "1f" * 32
PEPPER_2 = "2e" * 32
JWT_SECRET_1 = "jwt-secret-one-" + "j" * 33
JWT_SECRET_2 = "jwt-secret-two-" + "k" * 33
PHONE_ID = "1001"
ACCESS_TOKEN = "EAAG-test-access-token-" + "q" * 40
DB_PASSWORD = "db-password-never-logged"
TOKEN_RE = re.compile(r"wamcp_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
MIGRATED = "applied 2 migration(s): 0001_init, 0002_sessions"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, *, token: str | None = None, payload=None, data: bytes | None = None, headers: dict | None = None) -> Response:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if payload is not None:
        data = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return Response(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers), exc.read())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_parts(token: str) -> tuple[dict, dict]:
    """(header, claims) of a JWT, unverified."""
    header, payload, _signature = token.split(".")
    return json.loads(base64.urlsafe_b64decode(header + "==")), json.loads(base64.urlsafe_b64decode(payload + "=="))


def sign_jwt(header: dict, claims: dict, secret: str | None, digest=hashlib.sha256) -> str:
    """A JWT built independently of the service; no secret means an empty signature (as "alg": "none" has)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b64url(hmac.new(secret.encode(), signing_input.encode(), digest).digest()) if secret else ""
    return f"{signing_input}.{signature}"


def wait_for_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}: {log.read_text()}")
        try:
            http("GET", url)
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{url} did not come up: {log.read_text()}")


def assert_no_secrets(text: str, secrets: set[str]) -> None:
    leaked = [secret[:6] + "..." for secret in secrets if secret in text]
    assert not leaked, f"secret values leaked: {leaked}"


@pytest.fixture(scope="module")
def graph_stub(tmp_path_factory, free_port):
    root = tmp_path_factory.mktemp("graph")
    tokens_file, log = root / "tokens.json", root / "graph.log"
    tokens_file.write_text(json.dumps({PHONE_ID: [ACCESS_TOKEN]}))
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "GRAPH_LISTEN": url.removeprefix("http://"), "GRAPH_TOKENS_FILE": str(tokens_file)}
    with log.open("wb") as log_fh:
        proc = subprocess.Popen([sys.executable, str(APP_DIR / "graph_stub.py")], env=env, stderr=log_fh, stdout=log_fh)
    try:
        wait_for_http(f"{url}/_admin/sent", proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert_no_secrets(log.read_text(), {ACCESS_TOKEN})


class App:
    """One service instance: its own database, secrets, media and archive directories."""

    def __init__(self, root: Path, pg_server, dbname: str, graph_url: str, free_port):
        self.pg_server, self.dbname, self.free_port = pg_server, dbname, free_port
        self.secrets_dir, self.media_dir, self.archive_dir = root / "secrets", root / "media", root / "archive"
        self.secrets_dir.mkdir()
        self.secret_values: set[str] = set()
        (root / "db_password").write_text(DB_PASSWORD + "\n")  # trust auth ignores it, but it is read and must not leak
        self.secret_values.add(DB_PASSWORD)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(APP_DIR),
            "WA_DB_HOST": pg_server.host,
            "WA_DB_PORT": str(pg_server.port),
            "WA_DB_NAME": dbname,
            "WA_DB_USER": pg_server.user,
            "WA_DB_PASSWORD_FILE": str(root / "db_password"),
            "WA_SECRETS_DIR": str(self.secrets_dir),
            "WA_MEDIA_DIR": str(self.media_dir),
            "WA_AUDIT_ARCHIVE_DIR": str(self.archive_dir),
            "WA_GRAPH_URL": graph_url,
        }
        self.write_secret("api_key_pepper", PEPPER_1 + "\n")
        self.write_secret("auth_jwt_secret", JWT_SECRET_1 + "\n")
        self.write_secret(f"wa_access_token_{PHONE_ID}", ACCESS_TOKEN + "\n")

    def write_secret(self, name: str, value: str, confidential: bool = True) -> None:
        (self.secrets_dir / name).write_text(value)
        if confidential:
            self.secret_values.add(value.strip())

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "wa_mcp", *args], env=self.env, capture_output=True, text=True, timeout=60, check=False)
        assert_no_secrets(proc.stderr, self.secret_values)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def issue_key(self, client: str = "acme") -> str:
        token = self.cli("keys", "issue", "--client", client).stdout.strip()
        assert TOKEN_RE.fullmatch(token)
        self.secret_values.add(token)
        return token

    @contextmanager
    def serve(self, **env_overrides: str):
        url = f"http://127.0.0.1:{self.free_port()}"
        log = self.secrets_dir.parent / "server.log"
        with log.open("wb") as log_fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wa_mcp", "serve"], env={**self.env, "WA_LISTEN": url.removeprefix("http://"), **env_overrides},
                stdout=log_fh, stderr=log_fh,
            )
        try:
            wait_for_http(f"{url}/health", proc, log)
            yield url
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0, "SIGTERM should stop the server cleanly"
        output = log.read_text()
        assert '"GET /health"' in output  # request lines are logged...
        assert_no_secrets(output, self.secret_values)  # ...but never a secret

    def query(self, sql: str, params=None) -> list[tuple]:
        conn = self.pg_server.connect(self.dbname, options="-c timezone=UTC")
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def audit(self, action: str) -> list[tuple]:
        return self.query("SELECT actor, outcome, details FROM audit_log WHERE action = %s ORDER BY id", (action,))


@pytest.fixture
def app(request, pg_server, tmp_path, graph_stub, free_port) -> App:
    dbname = pg_server.create_database(f"wa_{request.node.name.removeprefix('test_')}"[:63])
    instance = App(tmp_path, pg_server, dbname, graph_stub, free_port)
    assert instance.cli("migrate").stdout.strip() == MIGRATED
    return instance


def test_migrate_is_idempotent_and_concurrency_safe(pg_server, tmp_path, graph_stub, free_port):
    instance = App(tmp_path, pg_server, pg_server.create_database("wa_migrate"), graph_stub, free_port)
    command = [sys.executable, "-m", "wa_mcp", "migrate"]
    runs = [subprocess.Popen(command, env=instance.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _run in range(3)]
    outputs = sorted(proc.communicate(timeout=60)[0].strip() for proc in runs)
    assert [proc.returncode for proc in runs] == [0, 0, 0]
    assert outputs == [MIGRATED, "schema up to date", "schema up to date"]
    assert instance.cli("migrate").stdout.strip() == "schema up to date"
    assert instance.query("SELECT version FROM schema_migrations ORDER BY 1") == [("0001_init",), ("0002_sessions",)]


def test_seed_creates_real_data_once(app):
    proc = app.cli("seed", "--clients", "3", "--keys-per-client", "2", "--messages", "500", "--audit-rows", "400",
                   "--media-files", "4", "--media-size", "2048", "--sessions", "5", "--print-keys", "2")
    tokens = proc.stdout.split()
    assert len(tokens) == 2 and all(TOKEN_RE.fullmatch(token) for token in tokens)
    app.secret_values.update(tokens)
    assert "seeded 3 client(s), 6 API key(s)" in proc.stderr
    counts = app.query("SELECT (SELECT count(*) FROM clients), (SELECT count(*) FROM api_keys), (SELECT count(*) FROM messages),"
                       " (SELECT count(*) FROM audit_log), (SELECT count(*) FROM media_objects)")
    assert counts == [(3, 6, 500, 400, 4)]
    assert app.query("SELECT DISTINCT pepper_fingerprint FROM api_keys") == [(fingerprint(PEPPER_1),)]
    assert sessions_status(app) == {"active_sessions": 5, "active_refresh_tokens": 5}
    assert app.query("SELECT DISTINCT phone_id FROM messages") == [(PHONE_ID,)]
    assert app.query("SELECT count(*) FROM messages WHERE (status = 'sent') <> (wamid IS NOT NULL)") == [(0,)]
    assert app.query("SELECT min(occurred_at) > now() - interval '30 days 1 minute', count(DISTINCT action) >= 3 FROM audit_log") == [(True, True)]
    for storage_path, sha256, size in app.query("SELECT storage_path, sha256, size_bytes FROM media_objects"):
        content = (app.media_dir / storage_path).read_bytes()
        assert (hashlib.sha256(content).hexdigest(), len(content), size) == (sha256, 2048, 2048)

    assert app.cli("seed").stdout.strip() == "already seeded"
    assert app.query("SELECT count(*) FROM clients") == [(3,)]
    with app.serve() as url:
        whoami = http("GET", f"{url}/v1/whoami", token=tokens[0])
        assert whoami.status == 200 and whoami.json()["key_prefix"] == tokens[0].split("_")[1]


def test_health_reports_each_dependency(app):
    with app.serve() as url:
        health = http("GET", f"{url}/health")
        assert health.status == 200
        assert health.json() == {
            "status": "ok",
            "checks": {"db": "ok", "secrets": "ok", "db_credential": "current"},
            "pepper_fingerprint": fingerprint(PEPPER_1),
            "previous_pepper": None,
            "jwt_secret_fingerprint": fingerprint(JWT_SECRET_1),
            "phone_ids": [PHONE_ID],
        }
        assert http("GET", f"{url}/nope").status == 404
    with app.serve(WA_DB_NAME="no_such_db") as url:
        health = http("GET", f"{url}/health")
        assert health.status == 503 and health.json()["checks"]["db"].startswith("error: OperationalError")
        assert "db_credential" not in health.json()["checks"]
        assert http("GET", f"{url}/v1/whoami", token="wamcp_00000000_x").json() == {"error": "database unavailable"}
    (app.secrets_dir / f"wa_access_token_{PHONE_ID}").rename(app.secrets_dir / f"wa_access_token_{PHONE_ID}.bak")
    (app.secrets_dir / "api_key_pepper").unlink()
    with app.serve() as url:
        health = http("GET", f"{url}/health")
        assert health.status == 503
        body = health.json()
        assert body["status"] == "degraded" and body["checks"]["db"] == "ok"
        assert "api_key_pepper" in body["checks"]["secrets"] and "wa_access_token_" in body["checks"]["secrets"]
        assert body["pepper_fingerprint"] is None and body["phone_ids"] == []
        assert http("GET", f"{url}/v1/whoami", token="wamcp_00000000_x").status == 503


def test_auth_and_pepper_rotation(app):
    active, idle, doomed = (app.issue_key(client) for client in ("acme", "acme", "globex"))
    prefix = {token: token.split("_")[1] for token in (active, idle, doomed)}
    with app.serve() as url:
        acme_id = app.query("SELECT id FROM clients WHERE name = 'acme'")[0][0]
        whoami = http("GET", f"{url}/v1/whoami", token=active)
        assert (whoami.status, whoami.json()) == (200, {"client_id": acme_id, "client_name": "acme", "key_prefix": prefix[active], "session_id": None})
        assert app.query("SELECT last_used_at IS NOT NULL FROM api_keys WHERE key_prefix = %s", (prefix[active],)) == [(True,)]
        tampered = active[:-4] + ("AAAA" if not active.endswith("AAAA") else "BBBB")
        assert http("GET", f"{url}/v1/whoami", token=tampered).status == 401
        assert http("GET", f"{url}/v1/whoami", token="not-a-key").status == 401
        missing = http("GET", f"{url}/v1/whoami")
        assert (missing.status, missing.json()) == (401, {"error": "unauthorized"})
        assert http("GET", f"{url}/v1/whoami", token=doomed).status == 200
        app.cli("keys", "revoke", "--prefix", prefix[doomed])
        assert http("GET", f"{url}/v1/whoami", token=doomed).status == 401
    reasons = [(details["reason"], details.get("key_prefix")) for _actor, _outcome, details in app.audit("auth_failure")]
    assert reasons == [("hash_mismatch", prefix[active]), ("malformed_token", None), ("missing_bearer_token", None), ("revoked", prefix[doomed])]

    # Rotation: the old pepper becomes "previous" with a grace period.
    app.write_secret("api_key_pepper.previous", PEPPER_1)
    expires_at = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    app.write_secret("api_key_pepper.previous_expires_at", expires_at, confidential=False)
    app.write_secret("api_key_pepper", PEPPER_2 + "\n")
    fp1, fp2 = fingerprint(PEPPER_1), fingerprint(PEPPER_2)
    with app.serve() as url:
        health = http("GET", f"{url}/health").json()
        assert health["pepper_fingerprint"] == fp2
        assert health["previous_pepper"]["fingerprint"] == fp1 and health["previous_pepper"]["accepted"] is True
        assert health["checks"]["previous_pepper"] == "accepted"
        for _attempt in range(2):
            assert http("GET", f"{url}/v1/whoami", token=active).status == 200
    assert app.query("SELECT pepper_fingerprint FROM api_keys WHERE key_prefix = %s", (prefix[active],)) == [(fp2,)]
    assert app.query("SELECT pepper_fingerprint FROM api_keys WHERE key_prefix = %s", (prefix[idle],)) == [(fp1,)]
    assert app.audit("api_key_rehashed") == [
        (f"client:{acme_id}", "success", {"key_prefix": prefix[active], "from_fingerprint": fp1, "to_fingerprint": fp2})
    ]

    # After the grace period (or with an unusable expiry) only re-hashed keys still work.
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    for expiry, status in ((past, "expired"), ("next tuesday", "not accepted"), ("2099-01-01T00:00:00", "not accepted"), (None, "not accepted")):
        if expiry is None:
            (app.secrets_dir / "api_key_pepper.previous_expires_at").unlink()
        else:
            app.write_secret("api_key_pepper.previous_expires_at", expiry, confidential=False)
        with app.serve() as url:
            health = http("GET", f"{url}/health")
            assert health.status == 200 and health.json()["previous_pepper"]["accepted"] is False
            assert health.json()["checks"]["previous_pepper"].startswith(status)
            assert http("GET", f"{url}/v1/whoami", token=idle).status == 401
            assert http("GET", f"{url}/v1/whoami", token=active).status == 200
    assert app.audit("auth_failure")[-1][2] == {"reason": "previous_pepper_not_accepted", "key_prefix": prefix[idle]}
    assert len(app.audit("api_key_rehashed")) == 1


def test_send_through_graph(app, graph_stub, free_port):
    token = app.issue_key("acme")
    client_id = app.query("SELECT id FROM clients WHERE name = 'acme'")[0][0]
    sent_before = http("GET", f"{graph_stub}/_admin/sent").json().get(PHONE_ID, 0)
    message = {"phone_id": PHONE_ID, "to": "15551234567", "text": "hello"}
    with app.serve() as url:
        ok = http("POST", f"{url}/v1/messages", token=token, payload=message)
        assert ok.status == 202, ok.body
        assert ok.json()["wamid"].startswith("wamid.")
        assert http("GET", f"{graph_stub}/_admin/sent").json()[PHONE_ID] == sent_before + 1
        # Simulate the System User token being revoked in the Meta dashboard.
        assert http("DELETE", f"{graph_stub}/_admin/tokens/{PHONE_ID}").json()["removed"] == 1
        try:
            rejected = http("POST", f"{url}/v1/messages", token=token, payload=message)
        finally:
            http("POST", f"{graph_stub}/_admin/tokens", payload={"phone_id": PHONE_ID, "token": ACCESS_TOKEN})
        assert rejected.status == 502 and rejected.json()["http_status"] == 401 and "190" in rejected.json()["detail"]
        unknown = http("POST", f"{url}/v1/messages", token=token, payload={**message, "phone_id": "999"})
        assert unknown.status == 502 and unknown.json()["http_status"] is None
        assert http("POST", f"{url}/v1/messages", token=token, payload={"phone_id": PHONE_ID}).status == 400
        assert http("POST", f"{url}/v1/messages", token=token, data=b"{not json", headers={"Content-Type": "application/json"}).status == 400
    with app.serve(WA_GRAPH_URL=f"http://127.0.0.1:{free_port()}") as url:
        unreachable = http("POST", f"{url}/v1/messages", token=token, payload=message)
        assert unreachable.status == 502 and unreachable.json()["detail"].startswith("connection error")

    rows = app.query("SELECT id, status, wamid FROM messages ORDER BY id")
    assert [(status, wamid is not None) for _id, status, wamid in rows] == [("sent", True), ("failed", False), ("failed", False), ("failed", False)]
    assert rows[0][2] == ok.json()["wamid"]
    attempts = app.audit("send_attempt")
    assert [(actor, outcome) for actor, outcome, _details in attempts] == [(f"client:{client_id}", "success")] + [(f"client:{client_id}", "failure")] * 3
    assert attempts[0][2] == {"phone_id": PHONE_ID, "message_id": rows[0][0], "http_status": 200}
    assert attempts[1][2]["http_status"] == 401 and "Error validating access token" in attempts[1][2]["error"]
    assert attempts[2][2] == {"phone_id": "999", "message_id": rows[2][0], "http_status": None, "error": "no access token for phone_id"}
    assert_no_secrets(json.dumps([details for _actor, _outcome, details in attempts]), app.secret_values)


def test_media_round_trip(app):
    owner, stranger = app.issue_key("acme"), app.issue_key("globex")
    content = os.urandom(100_000)
    with app.serve() as url:
        created = http("POST", f"{url}/v1/media", token=owner, data=content, headers={"Content-Type": "image/png"})
        assert created.status == 201
        media = created.json()
        assert re.fullmatch(r"\d+/\d{4}/\d{2}/[0-9a-f]{32}", media["storage_path"])
        assert (media["sha256"], media["size_bytes"]) == (hashlib.sha256(content).hexdigest(), len(content))
        assert (app.media_dir / media["storage_path"]).read_bytes() == content
        assert not list(app.media_dir.rglob(".*")), "temporary upload files left behind"
        fetched = http("GET", f"{url}/v1/media/{media['id']}", token=owner)
        assert (fetched.status, fetched.headers["Content-Type"], fetched.body) == (200, "image/png", content)
        assert http("GET", f"{url}/v1/media/{media['id']}", token=stranger).status == 404
        assert http("GET", f"{url}/v1/media/{media['id'] + 1}", token=owner).status == 404
        assert http("GET", f"{url}/v1/media/{media['id']}").status == 401
        (app.media_dir / media["storage_path"]).write_bytes(b"bit rot")
        assert http("GET", f"{url}/v1/media/{media['id']}", token=owner).json() == {"error": "media content corrupted"}
    assert app.query("SELECT storage_path, content_type FROM media_objects") == [(media["storage_path"], "image/png")]


def test_keys_status_and_revoke_all(app):
    tokens = [app.issue_key(client) for client in ("acme", "acme", "globex")]
    app.cli("keys", "revoke", "--prefix", tokens[0].split("_")[1])
    fp1, fp2 = fingerprint(PEPPER_1), fingerprint(PEPPER_2)

    def status() -> dict:
        return json.loads(app.cli("keys", "status").stdout)

    assert status() == {"total": 3, "active": 2, "revoked": 1, "by_pepper_fingerprint": {fp1: 2}, "current_pepper_fingerprint": fp1}
    app.write_secret("api_key_pepper", PEPPER_2)
    app.issue_key("initech")
    assert status() == {"total": 4, "active": 3, "revoked": 1, "by_pepper_fingerprint": {fp1: 2, fp2: 1}, "current_pepper_fingerprint": fp2}

    assert app.cli("keys", "revoke-all", "--reason", "pepper leaked").stdout.strip() == "3"
    assert status()["active"] == 0
    assert app.audit("api_keys_revoked_all") == [("cli", "success", {"reason": "pepper leaked", "count": 3})]
    failed = app.cli("keys", "revoke", "--prefix", "deadbeef", check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "no active API key with prefix deadbeef" in failed.stderr


def test_audit_archive_is_append_only(app):
    def add_row(hours_ago: int, minute: int = 10) -> None:
        app.query(
            "INSERT INTO audit_log (occurred_at, actor, action, outcome, details)"
            " VALUES (date_trunc('hour', now()) - %s * interval '1 hour' + %s * interval '1 minute', 'cli', 'login', 'success', %s)",
            (hours_ago, minute, json.dumps({"hours_ago": hours_ago, "minute": minute})),
        )

    for hours_ago, minute in ((3, 50), (3, 10), (2, 0), (0, 0)):
        add_row(hours_ago, minute)
    assert app.cli("audit-archive").stdout.strip() == "wrote 2 file(s); 0 hour(s) already archived"
    current_hour = app.query("SELECT date_trunc('hour', now())")[0][0]
    files = {hours_ago: archive_path(app.archive_dir, current_hour - timedelta(hours=hours_ago)) for hours_ago in (3, 2)}
    assert sorted(app.archive_dir.rglob("*.jsonl")) == sorted(files.values())
    assert not list(app.archive_dir.rglob(".*")), "temporary archive files left behind"
    lines = files[3].read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [json.dumps(row, sort_keys=True) for row in rows] == lines
    assert [row["details"] for row in rows] == [{"hours_ago": 3, "minute": 50}, {"hours_ago": 3, "minute": 10}]  # ordered by id
    assert rows[0]["id"] < rows[1]["id"] and set(rows[0]) == {"id", "occurred_at", "actor", "action", "outcome", "details"}

    snapshot = files[3].read_bytes(), files[3].stat().st_mtime_ns
    add_row(3, 30)  # arrives late for an hour that is already archived
    add_row(5)
    assert app.cli("audit-archive").stdout.strip() == "wrote 1 file(s); 2 hour(s) already archived"
    assert (files[3].read_bytes(), files[3].stat().st_mtime_ns) == snapshot
    assert len(list(app.archive_dir.rglob("*.jsonl"))) == 3


def test_smoke(app, free_port):
    app.cli("seed", "--clients", "2", "--keys-per-client", "1", "--messages", "10", "--audit-rows", "10", "--media-files", "1")
    with app.serve() as url:
        proc = app.cli("smoke", "--url", url, "--send-phone-id", PHONE_ID, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert lines and all(line.startswith("ok: ") for line in lines)
        assert any("table messages queryable (10 rows)" in line for line in lines)
        assert any("bogus API key rejected" in line for line in lines)
        assert any("successful send_attempt audited" in line for line in lines)
    assert app.query("SELECT count(*), count(revoked_at) FROM api_keys k JOIN clients c ON c.id = k.client_id WHERE c.name = 'smoke-test'") == [(1, 1)]

    down = app.cli("smoke", "--url", f"http://127.0.0.1:{free_port()}", check=False)
    assert down.returncode == 1 and "FAIL: GET /health returns 200" in down.stdout


class SessionClient:
    """The session endpoints of one running service; every token it sees joins the app's leak check."""

    def __init__(self, app: App, url: str):
        self.app, self.url = app, url

    def create(self, token: str | None) -> Response:
        return self._tokens(http("POST", f"{self.url}/v1/sessions", token=token))

    def refresh(self, refresh_token: str) -> Response:
        return self._tokens(http("POST", f"{self.url}/v1/sessions/refresh", payload={"refresh_token": refresh_token}))

    def whoami(self, token: str) -> Response:
        return http("GET", f"{self.url}/v1/whoami", token=token)

    def _tokens(self, response: Response) -> Response:
        if response.status in (200, 201):
            self.app.secret_values.update((response.json()["access_token"], response.json()["refresh_token"]))
        return response


def sessions_status(app: App) -> dict:
    return json.loads(app.cli("sessions", "status").stdout)


def failure_reasons(app: App) -> list[str]:
    return [details["reason"] for _actor, _outcome, details in app.audit("auth_failure")]


def test_sessions_refresh_rotation_and_reuse(app):
    key = app.issue_key("acme")
    acme_id = app.query("SELECT id FROM clients WHERE name = 'acme'")[0][0]
    with app.serve() as url:
        api = SessionClient(app, url)
        created = api.create(key)
        assert created.status == 201
        first = created.json()
        assert set(first) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert (first["token_type"], first["expires_in"]) == ("Bearer", 900)
        assert re.fullmatch(r"wart_[A-Za-z0-9_-]{43}", first["refresh_token"])
        session_id = app.query("SELECT id FROM sessions")[0][0]
        header, claims = jwt_parts(first["access_token"])
        assert header == {"alg": "HS256", "typ": "JWT"}
        assert claims == {"sub": str(acme_id), "sid": session_id, "iat": claims["iat"], "exp": claims["iat"] + 900, "typ": "access"}
        assert abs(claims["iat"] - time.time()) < 60
        signing_input, _dot, signature = first["access_token"].rpartition(".")
        assert signature == b64url(hmac.new(JWT_SECRET_1.encode(), signing_input.encode(), hashlib.sha256).digest())

        whoami = api.whoami(first["access_token"])
        assert (whoami.status, whoami.json()) == (200, {"client_id": acme_id, "client_name": "acme", "key_prefix": None, "session_id": session_id})
        upload = http("POST", f"{url}/v1/media", token=first["access_token"], data=b"scan", headers={"Content-Type": "image/png"})
        assert upload.status == 201
        assert app.query("SELECT client_id FROM media_objects") == [(acme_id,)]
        # Only an API key opens a session: a stolen access token must not mint refresh tokens that outlive it.
        assert api.create(first["access_token"]).status == 401
        assert api.create(None).status == 401

        refreshed = api.refresh(first["refresh_token"])
        assert refreshed.status == 200
        second = refreshed.json()
        assert set(second) == set(first) and second["refresh_token"] != first["refresh_token"]
        assert jwt_parts(second["access_token"])[1]["sid"] == session_id
        assert api.whoami(second["access_token"]).status == 200
        assert app.query("SELECT token_hash, used_at IS NOT NULL, expires_at - created_at FROM refresh_tokens ORDER BY id") == [
            (hashlib.sha256(first["refresh_token"].encode()).hexdigest(), True, timedelta(days=30)),
            (hashlib.sha256(second["refresh_token"].encode()).hexdigest(), False, timedelta(days=30)),
        ]
        assert sessions_status(app) == {"active_sessions": 1, "active_refresh_tokens": 1}

        # The first token presented again: someone else holds a copy, so the whole session goes.
        reused = api.refresh(first["refresh_token"])
        assert (reused.status, reused.json()) == (401, {"error": "unauthorized"})
        assert app.query("SELECT revoked_at IS NOT NULL FROM sessions") == [(True,)]
        assert api.refresh(second["refresh_token"]).status == 401
        assert api.refresh("wart_" + "x" * 43).status == 401
        assert http("POST", f"{url}/v1/sessions/refresh", payload={}).status == 400
        assert sessions_status(app) == {"active_sessions": 0, "active_refresh_tokens": 0}
        # Access tokens are stateless: this one still works until it expires or auth_jwt_secret is rotated.
        assert api.whoami(second["access_token"]).status == 200

        third = api.create(key).json()
        app.query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
                  (hashlib.sha256(third["refresh_token"].encode()).hexdigest(),))
        assert api.refresh(third["refresh_token"]).status == 401
        assert sessions_status(app) == {"active_sessions": 1, "active_refresh_tokens": 0}

    third_id = jwt_parts(third["access_token"])[1]["sid"]
    assert failure_reasons(app) == [
        "api_key_required", "missing_bearer_token", "refresh_token_reused", "refresh_token_revoked", "refresh_token_unknown", "refresh_token_expired",
    ]
    assert app.audit("auth_failure")[2][2] == {"reason": "refresh_token_reused", "session_id": session_id}
    assert app.audit("session_created") == [
        (f"client:{acme_id}", "success", {"session_id": session_id, "client_id": acme_id}),
        (f"client:{acme_id}", "success", {"session_id": third_id, "client_id": acme_id}),
    ]
    assert app.audit("session_refreshed") == [(f"client:{acme_id}", "success", {"session_id": session_id, "client_id": acme_id})]
    assert app.audit("session_revoked") == [("anonymous", "success", {"session_id": session_id, "reason": "refresh_token_reused"})]
    stored = app.query("SELECT to_jsonb(r) FROM refresh_tokens r UNION ALL SELECT to_jsonb(s) FROM sessions s UNION ALL SELECT details FROM audit_log")
    assert_no_secrets(json.dumps(stored, default=str), app.secret_values)


def test_revoked_sessions_keep_access_tokens_until_the_jwt_secret_rotates(app):
    key = app.issue_key("acme")
    acme_id = app.query("SELECT id FROM clients WHERE name = 'acme'")[0][0]
    with app.serve() as url:
        api = SessionClient(app, url)
        tokens = api.create(key).json()
        app.query("UPDATE sessions SET revoked_at = now()")
        assert api.refresh(tokens["refresh_token"]).status == 401
        assert api.whoami(tokens["access_token"]).status == 200
        from_cli = json.loads(app.cli("sessions", "create", "--client", "acme").stdout)
        app.secret_values.update((from_cli["access_token"], from_cli["refresh_token"]))
        assert api.whoami(from_cli["access_token"]).json()["client_name"] == "acme"
        assert sessions_status(app) == {"active_sessions": 1, "active_refresh_tokens": 1}

    app.write_secret("auth_jwt_secret", JWT_SECRET_2 + "\n")
    with app.serve() as url:
        api = SessionClient(app, url)
        assert http("GET", f"{url}/health").json()["jwt_secret_fingerprint"] == fingerprint(JWT_SECRET_2)
        for old in (tokens["access_token"], from_cli["access_token"]):
            assert api.whoami(old).status == 401
        fresh = api.create(key).json()
        assert api.whoami(fresh["access_token"]).status == 200
    assert failure_reasons(app) == ["session_revoked", "jwt_bad_signature", "jwt_bad_signature"]
    assert app.audit("session_created")[1] == ("cli", "success", {"session_id": jwt_parts(from_cli["access_token"])[1]["sid"], "client_id": acme_id})


def test_jwt_secret_shorter_than_32_characters_is_refused(app):
    key = app.issue_key("acme")
    short = "short-jwt-secret-" + "z" * 14
    assert len(short) == 31
    app.write_secret("auth_jwt_secret", short + "\n")
    forged = sign_jwt({"alg": "HS256", "typ": "JWT"}, {"sub": "1", "sid": 1, "iat": 0, "exp": 2**40, "typ": "access"}, short)
    app.secret_values.add(forged)
    with app.serve() as url:
        health = http("GET", f"{url}/health")
        assert health.status == 503 and health.json()["status"] == "degraded"
        assert health.json()["checks"]["secrets"] == "auth_jwt_secret shorter than 32 characters"
        assert health.json()["jwt_secret_fingerprint"] == fingerprint(short)
        for response in (http("POST", f"{url}/v1/sessions", token=key), http("POST", f"{url}/v1/sessions/refresh", payload={"refresh_token": "wart_x"}),
                         http("GET", f"{url}/v1/whoami", token=forged)):
            assert (response.status, response.json()) == (503, {"error": "auth_jwt_secret not loaded"})
        assert http("GET", f"{url}/v1/whoami", token=key).status == 200  # API keys do not depend on it
    failed = app.cli("sessions", "create", "--client", "acme", check=False)
    assert failed.returncode == 1 and "shorter than 32 characters" in failed.stderr and failed.stdout == ""
    assert app.query("SELECT count(*) FROM sessions") == [(0,)]

    (app.secrets_dir / "auth_jwt_secret").unlink()
    with app.serve() as url:
        health = http("GET", f"{url}/health")
        assert health.status == 503 and health.json()["checks"]["secrets"] == "auth_jwt_secret missing or empty"
        assert health.json()["jwt_secret_fingerprint"] is None


def test_tampered_access_tokens_are_refused(app):
    key, other = app.issue_key("acme"), app.issue_key("globex")
    globex_id = app.query("SELECT id FROM clients WHERE name = 'globex'")[0][0]
    with app.serve() as url:
        api = SessionClient(app, url)
        genuine = api.create(key).json()["access_token"]
        header, claims = jwt_parts(genuine)
        header_part, _payload, signature = genuine.split(".")
        now = int(time.time())
        cases = [
            (sign_jwt({"alg": "none", "typ": "JWT"}, claims, None), "jwt_unsupported_alg"),
            (sign_jwt({"alg": "none", "typ": "JWT"}, claims, None) + signature, "jwt_unsupported_alg"),
            (f"{header_part}.{b64url(json.dumps({**claims, 'sub': str(globex_id)}).encode())}.{signature}", "jwt_bad_signature"),
            (sign_jwt({"alg": "HS512", "typ": "JWT"}, claims, JWT_SECRET_1, hashlib.sha512), "jwt_unsupported_alg"),
            (sign_jwt(header, claims, "another-secret-of-enough-length-" + "w" * 8), "jwt_bad_signature"),
            (sign_jwt(header, {**claims, "iat": now - 901, "exp": now - 1}, JWT_SECRET_1), "jwt_expired"),
            (sign_jwt(header, {**claims, "typ": "refresh"}, JWT_SECRET_1), "jwt_malformed"),
            (sign_jwt(header, {**claims, "sub": globex_id}, JWT_SECRET_1), "jwt_malformed"),
            ("abc.def.ghi", "jwt_malformed"),
        ]
        for token, _reason in cases:
            assert api.whoami(token).status == 401, token
        assert api.whoami(genuine).json()["client_name"] == "acme"
        assert http("GET", f"{url}/v1/whoami", token=other).json()["client_name"] == "globex"
    assert failure_reasons(app) == [reason for _token, reason in cases]


def test_db_password_falls_back_to_the_previous_file(pg_server, tmp_path, graph_stub, free_port):
    from psycopg2 import sql  # pylint: disable=import-outside-toplevel

    role, right = "wa_password_auth", "db-password-right-never-logged"
    dbname = pg_server.create_database("wa_db_password_fallback")
    pg_server.check_password_of(role)
    conn = pg_server.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cur.fetchone()[0] else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (right,))
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname), sql.Identifier(role)))
    finally:
        conn.close()
    instance = App(tmp_path, pg_server, dbname, graph_stub, free_port)
    instance.env.update(WA_DB_HOST="127.0.0.1", WA_DB_USER=role)
    instance.secret_values.add(right)
    current, previous = tmp_path / "db_password", tmp_path / "db_password.previous"
    # Mid-rotation: the new password is written but the role still has the old one, now in db_password.previous.
    previous.write_text(right + "\n")
    migrated = instance.cli("migrate")
    assert migrated.stdout.strip() == MIGRATED and "connected with the .previous one" in migrated.stderr
    key = instance.issue_key()
    with instance.serve() as url:
        health = http("GET", f"{url}/health")
        assert (health.status, health.json()["status"], health.json()["checks"]["db_credential"]) == (200, "ok", "previous")
        assert http("GET", f"{url}/v1/whoami", token=key).status == 200
        current.write_text(right + "\n")  # the role now has the new password (read at every connect, no restart needed)
        assert http("GET", f"{url}/health").json()["checks"]["db_credential"] == "current"
        current.write_text(DB_PASSWORD + "\n")
        previous.unlink()
        health = http("GET", f"{url}/health")
        assert health.status == 503 and "password authentication failed" in health.json()["checks"]["db"]
        assert "db_credential" not in health.json()["checks"]
        previous.write_text("db-password-also-wrong\n")
        instance.secret_values.add("db-password-also-wrong")
        assert http("GET", f"{url}/health").status == 503
    log = (tmp_path / "server.log").read_text()
    assert log.count("connected with the .previous one") == 1
