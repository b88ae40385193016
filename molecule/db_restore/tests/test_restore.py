# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the restore: the data of the backup is live, the lost state is kept, the service and the nightly job work.
Then restores that fail on the real service (a failing migration, one that changes the backed-up rows, one that fails
inside the swap, smoke failing after the swap, /health staying red on the restore) leave or put back the previous
database with the service up, and a dry run finds a corrupt dump."""
from __future__ import annotations

import json
import os
import re
import signal

from conftest import eventually, incident_dir, playbook, restored, started_playbook, unchanged  # pylint: disable=import-error

PSQL = "docker compose --project-directory /opt/whatsapp-mcp exec -T postgres psql -U wa -At"
TABLES = ("clients", "api_keys", "messages")


def counts(host, db="wa_mcp"):
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
    out = host.check_output(f'{PSQL} -d {db} -F= -c "{sql}"')
    return {name: int(value) for name, value in (line.split("=") for line in out.splitlines())}


def restored_manifest(host):
    """The manifest of the backup converge restored (prepare recorded its path)."""
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "restore-source"), encoding="utf-8") as handle:
        dump = handle.read().strip()
    return json.loads(host.file(dump[:-len(".sql.gz")] + ".manifest.json").content_string)


def databases(host):
    return host.check_output(f'{PSQL} -d postgres -c "SELECT datname FROM pg_database ORDER BY 1"').split()


def test_live_data_equals_the_backup(host):
    manifest = restored_manifest(host)
    assert counts(host) == {t: manifest["row_counts"][t] for t in TABLES}
    assert manifest["row_counts"]["messages"] == 20000


def test_the_lost_state_is_kept_as_the_pre_restore_database(host):
    previous = [name for name in databases(host) if name.startswith("wa_mcp_pre_restore_")]
    assert len(previous) == 1
    assert counts(host, previous[0])["messages"] == 500


def test_service_healthy_and_smoke_passes(host):
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"
    host.check_output("docker compose --project-directory /opt/whatsapp-mcp exec -T app wa-mcp smoke")


def test_backups_are_private(host):
    assert host.file("/var/lib/whatsapp-mcp/backups").mode == 0o700
    for path in host.check_output("ls /var/lib/whatsapp-mcp/backups/db-*").split():
        assert host.file(path).mode == 0o600 and host.file(path).user == "root", path


def test_the_nightly_job_runs_on_the_host(host):
    assert host.service("runbooks-backup-db.timer").is_enabled
    assert host.service("runbooks-backup-db.timer").is_running
    before = set(host.check_output("ls /var/lib/whatsapp-mcp/backups").split())
    host.check_output("systemctl start runbooks-backup-db.service")
    result = json.loads(host.check_output("journalctl -u runbooks-backup-db.service -o cat --no-pager | grep '\"job\"' | tail -n 1"))
    assert result["verified"]
    # Judged by the dump the job names (the day it ran), not by the clock read around it: the day's dump existed and
    # still verifies, so nothing is overwritten; or the job made the first dump of a new day.
    name = result["path"].rsplit("/", 1)[-1]
    assert result["changed"] is (name not in before), (name, sorted(before))


def test_journal_records_the_restore(host):
    markers = host.check_output("journalctl -t runbooks-incident -o cat --no-pager")
    assert "END incident=MOLECULE-RESTORE playbook=Restore the database from a backup" in markers
    assert "outcome=success" in markers.split("END incident=MOLECULE-RESTORE")[1].splitlines()[0]


def restore_with(override, incident_id):
    return playbook("restore_database.yml", f"incident_id={incident_id}", "confirm=true", json.dumps(override))


def add_canary(host, name):
    """A row written after the backup: it stays live only if the live database is never replaced or is put back."""
    host.check_output(f"""{PSQL} -d wa_mcp -c "INSERT INTO clients (name, contact_email) VALUES ('{name}', 'c@example.com')" """)


def canaries(host):
    return host.check_output(f"""{PSQL} -d wa_mcp -c "SELECT name FROM clients WHERE name LIKE 'canary-%'" """).split()


def test_a_failing_migration_never_reaches_the_live_database(host):
    add_canary(host, "canary-migration")
    before = counts(host)
    rc, out = restore_with({"db_restore_migrate_command": ["false"]}, "MOLECULE-BAD-MIGRATION")
    assert rc != 0 and "Apply migrations to the staging database" in out
    assert counts(host) == before
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_a_restore_that_fails_after_the_swap_is_rolled_back(host):
    add_canary(host, "canary-smoke")
    before = counts(host)
    rc, out = restore_with({"db_restore_smoke_command": ["false"]}, "MOLECULE-ROLLBACK")
    assert rc != 0
    assert "rolled back" in out and "Run the smoke checks" in out
    assert counts(host) == before  # the database from before this restore is live again, canary included
    assert any(name.startswith("wa_mcp_failed_restore_") for name in databases(host))
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_the_timeline_shows_what_the_rolled_back_restore_did():
    """The timeline callback is on for every playbook() run (molecule/conftest.py), as on an on-call controller: the
    restore rolled back above is one failed apply run in its incident's timeline, with the swap (and the app's
    downtime it measured), the failed smoke check and the rollback; the post-mortem and the Gantt page are drawn."""
    directory = os.path.join(incident_dir(), "MOLECULE-ROLLBACK")
    with open(os.path.join(directory, "timeline.json"), encoding="utf-8") as handle:
        timeline = json.load(handle)
    (run,) = timeline["runs"]
    assert run["mode"] == "apply" and run["outcome"] == "failed" and run["playbook"] == "restore_database.yml"
    tasks = {task["task"]: task for task in run["tasks"] if task["host"] == "app"}
    swap = tasks["Stop the app, swap the verified staging database into place, start the app"]
    assert swap["status"] == "changed" and swap["action"] == "runbooks.incident.pg_restore"
    assert swap["results"]["app_downtime_s"] >= 0
    assert tasks["Run the smoke checks"]["status"] == "failed"
    assert tasks["Put the previous database back"]["status"] == "changed"
    markers = [event["summary"] for event in timeline["events"] if event["kind"] == "journal"]
    assert any(marker.startswith("BEGIN incident=MOLECULE-ROLLBACK") for marker in markers)
    assert any("outcome=failed" in marker for marker in markers)
    assert [event["ok"] for event in timeline["events"] if event["kind"] == "outcome"] == [False]
    with open(os.path.join(directory, "postmortem.md"), encoding="utf-8") as handle:
        postmortem = handle.read()
    assert "MOLECULE-ROLLBACK" in postmortem and "Run the smoke checks" in postmortem
    with open(os.path.join(directory, "timeline.html"), encoding="utf-8") as handle:
        assert handle.read().count("data-row=") == len(run["tasks"])


def test_without_confirmation_the_restore_refuses_and_changes_nothing(host):
    add_canary(host, "canary-unconfirmed")
    before, present = counts(host), databases(host)
    with unchanged():  # every host's files, units, containers and databases
        rc, out = playbook("restore_database.yml", "incident_id=MOLECULE-UNCONFIRMED")
    assert rc != 0 and "Nothing was changed" in out and "confirm=true" in out
    assert counts(host) == before and databases(host) == present  # no staging copy, no swap
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_a_migration_that_changes_the_backed_up_rows_is_caught_by_the_row_counts_and_rolled_back(host):
    # A data migration that adds a client (the real service's own CLI, run on the staging copy as migrations are):
    # smoke passes, but the live row counts no longer equal the manifest's.
    add_canary(host, "canary-row-counts")
    before = counts(host)
    migration = ["wa-mcp", "keys", "issue", "--client", "added-by-a-migration"]
    rc, out = restore_with({"db_restore_migrate_command": migration}, "MOLECULE-ROW-COUNTS")
    assert rc != 0 and "Check the row counts against the backup's manifest" in out
    assert re.search(r"row counts of wa_mcp differ from what was expected: [^.]*\bclients \d+ \(expected \d+\)", out), out
    assert "rolled back" in out
    assert counts(host) == before  # the previous database is live again, canary included
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_a_migration_that_fails_inside_the_swap_is_rolled_back_with_the_app_up(host):
    # Without db_restore_migrate_database_env the migrations run inside the swap, while the app is stopped
    # (pg_restore's app_migrate_command); a failure there puts the previous database back and starts the app.
    add_canary(host, "canary-swap-migration")
    before, present = counts(host), databases(host)
    rc, out = restore_with({"db_restore_migrate_database_env": "", "db_restore_migrate_command": ["false"]}, "MOLECULE-SWAP-MIGRATION")
    assert rc != 0 and "after the swap" in out and "rolled back" in out
    assert counts(host) == before
    assert len([name for name in databases(host) if name.startswith("wa_mcp_failed_restore_")]) > \
        len([name for name in present if name.startswith("wa_mcp_failed_restore_")])
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_a_restore_killed_during_its_smoke_checks_is_checked_again_by_the_next_run(host):
    """The controller dies (SIGKILL to the whole ansible-playbook) while the smoke checks run on the restore it just
    swapped in. The restore is live and unverified; the dead run's lock holds the next run off until the operator
    breaks it; then the same incident does not restore again but runs the smoke checks and row counts again."""
    add_canary(host, "canary-killed")
    present = databases(host)
    marker = "/tmp/smoke-started-killed"
    in_app = "docker compose --project-directory /opt/whatsapp-mcp exec -T app"
    smoke = ["sh", "-c", f"touch {marker}; exec sleep 120"]
    run = started_playbook("restore_database.yml", "incident_id=MOLECULE-KILLED", "confirm=true",
                           json.dumps({"db_restore_smoke_command": smoke}))
    try:
        assert eventually(lambda: host.run(f"{in_app} test -f {marker}").rc == 0, timeout=300), "the smoke checks never started"
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        host.check_output(f"{in_app} rm -f {marker}")
        assert not canaries(host), "the restore is live: the rows written after the backup are gone"

        rc, out = restore_with({}, "MOLECULE-KILLED")
        assert rc != 0 and "incident_run_break_lock=true" in out, out

        rc, out = playbook("restore_database.yml", "incident_id=MOLECULE-KILLED", "confirm=true", "incident_run_break_lock=true")
        assert rc == 0, out
        assert "wa_mcp already is the restore of change MOLECULE-KILLED" in out, "restored again instead of checked again"
        assert "Run the smoke checks" in out and "Check the row counts against the backup's manifest" in out
        assert not canaries(host)
        assert not [name for name in set(databases(host)) - set(present) if "failed_restore" in name], "nothing was rolled back"
        assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_a_dry_run_finds_a_corrupt_dump_and_changes_nothing(host):
    dump = host.check_output("ls /var/lib/whatsapp-mcp/backups/db-*.sql.gz | sort | tail -n 1")
    with restored(host, dump):
        # One byte in the middle of the newest dump inverted, as a bad disk would.
        flip = ("import os, sys; f = open(sys.argv[1], 'r+b'); f.seek(os.path.getsize(sys.argv[1]) // 2); b = f.read(1); "
                "f.seek(-1, 1); f.write(bytes([b[0] ^ 0xFF]))")
        host.check_output(f'python3 -c "{flip}" {dump}')
        rc, out = playbook("restore_database.yml", "incident_id=MOLECULE-CORRUPT-CHECK", "backup=latest", check=True)
    assert rc != 0
    assert "does not match its manifest" in out and "corrupt" in out, out


# A migration that leaves the restored database one nobody can connect to: the real service's /health stays red
# (its database check fails) once the restore is live.
# (From the maintenance database: PostgreSQL refuses it from a session of the database itself.)
UNREACHABLE = ["python3", "-c", "import os; from wa_mcp.config import Config; from wa_mcp import db; target = Config.from_env().db_name; "
               "conn = db.connect(Config.from_env(dict(os.environ, WA_DB_NAME='postgres'))); conn.autocommit = True; "
               "conn.cursor().execute('ALTER DATABASE %s ALLOW_CONNECTIONS false' % target)"]


def test_a_restore_on_which_health_stays_red_is_rolled_back_with_the_service_up(host):
    add_canary(host, "canary-red-health")
    before, present = counts(host), databases(host)
    try:
        rc, out = restore_with({"db_restore_migrate_command": UNREACHABLE, "db_restore_health_timeout": 20}, "MOLECULE-RED-HEALTH")
        # Which notices first depends on the machine's speed: the module's own wait for /health, or compose's
        # `up --wait`, which fails once the app's container health check turns unhealthy. Both roll back.
        assert rc != 0 and "rolled back" in out, out
        assert "did not answer 200 within 20 s" in out or "starting the app (--detach --wait app) failed" in out, out
        assert counts(host) == before  # the previous database is live again, canary included
        failed = sorted(set(databases(host)) - set(present))
        assert len(failed) == 1 and failed[0].startswith("wa_mcp_failed_restore_")  # the restore that stayed red, kept
        assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"
    finally:
        for name in set(databases(host)) - set(present):
            # Quoted: the kept database's name has upper-case letters (its UTC stamp).
            host.check_output(f"{PSQL} -d postgres -c 'ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true'")
