# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Certificates made by the tests (the cryptography library): a root CA, intermediates, and leaves for names valid
for a chosen number of days, with a key of their own or a given one, in the PEM files nginx and certbot keep; and
a certbot lineage laid out as certbot lays it out (live/<name>/cert.pem a relative link into archive/<name>/)."""
from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEM = serialization.Encoding.PEM


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def key_fingerprint(key) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, as community.crypto writes it (aa:bb:...)."""
    digest = hashlib.sha256(key.public_key().public_bytes(serialization.Encoding.DER,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


class Leaf:
    """A certificate for names and its key."""

    def __init__(self, cert: x509.Certificate, key):
        self.cert, self.key = cert, key
        self.pem = cert.public_bytes(PEM).decode()
        self.serial = "%x" % cert.serial_number
        self.public_key = key_fingerprint(key)

    def key_pem(self) -> str:
        return self.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


class Authority:
    """A CA: the root when `issuer` is None, else an intermediate it issued."""

    def __init__(self, common_name: str = "runbooks.incident test root", issuer: Authority | None = None):
        self.key, self.name = new_key(), _name(common_name)
        signer = issuer or self
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(signer.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now() - datetime.timedelta(days=1)).not_valid_after(now() + datetime.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(signer.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(PEM).decode()

    def intermediate(self, common_name: str = "runbooks.incident test intermediate") -> Authority:
        return Authority(common_name, issuer=self)

    def issue(self, *names: str, days_left: float = 60.5, valid_for: float | None = None, key=None,
              common_name: str | None = None) -> Leaf:
        """A leaf for `names` (its SAN) that expires in `days_left` days, valid for `valid_for` days before that
        (default: since 30 days, at least 90 days in all)."""
        key = key or new_key()
        valid_for = valid_for if valid_for is not None else max(90, days_left + 30)
        not_after = now() + datetime.timedelta(days=days_left)
        builder = (x509.CertificateBuilder().subject_name(_name(common_name or (names[0] if names else "no-name")))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_after - datetime.timedelta(days=valid_for)).not_valid_after(not_after))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
        return Leaf(builder.sign(self.key, hashes.SHA256()), key)


class Lineage:
    """A certbot lineage under `config_dir`: archive/<name>/{cert,privkey,chain,fullchain}N.pem and live/<name>/ links
    to the newest, relative as certbot makes them."""

    def __init__(self, config_dir: Path, name: str, ca: Authority):
        self.config_dir, self.name, self.ca = config_dir, name, ca
        self.archive = config_dir / "archive" / name
        self.live = config_dir / "live" / name
        self.version = 0
        self.leaves: list[Leaf] = []

    def renew(self, new_key: bool = True, days_left: float = 89.5) -> Leaf:
        """What `certbot renew` does: a new certificate (with the previous key unless `new_key`), links moved to it."""
        key = None if new_key or not self.leaves else self.leaves[-1].key
        leaf = self.ca.issue(self.name, days_left=days_left, key=key)
        self.version += 1
        self.archive.mkdir(parents=True, exist_ok=True)
        self.live.mkdir(parents=True, exist_ok=True)
        for kind, text in (("cert", leaf.pem), ("privkey", leaf.key_pem()), ("chain", self.ca.pem),
                           ("fullchain", leaf.pem + self.ca.pem)):
            (self.archive / f"{kind}{self.version}.pem").write_text(text)
            link = self.live / f"{kind}.pem"
            if link.is_symlink():
                link.unlink()
            link.symlink_to(os.path.join("..", "..", "archive", self.name, f"{kind}{self.version}.pem"))
        self.leaves.append(leaf)
        return leaf

    def archive_file(self, leaf: Leaf) -> str:
        return os.path.realpath(self.archive / f"cert{self.leaves.index(leaf) + 1}.pem")
