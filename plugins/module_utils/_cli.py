# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-side entry point of the scheduled jobs (systemd timers). PRIVATE to the collection.

The `scheduled_jobs` role copies this package tree to the host, and each timer's service runs
`python3 -m ansible_collections.runbooks.incident.plugins.module_utils._cli <job> --config <file.json>`:
the same code the modules run, without Ansible on the host. The result is one JSON line on stdout (the journal);
failures exit non-zero with one line on stderr, so systemd marks the unit failed (and triggers its OnFailure=).
"""
from __future__ import annotations

import argparse
import json
import sys

from ansible_collections.runbooks.incident.plugins.module_utils import _dumpfile, _pg, _pg_backup, _retention
from ansible_collections.runbooks.incident.plugins.module_utils._pg_restore import archive_tool_for

RUNTIME_KEYS = ("login_user", "login_password", "login_host", "login_port", "login_unix_socket", "compose_project_dir",
                "compose_service", "maintenance_db", "pg_bin_dir")


def backup_db(config):
    """The nightly database backup: dump with manifest, verify it, prune by grandfather-father-son."""
    runtime = _pg.Runtime.from_params({key: config.get(key) for key in RUNTIME_KEYS})
    result = _pg_backup.backup(runtime, config["db"], config["dest"], fmt=config.get("format", "plain"),
                               compress_level=config.get("compress_level", 1), jobs=config.get("jobs", 2),
                               prefix=config.get("prefix", "db-"))
    summary = dict(job="backup-db", path=result["path"], changed=result["changed"],
                   row_counts=result["manifest"]["row_counts"], size=result["manifest"]["size"])
    if config.get("verify", True):
        # Raises unless the file on disk decompresses whole and its rows equal the manifest's.
        _dumpfile.verify(result["path"], expect_tables=config.get("expect_tables", []), archive_tool=archive_tool_for(runtime))
        summary["verified"] = True
    removed, removed_partials, failures = _retention.apply(_retention.plan(
        config["dest"], config.get("prefix", "db-"), config.get("keep_daily", 30), config.get("keep_monthly", 12),
        config.get("keep_yearly", 0), config.get("stale_partial_hours", 24)))
    summary["pruned"] = sorted(removed + removed_partials)
    if failures:
        raise _retention.RetentionError("could not prune %s" % "; ".join("%s (%s)" % failure for failure in failures))
    return summary


JOBS = {"backup-db": backup_db}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="runbooks-incident", description="Scheduled jobs of runbooks.incident")
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--config", required=True, help="JSON file with the job's settings (mode 0600: may hold a password)")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        summary = JOBS[args.job](config)
    except (OSError, ValueError, KeyError, _pg.PgError, _pg_backup.BackupError, _dumpfile.DumpError) as exc:
        sys.stderr.write("runbooks-incident %s failed: %s\n" % (args.job, exc))
        return 1
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
