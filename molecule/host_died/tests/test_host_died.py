# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the old host died and rebootstrap.yml rebuilt the service on `replacement` (converge, then idempotence).

prepare recorded on the controller, at the old host's last backup, what these tests compare with: every table's
rows (count, highest id, digest of the rows in id order), every media file's digest, the pepper in force, two
clients' API keys, the old host's address (where DNS pointed). S3 is the moto emulator; BIND, sops, age, git over
SSH, PostgreSQL and the compose stack are real.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
from pathlib import Path

import dns.resolver

from conftest import fed, incident_dir, other, playbook, restored, unchanged  # pylint: disable=import-error

testinfra_hosts = ["replacement"]

HERE = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
INCIDENT = "MOLECULE-HOST-DIED"
KEY = "/etc/whatsapp-mcp/age.key"
PSQL = "docker compose --project-directory /opt/whatsapp-mcp exec -T postgres psql -U wa -d wa_mcp -At -F '|'"
COLLECTIONS = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], ".build", "collections")
# What the service rewrites when a key is used is left out: last_used_at, and after a soft pepper rotation the key's
# hash under the new pepper (prepare.yml digests the old host's rows the same way).
ROW_DIGEST = ("md5(coalesce(string_agg((to_jsonb(t) - 'last_used_at' - 'key_hash' - 'pepper_fingerprint')::text, '|' "
              "ORDER BY id), ''))")


def recorded(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as handle:
        return handle.read()


def old_rows():
    """{table: (count, highest id, digest)} at the old host's last backup."""
    rows = {}
    for line in recorded("old-rows.txt").split():
        table, count, highest, digest = line.split("|")
        rows[table] = (int(count), int(highest), digest)
    return rows


def tokens():
    return recorded("tokens").split()


def tsig_secret():
    return recorded("tsig.secret").split()[0]


def runs(*extra, **kwargs):
    """rebootstrap.yml on the replacement host, the tokens and the TSIG secret among the secrets scanned for."""
    return playbook("rebootstrap.yml", "target=replacement", *extra, secrets=[*tokens(), tsig_secret()], **kwargs)


def api(host, path, token):
    """(HTTP status, JSON body) of a GET through the replacement's nginx; the token goes in as a header on stdin (an
    argv is seen by every exec scan on the machine)."""
    out = fed(host, f"curl -sk -w '\\n%{{http_code}}' -H @- https://127.0.0.1{path}", f"Authorization: Bearer {token}\n".encode())
    text, _sep, code = out.stdout.decode().rpartition("\n")
    return int(code), json.loads(text) if text.strip() else None


def assert_the_data_of_the_last_backup(host):
    """Every table's rows up to the old host's last backup are the old host's, in the newest backup's counts."""
    manifest = json.loads(recorded("old-manifest.json"))
    for table, (count, highest, digest) in old_rows().items():
        assert manifest["row_counts"][table] == count, f"the backup restored is not the newest ({table})"
        now = host.check_output(f"{PSQL} -c \"SELECT count(*), {ROW_DIGEST} FROM {table} t WHERE id <= {highest}\"")
        assert now == f"{count}|{digest}", f"{table}: the rows up to id {highest} differ from the old host's"


def assert_the_rotated_pepper_and_old_keys_work(host):
    health = json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))
    before = json.loads(recorded("old-health.json"))
    assert health["status"] == "ok"
    assert health["pepper_fingerprint"] == before["pepper_fingerprint"]
    for token in tokens():
        status, body = api(host, "/v1/whoami", token)
        assert status == 200 and body["client_name"], (status, body)
    assert api(host, "/v1/whoami", tokens()[0][:-4] + "0000")[0] == 401  # not a server that lets any key in


def test_the_service_serves_exactly_the_data_of_the_last_backup(host):
    assert_the_data_of_the_last_backup(host)
    # Since the restore, only what the verification wrote: its one test message (and its audit rows).
    newer = host.check_output(f"{PSQL} -c \"SELECT count(*) FROM messages WHERE id > {old_rows()['messages'][1]}\"")
    assert newer == "1"


def test_every_media_file_is_back_byte_for_byte(host):
    found = host.check_output("cd /var/lib/whatsapp-mcp/media && find . -type f -print0 | sort -z | xargs -0 sha256sum")
    assert found.strip() == recorded("old-media.sha256").strip()
    assert len(found.splitlines()) >= 30


def test_the_rotated_pepper_is_in_force_and_old_api_keys_work(host):
    assert_the_rotated_pepper_and_old_keys_work(host)


def test_the_verification_sent_a_message_that_the_audit_log_records(host):
    highest = old_rows()["audit_log"][1]
    rows = host.check_output(f"{PSQL} -c \"SELECT action, outcome FROM audit_log WHERE id > {highest} AND action = 'send_attempt'\"")
    assert rows.splitlines() == ["send_attempt|success"]


def address_of(host):
    return host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


def test_dns_answers_the_replacement_address_at_the_zone_primary(host):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [recorded("server").strip()]
    answer = [record.address for record in resolver.resolve("wa.sandbox.test", "A")]
    address = address_of(host)
    assert answer == [address] and address != recorded("old-address").strip()


def test_nginx_serves_a_certificate_of_the_ca_for_the_name(host):
    """The bootstrap certificate is self-signed: a chain the TLS client verifies against pebble's root, for the
    service's name, is the one the CA issued after validating the name where DNS now points."""
    context = ssl.create_default_context(cafile=os.path.join(HERE, "pebble-root.pem"))
    with socket.create_connection((address_of(host), 443), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="wa.sandbox.test") as tls:
        names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
    assert names == ["wa.sandbox.test"]
    for pem in ("fullchain.pem", "privkey.pem"):  # nginx reads certbot's lineage
        assert host.check_output(f"readlink -f /etc/whatsapp-mcp/tls/{pem}").startswith("/etc/letsencrypt/archive/wa.sandbox.test")


def test_the_units_are_enabled_and_running(host):
    for unit in ("whatsapp-mcp-secrets.service", "whatsapp-mcp.service"):
        assert host.service(unit).is_enabled and host.service(unit).is_running, unit


def test_a_run_again_changes_nothing_and_reports_the_recovery_into_the_timeline():
    """Molecule's converge and idempotence pass incident_id as a play variable, which the timeline does not take for
    an incident: this run, as an operator's, does (-e incident_id)."""
    rc, out = runs(f"incident_id={INCIDENT}")
    assert rc == 0 and "changed=0" in out and "failed=0" in out, out
    with open(os.path.join(incident_dir(), INCIDENT, "timeline.json"), encoding="utf-8") as handle:
        timeline = json.load(handle)
    recoveries = [event for event in timeline["events"] if event["kind"] == "recovery"]
    assert len(recoveries) == 1, recoveries
    manifest = json.loads(recorded("old-manifest.json"))
    assert recoveries[0]["backup_time"][:19] == manifest["started_at"][:19]
    assert recoveries[0]["rto_s"] > 0 and recoveries[0]["rpo_s"] >= 0
    for step in ("provisioned and deployed", "data restored", "DNS", "certificate", "verified"):
        assert step in recoveries[0]["summary"], recoveries[0]["summary"]
    assert "Recovery time (RTO)" in out and "Data restored as of" in out
    with open(os.path.join(incident_dir(), INCIDENT, "postmortem.md"), encoding="utf-8") as handle:
        assert "Service recovered" in handle.read()


def test_a_host_holding_data_is_not_overwritten_by_another_incident():
    with unchanged():
        rc, out = runs("incident_id=MOLECULE-HOST-DIED-AGAIN")
    assert rc != 0 and "is not a new host" in out and "No data was changed" in out, out
    assert "-e confirm=true" in out and "-e backup=none" in out


def test_a_missing_backup_fails_naming_where_it_looked_and_leaves_the_data(host):
    rc, out = runs(f"incident_id={INCIDENT}", "backup=2020-01-01")
    assert rc != 0, out
    assert "no complete db-/media- set of 2020-01-01 off-host in s3://wa-mcp-backups/whatsapp-mcp/wa.sandbox.test/" in out, out
    for table, (count, highest, digest) in old_rows().items():
        now = host.check_output(f"{PSQL} -c \"SELECT count(*), {ROW_DIGEST} FROM {table} t WHERE id <= {highest}\"")
        assert now == f"{count}|{digest}", table


def test_a_wrong_age_key_stops_the_run_before_anything_changes(tmp_path):
    wrong = tmp_path / "wrong.key"
    subprocess.run(["age-keygen", "-o", str(wrong)], check=True, capture_output=True)
    given = tmp_path / "given.json"  # as AWX hands a credential over: a vars file, never argv
    given.write_text(json.dumps({"whatsapp_mcp_age_key": wrong.read_text()}))
    with unchanged():
        rc, out = runs(f"incident_id={INCIDENT}", vars_files=[str(given)])
    assert rc != 0 and "The age key given is not the service's" in out and "Nothing was changed" in out, out
    assert "Take the run lock" not in out  # stopped before the run began


def paper_shares(key, directory):
    """Files of three paper shares of `key` (an age key file's content), two of which rebuild it; split on the
    controller with the collection's module."""
    directory.mkdir(exist_ok=True)
    key_file = directory / "key"
    key_file.write_text(key)
    args = json.dumps({"secret_file": str(key_file), "dest_dir": str(directory / "shares"), "shares": 3, "threshold": 2})
    res = subprocess.run(["ansible", "localhost", "-m", "runbooks.incident.shamir_split", "-a", args], capture_output=True,
                         text=True, check=False, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS))
    key_file.unlink()
    assert res.returncode == 0, res.stdout + res.stderr
    return sorted(str(path) for path in (directory / "shares").iterdir())


def test_i_have_the_paper_shares_rebuilds_the_lost_key_and_decrypts_again(host, tmp_path):
    """playbooks/age_key_from_shares.yml: the key file lost on the running host, two of three shares on the controller."""
    files = paper_shares(host.check_output(f"cat {KEY}") + "\n", tmp_path / "service")
    before = host.file(KEY).sha256sum
    shares = json.dumps({"whatsapp_mcp_age_key_share_files": files[1:]})
    with restored(host, KEY):
        host.check_output(f"rm {KEY}")
        rc, out = playbook("age_key_from_shares.yml", "target=replacement", "incident_id=MOLECULE-SHARES", shares,
                           check=True, secrets=tokens())
        assert rc == 0, out
        rc, out = playbook("age_key_from_shares.yml", "target=replacement", "incident_id=MOLECULE-SHARES", shares, secrets=tokens())
        assert rc == 0, out
        assert host.file(KEY).sha256sum == before and host.file(KEY).mode == 0o400 and host.file(KEY).group == "whatsapp-mcp-secrets"
        assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"
        rc, out = playbook("age_key_from_shares.yml", "target=replacement", "incident_id=MOLECULE-SHARES", shares, secrets=tokens())
        assert rc == 0 and "changed=0" in out, out


def test_shares_of_another_key_stop_the_run_before_anything_changes(tmp_path):
    another = subprocess.run(["age-keygen"], check=True, capture_output=True, text=True).stdout
    files = paper_shares(another, tmp_path / "another")
    with unchanged():
        rc, out = playbook("age_key_from_shares.yml", "target=replacement", "incident_id=MOLECULE-SHARES-WRONG",
                           json.dumps({"whatsapp_mcp_age_key_share_files": files[:2]}))
    assert rc != 0 and "rebuilt from the shares is not the service's" in out, out
    with unchanged():
        rc, out = runs(f"incident_id={INCIDENT}", "whatsapp_mcp_age_key=", json.dumps({"whatsapp_mcp_age_key_share_files": files[1:]}))
    assert rc != 0 and "rebuilt from the shares is not the service's" in out, out


def test_a_bare_host_is_rebuilt_with_the_paper_shares_as_the_only_key(tmp_path):
    """The key file is lost with the host: two of three paper shares of the service's key, typed into the AWX
    survey's password questions (age_key_share_<n>, awx/job_templates.yml), are all there is of it; the job runs
    through ansible-runner as AWX runs it. DNS and the certificate stay with replacement."""
    with open(os.path.join(os.environ["RUNBOOKS_SANDBOX_DIR"], "age.key"), encoding="utf-8") as handle:
        service_key = handle.read()
    files = paper_shares(service_key, tmp_path / "service")
    shares = [line for path in files for line in Path(path).read_text(encoding="utf-8").split() if line.startswith("rbi-shamir-v1:")]
    assert len(shares) == 3
    (tmp_path / "runner").mkdir()
    answers = {"age_key_share_1": shares[2], "age_key_share_2": shares[0], "age_key_share_3": "",
               "whatsapp_mcp_age_key": "", "dns_record_server": "", "rebootstrap_certificate": False}
    rc, out = playbook("rebootstrap.yml", "target=paper", "incident_id=MOLECULE-HOST-DIED-PAPER", json.dumps(answers),
                       artifacts=str(tmp_path / "runner"), secrets=[*tokens(), tsig_secret(), *shares])
    assert rc == 0, out
    paper = other("paper")  # no key was given but the shares: the key there is the one they rebuilt
    key = paper.file(KEY)
    assert key.sha256sum == hashlib.sha256(service_key.encode()).hexdigest() and key.mode == 0o400
    assert_the_data_of_the_last_backup(paper)
    assert_the_rotated_pepper_and_old_keys_work(paper)
