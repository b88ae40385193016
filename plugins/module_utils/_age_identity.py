# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The public key (recipient) of an age private key, computed in memory. PRIVATE to the collection: no compatibility
promise.

An age X25519 identity is the bech32 string (BIP-173, not bech32m) of a 32-byte X25519 scalar with the human-readable
part "age-secret-key-", written in upper case: AGE-SECRET-KEY-1...; its recipient is the bech32 string of the X25519
public key with the part "age", in lower case: age1.... age itself refuses an identity in lower case and a recipient
in upper case, and so does this module, so a key it accepts is one age reads.

Nothing here runs a program or writes a file: the key stays in this process. No message says anything of a key's
content (not a character of it): a line is named by its position only. A recipient is public and may be named.

Standard library and `cryptography` (which ansible-core requires); no Ansible imports.
"""
from __future__ import annotations

import traceback

try:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    X25519PrivateKey = Encoding = PublicFormat = None
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

IDENTITY_HRP = "age-secret-key-"
RECIPIENT_HRP = "age"
KEY_BYTES = 32
CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
CHARSET_VALUES = {char: value for value, char in enumerate(CHARSET)}
GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
CHECKSUM_LENGTH = 6


class IdentityError(ValueError):
    """Why a key or a recipient is not a valid one, in words for the operator (never quoting a private key)."""


def _polymod(values):
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(GENERATOR):
            if (top >> bit) & 1:
                check ^= generator
    return check


def _hrp_expand(hrp):
    return [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]


def _convert_bits(data, from_bits, to_bits, pad):
    """Regroup `data` (ints of `from_bits` bits) into ints of `to_bits` bits; None when the padding is not zero."""
    accumulator, bits, out = 0, 0, []
    mask = (1 << to_bits) - 1
    kept = (1 << (from_bits + to_bits - 1)) - 1
    for value in data:
        accumulator = ((accumulator << from_bits) | value) & kept
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((accumulator >> bits) & mask)
    if pad:
        if bits:
            out.append((accumulator << (to_bits - bits)) & mask)
    elif bits >= from_bits or (accumulator << (to_bits - bits)) & mask:
        return None
    return out


def bech32_encode(hrp, data):
    """The bech32 string (BIP-173, lower case) of the bytes `data` with the human-readable part `hrp`."""
    values = _convert_bits(data, 8, 5, True)
    polymod = _polymod(_hrp_expand(hrp) + values + [0] * CHECKSUM_LENGTH) ^ 1
    checksum = [(polymod >> 5 * (CHECKSUM_LENGTH - 1 - i)) & 31 for i in range(CHECKSUM_LENGTH)]
    return hrp + "1" + "".join(CHARSET[value] for value in values + checksum)


def bech32_decode(text, what):
    """(human-readable part in lower case, bytes) of the bech32 string `text`, its checksum verified. `what` names
    it in errors, which never quote `text` (it may be a private key)."""
    if text.lower() != text and text.upper() != text:
        raise IdentityError("%s mixes upper and lower case, which bech32 does not allow: it was mistyped or damaged" % what)
    if not all("!" <= char <= "~" for char in text):
        raise IdentityError("%s holds a character that no age key has (a space, a control or non-ASCII character)" % what)
    lowered = text.lower()
    separator = lowered.rfind("1")
    if separator < 1 or len(lowered) - separator - 1 < CHECKSUM_LENGTH:
        raise IdentityError("%s is not a bech32 string (<type>1<data><checksum>)" % what)
    hrp, data_part = lowered[:separator], lowered[separator + 1:]
    if any(char not in CHARSET_VALUES for char in data_part):
        raise IdentityError("%s holds a character outside the bech32 alphabet (b, i, o or 1 after the type): it was "
                            "mistyped or damaged" % what)
    values = [CHARSET_VALUES[char] for char in data_part]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise IdentityError("%s: checksum mismatch, it was mistyped or damaged" % what)
    data = _convert_bits(values[:-CHECKSUM_LENGTH], 5, 8, False)
    if data is None:
        raise IdentityError("%s: malformed data (bad padding) although its checksum matches" % what)
    return hrp, bytes(data)


def _key_bytes(text, hrp, what, case_rule):
    """The 32 key bytes of the bech32 string `text` of type `hrp`, which must be written as `case_rule` says."""
    found_hrp, data = bech32_decode(text, what)
    if found_hrp != hrp:
        # The type of an age string is public (age1, AGE-SECRET-KEY-, AGE-PLUGIN-...): it says what was given.
        raise IdentityError("%s is of type %s, not %s" % (what, _shown_type(found_hrp), _shown_type(hrp)))
    if not case_rule(text):
        raise IdentityError("%s is not in %s as age writes it (age would refuse it)"
                            % (what, "upper case" if hrp == IDENTITY_HRP else "lower case"))
    if len(data) != KEY_BYTES:
        raise IdentityError("%s holds %d bytes, not the %d of an X25519 key" % (what, len(data), KEY_BYTES))
    return data


def _shown_type(hrp):
    """A bech32 type as age writes it, for messages: AGE-SECRET-KEY-1..., age1...; another one quoted if short."""
    if hrp == IDENTITY_HRP:
        return "AGE-SECRET-KEY-1... (an age private key)"
    if hrp == RECIPIENT_HRP:
        return "age1... (an age public key)"
    if hrp.startswith("age-plugin-"):
        return "AGE-PLUGIN-... (a plugin's identity, which this module cannot read)"
    return "another one"


def recipient_of(identity):
    """The recipient (age1..., lower case) of the age X25519 identity `identity` (AGE-SECRET-KEY-1..., upper case).
    IdentityError, never quoting the identity, when it is not one."""
    if CRYPTOGRAPHY_IMPORT_ERROR:
        raise IdentityError("the Python package cryptography is needed to compute an age public key")
    if not isinstance(identity, str):
        raise IdentityError("the age key is not text")
    scalar = _key_bytes(identity.strip(), IDENTITY_HRP, "the age key", lambda text: text.upper() == text)
    public = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return bech32_encode(RECIPIENT_HRP, public)


def _identity_lines(text):
    """[(line number, identity line)] of an age key file's content: blank lines and # comments left out."""
    if not isinstance(text, str):
        raise IdentityError("the age key is not text")
    found = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            found.append((number, line))
    if not found:
        raise IdentityError("the age key holds no identity (only blank lines and # comments): an age key file has a "
                            "line AGE-SECRET-KEY-1...")
    return found


def recipients_of_key(text):
    """The recipients of every identity in the age key file content `text`, in order; IdentityError naming the
    line (by number only) of the first one that is not an age X25519 identity."""
    found = []
    for number, line in _identity_lines(text):
        try:
            found.append(recipient_of(line))
        except IdentityError as exc:
            raise IdentityError("line %d of the key: %s" % (number, exc)) from None
    return found


def check_recipient(recipient):
    """`recipient` (an age public key, age1...) stripped, its checksum and length verified; IdentityError else. The
    message names the recipient (public) unless it looks like a private key."""
    if not isinstance(recipient, str):
        raise IdentityError("a recipient is not text")
    recipient = recipient.strip()
    if recipient.upper().startswith(IDENTITY_HRP.upper()):
        raise IdentityError("a recipient is an age PRIVATE key: give its public key (age-keygen -y), never the private "
                            "key itself")
    if recipient.startswith(("ssh-ed25519", "ssh-rsa")):
        raise IdentityError("a recipient is an SSH public key: this module compares age X25519 keys (age1...) only")
    if not recipient.lower().startswith(RECIPIENT_HRP + "1"):
        # Not shown: a value that is no age public key could be anything, a secret pasted in the wrong place too.
        raise IdentityError("a recipient is not an age public key (age1 followed by 58 characters)")
    shown = recipient if len(recipient) <= 100 else recipient[:80] + "..."
    _key_bytes(recipient, RECIPIENT_HRP, "recipient %s" % shown, lambda text: text.lower() == text)
    return recipient
