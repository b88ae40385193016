# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL dump files: format detection, manifests, and a streaming reader of plain SQL dumps.
PRIVATE to the collection: no compatibility promise.

The reader makes one pass over a (gzip-compressed) plain dump and, while the SQL flows on to psql, proves the file
whole (SHA-256 of the bytes on disk, complete gzip stream with a valid CRC, pg_dump's completion line at the end),
notes every CREATE TABLE and partition and counts the rows of every COPY block — so a restore verifies the dump in
the same pass that loads it. It reads the SQL as psql does (quotes, comments, COPY data), and refuses a psql
meta-command (`\\! cmd`, `\\o |cmd`, ...) or a COPY that runs a program or reaches a file on the server: pg_dump writes
neither, and psql runs meta-commands on this host, as root. It also recognises pg_dump's table-of-contents
comments, to hand the post-data section (indexes, constraints) to parallel sessions.
Pure Python: also imported by the host-side CLI.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import stat
import subprocess
import zlib

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _pg, _signature

GZIP_MAGIC = b"\x1f\x8b"
CUSTOM_MAGIC = b"PGDMP"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_MAX_BYTES = 64 << 20
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
PREAMBLE_RE = re.compile(rb"^(SET |SELECT pg_catalog\.set_config\()")
# The only meta-commands pg_dump writes (15.14 on, CVE-2025-8714): one key, first and last.
RESTRICT_RE = re.compile(rb"\\(restrict|unrestrict) ([A-Za-z0-9]+)\r?\n\Z")
COMPLETE_LINE = re.compile(rb"-- PostgreSQL database dump complete\r?\n\Z")

TOC_RE = re.compile(rb"^-- (?:Data for )?Name: (?P<name>.*?); Type: (?P<type>[A-Z ]+); Schema: (?P<schema>[^;]*);")
# A table name: parts quoted ("a.b", "qu""ote") or not (folded to lower case, as PostgreSQL does), dot-separated.
NAME_PART = re.compile(rb'"((?:[^"]|"")*)"|([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)')
CREATE_TABLE_RE = re.compile(rb"\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+"
                             rb"(?:IF\s+NOT\s+EXISTS\s+)?", re.I)
PARTITION_OF_RE = re.compile(rb"\s+PARTITION\s+OF\s+", re.I)
ALTER_TABLE_RE = re.compile(rb"\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?", re.I)
ATTACH_RE = re.compile(rb"\s+ATTACH\s+PARTITION\s+", re.I)
COPY_START_RE = re.compile(rb"\s*COPY\b", re.I)
# In a COPY statement's text outside parentheses and quotes: where its data comes from or goes to.
COPY_ENDPOINT_RE = re.compile(rb"\b(?:FROM|TO)\s+(?!(?:STDIN|STDOUT)\b)", re.I)
COPY_FROM_STDIN_RE = re.compile(rb"\bFROM\s+STDIN\b", re.I)
# pg_dump's own COPY line: one line, text format, its rows one per line.
COPY_TAIL_RE = re.compile(rb" (?:\(.*\) )?FROM stdin;\r?\n\Z")
SET_ENCODING_RE = re.compile(rb"\s*SET\s+client_encoding\s*(?:=|TO)\s*'([A-Za-z0-9_]+)'", re.I)
SET_STD_STRINGS_RE = re.compile(rb"\s*SET\s+(?:SESSION\s+|LOCAL\s+)?standard_conforming_strings\s*(?:=|TO)\s*'?(\w+)", re.I)
INDEX_HEAD_RE = re.compile(rb"^CREATE (?:UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?", re.M)
ALTER_HEAD_RE = re.compile(rb"^ALTER TABLE (?:ONLY )?", re.M)
# PostgreSQL's names of single-byte encodings that Python spells otherwise.
PG_ENCODINGS = dict([("UTF8", "utf-8"), ("SQL_ASCII", "utf-8"), ("LATIN1", "iso8859-1"), ("LATIN2", "iso8859-2"),
                     ("LATIN3", "iso8859-3"), ("LATIN4", "iso8859-4"), ("LATIN5", "iso8859-9"), ("LATIN6", "iso8859-10"),
                     ("LATIN7", "iso8859-13"), ("LATIN8", "iso8859-14"), ("LATIN9", "iso8859-15"), ("LATIN10", "iso8859-16")]
                    + [("WIN%d" % n, "cp%d" % n) for n in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)])


class DumpError(Exception):
    """The dump (or its manifest) cannot be trusted; the message says why."""


def python_encoding(pg_name):
    name = PG_ENCODINGS.get(pg_name.upper(), pg_name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def parse_name(data, pos, encoding="utf-8"):
    """(table key, end) of the table name at data[pos:] (`public.clients`, `"Odd.Schema"."t.1"`), or (None, pos).
    A name without schema is taken to be in public, as a script without search_path finds it."""
    parts = []
    while True:
        match = NAME_PART.match(data, pos)
        if not match:
            return None, pos
        quoted, plain = match.groups()
        part = quoted.replace(b'""', b'"') if quoted is not None else plain.lower()
        parts.append(part.decode(encoding, errors="replace"))
        pos = match.end()
        if data[pos:pos + 1] != b".":
            break
        pos += 1
    return _pg.table_key(parts[-2] if len(parts) > 1 else "public", parts[-1]), pos


def open_regular(path):
    """`path` opened for reading, refused unless it is a regular file (a FIFO or device there could block or never
    end); a symlink the operator points at a dump is followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DumpError("%s is not a regular file" % path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_directory(path):
    """A directory-format dump as pg_dump writes it: toc.dat and regular files, nothing else (no symlink, which its
    tree digest would skip, no subdirectory, no FIFO)."""
    if not os.path.isdir(path):
        raise DumpError("%s is not a directory: not a directory-format dump" % path)
    if not os.path.isfile(os.path.join(path, "toc.dat")):
        raise DumpError("%s is a directory without toc.dat: not a directory-format dump" % path)
    for entry in os.scandir(path):
        if not entry.is_file(follow_symlinks=False):
            raise DumpError("%s holds %s, which is not a regular file: not a directory-format dump as pg_dump writes it"
                            % (path, entry.name))


def detect_format(path):
    """('plain', 'gzip'|None), ('custom', None) or ('directory', None), from the content, never the name."""
    if os.path.isdir(path):
        check_directory(path)
        return "directory", None
    if not os.path.lexists(path):
        raise DumpError("%s does not exist" % path)
    with open_regular(path) as handle:
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
        with open_regular(path) as handle:
            raw = handle.read(MANIFEST_MAX_BYTES + 1)
    except FileNotFoundError:
        raise DumpError("manifest %s does not exist" % path)
    return parse_manifest(path, raw)


def parse_manifest(path, raw):
    """The manifest in `raw` (the bytes of `path`), checked to be one pg_backup writes."""
    if len(raw) > MANIFEST_MAX_BYTES:
        raise DumpError("manifest %s is larger than %d MiB: not written by pg_backup" % (path, MANIFEST_MAX_BYTES >> 20))
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise DumpError("manifest %s is not valid JSON (%s)" % (path, exc))
    if not isinstance(manifest, dict) or "sha256" not in manifest or "row_counts" not in manifest:
        raise DumpError("manifest %s lacks sha256 or row_counts: not written by pg_backup" % path)
    check_manifest(path, manifest)
    return manifest


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(path, manifest):
    """Raise unless every field a restore reads has the type pg_backup writes."""
    counts, tables = manifest["row_counts"], manifest.get("tables", [])
    wrong = [field for field, good in (
        ("sha256", isinstance(manifest["sha256"], str) and re.match(r"[0-9a-f]{64}\Z", manifest["sha256"])),
        ("row_counts", isinstance(counts, dict) and all(isinstance(t, str) and _is_count(n) for t, n in counts.items())),
        ("tables", isinstance(tables, list) and all(isinstance(t, str) for t in tables)),
        ("db", isinstance(manifest.get("db", ""), str)),
        ("format", manifest.get("format", "plain") in SUFFIXES),
        ("db_size_bytes", _is_count(manifest.get("db_size_bytes", 0)))) if not good]
    if wrong:
        raise DumpError("manifest %s has a malformed %s: not written by pg_backup" % (path, ", ".join(wrong)))


def manifest_counts(manifest):
    """The manifest's row counts by table key (a manifest written before names were quoted is read the old way)."""
    return {_pg.normalize_key(table): count for table, count in manifest["row_counts"].items()}


def manifest_tables(manifest):
    return sorted({_pg.normalize_key(table) for table in manifest.get("tables", [])})


def digest(path, fmt):
    """(sha256, size) of a dump as its manifest records it (directories: _fileio.sha256_tree, over every file)."""
    if fmt == "directory":
        check_directory(path)
        return _fileio.sha256_tree(path)[0], _fileio.tree_size(path)
    return _fileio.sha256_file(path), os.path.getsize(path)


def check_digest(path, fmt, manifest):
    sha, _size = digest(path, fmt)
    if sha != manifest["sha256"]:
        raise DumpError("%s does not match its manifest: sha256 %s, manifest says %s (the file changed or is "
                        "corrupt)" % (path, sha[:16], manifest["sha256"][:16]))
    return sha


def _shown(text):
    """A piece of a dump as a message shows it: one line, at most 80 characters."""
    shown = text.decode("utf-8", errors="replace").rstrip("\r\n")
    shown = "".join(char if char.isprintable() else "?" for char in shown)
    return shown if len(shown) <= 80 else shown[:77] + "..."


IDENT_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$") | frozenset(range(0x80, 0x100))
IDENT_START = IDENT_CHARS - frozenset(b"0123456789$")
SQL_SPECIAL_RE = re.compile(rb"[\\'\"$;()]|--|/\*")
DOLLAR_QUOTE_RE = re.compile(rb"\$(?:[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*)?\$")
ESCAPED_STRING_RE = re.compile(rb"\\|'")
COMMENT_RE = re.compile(rb"/\*|\*/")


class SqlLexer:
    """SQL text read as psql reads it, line by line: where each statement ends, and every backslash outside quotes
    and comments, which psql takes for the start of a meta-command (the rest of its line being the arguments).

    Follows psql's lexer: '' strings (E'' and, with standard_conforming_strings off, '' too, with backslash escapes),
    "" identifiers, $tag$ quotes, -- and nested /* */ comments, parentheses (a ; inside them ends nothing), and
    `\\;` / `\\:`, which psql puts into the statement as plain characters. Of each statement it keeps the first
    HEAD_LIMIT bytes (comments left out) and its shape: the same outside parentheses, quotes reduced to '' or "".
    """

    HEAD_LIMIT = 8192

    def __init__(self):
        self.state = "sql"
        self.dollar_tag = b""
        self.comment_depth = 0
        self.parens = 0
        self.head = bytearray()
        self.shape = bytearray()
        self.standard_strings = True
        self._escaped = False

    @property
    def idle(self):
        """Between statements, outside quotes and comments."""
        return self.state == "sql" and not self.head

    def _add(self, text, shape=True):
        if not self.head and not text.strip():
            return
        if len(self.head) < self.HEAD_LIMIT:
            self.head += text
        if shape and self.parens == 0 and len(self.shape) < self.HEAD_LIMIT:
            self.shape += text

    def _identifier_before(self, line, pos):
        """Whether line[pos] continues an identifier (psql reads `a$b$` as one name, not a $b$ quote)."""
        start = pos
        while start > 0 and line[start - 1] in IDENT_CHARS:
            start -= 1
        return start < pos and line[start] in IDENT_START

    def scan(self, line):
        """([(column, meta-command text)], [(head, shape) of each statement ended on this line])."""
        metas, ends = [], []
        pos, size = 0, len(line)
        while pos < size:
            if self.state == "sql":
                match = SQL_SPECIAL_RE.search(line, pos)
                stop = match.start() if match else size
                if stop > pos:
                    self._add(line[pos:stop])
                if match is None:
                    break
                token, pos = match.group(), match.end()
                if token == b"--":
                    self._add(b"\n")
                    break
                if token == b"/*":
                    self.state, self.comment_depth = "/*", 1
                elif token == b"\\":
                    if line[pos:pos + 1] in (b";", b":"):
                        self._add(line[pos:pos + 1])
                        pos += 1
                    else:
                        metas.append((stop, line[stop:]))
                        break
                elif token == b"'":
                    escaped = stop > 0 and line[stop - 1:stop] in (b"e", b"E") and not self._identifier_before(line, stop - 1)
                    self.state = "e'" if escaped or not self.standard_strings else "'"
                    self._add(token)
                elif token == b'"':
                    self.state = '"'
                    self._add(token)
                elif token == b"$":
                    quote = None if self._identifier_before(line, stop) else DOLLAR_QUOTE_RE.match(line, stop)
                    if quote:
                        self.state, self.dollar_tag, pos = "$", quote.group(), quote.end()
                    self._add(quote.group() if quote else token)
                elif token == b"(":
                    self._add(token)
                    self.parens += 1
                elif token == b")":
                    self.parens = max(0, self.parens - 1)
                    self._add(token)
                else:  # a semicolon: the end of the statement, unless inside parentheses
                    self._add(token)
                    if not self.parens:
                        ends.append((bytes(self.head), bytes(self.shape)))
                        self._ended(self.head)
                        self.head, self.shape = bytearray(), bytearray()
            elif self.state in ("'", '"'):
                quote = self.state.encode()
                found = line.find(quote, pos)
                if found < 0:
                    self._add(line[pos:], shape=False)
                    break
                if line[found + 1:found + 2] == quote:
                    self._add(line[pos:found + 2], shape=False)
                    pos = found + 2
                    continue
                self._add(line[pos:found], shape=False)
                self._add(quote)
                pos, self.state = found + 1, "sql"
            elif self.state == "e'":
                if self._escaped:
                    self._add(line[pos:pos + 1], shape=False)
                    pos, self._escaped = pos + 1, False
                    continue
                match = ESCAPED_STRING_RE.search(line, pos)
                if match is None:
                    self._add(line[pos:], shape=False)
                    break
                if match.group() == b"\\":
                    self._escaped = match.end() >= size
                    self._add(line[pos:match.end() + 1], shape=False)
                    pos = match.end() + 1
                elif line[match.end():match.end() + 1] == b"'":
                    self._add(line[pos:match.end() + 1], shape=False)
                    pos = match.end() + 1
                else:
                    self._add(line[pos:match.start()], shape=False)
                    self._add(b"'")
                    pos, self.state = match.end(), "sql"
            elif self.state == "$":
                found = line.find(self.dollar_tag, pos)
                if found < 0:
                    self._add(line[pos:], shape=False)
                    break
                self._add(line[pos:found], shape=False)
                self._add(self.dollar_tag)
                pos, self.state = found + len(self.dollar_tag), "sql"
            else:
                match = COMMENT_RE.search(line, pos)
                if match is None:
                    break
                pos = match.end()
                self.comment_depth += 1 if match.group() == b"/*" else -1
                if not self.comment_depth:
                    self.state = "sql"
                    self._add(b" ")
        return metas, ends

    def _ended(self, head):
        setting = SET_STD_STRINGS_RE.match(head)
        if setting:
            self.standard_strings = setting.group(1).lower() in (b"on", b"true", b"yes", b"1")


class SqlScanner:
    """Line-level scanner of plain pg_dump SQL, fed decompressed chunks in order.

    Everything goes to `emit` (bytes), except in a script pg_dump wrote (its header says so): with `split_post_data`
    the post-data section is kept in `post_data` as (toc_type, target_table, sql) entries for the caller to run in
    parallel sessions, and with a `copy_sink` every COPY block goes to `copy_sink.start(header_line)`,
    `.data(complete lines)` and `.end()` instead, for parallel loading. The dump's own \\restrict and \\unrestrict
    lines are not passed on (the restore sends its own); any other meta-command, or a COPY that runs a program or
    reaches a file on the server, raises DumpError naming its line before anything of that line is passed on.

    After finish(): `tables` (keys of the tables it creates), `copy_rows` (rows of each COPY target), `parents`
    (partition -> parent), `row_counts` (the rows the dump loads into each table, a partitioned table's being its
    partitions' total) and `loose`: partitions whose rows pg_dump loads through their root (`-- load via partition
    root`, a hash partitioning on an enum), which the server may put in another partition of the same root, so
    only their root's total can be compared.
    """

    def __init__(self, emit, split_post_data=False, copy_sink=None):
        self.emit = emit
        self.split_post_data = split_post_data
        self.copy_sink = copy_sink
        self.from_pg_dump = False
        self.complete = False
        self.tables = []
        self.copy_rows = {}
        self.parents = {}
        self.row_counts = {}
        self.loose = []
        self.preamble = []
        self.post_data = []
        self.line_no = 0
        self.restrict_key = None
        self.encoding = "utf-8"
        self.lexer = SqlLexer()
        self._statements = 0
        self._statement_line = 0
        self._unrestricted = None
        self._carry = b""
        self._copy_table = None
        self._in_copy = False
        self._copy_count = 0
        self._seen_toc = False
        self._in_post_data = False
        self._entry = None
        self._out = []
        self._sink_active = False

    @property
    def in_copy(self):
        """Whether the data fed so far ends inside a COPY block."""
        return self._in_copy

    def feed(self, data):
        buf = self._carry + data if self._carry else data
        pos, end = 0, len(buf)
        out = self._out = []
        while pos < end:
            if self._in_copy:
                stop, after = self._copy_end(buf, pos)
                if stop is None:
                    # No end marker yet: pass on the complete lines, keep the partial one for the next chunk.
                    last = buf.rfind(b"\n", pos) + 1
                    if last > pos:
                        rows = buf.count(b"\n", pos, last)
                        self._copy_count += rows
                        self.line_no += rows
                        self._copy_data(buf[pos:last])
                        pos = last
                    break
                rows = buf.count(b"\n", pos, stop)
                self._copy_count += rows
                self.line_no += rows + 1
                if self._sink_active:
                    self.copy_sink.data(buf[pos:stop])
                    self.copy_sink.end()
                else:
                    out.append(buf[pos:after])
                pos = after
                if self._copy_table is not None:
                    self.copy_rows[self._copy_table] = self.copy_rows.get(self._copy_table, 0) + self._copy_count
                self._in_copy, self._copy_table = False, None
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

    @staticmethod
    def _copy_end(buf, pos):
        """(start, end) of the `\\.` line that ends COPY data at or after `pos` (as psql: alone on its line, LF or
        CR LF), or (None, None) when the data read so far holds none."""
        found = pos if buf.startswith(b"\\.", pos) else buf.find(b"\n\\.", pos)
        while found >= 0:
            start = found if found == pos and buf.startswith(b"\\.", pos) else found + 1
            for ending in (b"\\.\n", b"\\.\r\n"):
                if buf.startswith(ending, start):
                    return start, start + len(ending)
            found = buf.find(b"\n\\.", start + 1)
        return None, None

    def _copy_data(self, data):
        if self._sink_active:
            self.copy_sink.data(data)
        else:
            self._out.append(data)

    def _refuse(self, what, line_no=None):
        raise DumpError("line %d of the dump %s; pg_dump never writes that: the dump is refused and it was not run"
                        % (line_no or self.line_no, what))

    def _line(self, line):
        """Handle one SQL line; True when it belongs to the main stream."""
        self.line_no += 1
        lexer = self.lexer
        idle = lexer.idle
        if idle and (line.startswith(b"--") or not line.strip()):
            if COMPLETE_LINE.match(line):
                self.complete = True
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
        elif idle and line.startswith(b"\\") and self._restrict_line(line):
            return False
        else:
            if self._unrestricted:
                self._refuse("holds `%s` before its end" % _shown(self._unrestricted[1]), self._unrestricted[0])
            self.complete = False
        if not self._seen_toc and idle and PREAMBLE_RE.match(line):
            self.preamble.append(line)
        if idle:
            self._statement_line = self.line_no
        metas, ends = lexer.scan(line)
        if metas:
            self._refuse("holds the psql meta-command `%s`, which psql would run on this host" % _shown(metas[0][1]))
        copy_in = False
        for head, shape in ends:
            self._statements += 1
            copy_in = self._statement(head, shape) or copy_in
            self._statement_line = self.line_no
        if copy_in:
            self._copy_count, self._in_copy = 0, True
            single = idle and len(ends) == 1 and lexer.idle and line.startswith(b"COPY ")
            key, end = parse_name(line, 5, self.encoding) if single else (None, 0)
            self._copy_table = key if key is not None and COPY_TAIL_RE.match(line, end) else None
            if self._in_post_data:
                self._give_up_split()
            self._sink_active = self._copy_table is not None and self.copy_sink is not None and self.from_pg_dump
            if self._sink_active:
                # What precedes the COPY (the tables it fills) must reach the main stream first.
                self.emit(b"".join(self._out))
                del self._out[:]
                self.copy_sink.start(line)
                return False
        if self._in_post_data:
            self._entry[2].append(line)
            return False
        return True

    def _restrict_line(self, line):
        """pg_dump's `\\restrict <key>` (before any statement) and `\\unrestrict <same key>`: True to leave it out."""
        match = RESTRICT_RE.match(line)
        if not match:
            return False
        command, key = match.groups()
        if command == b"restrict" and self.restrict_key is None and not self._statements:
            self.restrict_key = key
            return True
        if command == b"unrestrict" and key == self.restrict_key and not self._unrestricted:
            self._unrestricted = (self.line_no, line)
            return True
        self._refuse("holds `%s`, which does not match the one \\restrict at its top" % _shown(line))
        return False

    def _statement(self, head, shape):
        """Note what a statement creates; True when it is a COPY FROM STDIN (its data follows)."""
        if COPY_START_RE.match(shape):
            if COPY_ENDPOINT_RE.search(shape):
                self._refuse("holds `%s`, a COPY that runs a program or reads or writes a file on the database server"
                             % _shown(head.strip()), self._statement_line)
            return bool(COPY_FROM_STDIN_RE.search(shape))
        create = CREATE_TABLE_RE.match(head)
        if create:
            key, end = parse_name(head, create.end(), self.encoding)
            if key is not None:
                self.tables.append(key)
                partition_of = PARTITION_OF_RE.match(head, end)
                if partition_of:
                    parent, _end = parse_name(head, partition_of.end(), self.encoding)
                    if parent is not None:
                        self.parents[key] = parent
            return False
        alter = ALTER_TABLE_RE.match(head)
        if alter:
            parent, end = parse_name(head, alter.end(), self.encoding)
            attach = ATTACH_RE.match(head, end) if parent is not None else None
            if attach:
                child, _end = parse_name(head, attach.end(), self.encoding)
                if child is not None:
                    self.parents[child] = parent
            return False
        encoding = SET_ENCODING_RE.match(head)
        if encoding:
            self.encoding = python_encoding(encoding.group(1).decode())
        return False

    def _give_up_split(self):
        """Not pg_dump's section order: send what was held back to the main stream and stop splitting."""
        self._out.extend(line for entry in self.post_data for line in entry[2])
        self.post_data, self._in_post_data, self.split_post_data = [], False, False

    def finish(self):
        """Flush what is left; raises DumpError if the dump ends inside a COPY block or mid-line, or is a pg_dump
        script without pg_dump's completion line at its end (truncated)."""
        if self._in_copy:
            raise DumpError("the dump ends inside the data of table %s (truncated?)" % (self._copy_table or "of a COPY"))
        if self._carry.strip():
            line, self._carry = self._carry, b""
            self._out = []
            if self._line(line + b"\n"):
                self._out.append(line)
            self.emit(b"".join(self._out))
            if self._in_copy:
                raise DumpError("the dump ends inside the data of table %s (truncated?)" % (self._copy_table or "of a COPY"))
        if self.from_pg_dump and not self.complete:
            raise DumpError("the dump was written by pg_dump but does not end with its line '-- PostgreSQL database "
                            "dump complete': it is truncated (what its end creates, indexes and constraints, is missing)")
        entries = []
        for toc_type, _target, lines in self.post_data:
            sql = b"".join(lines)
            entries.append((toc_type, self._target(toc_type, sql), sql))
        self.post_data = entries
        roots = {table for table in self.copy_rows if table in set(self.parents.values())}
        self.loose = sorted(table for table in self.parents if _pg.in_tree(self.parents, self.parents[table], roots))
        counts = _pg.tree_counts(self.copy_rows, self.parents)
        self.row_counts = {table: count for table, count in counts.items() if table not in self.loose}
        return self

    def _target(self, toc_type, sql):
        """The table an index or constraint entry is built on (its statements share one session), else None."""
        if toc_type == "INDEX":
            head = INDEX_HEAD_RE.search(sql)
            if head:
                _index, end = parse_name(sql, head.end(), self.encoding)
                if sql.startswith(b" ON ", end):
                    end += 4 + (5 if sql.startswith(b"ONLY ", end + 4) else 0)
                    return parse_name(sql, end, self.encoding)[0]
        elif toc_type == "CONSTRAINT":
            head = ALTER_HEAD_RE.search(sql)
            if head:
                return parse_name(sql, head.end(), self.encoding)[0]
        return None


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
        with open_regular(self.path) as handle:
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


def drain(chunks):
    """Read what is left of a dump whose text was refused: if the file is corrupt or truncated further on, that
    DumpError is raised instead, since corruption explains text that makes no sense (a flipped byte of a gzip stream
    can decompress to anything before zlib notices)."""
    for _chunk in chunks:
        pass


class ArchiveTool:
    """pg_restore used offline (no server) to read a custom or directory dump: on the host, or in a container."""

    def __init__(self, argv_prefix, env=None):
        self.argv_prefix = argv_prefix
        self.env = env

    def _popen(self, path, args):
        # A container cannot see host paths: a custom dump is streamed on stdin there.
        stdin = open_regular(path) if self.argv_prefix[0] == "docker" else None
        argv = self.argv_prefix + list(args) + ([] if stdin else [path])
        return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env), stdin

    def scan(self, path):
        """The archive as the SQL pg_restore runs (`pg_restore -f -`: schema and data), read by SqlScanner."""
        proc, stdin = self._popen(path, ["-f", "-"])
        scanner = SqlScanner(lambda _data: None)
        try:
            for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
                scanner.feed(chunk)
            err = proc.stderr.read()
            if proc.wait() != 0:
                raise DumpError("pg_restore cannot read %s: %s" % (path, _shown(err.strip().splitlines()[0] if err.strip() else b"")))
            return scanner.finish()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
            if stdin:
                stdin.close()


def find_manifest(src, manifest, require_manifest, trust):
    """(path, manifest dict, signature verdict) of a dump; (None, None, verdict) when it may have none.

    The manifest's signature is checked against `trust` (a _signature.Trust) over the very bytes that are parsed.
    """
    path = manifest or manifest_path_for(src)
    if not os.path.lexists(path):
        if require_manifest:
            raise DumpError("no manifest for %s (looked for %s): without it the dump's integrity and row counts cannot "
                            "be checked; pass require_manifest=false to go on without it" % (src, path))
        return None, None, _unsigned(trust, src)
    try:
        raw, verdict = trust.manifest(path)
    except _signature.SignatureError as exc:
        raise DumpError(str(exc)) from None
    return path, parse_manifest(path, raw), verdict


def _unsigned(trust, src):
    try:
        return trust.without_manifest(src)
    except _signature.SignatureError as exc:
        raise DumpError(str(exc)) from None


def compare_counts(counts, manifest, what, loose=()):
    """Raise when `counts` (table -> rows) differ from the manifest's for any table it lists, but `loose` ones
    (partitions the server may fill otherwise, whose root's total is compared instead). A table absent from
    `counts` has no data: 0 rows."""
    expected = manifest_counts(manifest)
    wrong = sorted(t for t in expected if t not in loose and counts.get(t, 0) != expected[t])
    if wrong:
        raise DumpError("%s row counts differ from the manifest: %s" % (what, ", ".join(
            "%s %s (manifest %s)" % (t, counts.get(t, "missing"), expected[t]) for t in wrong[:5])))


def check_expected_tables(found, expect_tables, what):
    missing = sorted({_pg.normalize_key(table) for table in expect_tables} - set(found))
    if missing:
        raise DumpError("%s has no CREATE TABLE for %s" % (what, ", ".join(missing)))


def check_scanned(src, scanner, manifest, expect_tables, allow_foreign_script=False):
    """What is checked once a dump has been read whole (by dump_verify, and by a restore as it loads it)."""
    if manifest is None and not scanner.from_pg_dump and not allow_foreign_script:
        raise DumpError("%s was not written by pg_dump (no '-- Dumped by pg_dump version' line at its top) and has no "
                        "manifest: nothing proves it complete (a truncated script would go live without what its end "
                        "creates); pass allow_foreign_script=true to accept it as it is" % src)
    check_expected_tables(scanner.tables, expect_tables, src)
    if manifest is not None:
        compare_counts(scanner.row_counts, manifest, "the dump's", scanner.loose)
        missing = sorted(set(manifest_tables(manifest)) - set(scanner.tables))
        if missing:
            raise DumpError("%s lacks tables its manifest lists: %s" % (src, ", ".join(missing)))


def check(src, fmt, compression, manifest, expect_tables=(), archive_tool=None, allow_foreign_script=False):
    """Full check of a dump without a server: SHA-256 against the manifest, complete decompression, the SQL as psql
    would read it (no meta-command, pg_dump's completion line), CREATE TABLE for each expected table, and the dump's
    own row counts against the manifest's."""
    if manifest is not None:
        if manifest.get("format", fmt) != fmt:
            raise DumpError("%s is a %s dump but its manifest says %s" % (src, fmt, manifest.get("format")))
        check_digest(src, fmt, manifest)
    sha = None
    if fmt == "plain":
        reader = DumpReader(src, compression)
        scanner = SqlScanner(lambda _data: None)
        chunks = reader.chunks()
        try:
            for chunk in chunks:
                scanner.feed(chunk)
        except DumpError:
            drain(chunks)
            raise
        scanner.finish()
        sha = reader.hexdigest
    else:
        if archive_tool is None:
            raise DumpError("reading a %s dump needs pg_restore (install postgresql-client on this host)" % fmt)
        scanner = archive_tool.scan(src)
    check_scanned(src, scanner, manifest, expect_tables, allow_foreign_script)
    return dict(format=fmt, compression=compression, tables=sorted(set(scanner.tables)), row_counts=scanner.row_counts,
                loose=scanner.loose, sha256=sha)


def verify(src, trust, manifest=None, require_manifest=True, expect_tables=(), archive_tool=None, allow_foreign_script=False):
    """check() of a dump found by its path, with its manifest (`manifest`, default the sibling one), whose signature
    `trust` (a _signature.Trust) must accept."""
    fmt, compression = detect_format(src)
    manifest_path, data, verdict = find_manifest(src, manifest, require_manifest, trust)
    result = check(src, fmt, compression, data, expect_tables, archive_tool, allow_foreign_script)
    result.update(manifest_path=manifest_path, manifest=data, signature=verdict)
    return result
