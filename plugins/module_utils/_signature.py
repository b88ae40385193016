# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed backups: what a backup is (its manifest, which holds the dump's SHA-256) signed with a key only the backup
side holds. PRIVATE to the collection: no compatibility promise.

age encrypts to a public recipient, so whoever can write to the bucket (or to the backup directory) can plant a
well-formed backup. The manifest is therefore signed with `ssh-keygen -Y sign` (an Ed25519 key in OpenSSH format,
root-only on the host that makes the backups) into `<manifest>.sig`, written before the manifest so that a backup
with a manifest always has its signature. A restore reads the manifest's bytes once, verifies the signature over
exactly those bytes against the trusted public keys (`ssh-keygen -Y verify`, namespace NAMESPACE), and only then
parses them, so what is checked is what is used. Verifying needs only public keys: a drill host or a new host can
check a backup without being able to forge one. Pure Python around ssh-keygen: also used by the host-side CLI.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import subprocess
import tempfile

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

NAMESPACE = "runbooks-incident-backup"
PRINCIPAL = "backup"
SUFFIX = ".sig"
KEY_TYPES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "ssh-rsa")
FINGERPRINT = re.compile(r"\b(SHA256:[A-Za-z0-9+/]{43})\b")
MAX_MANIFEST_BYTES = 64 << 20


class SignatureError(Exception):
    """A signature is missing, wrong, or cannot be checked; the message says which."""


def signature_path(manifest_path):
    return manifest_path + SUFFIX


def _ssh_keygen():
    binary = shutil.which("ssh-keygen")
    if not binary:
        raise SignatureError("ssh-keygen not found: install openssh-client on this host to sign or verify backups")
    return binary


def parse_public_key(line):
    """(type, base64) of an OpenSSH public key line (`ssh-ed25519 AAAA... comment`); SignatureError otherwise."""
    parts = str(line).strip().split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise SignatureError("%r is not an OpenSSH public key line (%s AAAA... [comment])" % (str(line)[:60], KEY_TYPES[0]))
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the public key %s... is not valid base64" % parts[1][:20]) from None
    if not blob.startswith(len(parts[0]).to_bytes(4, "big") + parts[0].encode()):
        raise SignatureError("the public key %s... does not hold a %s key" % (parts[1][:20], parts[0]))
    return parts[0], parts[1]


def fingerprint(line):
    """SHA256 fingerprint of a public key line, as ssh-keygen prints it."""
    key_type, blob = parse_public_key(line)
    res = subprocess.run([_ssh_keygen(), "-l", "-f", "-"], input="%s %s\n" % (key_type, blob), capture_output=True,
                         text=True, check=False)
    found = FINGERPRINT.search(res.stdout)
    if res.returncode != 0 or not found:
        raise SignatureError("ssh-keygen cannot read the public key %s...: %s" % (blob[:20], res.stderr.strip()[:200]))
    return found.group(1)


def sign(data, key_file):
    """The armored signature of `data` (bytes) made with the private key `key_file`."""
    if not os.path.isfile(key_file):
        raise SignatureError("the backup signing key %s does not exist" % key_file)
    res = subprocess.run([_ssh_keygen(), "-q", "-Y", "sign", "-f", key_file, "-n", NAMESPACE], input=data,
                         capture_output=True, check=False)
    if res.returncode != 0 or not res.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        raise SignatureError("signing with %s failed: %s" % (key_file, res.stderr.decode(errors="replace").strip()[:300]))
    return res.stdout


def write_signed(manifest_path, data, key_file, mode=0o600, owner=None, group=None):
    """Sign `data`, write the signature, then the manifest (both atomically): a manifest never lacks its signature."""
    signature = sign(data, key_file)
    _fileio.write_bytes(signature_path(manifest_path), signature, mode, owner, group)
    _fileio.write_bytes(manifest_path, data, mode, owner, group)


def read_limited(path, what):
    """The bytes of a small file, read once through a safe path (never a FIFO or a symlink)."""
    fd = _fileio.open_file(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise SignatureError("%s %s is larger than %d MiB: not a manifest" % (what, path, MAX_MANIFEST_BYTES >> 20))
    return data


def signer_of(data, signature):
    """Fingerprint of the key that made `signature` over `data`, trusted or not (None if it is no valid signature)."""
    with tempfile.TemporaryDirectory(prefix="runbooks-sig-") as scratch:
        sig = os.path.join(scratch, "sig")
        _fileio.write_bytes(sig, signature)
        res = subprocess.run([_ssh_keygen(), "-Y", "check-novalidate", "-n", NAMESPACE, "-s", sig], input=data,
                             capture_output=True, check=False)
    found = FINGERPRINT.search(res.stdout.decode(errors="replace"))
    return found.group(1) if res.returncode == 0 and found else None


def verify(data, signature, trusted_keys, what):
    """The fingerprint of the trusted key that signed `data`; SignatureError saying why not otherwise."""
    if not trusted_keys:
        raise SignatureError("%s is signed, but no trusted backup keys are configured to check it against" % what)
    with tempfile.TemporaryDirectory(prefix="runbooks-sig-") as scratch:
        allowed = os.path.join(scratch, "allowed_signers")
        lines = ['%s namespaces="%s" %s %s\n' % ((PRINCIPAL, NAMESPACE) + parse_public_key(line)) for line in trusted_keys]
        _fileio.write_bytes(allowed, "".join(lines).encode())
        sig = os.path.join(scratch, "sig")
        _fileio.write_bytes(sig, signature)
        res = subprocess.run([_ssh_keygen(), "-Y", "verify", "-f", allowed, "-I", PRINCIPAL, "-n", NAMESPACE, "-s", sig],
                             input=data, capture_output=True, check=False)
    found = FINGERPRINT.search(res.stdout.decode(errors="replace"))
    if res.returncode == 0 and found:
        return found.group(1)
    signer = signer_of(data, signature)
    if signer is None:
        raise SignatureError("%s: its signature does not match its content: the manifest was altered after it was signed, "
                             "or the signature belongs to another backup" % what)
    raise SignatureError("%s is signed by key %s, which is not a trusted backup key (trusted: %s): planted, or made by a "
                         "host whose key is not listed" % (what, signer, ", ".join(fingerprint(line) for line in trusted_keys)))


def public_key_of(key_file):
    """The public key line of a private signing key (what a restore on the same host trusts)."""
    res = subprocess.run([_ssh_keygen(), "-y", "-f", key_file], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SignatureError("cannot read the backup signing key %s: %s" % (key_file, res.stderr.strip()[:200]))
    return res.stdout.strip()


class Trust:
    """What a restore accepts: backups signed by one of `keys`; unsigned ones only with `accept_unsigned`."""

    def __init__(self, keys=(), accept_unsigned=False):
        self.keys = [line for line in keys if str(line).strip()]
        for line in self.keys:
            parse_public_key(line)
        self.accept_unsigned = bool(accept_unsigned)

    def manifest(self, manifest_path):
        """(manifest bytes, verdict): see check()."""
        return check(manifest_path, self.keys, self.accept_unsigned)

    def without_manifest(self, src):
        """The verdict for a dump that has no manifest: nothing is signed, so only `accept_unsigned` lets it through."""
        if not self.accept_unsigned:
            raise SignatureError("%s has no manifest, so nothing signed says where it comes from: it is not restored; pass "
                                 "accept_unsigned=true to restore it anyway (a seeds-style dump)" % src)
        return dict(signed=False, verified=False, signer=None,
                    warning="restoring %s, which has no manifest and no signature: its origin is not proven" % os.path.basename(src))


def check(manifest_path, trusted_keys, accept_unsigned):
    """(manifest bytes, verdict) of a backup's manifest: verdict is {signed, verified, signer, warning}.

    A missing or unverifiable signature raises, unless `accept_unsigned` (the operator explicitly accepts a backup
    whose origin is not proven, e.g. a seeds-style dump); then the verdict carries a warning. A signature that is
    present but wrong always raises: an altered backup is never accepted.
    """
    data = read_limited(manifest_path, "manifest")
    what = "the backup described by %s" % manifest_path
    sig_path = signature_path(manifest_path)
    if not os.path.lexists(sig_path):
        if not accept_unsigned:
            raise SignatureError("%s is not signed (no %s): its origin cannot be proven, so it is not restored; pass "
                                 "accept_unsigned=true to restore it anyway" % (what, os.path.basename(sig_path)))
        return data, dict(signed=False, verified=False, signer=None,
                          warning="restoring an unsigned backup (%s): its origin is not proven" % os.path.basename(manifest_path))
    signature = read_limited(sig_path, "signature")
    if not trusted_keys and accept_unsigned:
        return data, dict(signed=True, verified=False, signer=signer_of(data, signature),
                          warning="the signature of %s was not checked: no trusted backup keys are configured"
                          % os.path.basename(manifest_path))
    return data, dict(signed=True, verified=True, signer=verify(data, signature, trusted_keys, what), warning=None)
