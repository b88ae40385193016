# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shamir secret sharing of a short secret as paper shares. PRIVATE to the collection: no compatibility promise.

Shamir's scheme (pycryptodome) shares 16-byte values only, so the secret itself is encrypted with a random
AES-128-GCM key and that key is what gets shared; every share carries the same ciphertext. A share is one
printable line:

    rbi-shamir-v1:<k>of<n>:<index>:<share>:<sealed>:<checksum>

- <k>of<n>: any k of the n shares reopen the secret (2 <= k <= n <= 255);
- <index>: the share's x coordinate, 1..n (decimal);
- <share>: the 16-byte Shamir share of the key (GF(2^128), pycryptodome's Shamir without the ssss option),
  RFC 4648 base32 without padding (26 characters);
- <sealed>: 12-byte GCM nonce + 16-byte tag + ciphertext of the secret, base32 without padding, the same on
  every share of a set; the associated data is "rbi-shamir-v1:<k>of<n>", so k and n cannot be altered unnoticed;
- <checksum>: the first 8 hex characters of the SHA-256 of everything before the last colon (canonical form),
  so a typing mistake is caught and named before any combining.

Reading is forgiving of what copying from paper does: whitespace anywhere is ignored (a line may be typed in
groups or over several lines), lines starting with # are comments, base32 is read in any case, and 0/1/8 (not
in the base32 alphabet) are read as O/I/B. Anything else outside printable ASCII (an accented letter, a Unicode
digit) is no part of a share and is refused naming the share. The set id shown to holders (first 8 hex of the
SHA-256 of <sealed>) tells which shares belong together; it is derived, never typed.

Files are read and written without following a symlink at their name (a share or secret file that is a link,
a FIFO or a device is refused, never read), and the share directory is created without following a link someone
else could have planted (_fileio).
"""
from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import os
import re
import secrets
import traceback

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

# pycryptodome from PyPI installs as Crypto; Debian's python3-pycryptodome (and pycryptodomex) as Cryptodome.
try:
    from Crypto.Cipher import AES
    from Crypto.Protocol.SecretSharing import Shamir
    CRYPTO_IMPORT_ERROR = None
except ImportError:
    try:
        from Cryptodome.Cipher import AES
        from Cryptodome.Protocol.SecretSharing import Shamir
        CRYPTO_IMPORT_ERROR = None
    except ImportError:
        AES = Shamir = None
        CRYPTO_IMPORT_ERROR = traceback.format_exc()

PREFIX = "rbi-shamir-v1"
MAX_SHARES = 255
KEY_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
SET_RE = re.compile(r"^([0-9]+)of([0-9]+)\Z")
INDEX_RE = re.compile(r"^[0-9]+\Z")
# A share line, a share file or a secret split onto paper is small; more than this is not one (and is not read whole).
MAX_FILE_BYTES = 1 << 20
# Characters a reader of a paper copy may type for the base32 letters they look like.
B32_LOOKALIKES = str.maketrans("018", "OIB")


class ShareError(Exception):
    pass


Share = collections.namedtuple("Share", "threshold count index value sealed")


def fingerprint(data):
    """First 16 hex characters of the SHA-256 of `data` (bytes): names a secret without revealing it."""
    return hashlib.sha256(data).hexdigest()[:16]


def set_id(sealed):
    return hashlib.sha256(sealed).hexdigest()[:8]


def _b32encode(data):
    return base64.b32encode(data).decode("ascii").rstrip("=")


def _b32decode(text):
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _checksum(body):
    return hashlib.sha256(body.encode("ascii")).hexdigest()[:8]


def _associated_data(threshold, count):
    return ("%s:%dof%d" % (PREFIX, threshold, count)).encode("ascii")


def _body(threshold, count, index, value_text, sealed_text):
    """The canonical share line up to its checksum."""
    return "%s:%dof%d:%d:%s:%s" % (PREFIX, threshold, count, index, value_text, sealed_text)


def share_line(share):
    body = _body(share.threshold, share.count, share.index, _b32encode(share.value), _b32encode(share.sealed))
    return "%s:%s" % (body, _checksum(body))


def file_name(index, count):
    return "share-%d-of-%d.txt" % (index, count)


def check_split(secret, threshold, count):
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise ShareError("threshold must be at least 2 and shares between threshold and %d (got %d of %d)"
                         % (MAX_SHARES, threshold, count))
    if not secret:
        raise ShareError("the secret is empty")


def split(secret, threshold, count):
    """The `count` shares (Share tuples) of `secret` (bytes), any `threshold` of which reopen it."""
    check_split(secret, threshold, count)
    key = secrets.token_bytes(KEY_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(_associated_data(threshold, count))
    ciphertext, tag = cipher.encrypt_and_digest(secret)
    sealed = nonce + tag + ciphertext
    return [Share(threshold, count, index, value, sealed) for index, value in Shamir.split(threshold, count, key)]


def parse(text, label):
    """The Share in `text` (a share line, possibly with comment lines and whitespace); `label` names it in errors."""
    compact = "".join("".join(line.split()) for line in text.splitlines() if not line.lstrip().startswith("#"))
    fields = compact.split(":")
    if len(fields) != 6 or fields[0].lower() != PREFIX:
        raise ShareError("%s is not a share line (%s:<k>of<n>:<index>:<share>:<sealed>:<checksum>)" % (label, PREFIX))
    named = "%s (index %s)" % (label, fields[2]) if INDEX_RE.match(fields[2]) else label
    if not all(" " < char < "\x7f" for char in compact):
        raise ShareError("%s holds a character that no share has (not printable ASCII); it was mistyped or damaged" % named)
    counts = SET_RE.match(fields[1].lower())
    if not counts or not INDEX_RE.match(fields[2]):
        raise ShareError("%s: the <k>of<n> or index field is malformed; it was mistyped or damaged" % named)
    threshold, count, index = int(counts.group(1)), int(counts.group(2)), int(fields[2])
    value_text, sealed_text = (field.upper().translate(B32_LOOKALIKES) for field in fields[3:5])
    if _checksum(_body(threshold, count, index, value_text, sealed_text)) != fields[5].lower():
        raise ShareError("%s: checksum mismatch, the share was mistyped or damaged" % named)
    try:
        value, sealed = _b32decode(value_text), _b32decode(sealed_text)
    except (binascii.Error, ValueError):
        raise ShareError("%s: not valid base32 although its checksum matches" % named) from None
    if not 2 <= threshold <= count <= MAX_SHARES or not 1 <= index <= count or len(value) != KEY_BYTES \
            or len(sealed) <= NONCE_BYTES + TAG_BYTES:
        raise ShareError("%s: inconsistent fields although its checksum matches (not written by this module?)" % named)
    return Share(threshold, count, index, value, sealed)


def parse_all(labelled_texts):
    """Shares of [(label, text)]; every unreadable one is named in one error."""
    shares, problems = [], []
    for label, text in labelled_texts:
        try:
            shares.append(parse(text, label))
        except ShareError as exc:
            problems.append(str(exc))
    if problems:
        raise ShareError("; ".join(problems))
    return shares


def one_set(shares):
    """The distinct shares (by index, sorted) of a single split; mixed splits and conflicting indices are refused."""
    sets = collections.OrderedDict()
    for share in shares:
        sets.setdefault((share.threshold, share.count, share.sealed), []).append(share.index)
    if len(sets) > 1:
        raise ShareError("the shares come from different splits: %s; give shares of one set only" % "; ".join(
            "set %s (%d of %d): index %s" % (set_id(sealed), threshold, count, ", ".join(str(i) for i in indices))
            for (threshold, count, sealed), indices in sets.items()))
    by_index = {}
    for share in shares:
        if by_index.setdefault(share.index, share).value != share.value:
            raise ShareError("two different shares claim index %d of set %s" % (share.index, set_id(share.sealed)))
    return [by_index[index] for index in sorted(by_index)]


def reopen(shares):
    """The secret (bytes) from shares of one set; at least its threshold of them."""
    distinct = one_set(shares)
    if not distinct:
        raise ShareError("no share was given")
    first = distinct[0]
    if len(distinct) < first.threshold:
        raise ShareError("set %s needs %d shares to reopen the secret, got %d (index %s)" % (
            set_id(first.sealed), first.threshold, len(distinct), ", ".join(str(share.index) for share in distinct)))
    # pycryptodome's combine takes exactly k shares.
    key = Shamir.combine([(share.index, share.value) for share in distinct[:first.threshold]])
    nonce, tag = first.sealed[:NONCE_BYTES], first.sealed[NONCE_BYTES:NONCE_BYTES + TAG_BYTES]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(_associated_data(first.threshold, first.count))
    try:
        return cipher.decrypt_and_verify(first.sealed[NONCE_BYTES + TAG_BYTES:], tag)
    except ValueError:
        raise ShareError("the shares of set %s do not reopen the secret (authentication failed): one of them was "
                         "altered although its checksum matches" % set_id(first.sealed)) from None


def _readme_line(share, secret_fingerprint):
    return ("# runbooks.incident Shamir share %d of %d (set %s, secret fingerprint %s): any %d shares of this set "
            "reopen the secret with runbooks.incident.shamir_combine. Keep it apart from the other shares; the line "
            "below is the share (spaces and line breaks in it are ignored when typed back).\n"
            % (share.index, share.count, set_id(share.sealed), secret_fingerprint, share.threshold))


def read_file(path, label):
    """The bytes of the regular file at `path`, never through a symlink at its name (a FIFO or device is refused)."""
    try:
        fd = _fileio.open_file(path)
    except OSError as exc:
        raise ShareError("could not read %s %s (%s)" % (label, path, exc.strerror or exc)) from None
    try:
        data = os.read(fd, MAX_FILE_BYTES + 1)
        while len(data) <= MAX_FILE_BYTES:
            more = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ShareError("%s %s is larger than %d bytes: not a share or a key file" % (label, path, MAX_FILE_BYTES))
    return data


def read_share_files(paths):
    """[(label, text)] of share files, for parse_all."""
    return [("share file %s" % path, read_file(path, "share file").decode("ascii", errors="replace")) for path in paths]


def _existing_set_problem(paths, secret, threshold, count):
    """Why the share files at `paths` are not a complete set of `secret` with `threshold`, or None if they are."""
    try:
        texts = read_share_files(paths)
    except ShareError as exc:
        return "unreadable: %s" % exc
    try:
        shares = parse_all(texts)
        found = reopen(shares)
    except ShareError as exc:
        return str(exc)
    if [share.index for share in shares] != list(range(1, count + 1)):
        return "the files do not hold shares 1 to %d in order" % count
    if shares[0].threshold != threshold:
        return "they are a %d-of-%d set, not %d-of-%d" % (shares[0].threshold, count, threshold, count)
    if found != secret:
        return "they reopen another secret (fingerprint %s)" % fingerprint(found)
    return None


def _exists(path):
    """Whether something (a symlink too) is at `path`, its directory reached safely."""
    try:
        _fileio.lstat(path)
    except FileNotFoundError:
        return False
    return True


def split_to_dir(secret, threshold, count, dest_dir, force=False, check_mode=False):
    """Write share-<i>-of-<n>.txt (0600) to `dest_dir` (created 0700); a complete set of this secret is kept."""
    check_split(secret, threshold, count)
    paths = [os.path.join(dest_dir, file_name(index, count)) for index in range(1, count + 1)]
    result = dict(fingerprint=fingerprint(secret), files=paths, threshold=threshold, shares=count)
    try:
        existing = [path for path in paths if _exists(path)]
    except OSError as exc:
        raise ShareError("cannot look into %s (%s); nothing was written" % (dest_dir, exc)) from None
    if existing and not force:
        if len(existing) == count:
            problem = _existing_set_problem(paths, secret, threshold, count)
            if problem is None:
                return dict(result, changed=False)
        else:
            problem = "only %d of the %d share files exist" % (len(existing), count)
        raise ShareError("%s already holds share files that are not a complete %d-of-%d set of this secret (%s); "
                         "nothing was written, force=true replaces them with a new set" % (dest_dir, threshold, count, problem))
    if check_mode:
        return dict(result, changed=True)
    shares = split(secret, threshold, count)
    try:
        if not os.path.isdir(dest_dir):
            _fileio.makedirs(dest_dir, mode=0o700)
            _fileio.set_owner_mode(dest_dir, 0o700)  # makedirs' mode is filtered by the umask
    except OSError as exc:
        raise ShareError("could not create %s (%s); nothing was written" % (dest_dir, exc)) from None
    for share, path in zip(shares, paths):
        try:
            with _fileio.atomic_writer(path, mode=0o600) as handle:
                handle.write((_readme_line(share, result["fingerprint"]) + share_line(share) + "\n").encode("ascii"))
        except OSError as exc:
            raise ShareError("writing %s failed (%s); the set in %s is incomplete, re-run with force=true"
                             % (path, exc, dest_dir)) from None
    return dict(result, changed=True)


def check_mode_bits(mode):
    """`mode` as file permission bits (an int from 0 to 0o7777), else ShareError."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ShareError("mode %r is not a file mode (0000 to 7777 octal)" % (mode,))
    return mode


def _attributes_differ(status, mode, owner, group):
    if owner is not None:
        import pwd  # pylint: disable=import-outside-toplevel
        if pwd.getpwnam(owner).pw_uid != status.st_uid:
            return True
    if group is not None:
        import grp  # pylint: disable=import-outside-toplevel
        if grp.getgrnam(group).gr_gid != status.st_gid:
            return True
    return status.st_mode & 0o7777 != mode


def write_secret(secret, dest, mode=0o400, owner=None, group=None, check_mode=False):
    """Put `secret` at `dest` atomically; True when something changed (or would, in check mode). A symlink or
    anything else than a regular file at `dest` is replaced, never followed."""
    check_mode_bits(mode)
    status = _held(dest, secret)
    if status is not None:
        if not _attributes_differ(status, mode, owner, group):
            return False
        if not check_mode:
            _fileio.set_owner_mode(dest, mode, owner, group)
        return True
    directory = os.path.dirname(dest) or "."
    if not os.path.isdir(directory):
        raise ShareError("directory %s does not exist" % directory)
    if not check_mode:
        with _fileio.atomic_writer(dest, mode, owner, group) as handle:
            handle.write(secret)
    return True


def _held(dest, secret):
    """The stat of `dest` when it is a regular file holding exactly `secret` (read without following a link)."""
    try:
        fd = _fileio.open_file(dest)
    except (FileNotFoundError, _fileio.UnsafePathError):
        return None
    try:
        status = os.fstat(fd)
        digest = hashlib.sha256()
        for chunk in iter(lambda: os.read(fd, _fileio.CHUNK), b""):
            digest.update(chunk)
    finally:
        os.close(fd)
    return status if digest.hexdigest() == hashlib.sha256(secret).hexdigest() else None
