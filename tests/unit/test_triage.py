# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""triage_info: the judge on observation dicts (what each finding is, which playbook it names, how findings rank),
and the collectors against what is real here: a tmp filesystem (statvfs), certificates made with cryptography,
backup manifests with set modification times, an http.server on loopback answering 200 or 503 (or nothing), and a
real PostgreSQL (the pg_server fixture, libpq runtime) with a session idle in a transaction holding a lock another
waits for.

docker, systemctl, ss, journalctl and nginx are not run here (no docker in unit tests): their parsers are fed text
in the exact formats those tools print, and the real tools are exercised by the molecule scenario."""
from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import os
import shlex
import socket
import threading
import time

import psycopg2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import PG_BINDIR  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _compose_release, _triage

TOKEN = "Zx9QmT4vL2pR8sK1wY6nB3cH7dF5gJ0a"  # 32 characters, as an access token is
PASSWORD = "hunter2-Sup3r"


def params(**overrides):
    """The module's defaults (as the argument spec gives them), with overrides."""
    base = dict(db="wa_mcp", project_dir="", app_service="app", web_service="nginx", compose_service="postgres",
                units=["whatsapp-mcp-secrets.service", "whatsapp-mcp.service"], health_url="http://127.0.0.1/health",
                required_files=[], disk_paths=["/"], disk_percent=90, inode_percent=90, certificates=[], cert_days=14,
                backup_dir="/nonexistent/backups", releases_dir="/nonexistent/releases", backup_pattern="db-*.manifest.json", backup_max_age_hours=26,
                audit_integrity_unit="runbooks-audit-integrity.service", since_minutes=15, long_query_seconds=300,
                idle_in_transaction_seconds=60, connections_percent=80, flood_requests=600, flood_connections=300, flood_share=0.5,
                checks=list(_triage.CHECKS), incident_id=None, login_user="postgres", login_password=None,
                login_host="127.0.0.1", login_port=1, login_unix_socket=None, compose_project_dir=None,
                maintenance_db="postgres", pg_bin_dir=None)
    base.update(overrides)
    return base


THRESHOLDS = _triage.check_params(params())


def ok(**observation):
    return dict(observation, status="ok")


def judged(**observations):
    return _triage.findings(observations, THRESHOLDS)


# ---------------------------------------------------------------------------------------------------- judge
def test_a_root_cause_outranks_the_crash_it_causes_and_the_red_health_it_shows_as():
    found, checks = judged(
        health=ok(url="http://127.0.0.1/health", http_status=503, error=None),
        containers=ok(expected=["app", "nginx", "postgres"], containers=[
            dict(name="wa-app-1", service="app", state="restarting", health="", exit_code=1, restarts=7, oom_killed=False),
            dict(name="wa-nginx-1", service="nginx", state="running", health="", exit_code=0, restarts=0, oom_killed=False),
            dict(name="wa-postgres-1", service="postgres", state="running", health="healthy", exit_code=0, restarts=0, oom_killed=False)]),
        disk=ok(filesystems=[dict(path="/var/lib/whatsapp-mcp", mount="/var/lib/whatsapp-mcp", percent=99.2, inode_percent=3.0,
                                  free_bytes=50 << 20)], missing=[]),
        backups=ok(directory="/b", exists=True, newest="db-1.manifest.json", age_hours=30.0, ignored=[]))
    assert [(item["check"], item["severity"], item["rank"]) for item in found] == [
        ("disk", "critical", 1), ("containers", "critical", 2), ("health", "critical", 3), ("backups", "warning", 4)]
    assert found[0]["playbook"] == "storage_full.yml" and found[0]["extra_vars"] == {"storage_full_path": "/var/lib/whatsapp-mcp"}
    assert found[1]["playbook"] == found[2]["playbook"] == "service_not_starting.yml"
    assert "crash loop" in found[1]["title"] and "7 restarts" in found[1]["evidence"][0]
    assert found[3]["playbook"] == "backup_failed.yml"
    assert checks["disk"]["status"] == "problem" and checks["containers"]["status"] == "problem"
    steps = _triage.next_steps(found, "INC-7")
    assert steps == ["ansible-playbook playbooks/storage_full.yml -e incident_id=INC-7 -e storage_full_path=/var/lib/whatsapp-mcp",
                     "ansible-playbook playbooks/service_not_starting.yml -e incident_id=INC-7",
                     "ansible-playbook playbooks/backup_failed.yml -e incident_id=INC-7"]


def test_severity_comes_first_then_cause_then_the_order_of_the_checks():
    found, _checks = judged(
        units=ok(units=[dict(unit="whatsapp-mcp.service", load_state="loaded", active_state="active", sub_state="running",
                             result="success", restarts=3)]),
        required_files=ok(files=[dict(path="/run/secrets/db_password", state="missing"), dict(path="/x", state="ok")]),
        memory=ok(mem_total_kb=1000, mem_available_kb=30, available_percent=3.0, oom_kills=0, oom_processes=[], journal=None),
        database=ok(reachable=False, error="cannot reach PostgreSQL (local socket): refused", db="wa_mcp"))
    assert [(item["check"], item["severity"]) for item in found] == [
        ("required_files", "critical"), ("database", "critical"), ("memory", "high"), ("units", "warning")]
    assert found[0]["evidence"] == ["/run/secrets/db_password: missing"]
    assert found[1]["playbook"] == "service_not_starting.yml"
    assert found[2]["playbook"] == "node_down.yml"
    assert found[3]["playbook"] is None


@pytest.mark.parametrize("unit, severity", [
    (dict(load_state="loaded", active_state="failed", sub_state="failed", result="exit-code"), "critical"),
    (dict(load_state="loaded", active_state="activating", sub_state="auto-restart", result="exit-code"), "critical"),
    (dict(load_state="not-found", active_state="inactive", sub_state="dead", result="success"), "critical"),
    (dict(load_state="loaded", active_state="inactive", sub_state="dead", result="success"), "high"),
])
def test_a_unit_failed_or_not_running_names_service_not_starting(unit, severity):
    found, _checks = judged(units=ok(units=[dict(unit, unit="whatsapp-mcp.service", restarts=0)]))
    assert [(item["severity"], item["playbook"]) for item in found] == [(severity, "service_not_starting.yml")]


def test_a_missing_compose_service_an_unhealthy_one_and_an_oom_killed_one():
    found, _checks = judged(
        containers=ok(expected=["app", "nginx", "postgres"], containers=[
            dict(name="wa-app-1", service="app", state="running", health="unhealthy", exit_code=0, restarts=0, oom_killed=False),
            dict(name="wa-postgres-1", service="postgres", state="exited", health="", exit_code=137, restarts=0, oom_killed=True)]),
        memory=ok(mem_total_kb=1000, mem_available_kb=500, available_percent=50.0, oom_kills=None, oom_processes=[], journal="no"))
    titles = [(item["check"], item["severity"], item["title"]) for item in found]
    assert titles[0] == ("memory", "critical", "processes were killed for lack of memory")
    assert found[0]["playbook"] == "node_down.yml" and found[0]["evidence"] == ["OOMKilled container: wa-postgres-1"]
    assert ("containers", "critical", "no container of compose service nginx") in titles
    assert ("containers", "critical", "container wa-postgres-1 is exited (crash loop)") in titles
    assert ("containers", "high", "container wa-app-1 is unhealthy") in titles


def test_a_foreign_holder_of_port_80_is_named_with_its_pid_and_docker_proxy_is_not():
    found, _checks = judged(ports=ok(listeners=[
        dict(address="0.0.0.0", port=80, processes=[dict(program="apache2", pid=812), dict(program="apache2", pid=813)]),
        dict(address="0.0.0.0", port=443, processes=[dict(program="docker-proxy", pid=1500)])]))
    assert len(found) == 1 and found[0]["severity"] == "critical" and found[0]["playbook"] == "service_not_starting.yml"
    assert found[0]["title"] == "port 80 is held by apache2, not the web container"
    assert found[0]["evidence"] == ["apache2 pid 812 listens on 0.0.0.0:80", "apache2 pid 813 listens on 0.0.0.0:80"]


def test_disk_and_inodes_over_their_thresholds_name_storage_full_with_the_mount_point():
    found, _checks = judged(disk=ok(missing=["/var/lib/docker"], filesystems=[
        dict(path="/var/lib/whatsapp-mcp", mount="/var/lib/whatsapp-mcp", percent=91.0, inode_percent=10.0, free_bytes=1 << 30),
        dict(path="/var/log", mount="/var", percent=40.0, inode_percent=95.5, free_bytes=1 << 33),
        dict(path="/", mount="/", percent=89.9, inode_percent=None, free_bytes=1 << 33)]))
    assert [(item["severity"], item["extra_vars"]) for item in found] == [
        ("high", {"storage_full_path": "/var/lib/whatsapp-mcp"}), ("high", {"storage_full_path": "/var"})]
    assert "95.5% of its inodes used" in found[1]["evidence"][0]
    assert all(item["playbook"] == "storage_full.yml" for item in found)


def logs_observation(classes, signatures=(), errors=1):
    return ok(since_minutes=15, classes=classes, signatures=list(signatures),
              services={"app": dict(role="app", lines=10, errors=errors)})


@pytest.mark.parametrize("kind, playbook, severity", [
    ("storage", "storage_full.yml", "critical"), ("corruption", "db_corruption.yml", "critical"),
    ("memory", "node_down.yml", "high"), ("connections", "db_degraded.yml", "high"),
    ("upstream", "service_not_starting.yml", "high")])
def test_each_known_log_signature_names_its_playbook(kind, playbook, severity):
    signature = dict(service="app", signature="something <n>", count=4, **{"class": kind})
    found, _checks = judged(logs=logs_observation({kind: 4}, [signature]))
    assert [(item["playbook"], item["severity"]) for item in found] == [(playbook, severity)]
    assert found[0]["evidence"] == ["4 lines in 15 min", "app: 4 x something <n>"]


def test_storage_errors_in_the_logs_name_the_fullest_filesystem():
    found, _checks = judged(
        logs=logs_observation({"storage": 2}),
        disk=ok(missing=[], filesystems=[dict(path="/", mount="/", percent=50.0, inode_percent=1.0, free_bytes=1 << 30),
                                         dict(path="/var/lib/docker", mount="/var/lib/docker", percent=80.0, inode_percent=1.0,
                                              free_bytes=1 << 30)]))
    assert found[0]["extra_vars"] == {"storage_full_path": "/var/lib/docker"}


def test_unclassified_errors_are_a_warning_without_playbook():
    signature = dict(service="app", signature="ValueError: bad <str>", count=3, **{"class": None})
    found, checks = judged(logs=logs_observation({}, [signature], errors=3))
    assert [(item["severity"], item["playbook"]) for item in found] == [("warning", None)]
    assert checks["logs"]["status"] == "problem"
    assert _triage.next_steps(found) == []


def session(pid, state, seconds, idle=None, query="SELECT 1", blocks=(), blocked_by=()):
    return dict(pid=pid, user="wa", state=state, seconds=seconds, query_seconds=seconds, idle_seconds=idle, query=query,
                blocks=list(blocks), blocked_by=list(blocked_by))


def test_the_database_chains_idle_transactions_long_queries_and_connections_name_db_degraded():
    found, _checks = judged(database=ok(
        reachable=True, error=None, db="wa_mcp", connections=80, max_connections=103, reserved=3,
        chains=[dict(pid=20, blocked_by=[10])],
        sessions=[session(10, "idle in transaction", 400, idle=400, query="LOCK TABLE messages", blocks=[20]),
                  session(20, "active", 30, blocked_by=[10]), session(30, "active", 900, query="SELECT pg_sleep(1000)"),
                  session(40, "idle", None, idle=5000)]))
    assert [(item["severity"], item["extra_vars"]) for item in found] == [
        ("high", {}), ("high", {"db_degraded_blocking": True}), ("high", {"db_degraded_idle_for": 60}),
        ("warning", {"db_degraded_older_than": 300})]
    assert all(item["playbook"] == "db_degraded.yml" for item in found)
    assert found[0]["title"] == "80 of 100 connections in use (80.0%)"
    assert found[1]["evidence"] == ["pid 10 (wa, idle in transaction 400 s): LOCK TABLE messages blocks 20"]
    assert found[2]["evidence"] == ["pid 10 (wa, idle in transaction 400 s): LOCK TABLE messages"]
    assert found[3]["evidence"] == ["pid 30 (wa, active 900 s): SELECT pg_sleep(1000)"]
    steps = _triage.next_steps(found)
    assert steps[1] == ("ansible-playbook playbooks/db_degraded.yml -e 'incident_id=<incident_id>' -e "
                        + shlex.quote('{"db_degraded_blocking": true}'))
    assert shlex.split(steps[2])[-1] == "db_degraded_idle_for=60" or json.loads(shlex.split(steps[2])[-1]) == {"db_degraded_idle_for": 60}


def test_certificates_expired_expiring_and_missing_name_renew_certificate():
    found, _checks = judged(certificates=ok(certificates=[
        dict(path="/a.pem", days_left=-1, subject="CN=wa.example.com", not_after="20260101000000Z", problem=None),
        dict(path="/b.pem", days_left=2, subject="CN=wa.example.com", not_after="20260101000000Z", problem=None),
        dict(path="/c.pem", days_left=10, subject="CN=wa.example.com", not_after="20260101000000Z", problem=None),
        dict(path="/d.pem", days_left=15, subject="CN=wa.example.com", not_after="20260101000000Z", problem=None),
        dict(path="/e.pem", days_left=None, subject=None, not_after=None, problem="missing")]))
    assert [(item["title"], item["severity"]) for item in found] == [
        ("certificate /a.pem has expired", "critical"), ("certificate /e.pem is missing", "high"),
        ("certificate /b.pem expires in 2 days", "high"), ("certificate /c.pem expires in 10 days", "warning")]
    assert {item["playbook"] for item in found} == {"renew_certificate.yml"}


def test_backups_none_old_and_fresh():
    assert judged(backups=ok(directory="/b", exists=True, newest="db-1.manifest.json", age_hours=25.9, ignored=[]))[0] == []
    none, _checks = judged(backups=ok(directory="/b", exists=False, newest=None, age_hours=None, ignored=[]))
    assert none[0]["severity"] == "high" and none[0]["playbook"] == "backup_failed.yml"
    old, _checks = judged(backups=ok(directory="/b", exists=True, newest="db-1.manifest.json", age_hours=60.0, ignored=["db-2.manifest.json"]))
    assert old[0]["severity"] == "high" and "db-2.manifest.json" in old[0]["evidence"][1]


def test_a_failed_audit_integrity_check_names_its_playbook():
    found, _checks = judged(audit_integrity=ok(unit="runbooks-audit-integrity.service", active_state="failed", result="exit-code",
                                               exit_status=1))
    assert [(item["severity"], item["playbook"]) for item in found] == [("high", "audit_integrity.yml")]
    assert judged(audit_integrity=ok(unit="u", active_state="inactive", result="success", exit_status=0))[0] == []


def test_a_flood_suspect_needs_both_the_count_and_the_share():
    clients = [dict(address="203.0.113.9", count=700), dict(address="198.51.100.2", count=650), dict(address="192.0.2.1", count=5)]
    found, _checks = judged(requests=ok(total=1500, errors_5xx=0, top_clients=clients, since_minutes=15))
    assert found == []  # neither holds half of all requests
    found, _checks = judged(requests=ok(total=1000, errors_5xx=200, top_clients=clients[:1], since_minutes=15))
    assert [(item["check"], item["severity"], item["playbook"]) for item in found] == [
        ("requests", "high", "connection_flood.yml"), ("requests", "warning", None)]
    assert found[0]["extra_vars"] == {"connection_flood_sources": ["203.0.113.9"]}
    command = _triage.next_steps(found, "INC-9")[0]
    assert shlex.split(command) == ["ansible-playbook", "playbooks/connection_flood.yml", "-e", "incident_id=INC-9", "-e",
                                    '{"connection_flood_sources": ["203.0.113.9"]}']


def test_the_hosts_own_requests_are_never_a_flood():
    """Health checks and local probes come from loopback: on the sandbox, nginx's own check is one request a second."""
    for address in ("127.0.0.1", "127.0.0.53", "::1"):
        clients = [dict(address=address, count=900), dict(address="203.0.113.9", count=3)]
        found, _checks = judged(requests=ok(total=903, errors_5xx=0, top_clients=clients, since_minutes=15))
        assert found == [], address


# Lines as /proc/net/nf_conntrack prints them (conntrack -L: the same without the first two fields). The first tuple is
# the client's, with the port it asked for before docker's DNAT to the web container (172.18.0.3:443).
CONNTRACK = "\n".join(
    ["ipv4     2 tcp      6 %d %s src=203.0.113.9 dst=172.29.0.10 sport=%d dport=443 src=172.18.0.3 dst=203.0.113.9 sport=443 "
     "dport=%d [ASSURED] mark=0 zone=0 use=2" % (100 + i, "TIME_WAIT" if i % 2 else "ESTABLISHED", 40000 + i, 40000 + i) for i in range(6)]
    + ["ipv4     2 tcp      6 80 SYN_RECV src=198.51.100.4 dst=172.29.0.10 sport=5000 dport=80 src=172.18.0.3 dst=198.51.100.4 "
       "sport=80 dport=5000 mark=0 use=1",
       "tcp      6 431999 ESTABLISHED src=198.51.100.4 dst=172.29.0.10 sport=5001 dport=80 src=172.18.0.3 dst=198.51.100.4 sport=80 "
       "dport=5001 [ASSURED] mark=0 use=1",
       # not the web ports, not TCP, a reply direction naming 443 second: none counts
       "ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.7 dst=172.29.0.10 sport=5002 dport=5432 src=172.18.0.2 "
       "dst=198.51.100.7 sport=443 dport=5002 [ASSURED] mark=0 use=1",
       "ipv4     2 udp      17 20 src=198.51.100.8 dst=172.29.0.10 sport=53 dport=443 src=172.29.0.10 dst=198.51.100.8 sport=443 dport=53 use=1",
       "ipv6     10 tcp      6 300 ESTABLISHED src=2001:db8::7 dst=2001:db8::1 sport=6000 dport=443 src=2001:db8::1 dst=2001:db8::7 "
       "sport=443 dport=6000 [ASSURED] mark=0 use=1", "", "garbage"])


def test_connections_are_counted_per_source_from_the_tracking_table():
    assert _triage.count_connections(CONNTRACK) == dict(
        total=9, top_sources=[dict(address="203.0.113.9", count=6), dict(address="198.51.100.4", count=2), dict(address="2001:db8::7", count=1)],
        states={"ESTABLISHED": 5, "TIME_WAIT": 3, "SYN_RECV": 1})


def test_a_source_holding_most_connections_is_a_flood_suspect(monkeypatch, tmp_path):
    table = tmp_path / "nf_conntrack"
    table.write_text(CONNTRACK)
    monkeypatch.setattr(_triage, "CONNTRACK_PROC", str(table))
    result = _triage.run(params(checks=["connections"], flood_connections=5, incident_id="INC-4"))
    assert result["checks"]["connections"] == dict(status="problem", detail="1 source holds most connections (flood suspect)")
    assert [(item["check"], item["severity"], item["playbook"], item["extra_vars"]) for item in result["findings"]] == [
        ("connections", "high", "connection_flood.yml", {"connection_flood_sources": ["203.0.113.9"]})]
    assert "203.0.113.9: 6 of 9 tracked connections to ports 80/443" in result["findings"][0]["evidence"]
    assert _triage.run(params(checks=["connections"], flood_connections=6))["findings"] == []  # more than, not as many as
    assert _triage.run(params(checks=["connections"], flood_connections=5, flood_share=0.7))["findings"] == []
    loopback = CONNTRACK.replace("203.0.113.9", "127.0.0.1")
    table.write_text(loopback)
    assert _triage.run(params(checks=["connections"], flood_connections=5))["findings"] == []


def test_without_the_tracking_file_conntrack_is_asked_or_the_check_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(_triage, "CONNTRACK_PROC", str(tmp_path / "absent"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert _triage.run(params(checks=["connections"]))["checks"]["connections"]["status"] == "skipped"
    tool = bin_dir / "conntrack"
    listed = "\n".join(line.split(None, 2)[2] for line in CONNTRACK.splitlines() if line.startswith("ipv"))
    tool.write_text("#!/bin/sh\n[ \"$*\" = '-L -p tcp' ] || exit 2\n/bin/cat <<'EOF'\n%s\nEOF\n" % listed)
    tool.chmod(0o755)
    assert _triage.run(params(checks=["connections"]))["checks"]["connections"] == dict(status="ok", detail="8 tracked connections to ports 80/443")
    found = _triage.run(params(checks=["connections"], flood_connections=5))
    assert found["findings"][0]["extra_vars"] == {"connection_flood_sources": ["203.0.113.9"]}


def test_refusals_of_the_past_window_are_a_warning_once_health_answers():
    signature = dict(service="nginx", signature="connect() failed", count=3, **{"class": "upstream"})
    found, _checks = judged(logs=logs_observation({"upstream": 3}, [signature]),
                            health=ok(url="http://127.0.0.1/health", http_status=200, error=None))
    assert [(item["severity"], item["playbook"]) for item in found] == [("warning", None)]
    assert "answers now" in found[0]["title"]


def raises(exc):
    raise exc


def test_checks_that_did_not_run_keep_their_status_and_only_warnings_are_healthy():
    result = _triage.run(params(checks=["units", "health", "backups"]), collectors=dict(
        units=lambda *args: raises(_triage.Skipped("systemd is not running on this host")),
        health=lambda *args: raises(RuntimeError("boom\nsecond line")),
        backups=lambda *_: dict(directory="/b", exists=True, newest="db-1.manifest.json", age_hours=30.0, ignored=[])))
    assert result["checks"] == {"units": dict(status="skipped", detail="systemd is not running on this host"),
                                "health": dict(status="error", detail="boom"),
                                "backups": dict(status="problem", detail="the newest backup is 30.0 hours old (more than 26)")}
    assert result["healthy"] is True and result["changed"] is False
    assert "not run: units (skipped), health (error)" in result["msg"]


def test_an_empty_set_of_findings_is_healthy_and_says_so():
    found, checks = judged(health=ok(url="u", http_status=200, error=None))
    assert found == [] and checks == {"health": dict(status="ok", detail="HTTP 200")}


# ------------------------------------------------------------------------------------------ parsing tool output
COMPOSE_PS_LINES = (
    '{"Command":"\\"docker-entrypoint.s…\\"","CreatedAt":"2026-03-01 02:00:00 +0000 UTC","ExitCode":0,"Health":"healthy",'
    '"ID":"a1b2c3d4e5f6","Image":"postgres:16","Labels":"com.docker.compose.project=whatsapp-mcp","LocalVolumes":"1",'
    '"Mounts":"pgdata","Name":"whatsapp-mcp-postgres-1","Names":"whatsapp-mcp-postgres-1","Networks":"whatsapp-mcp_default",'
    '"Ports":"5432/tcp","Project":"whatsapp-mcp","Publishers":[{"URL":"","TargetPort":5432,"PublishedPort":0,"Protocol":"tcp"}],'
    '"RunningFor":"2 hours ago","Service":"postgres","Size":"0B","State":"running","Status":"Up 2 hours (healthy)"}\n'
    '{"Command":"\\"python -m app\\"","CreatedAt":"2026-03-01 02:00:00 +0000 UTC","ExitCode":1,"Health":"",'
    '"ID":"0f9e8d7c6b5a","Image":"whatsapp-mcp-app","Labels":"","LocalVolumes":"0","Mounts":"","Name":"whatsapp-mcp-app-1",'
    '"Names":"whatsapp-mcp-app-1","Networks":"whatsapp-mcp_default","Ports":"","Project":"whatsapp-mcp","Publishers":null,'
    '"RunningFor":"2 hours ago","Service":"app","Size":"0B","State":"restarting","Status":"Restarting (1) 5 seconds ago"}\n')
COMPOSE_PS_ARRAY = (
    '[{"ID":"a1b2c3d4e5f6","Name":"whatsapp-mcp-nginx-1","Command":"/docker-entrypoint.sh nginx -g \'daemon off;\'",'
    '"Project":"whatsapp-mcp","Service":"nginx","State":"exited","Health":"","ExitCode":1,'
    '"Publishers":[{"URL":"0.0.0.0","TargetPort":80,"PublishedPort":80,"Protocol":"tcp"}]}]\n')


def test_compose_ps_is_read_in_both_formats():
    """compose v2.21+ prints one JSON object a line; older versions a JSON array."""
    assert _triage.parse_compose_ps(COMPOSE_PS_LINES) == [
        dict(id="a1b2c3d4e5f6", name="whatsapp-mcp-postgres-1", service="postgres", state="running", health="healthy", exit_code=0),
        dict(id="0f9e8d7c6b5a", name="whatsapp-mcp-app-1", service="app", state="restarting", health="", exit_code=1)]
    assert _triage.parse_compose_ps(COMPOSE_PS_ARRAY) == [
        dict(id="a1b2c3d4e5f6", name="whatsapp-mcp-nginx-1", service="nginx", state="exited", health="", exit_code=1)]
    assert _triage.parse_compose_ps("") == [] and _triage.parse_compose_ps("[]\n") == []


DOCKER_INSPECT = json.dumps([{
    "Id": "0f9e8d7c6b5a" + "0" * 52, "Created": "2026-03-01T02:00:00Z", "Path": "python", "Args": ["-m", "app"],
    "State": {"Status": "restarting", "Running": True, "Paused": False, "Restarting": True, "OOMKilled": True, "Dead": False,
              "Pid": 0, "ExitCode": 137, "Error": "", "StartedAt": "2026-03-01T04:00:00Z", "FinishedAt": "2026-03-01T04:00:05Z"},
    "Name": "/whatsapp-mcp-app-1", "RestartCount": 12, "Image": "sha256:" + "ab" * 32,
    "Config": {"Labels": {"com.docker.compose.service": "app", "com.docker.compose.project": "whatsapp-mcp"}}},
    {"Name": "/whatsapp-mcp-postgres-1", "RestartCount": 0,
     "State": {"Status": "running", "Restarting": False, "OOMKilled": False, "ExitCode": 0, "Health": {"Status": "healthy", "FailingStreak": 0}},
     "Config": {"Labels": {"com.docker.compose.service": "postgres"}}}], indent=4)


def test_docker_inspect_gives_restarts_exit_code_and_oom_killed():
    found = _triage.parse_docker_inspect(DOCKER_INSPECT)
    assert found["whatsapp-mcp-app-1"] == dict(state="restarting", restarting=True, exit_code=137, oom_killed=True, health="",
                                               restarts=12, service="app", image="sha256:" + "ab" * 32)
    assert found["whatsapp-mcp-postgres-1"]["health"] == "healthy" and found["whatsapp-mcp-postgres-1"]["image"] == ""


def test_systemctl_show_is_read_as_key_value_blocks_and_as_values():
    text = ("Id=whatsapp-mcp-secrets.service\nLoadState=loaded\nActiveState=active\nSubState=exited\nResult=success\nNRestarts=0\n\n"
            "Id=whatsapp-mcp.service\nLoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\nNRestarts=5\n")
    units = _triage.parse_systemctl_show(text)
    assert [(unit["Id"], unit["ActiveState"], unit["NRestarts"]) for unit in units] == [
        ("whatsapp-mcp-secrets.service", "active", "0"), ("whatsapp-mcp.service", "failed", "5")]
    values = _triage.parse_systemctl_show("failed\nfailed\nexit-code\n5\n", ("ActiveState", "SubState", "Result", "NRestarts"))
    assert values == [dict(ActiveState="failed", SubState="failed", Result="exit-code", NRestarts="5")]


def test_ss_names_each_listener_with_its_programs_and_pids():
    text = ("LISTEN 0      511          0.0.0.0:80         0.0.0.0:*    users:((\"nginx\",pid=1234,fd=6),(\"nginx\",pid=1235,fd=6))\n"
            "LISTEN 0      4096            [::]:443           [::]:*    users:((\"docker-proxy\",pid=999,fd=4))\n"
            "LISTEN 0      128        127.0.0.1:5432       0.0.0.0:*\n")
    assert _triage.parse_ss(text) == [
        dict(address="0.0.0.0", port=80, processes=[dict(program="nginx", pid=1234), dict(program="nginx", pid=1235)]),
        dict(address="[::]", port=443, processes=[dict(program="docker-proxy", pid=999)]),
        dict(address="127.0.0.1", port=5432, processes=[])]


def test_kernel_oom_lines_count_the_kills_and_name_the_processes():
    text = ("python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0\n"
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=docker-abc.scope,mems_allowed=0,oom_memcg=/system.slice/"
            "docker-abc.scope,task_memcg=/system.slice/docker-abc.scope,task=python3,pid=4242,uid=1000\n"
            "Memory cgroup out of memory: Killed process 4242 (python3) total-vm:2097152kB, anon-rss:1048576kB, file-rss:0kB, "
            "shmem-rss:0kB, UID:1000 pgtables:4096kB oom_score_adj:0\n"
            "Out of memory: Killed process 777 (postgres) total-vm:1kB, anon-rss:1kB\n")
    assert _triage.parse_oom_kills(text) == (2, ["python3", "postgres"])
    assert _triage.parse_oom_kills("eth0: link up\n") == (0, [])


def test_meminfo_in_kb():
    found = _triage.parse_meminfo("MemTotal:        2014256 kB\nMemFree:          120000 kB\nMemAvailable:      80000 kB\nHugePages_Total:       0\n")
    assert found["MemTotal"] == 2014256 and found["MemAvailable"] == 80000 and found["HugePages_Total"] == 0


APP_LOG = f"""app-1  | 2026-03-01T04:00:01.123456789Z INFO started worker 1
app-1  | 2026-03-01T04:00:02.000000000Z ERROR login failed for +4915112345678 password={PASSWORD} token={TOKEN}
app-1  | 2026-03-01T04:00:03.000000000Z ERROR login failed for +4915199999999 password=other token=Qw8ErTy2UiOp4AsDf6GhJk1LzXc3VbNm
app-1  | 2026-03-01T04:00:04.000000000Z ERROR request 6f1c1d2e-8b8a-4f63-9d0e-2c9a1b7e5f00 failed: Authorization: Bearer {TOKEN}
app-1  | 2026-03-01T04:00:05.000000000Z OSError: [Errno 28] No space left on device: '/var/lib/whatsapp-mcp/media/x.jpg'
app-1  | 2026-03-01T04:00:06.000000000Z psycopg.OperationalError: connection failed: FATAL:  sorry, too many clients already
app-1  | 2026-03-01T04:00:07.000000000Z ERROR upstream at https://wa:{PASSWORD}@graph.example.com/v1 said "{TOKEN}"
"""
WEB_LOG = "".join(line + "\n" for line in (
    'nginx-1  | 2026-03-01T04:00:01.000000000Z 203.0.113.9 - - [01/Mar/2026:04:00:01 +0000] "GET /health HTTP/1.1" 200 15 "-" "curl/8.5.0"',
    'nginx-1  | 2026-03-01T04:00:02.000000000Z 203.0.113.9 - - [01/Mar/2026:04:00:02 +0000] "POST /mcp/error HTTP/1.1" 502 157 "-" "python-httpx/0.27"',
    'nginx-1  | 2026-03-01T04:00:02.500000000Z 198.51.100.2 - - [01/Mar/2026:04:00:02 +0000] "GET / HTTP/1.1" 200 612 "-" "Mozilla/5.0"',
    'nginx-1  | 2026-03-01T04:00:03.000000000Z 2026/03/01 04:00:03 [error] 29#29: *17 connect() failed (111: Connection refused)'
    ' while connecting to upstream, client: 203.0.113.9'
    ', server: wa.example.com, request: "POST /mcp HTTP/1.1", upstream: "http://172.18.0.3:8000/mcp", host: "wa.example.com"',
    'nginx-1  | 2026-03-01T04:00:04.000000000Z 2026/03/01 04:00:04 [error] 29#29: *18 connect() failed (111: Connection refused)'
    ' while connecting to upstream, client: 198.51.100.2'
    ', server: wa.example.com, request: "GET / HTTP/1.1", upstream: "http://172.18.0.3:8000/", host: "wa.example.com"',
))
DB_LOG = """postgres-1  | 2026-03-01T04:00:01.000000000Z 2026-03-01 04:00:01.000 UTC [88] ERROR:  invalid page in block 1234 of relation base/16384/16402
postgres-1  | 2026-03-01T04:00:02.000000000Z 2026-03-01 04:00:02.000 UTC [89] FATAL:  sorry, too many clients already
postgres-1  | 2026-03-01T04:00:03.000000000Z 2026-03-01 04:00:03.000 UTC [90] LOG:  checkpoint complete: wrote 3 buffers (0.0%)
"""


def test_compose_logs_lose_their_prefix_and_timestamp():
    """The format of `docker compose logs --no-color --timestamps` (compose v2)."""
    messages = _triage.parse_compose_logs(DB_LOG)
    assert messages[2] == "2026-03-01 04:00:03.000 UTC [90] LOG:  checkpoint complete: wrote 3 buffers (0.0%)"


def test_error_lines_are_grouped_by_signature_and_classified():
    grouped = _triage.group_errors({("app", "app"): _triage.parse_compose_logs(APP_LOG),
                                    ("web", "nginx"): _triage.parse_compose_logs(WEB_LOG),
                                    ("db", "postgres"): _triage.parse_compose_logs(DB_LOG)})
    assert grouped["services"] == {"app": dict(role="app", lines=7, errors=6), "nginx": dict(role="web", lines=5, errors=2),
                                   "postgres": dict(role="db", lines=3, errors=2)}
    assert grouped["classes"] == {"storage": 1, "connections": 2, "upstream": 2, "corruption": 1}
    top = grouped["signatures"]
    assert top[0] == dict(service="app", count=2, signature="ERROR login failed for +<n> password=<secret> token=<secret>",
                          **{"class": None})
    assert top[1]["service"] == "nginx" and top[1]["count"] == 2 and top[1]["class"] == "upstream"
    assert top[1]["signature"].startswith("[error] <n>#<n>: *<n> connect() failed (<n>: Connection refused) while connecting "
                                          "to upstream, client: <ip>, server: wa.example.com, request: <str>")
    signatures = {item["signature"] for item in top}
    assert {item["signature"] for item in top if item["service"] == "postgres"} == {
        "[<n>] ERROR: invalid page in block <n> of relation <token>", "[<n>] FATAL: sorry, too many clients already"}
    assert "OSError: [Errno <n>] No space left on device: <str>" in signatures
    assert "ERROR request <uuid> failed: Authorization: Bearer <secret>" in signatures
    assert "ERROR upstream at https://<credentials>@graph.example.com/v<n> said <str>" in signatures


def test_could_not_open_file_is_corruption_only_in_the_database_log():
    assert _triage.classify('could not open file "base/16384/16402": No such file or directory', "db") == "corruption"
    assert _triage.classify("could not open file /etc/app.toml", "app") is None
    assert _triage.classify("worker 12 Killed", "app") == "memory"
    assert _triage.classify("Error: connect ECONNREFUSED 172.18.0.2:5432", "app") == "upstream"


@pytest.mark.parametrize("line, expected", [
    ("key=" + TOKEN, "key=<token>"),
    ("sha 3f786850e387550fdab836ed7e6dc881de23001b done", "sha <token> done"),
    ("commit 3f78685 at 0x7ffd1234", "commit <hex> at <hex>"),
    ("user alice@example.com from 2001:db8::1 and 10.0.0.5:5432", "user <email> from <ip> and <ip>"),
    ("ConnectionRefusedError: max_connections_reached in whatsapp-mcp-app", "ConnectionRefusedError: max_connections_reached in whatsapp-mcp-app"),
    ("secret: 'abc def' api_key=xyz", "secret: <secret> api_key=<secret>"),
])
def test_signatures_replace_what_varies_or_may_be_secret(line, expected):
    assert _triage.signature(line) == expected


def test_no_log_line_nor_secret_reaches_the_result(tmp_path):
    """Through the module's run: the logs and requests checks over logs that carry a 32-character token and passwords
    return signatures, counts and client addresses, never the token, a password nor a whole line."""
    host = _triage.Host()
    host.logs = {"app": _triage.parse_compose_logs(APP_LOG), "nginx": _triage.parse_compose_logs(WEB_LOG),
                 "postgres": _triage.parse_compose_logs(DB_LOG)}
    result = _triage.run(params(checks=["logs", "requests"], project_dir=str(tmp_path), incident_id="INC-3"), host=host)
    text = json.dumps(result)
    for secret in (TOKEN, PASSWORD, "password=other", "Qw8ErTy2UiOp4AsDf6GhJk1LzXc3VbNm", "4915112345678", "6f1c1d2e-8b8a"):
        assert secret not in text
    for line in (APP_LOG + WEB_LOG + DB_LOG).splitlines():
        assert line.split(" ", 2)[-1] not in text
    assert result["checks"]["requests"] == dict(status="ok", detail="3 requests, 1 5xx in 15 min")
    assert [item["playbook"] for item in result["findings"]] == [
        "storage_full.yml", "db_corruption.yml", "db_degraded.yml", "service_not_starting.yml"]
    assert result["next_steps"][0] == "ansible-playbook playbooks/storage_full.yml -e incident_id=INC-3"


def test_requests_are_counted_per_client_from_the_access_log():
    lines = ['198.51.100.%d - - [01/Mar/2026:04:00:01 +0000] "GET /mcp?q=\\"x\\" HTTP/1.1" %d 15 "-" "ua"' % (i % 3, 503 if i % 4 == 0 else 200)
             for i in range(12)] + ["2026/03/01 04:00:03 [error] 29#29: *17 open() failed", "garbage"]
    assert _triage.count_requests(lines) == dict(total=12, errors_5xx=3, top_clients=[
        dict(address="198.51.100.0", count=4), dict(address="198.51.100.1", count=4), dict(address="198.51.100.2", count=4)])


# ------------------------------------------------------------------------------------------------ collectors
def test_commands_time_out_skip_a_missing_tool_and_report_a_failure():
    host = _triage.Host(command_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(_triage.CheckFailed, match="did not answer within"):
        host.run(["sleep", "5"])
    assert time.monotonic() - start < 3
    with pytest.raises(_triage.Skipped, match="not installed"):
        host.run(["no-such-tool-anywhere", "--version"])
    with pytest.raises(_triage.CheckFailed, match="exited 3"):
        host.run(["sh", "-c", "echo bad >&2; exit 3"])
    spent = _triage.Host(budget=0)
    with pytest.raises(_triage.CheckFailed, match="budget"):
        spent.run(["true"])


def test_disk_counts_each_filesystem_once_and_leaves_missing_paths_out(tmp_path):
    (tmp_path / "a").mkdir()
    found = _triage.collect_disk(None, params(disk_paths=[str(tmp_path), str(tmp_path / "a"), str(tmp_path / "missing")]), {})
    assert found["missing"] == [str(tmp_path / "missing")]
    assert len(found["filesystems"]) == 1
    item = found["filesystems"][0]
    assert item["path"] == str(tmp_path) and 0 <= item["percent"] <= 100 and item["free_bytes"] > 0
    assert os.stat(item["mount"]).st_dev == os.stat(tmp_path).st_dev
    assert item["mount"] == "/" or os.stat(os.path.dirname(item["mount"])).st_dev != os.stat(tmp_path).st_dev
    low = dict(THRESHOLDS, disk_percent=1, inode_percent=100)
    if item["percent"] >= 1:
        finding = _triage.judge_disk(dict(found, status="ok"), low)[0]
        assert finding["extra_vars"] == {"storage_full_path": item["mount"]}


def make_certificate(path, days):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wa.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days, hours=1)).sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificates_days_left_subject_and_what_is_wrong(tmp_path):
    soon, later = make_certificate(tmp_path / "soon.pem", 5), make_certificate(tmp_path / "later.pem", 100)
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    os.mkfifo(tmp_path / "fifo.pem")  # never opened for blocking
    (tmp_path / "live.pem").symlink_to(later)  # certbot's live/ names are links: followed
    paths = [str(soon), str(later), str(tmp_path / "garbage.pem"), str(tmp_path / "missing.pem"), str(tmp_path / "fifo.pem"),
             str(tmp_path / "live.pem")]
    found = _triage.collect_certificates(None, params(certificates=paths), {})["certificates"]
    assert [(item["days_left"], item["problem"] and item["problem"].split(":")[0]) for item in found] == [
        (5, None), (100, None), (None, "unparseable"), (None, "missing"), (None, "unreadable"), (100, None)]
    assert found[0]["subject"] == "CN=wa.example.com"
    findings = _triage.judge_certificates(dict(certificates=found), THRESHOLDS)
    assert [item["title"] for item in findings] == [
        "certificate %s expires in 5 days" % soon, "certificate %s is unparseable" % paths[2],
        "certificate %s is missing" % paths[3], "certificate %s is unreadable" % paths[4]]


def test_backups_age_of_the_newest_manifest_never_through_a_link(tmp_path):
    backups, outside = tmp_path / "backups", tmp_path / "outside"
    backups.mkdir()
    outside.mkdir()
    now = time.time()
    for name, hours in (("db-20260301T0200.manifest.json", 30), ("db-20260302T0200.manifest.json", 6), ("db-x.dump.age", 1)):
        (backups / name).write_text("{}")
        os.utime(backups / name, (now - hours * 3600, now - hours * 3600))
    (outside / "db-new.manifest.json").write_text("{}")
    (backups / "db-planted.manifest.json").symlink_to(outside / "db-new.manifest.json")
    (backups / "db-dir.manifest.json").mkdir()
    found = _triage.collect_backups(None, params(backup_dir=str(backups)), {}, now=now)
    assert found == dict(directory=str(backups), exists=True, newest="db-20260302T0200.manifest.json", age_hours=6.0,
                         ignored=["db-dir.manifest.json", "db-planted.manifest.json"])
    (backups / "db-20260302T0200.manifest.json").unlink()
    old = _triage.collect_backups(None, params(backup_dir=str(backups)), {}, now=now)
    assert old["age_hours"] == 30.0 and _triage.judge_backups(old, THRESHOLDS)[0]["severity"] == "warning"
    none = _triage.collect_backups(None, params(backup_dir=str(tmp_path / "nowhere")), {})
    assert none["exists"] is False and _triage.judge_backups(none, THRESHOLDS)[0]["playbook"] == "backup_failed.yml"


def test_required_files_missing_empty_or_not_a_file(tmp_path):
    (tmp_path / "ok").write_text("x")
    (tmp_path / "empty").write_text("")
    os.mkfifo(tmp_path / "fifo")
    paths = [str(tmp_path / name) for name in ("ok", "empty", "missing", "fifo")] + [str(tmp_path)]
    found = _triage.collect_required_files(None, params(required_files=paths), {})
    assert [item["state"] for item in found["files"]] == ["ok", "empty", "missing", "not a regular file", "not a regular file"]
    assert _triage.judge_required_files(found, THRESHOLDS)[0]["title"] == "4 files the service needs to start are missing or empty"


@contextlib.contextmanager
def health_server(status):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            body = json.dumps({"status": "ok" if status == 200 else "degraded"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/health" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("status", [200, 503])
def test_health_status_from_a_real_server(status, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with health_server(status) as url:
        found = _triage.collect_health(None, params(health_url=url), {})
    assert found == dict(url=url, http_status=status, error=None)
    assert bool(_triage.judge_health(found, THRESHOLDS)) is (status != 200)


def test_health_refused_is_the_connection_error():
    url = "http://127.0.0.1:%d/health" % closed_port()
    found = _triage.collect_health(None, params(health_url=url), {})
    assert found["http_status"] is None and "refused" in found["error"].lower()
    assert _triage.judge_health(found, THRESHOLDS)[0]["title"].startswith("%s is not 200 (no answer" % url)


def test_ports_are_only_looked_at_when_the_service_is_down():
    up = dict(health=dict(status="ok", url="u", http_status=200, error=None))
    with pytest.raises(_triage.Skipped, match="answered 200"):
        _triage.collect_ports(_triage.Host(), params(), up)


def test_containers_logs_and_requests_are_skipped_without_a_compose_project(tmp_path):
    result = _triage.run(params(checks=["containers", "logs", "requests"], project_dir=str(tmp_path)))
    assert {name: check["status"] for name, check in result["checks"].items()} == dict(containers="skipped", logs="skipped",
                                                                                       requests="skipped")
    assert "holds no compose file" in result["checks"]["containers"]["detail"]
    assert _triage.run(params(checks=["containers"]))["checks"]["containers"]["detail"] == "project_dir is empty: no container is checked"


# ---------------------------------------------------------------------------------------------- database
@pytest.fixture(name="triage_db")
def triage_db_fixture(pg_server, request):
    name = "triage_%d" % (abs(hash(request.node.name)) % 10 ** 8)
    pg_server.create_database(name)
    with contextlib.closing(pg_server.connect(name)) as connection, connection.cursor() as cur:
        connection.autocommit = True
        cur.execute("CREATE TABLE messages (id int)")
    return name


def db_params(pg_server, db, **overrides):
    return params(db=db, login_unix_socket=pg_server.host, login_host=None, login_port=pg_server.port, login_user="postgres",
                  pg_bin_dir=str(PG_BINDIR), checks=["database"], **overrides)


def test_the_database_reachable_with_a_lock_chain_and_an_idle_transaction(pg_server, triage_db):
    holder = psycopg2.connect(host=pg_server.host, port=pg_server.port, user="postgres", dbname=triage_db)
    waiter = psycopg2.connect(host=pg_server.host, port=pg_server.port, user="postgres", dbname=triage_db)
    waiter.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            cur.execute("SELECT 'password=%s'" % PASSWORD)  # the statement it is idle after may hold a secret
        thread = threading.Thread(target=lambda: waiter.cursor().execute("SELECT count(*) FROM messages"), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while True:
            result = _triage.run(db_params(pg_server, triage_db, idle_in_transaction_seconds=1))
            titles = [item["title"] for item in result["findings"]]
            if len(titles) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert titles == ["1 session waits for a lock", "1 session idle in a transaction for more than 1 s"], result
        chain, idle = result["findings"]
        assert chain["extra_vars"] == {"db_degraded_blocking": True} and idle["extra_vars"] == {"db_degraded_idle_for": 1}
        assert "(statement hidden: it may hold a secret)" in idle["evidence"][0]
        assert PASSWORD not in json.dumps(result)
        assert result["checks"]["database"]["status"] == "problem"
    finally:
        holder.rollback()
        holder.close()
        thread.join(10)
        waiter.close()
    calm = _triage.run(db_params(pg_server, triage_db))
    assert calm["findings"] == [] and calm["checks"]["database"]["detail"].endswith("connections") and calm["healthy"]


def test_a_database_that_cannot_be_reached_is_a_critical_finding(pg_server):
    result = _triage.run(params(checks=["database"], login_host="127.0.0.1", login_port=closed_port(), pg_bin_dir=str(PG_BINDIR)))
    assert [(item["severity"], item["playbook"]) for item in result["findings"]] == [("critical", "service_not_starting.yml")]
    assert "cannot reach PostgreSQL" in result["findings"][0]["evidence"][0]
    assert result["checks"]["database"]["status"] == "problem" and result["healthy"] is False


def test_a_database_client_that_hangs_is_killed_and_reported_unreachable(tmp_path, monkeypatch):
    """A client that never answers (as `docker compose exec` does on a stuck engine) is killed after the runtime's
    timeout. A program that sleeps stands in for the stuck client: a hung Docker engine cannot be made here."""
    hung = tmp_path / "bin"
    hung.mkdir()
    (hung / "psql").write_text("#!/bin/sh\nexec sleep 600\n")
    (hung / "psql").chmod(0o755)
    monkeypatch.setattr(_triage, "COMMAND_TIMEOUT", 0.5)
    result = _triage.run(params(checks=["database"], login_host="127.0.0.1", pg_bin_dir=str(hung)))
    assert [(item["severity"], item["playbook"]) for item in result["findings"]] == [("critical", "service_not_starting.yml")]
    assert "no answer within 1.0 s" in result["findings"][0]["evidence"][0]


# ------------------------------------------------------------------------------------------------- module
def test_the_module_returns_findings_checks_and_next_steps(run_module, tmp_path):
    backups = tmp_path / "backups"
    backups.mkdir()
    cert = make_certificate(tmp_path / "fullchain.pem", 3)
    result = run_module("triage_info", dict(
        checks=["required_files", "disk", "certificates", "backups"], required_files=[str(cert), str(tmp_path / "privkey.pem")],
        disk_paths=[str(tmp_path)], certificates=[str(cert)], backup_dir=str(backups), incident_id="INC-2026-0042"))
    assert not result.get("failed"), result
    assert [(item["check"], item["severity"], item["rank"]) for item in result["findings"]] == [
        ("required_files", "critical", 1), ("certificates", "high", 2), ("backups", "high", 3)]
    assert result["next_steps"] == ["ansible-playbook playbooks/service_not_starting.yml -e incident_id=INC-2026-0042",
                                    "ansible-playbook playbooks/renew_certificate.yml -e incident_id=INC-2026-0042",
                                    "ansible-playbook playbooks/backup_failed.yml -e incident_id=INC-2026-0042"]
    assert set(result["checks"]) == {"required_files", "disk", "certificates", "backups"}
    assert result["healthy"] is False and result["changed"] is False and result["incident_id"] == "INC-2026-0042"


@pytest.mark.parametrize("option, value, words", [
    ("flood_share", 0.0, "flood_share"), ("flood_share", float("nan"), "flood_share"), ("disk_percent", 101, "disk_percent"),
    ("required_files", ["relative/path"], "not an absolute path"), ("units", ["-H evil"], "not a systemd unit name"),
    ("backup_pattern", "../db-*", "no /"), ("incident_id", "INC 1; rm", "incident_id"), ("db", "wa; drop", "database name"),
    ("health_url", "file:///etc/passwd", "health_url"), ("web_service", "--all", "web_service"),
])
def test_a_refused_option_reads_nothing(run_module, option, value, words):
    result = run_module("triage_info", {option: value, "checks": ["disk"]})
    assert result["failed"] and words in result["msg"] and result["msg"].endswith("nothing was read or changed")


# ------------------------------------------------------------------------------------------------- release
GOOD = "sha256:" + "1" * 64  # the image of the verified release
BAD = "sha256:" + "2" * 64  # an image deployed since
OTHER = "sha256:" + "3" * 64


def write_release(directory, release_id, app_id, verified, label=None):
    """A release record written by compose_release's own Store (atomic, 0600, in a 0700 directory)."""
    refs = {"app": "whatsapp-mcp-app:latest"}
    record = dict(format=_compose_release.FORMAT, id=release_id, recorded_at="%s-%s-%sT%s:%s:%s.000000Z" % (
        release_id[0:4], release_id[4:6], release_id[6:8], release_id[9:11], release_id[11:13], release_id[13:15]),
        label=label, services={"app": dict(image=refs["app"], id=app_id)}, git=None, migrations=None, verified=verified,
        tags=_compose_release.release_tags(release_id, refs, {"app": app_id}), deployed_at=[])
    store = _compose_release.Store(str(directory))
    try:
        store.write(record)
    finally:
        store.close()


class FakeHost(_triage.Host):
    """docker and compose as they answer for the app's container (`compose ps -q`, `docker inspect --format
    {{.Image}}`); every command asked is kept."""

    def __init__(self, image=None):
        super().__init__()
        self.image = image
        self.asked = []

    def run(self, argv, timeout=None):
        self.asked.append(argv)
        if argv[:2] == ["docker", "compose"] and "ps" in argv:
            return ("c0ffee12\n" if self.image else ""), ""
        if argv[:2] == ["docker", "inspect"]:
            return "%s\n" % self.image, ""
        raise AssertionError("not a command the release check runs: %s" % argv)


def app_containers(state="running", health="healthy", restarts=0, image=GOOD):
    return ok(expected=["app", "nginx", "postgres"], containers=[
        dict(name="wa-app-1", service="app", state=state, health=health, exit_code=1 if state != "running" else 0, restarts=restarts,
             oom_killed=False, restarting=state == "restarting", image=image),
        dict(name="wa-nginx-1", service="nginx", state="running", health="", exit_code=0, restarts=0, oom_killed=False, image=OTHER),
        dict(name="wa-postgres-1", service="postgres", state="running", health="healthy", exit_code=0, restarts=0, oom_killed=False,
             image=OTHER)])


def triage_release(releases, containers=None, status=200, host=None, project_dir=""):
    """triage over the containers and health observations given and the real release check on `releases`."""
    checks = ["health", "release"] + (["containers"] if containers is not None else [])
    collectors = dict(_triage.COLLECTORS, health=lambda *_: dict(url="http://127.0.0.1/health", http_status=status, error=None),
                      containers=lambda *_: containers)
    return _triage.run(params(checks=checks, releases_dir=str(releases), project_dir=project_dir, incident_id="INC-9"),
                       host=host or FakeHost(), collectors=collectors)


@pytest.fixture(name="releases")
def releases_fixture(tmp_path):
    directory = tmp_path / "releases"
    write_release(directory, "20260301T020000Z", GOOD, True, label="v1.4.0")
    write_release(directory, "20260302T020000Z", OTHER, False, label="v1.5.0-rc1")
    return directory


def test_no_release_directory_or_no_record_skips_the_check(tmp_path):
    host = FakeHost(GOOD)
    result = triage_release(tmp_path / "absent", app_containers(), host=host)
    assert result["checks"]["release"] == dict(status="skipped", detail="no release recorded in %s: deploys record one with "
                                               "compose_release" % (tmp_path / "absent"))
    (tmp_path / "empty").mkdir(mode=0o700)
    assert triage_release(tmp_path / "empty", app_containers(), host=host)["checks"]["release"]["status"] == "skipped"
    assert host.asked == []


def test_a_symlinked_release_directory_or_record_is_not_followed(tmp_path, releases):
    host = FakeHost(BAD)
    link = tmp_path / "link"
    link.symlink_to(releases)
    result = triage_release(link, app_containers("restarting", "", 5, BAD), host=host)
    assert result["checks"]["release"]["status"] == "error" and "is a symlink" in result["checks"]["release"]["detail"]
    assert host.asked == [] and "rollback.yml" not in json.dumps(result["next_steps"])
    (releases / "20260303T020000Z.json").symlink_to(releases / "20260301T020000Z.json")
    result = triage_release(releases, app_containers("restarting", "", 5, BAD), host=host)
    assert result["checks"]["release"] == dict(status="error", detail="release records in %s that cannot be read: "
                                               "20260303T020000Z.json: a symlink" % releases)


def test_a_healthy_app_on_a_verified_release_is_no_finding(releases):
    result = triage_release(releases, app_containers())
    assert result["findings"] == [] and result["healthy"]
    assert result["checks"]["release"] == dict(status="ok", detail="the app runs verified release 20260301T020000Z")


def test_a_crash_looping_app_on_an_unrecorded_image_names_rollback_first(releases):
    result = triage_release(releases, app_containers("restarting", "", 7, BAD), status=502)
    assert [(item["check"], item["severity"], item["rank"]) for item in result["findings"]] == [
        ("release", "critical", 1), ("containers", "critical", 2), ("health", "critical", 3)]
    first = result["findings"][0]
    assert first["title"] == "the app runs images no verified release has (a bad deploy?)"
    assert first["playbook"] == "rollback.yml" and first["extra_vars"] == {}
    assert first["evidence"] == ["the app (app) runs image 222222222222: in no release recorded",
                                 "newest verified release: 20260301T020000Z (v1.4.0, recorded 2026-03-01T02:00:00.000000Z)",
                                 "container wa-app-1 is restarting, 7 restarts", "http://127.0.0.1/health: HTTP 502"]
    assert result["next_steps"] == ["ansible-playbook playbooks/rollback.yml -e incident_id=INC-9",
                                    "ansible-playbook playbooks/service_not_starting.yml -e incident_id=INC-9"]
    assert result["msg"].endswith("first: the app runs images no verified release has (a bad deploy?)")


def test_without_the_containers_check_the_image_is_asked_from_docker_and_health_alone_is_trouble(tmp_path, releases):
    project = tmp_path / "project"
    project.mkdir()
    (project / "compose.yaml").write_text("services: {}\n")
    host = FakeHost(BAD)
    result = triage_release(releases, status=503, host=host, project_dir=str(project))
    assert [(item["check"], item["playbook"]) for item in result["findings"]] == [("release", "rollback.yml"),
                                                                                  ("health", "service_not_starting.yml")]
    assert host.asked == [["docker", "compose", "--project-directory", str(project), "ps", "-a", "-q", "app"],
                          ["docker", "inspect", "--format", "{{.Image}}", "--", "c0ffee12"]]


def test_an_unverified_release_on_a_healthy_app_is_a_warning_without_playbook(releases):
    result = triage_release(releases, app_containers(image=OTHER))
    assert [(item["severity"], item["title"], item["playbook"]) for item in result["findings"]] == [
        ("warning", "the app runs a release not verified yet", None)]
    assert result["findings"][0]["evidence"][0] == "the app (app) runs image 333333333333: in release 20260302T020000Z, not verified"
    assert result["healthy"] and result["next_steps"] == []
    crashing = triage_release(releases, app_containers("exited", "", 0, OTHER))
    assert crashing["findings"][0]["playbook"] == "rollback.yml"


def test_no_verified_release_is_nothing_to_roll_back_to(tmp_path):
    write_release(tmp_path / "r", "20260302T020000Z", OTHER, False)
    result = triage_release(tmp_path / "r", app_containers("restarting", "", 3, BAD))
    assert [item["check"] for item in result["findings"]] == ["containers"]
    assert result["checks"]["release"] == dict(status="ok", detail="the app runs images in no release; no verified release among 1 recorded")


def test_an_unparsable_record_fails_the_check_and_triage_still_runs(releases):
    (releases / "20260304T020000Z.json").write_text("{not json")
    (releases / "20260304T020000Z.json").chmod(0o600)
    result = triage_release(releases, app_containers("restarting", "", 7, BAD), status=502)
    assert result["checks"]["release"] == dict(status="error", detail="release records in %s that cannot be read: "
                                               "20260304T020000Z.json: does not parse as JSON" % releases)
    assert [item["check"] for item in result["findings"]] == ["containers", "health"]
    assert "not run: release (error)" in result["msg"]
