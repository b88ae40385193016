# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the soft rotation of converge, on the real service. Then, in order: a "reboot", retiring the previous
pepper through the playbook, and a hard rotation through the playbook. Every key is checked against the running
service's API, and every pepper against the sops file, the database and what the loopback receivers got. Every
playbook run goes through ansible-runner, as AWX runs it; the last test looks for every secret in all of them."""
from __future__ import annotations

import email
import hashlib
import json
import os
import uuid

import pytest

from conftest import fed, incident_dir, incident_records, playbook  # pylint: disable=import-error

# Up to a minute for /health, then once more: the command fails when it never answered.
WAIT_HEALTHY = "for i in $(seq 60); do curl -fs http://127.0.0.1/health >/dev/null && break; sleep 1; done; curl -fsS http://127.0.0.1/health >/dev/null"

testinfra_hosts = ["app"]

COMPOSE = "docker compose --project-directory /opt/whatsapp-mcp"
SECRETS_FILE = "/opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml"
PEPPER, TOKEN = "rotate_api_key_pepper.yml", "rotate_access_token.yml"


def status(host, token):
    return host.check_output(f"curl -sk -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {token}' https://127.0.0.1/v1/whoami")


def health(host):
    return json.loads(host.check_output("curl -s http://127.0.0.1/health"))


def keys_status(host):
    return json.loads(host.check_output(f"{COMPOSE} exec -T app wa-mcp keys status"))


def decrypted(host):
    return json.loads(host.check_output(
        "SOPS_AGE_KEY_FILE=/etc/whatsapp-mcp/age.key sops --decrypt --output-type json /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml"))


def fingerprint(value):
    """What /health shows of a secret (the start of its SHA-256)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def mail_text(raw):
    """The decoded text parts of a received e-mail (the mail module may encode the body)."""
    message = email.message_from_string(raw)
    parts = message.walk() if message.is_multipart() else [message]
    return "\n".join(part.get_payload(decode=True).decode() for part in parts if part.get_content_maintype() == "text")


# ------------------------------------------------------------------------------------------------ every run recorded
def secret_values(host):
    """The values of the secrets file, not the records beside them (a rotation's id, a previous pepper's expiry)."""
    return {value for name, value in decrypted(host).items() if not name.endswith((".rotation", "_expires_at"))}


class Runs:
    """Every playbook run of this module, through ansible-runner as AWX runs a job (-v --diff), kept for the no-leak
    test at the end together with every secret the secrets file held after a run and every token handed to one.
    playbook() looks for all of them, and the clients' API keys, in each run's output and in the argv of every
    program started during it; the journal keeps what the runs logged."""

    def __init__(self, host, directory):
        self.host, self.directory, self.count = host, directory, 0
        self.since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
        self.secrets = secret_values(host) | set(host.check_output("cat /root/molecule-tokens").split())

    def __call__(self, name, *extra, check=False, injected=None):
        self.secrets |= {item.split("=", 1)[1] for item in extra if item.startswith("access_token=")}
        self.secrets |= set((injected or {}).values())
        rc, out = playbook(name, *extra, check=check, artifacts=self.directory, secrets=self.secrets, injected=injected)
        self.count += 1
        self.secrets |= secret_values(self.host)
        return rc, out


@pytest.fixture(scope="module", name="runs")
def runs_fixture(host, tmp_path_factory):
    return Runs(host, tmp_path_factory.mktemp("runner"))


@pytest.fixture(scope="module", name="tokens")
def tokens_fixture(host):
    return host.check_output("cat /root/molecule-tokens").split()


def test_soft_rotation_old_keys_still_work_and_new_keys_use_the_new_pepper(host, tokens):
    state = health(host)
    secrets = decrypted(host)
    assert state["status"] == "ok" and state["pepper_fingerprint"] == fingerprint(secrets["api_key_pepper"])
    assert state["previous_pepper"]["accepted"] is True
    assert state["previous_pepper"]["fingerprint"] == fingerprint(secrets["api_key_pepper.previous"])
    assert json.loads(secrets["api_key_pepper.rotation"])["change_id"] == "MOLECULE-SOFT"
    assert all(status(host, token) == "200" for token in tokens[:4])  # presented: re-hashed with the new pepper
    new_token = host.check_output(f"{COMPOSE} exec -T app wa-mcp keys issue --client fresh-client")
    assert status(host, new_token) == "200"
    counts = keys_status(host)["by_pepper_fingerprint"]
    assert counts[state["pepper_fingerprint"]] == 5 and counts[state["previous_pepper"]["fingerprint"]] == 4


def test_the_rotation_survives_a_reboot(host, tokens):
    before = health(host)
    host.check_output("systemctl restart whatsapp-mcp-secrets.service whatsapp-mcp.service")
    host.check_output(WAIT_HEALTHY)
    after = health(host)
    assert after["pepper_fingerprint"] == before["pepper_fingerprint"]
    assert after["previous_pepper"]["fingerprint"] == before["previous_pepper"]["fingerprint"]
    assert all(status(host, token) == "200" for token in tokens[:4])  # the other four stay unused until the retirement


def test_the_clients_were_notified_once_with_the_deadline_and_no_secret(host):
    notices = [json.loads(line) for line in host.check_output("cat /var/tmp/notices.jsonl").splitlines()]
    assert len(notices) == 1 and notices[0]["mode"] == "soft" and notices[0]["change_id"] == "MOLECULE-SOFT"
    assert len(notices[0]["clients"]) == 4 and notices[0]["deadline"]
    mails = [mail_text(json.loads(line)["data"]) for line in host.check_output("cat /var/tmp/mail.jsonl").splitlines()]
    assert len(mails) == 4 and all(notices[0]["deadline"] in mail for mail in mails)
    secrets = decrypted(host)
    everything = host.check_output("cat /var/tmp/notices.jsonl /var/tmp/mail.jsonl /var/lib/runbooks-incident/notices/*")
    assert secrets["api_key_pepper"] not in everything and secrets["api_key_pepper.previous"] not in everything


def test_retiring_needs_confirmation_while_keys_remain_then_cuts_them_off(host, tokens, runs):
    rc, out = runs(PEPPER, "incident_id=MOLECULE-RETIRE", "pepper_state=retired", "force=true")
    assert rc == 2 and "4 active keys still use it" in out
    rc, out = runs(PEPPER, "incident_id=MOLECULE-RETIRE", "pepper_state=retired", "force=true", "confirm=true")
    assert rc == 0, out
    assert health(host).get("previous_pepper") is None and "api_key_pepper.previous" not in decrypted(host)
    assert [status(host, token) for token in tokens] == ["200"] * 4 + ["401"] * 4  # only the keys used in the window


def test_hard_rotation_revokes_every_key_and_notifies_each_client(host, tokens, runs):
    rc, out = runs(PEPPER, "incident_id=MOLECULE-HARD", "pepper_mode=hard")
    assert rc == 2 and "revoke all" in out  # refused without confirm=true
    # Webhook URLs hold their token (as Slack's do): it is looked for in every run's output and argv (runs.secrets).
    hook_token = uuid.uuid4().hex + uuid.uuid4().hex
    runs.secrets.add(hook_token)
    rc, out = runs(PEPPER, "incident_id=MOLECULE-HARD", "pepper_mode=hard", "confirm=true",
                   f"pepper_rotation_notify_url=http://127.0.0.1:9/hooks/{hook_token}")  # nothing listens there
    assert rc != 0 and "did not take the notice (no answer)" in out and "The rotation itself is done" in out, out
    assert all(status(host, token) == "401" for token in tokens)
    rc, out = runs(PEPPER, "incident_id=MOLECULE-HARD", "pepper_mode=hard", "confirm=true",
                   f"pepper_rotation_notify_url=http://127.0.0.1:9098/hooks/{hook_token}")  # the re-run notifies
    assert rc == 0, out
    assert keys_status(host)["active"] == 0 and health(host).get("previous_pepper") is None
    notice = json.loads(host.check_output("tail -n 1 /var/tmp/notices.jsonl"))
    # 4 re-hashed and 1 new key on the replaced pepper, 4 left on the retired one: all revoked.
    assert notice["mode"] == "hard" and sum(client["revoked_keys"] for client in notice["clients"]) == 9
    rc, out = runs(PEPPER, "incident_id=MOLECULE-HARD", "pepper_mode=hard", "confirm=true")
    assert rc == 0 and "already applied" in out


def test_a_rerun_after_a_crash_between_rotating_and_restarting_restarts_the_service(host, runs):
    """The run died after pepper_rotate had done its work (sops file and /run/secrets) and before the restart: the
    module alone is that state. The service still runs with the old pepper; the re-run with the same incident id
    rotates nothing more and restarts the service, which then runs with the new pepper and keeps the old keys."""
    key = host.check_output(f"{COMPOSE} exec -T app wa-mcp keys issue --client crash-client")
    before = health(host)
    result = host.ansible("runbooks.incident.pepper_rotate", " ".join([
        "path=/run/secrets/api_key_pepper", "state=rotated", "mode=soft", "grace_days=3", "change_id=MOLECULE-CRASH",
        f"sops_file={SECRETS_FILE}", "age_key_file=/etc/whatsapp-mcp/age.key", "owner=whatsapp-mcp",
        "group=whatsapp-mcp-secrets"]), become=True, check=False)
    assert result["changed"], result
    rotated = decrypted(host)
    assert fingerprint(rotated["api_key_pepper"]) != before["pepper_fingerprint"] == health(host)["pepper_fingerprint"]

    rc, out = runs(PEPPER, "incident_id=MOLECULE-CRASH", "grace_days=3")
    assert rc == 0, out
    after = health(host)
    assert after["status"] == "ok" and after["pepper_fingerprint"] == fingerprint(rotated["api_key_pepper"])
    assert after["previous_pepper"]["fingerprint"] == before["pepper_fingerprint"] and after["previous_pepper"]["accepted"]
    assert decrypted(host) == rotated  # nothing rotated twice
    assert status(host, key) == "200"  # a key of the replaced pepper still works during the grace
    # No rotation left in its grace window for the tests after this one (a second soft rotation would be refused).
    rc, out = runs(PEPPER, "incident_id=MOLECULE-CRASH-RETIRE", "pepper_state=retired", "force=true", "confirm=true")
    assert rc == 0 and health(host).get("previous_pepper") is None, out


# ------------------------------------------------------------------------------------------------ access token
PHONE_ID = "109876543210987"


def meta_issues(host, token):
    """What generating a System User token in the Meta dashboard does: the Graph API (stand-in) accepts it."""
    host.check_output(f"{COMPOSE} exec -T app python3 -c \"import json, urllib.request; urllib.request.urlopen(urllib.request.Request("
                      f"'http://graph:8081/_admin/tokens', json.dumps({{'phone_id': '{PHONE_ID}', 'token': '{token}'}}).encode(), "
                      "{'Content-Type': 'application/json'}))\"")


def test_access_token_rotation_sets_restarts_and_proves_a_real_send(host, runs):
    new = "EAAGsandbox" + "n" * 40
    meta_issues(host, new)
    # As AWX hands it over: the credential "runbooks: WhatsApp access token" puts it in a file of the job.
    rc, out = runs(TOKEN, f"phone_id={PHONE_ID}", "incident_id=MOLECULE-TOKEN", injected={"access_token": new})
    assert rc == 0, out
    assert decrypted(host)[f"wa_access_token_{PHONE_ID}"] == new
    assert "send_attempt after the restart" in out and "success" in out
    assert new not in out  # the token never appears in the output
    assert not host.file("/opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml.pre-MOLECULE-TOKEN").exists
    again, out = runs(TOKEN, f"phone_id={PHONE_ID}", "incident_id=MOLECULE-TOKEN", f"access_token={new}")
    assert again == 0 and "already in place" in out


def test_without_a_token_the_job_fails_saying_so_instead_of_waiting_for_an_answer(host, runs):
    """Under ansible-runner, as in AWX, nobody answers a prompt: a job without the credential stops at once."""
    before = host.file(SECRETS_FILE).sha256sum
    rc, out = runs(TOKEN, f"phone_id={PHONE_ID}", "incident_id=MOLECULE-TOKEN-NONE")
    assert rc != 0 and "through the AWX credential or the prompt" in out, out
    assert host.file(SECRETS_FILE).sha256sum == before


def test_a_token_meta_does_not_accept_is_rolled_back(host, runs):
    before = decrypted(host)[f"wa_access_token_{PHONE_ID}"]
    rc, out = runs(TOKEN, f"phone_id={PHONE_ID}", "incident_id=MOLECULE-TOKEN-BAD", "access_token=EAAGnever-issued-by-meta-0000000000")
    assert rc == 2 and "did not work" in out and "previous token is back" in out
    assert decrypted(host)[f"wa_access_token_{PHONE_ID}"] == before
    assert not host.file(SECRETS_FILE + ".pre-MOLECULE-TOKEN-BAD").exists  # the kept copy went with the rollback
    host.check_output(WAIT_HEALTHY)
    smoke = host.run(f"{COMPOSE} exec -T app wa-mcp smoke --send-phone-id {PHONE_ID}")
    assert smoke.rc == 0, smoke.stdout


# ------------------------------------------------------------------------------------------------ key compromise
KEYS = "key_compromise.yml"


def api(host, method, path, token=None, body=None):
    """(status, JSON body) of a request to the service through nginx."""
    argv = f"curl -sk -X {method} -w '\\n%{{http_code}}' https://127.0.0.1{path}"
    if token:
        argv += f" -H 'Authorization: Bearer {token}'"
    if body is not None:
        argv += f" -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    text, _sep, code = host.check_output(argv).rpartition("\n")
    return int(code), json.loads(text) if text.strip() else None


def db_login(host, password):
    """Can role wa log in with this password over TCP (SCRAM), as the app does? (The password goes on stdin.)"""
    login = f"read -r PGPASSWORD && export PGPASSWORD && {COMPOSE} exec -T -e PGPASSWORD postgres psql -h 127.0.0.1 -U wa -d wa_mcp -Atc 'SELECT 1'"
    return fed(host, login, password.encode() + b"\n").returncode == 0


@pytest.fixture(scope="module", name="session")
def session_fixture(host):
    """A client's API key, and a session opened with it before the compromise (JWT + refresh token)."""
    key = host.check_output(f"{COMPOSE} exec -T app wa-mcp keys issue --client kc-client")
    code, tokens = api(host, "POST", "/v1/sessions", key)
    assert code == 201, tokens
    return dict(key=key, **tokens)


def test_key_compromise_needs_steps_then_confirmation_and_check_mode_changes_nothing(host, session, runs):
    before = host.file(SECRETS_FILE).content
    rc, out = runs(KEYS, "incident_id=MOLECULE-KEYS")
    assert rc == 2 and "Choose the steps" in out
    rc, out = runs(KEYS, "incident_id=MOLECULE-KEYS", "steps=sessions,auth_secret,db_password")
    assert rc == 2 and "revoke every active session" in out and "Nothing was changed" in out
    rc, out = runs(KEYS, "incident_id=MOLECULE-KEYS", "steps=sessions,auth_secret,db_password", check=True)  # state compared
    assert rc == 0, out
    assert host.file(SECRETS_FILE).content == before
    assert api(host, "GET", "/v1/whoami", session["access_token"])[0] == 200


def test_key_compromise_cuts_off_every_token_and_the_old_db_password_and_survives_a_reboot(host, session, runs):
    old = decrypted(host)
    assert db_login(host, old["db_password"])
    rc, out = runs(KEYS, "incident_id=MOLECULE-KEYS", "steps=sessions,auth_secret,db_password", "confirm=true")
    assert rc == 0, out
    new = decrypted(host)
    assert len(new["auth_jwt_secret"]) == 64 and new["auth_jwt_secret"] != old["auth_jwt_secret"]
    assert new["db_password"] != old["db_password"] and "db_password.previous" not in new
    assert not host.file("/run/secrets/db_password.previous").exists
    state = health(host)
    assert state["status"] == "ok" and state["checks"]["db_credential"] == "current"
    assert state["jwt_secret_fingerprint"] == fingerprint(new["auth_jwt_secret"])
    # Every token handed out before is refused: the access token (new signing secret), the refresh token (revoked).
    assert api(host, "GET", "/v1/whoami", session["access_token"])[0] == 401
    assert api(host, "POST", "/v1/sessions/refresh", body={"refresh_token": session["refresh_token"]})[0] == 401
    assert json.loads(host.check_output(f"{COMPOSE} exec -T app wa-mcp sessions status")) == {"active_sessions": 0, "active_refresh_tokens": 0}
    assert not db_login(host, old["db_password"]) and db_login(host, new["db_password"])
    # The client logs in again with its API key (not part of this compromise) and works.
    code, fresh = api(host, "POST", "/v1/sessions", session["key"])
    assert code == 201 and api(host, "GET", "/v1/whoami", fresh["access_token"])[0] == 200

    host.check_output("systemctl restart whatsapp-mcp-secrets.service whatsapp-mcp.service")
    host.check_output(WAIT_HEALTHY)
    assert health(host)["checks"]["db_credential"] == "current" and api(host, "GET", "/v1/whoami", fresh["access_token"])[0] == 200

    rc, out = runs(KEYS, "incident_id=MOLECULE-KEYS", "steps=sessions,auth_secret,db_password", "confirm=true")
    assert rc == 0 and "nothing left to do" in out and decrypted(host) == new


def test_a_db_password_the_service_cannot_use_is_rolled_back(host, runs):
    """The wrong role configured: the new password goes to `decoy`, so the service stays on the previous one."""
    host.check_output(f"{COMPOSE} exec -T postgres psql -U wa -d wa_mcp -qc 'DROP ROLE IF EXISTS decoy; CREATE ROLE decoy LOGIN'")
    before = decrypted(host)
    rc, out = runs(KEYS, "incident_id=MOLECULE-KEYS-BAD", "steps=db_password", "confirm=true", "key_compromise_db_role=decoy")
    assert rc == 2 and "logs in with the previous password only" in out and "previous password is back" in out
    assert decrypted(host)["db_password"] == before["db_password"] and db_login(host, before["db_password"])
    assert not host.file(SECRETS_FILE + ".pre-MOLECULE-KEYS-BAD").exists
    host.check_output(WAIT_HEALTHY)
    assert health(host)["checks"]["db_credential"] == "current"


# ------------------------------------------------------------------------------------------------ repository of record
def test_a_redeploy_from_the_repository_keeps_every_rotated_secret(host, runs):
    """Every rotation above pushed the new encrypted file to the service repository (offhost). The host loses its
    checkout and its decrypted secrets and is deployed again from the repository: the rotated secrets are in force."""
    in_force, before = decrypted(host), health(host)
    # Published: the checkout's secrets file is its HEAD's, which is the remote's; rolled-back rotations left no copy.
    assert host.check_output("git -C /opt/whatsapp-mcp status --porcelain -- ops/secrets") == ""
    assert host.check_output("git -C /opt/whatsapp-mcp rev-parse HEAD") == host.check_output("git -C /opt/whatsapp-mcp rev-parse origin/main")
    pushed = host.check_output("git -C /opt/whatsapp-mcp log --format=%s origin/main")
    assert "Rotate the API key pepper (rotated, hard) (MOLECULE-HARD)" in pushed
    assert "Rotate the Meta access token of phone id %s (MOLECULE-TOKEN)" % PHONE_ID in pushed
    assert "Key compromise: auth_secret, db_password replaced (MOLECULE-KEYS)" in pushed
    assert "MOLECULE-TOKEN-BAD" not in pushed and "MOLECULE-KEYS-BAD" not in pushed  # rolled back: nothing to publish
    backups = host.check_output("ls /var/lib/whatsapp-mcp/backups").split()
    assert any(name.startswith("secrets-") and name.endswith(".enc.yaml") for name in backups)

    host.check_output("systemctl stop whatsapp-mcp.service whatsapp-mcp-secrets.service && rm -rf /opt/whatsapp-mcp /run/secrets/*")
    rc, out = runs("rebootstrap.yml", "incident_id=MOLECULE-REDEPLOY", "backup=none")
    assert rc == 0, out
    assert decrypted(host) == in_force
    after = health(host)
    assert after["status"] == "ok" and after["checks"]["db_credential"] == "current"
    assert after["pepper_fingerprint"] == before["pepper_fingerprint"] == fingerprint(in_force["api_key_pepper"])
    assert after["jwt_secret_fingerprint"] == before["jwt_secret_fingerprint"]


# ------------------------------------------------------------------------------------------------ no leak
def test_no_secret_in_runner_artifacts_output_journal_or_argv(host, runs, tokens):
    """Every run above (applied, refused, rolled back, already done, the re-deploy, the key compromise in check
    mode) and now the rotations in check mode and a soft one for real: no secret, old or new, in what AWX keeps of
    the runs, in the host's journal or in the argv of any program started during them, on the host or elsewhere."""
    token = "EAAGleaktest" + "q" * 40
    meta_issues(host, token)
    for name, *extra in [(PEPPER, "incident_id=LEAK-SOFT", "grace_days=3"),
                         (PEPPER, "incident_id=LEAK-HARD", "pepper_mode=hard", "confirm=true"),
                         (TOKEN, "incident_id=LEAK-TOKEN", f"phone_id={PHONE_ID}", f"access_token={token}")]:
        rc, out = runs(name, *extra, check=True)
        assert rc == 0, (name, out[-3000:])
    rc, out = runs(PEPPER, "incident_id=LEAK-SOFT", "grace_days=3")
    assert rc == 0, out[-3000:]
    assert json.loads(decrypted(host)["api_key_pepper.rotation"])["change_id"] == "LEAK-SOFT"

    values = runs.secrets | {host.check_output("grep -v '^#' /etc/whatsapp-mcp/age.key"), token} | set(tokens)  # clients' API keys
    assert len(values) >= 10 and all(len(value) >= 20 for value in values)  # old and new: pepper, jwt, db, tokens
    # Everything the runs produced: artifacts/ (stdout, job_events, command, status) and the facts cache. Not env/,
    # the input handed to the runner (env/extravars holds the token, as an AWX credential's injector file does).
    directory = runs.directory
    assert len([run for run in directory.iterdir() if (run / "artifacts").is_dir()]) == runs.count > 10
    scanned = [path.read_bytes() for path in directory.rglob("*") if path.is_file() and "env" not in path.relative_to(directory).parts]
    # (Each run's output and the argv of the programs started during it: playbook() looked at them.)
    # The timeline callback recorded every run (in check mode too): timelines, post-mortems and Gantt pages.
    records = incident_records()
    for incident in ("LEAK-SOFT", "LEAK-HARD", "LEAK-TOKEN"):
        timeline = json.loads(records[os.path.join(incident_dir(), incident, "timeline.json")])
        assert "check" in {run["mode"] for run in timeline["runs"]} and all(run["tasks"] for run in timeline["runs"])
    assert {run["mode"] for run in json.loads(records[os.path.join(incident_dir(), "LEAK-SOFT", "timeline.json")])["runs"]} == {"check", "apply"}
    places = {"ansible-runner artifacts, stdout, job events and facts cache": b"\n".join(scanned),
              "incident records (timelines, post-mortems, Gantt pages)": "\n".join(records.values()).encode(),
              "journal": host.check_output(f"journalctl --since '{runs.since}' --no-pager").encode()}
    for place, content in places.items():
        for value in values:
            assert value.encode() not in content, f"a secret appears in the {place}"
