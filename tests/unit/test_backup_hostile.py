# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup with hostile options and a hostile backup directory (real PostgreSQL 15, real files and symlinks).

The module runs as root and the backup directory may be writable by the service: nothing may be written outside
it, and no symlink found in it may be followed or become the backup.
"""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from conftest import PG_BINDIR  # pylint: disable=import-error


@pytest.fixture(scope="module", name="source")
def source_fixture(pg_server):
    subprocess.run([str(PG_BINDIR / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c",
                    "DROP DATABASE IF EXISTS backup_src", "-c", "CREATE DATABASE backup_src"],
                   env=dict(os.environ, **pg_server.env), check=True, capture_output=True)
    subprocess.run([str(PG_BINDIR / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "backup_src", "-c",
                    "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 100)"],
                   env=dict(os.environ, **pg_server.env), check=True, capture_output=True)
    return "backup_src"


@pytest.fixture(name="conn")
def conn_fixture(pg_server):
    return dict(login_unix_socket=pg_server.host, login_port=pg_server.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))


def tree(path):
    """Every path under `path`, links not followed: what must not change."""
    found = set()
    for current, dirs, files in os.walk(path):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(current, name), path))
    return found


@pytest.mark.parametrize("prefix", ["../escaped-", "sub/../../escaped-", "/tmp/absolute-", "a/b-", "", ".hidden-", "db-\0-"],
                         ids=["parent", "parent via a subdirectory", "absolute", "subdirectory", "empty", "hidden", "NUL"])
@pytest.mark.parametrize("fmt", ["plain", "directory"])
def test_a_prefix_that_leaves_the_backup_directory_is_refused(run_module, source, conn, tmp_path, prefix, fmt):
    dest = tmp_path / "backups"
    (dest / "sub").mkdir(parents=True)
    before = tree(tmp_path)
    for check_mode in (True, False):
        result = run_module("pg_backup", dict(db=source, dest=str(dest), prefix=prefix, format=fmt, **conn), check_mode=check_mode)
        expected = "holds a NUL byte" if "\0" in prefix else "nothing was dumped"
        assert result.get("failed") and "prefix" in result["msg"] and expected in result["msg"], result
    assert tree(tmp_path) == before
    assert not [name for name in os.listdir("/tmp") if name.startswith("absolute-")]


def test_the_backup_function_refuses_such_a_prefix_too(pg_server, source, tmp_path):
    """_cli.backup_db (the nightly job) calls _pg_backup.backup directly, with the prefix of its config file."""
    from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_backup  # pylint: disable=import-outside-toplevel
    runtime = _pg.Runtime(login_user="postgres", login_unix_socket=pg_server.host, login_port=pg_server.port, pg_bin_dir=str(PG_BINDIR))
    dest = tmp_path / "backups"
    dest.mkdir()
    with pytest.raises(_pg_backup.BackupError, match="prefix"):
        _pg_backup.backup(runtime, source, str(dest), prefix="../escaped-")
    assert tree(tmp_path) == {"backups"}


def test_a_directory_dump_never_follows_a_planted_partial_symlink(run_module, source, conn, backup_key, tmp_path):
    dest, elsewhere = tmp_path / "backups", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / ".db-2026-11-22.dir.partial").symlink_to(elsewhere)
    result = run_module("pg_backup", dict(db=source, dest=str(dest), format="directory", stamp="2026-11-22", **conn, **backup_key.signing()))
    assert result.get("changed") and not result.get("failed"), result.get("msg")
    final = dest / "db-2026-11-22.dir"
    assert stat.S_ISDIR(os.lstat(final).st_mode) and (final / "toc.dat").is_file()
    assert not list(elsewhere.iterdir())
    assert not os.path.lexists(dest / ".db-2026-11-22.dir.partial")
    assert run_module("dump_verify", dict(src=str(final), expect_tables=["items"], **backup_key.trust()))["verified"]


@pytest.mark.parametrize("fmt", ["plain", "directory"])
def test_a_symlink_at_the_final_name_is_refused_then_replaced_never_followed(run_module, source, conn, tmp_path, fmt):
    dest, elsewhere = tmp_path / "backups", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    name = "db-2026-11-22" + (".dir" if fmt == "directory" else ".sql.gz")
    target = elsewhere / name
    if fmt == "directory":
        target.mkdir()
        (target / "keep").write_text("mine")
    else:
        target.write_text("mine")
    (dest / name).symlink_to(target)
    params = dict(db=source, dest=str(dest), format=fmt, stamp="2026-11-22", **conn)
    refused = run_module("pg_backup", params)
    assert refused.get("failed") and "is a symlink" in refused["msg"] and "force=true" in refused["msg"], refused
    forced = run_module("pg_backup", dict(params, force=True))
    assert forced.get("changed") and not forced.get("failed"), forced.get("msg")
    assert not os.path.islink(dest / name) and os.path.lexists(dest / name)
    assert (target / "keep" if fmt == "directory" else target).read_text() == "mine"


@pytest.mark.parametrize("stamp", ["2026-13-45", "2026-02-30", "2026-11-22T2561Z"])
def test_a_stamp_that_is_not_a_real_date_is_refused(run_module, source, conn, tmp_path, stamp):
    """Retention reads the date back from the name: a backup named db-2026-13-45 would be neither kept nor pruned."""
    result = run_module("pg_backup", dict(db=source, dest=str(tmp_path), stamp=stamp, **conn))
    assert result.get("failed") and "real date" in result["msg"] and "nothing was dumped" in result["msg"], result
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["4755", "7777", "01777", "-1"])
def test_a_file_mode_beyond_0777_is_refused(run_module, source, conn, tmp_path, mode):
    result = run_module("pg_backup", dict(db=source, dest=str(tmp_path), mode=mode, **conn))
    assert result.get("failed") and "0777" in result["msg"], result
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("jobs", [65])
def test_a_job_count_beyond_what_the_server_allows_is_refused(run_module, source, conn, tmp_path, jobs):
    result = run_module("pg_backup", dict(db=source, dest=str(tmp_path), format="directory", jobs=jobs, **conn))
    assert result.get("failed") and "jobs 1..64" in result["msg"], result
    assert not list(tmp_path.iterdir())
