# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line interface: ``python3 -m wa_mcp <command>``."""

from __future__ import annotations

import argparse
import json
import sys

from . import auth, db, one_line, sessions
from .archive import archive_audit_log
from .config import Config
from .credentials import JWT_SECRET_FILE, JWT_SECRET_MIN_LENGTH, PEPPER_FILE, Credentials, fingerprint, load_pepper
from .seed import SeedSpec, seed
from .server import serve
from .smoke import smoke

CLI_ACTOR = "cli"


class CommandError(Exception):
    """An expected failure, reported as a one-line message."""


def _require_pepper(config: Config) -> bytes:
    pepper = load_pepper(config.secrets_dir)
    if pepper is None:
        raise CommandError(f"API key pepper not found: {config.secrets_dir / PEPPER_FILE} is missing or empty")
    return pepper


def _require_jwt_secret(config: Config) -> bytes:
    secret = Credentials.load(config.secrets_dir).jwt_secret
    if secret is None:
        raise CommandError(f"JWT secret not usable: {config.secrets_dir / JWT_SECRET_FILE} is missing or shorter than {JWT_SECRET_MIN_LENGTH} characters")
    return secret


def cmd_serve(config: Config, _args: argparse.Namespace) -> int:
    serve(config)
    return 0


def cmd_migrate(config: Config, _args: argparse.Namespace) -> int:
    with db.connection(config) as conn:
        applied = db.migrate(conn)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema up to date")
    return 0


def cmd_smoke(config: Config, args: argparse.Namespace) -> int:
    return 0 if smoke(config, args.url, args.send_phone_id, args.send_to) else 1


def cmd_seed(config: Config, args: argparse.Namespace) -> int:
    spec = SeedSpec(args.clients, args.keys_per_client, args.messages, args.audit_rows, args.media_files, args.media_size, args.sessions)
    if args.print_keys > spec.clients * spec.keys_per_client:
        raise CommandError(f"--print-keys {args.print_keys} exceeds the {spec.clients * spec.keys_per_client} key(s) to be issued")
    pepper = _require_pepper(config)
    with db.connection(config) as conn:
        tokens = seed(conn, config, pepper, spec, force=args.force)
    if tokens is None:
        print("already seeded")
        return 0
    summary = (
        f"seeded {spec.clients} client(s), {len(tokens)} API key(s), {spec.messages} message(s),"
        f" {spec.audit_rows} audit row(s), {spec.media_files} media file(s), {spec.sessions} session(s)"
    )
    # With --print-keys, stdout carries only the tokens so callers can consume it directly.
    print(summary, file=sys.stderr if args.print_keys else sys.stdout)
    for token in tokens[:args.print_keys]:
        print(token)
    return 0


def cmd_keys_issue(config: Config, args: argparse.Namespace) -> int:
    pepper = _require_pepper(config)
    with db.transaction(config) as cur:
        client_id = db.ensure_client(cur, args.client, args.contact)
        token = auth.issue_key(cur, client_id, pepper, CLI_ACTOR)
    print(token)
    return 0


def cmd_keys_revoke(config: Config, args: argparse.Namespace) -> int:
    with db.transaction(config) as cur:
        if not auth.revoke_key(cur, args.prefix, CLI_ACTOR):
            raise CommandError(f"no active API key with prefix {args.prefix}")
    print(f"revoked {args.prefix}")
    return 0


def cmd_keys_status(config: Config, _args: argparse.Namespace) -> int:
    pepper = load_pepper(config.secrets_dir)
    with db.transaction(config) as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE revoked_at IS NULL) FROM api_keys")
        total, active = cur.fetchone()
        cur.execute("SELECT pepper_fingerprint, count(*) FROM api_keys WHERE revoked_at IS NULL GROUP BY 1 ORDER BY 1")
        by_fingerprint = dict(cur.fetchall())
    print(json.dumps({
        "total": total,
        "active": active,
        "revoked": total - active,
        "by_pepper_fingerprint": by_fingerprint,
        "current_pepper_fingerprint": fingerprint(pepper) if pepper is not None else None,
    }, sort_keys=True))
    return 0


def cmd_keys_revoke_all(config: Config, args: argparse.Namespace) -> int:
    with db.transaction(config) as cur:
        cur.execute("UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL")
        count = cur.rowcount
        db.audit(cur, CLI_ACTOR, "api_keys_revoked_all", "success", {"reason": args.reason, "count": count})
    print(count)
    return 0


def cmd_sessions_create(config: Config, args: argparse.Namespace) -> int:
    secret = _require_jwt_secret(config)
    with db.transaction(config) as cur:
        cur.execute("SELECT id FROM clients WHERE name = %s", (args.client,))
        row = cur.fetchone()
        if row is None:
            raise CommandError(f"no client named {args.client}")
        tokens = sessions.create(cur, row[0], secret, CLI_ACTOR)
    print(json.dumps(tokens, sort_keys=True))
    return 0


def cmd_sessions_status(config: Config, _args: argparse.Namespace) -> int:
    with db.transaction(config) as cur:
        print(json.dumps(sessions.status(cur), sort_keys=True))
    return 0


def cmd_audit_archive(config: Config, _args: argparse.Namespace) -> int:
    with db.connection(config) as conn:
        written, skipped = archive_audit_log(conn, config.audit_archive_dir)
    print(f"wrote {written} file(s); {skipped} hour(s) already archived")
    return 0


def _count(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wa-mcp", description="Reference whatsapp-mcp service (incident runbook sandbox).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API").set_defaults(func=cmd_serve)
    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)

    smoke_parser = commands.add_parser("smoke", help="end-to-end checks against a running service")
    smoke_parser.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of the service")
    smoke_parser.add_argument("--send-phone-id", help="also send a real test message through this phone number id")
    smoke_parser.add_argument("--send-to", default="15550000000", help="recipient of the test message")
    smoke_parser.set_defaults(func=cmd_smoke)

    seed_parser = commands.add_parser("seed", help="insert realistic data volumes (once, unless --force)")
    seed_parser.add_argument("--clients", type=_count(1), default=20)
    seed_parser.add_argument("--keys-per-client", type=_count(0), default=2)
    seed_parser.add_argument("--messages", type=_count(0), default=5000)
    seed_parser.add_argument("--audit-rows", type=_count(0), default=5000)
    seed_parser.add_argument("--media-files", type=_count(0), default=50)
    seed_parser.add_argument("--media-size", type=_count(0), default=4096, help="bytes per media file")
    seed_parser.add_argument("--sessions", type=_count(0), default=0, help="sessions, each with one refresh token nobody holds")
    seed_parser.add_argument("--print-keys", type=_count(0), default=0, metavar="N", help="print N issued tokens (summary goes to stderr)")
    seed_parser.add_argument("--force", action="store_true", help="seed another batch even if clients exist")
    seed_parser.set_defaults(func=cmd_seed)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    issue = keys.add_parser("issue", help="issue a key (creating the client if needed) and print only the token")
    issue.add_argument("--client", required=True)
    issue.add_argument("--contact", default="ops@example.invalid", help="contact email for a new client")
    issue.set_defaults(func=cmd_keys_issue)
    revoke = keys.add_parser("revoke", help="revoke one key")
    revoke.add_argument("--prefix", required=True)
    revoke.set_defaults(func=cmd_keys_revoke)
    keys.add_parser("status", help="key counts per pepper fingerprint, as JSON").set_defaults(func=cmd_keys_status)
    revoke_all = keys.add_parser("revoke-all", help="revoke every active key; prints how many")
    revoke_all.add_argument("--reason", required=True)
    revoke_all.set_defaults(func=cmd_keys_revoke_all)

    session_commands = commands.add_parser("sessions", help="manage sessions (refresh tokens)").add_subparsers(dest="sessions_command", required=True)
    create = session_commands.add_parser("create", help="open a session for an existing client; print its tokens as JSON")
    create.add_argument("--client", required=True)
    create.set_defaults(func=cmd_sessions_create)
    session_commands.add_parser("status", help="active sessions and usable refresh tokens, as JSON").set_defaults(func=cmd_sessions_status)

    commands.add_parser("audit-archive", help="export complete hours of audit_log to JSON-lines files").set_defaults(func=cmd_audit_archive)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Config.from_env(), args)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # The CLI contract is a one-line error and a non-zero exit, never a traceback.
        command = " ".join(filter(None, (args.command, getattr(args, "keys_command", None), getattr(args, "sessions_command", None))))
        print(f"wa-mcp {command}: error: {exc if isinstance(exc, CommandError) else one_line(exc)}", file=sys.stderr)
        return 1
