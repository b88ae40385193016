# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the app host lost its data and was restored from off-host, and after a drill on the scratch host.

S3 here is the moto emulator (the only emulated service); everything else is real: sshd with the forced command,
age, PostgreSQL, the compose stack, systemd timers.
"""
from __future__ import annotations

import base64
import json

import pytest

from conftest import eventually, other, playbook, received_alerts  # pylint: disable=import-error

testinfra_hosts = ["app"]

PSQL = "docker compose --project-directory /opt/whatsapp-mcp exec -T postgres psql -U wa -d wa_mcp -At"
BACKUPS = "/var/lib/whatsapp-mcp/backups"


def sql(host, query):
    return host.check_output(f'{PSQL} -F "|" -c "{query}"')


def s3_objects(host, body=False):
    """The bucket's objects, listed (and read) from the app host with its configured credentials."""
    script = (
        "import boto3, json, base64; s3 = boto3.client('s3', endpoint_url='http://s3:9000', region_name='us-east-1', "
        "aws_access_key_id='sandbox-access-key', aws_secret_access_key='sandbox-secret-key'); "
        "keys = [o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='wa-mcp-backups') for o in p.get('Contents', [])]; "
        f"print(json.dumps({{k: base64.b64encode(s3.get_object(Bucket='wa-mcp-backups', Key=k)['Body'].read()[:4096]).decode() "
        f"if {body} else '' for k in keys}}))")
    return json.loads(host.check_output(f'python3 -c "{script}"'))


def test_the_database_is_back_and_equals_the_manifest(host):
    manifest = json.loads(host.check_output(f"cat $(ls {BACKUPS}/db-*.manifest.json | sort | tail -n 1)"))
    for table in ("clients", "api_keys", "messages", "media_objects"):
        assert int(sql(host, f"SELECT count(*) FROM {table}")) == manifest["row_counts"][table], table
    assert manifest["row_counts"]["messages"] == 5000
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_every_media_file_is_back_with_its_digest(host):
    rows = sql(host, "SELECT storage_path, sha256 FROM media_objects ORDER BY id").splitlines()
    assert len(rows) == 40
    for row in rows:
        path, digest = row.split("|")
        assert host.check_output(f"sha256sum /var/lib/whatsapp-mcp/media/{path}").split()[0] == digest, path


def test_without_confirmation_the_media_restore_refuses_and_changes_nothing(host):
    listing = "cd /var/lib/whatsapp-mcp/media && find . -printf '%p %m %u %s\\n' | sort && find . -type f -exec sha256sum {} + | sort"
    host.check_output("touch /var/lib/whatsapp-mcp/media/added-after-the-snapshot.jpg")
    try:
        before = host.check_output(listing)
        rc, out = playbook("restore_media.yml", "incident_id=MOLECULE-MEDIA-UNCONFIRMED", "source=offsite")
        assert rc != 0 and "Nothing was changed" in out and "confirm=true" in out
        assert host.check_output(listing) == before  # the file added since the snapshot is still there
    finally:
        host.check_output("rm -f /var/lib/whatsapp-mcp/media/added-after-the-snapshot.jpg")


def test_off_host_copies_are_encrypted_and_never_hold_the_age_key(host):
    objects = s3_objects(host, body=True)
    names = sorted(objects)
    assert any(name.startswith("app/db-") and name.endswith(".sql.gz.age") for name in names), names
    assert any(name.startswith("app/media-") and name.endswith(".tar.age") for name in names), names
    assert not any("age.key" in name for name in names)
    for name, head in objects.items():
        if name.endswith(".age"):
            assert base64.b64decode(head).startswith(b"age-encryption.org/v1"), name
    key = host.check_output("grep -o 'AGE-SECRET-KEY-[A-Z0-9]*' /etc/whatsapp-mcp/age.key")
    assert host.run(f"grep -rqF {key} {BACKUPS}").rc == 1  # not in the local backups either


def test_the_log_server_holds_the_audit_archive_append_only(host):
    log_server = other("offhost")
    local = host.check_output("cd /var/lib/whatsapp-mcp/audit-archive && find . -type f -name '*.jsonl' -exec sha256sum {} + | sort")
    remote = log_server.check_output("cd /srv/audit-archive/app && find . -type f -name '*.jsonl' -exec sha256sum {} + | sort")
    assert local and local == remote
    some = remote.splitlines()[0].split()[1]
    assert log_server.file(f"/srv/audit-archive/app/{some}").mode == 0o440
    # The shipping key runs only the receiver: any other command is refused by the forced command.
    attempt = host.run("ssh -i /etc/runbooks-incident/audit-ship.key -o UserKnownHostsFile=/etc/runbooks-incident/audit-ship.known_hosts"
                       " -o BatchMode=yes audit-recv@offhost 'rm -rf /srv/audit-archive'")
    assert attempt.rc != 0 and "only list, put, manifest and manifest-full are allowed" in attempt.stderr
    assert log_server.file(f"/srv/audit-archive/app/{some}").exists


@pytest.mark.parametrize("timer", ["backup-db", "backup-media", "offsite-sync", "offsite-check", "audit-ship"])
def test_app_timers_are_scheduled(host, timer):
    assert host.service(f"runbooks-{timer}.timer").is_enabled and host.service(f"runbooks-{timer}.timer").is_running


def test_the_monthly_off_host_check_passes(host):
    host.check_output("systemctl start runbooks-offsite-check.service")
    result = host.check_output("journalctl -u runbooks-offsite-check.service -o cat --no-pager | grep '\"job\"' | tail -n 1")
    assert json.loads(result)["row_counts"]["messages"] == 5000


def test_a_failing_job_pages(host):
    host.check_output("mv /etc/runbooks-incident/audit-ship.key /etc/runbooks-incident/audit-ship.key.away")
    try:
        assert host.run("systemctl start runbooks-audit-ship.service").rc != 0
    finally:
        host.check_output("mv /etc/runbooks-incident/audit-ship.key.away /etc/runbooks-incident/audit-ship.key")

    def summaries():
        return [alert["annotations"]["summary"] for alert in received_alerts()]

    # OnFailure= starts the pager after systemctl returned: wait for what the receiver got.
    assert eventually(lambda: [summary for summary in summaries() if "runbooks-audit-ship.service failed on app" in summary]), summaries()


def test_a_drill_aimed_at_the_production_host_is_refused_and_changes_nothing(host):
    state = f"{PSQL} -c 'SELECT count(*) FROM messages' && docker inspect -f '{{{{.Name}}}} {{{{.State.StartedAt}}}}' $(docker ps -q) | sort"
    log_server = other("offhost")
    drills, before = log_server.file("/srv/evidence/backup-drills.md").content_string, host.check_output(state)
    rc, out = playbook("restore_drill.yml", "incident_id=MOLECULE-DRILL-ON-PROD", "target=app")
    assert rc != 0 and "app is in group whatsapp_mcp" in out and "Run it on a scratch host" in out
    assert host.check_output(state) == before  # same data, same containers (none restarted)
    assert log_server.file("/srv/evidence/backup-drills.md").content_string == drills  # no drill was made, none recorded


def test_the_drill_is_recorded_and_the_scratch_host_is_clean(host):
    log_server = other("offhost")
    drills = log_server.file("/srv/evidence/backup-drills.md").content_string
    row = next(line for line in drills.splitlines() if "| MOLECULE-DRILL |" in line)
    assert "| pass |" in row and "| 40/40 ok |" in row
    check = log_server.run("systemctl start runbooks-drill-check.service")
    assert check.rc == 0, check.stderr
    drill = other("drill")
    assert not drill.file("/var/lib/whatsapp-mcp").exists
    assert drill.check_output("docker ps -q") == ""
