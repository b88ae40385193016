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
import os
import sys
import tempfile

from ansible_collections.runbooks.incident.plugins.module_utils import (
    _audit_manifest, _audit_ship, _dumpfile, _evidence, _media, _offsite, _page, _pg, _pg_backup, _retention, _s3store, _signature,
)
from ansible_collections.runbooks.incident.plugins.module_utils._pg_restore import archive_tool_for

RUNTIME_KEYS = ("login_user", "login_password", "login_host", "login_port", "login_unix_socket", "compose_project_dir",
                "compose_service", "maintenance_db", "pg_bin_dir")


def backup_db(config):
    """The nightly database backup: dump with manifest, verify it, prune by grandfather-father-son."""
    runtime = _pg.Runtime.from_params({key: config.get(key) for key in RUNTIME_KEYS})
    signing_key = config.get("signing_key") or None
    result = _pg_backup.backup(runtime, config["db"], config["dest"], fmt=config.get("format", "plain"),
                               compress_level=config.get("compress_level", 1), jobs=config.get("jobs", 2),
                               prefix=config.get("prefix", "db-"), signing_key=signing_key)
    summary = dict(job="backup-db", path=result["path"], changed=result["changed"], signed=result["signed"],
                   row_counts=result["manifest"]["row_counts"], size=result["manifest"]["size"])
    if config.get("verify", True):
        # Raises unless the file on disk decompresses whole, its rows equal the manifest's and this host signed it.
        signed = result["signed"] and signing_key  # a dump from before this host signed is verified as unsigned
        trust = _signature.Trust([_signature.public_key_of(signing_key)] if signed else [], accept_unsigned=not signed)
        _dumpfile.verify(result["path"], trust, expect_tables=config.get("expect_tables", []), archive_tool=archive_tool_for(runtime))
        summary["verified"] = True
    summary["pruned"] = prune(config["dest"], config.get("prefix", "db-"), config.get("keep_daily", 30),
                              config.get("keep_monthly", 12), config.get("keep_yearly", 0))
    return summary


def backup_media(config):
    """Nightly: hard-linked snapshot of the media directory, then grandfather-father-son pruning (daily only)."""
    result = _media.snapshot(config["src"], config["dest"], prefix=config.get("prefix", "media-"))
    summary = dict(job="backup-media", path=result["path"], changed=result["changed"], link_dest=result["link_dest"],
                   files_transferred=result.get("files_transferred", 0))
    summary["pruned"] = prune(config["dest"], config.get("prefix", "media-"), config.get("keep_daily", 30), 0, 0)
    return summary


def prune(dest, prefix, keep_daily, keep_monthly, keep_yearly, stale_partial_hours=24):
    removed, removed_partials, failures = _retention.apply(_retention.plan(
        dest, prefix, keep_daily, keep_monthly, keep_yearly, stale_partial_hours))
    if failures:
        raise _retention.RetentionError("could not prune %s" % "; ".join("%s (%s)" % failure for failure in failures))
    return sorted(removed + removed_partials)


def audit_ship(config):
    """Hourly: send the audit archive's new files to the log server (append-only there)."""
    summary = _audit_ship.ship(config["root"], _audit_ship.ssh_command(
        config["host"], config["user"], config["key"], config["known_hosts"], config.get("port", 22)),
        grace_seconds=int(config.get("grace_minutes", 5)) * 60)
    summary.update(job="audit-ship", missing=len(summary["missing"]), stored=len(summary["stored"]))
    if summary["conflicts"] or summary["size_mismatch"]:
        raise _audit_ship.ShipError("the log server holds different content for %s: possible tampering, see audit_integrity"
                                    % ", ".join((summary["conflicts"] + summary["size_mismatch"])[:10]))
    return summary


def audit_receive(config):
    """The log server's forced command for one sender: list, put, manifest (SSH_ORIGINAL_COMMAND)."""
    _audit_ship.receiver_main(config["root"], os.environ.get("SSH_ORIGINAL_COMMAND", ""), sys.stdin.buffer, sys.stdout.buffer,
                              cache=config.get("cache"))


def audit_integrity(config):
    """Hourly (incremental) and daily (full): this host's manifest of its audit archive against the one the log server
    computes of its copy. On a mismatch this host's versions are preserved as evidence and the job fails (pages)."""
    full = bool(config.get("full", False))
    local = _audit_manifest.build(config["root"], cache_path=config["cache"], full=full)
    ssh = _audit_ship.ssh_command(config["host"], config["user"], config["key"], config["known_hosts"], config.get("port", 22))
    remote = _audit_manifest.validate(_audit_ship.remote_call(ssh, "manifest-full" if full else "manifest"), "the log server's manifest")
    result = _audit_manifest.diff(local, remote, int(config.get("grace_minutes", 90)) * 60)
    summary = dict(job="audit-integrity", full=full, files=result["local_count"], hashed=local["hashed"],
                   pending=len(result["pending"]), root=result["local_root"])
    if not result["ok"]:
        dest = os.path.join(config["evidence_dir"], "audit-integrity-%d" % local["generated_at"], "local")
        _audit_manifest.preserve(config["root"], [item["path"] for item in result["mismatches"]], dest)
        raise _audit_manifest.ManifestError("the audit archive differs from the log server's copy (%d mismatches, this "
                                            "host's versions kept in %s): %s" % (len(result["mismatches"]), dest,
                                                                                 _audit_manifest.summary_line(result)))
    return summary


def audit_retention(config):
    """Daily on the log server: remove archive files dated (YYYY/MM/DD in their path) more than keep_years ago."""
    removed = _audit_ship.prune_years(config["root"], int(config.get("keep_years", 5)))
    return dict(job="audit-retention", removed=len(removed), examples=removed[:5])


def offsite_sync(config):
    """Nightly: ship the backup sets off-host (age-encrypted, verified), then off-host retention."""
    result = {}
    keep = (config.get("keep_daily", 30), config.get("keep_monthly", 12), config.get("keep_yearly", 0))
    _offsite.sync(_s3store.store_from(config), config["src"], config.get("prefixes", ["db-", "media-"]), config["recipient"], keep=keep,
                  result=result)
    return dict(job="offsite-sync", uploaded=len(result.get("uploaded", [])), removed=len(result.get("removed", [])),
                bytes_uploaded=result.get("bytes_uploaded", 0), warnings=result.get("warnings", []))


def offsite_check(config):
    """Monthly (the seeds' dump check, where the age key is): fetch the newest off-host database backup into a
    temporary directory, decrypt it, verify it whole (tables, row counts against its manifest), remove it."""
    with tempfile.TemporaryDirectory(prefix="runbooks-offsite-check-") as work:
        fetched = _offsite.fetch(_s3store.store_from(config), work, config["identity"], ["db-"])
        dumps = [path for path in fetched["fetched"] if path.rstrip("/").endswith(_dumpfile.KNOWN_SUFFIXES)]
        if not dumps:
            raise _offsite.OffsiteError("no complete database backup off-host")
        verified = _dumpfile.verify(dumps[0], trust_of(config), expect_tables=config.get("expect_tables", []))
    return dict(job="offsite-check", backup=fetched["sets"].get("db-"), tables=len(verified["tables"]),
                row_counts=verified["row_counts"], signer=verified["signature"]["signer"])


def trust_of(config):
    """The backups a job believes: signed by `trusted_keys`, or by this host's own backup key (`local_signing_key`,
    read when the job runs: the key may be made after the job was installed)."""
    keys = list(config.get("trusted_keys", []))
    local = config.get("local_signing_key")
    if local and os.path.isfile(local):
        with open(local, encoding="utf-8") as handle:
            keys.append(handle.read().strip())
    return _signature.Trust(keys, config.get("accept_unsigned", False))


def evidence_check(config):
    """Daily on the log server: the evidence log's chain holds, it still holds every anchored head (`anchor_dir`), and
    its newest matching row is recent enough."""
    _columns, rows = _evidence.verify(config["path"], config.get("anchor_dir") or _evidence.default_anchor_dir(config["path"]))
    newest = _evidence.newest(rows, config.get("where"), config.get("max_age_days"))
    return dict(job="evidence-check", rows=len(rows), newest=newest["id"], date=newest["date (UTC)"])


def page(config):
    """runbooks-page@.service, the OnFailure= of the scheduled jobs: page that unit --unit failed, with its journal."""
    if not config.get("url"):
        return dict(job="page", unit=config.get("unit"), sent=False, msg="no pager URL configured")
    return _page.page_job(config, config.get("unit"))


JOBS = {"backup-db": backup_db, "backup-media": backup_media, "audit-ship": audit_ship, "audit-receive": audit_receive,
        "audit-integrity": audit_integrity, "audit-retention": audit_retention, "evidence-check": evidence_check, "offsite-sync": offsite_sync,
        "offsite-check": offsite_check, "page": page}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="runbooks-incident", description="Scheduled jobs of runbooks.incident")
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--config", required=True, help="JSON file with the job's settings (mode 0600: may hold a password)")
    parser.add_argument("--unit", help="job page: the failed systemd unit (runbooks-page@.service passes %%i)")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        if args.unit is not None:
            config["unit"] = args.unit
        summary = JOBS[args.job](config)
    except (OSError, ValueError, KeyError, _pg.PgError, _pg_backup.BackupError, _dumpfile.DumpError, _audit_ship.ShipError, _audit_manifest.ManifestError,
            _media.MediaError, _page.PageError, _evidence.EvidenceError,
            *_offsite.ERRORS, _signature.SignatureError) as exc:
        sys.stderr.write("runbooks-incident %s failed: %s\n" % (args.job, exc))
        return 1
    if summary is not None:  # the receiver answers on stdout itself
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
