#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: triage_info
short_description: Check the whole service read-only and say which incident playbook to run next
version_added: 0.1.0
description:
  - The first thing on-call runs when something is wrong with the service. Run on the app host, it checks the
    systemd units, the compose containers, C(/health), the files the service needs to start, who holds ports 80 and
    443, the recent error lines of the containers' logs, memory and OOM kills, disk space and inodes, the TLS
    certificates, the database (reachable, connections, long queries, idle transactions, lock chains), the age of
    the newest backup, the last audit integrity check, the requests nginx served and the connections the kernel tracks
    to ports 80 and 443 (per source address, before docker's DNAT) and whether the app runs the images of a verified
    release (the records of M(runbooks.incident.compose_release) in I(releases_dir)), and returns RV(findings),
    ranked, each naming the playbook to run next and the variables to pass (RV(next_steps) has the commands).
  - Read-only, and bounded in time; every command and probe has a short timeout, and all of them together at most
    45 seconds (the database's statements 10 s each). A check that cannot run is that check's C(error) in RV(checks)
    and a check that does not apply (docker, journalctl or systemd absent, a unit not installed, no compose project)
    is C(skipped) with the reason; neither fails the module.
  - "The playbook each finding names (a file under C(playbooks/)): C(service_not_starting.yml) for a unit failed or
    not running, a container exited, restarting or unhealthy or missing, C(/health) not 200, a required file missing
    or empty, a foreign program holding port 80 or 443, the database unreachable, and nginx's C(connect() failed (111)
    / ECONNREFUSED) errors; C(node_down.yml) for OOM kills (kernel log, log lines or a container C(OOMKilled)) and
    MemAvailable below 5%; C(storage_full.yml) with C(storage_full_path) (the mount point) for disk space or inodes
    over I(disk_percent) / I(inode_percent) and for C(No space left on device) in the logs;
    C(connection_flood.yml) with C(connection_flood_sources) (the addresses) for a flood suspect (by requests or by
    tracked connections); C(db_degraded.yml)
    for lock chains (C(db_degraded_blocking=true)), sessions idle in a transaction (C(db_degraded_idle_for)), long
    queries (C(db_degraded_older_than)), connections over I(connections_percent) and C(too many clients) errors;
    C(db_corruption.yml) for the database's corruption errors (C(invalid page in block), C(could not read block),
    C(checksum verification failed), C(could not open file)); C(renew_certificate.yml) for a certificate expiring
    within I(cert_days), expired, missing or unparseable; C(backup_failed.yml) for no backup or the newest older
    than I(backup_max_age_hours); C(audit_integrity.yml) for a failed audit integrity check; C(rollback.yml) (no
    variables: it rolls back to the previous verified release) when the app's container runs an image no verified
    release has while a verified release exists, and the app is in trouble (its container restarting, exited or
    unhealthy, or C(/health) not 200): a critical root cause, ranked before the crash loop it causes. Unclassified
    log errors, a high share of 5xx answers and an app that runs an unverified or unrecorded image but is healthy are
    findings without a playbook (C(playbook=null))."
  - Never returns a secret. Log lines are never returned, only their signatures (numbers, hex, UUIDs, IP and
    e-mail addresses, quoted strings, runs of 16 or more token-like characters and the value after a secret-looking
    key such as C(password=) replaced by placeholders), counted per signature. Statements of database sessions are
    shown as M(runbooks.incident.pg_sessions) shows them (hidden when they may hold a secret). Every database
    transaction is read-only.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads the same in check mode; it never changes anything.
  diff_mode:
    support: none
options:
  db:
    description: The service's database, whose sessions and connections are checked.
    type: str
    default: wa_mcp
  project_dir:
    description:
      - The compose project whose containers are checked (their state, health, exit code, restarts, C(OOMKilled)) and
        whose logs are read. An empty string checks no container (the checks C(containers), C(logs) and C(requests)
        are skipped).
      - The database is reached as the postgres options say (I(compose_project_dir) for the compose runtime).
    type: path
    default: /opt/whatsapp-mcp
  app_service:
    description: The compose service of the app.
    type: str
    default: app
  web_service:
    description: The compose service of nginx; its container's logs are nginx's access log (stdout) and error log (stderr).
    type: str
    default: nginx
  units:
    description: The systemd units of the service, each checked for failed, not running, or restarting.
    type: list
    elements: str
    default: [whatsapp-mcp-secrets.service, whatsapp-mcp.service]
  health_url:
    description: The service's health endpoint; anything but HTTP 200 is a finding.
    type: str
    default: http://127.0.0.1/health
  required_files:
    description:
      - Absolute paths that must exist and be non-empty for the service to start (the TLS fullchain and private key,
        the secret files). Only their metadata is read.
    type: list
    elements: str
    default: []
  disk_paths:
    description:
      - Absolute paths whose filesystems are checked for space and inodes, each filesystem once; a path that does not
        exist is left out.
    type: list
    elements: str
    default: [/var/lib/whatsapp-mcp, /var/lib/whatsapp-mcp/backups, /var/lib/docker, /var/log, /]
  disk_percent:
    description: Percent of a filesystem's space used (as C(df) counts it) at or above which it is a finding (1 to 100).
    type: int
    default: 90
  inode_percent:
    description: Percent of a filesystem's inodes used at or above which it is a finding (1 to 100).
    type: int
    default: 90
  certificates:
    description: PEM certificates (absolute paths) whose expiry is checked; a missing or unparseable one is a finding.
    type: list
    elements: str
    default: [/etc/whatsapp-mcp/tls/fullchain.pem]
  cert_days:
    description: A certificate valid for this many days or fewer is a finding.
    type: int
    default: 14
  backup_dir:
    description: The directory of the local backups (absolute). Links in it are never followed.
    type: path
    default: /var/lib/whatsapp-mcp/backups
  backup_pattern:
    description:
      - The file name pattern (shell glob, no C(/)) of a backup's manifest in I(backup_dir); the newest one's
        modification time is the age of the last backup. A manifest that is a symlink or not a regular file does not
        count.
    type: str
    default: db-*.manifest.json
  backup_max_age_hours:
    description: A newest backup older than this many hours is a finding (a high one above twice that).
    type: int
    default: 26
  audit_integrity_unit:
    description: The unit of the audit integrity check, whose last result (C(Result), C(ExecMainStatus)) is checked. Not installed, the check is skipped.
    type: str
    default: runbooks-audit-integrity.service
  since_minutes:
    description: The window, in minutes, of the logs read, the OOM kills counted and the requests counted.
    type: int
    default: 15
  long_query_seconds:
    description: A transaction or statement running longer than this many seconds is a long query.
    type: int
    default: 300
  idle_in_transaction_seconds:
    description: A session idle in a transaction longer than this many seconds is a finding.
    type: int
    default: 60
  connections_percent:
    description: Client connections at or above this percent of those available (C(max_connections) minus C(superuser_reserved_connections)) is a finding.
    type: int
    default: 80
  flood_requests:
    description: A client address with more than this many requests in the window is a flood suspect (when it also has I(flood_share) of them).
    type: int
    default: 600
  flood_connections:
    description: A source address holding more than this many tracked TCP connections to ports 80 and 443 (any state,
      C(TIME_WAIT) included) is a flood suspect (when it also holds I(flood_share) of them).
    type: int
    default: 300
  flood_share:
    description: The share of all requests in the window, or of all tracked connections (above 0, at most 1), a flood suspect must also have.
    type: float
    default: 0.5
  releases_dir:
    description:
      - The directory of the release records M(runbooks.incident.compose_release) makes at each deploy (its I(dir)).
        The check C(release) compares them with the image id the container of I(app_service) runs (as
        C(docker inspect) says). Only read, never through a symlink (a symlinked directory or record makes the check
        C(error)); a record that cannot be read makes the check C(error) with the reason. No directory, or no record
        in it, and the check is skipped.
    type: path
    default: /var/lib/runbooks-incident/releases/whatsapp-mcp
  checks:
    description:
      - The checks to run, by name (default all). C(ports) runs only when C(/health) is not 200 or the web container
        is not running, and is skipped otherwise.
    type: list
    elements: str
    choices: [units, containers, health, required_files, ports, logs, memory, disk, certificates, database, backups, audit_integrity, requests, connections,
              release]
    default: [units, containers, health, required_files, ports, logs, memory, disk, certificates, database, backups, audit_integrity, requests, connections,
              release]
  incident_id:
    description:
      - The incident's id (letters, digits and C(._:-), at most 64), only echoed in the commands of RV(next_steps);
        without it they hold the placeholder C(<incident_id>), which the playbooks refuse until it is replaced.
    type: str
notes:
  - Needs the Python cryptography library for the certificates check (without it that check is C(error)).
  - The logs are read with C(docker compose logs --since <since_minutes>m --no-color --timestamps); the kernel log with
    C(journalctl -k); the listeners with C(ss -ltnpH); the units with C(systemctl show); the tracked connections from
    C(/proc/net/nf_conntrack) (or C(conntrack -L) where that file does not exist).
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: What is wrong with the service?
  runbooks.incident.triage_info:
    compose_project_dir: /opt/whatsapp-mcp
    login_user: wa
    required_files:
      - /etc/whatsapp-mcp/tls/fullchain.pem
      - /etc/whatsapp-mcp/tls/privkey.pem
      - /run/secrets/db_password
    incident_id: INC-2026-0042
  register: triage

- name: Show what to run next
  ansible.builtin.debug:
    var: triage.next_steps

- name: Only the disk and the backups, with a tighter threshold
  runbooks.incident.triage_info:
    checks: [disk, backups]
    disk_percent: 80
"""

RETURN = r"""
msg:
  description: How many findings, the first one, and the checks that did not run.
  returned: always
  type: str
  sample: "2 findings (disk, health); first: /var/lib/whatsapp-mcp is all but full"
healthy:
  description: Whether there is no critical and no high finding.
  returned: success
  type: bool
  sample: false
findings:
  description:
    - What is wrong, ranked (C(rank) 1 first) by severity, then a root cause (full disk, database unreachable, OOM,
      missing required file, foreign port holder, flood, a bad deploy) before a crash (units, containers) before the red C(/health)
      it causes, then in the order of the checks.
    - Each has C(check) (the check that found it), C(severity) (C(critical), C(high) or C(warning)), C(title) (one
      line), C(evidence) (short strings; never a secret, never a raw log line), C(playbook) (a file name under
      C(playbooks/), or null when no playbook applies), C(extra_vars) (the variables to pass it, besides
      C(incident_id)) and C(rank).
  returned: success
  type: list
  elements: dict
  sample:
    - check: disk
      severity: critical
      title: /var/lib/whatsapp-mcp is all but full
      evidence: ["/var/lib/whatsapp-mcp (holds /var/lib/whatsapp-mcp): 99.1% of its space used (80 MiB free)"]
      playbook: storage_full.yml
      extra_vars: {storage_full_path: /var/lib/whatsapp-mcp}
      rank: 1
    - check: health
      severity: critical
      title: http://127.0.0.1/health is not 200 (HTTP 503)
      evidence: [HTTP 503]
      playbook: service_not_starting.yml
      extra_vars: {}
      rank: 2
checks:
  description:
    - Per check run, C(status) (C(ok), C(problem), C(error) when it could not run, C(skipped) when it does not
      apply) and C(detail) (what it saw, the findings' titles, or why it did not run).
  returned: success
  type: dict
  sample:
    disk: {status: problem, detail: /var/lib/whatsapp-mcp is all but full}
    units: {status: skipped, detail: systemd is not running on this host}
    database: {status: ok, detail: 12 of 100 connections}
next_steps:
  description:
    - The command of each finding's playbook, in rank order, each command once
      (C(ansible-playbook playbooks/<playbook> -e incident_id=<id> -e name=value ...)), every word quoted for a
      shell (shlex); a value that is not a string is passed as a JSON object of its own C(-e).
  returned: success
  type: list
  elements: str
  sample:
    - ansible-playbook playbooks/storage_full.yml -e incident_id=INC-2026-0042 -e storage_full_path=/var/lib/whatsapp-mcp
    - ansible-playbook playbooks/service_not_starting.yml -e incident_id=INC-2026-0042
incident_id:
  description: I(incident_id), when given.
  returned: when given
  type: str
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _triage


def main():
    module = _params.postgres_module(dict(
        db=dict(type="str", default="wa_mcp"),
        project_dir=dict(type="path", default="/opt/whatsapp-mcp"),
        app_service=dict(type="str", default="app"),
        web_service=dict(type="str", default="nginx"),
        units=dict(type="list", elements="str", default=["whatsapp-mcp-secrets.service", "whatsapp-mcp.service"]),
        health_url=dict(type="str", default="http://127.0.0.1/health"),
        required_files=dict(type="list", elements="str", default=[]),
        disk_paths=dict(type="list", elements="str",
                        default=["/var/lib/whatsapp-mcp", "/var/lib/whatsapp-mcp/backups", "/var/lib/docker", "/var/log", "/"]),
        disk_percent=dict(type="int", default=90),
        inode_percent=dict(type="int", default=90),
        certificates=dict(type="list", elements="str", default=["/etc/whatsapp-mcp/tls/fullchain.pem"]),
        cert_days=dict(type="int", default=14),
        backup_dir=dict(type="path", default="/var/lib/whatsapp-mcp/backups"),
        backup_pattern=dict(type="str", default="db-*.manifest.json"),
        backup_max_age_hours=dict(type="int", default=26),
        releases_dir=dict(type="path", default="/var/lib/runbooks-incident/releases/whatsapp-mcp"),
        audit_integrity_unit=dict(type="str", default="runbooks-audit-integrity.service"),
        since_minutes=dict(type="int", default=15),
        long_query_seconds=dict(type="int", default=300),
        idle_in_transaction_seconds=dict(type="int", default=60),
        connections_percent=dict(type="int", default=80),
        flood_requests=dict(type="int", default=600),
        flood_connections=dict(type="int", default=300),
        flood_share=dict(type="float", default=0.5),
        checks=dict(type="list", elements="str", choices=list(_triage.CHECKS), default=list(_triage.CHECKS)),
        incident_id=dict(type="str"),
    ))
    try:
        result = _triage.run(module.params)
    except (_triage.TriageError, _pg.PgError) as exc:
        module.fail_json(msg="%s; nothing was read or changed" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
