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

import json
import os
import re
import shutil
import subprocess

# Names of databases this collection creates or renames: no quoting surprises, room for a suffix within 63 bytes.
SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
FIELD_SEP = "\x1f"
RECORD_SEP = "\x1e"
NULL_MARK = "\x1dNULL\x1d"


class PgError(Exception):
    """A failed PostgreSQL operation; the message is one line an operator can act on."""


def check_name(name, what="database name", max_len=63):
    if not SAFE_NAME.match(name or "") or len(name) > max_len:
        raise PgError("%s %r is not accepted: use letters, digits and underscores, starting with a letter or "
                      "underscore, at most %d characters (no quotes, semicolons or spaces)" % (what, name, max_len))
    return name


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


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
                 maintenance_db="postgres", pg_bin_dir=None, connect_timeout=10, pgoptions=None):
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
        env = dict(os.environ, PGCONNECT_TIMEOUT=str(self.connect_timeout), PGAPPNAME="runbooks-incident")
        env.pop("PGPASSWORD", None)
        env.pop("PGOPTIONS", None)
        if self.login_password:
            env["PGPASSWORD"] = self.login_password
        if self.pgoptions:
            env["PGOPTIONS"] = self.pgoptions
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
        for name, value in (("PGPASSWORD", self.login_password), ("PGOPTIONS", self.pgoptions)):
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
        return self.prefix() + [self.tool(tool)] + self.connection_args() + list(args)

    def psql_command(self, db, *extra):
        return self.command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, *extra)

    def run(self, argv, stdin_text=None):
        res = subprocess.run(argv, input=stdin_text, capture_output=True, text=True, env=self.env(), check=False)
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

    def user_tables(self, db):
        """Tables of the database as schema-qualified names (`public.` left out), sorted."""
        return [row[0] for row in self.query(USER_TABLES_SQL, db)]

    def row_counts(self, db, tables):
        """Exact row counts, each table ONLY (partitions count for themselves, as in the dump's COPY blocks)."""
        return parse_counts(self.query(row_counts_sql(tables), db)) if tables else {}

    def terminate_sessions(self, db):
        self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                   % quote_literal(db))


USER_TABLES_SQL = (
    "SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1")


def recorded_change(runtime, db, action, change_id, audit_table="audit_log"):
    """The details (a dict) of the first `action` row of the service's audit table for change_id, or None: what makes
    a change done by a runbook idempotent per change id."""
    details = runtime.scalar("SELECT details FROM %s WHERE action = %s AND details->>'change_id' = %s ORDER BY id LIMIT 1"
                             % (qualified(audit_table), quote_literal(action), quote_literal(change_id)), db)
    return json.loads(details) if details else None


def row_counts_sql(tables):
    return " UNION ALL ".join("SELECT %s, count(*) FROM ONLY %s" % (quote_literal(t), qualified(t)) for t in tables)


def parse_counts(rows):
    return {name: int(count) for name, count in rows}


def qualified(table):
    """SQL for a table name as returned by Runtime.user_tables (`public.` implied)."""
    schema, _sep, name = table.rpartition(".")
    return "%s.%s" % (quote_ident(schema or "public"), quote_ident(name))


class Session:
    """One long-lived psql session (a coprocess), for work that must share a transaction or snapshot.

    Queries are written to psql's stdin followed by an \\echo marker; the rows are read back up to the marker.
    With ON_ERROR_STOP psql exits on the first error, which surfaces here as PgError with its message.
    """

    def __init__(self, runtime, db):
        self._marker = 0
        self._proc = subprocess.Popen(
            runtime.psql_command(db, "-A", "-t", "-F", FIELD_SEP, "-P", "null=" + NULL_MARK),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runtime.env())

    def query(self, sql):
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
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()
        self._proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
