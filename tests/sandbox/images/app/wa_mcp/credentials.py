# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secrets read from WA_SECRETS_DIR: the API key pepper(s), the JWT signing secret and the Meta access tokens.

Only fingerprints of these values may ever leave this process (logs, errors, JSON).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PEPPER_FILE = "api_key_pepper"
PREVIOUS_PEPPER_FILE = "api_key_pepper.previous"
PREVIOUS_EXPIRY_FILE = "api_key_pepper.previous_expires_at"
JWT_SECRET_FILE = "auth_jwt_secret"
# As the custody-api seed demands ("JWT_SECRET must be 32+ characters"): a short HMAC key can be brute-forced offline from one token.
JWT_SECRET_MIN_LENGTH = 32
ACCESS_TOKEN_PREFIX = "wa_access_token_"
# Phone number ids are plain identifiers; anything with a dot (e.g. ``wa_access_token_123.bak``) is a leftover, not a token.
PHONE_ID_RE = re.compile(r"[A-Za-z0-9_-]+")


def fingerprint(value: bytes | str) -> str:
    if isinstance(value, str):
        value = value.encode()
    return hashlib.sha256(value).hexdigest()[:16]


def _read(path: Path) -> bytes | None:
    try:
        value = path.read_bytes().rstrip()
    except FileNotFoundError:
        return None
    return value or None


def _parse_expiry(raw: bytes | None) -> datetime | None:
    """Parse an ISO-8601 timestamp; naive or malformed values yield None so the previous pepper fails closed."""
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else None


def load_pepper(secrets_dir: Path) -> bytes | None:
    return _read(secrets_dir / PEPPER_FILE)


def load_access_tokens(secrets_dir: Path) -> dict[str, str]:
    tokens = {}
    if secrets_dir.is_dir():
        for path in secrets_dir.glob(ACCESS_TOKEN_PREFIX + "*"):
            phone_id = path.name[len(ACCESS_TOKEN_PREFIX):]
            token = _read(path) if PHONE_ID_RE.fullmatch(phone_id) and path.is_file() else None
            if token:
                tokens[phone_id] = token.decode()
    return tokens


@dataclass(frozen=True)
class PreviousPepper:
    key: bytes = field(repr=False)
    expires_at: datetime | None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    def accepted(self, now: datetime) -> bool:
        return self.expires_at is not None and now < self.expires_at

    def status(self, now: datetime) -> str:
        if self.expires_at is None:
            return f"not accepted: {PREVIOUS_EXPIRY_FILE} missing or invalid"
        return "accepted" if self.accepted(now) else "expired"


@dataclass(frozen=True)
class Credentials:
    pepper: bytes | None = field(repr=False)
    previous: PreviousPepper | None
    access_tokens: dict[str, str] = field(repr=False)
    # As read, even if too short (so problems() can say why); sign and verify only with ``jwt_secret``.
    raw_jwt_secret: bytes | None = field(repr=False)

    @classmethod
    def load(cls, secrets_dir: Path) -> Credentials:
        previous_key = _read(secrets_dir / PREVIOUS_PEPPER_FILE)
        previous = None
        if previous_key is not None:
            previous = PreviousPepper(previous_key, _parse_expiry(_read(secrets_dir / PREVIOUS_EXPIRY_FILE)))
        return cls(load_pepper(secrets_dir), previous, load_access_tokens(secrets_dir), _read(secrets_dir / JWT_SECRET_FILE))

    @property
    def pepper_fingerprint(self) -> str | None:
        return fingerprint(self.pepper) if self.pepper is not None else None

    @property
    def jwt_secret(self) -> bytes | None:
        """The key that signs and verifies access tokens; None unless long enough."""
        if self.raw_jwt_secret is None or len(self.raw_jwt_secret) < JWT_SECRET_MIN_LENGTH:
            return None
        return self.raw_jwt_secret

    def problems(self) -> list[str]:
        found = []
        if self.pepper is None:
            found.append(f"{PEPPER_FILE} missing or empty")
        if self.raw_jwt_secret is None:
            found.append(f"{JWT_SECRET_FILE} missing or empty")
        elif self.jwt_secret is None:
            found.append(f"{JWT_SECRET_FILE} shorter than {JWT_SECRET_MIN_LENGTH} characters")
        if not self.access_tokens:
            found.append(f"no {ACCESS_TOKEN_PREFIX}* files")
        return found

    def describe(self, now: datetime | None = None) -> dict:
        """Public, secret-free summary for /health and the startup log."""
        now = now or datetime.now(timezone.utc)
        previous = None
        if self.previous is not None:
            previous = {
                "fingerprint": self.previous.fingerprint,
                "expires_at": self.previous.expires_at.isoformat() if self.previous.expires_at else None,
                "accepted": self.previous.accepted(now),
            }
        return {
            "pepper_fingerprint": self.pepper_fingerprint,
            "previous_pepper": previous,
            "jwt_secret_fingerprint": fingerprint(self.raw_jwt_secret) if self.raw_jwt_secret is not None else None,
            "phone_ids": sorted(self.access_tokens),
        }
