# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.certbot_diagnose and acme_probe on real failures: certbot 2.1 asks Let's Encrypt's test CA
(pebble, with its DNS server pebble-challtestsrv) for certificates, served by a real nginx on loopback, and each
fault is made to happen (a wrong webroot, nginx down, a firewall DROP, DNS to another address, a failing DNS
server, another server answering). The classifier reads the log certbot wrote.

Pebble enforces neither rate limits nor CAA. Those two logs (data/certbot/) are certbot logs from Let's Encrypt's
production CA as published in public bug reports (certbot#4827, acme.sh#4417 and the rate-limit reports they cite),
reduced to the lines that matter, with the names replaced."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from acmelab import ELSEWHERE, FIREWALLED, free_port, lab_fixture  # noqa: F401  pylint: disable=import-error,unused-import
from ansible_collections.runbooks.incident.plugins.module_utils import _certbot
from conftest import require  # pylint: disable=import-error

DATA = Path(__file__).parent / "data" / "certbot"


@pytest.fixture(name="firewall")
def firewall_fixture(lab):
    """Returns a function that blocks TCP to FIREWALLED's port 80 stand-in with an iptables target, as a host
    firewall does: DROP (a cloud firewall or a DROP policy) or REJECT with an ICMP error."""
    require(os.geteuid() == 0 and shutil.which("iptables"), "root and iptables, to drop packets", "run as root, as make test does")
    rules = []

    def block(*target):
        rule = ["OUTPUT", "-d", FIREWALLED, "-p", "tcp", "--dport", str(lab.ports["http"]), "-j", *target]
        subprocess.run(["iptables", "-I", *rule], check=True)
        rules.append(rule)
    try:
        yield block
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=True)


def diagnose(run_module, log, host_addresses=("127.0.0.1", FIREWALLED)):
    return run_module("certbot_diagnose", {"log_path": str(log), "host_addresses": list(host_addresses)})


def probe(run_module, lab, name, expected=("127.0.0.1", FIREWALLED), timeout=2):
    """acme_probe as the CA would see `name`: the lab's DNS, the lab's port 80, a probe file in the served webroot."""
    probe_dir = lab.webroot / ".well-known" / "acme-challenge"
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / "runbooks-probe-test").write_text("probe-content-1\n")
    return run_module("acme_probe", {"names": [name], "expected_addresses": list(expected), "resolver": "127.0.0.1",
                                     "resolver_port": lab.ports["dns"], "port": lab.ports["http"], "timeout": timeout,
                                     "probe_name": "runbooks-probe-test", "probe_content": "probe-content-1\n"})


def test_a_successful_issuance_is_no_failure(run_module, lab):
    rc, log = lab.certbot("ok.example.com", "ok")
    result = diagnose(run_module, log)
    assert rc == 0 and result["cause"] == "none" and result["failures"] == []
    assert result["evidence"] == ["Successfully received certificate"]
    live = probe(run_module, lab, "ok.example.com")
    assert live["ok"] is True, live


def test_a_webroot_nginx_does_not_serve_is_challenge_not_found(run_module, lab, tmp_path):
    rc, log = lab.certbot("webroot.example.com", "webroot", webroot=tmp_path)
    result = diagnose(run_module, log)
    assert rc == 1 and result["cause"] == "challenge_not_found"
    assert result["failures"][0]["domain"] == "webroot.example.com" and "returned 404" in result["failures"][0]["detail"]
    assert any(line.startswith("Detail:") and "404" in line for line in result["evidence"])
    assert "/.well-known/acme-challenge/" in result["hint"]


def test_nginx_down_is_connection_refused_in_the_log_and_live(run_module, lab):
    lab.stop_nginx()
    try:
        rc, log = lab.certbot("down.example.com", "down")
        live = probe(run_module, lab, "down.example.com")
    finally:
        lab.start_nginx()
    result = diagnose(run_module, log)
    assert rc == 1 and result["cause"] == "connection_refused" and result["failures"][0]["address"] == "127.0.0.1"
    assert live["cause"] == "connection_refused" and live["ok"] is False


def test_a_dropped_port_80_is_port_unreachable_in_the_log_and_live(run_module, lab, firewall):
    firewall("DROP")
    lab.point("firewalled.example.com", FIREWALLED)
    rc, log = lab.certbot("firewalled.example.com", "firewalled")
    result = diagnose(run_module, log)
    # Pebble names the address when the connect times out, not when the wait for headers does.
    assert rc == 1 and result["cause"] == "port_unreachable" and result["failures"][0]["address"] in (FIREWALLED, None)
    assert "firewalled.example.com" in result["failures"][0]["detail"]
    live = probe(run_module, lab, "firewalled.example.com", timeout=1)
    assert live["cause"] == "port_unreachable" and live["checks"][0]["answers"][0]["status"] is None


def test_a_rejecting_firewall_is_port_unreachable_live(run_module, lab, firewall):
    firewall("REJECT", "--reject-with", "icmp-host-unreachable")
    lab.point("rejected.example.com", FIREWALLED)
    live = probe(run_module, lab, "rejected.example.com")
    assert live["cause"] == "port_unreachable" and live["checks"][0]["answers"][0]["status"] is None


def test_a_name_pointing_to_another_address_is_dns_points_elsewhere(run_module, lab):
    lab.point("moved.example.com", ELSEWHERE)
    rc, log = lab.certbot("moved.example.com", "moved")
    result = diagnose(run_module, log)
    assert rc == 1 and result["cause"] == "dns_points_elsewhere" and result["failures"][0]["address"] == ELSEWHERE
    # Without knowing this host's addresses the same log only says what failed on the wire.
    assert diagnose(run_module, log, host_addresses=())["cause"] == "connection_refused"
    live = probe(run_module, lab, "moved.example.com")
    assert live["cause"] == "dns_points_elsewhere" and live["checks"][0]["unexpected_addresses"] == [ELSEWHERE]


def test_a_failing_dns_server_is_dns_unresolved(run_module, lab):
    lab.dns("/set-servfail", host="broken-dns.example.com.")
    rc, log = lab.certbot("broken-dns.example.com", "servfail")
    result = diagnose(run_module, log)
    assert rc == 1 and result["cause"] == "dns_unresolved"
    live = probe(run_module, lab, "broken-dns.example.com")
    assert live["cause"] == "dns_unresolved" and "SERVFAIL" in live["checks"][0]["error"]


def test_another_server_answering_is_unauthorized(run_module, lab):
    rc, log = lab.certbot("other-server.example.com", "other")
    result = diagnose(run_module, log)
    assert rc == 1 and result["cause"] == "unauthorized"
    assert probe(run_module, lab, "other-server.example.com")["cause"] == "unauthorized"


def test_an_acme_server_nobody_answers_is_acme_unreachable(run_module, lab):
    rc, log = lab.certbot("offline.example.com", "offline", server=f"https://127.0.0.1:{free_port()}/dir")
    result = diagnose(run_module, log)
    assert rc == 1 and result["cause"] == "acme_unreachable"
    assert "Failed to establish a new connection" in result["evidence"][0]


def test_the_last_run_decides(run_module, lab, tmp_path):
    """A log holding a failed run and then a successful one (certbot appends when it does not rotate)."""
    failed = (lab.base / "webroot-case" / "logs" / "letsencrypt.log")
    if not failed.exists():
        lab.certbot("webroot.example.com", "webroot-case", webroot=tmp_path)
    ok_log = lab.certbot("ok2.example.com", "ok2")[1]
    combined = tmp_path / "letsencrypt.log"
    combined.write_text(failed.read_text() + ok_log.read_text())
    assert diagnose(run_module, combined)["cause"] == "none"
    combined.write_text(ok_log.read_text() + failed.read_text())
    assert diagnose(run_module, combined)["cause"] == "challenge_not_found"


@pytest.mark.parametrize("log, cause, evidence", [
    ("rate-limited.log", "rate_limited", "too many certificates (5) already issued"),
    ("caa.log", "caa_forbids", "prevents issuance"),
])
def test_lets_encrypt_errors_pebble_cannot_produce(run_module, tmp_path, log, cause, evidence):
    path = tmp_path / "letsencrypt.log"
    shutil.copy(DATA / log, path)
    result = diagnose(run_module, path)
    assert result["cause"] == cause and evidence in " ".join(result["evidence"])


def test_rotated_logs_are_read_when_the_current_one_is_empty(run_module, tmp_path):
    (tmp_path / "letsencrypt.log").write_text("")
    shutil.copy(DATA / "caa.log", tmp_path / "letsencrypt.log.1")
    result = diagnose(run_module, tmp_path / "letsencrypt.log")
    assert result["cause"] == "caa_forbids" and result["log"].endswith("letsencrypt.log.1")


def test_no_log_at_all_says_certbot_never_ran(run_module, tmp_path):
    result = diagnose(run_module, tmp_path / "letsencrypt.log")
    assert result["cause"] == "none" and result["log"] is None and "has not run" in result["hint"]


def test_bad_input_fails_clearly(run_module, tmp_path):
    assert "host_addresses" in run_module("certbot_diagnose", {"log_path": str(tmp_path / "x"), "host_addresses": ["nope"]})["msg"]
    bad = run_module("acme_probe", {"names": ["a.example.com"], "probe_name": "../etc/passwd", "probe_content": "x"})
    assert bad["failed"] and "plain file name" in bad["msg"]


@pytest.mark.parametrize("bad, words", [
    ({"names": ["x" * 64 + ".example.com"]}, "not a DNS name"),
    ({"names": ["a..example.com"]}, "not a DNS name"),
    ({"names": ["-rf.example.com"]}, "not a DNS name"),
    ({"names": ["a.example.com; touch /tmp/x"]}, "not a DNS name"),
    ({"names": ["a.example.com"], "port": 0}, "port must be"),
    ({"names": ["a.example.com"], "resolver_port": 2 ** 70}, "resolver_port must be"),
    ({"names": ["a.example.com"], "timeout": -1}, "timeout must be"),
])
def test_acme_probe_refuses_what_it_cannot_probe(run_module, bad, words):
    result = run_module("acme_probe", dict({"probe_name": "p", "probe_content": "x", "resolver": "127.0.0.1"}, **bad))
    assert result.get("failed") and words in result["msg"], result


def test_a_fifo_at_the_log_path_is_refused_not_waited_on(run_module, tmp_path):
    os.mkfifo(tmp_path / "letsencrypt.log")
    result = run_module("certbot_diagnose", {"log_path": str(tmp_path / "letsencrypt.log")})
    assert result.get("failed") and "not a regular file" in result["msg"], result


def test_every_cause_has_a_hint():
    causes = {rule[0] for rule in _certbot.RULES} | {"none", "unknown", "dns_points_elsewhere"}
    assert causes == set(_certbot.HINTS)
