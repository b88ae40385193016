# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults injected into the live sandbox service, one at a time, each undone however its test ends: triage names the
playbook that fits, and that playbook diagnoses, refuses to act without confirmation, acts only within its guards,
and verifies the service."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex

import pytest

from conftest import eventually, playbook, restored  # pylint: disable=import-error

COMPOSE = "docker compose --project-directory /opt/whatsapp-mcp"
PSQL = f"{COMPOSE} exec -T postgres psql -d wa_mcp -At"
EVIDENCE = "/var/lib/runbooks-incident/evidence"


def sql(host, statement, user="wa"):
    return host.check_output(f"{PSQL} -U {user} -c {shlex.quote(statement)}")


def healthy(host):
    return host.run("curl -fsS http://127.0.0.1/health").rc == 0


def hold(host, user, statements):
    """A session of `user` that runs `statements` and then stays open (idle in its transaction) until killed."""
    script = f"{{ printf '%s\\n' {shlex.quote(statements)}; exec sleep 900; }} | {PSQL} -U {user} -q"
    host.check_output(f"setsid nohup sh -c {shlex.quote(script)} >/dev/null 2>&1 < /dev/null &")


def session(host, user, state):
    found = sql(host, f"SELECT pid FROM pg_stat_activity WHERE usename = '{user}' AND state = '{state}' ORDER BY backend_start")
    return [int(pid) for pid in found.split()]


def alive(host, pid):
    return sql(host, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "1"


@pytest.fixture()
def lock_chains(host):
    """Two lock chains: an analyst's forgotten transaction holds messages (the app's table) and another analyst
    session waits for it; a superuser's maintenance session holds maintenance_log and an analyst waits for it."""
    hold(host, "analyst", "BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;")
    assert eventually(lambda: session(host, "analyst", "idle in transaction"))
    head = session(host, "analyst", "idle in transaction")[0]
    hold(host, "wa", "BEGIN; LOCK TABLE maintenance_log IN ACCESS EXCLUSIVE MODE;")
    assert eventually(lambda: session(host, "wa", "idle in transaction"))
    superuser = session(host, "wa", "idle in transaction")[0]
    hold(host, "analyst", "SELECT count(*) FROM messages;")
    hold(host, "analyst", "SELECT count(*) FROM maintenance_log;")
    assert eventually(lambda: len(session(host, "analyst", "active")) == 2)
    try:
        yield {"head": head, "superuser": superuser}
    finally:
        host.run("pkill -f 'exec sleep 900'; pkill -f 'sleep 900'")
        sql(host, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'analyst' OR "
                  "(usename = 'wa' AND state = 'idle in transaction' AND query LIKE '%maintenance_log%')")
        assert eventually(lambda: healthy(host), timeout=60)


def test_triage_of_the_healthy_service_finds_nothing_urgent(host):
    rc, out = playbook("triage.yml", "incident_id=TRI-HEALTHY")
    assert rc == 0, out
    assert "no critical or high finding" in out


def test_triage_names_the_database_playbook_for_a_lock_chain(host, lock_chains):
    rc, out = playbook("triage.yml", "incident_id=TRI-LOCKS")
    assert rc == 0, out
    assert "playbooks/db_degraded.yml -e incident_id=TRI-LOCKS -e ''{\"db_degraded_blocking\": true}''" in out
    assert str(lock_chains["head"]) in out


def test_db_degraded_ends_only_the_confirmed_ordinary_head_of_a_chain(host, lock_chains):
    head, superuser = lock_chains["head"], lock_chains["superuser"]
    # A dry run ends nobody. (Not compared with unchanged(): the hosts' state cannot be read while the chains hold
    # their locks; the converge step's dry run compares it on the healthy service.)
    rc, out = playbook("db_degraded.yml", "incident_id=DB-CHAIN", "db_degraded_blocking=true", "--check")
    assert rc == 0, out
    assert f"would_end: - {head}" in out
    assert alive(host, head)

    rc, out = playbook("db_degraded.yml", "incident_id=DB-CHAIN", "db_degraded_blocking=true")
    assert rc != 0
    assert "Nothing was changed" in out and "confirm=true" in out
    assert alive(host, head)

    rc, out = playbook("db_degraded.yml", "incident_id=DB-CHAIN", "db_degraded_blocking=true", "confirm=true")
    assert rc == 0, out
    assert not alive(host, head)
    assert alive(host, superuser), "a superuser's session is never ended"
    assert "superuser" in out
    # The chain it headed is freed: its waiter got the lock and finished.
    assert eventually(lambda: len(session(host, "analyst", "active")) == 1)
    assert healthy(host)


def test_db_degraded_refuses_a_selection_larger_than_its_bound(host, lock_chains):
    """Three analyst sessions are in a transaction older than a second (the head and its two waiters)."""
    rc, out = playbook("db_degraded.yml", "incident_id=DB-BOUND", '{"db_degraded_older_than": 1, "db_degraded_max_terminate": 1}',
                       "confirm=true")
    assert rc != 0
    assert "max_terminate" in out
    assert alive(host, lock_chains["head"])
    assert len(session(host, "analyst", "active")) == 2


def test_triage_names_service_not_starting_when_the_app_is_down(host):
    host.check_output(f"{COMPOSE} stop app")
    try:
        rc, out = playbook("triage.yml", "incident_id=TRI-DOWN")
    finally:
        host.check_output(f"{COMPOSE} start app")
        assert eventually(lambda: healthy(host), timeout=120)
    assert rc == 0, out
    assert "NOT HEALTHY" in out
    assert "playbooks/service_not_starting.yml -e incident_id=TRI-DOWN" in out


def test_triage_names_a_missing_secret(host):
    with restored(host, "/run/secrets/auth_jwt_secret"):
        host.check_output("rm /run/secrets/auth_jwt_secret")
        rc, out = playbook("triage.yml", "incident_id=TRI-SECRET")
    assert rc == 0, out
    assert "/run/secrets/auth_jwt_secret" in out
    assert "playbooks/service_not_starting.yml -e incident_id=TRI-SECRET" in out


def bundles(host, incident):
    listed = host.run(f"ls -d {EVIDENCE}/{incident}-*")
    return listed.stdout.split() if listed.rc == 0 else []


def test_preserve_evidence_dry_run_collects_nothing(host):
    rc, out = playbook("preserve_evidence.yml", "incident_id=SEC-DRY", check=True)
    assert rc == 0, out
    assert not bundles(host, "SEC-DRY")


def test_preserve_evidence_keeps_a_verified_bundle_on_and_off_the_host(host):
    copies = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "evidence")
    passwd = host.file("/etc/passwd")
    before = (passwd.mtime, passwd.sha256sum)
    rc, out = playbook("preserve_evidence.yml", "incident_id=SEC-1", f"preserve_evidence_copy_to={copies}")
    assert rc == 0, out
    [bundle] = bundles(host, "SEC-1")
    assert host.file(bundle).mode == 0o700 or host.file(os.path.dirname(bundle)).mode == 0o700
    host.check_output(f"cd {bundle} && sha256sum --check --quiet --strict SHA256SUMS")
    custody = json.loads(host.file(f"{bundle}/custody.json").content_string)
    assert custody["incident_id"] == "SEC-1"
    assert host.run(f"grep -rl 'CREATE TABLE public.messages' {bundle}/commands").rc == 0, "the database dump is kept"
    # Evidence never includes the decrypted secrets. The sandbox's stand-in for Meta's Graph API keeps the tokens it
    # accepts in the service tree (sandbox/graph/tokens.json); a real service tree has no such file.
    stand_in = f"{bundle}/files/opt/whatsapp-mcp/sandbox/graph/tokens.json"
    for name in host.check_output("ls /run/secrets").split():
        found = host.run(f"grep -rlF -f /run/secrets/{name} {bundle}").stdout.split()
        assert [path for path in found if path != stand_in] == [], name
    # The sources are read, never touched.
    passwd = host.file("/etc/passwd")
    assert (passwd.mtime, passwd.sha256sum) == before
    # The off-host copy is the same bundle.
    copy = os.path.join(copies, "app", os.path.basename(bundle))
    with open(os.path.join(copy, "SHA256SUMS"), encoding="utf-8") as handle:
        assert handle.read() == host.file(f"{bundle}/SHA256SUMS").content_string
    assert host.run(f"ls {bundle}.tar").rc != 0, "the packed copy is removed from the host"
    assert healthy(host)


def test_preserve_evidence_contains_only_when_confirmed(host):
    contain = '{"preserve_evidence_contain": ["app"], "preserve_evidence_copy_to": ""}'
    rc, out = playbook("preserve_evidence.yml", "incident_id=SEC-2", contain)
    assert rc != 0 and "Nothing was changed" in out
    assert healthy(host)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: host.check_output(f"{COMPOSE} start app"))
        rc, out = playbook("preserve_evidence.yml", "incident_id=SEC-2", contain, "confirm=true")
        assert rc == 0, out
        assert not healthy(host)
        assert len(bundles(host, "SEC-2")) == 2, "the evidence is kept before containment, at each run"
    assert eventually(lambda: healthy(host), timeout=120)


def test_service_not_starting_restarts_a_stopped_app_only_when_confirmed(host):
    host.check_output(f"{COMPOSE} stop app")
    try:
        rc, out = playbook("service_not_starting.yml", "incident_id=SNS-DOWN", check=True)
        assert rc == 0, out
        assert "restart_service: true" in out
        rc, out = playbook("service_not_starting.yml", "incident_id=SNS-DOWN")
        assert rc != 0 and "Nothing was changed" in out and "confirm=true" in out
        assert not healthy(host)
        rc, out = playbook("service_not_starting.yml", "incident_id=SNS-DOWN", "confirm=true")
        assert rc == 0, out
        assert healthy(host)
    finally:
        host.check_output(f"{COMPOSE} start app")
        assert eventually(lambda: healthy(host), timeout=120)


def test_service_not_starting_frees_a_port_another_process_holds_only_when_asked(host):
    def holder():
        return host.run("pgrep -f '^python3 -m http.server 80'").stdout.split()
    host.check_output(f"{COMPOSE} stop nginx")
    host.check_output("setsid nohup python3 -m http.server 80 >/dev/null 2>&1 < /dev/null &")
    try:
        assert eventually(holder)
        rc, out = playbook("triage.yml", "incident_id=TRI-PORT")
        assert rc == 0, out
        assert "port 80 is held by python3" in out
        assert "playbooks/service_not_starting.yml -e incident_id=TRI-PORT" in out

        rc, out = playbook("service_not_starting.yml", "incident_id=SNS-PORT", "confirm=true")
        assert rc != 0
        assert "nginx cannot start. Nothing was changed" in out and "service_not_starting_free_ports=true" in out
        assert holder()

        rc, out = playbook("service_not_starting.yml", "incident_id=SNS-PORT", "service_not_starting_free_ports=true", "confirm=true")
        assert rc == 0, out
        assert not holder()
        assert healthy(host)
    finally:
        host.run("pkill -f 'http.server 80'")
        host.check_output(f"{COMPOSE} start nginx")
        assert eventually(lambda: healthy(host), timeout=120)


def test_service_not_starting_decrypts_a_missing_secret_again(host):
    with restored(host, "/run/secrets/auth_jwt_secret"):
        before = host.file("/run/secrets/auth_jwt_secret").sha256sum
        host.check_output("rm /run/secrets/auth_jwt_secret")
        rc, out = playbook("service_not_starting.yml", "incident_id=SNS-SECRET", "confirm=true")
        assert rc == 0, out
        assert host.file("/run/secrets/auth_jwt_secret").sha256sum == before, "the same secret, from the sops file"
        assert healthy(host)


def answer(host, url):
    """(status, Retry-After, body) of a GET from the host itself."""
    out = host.check_output(f"curl -ksS -o /tmp/answer.body -D - {shlex.quote(url)}")
    status = int(out.split()[1])
    retry = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.lower().startswith("retry-after:")), None)
    return status, retry, host.file("/tmp/answer.body").content_string


def unchanged_run(out):
    return re.search(r"\bapp\s*: ok=\d+\s+changed=0\b", out) is not None


def test_maintenance_mode_answers_503_with_retry_after_and_leaves_a_verified_service(host):
    page = json.dumps({"maintenance_retry_after": 1800, "maintenance_message": "Back at <b>06:00</b> UTC"})
    rc, out = playbook("maintenance.yml", "incident_id=CHG-DRY", "confirm=true", check=True)
    assert rc == 0, out
    rc, out = playbook("maintenance.yml", "incident_id=CHG-1")
    assert rc != 0 and "Nothing was changed" in out
    assert healthy(host)
    try:
        rc, out = playbook("maintenance.yml", "incident_id=CHG-1", "confirm=true", page)
        assert rc == 0, out
        assert answer(host, "http://127.0.0.1/health")[:2] == (503, "1800")
        status, retry, body = answer(host, "https://127.0.0.1/v1/messages")
        assert (status, retry) == (503, "1800")
        assert "Back at &lt;b&gt;06:00&lt;/b&gt; UTC" in body
        assert host.run(f"{COMPOSE} ps --status running --quiet app").stdout.strip() == "", "the app is stopped"
        # Entering again changes nothing and needs no confirmation.
        rc, out = playbook("maintenance.yml", "incident_id=CHG-1", page)
        assert rc == 0 and unchanged_run(out), out
    finally:
        rc, out = playbook("maintenance.yml", "incident_id=CHG-1", "maintenance_state=absent")
    assert rc == 0, out
    assert healthy(host)
    assert host.run("docker inspect whatsapp-mcp-maintenance").rc != 0
    rc, out = playbook("maintenance.yml", "incident_id=CHG-1", "maintenance_state=absent")
    assert rc == 0 and unchanged_run(out), out
