# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After converge (a first certificate from pebble replaced the bootstrap one): each fault is injected on the real
hosts, certbot's own renewal is run the way its timer would, and the playbooks are judged on what they say and on the
certificate nginx then serves, fetched over TLS from the controller."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import socket
import ssl
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import eventually, fed, playbook as run_playbook, restored  # pylint: disable=import-error

testinfra_hosts = ["app"]

APP, DNS_API, NAME = "172.29.7.10", "http://172.29.7.20:8055", "wa.sandbox.test"  # whatsapp_mcp_domain of the sandbox
CA_API = "https://172.29.7.20:15000"  # pebble's management interface (managementListenAddress in prepare.yml)
# The role's key-compromise records (runbooks.incident.cert_rekey): <incident id>/<step>.json, written by incident_steps.
RECORDS = f"/var/lib/runbooks-incident/certificates/{NAME}"
RENEW, CHECK = "renew_certificate.yml", "check_certificates.yml"
CERTBOT_TIMER_RUN = ("REQUESTS_CA_BUNDLE=/etc/ssl/pebble-ca.pem certbot renew --force-renewal --no-random-sleep-on-renew "
                     "--non-interactive")


def forget_validations(host):
    """The CA forgets the names it validated, so the next renewal must pass a challenge (forget_validations.py)."""
    script = Path(__file__).with_name("forget_validations.py").read_text(encoding="utf-8")
    host.check_output(f"REQUESTS_CA_BUNDLE=/etc/ssl/pebble-ca.pem /usr/bin/python3 - /etc/letsencrypt/renewal/{NAME}.conf"
                      f" <<'PY'\n{script}\nPY")


def served():
    """The certificate nginx serves for NAME, as a TLS client sees it."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((APP, 443), timeout=10) as raw, context.wrap_socket(raw, server_hostname=NAME) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def playbook(name, *extra, check=False, vars_files=(), secrets=()):
    """run_playbook with the scenario's lab vars (the names and addresses of the sandbox's ACME and DNS)."""
    return run_playbook(name, *extra, check=check, vars_files=["molecule/certificates/vars/lab.yml", *vars_files], secrets=secrets)


def spki(cert):
    """The certificate's public key (DER SubjectPublicKeyInfo)."""
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(cert):
    """The public key's SHA-256 as the role records it (aa:bb:...)."""
    digest = hashlib.sha256(spki(cert)).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def ca_status(serial):
    """What the CA says of a certificate: pebble's {"Status": "Valid" | "Revoked", "Reason": <CRLReason>, ...}."""
    context = ssl.create_default_context(cafile=os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "lab-ca.pem"))
    with urllib.request.urlopen(f"{CA_API}/cert-status-by-serial/{serial:x}", context=context, timeout=10) as response:
        return json.load(response)


def dns(path, **body):
    """Change what the public DNS (pebble-challtestsrv) answers."""
    request = urllib.request.Request(DNS_API + path, data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10):
        pass


def record(host, incident, step):
    """The record of a step of the re-key of an incident (replaced, new_key, revoked), None when there is none."""
    found = host.file(f"{RECORDS}/{incident}/{step}.json")
    return json.loads(found.content_string) if found.exists else None


def plant(host, incident, step, entry):
    """Write the record of a step as the module would have (a run that died after it)."""
    entry = dict(entry, incident_id=incident)
    host.check_output(f"install -d -m 0700 {RECORDS}/{incident} && printf %s '{json.dumps(entry)}' > {RECORDS}/{incident}/{step}.json")


def pages(host):
    return [json.loads(line) for line in host.file("/var/tmp/pages.jsonl").content_string.splitlines()] \
        if host.file("/var/tmp/pages.jsonl").exists else []


NGINX = "docker compose --project-directory /opt/whatsapp-mcp exec -T nginx nginx"


def nginx(host, *args):
    host.check_output(NGINX + " " + " ".join(args))


def reload_until_served(host, serial_differs_from):
    """nginx -s reload returns before the new workers serve; wait until they do."""
    nginx(host, "-s", "reload")
    for dummy in range(50):
        if served().serial_number != serial_differs_from:
            return
        time.sleep(0.2)
    raise AssertionError("nginx still serves the previous certificate after the reload")


def test_converge_replaced_the_bootstrap_certificate_with_the_lineage(host):
    cert = served()
    assert "Pebble" in cert.issuer.rfc4514_string()
    assert NAME in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    for name in ("fullchain.pem", "privkey.pem"):
        assert host.file(f"/etc/whatsapp-mcp/tls/{name}").is_symlink
        assert host.check_output(f"readlink /etc/whatsapp-mcp/tls/{name}") == f"/etc/letsencrypt/live/{NAME}/{name}"
    kept = host.check_output("ls /etc/whatsapp-mcp/tls").split()
    assert any(k.startswith("fullchain.pem.pre-certbot-") for k in kept)  # the bootstrap pair is kept
    # certbot keeps the deploy hook (as renew_hook) for its own timer's renewals.
    renewal = host.file(f"/etc/letsencrypt/renewal/{NAME}.conf").content_string
    assert re.search(r"^(renew|deploy)_hook = docker compose .* exec -T nginx nginx -s reload$", renewal, re.M), renewal


def test_check_reports_a_good_certificate_and_pages_nobody(host):
    before = len(pages(host))
    rc, out = playbook(CHECK, "incident_id=MOLECULE-CHECK-DRY", check=True)  # the hosts' state is compared around it
    assert rc == 0, out
    rc, out = playbook(CHECK, "incident_id=MOLECULE-CHECK-OK")
    assert rc == 0, out
    assert f"{NAME} |" in out and len(pages(host)) == before


def test_an_expired_certificate_served_is_paged_and_replaced(host):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NAME)])
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=100)
    expired = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(past)
               .not_valid_after(past + datetime.timedelta(days=90))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False).sign(key, hashes.SHA256()))
    # An old pair restored over nginx's files (the links), as a careless restore from backup does.
    previous = served().serial_number
    for name, data in (("fullchain.pem", expired.public_bytes(serialization.Encoding.PEM)),
                       ("privkey.pem", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))):
        assert fed(host, f"rm /etc/whatsapp-mcp/tls/{name} && cat > /etc/whatsapp-mcp/tls/{name}", data).returncode == 0
    reload_until_served(host, previous)
    assert served().not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)

    rc, out = playbook(CHECK, "incident_id=MOLECULE-CHECK-EXPIRED")
    assert rc != 0 and "expired" in out
    alert = pages(host)[-1][0]
    assert alert["labels"]["severity"] == "critical" and NAME in alert["annotations"]["summary"]

    rc, out = playbook(RENEW, "incident_id=MOLECULE-EXPIRED")
    assert rc == 0, out
    assert "Renewing" in out and "expired" in out
    fresh = served()
    assert fresh.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    assert "Pebble" in fresh.issuer.rfc4514_string()
    assert any(k.startswith("privkey.pem.pre-certbot-") for k in host.check_output("ls /etc/whatsapp-mcp/tls").split())


def pair_from_a_local_ca(days_left):
    """A certificate for NAME valid for `days_left` more days (and half a day), from a CA of the test's own:
    (the CA's certificate, the chain nginx serves, the key), PEM."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "runbooks.incident test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=60)).not_valid_after(now + datetime.timedelta(days=days_left, hours=12))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), leaf.public_bytes(pem) + ca.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.mark.parametrize("days, paged, pager", [(20, False, "alertmanager"), (5, True, "alertmanager"), (5, True, "pagerduty")])
def test_a_certificate_is_warned_about_at_30_days_left_and_paged_at_7(host, tmp_path, days, paged, pager):
    ca, chain, key = pair_from_a_local_ca(days)
    ca_file = tmp_path / "local-ca.pem"
    ca_file.write_bytes(ca)
    # PagerDuty's routing key is a secret: handed over in a vars file (as AWX's credential injector does), looked for
    # in the run's output and in the argv of every program it started; it belongs only in the page itself.
    routing_key = "R" + uuid.uuid4().hex + uuid.uuid4().hex[:7]
    pagerduty = tmp_path / "pagerduty.yml"
    pagerduty.write_text(json.dumps({"certificates_pager_format": "pagerduty", "certificates_pager_routing_key": routing_key}))
    pagerduty.chmod(0o600)
    original, paged_before, tls = served().serial_number, len(pages(host)), "/etc/whatsapp-mcp/tls"
    with restored(host, f"{tls}/fullchain.pem", f"{tls}/privkey.pem", then=NGINX + " -s reload"):
        for name, data in (("fullchain.pem", chain), ("privkey.pem", key)):
            assert fed(host, f"rm {tls}/{name} && cat > {tls}/{name}", data).returncode == 0
        reload_until_served(host, original)
        # The chain verifies against the test's CA, so only the days left decide.
        rc, out = playbook(CHECK, f"incident_id=MOLECULE-CHECK-{days}-DAYS-{pager}", f"certificates_ca_cert={ca_file}",
                           vars_files=[str(pagerduty)] if pager == "pagerduty" else [], secrets=[routing_key])
    assert eventually(lambda: served().serial_number == original, timeout=10)  # the next case starts from pebble's
    if paged:
        assert rc != 0 and "Certificates that need someone now" in out
        assert len(pages(host)) == paged_before + 1
        if pager == "pagerduty":
            event = pages(host)[-1]
            assert event["routing_key"] == routing_key and event["event_action"] == "trigger"
            assert f"{NAME} on app: {days} days left" in event["payload"]["summary"] and event["payload"]["severity"] == "critical"
        else:
            alert = pages(host)[-1][0]
            assert alert["labels"]["severity"] == "critical" and f"{NAME} on app: {days} days left" in alert["annotations"]["summary"]
    else:
        assert rc == 0, out
        assert f"WARNING {NAME} expires in {days} days" in out and len(pages(host)) == paged_before


def test_port_80_dropped_by_the_firewall_is_diagnosed_then_opened_when_confirmed(host):
    drop = "DOCKER-USER -p tcp --dport 80 -j DROP"
    host.check_output(f"iptables -I {drop}")
    try:
        forget_validations(host)
        assert host.run(CERTBOT_TIMER_RUN).rc != 0  # the nightly renewal fails, as it would in production
        before = served().serial_number
        rc, out = playbook(RENEW, "incident_id=MOLECULE-FIREWALL", "force=true")
        assert rc != 0
        assert "Last certbot run" in out and "): port_unreachable" in out and "Live check from localhost: port_unreachable" in out
        assert "fix_firewall=true" in out and served().serial_number == before  # nothing changed

        rc, out = playbook(RENEW, "incident_id=MOLECULE-FIREWALL-FIX", "force=true", "fix_firewall=true")
        assert rc == 0, out
        assert served().serial_number != before
        assert "runbooks.incident ACME http-01" in host.check_output("iptables -S DOCKER-USER")
    finally:
        host.run(f"iptables -D {drop}")


def test_a_misconfigured_webroot_is_diagnosed_then_corrected_when_confirmed(host):
    conf = "/opt/whatsapp-mcp/nginx/conf.d/whatsapp-mcp.conf"
    # Whatever this case leaves, the next one starts from the configuration as it was.
    with restored(host, conf, then=NGINX + " -s reload"):
        host.check_output(f"sed -i 's|root /var/www/certbot;|root /var/www/html;|' {conf}")
        nginx(host, "-s", "reload")
        forget_validations(host)
        assert host.run(CERTBOT_TIMER_RUN).rc != 0
        before = served().serial_number
        rc, out = playbook(RENEW, "incident_id=MOLECULE-WEBROOT", "force=true")
        assert rc != 0
        assert "): challenge_not_found" in out and "Live check from localhost: challenge_not_found" in out
        assert "fix_webroot=true" in out and served().serial_number == before

        rc, out = playbook(RENEW, "incident_id=MOLECULE-WEBROOT-FIX", "force=true", "fix_webroot=true")
        assert rc == 0, out
        assert "root /var/www/certbot;" in host.file(conf).content_string
        assert host.run(f"ls {conf}.*").rc == 0  # the configuration it corrected is kept
        assert served().serial_number != before


def test_dns_pointing_elsewhere_is_diagnosed_and_nothing_changes(host):
    dns("/add-a", host=NAME + ".", addresses=["172.29.7.20"])  # the acme host: nothing listens on its port 80
    try:
        forget_validations(host)
        assert host.run(CERTBOT_TIMER_RUN).rc != 0
        before = served().serial_number
        rc, out = playbook(RENEW, "incident_id=MOLECULE-DNS", "force=true", "fix_webroot=true", "fix_firewall=true")
        assert rc != 0
        assert "): dns_points_elsewhere" in out and "Live check from localhost: dns_points_elsewhere" in out
        assert "Nothing was changed" in out and served().serial_number == before
    finally:
        dns("/clear-a", host=NAME + ".")
    rc, out = playbook(CHECK, "incident_id=MOLECULE-CHECK-AFTER")
    assert rc == 0, out


def test_the_private_key_stays_private(host):
    key = host.file(host.check_output("readlink -f /etc/whatsapp-mcp/tls/privkey.pem"))
    assert key.path.startswith("/etc/letsencrypt/archive/") and key.user == "root" and key.mode & 0o077 == 0


# Key compromise: a lineage that keeps its key on renewal (configured with --reuse-key), so only certbot --new-key
# gives a fresh one. The tests below run in this order and share the incident.
KEY_INCIDENT = "MOLECULE-KEY-COMPROMISE"
KEY_COMPROMISE = ("force=true", "new_key=true", "revoke_reason=keycompromise")
REVOKE_TASK = "Revoke the replaced certificate at the CA"  # the role's task that revokes


def test_a_key_compromise_dry_run_changes_nothing(host):
    previous = served().serial_number
    host.check_output(CERTBOT_TIMER_RUN + " --reuse-key")  # the lineage now has reuse_key = True
    reload_until_served(host, previous)
    assert re.search(r"^reuse_key = True$", host.file(f"/etc/letsencrypt/renewal/{NAME}.conf").content_string, re.M)
    before = served()
    archive = host.check_output(f"ls -l /etc/letsencrypt/archive/{NAME}")
    rc, out = playbook(RENEW, "incident_id=MOLECULE-KEY-CHECK", *KEY_COMPROMISE, check=True)
    assert rc == 0, out
    assert "Would renew with a new key" in out
    assert f"Would revoke certificate {before.serial_number:x} (/etc/letsencrypt/archive/{NAME}/cert" in out
    assert served().serial_number == before.serial_number and ca_status(before.serial_number)["Status"] == "Valid"
    assert host.check_output(f"ls -l /etc/letsencrypt/archive/{NAME}") == archive
    assert not host.file(f"{RECORDS}/MOLECULE-KEY-CHECK").exists


def test_a_revocation_is_confirmed_before_anything_changes(host):
    before = served().serial_number
    rc, out = playbook(RENEW, "incident_id=MOLECULE-KEY-UNCONFIRMED", *KEY_COMPROMISE)
    assert rc != 0 and "a revocation cannot be undone" in out and "-e confirm=true" in out
    assert served().serial_number == before and ca_status(before)["Status"] == "Valid"
    assert not host.file(f"{RECORDS}/MOLECULE-KEY-UNCONFIRMED").exists


def test_a_key_compromise_serves_a_new_key_then_revokes_the_replaced_certificate(host):
    before = served()
    previous = host.check_output(f"readlink -f /etc/letsencrypt/live/{NAME}/cert.pem")
    rc, out = playbook(RENEW, f"incident_id={KEY_INCIDENT}", *KEY_COMPROMISE, "confirm=true")
    assert rc == 0, out
    fresh = served()
    assert fresh.serial_number != before.serial_number
    assert spki(fresh) != spki(before)  # reuse_key = True would have kept it
    assert host.check_output(f"readlink -f /etc/letsencrypt/live/{NAME}/cert.pem") != previous
    status = ca_status(before.serial_number)
    assert status["Status"] == "Revoked" and status["Reason"] == 1, status  # CRLReason keyCompromise
    assert ca_status(fresh.serial_number)["Status"] == "Valid"
    assert f"Revoked certificate {before.serial_number:x} ({previous})" in out
    # Revoked only after the new certificate was verified on the wire.
    assert out.index("The new certificate is served for every name") < out.index(REVOKE_TASK)
    replaced = record(host, KEY_INCIDENT, "replaced")["certificate"]
    assert replaced["path"] == previous and replaced["serial"] == f"{before.serial_number:x}"
    revoked = record(host, KEY_INCIDENT, "revoked")
    assert revoked["reason"] == "keycompromise" and not revoked["already_revoked"] and revoked["serial"] == replaced["serial"]
    assert record(host, KEY_INCIDENT, "new_key")["public_keys"] == [fingerprint(fresh)]


def test_the_same_incident_again_neither_renews_nor_revokes(host):
    before = served().serial_number
    records = host.check_output(f"tail -n +1 {RECORDS}/{KEY_INCIDENT}/*.json")
    rc, out = playbook(RENEW, f"incident_id={KEY_INCIDENT}", *KEY_COMPROMISE, "confirm=true")
    assert rc == 0, out
    assert re.search(r"\bapp : ok=\d+ changed=0 ", out), out
    assert f"Incident {KEY_INCIDENT} already replaced certificate" in out and "Renewing:" not in out
    assert served().serial_number == before and ca_status(before)["Status"] == "Valid"
    assert host.check_output(f"tail -n +1 {RECORDS}/{KEY_INCIDENT}/*.json") == records


def test_a_revocation_the_ca_already_made_is_recorded_not_failed(host):
    # A run that revoked but died before recording it: the certificate it replaced recorded, no revocation recorded,
    # the CA has revoked.
    plant(host, "MOLECULE-KEY-DIED", "replaced", record(host, KEY_INCIDENT, "replaced"))
    before = served().serial_number
    rc, out = playbook(RENEW, "incident_id=MOLECULE-KEY-DIED", *KEY_COMPROMISE, "confirm=true")
    assert rc == 0, out
    assert "the CA had revoked it already" in out and "Renewing:" not in out and served().serial_number == before
    assert record(host, "MOLECULE-KEY-DIED", "revoked")["already_revoked"]


def test_a_key_that_did_not_change_fails_and_nothing_is_revoked(host):
    # As if the served key were the one of the compromised certificate (certbot kept it): the run must say so.
    replaced = record(host, KEY_INCIDENT, "replaced")
    replaced["served_public_keys_before"].append(fingerprint(served()))
    plant(host, "MOLECULE-KEY-KEPT", "replaced", replaced)
    rc, out = playbook(RENEW, "incident_id=MOLECULE-KEY-KEPT", *KEY_COMPROMISE, "confirm=true")
    assert rc != 0
    assert "The key did not change" in out and "Nothing was revoked" in out and REVOKE_TASK not in out
    assert record(host, "MOLECULE-KEY-KEPT", "revoked") is None


def test_the_key_compromise_playbook_reissues_with_a_new_key_and_revokes_once(host):
    """key_compromise.yml -e steps=tls: the certificates role with a new key and a keyCompromise revocation."""
    before = served()
    rc, out = playbook("key_compromise.yml", "incident_id=MOLECULE-KC-TLS", "steps=tls", check=True)  # hosts compared around it
    assert rc == 0 and "Would renew with a new key" in out, out
    assert served().serial_number == before.serial_number and ca_status(before.serial_number)["Status"] == "Valid"
    rc, out = playbook("key_compromise.yml", "incident_id=MOLECULE-KC-TLS", "steps=tls")
    assert rc != 0 and "re-issue the TLS certificate with a new key" in out and served().serial_number == before.serial_number
    rc, out = playbook("key_compromise.yml", "incident_id=MOLECULE-KC-TLS", "steps=tls", "confirm=true")
    assert rc == 0, out
    fresh = served()
    assert spki(fresh) != spki(before) and ca_status(fresh.serial_number)["Status"] == "Valid"
    status = ca_status(before.serial_number)
    assert status["Status"] == "Revoked" and status["Reason"] == 1, status
    rc, out = playbook("key_compromise.yml", "incident_id=MOLECULE-KC-TLS", "steps=tls", "confirm=true")
    assert rc == 0 and "nothing left to do" in out and "already done before: tls" in out, out
    assert served().serial_number == fresh.serial_number
