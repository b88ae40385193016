# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage_full role through ansible-playbook on localhost, on real files and a real PostgreSQL: rotated logs,
signed database dumps written by pg_backup (three days, the policy keeps one) and a table with expired rows. The
diagnosis changes nothing and says how much each could reclaim; an unconfirmed run and a check run change nothing;
the confirmed run deletes the rotated logs, the backups the policy drops (never the newest, verified) and the expired
rows, and reports before and after; a newest dump that does not verify stops any backup from being removed; more
rows than storage_full_max_rows stop the run before anything is deleted. Docker and the journal are not touched
(their measures are off: this host's are not the test's)."""
from __future__ import annotations

import contextlib
import hashlib

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error

EXPIRED = "created_at < now() - interval '90 days'"
ROTATED = ["syslog.1", "syslog.2.gz", "app/app.log.1"]
STAMPS = ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.fixture(name="setup")
def setup_fixture(pg_server, backup_key, tmp_path, request, run_module):
    db = "sf_%s" % hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    pg_server.create_database(db)
    with contextlib.closing(pg_server.connect(db)) as connection, connection.cursor() as cur:
        connection.autocommit = True
        cur.execute("CREATE TABLE media_messages (id serial PRIMARY KEY, created_at timestamptz NOT NULL, body text)")
        cur.execute("INSERT INTO media_messages (created_at, body) SELECT now() - (100 + i) * interval '1 day', 'old' FROM generate_series(1, 40) i")
        cur.execute("INSERT INTO media_messages (created_at, body) SELECT now(), 'new' FROM generate_series(1, 10)")
    logs, backups = tmp_path / "log", tmp_path / "backups"
    for name in ROTATED + ["syslog", "app/app.log"]:
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / name).write_bytes(b"l" * 20000)
    backups.mkdir()
    conn = dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))
    for stamp in STAMPS:
        result = run_module("pg_backup", dict(db=db, dest=str(backups), stamp=stamp, **conn, **backup_key.signing()))
        assert not result.get("failed"), result
    key = tmp_path / "signing.pub"
    key.write_text(backup_key.public + "\n")
    role_vars = dict(
        storage_full_paths=[str(tmp_path)], storage_full_log_dirs=[str(logs)], storage_full_docker=False, storage_full_journal=False,
        storage_full_largest=5, storage_full_backup_dir=str(backups),
        storage_full_backup_policies=[dict(prefix="db-", keep_daily=1, keep_monthly=0, keep_yearly=0)],
        storage_full_backup_local_signing_key=str(key), storage_full_backup_expect_tables=["media_messages"],
        storage_full_expired_rows=[dict(name="old_media_rows", table="media_messages", where=EXPIRED)],
        storage_full_db=db, storage_full_project_dir="", storage_full_login_user="postgres", storage_full_login_host=pg_server.host,
        storage_full_login_port=pg_server.port, storage_full_verify=False)
    return dict(db=db, logs=logs, backups=backups, vars=role_vars, server=pg_server)


def rows(setup):
    with contextlib.closing(setup["server"].connect(setup["db"])) as connection, connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM media_messages")
        return cur.fetchone()[0]


def dumps(setup):
    return sorted(path.name for path in setup["backups"].iterdir() if path.name.endswith(".sql.gz"))


def play(ansible_play, setup, check=False, **extra):
    tasks = [{"name": "Storage full", "ansible.builtin.include_role": {"name": "runbooks.incident.storage_full"}}]
    return ansible_play(tasks, check=check, extra_vars=dict(setup["vars"], **extra))


def task(result, name):
    """The result of the role's task `name` (ansible-playbook names it after the role)."""
    return result["runbooks.incident.storage_full : " + name]


def untouched(setup):
    return all((setup["logs"] / name).exists() for name in ROTATED) and len(dumps(setup)) == 3 and rows(setup) == 50


def test_the_diagnosis_says_what_could_be_reclaimed_and_changes_nothing(ansible_play, setup):
    result = play(ansible_play, setup)
    assert result.rc == 0, result.stdout[-3000:] + result.stderr
    report = task(result, "Report the diagnosis")["msg"]
    assert report["expired_rows"][1].startswith("old_media_rows | media_messages | 40 | ")
    assert report["backups"][1].startswith("db- | 6 | ") and report["backups"][1].endswith(" | 1 | 2026-01-03"), report["backups"]
    assert any(line.startswith("rotated_logs | ") for line in report["reclaimable"])
    assert "only diagnoses" in report["next"] and untouched(setup)


def test_without_confirm_and_in_check_mode_nothing_is_reclaimed(ansible_play, setup):
    reclaim = ["rotated_logs", "backups", "expired_rows"]
    refused = play(ansible_play, setup, storage_full_reclaim=reclaim)
    assert refused.rc != 0
    message = refused["runbooks.incident.incident_run : Stop unless the destructive step is confirmed"]["msg"]
    assert "delete 3 rotated log file(s)" in message and "remove 6 backup entries" in message, message
    assert "delete 40 expired row(s) (old_media_rows: 40), then VACUUM their tables" in message and untouched(setup)
    checked = play(ansible_play, setup, check=True, storage_full_reclaim=reclaim)
    assert checked.rc == 0, checked.stdout[-3000:]
    assert untouched(setup)


def test_the_confirmed_run_reclaims_keeps_the_newest_verified_dump_and_reports_before_and_after(ansible_play, setup):
    result = play(ansible_play, setup, storage_full_reclaim=["rotated_logs", "backups", "expired_rows"], confirm=True)
    assert result.rc == 0, result.stdout[-4000:] + result.stderr
    assert not any((setup["logs"] / name).exists() for name in ROTATED)
    assert (setup["logs"] / "syslog").exists() and (setup["logs"] / "app" / "app.log").exists()
    assert dumps(setup) == ["db-2026-01-03.sql.gz"] and rows(setup) == 10
    report = task(result, "Report before and after")["msg"]
    assert report["reclaimed"]["rotated_logs"].endswith(" in 3 file(s)")
    assert report["reclaimed"]["backups"].startswith("6 entries, ")
    assert report["reclaimed"]["expired_rows"][0].startswith("old_media_rows | 40 | ")
    assert report["before"][0] == report["after"][0] == "mount | used % | free | inodes used % | full" and len(report["after"]) == 2


def test_a_newest_dump_that_does_not_verify_stops_any_backup_from_being_removed(ansible_play, setup):
    newest = setup["backups"] / "db-2026-01-03.sql.gz"
    newest.write_bytes(newest.read_bytes()[:-40])
    result = play(ansible_play, setup, storage_full_reclaim=["backups"], confirm=True)
    assert result.rc != 0
    assert "does not verify" in task(result, "Refuse to prune unless the newest dump verifies and is kept")["msg"]
    assert len(dumps(setup)) == 3


def test_more_rows_than_storage_full_max_rows_stop_the_run_before_anything_is_deleted(ansible_play, setup):
    result = play(ansible_play, setup, storage_full_reclaim=["rotated_logs", "expired_rows"], storage_full_max_rows=39, confirm=True)
    assert result.rc != 0
    message = task(result, "Refuse expired rows without conditions, over storage_full_max_rows, or in a read-only database")["msg"]
    assert "more rows than storage_full_max_rows=39 would be deleted: old_media_rows: 40" in message, message
    assert untouched(setup)
