# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the app host lost its data and was restored from off-host, and after a drill on the scratch host.

S3 here is the moto emulator (the only emulated service); everything else is real: sshd with the forced command,
age, PostgreSQL, the compose stack, systemd timers.
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import subprocess

import pytest

from conftest import eventually, fed, inventory_s3_secret_key, other, playbook, received_alerts, unchanged  # pylint: disable=import-error

testinfra_hosts = ["app"]

PSQL = "docker compose --project-directory /opt/whatsapp-mcp exec -T postgres psql -U wa -d wa_mcp -At"
BACKUPS = "/var/lib/whatsapp-mcp/backups"
# The service's identity (<service>/<domain>/ of the sandbox inventory), not the host's name: a replacement host finds it.
OFFSITE = "whatsapp-mcp/wa.sandbox.test/"


def sql(host, query):
    return host.check_output(f'{PSQL} -F "|" -c "{query}"')


def s3_objects(host, body=False):
    """The bucket's objects, listed (and read) from the app host with its configured credentials. The script (it
    holds the S3 secret key) goes in on stdin: an argv is seen by every exec scan on the machine."""
    script = (
        "import boto3, json, base64; s3 = boto3.client('s3', endpoint_url='http://s3:9000', region_name='us-east-1', "
        f"aws_access_key_id='sandbox-access-key', aws_secret_access_key={inventory_s3_secret_key()!r}); "
        "keys = [o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='wa-mcp-backups') for o in p.get('Contents', [])]; "
        f"print(json.dumps({{k: base64.b64encode(s3.get_object(Bucket='wa-mcp-backups', Key=k)['Body'].read()[:4096]).decode() "
        f"if {body} else '' for k in keys}}))")
    res = fed(host, "python3 -", script.encode())
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return json.loads(res.stdout)


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
        with unchanged():  # every host's files, units, containers, databases and the bucket
            rc, out = playbook("restore_media.yml", "incident_id=MOLECULE-MEDIA-UNCONFIRMED", "source=offsite")
        assert rc != 0 and "Nothing was changed" in out and "confirm=true" in out
        assert host.check_output(listing) == before  # the file added since the snapshot is still there
    finally:
        host.check_output("rm -f /var/lib/whatsapp-mcp/media/added-after-the-snapshot.jpg")


def test_off_host_copies_are_encrypted_and_never_hold_the_age_key(host):
    objects = s3_objects(host, body=True)
    names = sorted(objects)
    assert any(name.startswith(OFFSITE + "db-") and name.endswith(".sql.gz.age") for name in names), names
    assert any(name.startswith(OFFSITE + "media-") and name.endswith(".tar.age") for name in names), names
    assert not any("age.key" in name for name in names)
    for name, head in objects.items():
        if name.endswith(".age"):
            assert base64.b64decode(head).startswith(b"age-encryption.org/v1"), name
    # Not in the local backups either (the key is the pattern, on a pipe: never on a command line).
    key_line = "grep '^AGE-SECRET-KEY-' /etc/whatsapp-mcp/age.key"
    assert host.run(f"{key_line} >/dev/null").rc == 0
    assert host.run(f"{key_line} | grep -rqF -f - {BACKUPS}").rc == 1


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
    # With the log server's settings of the drills before (its pager): every host is compared around the run.
    with unchanged():
        rc, out = playbook("restore_drill.yml", "incident_id=MOLECULE-DRILL-ON-PROD", "target=app", "pager_url=http://offhost:9099/api/v2/alerts")
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


def test_a_failed_drill_is_recorded_as_failed_and_the_scratch_host_is_still_cleaned(host):
    """The drill's restore fails after the data was loaded on the scratch host (a table the backup does not have is
    expected): the run fails saying why, the log records the drill as failed, and nothing restored stays behind."""
    log_server, drill = other("offhost"), other("drill")
    rc, out = playbook("restore_drill.yml", "incident_id=MOLECULE-DRILL-FAILS", "pager_url=http://offhost:9099/api/v2/alerts",
                       json.dumps({"db_restore_expect_tables": ["clients", "no_such_table"]}))
    assert rc != 0 and "The restore drill failed" in out and "no_such_table" in out, out
    drills = log_server.file("/srv/evidence/backup-drills.md").content_string
    row = next(line for line in drills.splitlines() if "| MOLECULE-DRILL-FAILS |" in line)
    assert "| fail |" in row
    assert "| MOLECULE-DRILL |" in drills.split("| MOLECULE-DRILL-FAILS |")[0]  # appended after the passing drill
    # The log's chain still verifies, and the last passing drill is recent: the daily check passes.
    check = log_server.run("systemctl start runbooks-drill-check.service")
    assert check.rc == 0, check.stderr
    assert not drill.file("/var/lib/whatsapp-mcp").exists
    assert drill.check_output("docker ps -q") == ""


# ------------------------------------------------------------------------------------------------ backup failed
LOCK_HOLDER = "runbooks-test-lock-holder"
TIMED_DUMP = re.compile(r"^db-\d{4}-\d\d-\d\dT\d{6}Z\.sql\.gz$")


@pytest.mark.parametrize("name, extra", [
    ("backup.yml", ["pager_url=http://offhost:9099/api/v2/alerts"]),
    ("restore_drill.yml", ["pager_url=http://offhost:9099/api/v2/alerts"]),
    ("backup_failed.yml", []),
])
def test_a_dry_run_of_each_backup_runbook_succeeds_and_changes_nothing(name, extra):
    # playbook(check=True) compares every host's state (files, units, containers, databases, the bucket) around it.
    rc, out = playbook(name, "incident_id=MOLECULE-DRY-" + name.split(".")[0].upper().replace("_", "-"), *extra, check=True)
    assert rc == 0, out
    if name == "backup_failed.yml":
        assert "no exclusive lock held" in out and "MiB free in /var/lib/whatsapp-mcp/backups" in out
        assert re.search(r"s3://wa-mcp-backups/" + OFFSITE + r" reachable: [1-9]\d* complete backup set\(s\)", out), out


def timed_dumps(host):
    return {name for name in host.check_output(f"ls {BACKUPS}").split() if TIMED_DUMP.match(name)}


def test_backup_failed_names_the_lock_and_the_storage_error_and_still_backs_up_locally(host):
    """A session holds an exclusive lock on `messages` (what blocks pg_dump) and the bucket is wrong: the diagnosis
    names both, the backup taken now waits for the lock, is verified, and the shipping fails the run."""
    holder = PSQL.replace("exec -T", f"exec -T -d -e PGAPPNAME={LOCK_HOLDER}")
    held = (f"SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE application_name = '{LOCK_HOLDER}'"
            " AND granted AND mode = 'AccessExclusiveLock'")
    before, objects = timed_dumps(host), set(s3_objects(host))
    host.check_output(f"{holder} -c 'BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(900)'")
    try:
        assert eventually(lambda: sql(host, held) == "1")
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            run = pool.submit(playbook, "backup_failed.yml", "incident_id=MOLECULE-BACKUP-FAILED", "offsite_sync_bucket=wa-mcp-backups-gone",
                              "offsite_sync_create_bucket=false")
            # The diagnosis comes first; once the backup's own pg_dump waits on the lock, release it.
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name IN ('pg_dump', 'psql')"
            assert eventually(lambda: sql(host, waiting) != "0" or run.done(), timeout=300)
            sql(host, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{LOCK_HOLDER}'")
            rc, out = run.result()
    finally:
        sql(host, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{LOCK_HOLDER}'")
    assert rc != 0
    assert re.search(r"AccessExclusiveLock on messages by wa for \d+ s: BEGIN; LOCK TABLE messages", out), out
    assert "s3://wa-mcp-backups-gone FAILED:" in out and "NoSuchBucket" in out and "check the access key and secret (expired?)" in out
    new = timed_dumps(host) - before
    assert len(new) == 1, new  # taken now, under a timed stamp, once the lock was gone
    manifest = json.loads(host.check_output(f"cat {BACKUPS}/{new.pop()[:-len('.sql.gz')]}.manifest.json"))
    assert manifest["row_counts"]["messages"] == 5000
    assert set(s3_objects(host)) == objects  # nothing went off-host


def test_backup_failed_backs_up_now_and_ships_it(host):
    before = timed_dumps(host)
    rc, out = playbook("backup_failed.yml", "incident_id=MOLECULE-BACKUP-NOW")
    assert rc == 0, out
    assert "no exclusive lock held" in out and f"s3://wa-mcp-backups/{OFFSITE} reachable:" in out
    new = timed_dumps(host) - before
    assert len(new) == 1, new
    assert f"{OFFSITE}{new.pop()}.age" in s3_objects(host)


def test_a_media_restore_keeps_the_current_directory_as_a_hard_linked_copy(host):
    media = "/var/lib/whatsapp-mcp/media"
    extra = f"{media}/added-after-the-snapshot.jpg"
    host.check_output(f"echo not-in-the-snapshot > {extra}")
    kept_before = set(host.check_output(f"ls -d {media}.pre_restore_* 2>/dev/null || true").split())
    try:
        rc, out = playbook("restore_media.yml", "incident_id=MOLECULE-MEDIA-AGAIN", "confirm=true")
        assert rc == 0, out
        kept = set(host.check_output(f"ls -d {media}.pre_restore_*").split()) - kept_before
        assert len(kept) == 1, kept
        kept = kept.pop()
        assert not host.file(extra).exists  # the live directory equals the snapshot
        assert host.file(f"{kept}/added-after-the-snapshot.jpg").content_string == "not-in-the-snapshot\n"
        # The copy took no space: a file the restore left alone (it equals the snapshot's) is one inode in both.
        some = sql(host, "SELECT storage_path FROM media_objects ORDER BY id LIMIT 1")
        assert host.check_output(f"stat -c %i {media}/{some}") == host.check_output(f"stat -c %i {kept}/{some}")
    finally:
        host.check_output(f"rm -f {extra}")


# ------------------------------------------------------------------------------------- the age key leaked
AGE_KEY = "/etc/whatsapp-mcp/age.key"
SOPS_FILE = "/opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml"
SOPS_CONFIG = "/opt/whatsapp-mcp/ops/sops/.sops.yaml"


def identities(text):
    return [line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-")]


def opens_header(identity, body):
    """Whether the age identity file `identity` opens the header of an object's first bytes (its payload is cut)."""
    res = subprocess.run(["age", "-d", "-i", str(identity)], input=body, capture_output=True, check=False)
    return b"no identity matched" not in res.stderr


def test_a_leaked_age_key_is_replaced_in_the_secrets_off_host_and_on_the_host(host, tmp_path):
    """key_compromise.yml -e steps=age_key: a new key made on the controller; the secrets file encrypted to it alone and
    sops' rules naming it; the off-host sets re-encrypted to it and the nightly shipping encrypting to it; the leaked
    key gone from the host; paper shares of the new key. Every run is scanned for both keys (conftest)."""
    leaked = tmp_path / "leaked-age.key"  # what the attacker has, kept here to prove it no longer opens anything
    leaked.write_text(host.file(AGE_KEY).content_string)
    leaked.chmod(0o600)
    leaked_public = host.check_output(f"age-keygen -y {AGE_KEY}")
    new_key, shares = tmp_path / "new-age.key", tmp_path / "shares"
    shares.mkdir()
    args = ("key_compromise.yml", "incident_id=MOLECULE-AGE-KEY", "steps=age_key", f"key_compromise_age_key_new_key_file={new_key}",
            "secrets_publish_mode=none", f"key_compromise_age_key_split_dir={shares}")
    objects = s3_objects(host, body=True)
    assert objects and all(opens_header(leaked, base64.b64decode(body)) for name, body in objects.items() if name.endswith(".age"))

    rc, out = playbook(*args, check=True)  # compares every host's state around it
    assert rc == 0 and "A new age key would be made in" in out, out
    rc, out = playbook(*args)
    assert rc != 0 and "confirm=true" in out, out
    assert not new_key.exists() and host.file(AGE_KEY).content_string == leaked.read_text()

    rc, out = playbook(*args, "confirm=true")
    assert rc == 0, out
    new_public = subprocess.run(["age-keygen", "-y", str(new_key)], capture_output=True, text=True, check=True).stdout.strip()
    assert oct(new_key.stat().st_mode & 0o777) == "0o600"
    key_file = host.file(AGE_KEY)
    assert identities(key_file.content_string) == identities(new_key.read_text()) and key_file.mode == 0o400
    assert not host.file(AGE_KEY + ".leaked").exists
    assert new_public in host.file(SOPS_FILE).content_string and leaked_public not in host.file(SOPS_FILE).content_string
    assert new_public in host.file(SOPS_CONFIG).content_string and leaked_public not in host.file(SOPS_CONFIG).content_string
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"
    assert json.loads(host.file("/etc/runbooks-incident/offsite-sync.json").content_string)["recipient"] == new_public
    after = s3_objects(host, body=True)
    assert set(after) == set(objects)  # re-encrypted in place, none lost
    for name, body in after.items():
        if name.endswith(".age"):
            assert not opens_header(leaked, base64.b64decode(body)) and opens_header(new_key, base64.b64decode(body)), name
    assert sorted(oct(share.stat().st_mode & 0o777) for share in (shares / "app").iterdir()) == ["0o600"] * 3
    check = host.run("systemctl start runbooks-offsite-check.service")  # the newest off-host dump, with the new key
    assert check.rc == 0, check.stderr

    rc, out = playbook(*args, "confirm=true")
    assert rc == 0 and "Already done for this change: age_key" in out, out
    assert host.file(AGE_KEY).content_string == key_file.content_string
