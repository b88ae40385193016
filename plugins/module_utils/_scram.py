# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL SCRAM-SHA-256 password verifiers (RFC 5802/7677, as PostgreSQL stores them). PRIVATE.

`ALTER ROLE ... PASSWORD '<verifier>'` stores the verifier as given, so the clear password never reaches the server,
its statement log or pg_stat_activity (what psql's \\password does). A verifier also tells, without a login attempt,
whether a role already has a given password. Passwords are taken as given, so they must be ASCII without NUL: a
client normalises a non-ASCII password (SASLprep) before SCRAM, and this collection generates URL-safe ASCII ones.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

ITERATIONS = 4096
VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


class ScramError(Exception):
    pass


def check_password(password):
    """Refuse what a verifier of the password as given would not match at login (the value is never shown)."""
    if not password.isascii() or "\0" in password:
        raise ScramError("the password holds %s, which a PostgreSQL client would %s before SCRAM, so the role could not log "
                         "in with it: use an ASCII password (as secret_rotate generates)"
                         % (("a NUL character", "cut off") if "\0" in password else ("non-ASCII characters", "normalise (SASLprep)")))


def _keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def _b64(raw):
    return base64.b64encode(raw).decode()


def verifier(password, salt=None, iterations=ITERATIONS):
    salt = os.urandom(16) if salt is None else salt
    stored_key, server_key = _keys(password, salt, iterations)
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, _b64(salt), _b64(stored_key), _b64(server_key))


def matches(stored, password):
    """Whether a stored rolpassword is the SCRAM verifier of `password` (False for md5, clear text or none)."""
    match = VERIFIER.match(stored or "")
    if not match:
        return False
    stored_key, server_key = _keys(password, base64.b64decode(match.group(2)), int(match.group(1)))
    return hmac.compare_digest(stored_key, base64.b64decode(match.group(3))) and hmac.compare_digest(server_key, base64.b64decode(match.group(4)))
