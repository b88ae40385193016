# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A certificate's new key and the revocation of the one it replaces, once per incident. PRIVATE to the collection.

The sequence (roles/certificates, after a key compromise):
  1. `replaced`  the certificate the certbot lineage holds now (its archive file, serial and key) and the keys nginx
                 serves are recorded, before certbot runs;
  2. certbot renews the lineage (with --new-key) and nginx serves the new certificate: not recorded here, read from
     the lineage itself (live/<name>/cert.pem no longer holds the replaced certificate, nor its key for a new key);
  3. `new_key`   nginx serves a key that is neither the replaced certificate's nor one it served before;
  4. `revoked`   the replaced certificate is revoked at the CA, after its file is checked to still hold it.
Each step is recorded with _incident_steps, the collection's one record of what an incident did:
`<state dir>/<cert name>/<incident id>/<step>.json`, atomic, 0600 in directories 0700, never through a symlink, the
first record of a step kept. A run that died at any point re-runs to the same end: `replaced` is recorded before
certbot runs, so the re-run revokes the certificate that was current when the incident began, never one issued in
between; a revocation the CA made before the run died is recorded as done (certbot says alreadyRevoked). A re-run
after the end changes nothing.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _certbot, _certificate, _faults, _fileio, _incident_steps, _run_lock

# certbot's lineage names: the first domain, maybe with -0001 (never a path).
CERT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
REVOKE_REASONS = ("keycompromise", "superseded", "unspecified", "affiliationchanged", "cessationofoperation")
CERTBOT_TIMEOUT = 600


class RekeyError(Exception):
    """Refused, or failed. `changed`: something was changed before (the message says what), else nothing was."""

    def __init__(self, msg, changed=False):
        super().__init__(msg)
        self.changed = changed


def _read_certificate(path):
    """The certificate in the regular file `path` (never through a symlink at its last component)."""
    with os.fdopen(_fileio.open_file(path), "rb") as handle:
        data = handle.read(_certificate.MAX_PEM_CHARS + 1)
    try:
        cert = _certificate.read(data)
    except _certificate.CertificateError as exc:
        raise RekeyError("%s: %s" % (path, exc)) from None
    if cert.key_error:
        raise RekeyError("%s: its public key cannot be read (%s)" % (path, cert.key_error))
    return cert


def lineage_certificate(config_dir, cert_name):
    """The lineage's current certificate: {path, serial, public_key, not_after}, {} when there is none. `path` is the
    archive file live/<name>/cert.pem links to (the file to revoke later), "" when cert.pem is not a link."""
    live = os.path.join(config_dir, "live", cert_name, "cert.pem")
    try:
        info = _fileio.lstat(live)
    except FileNotFoundError:
        return {}
    if stat.S_ISLNK(info.st_mode):
        path = os.path.realpath(live)
    elif stat.S_ISREG(info.st_mode):
        path = ""
    else:
        raise RekeyError("%s is not a certificate file nor a link to one" % live)
    try:
        cert = _read_certificate(path or live)
    except FileNotFoundError:
        raise RekeyError("%s links to %s, which does not exist" % (live, path)) from None
    return dict(cert.facts(), path=path)


def keys_of(values):
    """The non-empty fingerprints, each once, in order."""
    found = []
    for value in values:
        if value and not any(_certificate.same_key(value, known) for known in found):
            found.append(value)
    return found


class Rekey:
    """The re-key of one lineage for one incident: what is recorded, what the lineage holds, and the steps."""

    def __init__(self, config_dir, state_dir, cert_name, incident_id, names=(), new_key=False, revoke_reason="",
                 check_mode=False):
        if not _run_lock.INCIDENT_ID.match(incident_id or ""):
            raise RekeyError("incident_id %r is not valid (letters, digits and ._:-, at most 64): a new key or a revocation "
                             "is done once per incident and recorded under its id" % (incident_id,))
        if not CERT_NAME.match(cert_name or "") or ".." in cert_name:
            raise RekeyError("cert_name %r is not a certbot lineage name (letters, digits and ._-)" % (cert_name,))
        if revoke_reason and revoke_reason not in REVOKE_REASONS:
            raise RekeyError("revoke_reason %r is not one of %s" % (revoke_reason, ", ".join(REVOKE_REASONS)))
        self.config_dir, self.cert_name, self.incident_id = config_dir, cert_name, incident_id
        self.names, self.new_key, self.revoke_reason, self.check_mode = list(names), new_key, revoke_reason, check_mode
        self.records_dir = os.path.join(state_dir, cert_name)
        try:
            self.done = _incident_steps.done(self.records_dir, incident_id)
        except _incident_steps.StepsError as exc:
            raise RekeyError(str(exc)) from None
        for step, record in self.done.items():
            if record.get("incident_id") != incident_id:
                raise RekeyError("%s/%s/%s.json records incident %r, not %s: it was not written for this incident, move it "
                                 "away" % (self.records_dir, incident_id, step, record.get("incident_id"), incident_id))
        replaced = self.done.get("replaced")
        if replaced is not None and not (isinstance(replaced.get("certificate"), dict)
                                         and isinstance(replaced.get("served_public_keys_before"), list)):
            raise RekeyError("%s/%s/replaced.json is not a record of the certificate this incident replaces"
                             % (self.records_dir, incident_id))
        self.current = lineage_certificate(config_dir, cert_name)
        self._refuse_unlinked()

    # --- what is recorded, and what it means --------------------------------------------------------------------

    def _replaced_record(self, served_public_keys=()):
        """The `replaced` record: the one on disk, or the one that would be written now (with the keys served now)."""
        if "replaced" in self.done:
            return self.done["replaced"]
        return dict(cert_name=self.cert_name, names=self.names, new_key=self.new_key, revoke_reason=self.revoke_reason,
                    certificate=self.current, served_public_keys_before=keys_of(served_public_keys))

    def renewed(self):
        """certbot renewed the lineage since the incident recorded the certificate it replaces (with another key, when
        a new key is asked for)."""
        if "replaced" not in self.done or not self.current:
            return False
        replaced = self.done["replaced"]["certificate"]
        return (self.current["serial"] != replaced.get("serial")
                and not (self.new_key and _certificate.same_key(self.current["public_key"], replaced.get("public_key"))))

    def old_public_keys(self, served_public_keys=()):
        record = self._replaced_record(served_public_keys)
        return keys_of(list(record["served_public_keys_before"]) + [record["certificate"].get("public_key")])

    def _refuse_unlinked(self):
        """A revocation needs the certificate to revoke in a file of its own after certbot renewed the lineage."""
        if self.revoke_reason and "replaced" not in self.done and self.current and not self.current["path"]:
            live = os.path.join(self.config_dir, "live", self.cert_name, "cert.pem")
            raise RekeyError("%s is not a link into certbot's archive, so after the renewal there would be no file left "
                             "holding the certificate to revoke. Restore the lineage's links (certbot update_symlinks) "
                             "or revoke by hand" % live)

    def status(self, msg=""):
        """What the incident did and what the lineage holds (the result of every step)."""
        replaced = self.done["replaced"]["certificate"] if "replaced" in self.done else {}
        revoked = self.done.get("revoked", {})
        to_revoke = {}
        if self.revoke_reason and not revoked:
            to_revoke = replaced if "replaced" in self.done else self.current
        renewed = self.renewed()
        if renewed and not msg:
            msg = ("Incident %s already replaced certificate %s (%s) with %s%s. It renews again only if what nginx serves "
                   "is not right; a new incident id starts over." % (
                       self.incident_id, replaced.get("serial", "none"), replaced.get("path", ""),
                       self.current.get("serial", "none"), ", revoked %s" % revoked["at"] if revoked else ""))
        return dict(steps=sorted(self.done), done=self.done, current=self.current, replaced=replaced, revoked=revoked,
                    renewed=renewed, to_revoke=to_revoke, msg=msg)

    def _record(self, step, details):
        """Record `step` (nothing in check mode); whether that changes anything."""
        if step in self.done:
            return False
        changed, self.done = _incident_steps.record(self.records_dir, self.incident_id, step, details, check_mode=self.check_mode)
        return changed

    # --- the steps ----------------------------------------------------------------------------------------------

    def record_replaced(self, served_public_keys):
        """Step `replaced`, before certbot runs: the certificate the lineage holds now and the keys nginx serves."""
        record = self._replaced_record(served_public_keys)
        changed = self._record("replaced", record)
        result = self.status()
        if changed and self.check_mode:  # what would be recorded
            result.update(replaced=record["certificate"], to_revoke=record["certificate"] if self.revoke_reason else {})
        return changed, result

    def _predicted(self):
        """In check mode, before certbot renewed: nginx still serves what this incident is about to replace."""
        return self.check_mode and not self.renewed()

    def _check_new_key(self, served_public_keys):
        """(new keys, old keys); raises unless every name is served a key that is not an old one."""
        if "replaced" not in self.done and not self.check_mode:
            raise RekeyError("incident %s recorded no certificate it replaces (%s/%s/replaced.json): the renewal was not "
                             "made by it. Nothing was revoked" % (self.incident_id, self.records_dir, self.incident_id))
        old, new = self.old_public_keys(served_public_keys), keys_of(served_public_keys)
        if not self.new_key or self._predicted() or not old:
            return new, old
        if not new or not all(served_public_keys) or any(_certificate.same_key(key, known) for key in new for known in old):
            raise RekeyError(
                "The key did not change: nginx serves %s a certificate whose public key (SHA-256 %s) is %s. A compromised "
                "key is still in use. Look at reuse_key in %s/renewal/%s.conf and at which files nginx reads. Nothing was "
                "revoked" % (", ".join(self.names) or self.cert_name, ", ".join(new) or "none",
                             "missing" if not new or not all(served_public_keys) else
                             "the key of the certificate it replaced or one served before (%s)" % ", ".join(old),
                             self.config_dir, self.cert_name))
        return new, old

    def check_new_key(self, served_public_keys):
        """Step `new_key`: nginx serves a key other than the replaced certificate's and those it served before."""
        new, old = self._check_new_key(served_public_keys)
        if self._predicted():
            return True, self.status("Would renew with a new key and then check that nginx serves a key other than %s."
                                     % (", ".join(old) or "the current one"))
        changed = self._record("new_key", dict(public_keys=new, replaced_public_keys=old))
        if not old:
            return changed, self.status("No key was served before incident %s: the key nginx serves (SHA-256 %s) is new."
                                        % (self.incident_id, ", ".join(new) or "none"))
        return changed, self.status("New key served for %s: SHA-256 %s (before: %s)." % (
            ", ".join(self.names) or self.cert_name, ", ".join(new), ", ".join(old)))

    def _check_file(self, replaced):
        """The archive file still holds the replaced certificate, and the lineage moved on from it."""
        hand = "Revoke it by hand: certbot revoke --cert-path <file> --reason %s" % self.revoke_reason
        try:
            held = _read_certificate(replaced["path"]).serial
        except (FileNotFoundError, RekeyError, OSError):
            held = None
        if held != replaced["serial"]:
            raise RekeyError("Not revoking: %s should hold certificate %s, replaced by this incident's renewal, but it %s. %s"
                             % (replaced["path"], replaced["serial"], "is missing or unreadable" if held is None
                                else "holds serial %s" % held, hand))
        if self.current.get("serial") == replaced["serial"] and not self._predicted():
            raise RekeyError("Not revoking: %s, replaced by this incident's renewal, is still the lineage's current "
                             "certificate. %s" % (replaced["path"], hand))

    def revoke(self, served_public_keys, certbot):
        """Step `revoked`: the new key checked again, the archive file checked, then the replaced certificate revoked
        at the CA (`certbot(path, reason)` -> (rc, stdout, stderr, log failures)) and recorded."""
        if not self.revoke_reason:
            raise RekeyError("revoke_reason is empty: there is no revocation to make")
        self._check_new_key(served_public_keys)
        replaced = self._replaced_record(served_public_keys)["certificate"]
        if "revoked" in self.done:
            revoked = self.done["revoked"]
            return False, self.status("Incident %s revoked certificate %s (%s) already, at %s." % (
                self.incident_id, revoked.get("serial"), revoked.get("path"), revoked.get("at")))
        if not replaced:
            return False, self.status("The lineage %s had no certificate before this incident: nothing to revoke." % self.cert_name)
        self._check_file(replaced)
        if self.check_mode:
            return True, self.status("Would revoke certificate %s (%s) at the CA with reason %s, once the new certificate "
                                     "is verified as served." % (replaced["serial"], replaced["path"], self.revoke_reason))
        rc, out, err, failures = certbot(replaced["path"], self.revoke_reason)
        already = rc != 0 and ("alreadyRevoked" in [f.get("type") for f in failures] or "alreadyrevoked" in (out + err).lower())
        if rc != 0 and not already:
            evidence = " | ".join(line for f in failures for line in f.get("evidence", [])) or "no error in certbot's log"
            raise RekeyError("certbot could not revoke %s (serial %s): %s. certbot said: %s. The new certificate is served; "
                             "re-run the same incident to retry the revocation" % (
                                 replaced["path"], replaced["serial"], evidence, " | ".join(err.strip().splitlines()[-3:])))
        _faults.checkpoint("cert_revoked")
        try:
            self._record("revoked", dict(reason=self.revoke_reason, serial=replaced["serial"], path=replaced["path"],
                                         already_revoked=already))
        except (OSError, _incident_steps.StepsError) as exc:
            raise RekeyError("certificate %s (%s) is revoked at the CA, but recording it failed (%s): re-run the same "
                             "incident to record it" % (replaced["serial"], replaced["path"], exc), changed=True) from None
        return True, self.status("Revoked certificate %s (%s) at the CA with reason %s%s. The new certificate %s is served." % (
            replaced["serial"], replaced["path"], self.revoke_reason, " (the CA had revoked it already)" if already else "",
            self.current.get("path", "")))


def certbot_revoke(config_dir, log_path, server, work_dir=None, ca_bundle=None, binary="certbot"):
    """A function running `certbot revoke` of one archive file, as Rekey.revoke wants it. certbot 2.1 words an ACME
    error of `revoke` only in its log (it prints "AttributeError: can't set attribute"), so the log is read too."""
    def run(path, reason):
        argv = [binary, "revoke", "--cert-path", path, "--reason", reason, "--no-delete-after-revoke", "--non-interactive",
                "--server", server, "--config-dir", config_dir, "--logs-dir", os.path.dirname(log_path)]
        if work_dir:
            argv += ["--work-dir", work_dir]
        env = dict(os.environ, REQUESTS_CA_BUNDLE=ca_bundle) if ca_bundle else None
        try:
            res = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env, check=False,
                                 timeout=CERTBOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            return 1, "", "certbot revoke did not end within %d s" % CERTBOT_TIMEOUT, []
        except OSError as exc:
            return 1, "", "cannot run %s: %s" % (binary, exc), []
        failures = _certbot.diagnose(log_path)["failures"] if res.returncode else []
        return res.returncode, res.stdout, res.stderr, failures
    return run
