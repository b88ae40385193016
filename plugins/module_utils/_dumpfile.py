# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL dump files: format detection, manifests, and a streaming reader of plain SQL dumps.
PRIVATE to the collection: no compatibility promise.

The reader makes one pass over a (gzip-compressed) plain dump and, while the SQL flows on to psql, proves the file
whole (SHA-256 of the bytes on disk, complete gzip stream with a valid CRC), notes every CREATE TABLE and counts the
rows of every COPY block — so a restore verifies the dump in the same pass that loads it. It also recognises
pg_dump's table-of-contents comments, to hand the post-data section (indexes, constraints) to parallel sessions.
Pure Python: also imported by the host-side CLI.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import zlib

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

GZIP_MAGIC = b"\x1f\x8b"
CUSTOM_MAGIC = b"PGDMP"
MANIFEST_SUFFIX = ".manifest.json"
# Name of a dump by format: db-2026-11-22.sql.gz (the seeds' name), .dump (custom), .dir (directory).
SUFFIXES = {"plain": ".sql.gz", "custom": ".dump", "directory": ".dir"}
KNOWN_SUFFIXES = (".sql.gz", ".sql", ".dump", ".dir")

# pg_dump's post-data section starts with the first entry of one of these types; indexes and non-FK constraints
# are independent of each other and can be built in parallel (what pg_restore -j does), the rest follows in order.
POST_DATA_TYPES = frozenset(("INDEX", "CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "RULE", "POLICY", "INDEX ATTACH",
                             "EVENT TRIGGER", "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
                             "SUBSCRIPTION", "MATERIALIZED VIEW DATA", "STATISTICS"))
PARALLEL_TYPES = frozenset(("INDEX", "CONSTRAINT"))
# What pg_dump prints after the post-data section; anything else there means the script is not in pg_dump's
# section order (a hand-made or third-party script), and is then run as it is, in one session.
AFTER_POST_DATA_TYPES = POST_DATA_TYPES | frozenset(("ACL", "DEFAULT ACL", "COMMENT", "SECURITY LABEL"))
# Session setup at the top of a pg_dump script, replayed in each parallel session.
PREAMBLE_RE = re.compile(rb"^(SET |SELECT pg_catalog\.set_config\(|\\restrict )")

TOC_RE = re.compile(rb"^-- (?:Data for )?Name: (?P<name>.*?); Type: (?P<type>[A-Z ]+); Schema: (?P<schema>[^;]*);")
CREATE_TABLE_RE = re.compile(rb"^CREATE (?:UNLOGGED |TEMP |TEMPORARY )?TABLE (?:IF NOT EXISTS )?(?P<name>[^\s(]+)", re.I)
COPY_RE = re.compile(rb"^COPY (?P<name>\S+) (?:\(.*\) )?FROM stdin;\n$")
TARGET_RE = re.compile(rb"\bON (?:ONLY )?(?P<on>[^\s(]+)|^ALTER TABLE (?:ONLY )?(?P<alter>\S+)", re.M)


class DumpError(Exception):
    """The dump (or its manifest) cannot be trusted; the message says why."""


def table_name(qualified):
    """`public.clients` → `clients`; `"Audit"."Log"` → `Audit.Log` (other schemas stay qualified)."""
    text = qualified.decode() if isinstance(qualified, bytes) else qualified
    parts, current, quoted, i = [], "", False, 0
    while i < len(text):
        char = text[i]
        if char == '"':
            if quoted and text[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    if len(parts) > 1 and parts[-2] == "public":
        parts = parts[-1:]
    return ".".join(parts)


def detect_format(path):
    """('plain', 'gzip'|None), ('custom', None) or ('directory', None), from the content, never the name."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "toc.dat")):
            return "directory", None
        raise DumpError("%s is a directory without toc.dat: not a directory-format dump" % path)
    if not os.path.isfile(path):
        raise DumpError("%s does not exist" % path)
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head:
        raise DumpError("%s is empty" % path)
    if head.startswith(GZIP_MAGIC):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error as exc:
            raise DumpError("%s: corrupt gzip header (%s)" % (path, exc))
        if inner.startswith(CUSTOM_MAGIC):
            raise DumpError("%s is a gzip-compressed custom-format dump; decompress it first" % path)
        return "plain", "gzip"
    if head.startswith(CUSTOM_MAGIC):
        return "custom", None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if re.search(r"^(--|SET |CREATE |SELECT |\\restrict )", text, re.M):
        return "plain", None
    raise DumpError("%s is not a PostgreSQL dump (neither gzip, custom, directory nor SQL text)" % path)


def dump_name(prefix, stamp, fmt):
    return "%s%s%s" % (prefix, stamp, SUFFIXES[fmt])


def manifest_path_for(src):
    base = src.rstrip("/")
    for suffix in KNOWN_SUFFIXES:
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    return base + MANIFEST_SUFFIX


def load_manifest(path):
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise DumpError("manifest %s does not exist" % path)
    except ValueError as exc:
        raise DumpError("manifest %s is not valid JSON (%s)" % (path, exc))
    if not isinstance(manifest, dict) or "sha256" not in manifest or "row_counts" not in manifest:
        raise DumpError("manifest %s lacks sha256 or row_counts: not written by pg_backup" % path)
    return manifest


def digest(path, fmt):
    """(sha256, size) of a dump as its manifest records it (directories: a digest over every file)."""
    if fmt == "directory":
        return _fileio.sha256_tree(path)[0], _fileio.tree_size(path)
    return _fileio.sha256_file(path), os.path.getsize(path)


def check_digest(path, fmt, manifest):
    sha, _size = digest(path, fmt)
    if sha != manifest["sha256"]:
        raise DumpError("%s does not match its manifest: sha256 %s, manifest says %s (the file changed or is "
                        "corrupt)" % (path, sha[:16], manifest["sha256"][:16]))
    return sha


class SqlScanner:
    """Line-level scanner of plain pg_dump SQL, fed decompressed chunks in order.

    Everything goes to `emit` (bytes), except in a script pg_dump wrote (its header says so): with `split_post_data`
    the post-data section is kept in `post_data` as (toc_type, target_table, sql) entries for the caller to run in
    parallel sessions, and with a `copy_sink` every COPY block goes to `copy_sink.start(header_line)`,
    `.data(complete lines)` and `.end()` instead, for parallel loading.
    """

    def __init__(self, emit, split_post_data=False, copy_sink=None):
        self.emit = emit
        self.split_post_data = split_post_data
        self.copy_sink = copy_sink
        self.from_pg_dump = False
        self.tables = []
        self.copy_rows = {}
        self.preamble = []
        self.post_data = []
        self._carry = b""
        self._copy_table = None
        self._copy_count = 0
        self._seen_toc = False
        self._in_post_data = False
        self._entry = None
        self._out = []
        self._sink_active = False

    @property
    def in_copy(self):
        """Whether the data fed so far ends inside a COPY block."""
        return self._copy_table is not None

    def feed(self, data):
        buf = self._carry + data if self._carry else data
        pos, end = 0, len(buf)
        out = self._out = []
        while pos < end:
            if self._copy_table is not None:
                if buf.startswith(b"\\.\n", pos):
                    stop = pos
                else:
                    found = buf.find(b"\n\\.\n", pos)
                    if found < 0:
                        # No end marker yet: pass on the complete lines, keep the partial one for the next chunk.
                        last = buf.rfind(b"\n", pos) + 1
                        if last > pos:
                            self._copy_count += buf.count(b"\n", pos, last)
                            self._copy_data(buf[pos:last])
                            pos = last
                        break
                    stop = found + 1
                self._copy_count += buf.count(b"\n", pos, stop)
                if self._sink_active:
                    self.copy_sink.data(buf[pos:stop])
                    self.copy_sink.end()
                else:
                    out.append(buf[pos:stop + 3])
                pos = stop + 3
                self.copy_rows[self._copy_table] = self.copy_rows.get(self._copy_table, 0) + self._copy_count
                self._copy_table = None
                continue
            newline = buf.find(b"\n", pos)
            if newline < 0:
                break
            line = buf[pos:newline + 1]
            pos = newline + 1
            if self._line(line):
                out.append(line)
        self._carry = buf[pos:]
        if out:
            self.emit(b"".join(out))

    def _copy_data(self, data):
        if self._sink_active:
            self.copy_sink.data(data)
        else:
            self._out.append(data)

    def _line(self, line):
        """Handle one SQL line; True when it belongs to the main stream."""
        if not self._seen_toc and line.startswith(b"-- Dumped by pg_dump version "):
            self.from_pg_dump = True
        if line.startswith(b"-- ") and b"; Type: " in line:
            match = TOC_RE.match(line)
            if match:
                self._seen_toc = True
                toc_type = match.group("type").decode().strip()
                if self._in_post_data and toc_type not in AFTER_POST_DATA_TYPES:
                    self._give_up_split()
                elif self.split_post_data and self.from_pg_dump and (self._in_post_data or toc_type in POST_DATA_TYPES):
                    self._in_post_data = True
                    self._entry = [toc_type, None, [line]]
                    self.post_data.append(self._entry)
                    return False
        elif not self._seen_toc and PREAMBLE_RE.match(line):
            self.preamble.append(line)
        if self._in_post_data:
            self._entry[2].append(line)
            return False
        if line.startswith(b"COPY "):
            match = COPY_RE.match(line)
            if match:
                self._copy_table = table_name(match.group("name"))
                self._copy_count = 0
                self._sink_active = self.copy_sink is not None and self.from_pg_dump
                if self._sink_active:
                    # What precedes the COPY (the tables it fills) must reach the main stream first.
                    self.emit(b"".join(self._out))
                    del self._out[:]
                    self.copy_sink.start(line)
                    return False
        elif line[:6].upper() == b"CREATE":
            match = CREATE_TABLE_RE.match(line)
            if match:
                self.tables.append(table_name(match.group("name")))
        return True

    def _give_up_split(self):
        """Not pg_dump's section order: send what was held back to the main stream and stop splitting."""
        self._out.extend(line for entry in self.post_data for line in entry[2])
        self.post_data, self._in_post_data, self.split_post_data = [], False, False

    def finish(self):
        """Flush what is left; raises DumpError if the dump ends inside a COPY block or mid-line."""
        if self._copy_table is not None:
            raise DumpError("the dump ends inside the data of table %s (truncated?)" % self._copy_table)
        if self._carry.strip():
            line, self._carry = self._carry, b""
            self._out = []
            if self._line(line + b"\n"):
                self._out.append(line)
            self.emit(b"".join(self._out))
        entries = []
        for toc_type, _target, lines in self.post_data:
            sql = b"".join(lines)
            match = TARGET_RE.search(sql)
            target = table_name((match.group("on") or match.group("alter")).rstrip(b";")) if match else None
            entries.append((toc_type, target, sql))
        self.post_data = entries
        return self


class DumpReader:
    """Reads a plain dump file once: SHA-256 of the raw bytes, gzip decompression with integrity checks."""

    def __init__(self, path, compression):
        self.path = path
        self.compression = compression
        self.sha256 = hashlib.sha256()
        self.size = 0

    def chunks(self, chunk_size=1 << 20):
        """Decompressed data in pieces of at most `chunk_size` bytes (constant memory, whatever the ratio).

        Raises DumpError on corruption or truncation, after everything that could be read was yielded.
        """
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.compression == "gzip" else None
        member_ended = False
        with open(self.path, "rb") as handle:
            for raw in iter(lambda: handle.read(chunk_size), b""):
                self.size += len(raw)
                self.sha256.update(raw)
                if inflater is None:
                    yield raw
                    continue
                pending = False
                while raw or pending:
                    if member_ended:
                        # A concatenated gzip member (gzip -c a; gzip -c b) continues the same stream.
                        inflater, member_ended = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                    try:
                        data = inflater.decompress(raw, chunk_size)
                    except zlib.error as exc:
                        raise DumpError("%s is corrupt near byte %d of the compressed file: %s"
                                        % (self.path, self.size - len(raw), exc))
                    if data:
                        yield data
                    member_ended = inflater.eof
                    raw = inflater.unused_data if member_ended else inflater.unconsumed_tail
                    # A full piece may leave output inside zlib even when all input was taken.
                    pending = not member_ended and len(data) == chunk_size
        if inflater is not None and not member_ended:
            raise DumpError("%s is truncated: the gzip stream ends before its end marker" % self.path)

    @property
    def hexdigest(self):
        return self.sha256.hexdigest()


ARCHIVE_TABLE_RE = re.compile(r"^\d+; \d+ \d+ TABLE (?P<schema>\S+) (?P<name>\S+) ")


class ArchiveTool:
    """pg_restore used offline (no server) to read a custom or directory dump: on the host, or in a container."""

    def __init__(self, argv_prefix, env=None):
        self.argv_prefix = argv_prefix
        self.env = env

    def _popen(self, path, args):
        # A container cannot see host paths: a custom dump is streamed on stdin there.
        stdin = open(path, "rb") if self.argv_prefix[0] == "docker" else None  # pylint: disable=consider-using-with
        argv = self.argv_prefix + list(args) + ([] if stdin else [path])
        return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env), stdin

    def tables(self, path):
        proc, stdin = self._popen(path, ["--list"])
        out, err = proc.communicate()
        if stdin:
            stdin.close()
        if proc.returncode != 0:
            raise DumpError("pg_restore cannot read %s: %s" % (path, err.decode(errors="replace").strip().splitlines()[:1]))
        tables = []
        for line in out.decode(errors="replace").splitlines():
            match = ARCHIVE_TABLE_RE.match(line)
            if match:
                tables.append(table_name("%s.%s" % (match.group("schema"), match.group("name"))))
        return tables

    def copy_rows(self, path):
        """Row counts of every table's data, by converting the archive to SQL (`pg_restore -f -`) and scanning it."""
        proc, stdin = self._popen(path, ["--data-only", "-f", "-"])
        scanner = SqlScanner(lambda _data: None)
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
            scanner.feed(chunk)
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise DumpError("pg_restore cannot read the data of %s: %s" % (path, err.decode(errors="replace").strip()[:300]))
        if stdin:
            stdin.close()
        return scanner.finish().copy_rows


def find_manifest(src, manifest, require_manifest):
    """The manifest (path, dict) of a dump, or (None, None) when it may be absent."""
    path = manifest or manifest_path_for(src)
    if not os.path.exists(path):
        if require_manifest:
            raise DumpError("no manifest for %s (looked for %s): without it the dump's integrity and row counts cannot "
                            "be checked; pass require_manifest=false to go on without it" % (src, path))
        return None, None
    return path, load_manifest(path)


def compare_counts(counts, manifest, what):
    """Raise when `counts` (table -> rows) differ from the manifest's for any table the manifest lists."""
    expected = manifest["row_counts"]
    wrong = sorted(t for t in expected if counts.get(t) != expected[t])
    if wrong:
        raise DumpError("%s row counts differ from the manifest: %s" % (what, ", ".join(
            "%s %s (manifest %s)" % (t, counts.get(t, "missing"), expected[t]) for t in wrong[:5])))


def check_expected_tables(found, expect_tables, what):
    missing = sorted(set(expect_tables) - set(found))
    if missing:
        raise DumpError("%s has no CREATE TABLE for %s" % (what, ", ".join(missing)))


def verify(src, manifest=None, require_manifest=True, expect_tables=(), archive_tool=None):
    """Full check of a dump without a server: format, SHA-256 and size against the manifest, complete decompression,
    CREATE TABLE for each expected table, and the dump's own row counts against the manifest's."""
    fmt, compression = detect_format(src)
    manifest_path, data = find_manifest(src, manifest, require_manifest)
    if data is not None:
        if data.get("format", fmt) != fmt:
            raise DumpError("%s is a %s dump but its manifest says %s" % (src, fmt, data.get("format")))
        check_digest(src, fmt, data)
    if fmt == "plain":
        reader = DumpReader(src, compression)
        scanner = SqlScanner(lambda _data: None)
        for chunk in reader.chunks():
            scanner.feed(chunk)
        scanner.finish()
        tables, rows = scanner.tables, scanner.copy_rows
    else:
        if archive_tool is None:
            raise DumpError("reading a %s dump needs pg_restore (install postgresql-client on this host)" % fmt)
        tables, rows = archive_tool.tables(src), archive_tool.copy_rows(src)
    check_expected_tables(tables, expect_tables, src)
    if data is not None:
        compare_counts(rows, data, "the dump's")
        missing = sorted(set(data.get("tables", [])) - set(tables))
        if missing:
            raise DumpError("%s lacks tables its manifest lists: %s" % (src, ", ".join(missing)))
    return dict(format=fmt, compression=compression, manifest_path=manifest_path, manifest=data,
                tables=sorted(set(tables)), row_counts=rows)
