# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL client tools in one of two runtimes. PRIVATE to the collection: no compatibility promise.

- libpq: the client tools installed on the managed host reach the server (login_host, login_port, login_user,
  login_password, login_unix_socket), like community.postgresql.
- compose: the tools run inside the database container (`docker compose exec -T <service> ...`), as the seeds do.

Commands are argv lists, SQL travels on stdin, and a password travels only in the environment (PGPASSWORD; the
compose runtime forwards it with `exec -e PGPASSWORD`, which takes the value from the environment, not argv).
Pure Python: also imported by the host-side CLI of the backup timer.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

# Names of databases this collection creates or renames: no quoting surprises, room for a suffix within 63 bytes.
SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
FIELD_SEP = "\x1f"
RECORD_SEP = "\x1e"
NULL_MARK = "\x1dNULL\x1d"
# A part of a table key left as it is: what PostgreSQL folds an unquoted name to (every other part is double-quoted).
PLAIN_KEY_PART = re.compile(r"[a-z_][a-z0-9_]*\Z")
KEY_PART = r'(?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+")'
KEY = re.compile(r"(?:(%s)\.)?(%s)\Z" % (KEY_PART, KEY_PART))
# What may reach PGOPTIONS (the server splits it at spaces and reads backslashes: a value must hold neither).
SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*\Z")
SETTING_VALUE = re.compile(r"[A-Za-z0-9_.:+-]+\Z")
MEMORY = re.compile(r"([0-9]{1,13})(kB|MB|GB|TB)?\Z")
MEMORY_UNITS_KB = {None: 1, "kB": 1, "MB": 1024, "GB": 1024 ** 2, "TB": 1024 ** 3}
# maintenance_work_mem's bounds in PostgreSQL (1 MB to 2147483647 kB).
MEMORY_MIN_KB, MEMORY_MAX_KB = 1024, 2147483647


class PgError(Exception):
    """A failed PostgreSQL operation; the message is one line an operator can act on."""


def check_name(name, what="database name", max_len=63):
    if not SAFE_NAME.match(name or "") or len(name) > max_len:
        raise PgError("%s %r is not accepted: use letters, digits and underscores, starting with a letter or "
                      "underscore, at most %d characters (no quotes, semicolons or spaces)" % (what, name, max_len))
    return name


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def table_key(schema, name):
    """How manifests and results name a table: `clients`, `audit.log` (`public.` left out), each part that is not
    what PostgreSQL folds an unquoted name to double-quoted as in SQL: `"Odd.Schema"."t.1"`, `"qu""ote"`, `"é"`."""
    part = name if PLAIN_KEY_PART.match(name) else quote_ident(name)
    if schema == "public":
        return part
    return "%s.%s" % (schema if PLAIN_KEY_PART.match(schema) else quote_ident(schema), part)


def _unquote_key_part(part):
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def split_key(key):
    """(schema, name) of a table key. A key that is not in that form was written before names were quoted
    (`Mixed`, `audit.Log`, `sp ace`): it is read the old way, split at its last dot."""
    match = KEY.match(key)
    if match:
        return (_unquote_key_part(match.group(1)) if match.group(1) else "public"), _unquote_key_part(match.group(2))
    schema, _sep, name = key.rpartition(".")
    return schema or "public", name


def normalize_key(key):
    """The key of a table named by a user or an older manifest (`public.clients` -> `clients`, `Mixed` -> `"Mixed"`)."""
    return table_key(*split_key(key))


def memory_kb(value):
    """kB of a PostgreSQL memory setting (`512MB`, `65536`: digits and an optional kB, MB, GB or TB)."""
    match = MEMORY.match(value or "")
    if not match:
        raise PgError("%r is not a PostgreSQL memory size (digits followed by nothing, kB, MB, GB or TB, e.g. 512MB)" % (value,))
    kb = int(match.group(1)) * MEMORY_UNITS_KB[match.group(2)]
    if not MEMORY_MIN_KB <= kb <= MEMORY_MAX_KB:
        raise PgError("%s is outside what PostgreSQL accepts (1MB to 2147483647kB)" % value)
    return kb


def session_options(settings):
    """PGOPTIONS for (name, value) pairs: `-c name=value ...`, each name and value checked so that none can carry
    another option (a space, backslash or quote in a value would)."""
    options = []
    for name, value in settings:
        if not SETTING_NAME.match(name) or not SETTING_VALUE.match(value):
            raise PgError("setting %r = %r cannot be passed to the server (letters, digits and _.:+- only)" % (name, value))
        options.append("-c %s=%s" % (name, value))
    return " ".join(options)


def quote_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def first_line(text):
    """The most useful line of a tool's stderr (psql/pg_dump print the cause first, then context)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line
    return lines[0] if lines else "no error output"


class Runtime:
    """Where and how the PostgreSQL client tools run."""

    def __init__(self, login_user="postgres", login_password=None, login_host=None, login_port=None,
                 login_unix_socket=None, compose_project_dir=None, compose_service="postgres",
                 maintenance_db="postgres", pg_bin_dir=None, connect_timeout=10, pgoptions=None, timeout=None):
        self.login_user = login_user
        self.login_password = login_password or None
        self.login_host = login_unix_socket or login_host
        self.login_port = login_port
        self.compose_project_dir = compose_project_dir
        self.compose_service = compose_service
        self.maintenance_db = maintenance_db
        self.pg_bin_dir = pg_bin_dir
        self.connect_timeout = connect_timeout
        # Session settings for every connection of the tools (PGOPTIONS), e.g. a restore's maintenance_work_mem.
        self.pgoptions = pgoptions
        # Seconds a client tool may run before it is killed (None: no limit). A reader that must answer in bounded
        # time sets it: connect_timeout does not bound a `docker compose exec` that hangs on a stuck engine.
        self.timeout = timeout

    @classmethod
    def from_params(cls, params):
        return cls(**{key: params.get(key) for key in (
            "login_user", "login_password", "login_host", "login_port", "login_unix_socket",
            "compose_project_dir", "compose_service", "maintenance_db", "pg_bin_dir") if params.get(key) is not None})

    @property
    def kind(self):
        return "compose" if self.compose_project_dir else "libpq"

    def describe(self):
        if self.kind == "compose":
            return "compose service %s in %s" % (self.compose_service, self.compose_project_dir)
        return "server %s:%s" % (self.login_host or "local socket", self.login_port or 5432)

    def env(self):
        # Names and messages are read as UTF-8 whatever the locale (a systemd job runs with LANG unset).
        env = dict(os.environ, PGCONNECT_TIMEOUT=str(self.connect_timeout), PGAPPNAME="runbooks-incident",
                   PGCLIENTENCODING="UTF8")
        env.pop("PGPASSWORD", None)
        env.pop("PGOPTIONS", None)
        if self.login_password:
            env["PGPASSWORD"] = self.login_password
        if self.pgoptions:
            env["PGOPTIONS"] = self.pgoptions
        if any("\0" in value for value in (self.login_password or "", self.pgoptions or "")):
            raise PgError("the password or session options hold a NUL character")
        return env

    def tool(self, name):
        if self.kind == "compose":
            return name
        if self.pg_bin_dir:
            return os.path.join(self.pg_bin_dir, name)
        return shutil.which(name) or name

    def prefix(self):
        """argv before the tool name: the compose exec wrapper (stdin stays attached), or nothing for libpq."""
        if self.kind != "compose":
            return []
        argv = ["docker", "compose", "--project-directory", self.compose_project_dir, "exec", "-T"]
        for name, value in (("PGPASSWORD", self.login_password), ("PGOPTIONS", self.pgoptions), ("PGCLIENTENCODING", "UTF8")):
            if value:
                argv += ["-e", name]
        return argv + [self.compose_service]

    def connection_args(self):
        args = ["-U", self.login_user]
        if self.kind == "libpq":
            if self.login_host:
                args += ["-h", self.login_host]
            if self.login_port:
                args += ["-p", str(self.login_port)]
        return args

    def command(self, tool, *args):
        argv = self.prefix() + [self.tool(tool)] + self.connection_args() + [str(arg) for arg in args]
        if any("\0" in arg for arg in argv):
            raise PgError("a connection parameter or name holds a NUL character: %r" % [arg for arg in argv if "\0" in arg][0])
        return argv

    def psql_command(self, db, *extra):
        return self.command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, *extra)

    def run(self, argv, stdin_text=None):
        if stdin_text and "\0" in stdin_text:
            raise PgError("the SQL holds a NUL character, which PostgreSQL text cannot hold; nothing was run")
        try:
            res = subprocess.run(argv, input=stdin_text, capture_output=True, encoding="utf-8", errors="replace",
                                 env=self.env(), check=False, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise PgError("%s gave no answer within %s s (killed)" % (os.path.basename(argv[0]), self.timeout))
        except OSError as exc:
            raise PgError("cannot run %s: %s" % (argv[0], exc.strerror or exc))
        if res.returncode != 0:
            raise PgError(first_line(res.stderr))
        return res.stdout

    def query(self, sql, db=None):
        """Rows of a query as lists of strings (NULL as None)."""
        out = self.run(self.psql_command(db or self.maintenance_db, "-A", "-t", "-F", FIELD_SEP, "-R", RECORD_SEP,
                                         "-P", "null=" + NULL_MARK, "-f", "-"), sql)
        rows = []
        for record in out.split(RECORD_SEP):
            record = record.strip("\n")
            if record:
                rows.append([None if value == NULL_MARK else value for value in record.split(FIELD_SEP)])
        return rows

    def scalar(self, sql, db=None):
        rows = self.query(sql, db)
        return rows[0][0] if rows else None

    def execute(self, sql, db=None):
        self.run(self.psql_command(db or self.maintenance_db, "-f", "-"), sql)

    def ping(self):
        """Fail early and clearly when the server cannot be reached."""
        if self.kind == "compose":
            res = subprocess.run(["docker", "compose", "--project-directory", self.compose_project_dir, "ps",
                                  "--status", "running", "--services"], capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise PgError("cannot query docker compose in %s: %s" % (self.compose_project_dir, first_line(res.stderr)))
            if self.compose_service not in res.stdout.split():
                raise PgError("the compose service %s is not running in %s" % (self.compose_service, self.compose_project_dir))
        try:
            return self.scalar("SELECT current_setting('server_version')")
        except PgError as exc:
            raise PgError("cannot reach PostgreSQL (%s): %s" % (self.describe(), exc))

    # ---------------------------------------------------------------------------------- catalogue helpers
    def database_exists(self, name):
        return self.scalar("SELECT 1 FROM pg_database WHERE datname = %s" % quote_literal(name)) == "1"

    def databases_like(self, pattern):
        """Database names matching a POSIX regular expression, sorted."""
        rows = self.query("SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY datname" % quote_literal(pattern))
        return [row[0] for row in rows]

    def database_comment(self, name):
        return self.scalar("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
                           % quote_literal(name))

    def tables(self, db):
        return Tables.from_rows(self.query(TABLES_SQL, db))

    def user_tables(self, db):
        """Keys of the database's tables (see table_key), sorted."""
        return self.tables(db).keys

    def row_counts(self, db, tables=None):
        """Exact row counts of `tables` (keys; default all) in one statement, see Tables.count."""
        return self.tables(db).count(lambda sql: self.query(sql, db), tables)

    def terminate_sessions(self, db):
        self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                   % quote_literal(db))


# The tables a dump holds: ordinary and partitioned, not temporary, not an extension's; names as hex of their UTF-8
# (no separator, newline or locale can garble them), with the parent of each partition.
TABLES_SQL = (
    "SELECT encode(convert_to(n.nspname::text, 'UTF8'), 'hex'), encode(convert_to(c.relname::text, 'UTF8'), 'hex'), "
    "c.relkind, encode(convert_to(pn.nspname::text, 'UTF8'), 'hex'), encode(convert_to(p.relname::text, 'UTF8'), 'hex') "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND c.relispartition "
    "LEFT JOIN pg_class p ON p.oid = i.inhparent LEFT JOIN pg_namespace pn ON pn.oid = p.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
    "AND d.objid = c.oid AND d.deptype = 'e')")


def _unhex(value):
    return bytes.fromhex(value).decode("utf-8", errors="replace")


def in_tree(parents, key, wanted):
    """Whether `key` or one of its ancestors (`parents`: partition -> partitioned table) is in `wanted`."""
    seen = set()
    while key is not None and key not in seen:
        if key in wanted:
            return True
        seen.add(key)
        key = parents.get(key)
    return False


def tree_counts(rows, parents):
    """Row counts with each partitioned table's added up from its partitions' (`parents`: partition -> parent)."""
    counts = dict(rows)
    for key, count in rows.items():
        seen, parent = {key}, parents.get(key)
        while parent is not None and parent not in seen:
            seen.add(parent)
            counts[parent] = counts.get(parent, 0) + count
            parent = parents.get(parent)
    return counts


class Tables:
    """The tables of a database by key: which hold rows ('r') and which are partitioned ('p'), each partition's parent.

    A table's row count is its own rows (FROM ONLY, as its COPY block in a dump holds them); a partitioned table's is
    the total of its partitions, sub-partitions included (it holds none itself).
    """

    def __init__(self, kinds, parents):
        self.kinds = kinds
        self.parents = parents

    @classmethod
    def from_rows(cls, rows):
        kinds, parents = {}, {}
        for schema, name, kind, parent_schema, parent_name in rows:
            key = table_key(_unhex(schema), _unhex(name))
            kinds[key] = kind
            if parent_name is not None:
                parents[key] = table_key(_unhex(parent_schema), _unhex(parent_name))
        return cls(kinds, parents)

    @property
    def keys(self):
        return sorted(self.kinds)

    def count(self, query, tables=None):
        """Exact row counts of `tables` (default all), every table counted in one statement (one snapshot)."""
        wanted = set(self.kinds if tables is None else tables)
        unknown = sorted(wanted - set(self.kinds))
        if unknown:
            raise PgError("no table %s" % ", ".join(unknown))
        leaves = sorted(key for key, kind in self.kinds.items() if kind == "r" and in_tree(self.parents, key, wanted))
        rows = {}
        if leaves:
            sql = " UNION ALL ".join("SELECT %d, count(*) FROM ONLY %s" % (index, qualified(key)) for index, key in enumerate(leaves))
            rows = {leaves[int(index)]: int(count) for index, count in query(sql)}
        counts = tree_counts(rows, self.parents)
        return {key: counts.get(key, 0) for key in sorted(wanted)}


def parse_counts(rows):
    return {name: int(count) for name, count in rows}


def qualified(table):
    """SQL for a table key (see table_key; `public.` implied), each part quoted."""
    schema, name = split_key(table)
    return "%s.%s" % (quote_ident(schema), quote_ident(name))


def end_psql(proc, last_input=None):
    """End a psql coprocess (Popen with text pipes): unless it has exited, write `last_input` if given (say
    "ROLLBACK;\n") and close its stdin, which makes it exit; kill it if it has not within 30 s. Then close its
    output pipes. A psql that has gone already (a broken pipe) is no error."""
    if proc.poll() is None:
        try:
            if last_input:
                proc.stdin.write(last_input)
                proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class Session:
    """One long-lived psql session (a coprocess), for work that must share a transaction or snapshot.

    Queries are written to psql's stdin followed by an \\echo marker; the rows are read back up to the marker.
    With ON_ERROR_STOP psql exits on the first error, which surfaces here as PgError with its message.
    """

    def __init__(self, runtime, db):
        self._marker = 0
        argv = runtime.psql_command(db, "-A", "-t", "-F", FIELD_SEP, "-P", "null=" + NULL_MARK)
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          encoding="utf-8", errors="replace", env=runtime.env())
        except OSError as exc:
            raise PgError("cannot run %s: %s" % (argv[0], exc.strerror or exc))

    def query(self, sql):
        if "\0" in sql:
            raise PgError("the SQL holds a NUL character, which PostgreSQL text cannot hold; nothing was run")
        self._marker += 1
        marker = "__runbooks_incident_%d__" % self._marker
        try:
            self._proc.stdin.write("%s\n\\echo %s\n" % (sql.rstrip().rstrip(";") + ";", marker))
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise PgError(first_line(self._proc.stderr.read()))
        rows = []
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            if line == marker:
                return rows
            if line:
                rows.append([None if value == NULL_MARK else value for value in line.split(FIELD_SEP)])
        raise PgError(first_line(self._proc.stderr.read()))

    def close(self):
        end_psql(self._proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
