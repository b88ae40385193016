# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HS256 JSON Web Tokens with the standard library: the image has no JWT package, and HS256 is all the service signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

HEADER = {"alg": "HS256", "typ": "JWT"}
# Three base64url parts; the signature may be empty so that an "alg": "none" token is refused as such, not as a bad shape.
SHAPE_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class JwtError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def looks_like_jwt(token: str) -> bool:
    return SHAPE_RE.fullmatch(token) is not None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_part(value: dict) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _signature(secret: bytes, signing_input: str) -> str:
    return _b64encode(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def encode(claims: dict, secret: bytes) -> str:
    signing_input = f"{_json_part(HEADER)}.{_json_part(claims)}"
    return f"{signing_input}.{_signature(secret, signing_input)}"


def decode(token: str, secret: bytes, now: int) -> dict:
    """The claims of a token signed with ``secret`` whose ``exp`` is still ahead; JwtError otherwise.

    The header must say HS256 before anything else is trusted ("alg": "none", or a key used with another
    algorithm); the signature is compared in its canonical encoding, so no other spelling of it verifies.
    """
    if not looks_like_jwt(token):
        raise JwtError("jwt_malformed")
    header_part, payload_part, signature = token.split(".")
    try:
        header = json.loads(_b64decode(header_part))
    except ValueError:
        raise JwtError("jwt_malformed") from None
    if not isinstance(header, dict):
        raise JwtError("jwt_malformed")
    if header.get("alg") != HEADER["alg"]:
        raise JwtError("jwt_unsupported_alg")
    if not hmac.compare_digest(signature.encode(), _signature(secret, f"{header_part}.{payload_part}").encode()):
        raise JwtError("jwt_bad_signature")
    try:
        claims = json.loads(_b64decode(payload_part))
    except ValueError:
        raise JwtError("jwt_malformed") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        raise JwtError("jwt_malformed")
    if now >= claims["exp"]:
        raise JwtError("jwt_expired")
    return claims
