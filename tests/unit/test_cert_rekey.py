# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cert_rekey: the re-key of a certificate after a key compromise, once per incident.

First the sequence the certificates role runs (record the certificate to replace, certbot renews, nginx serves the
new one, the key is checked as new, the old certificate is revoked) on a lineage laid out as certbot lays it out,
stopped after each step and run again, in check mode at each state, and refused where it must be. The CA there is a
function that remembers what it revoked and answers alreadyRevoked as certbot reports it. Then the same with the real
certbot 2.1 and Let's Encrypt's test CA pebble, including a run killed (SIGKILL) after the CA revoked and before the
record was written."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from acmelab import lab_fixture  # noqa: F401  pylint: disable=import-error,unused-import
from ansible_collections.runbooks.incident.plugins.module_utils import _cert_rekey, _certificate
from certlab import Authority, Lineage, key_fingerprint  # pylint: disable=import-error
from conftest import COLLECTIONS, kill_at, require, start_module  # pylint: disable=import-error

NAME = "wa.example.com"
INCIDENT = "INC-2026-0042"


class Host:
    """A host after a key compromise: the certbot lineage, what nginx serves, the records, and a CA."""

    def __init__(self, tmp_path, revoke_reason="keycompromise", new_key=True, issued=True):
        self.tmp_path = tmp_path
        self.config, self.state = tmp_path / "letsencrypt", tmp_path / "state"
        self.lineage = Lineage(self.config, NAME, Authority().intermediate())
        self.revoke_reason, self.new_key = revoke_reason, new_key
        self.serving = self.lineage.renew() if issued else Authority("bootstrap").issue(NAME)  # nginx's certificate
        self.revoked, self.revocations = [], 0  # the CA's revoked serials; certbot revoke calls

    def rekey(self, check_mode=False, incident=INCIDENT):
        return _cert_rekey.Rekey(str(self.config), str(self.state), NAME, incident, names=[NAME], new_key=self.new_key,
                                 revoke_reason=self.revoke_reason, check_mode=check_mode)

    def served(self):
        return [self.serving.public_key]

    def certbot(self, path, reason):
        """certbot revoke as Rekey.revoke calls it: the CA revokes once, then answers alreadyRevoked (in the log)."""
        assert reason == self.revoke_reason
        self.revocations += 1
        serial = _certificate.read(open(path, encoding="ascii").read()).serial
        if serial in self.revoked:
            return 1, "", "An unexpected error occurred:\nAttributeError: can't set attribute\n", [
                {"type": "alreadyRevoked", "evidence": ["urn:ietf:params:acme:error:alreadyRevoked :: Certificate already revoked"]}]
        self.revoked.append(serial)
        return 0, "", "", []

    def renew_and_serve(self, new_key=None):
        """certbot renew (its deploy hook reloads nginx): nginx serves the lineage's new certificate."""
        self.serving = self.lineage.renew(new_key=self.new_key if new_key is None else new_key)
        return self.serving

    def records(self):
        """{step: record} on disk, and the modes of the files and directories."""
        where = self.state / NAME / INCIDENT
        if not where.exists():
            return {}
        found = {path.stem: json.loads(path.read_text()) for path in where.glob("*.json")}
        for path in [self.state / NAME, where, *where.iterdir()]:
            assert stat.S_IMODE(path.lstat().st_mode) == (0o700 if path.is_dir() else 0o600), path
        return found

    def tree(self):
        """Every file under the lineage and the records, with its content: what check mode must leave as it is."""
        return {str(path): (os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None)
                for base in (self.config, self.state) if base.exists() for path in sorted(base.rglob("*"))}

    def run_role(self, check_mode=False, confirmed=True):
        """What roles/certificates does about the key, step by step (tasks/main.yml and rekey.yml): returns the
        results of each step that ran."""
        results = {"status": self.rekey(check_mode).status()}
        if not results["status"]["renewed"]:
            if not confirmed and not check_mode:
                return results
            results["replaced"] = self.rekey(check_mode).record_replaced(self.served())
            if check_mode:
                results["new_key"] = self.rekey(check_mode).check_new_key(self.served())
                results["revoked"] = self.rekey(check_mode).revoke(self.served(), self.certbot)
                return results
            self.renew_and_serve()
        if self.new_key:
            results["new_key"] = self.rekey(check_mode).check_new_key(self.served())
        if self.revoke_reason:
            results["revoked"] = self.rekey(check_mode).revoke(self.served(), self.certbot)
        return results


def test_the_whole_sequence_once_then_nothing(tmp_path):
    host = Host(tmp_path)
    replaced = host.serving
    dry = host.tree()
    check = host.run_role(check_mode=True)
    assert host.tree() == dry and host.revocations == 0
    assert check["replaced"][0] and check["replaced"][1]["replaced"]["serial"] == replaced.serial
    assert check["new_key"] == (True, check["new_key"][1]) and check["new_key"][1]["msg"].startswith(
        "Would renew with a new key and then check that nginx serves a key other than %s" % replaced.public_key)
    assert check["revoked"][1]["msg"] == ("Would revoke certificate %s (%s) at the CA with reason keycompromise, once the new "
                                          "certificate is verified as served." % (replaced.serial, host.lineage.archive_file(replaced)))

    results = host.run_role()
    new = host.serving
    assert host.revoked == [replaced.serial] and host.revocations == 1
    assert results["new_key"][1]["msg"] == "New key served for %s: SHA-256 %s (before: %s)." % (NAME, new.public_key, replaced.public_key)
    assert results["revoked"][0] and results["revoked"][1]["msg"] == (
        "Revoked certificate %s (%s) at the CA with reason keycompromise. The new certificate %s is served."
        % (replaced.serial, host.lineage.archive_file(replaced), host.lineage.archive_file(new)))
    records = host.records()
    assert sorted(records) == ["new_key", "replaced", "revoked"]
    assert records["replaced"]["certificate"] == dict(path=host.lineage.archive_file(replaced), serial=replaced.serial,
                                                      public_key=replaced.public_key, not_after=records["replaced"]["certificate"]["not_after"])
    assert records["replaced"]["served_public_keys_before"] == [replaced.public_key]
    assert records["replaced"]["incident_id"] == INCIDENT and records["replaced"]["names"] == [NAME]
    assert records["revoked"]["reason"] == "keycompromise" and records["revoked"]["serial"] == replaced.serial
    assert records["revoked"]["already_revoked"] is False and records["new_key"]["public_keys"] == [new.public_key]

    after = host.tree()
    for check_mode in (True, False):  # the same incident again: nothing renewed, checked only, nothing revoked or written
        again = host.run_role(check_mode=check_mode)
        assert again["status"]["renewed"] and "replaced" not in again
        assert again["status"]["msg"].startswith("Incident %s already replaced certificate %s (%s) with %s, revoked "
                                                 % (INCIDENT, replaced.serial, host.lineage.archive_file(replaced), new.serial))
        assert not again["new_key"][0] and not again["revoked"][0] and "revoked certificate %s" % replaced.serial in again["revoked"][1]["msg"]
        assert host.tree() == after and host.revocations == 1 and host.serving is new


def stop_after(host, step):
    """The sequence of the role, stopped (as by a kill) after `step`; returns the certificate it replaces."""
    replaced = host.serving
    host.rekey().record_replaced(host.served())
    if step == "replaced":
        return replaced
    host.renew_and_serve()
    if step == "renewed":
        return replaced
    if step == "renewed twice":  # a re-run renewed again before it was verified: the first certificate is still the one
        host.renew_and_serve()
        return replaced
    host.rekey().check_new_key(host.served())
    if step == "new_key":
        return replaced
    host.certbot(host.lineage.archive_file(replaced), host.revoke_reason)  # the CA revoked, the run died before recording it
    return replaced


@pytest.mark.parametrize("step", ["replaced", "renewed", "renewed twice", "new_key", "revoked at the CA"])
def test_a_run_killed_after_each_step_is_finished_by_the_next(tmp_path, step):
    host = Host(tmp_path)
    replaced = stop_after(host, step)
    renewals = host.lineage.version
    before = host.tree()
    check = host.run_role(check_mode=True)
    assert host.tree() == before, "check mode changed something"
    assert check["revoked"][0] and check["revoked"][1]["msg"].startswith("Would revoke certificate %s " % replaced.serial)

    results = host.run_role()
    assert host.lineage.version == renewals + (1 if step == "replaced" else 0)  # renewed only when certbot had not
    assert host.revoked == [replaced.serial]  # the certificate current when the incident began, never one in between
    records = host.records()
    assert records["revoked"]["serial"] == replaced.serial and records["revoked"]["path"] == host.lineage.archive_file(replaced)
    assert records["revoked"]["already_revoked"] is (step == "revoked at the CA")
    assert ("the CA had revoked it already" in results["revoked"][1]["msg"]) is (step == "revoked at the CA")
    assert records["new_key"]["public_keys"] == [host.serving.public_key]
    done = host.tree()
    assert not any(changed for changed, dummy in list(host.run_role().values())[1:]) and host.tree() == done


def test_a_key_that_did_not_change_is_never_revoked(tmp_path):
    """A lineage with reuse_key = True renewed without --new-key keeps the compromised key."""
    host = Host(tmp_path)
    replaced = host.serving
    host.rekey().record_replaced(host.served())
    host.renew_and_serve(new_key=False)
    status = host.rekey().status()
    assert not status["renewed"] and status["to_revoke"]["serial"] == replaced.serial  # the same key: not renewed
    for step in (lambda r: r.check_new_key(host.served()), lambda r: r.revoke(host.served(), host.certbot)):
        with pytest.raises(_cert_rekey.RekeyError) as refused:
            step(host.rekey())
        assert str(refused.value) == (
            "The key did not change: nginx serves %s a certificate whose public key (SHA-256 %s) is the key of the "
            "certificate it replaced or one served before (%s). A compromised key is still in use. Look at reuse_key in "
            "%s/renewal/%s.conf and at which files nginx reads. Nothing was revoked"
            % (NAME, replaced.public_key, replaced.public_key, host.config, NAME))
    assert host.revocations == 0 and sorted(host.records()) == ["replaced"]


def test_a_key_nginx_served_before_is_no_new_key(tmp_path):
    """nginx served another certificate than the lineage's (a restore over its files): its key is old too."""
    host = Host(tmp_path)
    stale = Authority("restored").issue(NAME)
    host.serving = stale
    host.rekey().record_replaced(host.served())
    host.renew_and_serve()
    host.serving = stale  # nginx still reads the restored files
    with pytest.raises(_cert_rekey.RekeyError, match="is the key of the certificate it replaced or one served before"):
        host.rekey().check_new_key(host.served())
    with pytest.raises(_cert_rekey.RekeyError, match="public key .SHA-256 none. is missing"):
        host.rekey().check_new_key([""])
    assert host.revocations == 0


def test_refusals_before_revoking(tmp_path):
    host = Host(tmp_path)
    replaced = stop_after(host, "new_key")
    archive = host.lineage.archive_file(replaced)
    os.rename(archive, archive + ".moved")
    with pytest.raises(_cert_rekey.RekeyError, match="Not revoking: %s should hold certificate %s, replaced by this incident's "
                                                     "renewal, but it is missing or unreadable. Revoke it by hand" % (archive, replaced.serial)):
        host.rekey().revoke(host.served(), host.certbot)
    shutil.copy(host.lineage.archive_file(host.serving), archive)  # another certificate in its place
    with pytest.raises(_cert_rekey.RekeyError, match="holds serial %s" % host.serving.serial):
        host.rekey().revoke(host.served(), host.certbot)
    assert host.revocations == 0 and "revoked" not in host.records()


def test_the_lineage_still_on_the_certificate_to_revoke_is_not_revoked(tmp_path):
    """certbot did not renew (a new_key=false incident that only revokes): the certificate is still in use."""
    host = Host(tmp_path, new_key=False, revoke_reason="superseded")
    replaced = host.serving
    host.rekey().record_replaced(host.served())
    with pytest.raises(_cert_rekey.RekeyError, match="is still the lineage's current certificate"):
        host.rekey().revoke(host.served(), host.certbot)
    changed, result = host.rekey(check_mode=True).revoke(host.served(), host.certbot)  # predicted: certbot would renew
    assert changed and result["msg"].startswith("Would revoke certificate %s" % replaced.serial)
    assert host.revocations == 0


def test_revocation_needs_the_archive_link(tmp_path):
    host = Host(tmp_path)
    live = host.lineage.live / "cert.pem"
    text = live.read_text()
    live.unlink()
    live.write_text(text)  # a regular file: after certbot renews, no file would hold the certificate to revoke
    with pytest.raises(_cert_rekey.RekeyError, match="cert.pem is not a link into certbot's archive"):
        host.rekey()
    host.revoke_reason = ""
    assert host.rekey().status()["current"]["path"] == ""  # a new key alone does not need it


def test_a_first_certificate_has_nothing_to_revoke(tmp_path):
    host = Host(tmp_path, issued=False)  # nginx serves the bootstrap certificate, certbot has no lineage yet
    bootstrap = host.serving
    results = host.run_role()
    assert host.revocations == 0 and results["revoked"][1]["msg"] == (
        "The lineage %s had no certificate before this incident: nothing to revoke." % NAME)
    assert results["new_key"][1]["msg"].endswith("(before: %s)." % bootstrap.public_key)
    assert host.records()["replaced"]["certificate"] == {} and host.rekey().status()["renewed"]


def test_a_certbot_failure_is_reported_and_retried_by_the_next_run(tmp_path):
    host = Host(tmp_path)
    replaced = stop_after(host, "new_key")

    def failing(path, reason):
        host.revocations += 1
        return 1, "", "line 1\nline 2\nAn unexpected error occurred:\nConnectionError\n", [
            {"type": "serverInternal", "evidence": ["urn:ietf:params:acme:error:serverInternal :: boom"]}]
    with pytest.raises(_cert_rekey.RekeyError) as failed:
        host.rekey().revoke(host.served(), failing)
    assert str(failed.value) == (
        "certbot could not revoke %s (serial %s): urn:ietf:params:acme:error:serverInternal :: boom. certbot said: line 2 | "
        "An unexpected error occurred: | ConnectionError. The new certificate is served; re-run the same incident to retry "
        "the revocation" % (host.lineage.archive_file(replaced), replaced.serial))
    assert "revoked" not in host.records()
    assert host.rekey().revoke(host.served(), host.certbot)[0] and host.revoked == [replaced.serial]


def test_records_are_the_incident_steps_of_this_incident(tmp_path):
    host = Host(tmp_path)
    stop_after(host, "new_key")
    where = host.state / NAME / INCIDENT
    other = host.state / NAME / "INC-OTHER"
    shutil.copytree(where, other)
    with pytest.raises(_cert_rekey.RekeyError, match="records incident 'INC-2026-0042', not INC-OTHER: it was not written for this"):
        host.rekey(incident="INC-OTHER")
    (other / "new_key.json").unlink()
    (other / "replaced.json").write_text(json.dumps({"incident_id": "INC-OTHER", "step": "replaced"}))
    with pytest.raises(_cert_rekey.RekeyError, match="is not a record of the certificate this incident replaces"):
        host.rekey(incident="INC-OTHER")
    (other / "replaced.json").write_text("{garbage")
    with pytest.raises(_cert_rekey.RekeyError, match="not a step record"):
        host.rekey(incident="INC-OTHER")
    (other / "replaced.json").unlink()
    (other / "replaced.json").symlink_to(where / "replaced.json")
    with pytest.raises(OSError, match="symlink"):
        host.rekey(incident="INC-OTHER")
    assert host.rekey(incident="INC-NEW").status()["steps"] == []  # a new incident id starts over


@pytest.mark.parametrize("params, words", [
    ({"incident_id": "INC 1; rm -rf /"}, "incident_id 'INC 1; rm -rf /' is not valid"),
    ({"incident_id": "INC-1\n"}, "is not valid"),
    ({"cert_name": "../../etc"}, "is not a certbot lineage name"),
    ({"cert_name": "a/b"}, "is not a certbot lineage name"),
    ({"step": "revoked"}, "revoke_reason is empty"),
])
def test_the_module_refuses_what_it_cannot_record(run_module, tmp_path, params, words):
    host = Host(tmp_path)
    base = {"incident_id": INCIDENT, "cert_name": NAME, "config_dir": str(host.config), "state_dir": str(host.state)}
    before = host.tree()
    result = run_module("cert_rekey", dict(base, **params))
    assert result.get("failed") and words in result["msg"] and result["msg"].endswith("Nothing was changed."), result
    assert host.tree() == before


def test_the_module_reads_records_and_predicts(run_module, tmp_path):
    host = Host(tmp_path)
    replaced = host.serving
    base = {"incident_id": INCIDENT, "cert_name": NAME, "names": [NAME], "new_key": True, "revoke_reason": "keycompromise",
            "config_dir": str(host.config), "state_dir": str(host.state)}
    status = run_module("cert_rekey", base)
    assert not status["changed"] and status["steps"] == [] and status["to_revoke"]["serial"] == replaced.serial
    assert status["current"]["path"] == host.lineage.archive_file(replaced) and not status["renewed"]
    before = host.tree()
    predicted = run_module("cert_rekey", dict(base, step="replaced", served_public_keys=host.served()), check_mode=True)
    assert predicted["changed"] and predicted["replaced"]["serial"] == replaced.serial and host.tree() == before
    recorded = run_module("cert_rekey", dict(base, step="replaced", served_public_keys=host.served()))
    assert recorded["changed"] and recorded["steps"] == ["replaced"] and recorded["replaced"]["serial"] == replaced.serial
    assert not run_module("cert_rekey", dict(base, step="replaced", served_public_keys=["aa:bb"]))["changed"]
    assert host.records()["replaced"]["served_public_keys_before"] == [replaced.public_key]  # the first record is kept


def test_the_lineage_is_read_with_debian_12s_cryptography(tmp_path):
    """The module runs on the managed host's python3, whose cryptography may be old (Debian 12: 38)."""
    python = shutil.which("python3", path="/usr/bin")
    require(python and subprocess.run([python, "-c", "import cryptography"], check=False).returncode == 0,
            "/usr/bin/python3 with cryptography", "apt install python3-cryptography (certbot depends on it)")
    host = Host(tmp_path)
    code = ("import json, sys; from ansible_collections.runbooks.incident.plugins.module_utils import _cert_rekey; "
            "print(json.dumps(_cert_rekey.lineage_certificate(sys.argv[1], sys.argv[2])))")
    out = subprocess.run([python, "-c", code, str(host.config), NAME], env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)),
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == _cert_rekey.lineage_certificate(str(host.config), NAME)
    assert json.loads(out)["public_key"] == key_fingerprint(host.serving.key)


# With the real certbot and pebble: certbot issues, renews (--new-key, --reuse-key) and revokes; pebble says what it revoked.

def issued(lab, case):
    """A lineage for NAME issued by pebble in the case's own certbot directories; the module's options for it."""
    rc, log = lab.certbot(NAME, case)
    assert rc == 0, log.read_text()[-2000:]
    home = lab.base / case
    return {"cert_name": NAME, "names": [NAME], "config_dir": str(home / "etc"), "work_dir": str(home / "work"),
            "log_path": str(home / "logs" / "letsencrypt.log"), "acme_server": lab.server,
            "acme_ca_bundle": str(lab.base / "ca.pem"), "state_dir": str(home / "state"), "new_key": True,
            "revoke_reason": "keycompromise"}


def served(options):
    """What nginx serves once certbot's deploy hook reloaded it: the lineage's certificate."""
    return [_cert_rekey.lineage_certificate(options["config_dir"], NAME)["public_key"]]


def test_certbot_renews_with_a_new_key_then_the_old_certificate_is_revoked_once(run_module, lab, tmp_path):
    options = issued(lab, "rekey")
    first = dict(options, incident_id="INC-PEBBLE-1")
    old = run_module("cert_rekey", first)["current"]
    assert run_module("cert_rekey", dict(first, step="replaced", served_public_keys=served(options)))["changed"]
    lab.renew("rekey", "--new-key")
    assert run_module("cert_rekey", first)["renewed"]
    checked = run_module("cert_rekey", dict(first, step="new_key", served_public_keys=served(options)))
    assert checked["changed"] and served(options) != [old["public_key"]], checked

    # Killed after pebble revoked and before the record: the next run records pebble's alreadyRevoked as done.
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / "cert_revoked.hold").touch()
    proc = start_module("cert_rekey", dict(first, step="revoked", served_public_keys=served(options)), fault_dir)
    kill_at(proc, fault_dir, "cert_revoked")
    assert lab.status(old["serial"])["Status"] == "Revoked"
    assert "revoked" not in run_module("cert_rekey", first)["steps"]
    again = run_module("cert_rekey", dict(first, step="revoked", served_public_keys=served(options)))
    assert again["changed"] and again["revoked"]["already_revoked"] is True, again
    assert "(the CA had revoked it already)" in again["msg"]
    status = lab.status(old["serial"])
    assert status["Status"] == "Revoked" and status["Reason"] == 1, status  # CRLReason keyCompromise
    assert not run_module("cert_rekey", dict(first, step="revoked", served_public_keys=served(options)))["changed"]

    # A second incident on the same lineage revokes the certificate the first one issued, in one run.
    second = dict(options, incident_id="INC-PEBBLE-2")
    current = run_module("cert_rekey", second)["current"]
    run_module("cert_rekey", dict(second, step="replaced", served_public_keys=served(options)))
    lab.renew("rekey", "--new-key")
    revoked = run_module("cert_rekey", dict(second, step="revoked", served_public_keys=served(options)))
    assert revoked["changed"] and revoked["revoked"]["already_revoked"] is False and revoked["revoked"]["serial"] == current["serial"]
    assert revoked["msg"].startswith("Revoked certificate %s (%s) at the CA with reason keycompromise." % (current["serial"], current["path"]))
    assert lab.status(current["serial"])["Status"] == "Revoked"
    assert lab.status(revoked["current"]["serial"])["Status"] == "Valid"


def test_a_lineage_that_reuses_its_key_is_caught_and_nothing_is_revoked(run_module, lab):
    options = dict(issued(lab, "reuse"), incident_id="INC-PEBBLE-REUSE")
    old = run_module("cert_rekey", options)["current"]
    run_module("cert_rekey", dict(options, step="replaced", served_public_keys=served(options)))
    lab.renew("reuse", "--reuse-key")  # what `certbot renew` does for a lineage with reuse_key = True, without --new-key
    assert served(options) == [old["public_key"]] and not run_module("cert_rekey", options)["renewed"]
    for step in ("new_key", "revoked"):
        result = run_module("cert_rekey", dict(options, step=step, served_public_keys=served(options)))
        assert result.get("failed") and result["msg"].startswith("The key did not change") and "Nothing was revoked" in result["msg"]
    assert lab.status(old["serial"])["Status"] == "Valid"
