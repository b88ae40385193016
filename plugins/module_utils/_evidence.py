# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An append-only, hash-chained evidence log in Markdown (e.g. backup-drills.md). PRIVATE to the collection.

Each row is a table line; its evidence (the full JSON of what was measured) is stored beside the log under
`evidence/`, named by its SHA-256. Every row carries that digest and a chain digest,
sha256(previous chain | the row's cells | evidence digest), so editing, removing or reordering any earlier row, or
any evidence file, breaks verification from that row on. Appending refuses to extend a broken log.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

GENESIS = hashlib.sha256(b"runbooks.incident evidence log v1").hexdigest()
FIXED = ["date (UTC)", "id"]
TRAILER = ["evidence sha256", "chain"]


class EvidenceError(Exception):
    pass


def cell(value):
    return str(value).replace("|", "/").replace("\n", " ").strip()


def chain_of(previous, cells, evidence_digest):
    return hashlib.sha256(("%s|%s|%s" % (previous, "|".join(cells), evidence_digest)).encode()).hexdigest()


def evidence_path(log_path, digest):
    return os.path.join(os.path.dirname(log_path) or ".", "evidence", "%s.json" % digest)


def read(log_path):
    """(columns, rows) of the log; rows are dicts by column. ([], []) when the log does not exist yet."""
    if not os.path.exists(log_path):
        return [], []
    columns, rows = [], []
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("|") or line.startswith("|---"):
                continue
            cells = [part.strip() for part in line.strip().strip("|").split("|")]
            if not columns:
                columns = cells
                continue
            if len(cells) != len(columns):
                raise EvidenceError("%s: a row has %d cells, the header %d: %s" % (log_path, len(cells), len(columns), line.strip()))
            rows.append(dict(zip(columns, cells)))
    return columns, rows


def verify(log_path):
    """Recompute the chain and the evidence digests; returns (columns, rows). Raises naming the first broken row."""
    columns, rows = read(log_path)
    previous = GENESIS
    for number, row in enumerate(rows, 1):
        cells = [row[column] for column in columns[:-len(TRAILER)]]
        digest = row["evidence sha256"]
        path = evidence_path(log_path, digest)
        if not os.path.exists(path):
            raise EvidenceError("row %d (%s): its evidence file %s is missing" % (number, row["id"], path))
        if _fileio.sha256_file(path) != digest:
            raise EvidenceError("row %d (%s): its evidence file was changed" % (number, row["id"]))
        expected = chain_of(previous, cells, digest)
        if row["chain"] != expected:
            raise EvidenceError("row %d (%s): the chain is broken (the row, or one before it, was edited or removed)"
                                % (number, row["id"]))
        previous = expected
    return columns, rows


def append(log_path, entry_id, fields, evidence, title="Evidence log", now=None):
    """Append one row (idempotent per id). Returns (changed, row)."""
    columns, rows = verify(log_path)
    for row in rows:
        if row["id"] == entry_id:
            return False, row
    field_names = list(fields)
    if columns and columns != FIXED + field_names + TRAILER:
        raise EvidenceError("the fields %s do not match the log's columns %s" % (field_names, columns[len(FIXED):-len(TRAILER)]))
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    body = json.dumps(dict(evidence, id=entry_id, recorded_at=moment.strftime("%Y-%m-%dT%H:%M:%SZ")), sort_keys=True, indent=2)
    digest = hashlib.sha256(body.encode()).hexdigest()
    path = evidence_path(log_path, digest)
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    if not os.path.exists(path):
        with _fileio.atomic_writer(path, mode=0o440) as out:
            out.write(body.encode())
    cells = [moment.strftime("%Y-%m-%dT%H:%M:%SZ"), cell(entry_id)] + [cell(fields[name]) for name in field_names]
    chain = chain_of(rows[-1]["chain"] if rows else GENESIS, cells, digest)
    lines = []
    if not columns:
        header = FIXED + field_names + TRAILER
        lines += ["# %s" % title, "",
                  "Append-only: written by runbooks.incident.evidence_log. `evidence sha256` names the JSON under evidence/;",
                  "`chain` is sha256(previous chain | this row's cells | evidence sha256). Verify with evidence_log state=verified.",
                  "", "| %s |" % " | ".join(header), "|%s|" % "|".join("---" for _name in header)]
    lines.append("| %s |" % " | ".join(cells + [digest, chain]))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True, dict(zip(FIXED + field_names + TRAILER, cells + [digest, chain]))


def newest(rows, where=None, max_age_days=None, now=None):
    """The newest row matching `where` (dict of column -> value); raise if none or older than max_age_days."""
    matching = [row for row in rows if all(row.get(key) == str(value) for key, value in (where or {}).items())]
    if not matching:
        raise EvidenceError("no row matches %s" % (where or "anything"))
    last = matching[-1]
    if max_age_days is not None:
        when = datetime.datetime.strptime(last["date (UTC)"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        age = (now or datetime.datetime.now(datetime.timezone.utc)) - when
        if age.days > max_age_days:
            raise EvidenceError("the newest row matching %s is %d days old (%s, %s), more than %d" % (
                where or "anything", age.days, last["id"], last["date (UTC)"], max_age_days))
    return last
