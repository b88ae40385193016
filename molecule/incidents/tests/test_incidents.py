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
import subprocess

import pytest

from conftest import containers, eventually, other, playbook, restored, unchanged  # pylint: disable=import-error

testinfra_hosts = ["app"]
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


@contextlib.contextmanager
def chains_held(host):
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


@pytest.fixture()
def lock_chains(host):
    with chains_held(host) as held:
        yield held


def test_triage_of_the_healthy_service_finds_nothing_urgent(host):
    rc, out = playbook("triage.yml", "incident_id=TRI-HEALTHY")
    assert rc == 0, out
    assert "no critical or high finding" in out


def test_triage_names_the_database_playbook_for_a_lock_chain(host, lock_chains):
    rc, out = playbook("triage.yml", "incident_id=TRI-LOCKS")
    assert rc == 0, out
    assert "playbooks/db_degraded.yml -e incident_id=TRI-LOCKS -e ''{\"db_degraded_blocking\": true}''" in out
    assert str(lock_chains["head"]) in out


def test_a_dry_run_on_held_lock_chains_ends_nobody_and_changes_nothing(host):
    """The hosts' state cannot be read while the chains hold their locks, so unchanged() reads it before they take
    them and after they let go: letting go only rolls back their transactions (they wrote nothing), so any
    difference would be the dry run's."""
    with unchanged(), chains_held(host) as held:
        rc, out = playbook("db_degraded.yml", "incident_id=DB-CHAIN", "db_degraded_blocking=true", "--check")
        assert rc == 0, out
        assert f"would_end: - {held['head']}" in out
        assert alive(host, held["head"]) and alive(host, held["superuser"])
        assert len(session(host, "analyst", "active")) == 2, "both waiters still wait"


def test_db_degraded_ends_only_the_confirmed_ordinary_head_of_a_chain(host, lock_chains):
    head, superuser = lock_chains["head"], lock_chains["superuser"]
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


# ------------------------------------------------------------------------------------------- connection flood
BOOT_SCRIPT = "/etc/runbooks-incident/nft_blocklist.nft"


def reaches(client):
    """Whether the client host gets an answer from the app host's port 80 (a dropped SYN times out)."""
    return client.run("curl -sS -m 3 -o /dev/null http://app/").rc == 0


@pytest.fixture(name="client")
def client_fixture(host):
    """The second host, its address, and a blocklist removed however the test ends."""
    client = other("client")
    try:
        yield client, client.check_output("hostname -I").split()[0]
    finally:
        host.run("nft delete table inet runbooks_incident")
        host.run("systemctl disable runbooks-nft-blocklist.service; rm -f /etc/systemd/system/runbooks-nft-blocklist.service "
                 f"{BOOT_SCRIPT}; systemctl daemon-reload")
        assert reaches(client)


def test_a_flood_from_another_host_is_named_and_blocked_only_when_confirmed(host, client):
    client, address = client
    assert reaches(client)
    # 2,000 requests, each on a connection of its own: nginx logs them, the kernel tracks the connections.
    client.check_output("curl -s -H 'Connection: close' 'http://app/?n=[1-2000]' >/dev/null")
    rc, out = playbook("triage.yml", "incident_id=TRI-FLOOD")
    assert rc == 0, out
    assert "playbooks/connection_flood.yml -e incident_id=TRI-FLOOD -e ''{\"connection_flood_sources\": [\"%s\"]}''" % address in out
    assert "1 client sent most requests" in out and "1 source holds most connections" in out

    block = json.dumps({"connection_flood_sources": [address]})
    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-1", block, check=True)
    assert rc == 0 and f"{address}/32" in out, out
    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-1", block)
    assert rc != 0 and "Nothing was changed" in out and f"drop every packet from {address}/32 for 3600 s" in out
    assert reaches(client)

    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-1", block, "confirm=true")
    assert rc == 0, out
    assert not reaches(client), "the block holds for the published port (before docker's DNAT)"
    assert healthy(host)
    assert "FLOOD-1" in host.check_output("nft list set inet runbooks_incident blocked4")
    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-1", block, "confirm=true")
    assert rc == 0 and unchanged_run(out) and "already blocked" in out, out

    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-1", json.dumps({"connection_flood_unblock": [address]}), "confirm=true")
    assert rc == 0, out
    assert reaches(client)


def test_connection_flood_never_blocks_the_hosts_own_addresses_nor_the_allowed(host, client):
    client, address = client
    own = host.check_output("hostname -I").split()[0]
    for sources, allow, refusal in (([own], [], f"refused to block {own}/32: it is in allowed {own}/32"),
                                    ([address], [address.rsplit(".", 1)[0] + ".0/24"], f"refused to block {address}/32: it is in allowed"),
                                    (["127.0.0.1"], [], "refused to block 127.0.0.1/32")):
        rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-2", "confirm=true",
                           json.dumps({"connection_flood_sources": sources, "connection_flood_allow": allow}))
        assert rc != 0 and refusal in out and "nothing was changed" in out, out
    assert host.run("nft list table inet runbooks_incident").rc != 0  # nothing was created
    assert reaches(client)


def test_connection_flood_keeps_its_blocks_across_a_reboot_only_when_asked(host, client):
    client, address = client
    block = json.dumps({"connection_flood_sources": [address]})
    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-3", block, "confirm=true")
    assert rc == 0 and not host.file(BOOT_SCRIPT).exists, out
    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-3", block, "connection_flood_persist=true", "confirm=true")
    assert rc == 0, out
    script = host.file(BOOT_SCRIPT)
    assert script.mode == 0o600 and f"{address}/32" in script.content_string
    assert host.service("runbooks-nft-blocklist.service").is_enabled
    # A real reboot of the host (its container restarted: a new network namespace, systemd booting every unit): the
    # unit loads the boot script before the network, so the address is blocked from the start.
    subprocess.run(["docker", "restart", "--time", "30", containers()["app"]], check=True, capture_output=True)
    assert eventually(lambda: host.run("systemctl is-system-running --wait").stdout.strip() in ("running", "degraded"), timeout=180)
    assert "FLOOD-3" in host.check_output("nft list set inet runbooks_incident blocked4")
    assert eventually(lambda: healthy(host), timeout=180)  # the stack is back: what is refused is the block, not a service down
    assert not reaches(client)
    # Once persisted, unblocking is persisted too.
    rc, out = playbook("connection_flood.yml", "incident_id=FLOOD-3", "connection_flood_unblock_all=true", "confirm=true")
    assert rc == 0 and reaches(client), out
    assert address not in host.file(BOOT_SCRIPT).content_string


# ------------------------------------------------------------------------------------------- database corruption
def wrote(host, statement):
    """Whether a new session of the app's role may write (the read-only default refuses it)."""
    res = host.run(f"{PSQL} -U wa -c {shlex.quote(statement)}")
    assert res.rc == 0 or "read-only transaction" in res.stderr, res.stderr
    return res.rc == 0


@pytest.fixture()
def damaged_table(host):
    """A table of the test's own whose second page is overwritten on disk: written, checkpointed (its pages clean, so
    nothing writes them again), its page header replaced by 0xff bytes, and PostgreSQL restarted so the next read
    comes from disk."""
    sql(host, "CREATE TABLE ledger (id serial PRIMARY KEY, note text); "
              "INSERT INTO ledger (note) SELECT repeat('x', 200) FROM generate_series(1, 2000); CHECKPOINT")
    path = sql(host, "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('ledger')")
    overwrite = f"head -c 24 /dev/zero | tr '\\0' '\\377' | dd of={path} bs=1 seek=8192 conv=notrunc status=none"
    host.check_output(f"{COMPOSE} exec -T postgres sh -c {shlex.quote(overwrite)}")
    host.check_output(f"{COMPOSE} restart postgres")
    assert eventually(lambda: host.run(f"{PSQL} -U wa -c 'SELECT 1'").rc == 0, timeout=60)
    assert "invalid page in block 1" in host.run(f"{PSQL} -U wa -c 'SELECT count(*) FROM ledger'").stderr
    try:
        yield "ledger"
    finally:
        sql(host, "BEGIN READ WRITE; ALTER DATABASE wa_mcp RESET default_transaction_read_only; COMMIT")
        host.run(f"{PSQL} -U wa -c 'DROP TABLE IF EXISTS ledger'")
        host.check_output(f"{COMPOSE} restart app")
        assert eventually(lambda: healthy(host), timeout=90)


def test_db_corruption_keeps_evidence_then_goes_read_only_and_back_only_when_confirmed(host, damaged_table):
    rc, out = playbook("triage.yml", "incident_id=TRI-CORRUPT")
    assert rc == 0, out
    assert "playbooks/db_corruption.yml -e incident_id=TRI-CORRUPT" in out

    rc, out = playbook("db_corruption.yml", "incident_id=DB-CORRUPT")
    assert rc == 0, out
    assert "DAMAGED: ledger" in out and "invalid page in block 1" in out
    [bundle] = bundles(host, "DB-CORRUPT")
    dump = host.check_output(f"grep -l 'PostgreSQL database dump' {bundle}/commands/*.stdout")
    assert "CREATE TABLE public.ledger" in host.file(dump).content_string  # its definition, not its rows
    assert "COPY public.ledger" not in host.file(dump).content_string and "COPY public.messages" in host.file(dump).content_string
    assert host.run(f"cd {bundle} && sha256sum -c --quiet SHA256SUMS").rc == 0

    read_only = "db_corruption_state=read_only"
    rc, out = playbook("db_corruption.yml", "incident_id=DB-CORRUPT", read_only, "db_corruption_evidence=false", check=True)
    assert rc == 0, out
    rc, out = playbook("db_corruption.yml", "incident_id=DB-CORRUPT", read_only, "db_corruption_evidence=false")
    assert rc != 0 and "Nothing was changed" in out and "refuse every write to wa_mcp" in out
    assert wrote(host, "INSERT INTO maintenance_log (note) VALUES ('before')")

    rc, out = playbook("db_corruption.yml", "incident_id=DB-CORRUPT", read_only, "db_corruption_evidence=false", "confirm=true")
    assert rc == 0, out
    assert "playbooks/restore_database.yml -e incident_id=DB-CORRUPT -e backup=latest -e confirm=true" in out
    assert not wrote(host, "INSERT INTO maintenance_log (note) VALUES ('refused')")
    assert sql(host, "SELECT count(*) FROM messages") == "2000"  # reads go on
    assert healthy(host)

    rc, out = playbook("db_corruption.yml", "incident_id=DB-CORRUPT", "db_corruption_state=read_write", "confirm=true")
    assert rc == 0, out
    assert wrote(host, "INSERT INTO maintenance_log (note) VALUES ('after')")
    rc, out = playbook("db_corruption.yml", "incident_id=DB-CORRUPT", "db_corruption_state=read_write", "confirm=true")
    assert rc == 0 and unchanged_run(out), out


# ------------------------------------------------------------------------------------------------- storage full
@pytest.fixture()
def full_disk(host):
    """A 32 MiB filesystem of its own in the data dir (tmpfs: the host container has no loop device), 94% full: an
    export that must stay, the current log, and three rotated logs that may go."""
    filled = "/var/lib/whatsapp-mcp/exports"
    host.check_output(f"mkdir -p {filled} && mount -t tmpfs -o size=32m,mode=0750 runbooks-test-full {filled}")
    try:
        host.check_output(f"mkdir {filled}/logs && head -c 8M /dev/urandom > {filled}/current.export && head -c 1M /dev/urandom > "
                          f"{filled}/logs/export.log && for n in 1 2 3; do head -c 7M /dev/urandom > {filled}/logs/export.log.$n.gz; done")
        yield filled
    finally:
        host.run(f"umount {filled}; rmdir {filled}")


def test_storage_full_names_what_fills_a_disk_and_reclaims_only_what_is_selected_and_confirmed(host, full_disk):
    rc, out = playbook("triage.yml", "incident_id=TRI-FULL", json.dumps({"triage_disk_paths": [full_disk]}))
    assert rc == 0, out
    assert f"playbooks/storage_full.yml -e incident_id=TRI-FULL -e storage_full_path={full_disk}" in out

    given = ("incident_id=DISK-1", f"storage_full_path={full_disk}", json.dumps({"storage_full_log_dirs": [f"{full_disk}/logs"]}),
             "storage_full_docker=false", "storage_full_journal=false")
    rc, out = playbook("storage_full.yml", *given)
    assert rc == 0, out
    assert f"{full_disk}/current.export" in out and "rotated_logs" in out
    reclaim = json.dumps({"storage_full_reclaim": ["rotated_logs"]})
    rc, out = playbook("storage_full.yml", *given, reclaim, check=True)
    assert rc == 0, out
    rc, out = playbook("storage_full.yml", *given, reclaim)
    assert rc != 0 and "Nothing was changed" in out and "delete 3 rotated log file(s)" in out, out
    assert host.file(f"{full_disk}/logs/export.log.1.gz").exists

    rc, out = playbook("storage_full.yml", *given, reclaim, "confirm=true")
    assert rc == 0, out
    assert [host.file(f"{full_disk}/{name}").exists for name in ("current.export", "logs/export.log", "logs/export.log.1.gz",
                                                                 "logs/export.log.3.gz")] == [True, True, False, False]
    assert int(host.check_output(f"df --output=pcent {full_disk} | tail -1").strip().rstrip("%")) < 50
    assert healthy(host)
    rc, out = playbook("storage_full.yml", *given, reclaim, "confirm=true")
    assert rc == 0 and unchanged_run(out), out


# ------------------------------------------------------------------------------------------------------ node down
LIMITS_OVERRIDE = "/etc/runbooks-incident/compose-limits/whatsapp-mcp.yaml"


def app_container(host):
    return host.check_output(f"{COMPOSE} ps -q app")


def memory_limit(host):
    return int(host.check_output(f"docker inspect --format '{{{{.HostConfig.Memory}}}}' {app_container(host)}"))


@pytest.fixture()
def oom_killed_app(host):
    """The app's main process killed for lack of memory: a 96 MiB limit set on its container, the main process made
    the OOM killer's first choice (oom_score_adj 1000), and a process of the container allocating until the kernel
    kills. Docker restarts the container and marks it OOMKilled."""
    container = app_container(host)
    host.check_output(f"docker update --memory 96m --memory-swap 96m {container}")
    host.check_output(f"{COMPOSE} exec -T -u root app sh -c 'echo 1000 > /proc/1/oom_score_adj'")
    host.run(f"{COMPOSE} exec -T -u root app python3 -c 'a = [bytearray(10 ** 6) for _ in iter(int, 1)]'")
    assert eventually(lambda: host.check_output(f"docker inspect --format '{{{{.State.OOMKilled}}}}' {container}") == "true", timeout=60)
    assert eventually(lambda: healthy(host), timeout=90)
    try:
        yield container
    finally:
        host.run(f"rm -f {LIMITS_OVERRIDE} {LIMITS_OVERRIDE}.previous /etc/systemd/system/whatsapp-mcp.service.d/runbooks-limits.conf")
        host.run("systemctl daemon-reload")
        host.check_output(f"{COMPOSE} up --detach --wait --force-recreate app")
        assert eventually(lambda: healthy(host), timeout=90)


def test_node_down_names_an_oom_kill_and_raises_the_limit_with_a_way_back(host, oom_killed_app):
    rc, out = playbook("triage.yml", "incident_id=TRI-OOM")
    assert rc == 0, out
    assert "processes were killed for lack of memory" in out and "playbooks/node_down.yml -e incident_id=TRI-OOM" in out

    limits = json.dumps({"node_down_limits": {"app": {"memory": "256m"}}})
    rc, out = playbook("node_down.yml", "incident_id=NODE-1", limits, check=True)
    assert rc == 0, out
    rc, out = playbook("node_down.yml", "incident_id=NODE-1", limits)
    assert rc != 0 and "Nothing was changed" in out, out
    assert not host.file(LIMITS_OVERRIDE).exists

    rc, out = playbook("node_down.yml", "incident_id=NODE-1", limits, "confirm=true")
    assert rc == 0, out
    assert memory_limit(host) == 256 * 1024 * 1024, "the recreated container runs with the new limit"
    assert app_container(host) != oom_killed_app and healthy(host)
    rc, out = playbook("node_down.yml", "incident_id=NODE-1", limits, "confirm=true")
    assert rc == 0 and unchanged_run(out), out

    rc, out = playbook("node_down.yml", "incident_id=NODE-1", "node_down_limits_state=previous", "confirm=true")
    assert rc == 0, out
    assert memory_limit(host) == 0 and not host.file(LIMITS_OVERRIDE).exists and healthy(host)


@pytest.fixture()
def seq_scanned_table(host):
    """A big table read by sequential scans: 20,000 rows, looked up 30 times by a column no index covers."""
    sql(host, "CREATE TABLE delivery_receipts AS SELECT g AS id, g % 500 AS client_id, md5(g::text) AS body "
              "FROM generate_series(1, 20000) g; ANALYZE delivery_receipts")
    sql(host, "SELECT count(*) FROM delivery_receipts WHERE client_id = 7;" * 30)
    try:
        yield "delivery_receipts"
    finally:
        sql(host, "DROP TABLE IF EXISTS delivery_receipts")


def test_db_degraded_names_a_table_read_by_sequential_scans_and_builds_its_index_only_when_confirmed(host, seq_scanned_table):
    rc, out = playbook("db_degraded.yml", "incident_id=DB-IDX")
    assert rc == 0, out
    assert re.search(rf"table {seq_scanned_table} \(\d+ rows\) is read mostly by sequential scans", out), out

    index = json.dumps({"db_degraded_index": {"name": "delivery_receipts_client_idx", "table": seq_scanned_table, "columns": ["client_id"]}})
    rc, out = playbook("db_degraded.yml", "incident_id=DB-IDX", index, check=True)
    assert rc == 0, out
    rc, out = playbook("db_degraded.yml", "incident_id=DB-IDX", index)
    assert rc != 0 and "Nothing was changed" in out, out
    built = "SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass('delivery_receipts_client_idx') AND indisvalid"
    assert sql(host, built) == "0"

    rc, out = playbook("db_degraded.yml", "incident_id=DB-IDX", index, "confirm=true")
    assert rc == 0, out
    assert sql(host, built) == "1", "a valid index, built concurrently"
    plan = sql(host, "EXPLAIN SELECT count(*) FROM delivery_receipts WHERE client_id = 7")
    assert "delivery_receipts_client_idx" in plan, plan
    rc, out = playbook("db_degraded.yml", "incident_id=DB-IDX", index, "confirm=true")
    assert rc == 0 and unchanged_run(out), out


APP_IMAGE = "whatsapp-mcp/app:reference"
RELEASES = "/var/lib/runbooks-incident/releases/whatsapp-mcp"


def image_id(host, ref):
    return host.check_output(f"docker image inspect --format '{{{{.Id}}}}' {ref}")


def running_image(host):
    return host.check_output(f"docker inspect --format '{{{{.Image}}}}' {app_container(host)}")


@pytest.fixture()
def bad_deploy(host):
    """A release that never serves, deployed: the app's image replaced under its tag by one whose command waits
    forever for a setting it lacks (what a broken build is), its schema migration applied, and the app recreated
    from it: running, never answering /health. (Not a crash loop: its restarts would change the host under the dry
    runs this test compares.) The deploy recorded the good release before (whatsapp_mcp's converge); yields that
    release's image id."""
    good = image_id(host, APP_IMAGE)
    before = set(host.file(RELEASES).listdir())
    assert before, "the converge recorded the release it verified"
    broken = 'CMD ["sh", "-c", "echo release 2: waiting for WA_FEATURE_FLAGS >&2; exec sleep 86400"]'
    host.check_output(f"docker commit --change {shlex.quote(broken)} {app_container(host)} {APP_IMAGE}")
    sql(host, "INSERT INTO schema_migrations (version) VALUES ('9001_release_2_flags')")
    host.check_output(f"{COMPOSE} up --detach --no-deps app")
    assert eventually(lambda: not healthy(host), timeout=60)
    try:
        yield good
    finally:
        sql(host, "DELETE FROM schema_migrations WHERE version = '9001_release_2_flags'")
        host.check_output(f"docker tag {good} {APP_IMAGE}")
        for name in set(host.file(RELEASES).listdir()) - before:
            record = json.loads(host.file(f"{RELEASES}/{name}").content_string)
            for tag in record.get("tags", {}).values():
                host.run(f"docker rmi {shlex.quote(tag)}")
            host.run(f"rm -f {RELEASES}/{name}")
        host.check_output(f"{COMPOSE} up --detach --wait --no-deps app")
        assert eventually(lambda: healthy(host), timeout=90)


def test_rollback_puts_the_last_verified_release_back_with_migrations_considered_and_a_way_forward(host, bad_deploy):
    good = bad_deploy
    rc, out = playbook("triage.yml", "incident_id=TRI-DEPLOY")
    assert rc == 0, out
    assert "playbooks/rollback.yml -e incident_id=TRI-DEPLOY" in out, out

    rc, out = playbook("rollback.yml", "incident_id=ROLL-1", check=True)
    assert rc != 0 and "9001_release_2_flags" in out, "the release before cannot know the bad release's migration: refused"
    rc, out = playbook("rollback.yml", "incident_id=ROLL-1", "rollback_force=true", check=True)
    assert rc == 0, out
    rc, out = playbook("rollback.yml", "incident_id=ROLL-1", "rollback_force=true")
    assert rc != 0 and "Nothing was changed" in out, out
    assert running_image(host) != good and image_id(host, APP_IMAGE) != good

    rc, out = playbook("rollback.yml", "incident_id=ROLL-1", "rollback_force=true", "confirm=true")
    assert rc == 0, out
    assert image_id(host, APP_IMAGE) == good and running_image(host) == good and healthy(host)
    forward = re.search(r"rollback\.yml -e rollback_release=(\d{8}T\d{6}Z\S*)", out)
    assert forward, out
    rc, out = playbook("rollback.yml", "incident_id=ROLL-1", "rollback_force=true", "confirm=true")
    assert rc == 0 and unchanged_run(out), out

    rc, out = playbook("rollback.yml", "incident_id=ROLL-1", f"rollback_release={forward.group(1)}", check=True)
    assert rc == 0 and forward.group(1) in out, "the images the rollback replaced were recorded: the way forward"
