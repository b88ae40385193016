# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a TLS certificate says, and what is wrong with the one nginx serves. PRIVATE to the collection.

`read()` gives the facts the runbooks compare, in the forms community.crypto's x509_certificate_info gives them, so
records written before and after compare: the serial in lower-case hex, the public key as the SHA-256 of its DER
SubjectPublicKeyInfo in colon-separated lower-case hex, times as ASN.1 GeneralizedTime (20261122153550Z). It needs
the Python cryptography library; it runs with the version Debian 12 ships (38), where the certbot package brings it.

`judge()` gives, per name, the verdict of what a TLS client got: expired or not valid yet, valid for fewer than the
renewal threshold, not the certbot lineage's current certificate, not for the name, a chain that is incomplete, out
of order or not trusted; and the level of the expiry report: page (at the page threshold or when the name is not
served right), warn (at the warn threshold) or ok.
"""
from __future__ import annotations

import datetime
import hashlib
import traceback

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    x509 = serialization = NameOID = None
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

TIME_FORMAT = "%Y%m%d%H%M%SZ"
# A certificate is a few kilobytes; a chain a few of them.
MAX_PEM_CHARS = 1 << 20

LINEAGE_MISMATCH = "not the lineage certificate (nginx not reloaded, or not linked)"


class CertificateError(Exception):
    pass


def require_cryptography():
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        raise CertificateError("reading a certificate needs the Python cryptography library on this host (Debian and "
                               "Ubuntu: apt install python3-cryptography, which certbot's package depends on)")


def fingerprint(der):
    """SHA-256 of DER bytes as community.crypto writes fingerprints (aa:bb:...)."""
    digest = hashlib.sha256(der).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def same_key(one, other):
    """Whether two public key fingerprints are the same key, however they are written (case, colons)."""
    return bool(one) and one.replace(":", "").lower() == (other or "").replace(":", "").lower()


def _utc(cert, name):
    aware = getattr(cert, name + "_utc", None)  # cryptography 42 and later; the naive one is deprecated there
    return aware if aware is not None else getattr(cert, name).replace(tzinfo=datetime.timezone.utc)


def _common_name(name):
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[-1].value) if values else ""


class Certificate:
    """The facts of one certificate (see the module docstring for their forms)."""

    def __init__(self, cert):
        self.der = cert.public_bytes(serialization.Encoding.DER)
        self.serial = "%x" % cert.serial_number
        try:
            self.public_key = fingerprint(cert.public_key().public_bytes(serialization.Encoding.DER,
                                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
            self.key_error = None
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # cryptography raises its own types for keys it cannot load (an unknown algorithm, bad parameters).
            self.public_key, self.key_error = "", str(exc) or type(exc).__name__
        self.not_before = _utc(cert, "not_valid_before")
        self.not_after = _utc(cert, "not_valid_after")
        self.issuer = _common_name(cert.issuer)
        self.issuer_name = cert.issuer.rfc4514_string()
        self.subject_name = cert.subject.rfc4514_string()
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.dns_names = [str(name) for name in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            self.dns_names = []

    def facts(self):
        return dict(serial=self.serial, public_key=self.public_key, not_after=self.not_after.strftime(TIME_FORMAT))

    def covers(self, name):
        """A TLS client would accept this certificate for `name`: a DNS name of its SAN, or a wildcard in its
        first label (*.example.com covers www.example.com, not example.com nor a.b.example.com)."""
        wanted = name.rstrip(".").lower()
        for dns in self.dns_names:
            dns = dns.rstrip(".").lower()
            if dns == wanted or (dns.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == dns[2:]):
                return True
        return False


def read(pem):
    """The first certificate of PEM text (str or bytes), as a Certificate."""
    require_cryptography()
    data = pem.encode("utf-8", "surrogateescape") if isinstance(pem, str) else pem
    if len(data) > MAX_PEM_CHARS:
        raise CertificateError("holds more than %d bytes: not a certificate" % MAX_PEM_CHARS)
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError("not a PEM certificate (%s)" % str(exc).split("\n", maxsplit=1)[0][:200]) from None
    return Certificate(cert)


def days_left(cert, now):
    """Whole days until it expires (negative once expired), as community.crypto's not_after minus now gives them."""
    return (cert.not_after - now).days


def _chain_problems(chain):
    """What is wrong with the chain a server sent (leaf first), as the words of a problem, or None."""
    if len(chain) < 2:
        return "chain incomplete: nginx serves %d certificate%s, no intermediate" % (len(chain), "" if len(chain) == 1 else "s")
    for position, (cert, issuer) in enumerate(zip(chain, chain[1:]), start=1):
        if cert.issuer_name != issuer.subject_name:
            return ("chain out of order or with a wrong intermediate: certificate %d is issued by %s, certificate %d is %s"
                    % (position, cert.issuer_name, position + 1, issuer.subject_name))
    return None


def _served(name, served):
    """(leaf, chain) of what was served for `name`; the chain is the leaf alone when none was fetched."""
    try:
        cert = read(served["cert"])
        return cert, [read(pem) for pem in served.get("unverified_chain") or []] or [cert]
    except CertificateError as exc:
        raise CertificateError("what was served for %s: %s" % (name, exc)) from None


def judge_name(name, served, trusted, lineage, cert_name, min_days, now):
    """The verdict on what was served for `name` (see `judge`)."""
    entry = dict(name=name, not_after="", days_left=-1, issuer="", public_key="", serial="", problems=[], page_worthy=False)
    problems = entry["problems"]
    if not served or not served.get("cert"):
        problems.append("no certificate served: %s" % ((served or {}).get("msg")
                                                       or ("not fetched" if served is None else "unreachable")))
        entry["page_worthy"] = True
    else:
        cert, chain = _served(name, served)
        entry.update(cert.facts(), days_left=days_left(cert, now), issuer=cert.issuer)
        if now > cert.not_after:
            problems.append("expired")
        elif now < cert.not_before:
            problems.append("not valid yet (from %s)" % cert.not_before.strftime(TIME_FORMAT))
        elif cert.not_after < now + datetime.timedelta(days=min_days):
            problems.append("valid for less than %d days" % min_days)
        if isinstance(lineage, Certificate) and cert.der != lineage.der:
            problems.append(LINEAGE_MISMATCH)
        if not cert.covers(name):
            problems.append("name not in the certificate")
            entry["page_worthy"] = True
        chain_problem = _chain_problems(chain)
        if chain_problem is None and trusted is not None and not trusted.get("cert"):  # None: not verified
            chain_problem = "chain not trusted: %s" % (trusted.get("msg") or "it does not verify against the roots")
        if chain_problem:
            problems.append(chain_problem)
            entry["page_worthy"] = True
    if lineage is None:
        problems.append("no certbot lineage %s" % cert_name)
    elif not isinstance(lineage, Certificate):
        problems.append("the certbot lineage %s holds no certificate: %s" % (cert_name, lineage))
    return entry


def _level(entry, warn_days, page_days):
    if entry["page_worthy"] or entry["days_left"] <= page_days:
        return "page"
    return "warn" if entry["days_left"] <= warn_days else "ok"


def judge(names, served, trusted, lineage_pem, cert_name, min_days, warn_days, page_days, now=None):
    """Per name, the verdict on what a TLS client got; `served` and `trusted` map a name to what the client got
    without and with verifying the chain against the roots (a name `trusted` lacks was not verified); `lineage_pem`
    is the lineage's current cert.pem ("" when there is none). Returns the report, with the names to page and to warn
    of."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    lineage = None
    if lineage_pem.strip():
        try:
            lineage = read(lineage_pem)
        except CertificateError as exc:
            lineage = str(exc)
    report = []
    for name in names:
        entry = judge_name(name, served.get(name), (trusted or {}).get(name), lineage, cert_name, min_days, now)
        entry["level"] = _level(entry, warn_days, page_days)
        report.append(entry)
    return dict(report=report, problems=[entry for entry in report if entry["problems"]],
                page=[entry for entry in report if entry["level"] == "page"],
                warn=[entry for entry in report if entry["level"] == "warn"],
                ok=not any(entry["problems"] for entry in report))


def results_by_name(results, what):
    """{name: {cert, unverified_chain, msg}} from the results of community.crypto.get_certificate looped over the
    names (a registered variable's `results`). Skipped items are left out."""
    found = {}
    for index, result in enumerate(results):
        where = "%s[%d]" % (what, index)
        if not isinstance(result, dict):
            raise CertificateError("%s is not a result of get_certificate (a dict)" % where)
        if result.get("skipped"):
            continue
        name = result.get("item")
        if not isinstance(name, str) or not name:
            raise CertificateError("%s has no item (the name it was fetched for)" % where)
        entry = {}
        for key, kind in (("cert", str), ("msg", str), ("unverified_chain", list)):
            value = result.get(key)
            if value is not None and not isinstance(value, kind):
                raise CertificateError("%s.%s is not a %s" % (where, key, kind.__name__))
            entry[key] = value
        if any(not isinstance(pem, str) for pem in entry["unverified_chain"] or []):
            raise CertificateError("%s.unverified_chain holds something that is not PEM text" % where)
        found[name] = entry
    return found
