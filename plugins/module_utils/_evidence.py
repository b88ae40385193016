# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An append-only, hash-chained evidence log in Markdown (e.g. backup-drills.md). PRIVATE to the collection.

Each row is a table line; its evidence (the full JSON of what was measured) is stored beside the log under
`evidence/`, named by its SHA-256. Every row carries that digest and a chain digest,
sha256(previous chain | the row's cells | evidence digest), so editing, removing or reordering any earlier row, or
any evidence file, breaks verification from that row on. Appending refuses to extend a broken log.

The chain starts from a public value, so whoever can write the log can also rewrite it whole, recomputing every
chain, or cut its last rows off. Anchors close that: each append also writes a head record (row count, the last
row's id and chain) into an anchor directory, under a name that never repeats (`<rows>-<chain>.json`), created
once and never rewritten or removed. Verification with the anchors checks that the log still holds every head ever
anchored: a truncated log, or a rewritten one, no longer contains an earlier head. The anchors are only as good as
the anchor directory: it must be somewhere the log's writer can add to but not rewrite (see the module's doc).

A value is stored in one cell whatever it holds: a `|` becomes `/`, and line breaks and other control characters
become spaces. A column name or an id must be stored exactly as given (the id is what makes appending idempotent),
so one that cannot be is refused. Every path is opened without following a symlink (_fileio); the log is appended
under flock(2), so two appends never fork the chain.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

GENESIS = hashlib.sha256(b"runbooks.incident evidence log v1").hexdigest()
FIXED = ["date (UTC)", "id"]
TRAILER = ["evidence sha256", "chain"]
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
# What ends or splits a line for some reader (text-mode files, str.splitlines) or hides text: control characters,
# NEL, the Unicode line and paragraph separators.
LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
HEAD_FORMAT = "runbooks.incident/evidence-head/1"
HEAD_NAME = re.compile(r"^(?P<rows>[0-9]{8,})-(?P<chain>[0-9a-f]{64})\.json\Z")
MAX_HEAD_BYTES = 4096


class EvidenceError(Exception):
    pass


class AnchorError(EvidenceError):
    """The row is in the log, but its head could not be anchored (the next append or re-run anchors it)."""


def cell(value):
    """`value` as one table cell."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")  # a lone surrogate cannot be written
    return LINE_BREAKING.sub(" ", text).replace("|", "/").strip()


def check_verbatim(kind, text):
    """Refuse a column name or id the log cannot hold exactly as given."""
    if not isinstance(text, str) or not text:
        raise EvidenceError("the %s %r is empty or not text" % (kind, text))
    if LINE_BREAKING.search(text) or "|" in text or text != text.strip():
        raise EvidenceError("the %s %r holds a |, a line break, a control character or surrounding spaces, which "
                            "the log cannot store as given" % (kind, text))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EvidenceError("the %s %r is not valid Unicode" % (kind, text)) from None


def check_entry(entry_id, fields, title):
    """Everything `append` writes that must be stored as given; raises before anything is written."""
    check_verbatim("id", entry_id)
    if not isinstance(fields, dict):
        raise EvidenceError("fields must be a dict of column name to value")
    for name in fields:
        check_verbatim("column name", name)
        if name in FIXED + TRAILER:
            raise EvidenceError("the column name %r is one of the log's own columns (%s)" % (name, ", ".join(FIXED + TRAILER)))
    if not isinstance(title, str) or LINE_BREAKING.search(title):
        raise EvidenceError("the title %r holds a line break or a control character" % (title,))


def chain_of(previous, cells, evidence_digest):
    return hashlib.sha256(("%s|%s|%s" % (previous, "|".join(cells), evidence_digest)).encode()).hexdigest()


def evidence_path(log_path, digest):
    return os.path.join(os.path.dirname(log_path) or ".", "evidence", "%s.json" % digest)


def _read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    for chunk in iter(lambda: os.read(fd, _fileio.CHUNK), b""):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(log_path, data):
    """(columns, rows) of the log's bytes; rows are dicts by column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise EvidenceError("%s: line %d is not UTF-8 text" % (log_path, line)) from None
    columns, rows = [], []
    # Lines end at \n only: a \r or a Unicode separator an earlier version let into a cell stays in its row.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [part.strip() for part in line.strip().strip("|").split("|")]
        if not columns:
            if len(cells) < len(FIXED + TRAILER) or cells[:len(FIXED)] != FIXED or cells[-len(TRAILER):] != TRAILER \
                    or len(set(cells)) != len(cells):
                raise EvidenceError("%s: line %d, the table header %s is not an evidence log's (it starts with %s and "
                                    "ends with %s, each column once)" % (log_path, number, cells, " | ".join(FIXED), " | ".join(TRAILER)))
            columns = cells
            continue
        if len(cells) != len(columns):
            raise EvidenceError("%s: line %d, a row has %d cells, the header %d: %s" % (log_path, number, len(cells), len(columns), line.strip()[:200]))
        rows.append(dict(zip(columns, cells)))
    if not columns and text.strip():
        raise EvidenceError("%s is not an evidence log: it holds text but no table header" % log_path)
    return columns, rows


def read(log_path):
    """(columns, rows) of the log; ([], []) when the log does not exist yet."""
    try:
        fd = _fileio.open_file(log_path)
    except FileNotFoundError:
        return [], []
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return parse(log_path, _read_all(fd))
    finally:
        os.close(fd)


def _evidence_digest(path):
    """sha256 of the evidence file at `path` (never through a symlink), or None when it is missing."""
    try:
        fd = _fileio.open_file(path)
    except FileNotFoundError:
        return None
    try:
        return hashlib.sha256(_read_all(fd)).hexdigest()
    finally:
        os.close(fd)


def check_rows(log_path, columns, rows):
    """Recompute the chain and the evidence digests. Raises naming the first broken row."""
    previous = GENESIS
    for number, row in enumerate(rows, 1):
        cells = [row[column] for column in columns[:-len(TRAILER)]]
        digest = row["evidence sha256"]
        if not SHA256_HEX.match(digest):
            raise EvidenceError("row %d (%s): its evidence sha256 %r is not a SHA-256" % (number, row["id"], digest[:80]))
        path = evidence_path(log_path, digest)
        try:
            found = _evidence_digest(path)
        except OSError as exc:
            raise EvidenceError("row %d (%s): its evidence file %s cannot be read: %s" % (number, row["id"], path, exc)) from None
        if found is None:
            raise EvidenceError("row %d (%s): its evidence file %s is missing" % (number, row["id"], path))
        if found != digest:
            raise EvidenceError("row %d (%s): its evidence file was changed" % (number, row["id"]))
        expected = chain_of(previous, cells, digest)
        if row["chain"] != expected:
            raise EvidenceError("row %d (%s): the chain is broken (the row, or one before it, was edited or removed)"
                                % (number, row["id"]))
        try:
            datetime.datetime.strptime(row["date (UTC)"], DATE_FORMAT)
        except ValueError:
            raise EvidenceError("row %d (%s): its date %r is not YYYY-MM-DDTHH:MM:SSZ" % (number, row["id"], row["date (UTC)"][:80])) from None
        previous = expected


def default_anchor_dir(log_path):
    """Where a log's heads go unless told otherwise: beside it, so that a truncated log is caught by default. Against
    whoever can rewrite the log's directory, give an anchor directory they cannot write (see the module)."""
    return log_path + ".anchors"


def verify(log_path, anchor_dir=None):
    """Recompute the chain and the evidence digests, and with `anchor_dir` check every anchored head; returns
    (columns, rows). Raises naming the first broken row."""
    columns, rows = read(log_path)
    check_rows(log_path, columns, rows)
    if anchor_dir:
        check_anchors(anchor_dir, rows)
    return columns, rows


def duplicate_ids(rows):
    """Ids that more than one row has (an earlier version stored an id holding | under another id's name)."""
    seen, duplicates = set(), []
    for row in rows:
        if row["id"] in seen and row["id"] not in duplicates:
            duplicates.append(row["id"])
        seen.add(row["id"])
    return duplicates


# ------------------------------------------------------------------------------------------------ anchors
def head_record(log_path, rows):
    last = rows[-1]
    return dict(format=HEAD_FORMAT, log=os.path.basename(log_path), rows=len(rows), id=last["id"], chain=last["chain"],
                date=last["date (UTC)"])


def head_name(head):
    return "%08d-%s.json" % (head["rows"], head["chain"])


def _head_bytes(head):
    return (json.dumps(head, sort_keys=True, indent=2) + "\n").encode()


def _read_head(dir_fd, name):
    """The head record in `name` (a regular file, never through a symlink), checked against its name."""
    match = HEAD_NAME.match(name)
    if not match:
        raise EvidenceError("%s in the anchor directory is not a head record (<rows>-<chain>.json)" % name)
    try:
        fd = os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise EvidenceError("the anchor %s cannot be opened (%s)" % (name, exc.strerror or exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EvidenceError("the anchor %s is not a regular file" % name)
        raw = os.read(fd, MAX_HEAD_BYTES + 1)
    finally:
        os.close(fd)
    try:
        head = json.loads(raw.decode("utf-8"))
    except ValueError:
        head = None
    if not (isinstance(head, dict) and head.get("format") == HEAD_FORMAT and head.get("rows") == int(match.group("rows")) >= 1
            and head.get("chain") == match.group("chain") and isinstance(head.get("id"), str)):
        raise EvidenceError("the anchor %s is not a head record of its name (damaged or forged)" % name)
    return head


def _listing(dir_fd):
    real = os.open(".", os.O_RDONLY | _fileio.O_DIRECTORY | _fileio.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return sorted(entry.name for entry in os.scandir(real))
    finally:
        os.close(real)


def check_anchors(anchor_dir, rows):
    """Check that the log's rows still hold every head anchored in `anchor_dir`; returns how many rows the newest
    head covers (0: none; a missing directory has no heads). Hidden names (partial writes) are not heads."""
    try:
        dir_fd = _fileio.open_dir(anchor_dir)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise EvidenceError("the anchor directory %s cannot be opened: %s" % (anchor_dir, exc)) from None
    try:
        heads = [(name, _read_head(dir_fd, name)) for name in _listing(dir_fd) if not name.startswith(".")]
    finally:
        os.close(dir_fd)
    if not heads:
        return 0
    name, newest_head = max(heads, key=lambda pair: pair[1]["rows"])
    if newest_head["rows"] > len(rows):
        raise EvidenceError("the log was truncated: the anchor %s records %d rows (the last %s), the log has %d"
                            % (name, newest_head["rows"], newest_head["id"], len(rows)))
    for name, head in sorted(heads, key=lambda pair: pair[1]["rows"]):  # the earliest rewritten row first
        count = head["rows"]
        row = rows[count - 1]
        if row["chain"] != head["chain"] or row["id"] != head["id"]:
            raise EvidenceError("row %d (%s) is not the row anchored in %s (%s): the log was rewritten at or before row %d"
                                % (count, row["id"], name, head["id"], count))
    return newest_head["rows"]


def write_head(anchor_dir, head):
    """Create the head record once: it appears whole (a hard link of a finished temp file) and an existing one is
    never replaced. Returns whether it was written (False: the same record was there)."""
    name, data = head_name(head), _head_bytes(head)
    _fileio.makedirs(anchor_dir, 0o750)
    with _fileio.parent_dir(os.path.join(anchor_dir, name)) as (dir_fd, name):
        tmp = ".%s.%s.partial" % (name, secrets.token_hex(4))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, 0o440, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                if _head_bytes(_read_head(dir_fd, name)) != data:
                    raise EvidenceError("the anchor %s exists with other content" % name) from None
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
        _fileio.fsync_dir(anchor_dir)
    return True


# ------------------------------------------------------------------------------------------------ appending
def plan(log_path, entry_id, fields, title="Evidence log", anchor_dir=None):
    """What `append` would do: (rows, the row of this id or None, whether a head would be written, anchored rows).
    Raises on input the log cannot hold, a broken log, or one that disagrees with its anchors."""
    check_entry(entry_id, fields, title)
    columns, rows = verify(log_path)
    covered = check_anchors(anchor_dir, rows) if anchor_dir else 0
    known = next((row for row in rows if row["id"] == entry_id), None)
    if known is None and columns and columns != FIXED + list(fields) + TRAILER:
        raise EvidenceError("the fields %s do not match the log's columns %s" % (list(fields), columns[len(FIXED):-len(TRAILER)]))
    head_due = bool(anchor_dir) and (known is None or covered < len(rows))
    return rows, known, head_due, covered


def append(log_path, entry_id, fields, evidence, title="Evidence log", now=None, anchor_dir=None):
    """Append one row (idempotent per id) and, with `anchor_dir`, anchor the log's head.

    Returns (changed, row, head): head is the head record of the log now (None without anchor_dir). A head missing
    for rows appended earlier (a crash between the row and its head) is written too.
    """
    check_entry(entry_id, fields, title)
    _fileio.makedirs(os.path.dirname(evidence_path(log_path, "x")), 0o750)
    fd = _fileio.open_file(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        columns, rows = parse(log_path, _read_all(fd))
        check_rows(log_path, columns, rows)
        covered = check_anchors(anchor_dir, rows) if anchor_dir else 0
        row = next((row for row in rows if row["id"] == entry_id), None)
        changed = False
        if row is None:
            row = _append_row(fd, log_path, columns, entry_id, fields, evidence, title, now, rows)
            rows.append(row)
            changed = True
        head = head_record(log_path, rows) if anchor_dir else None
        if anchor_dir and covered < len(rows):
            try:
                changed = write_head(anchor_dir, head) or changed
            except (EvidenceError, OSError) as exc:
                raise AnchorError("%s the log holds %d rows, but its head could not be anchored in %s: %s; re-run to "
                                  "anchor it" % ("row %s was appended;" % entry_id if changed else "", len(rows), anchor_dir, exc)) from None
        return changed, row, head
    finally:
        os.close(fd)


def _append_row(fd, log_path, columns, entry_id, fields, evidence, title, now, rows):
    field_names = list(fields)
    if columns and columns != FIXED + field_names + TRAILER:
        raise EvidenceError("the fields %s do not match the log's columns %s" % (field_names, columns[len(FIXED):-len(TRAILER)]))
    moment = (now or datetime.datetime.now(datetime.timezone.utc)).strftime(DATE_FORMAT)
    body = json.dumps(dict(evidence, id=entry_id, recorded_at=moment), sort_keys=True, indent=2)
    digest = hashlib.sha256(body.encode()).hexdigest()
    with _fileio.atomic_writer(evidence_path(log_path, digest), mode=0o440) as out:
        out.write(body.encode())
    cells = [moment, entry_id] + [cell(fields[name]) for name in field_names]
    chain = chain_of(rows[-1]["chain"] if rows else GENESIS, cells, digest)
    lines = []
    if not columns:
        header = FIXED + field_names + TRAILER
        lines += ["# %s" % title, "",
                  "Append-only: written by runbooks.incident.evidence_log. `evidence sha256` names the JSON under evidence/;",
                  "`chain` is sha256(previous chain | this row's cells | evidence sha256). Verify with evidence_log state=verified.",
                  "", "| %s |" % " | ".join(header), "|%s|" % "|".join("---" for _name in header)]
    lines.append("| %s |" % " | ".join(cells + [digest, chain]))
    os.write(fd, ("\n".join(lines) + "\n").encode())
    os.fsync(fd)
    return dict(zip(FIXED + field_names + TRAILER, cells + [digest, chain]))


def newest(rows, where=None, max_age_days=None, now=None):
    """The newest row matching `where` (dict of column -> value); raise if none or older than max_age_days."""
    matching = [row for row in rows if all(row.get(key) == str(value) for key, value in (where or {}).items())]
    if not matching:
        raise EvidenceError("no row matches %s" % (where or "anything"))
    last = matching[-1]
    if max_age_days is not None:
        try:
            when = datetime.datetime.strptime(last["date (UTC)"], DATE_FORMAT).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise EvidenceError("the newest row matching %s (%s) has the date %r, not YYYY-MM-DDTHH:MM:SSZ"
                                % (where or "anything", last["id"], last["date (UTC)"])) from None
        age = (now or datetime.datetime.now(datetime.timezone.utc)) - when
        if age.days > max_age_days:
            raise EvidenceError("the newest row matching %s is %d days old (%s, %s), more than %d" % (
                where or "anything", age.days, last["id"], last["date (UTC)"], max_age_days))
    return last
