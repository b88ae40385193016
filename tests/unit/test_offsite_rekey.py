# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.offsite_rekey: the off-host sets encrypted to a leaked age key, re-encrypted or retired.

As in test_offsite.py: moto's S3 server on loopback stands in for S3; age, age-keygen, the backup files and
offsite_sync/offsite_fetch are real. Two key pairs: the leaked one the sets were shipped to, and the new one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _s3store
from conftest import fresh_bucket, kill_at, require, s3_test_client, start_module, without_ambient_aws  # pylint: disable=import-error
from test_offsite import directory_dump, files_of, media_snapshot, plain_dump  # pylint: disable=import-error

SECRET = "s3cr3t-Rekey-Key-7b1d"
ACCESS = "AKIAREKEYTESTS"
require(shutil.which("age") and shutil.which("age-keygen"), "age and age-keygen")
SETS = ["db-2026-11-21", "media-2026-11-21", "db-2026-11-22", "media-2026-11-22"]


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch):
    without_ambient_aws(monkeypatch)


@pytest.fixture
def bucket(moto, request):
    return fresh_bucket(moto, request, "r-", ACCESS, SECRET)


class Pair:
    def __init__(self, directory, name):
        self.identity = directory / name
        subprocess.run(["age-keygen", "-o", str(self.identity)], check=True, capture_output=True)
        self.identity.chmod(0o400)
        self.recipient = subprocess.run(["age-keygen", "-y", str(self.identity)], check=True, capture_output=True,
                                        text=True).stdout.strip()
        self.secret = next(line for line in self.identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(the leaked pair, the new pair, a third pair)."""
    directory = tmp_path_factory.mktemp("rekey-keys")
    return Pair(directory, "old.key"), Pair(directory, "new.key"), Pair(directory, "third.key")


def s3(moto, bucket, **extra):
    return dict(dict(bucket=bucket, prefix="host1/", endpoint_url=moto, access_key=ACCESS, secret_key=SECRET), **extra)


def listing(moto, bucket):
    """{key: (etag, size)} of everything in the bucket, and the multipart uploads in progress."""
    client = s3_test_client(moto, ACCESS, SECRET)
    found = {item["Key"]: (item["ETag"], item["Size"]) for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    return found, [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def heads(moto, bucket):
    client = s3_test_client(moto, ACCESS, SECRET)
    return {key[len("host1/"):]: client.head_object(Bucket=bucket, Key=key)["Metadata"] for key in listing(moto, bucket)[0]}


def body(moto, bucket, name):
    return s3_test_client(moto, ACCESS, SECRET).get_object(Bucket=bucket, Key="host1/" + name)["Body"].read()


@pytest.fixture
def shipped(run_module, moto, bucket, pairs, tmp_path):
    """Two dump sets (plain, directory) and two media snapshots, shipped by offsite_sync to the leaked key."""
    old = pairs[0]
    src = tmp_path / "backups"
    src.mkdir()
    plain_dump(src, "2026-11-21")
    directory_dump(src, "2026-11-22")
    first = media_snapshot(src, "2026-11-21")
    media_snapshot(src, "2026-11-22", previous=first)
    result = run_module("offsite_sync", s3(moto, bucket, src=str(src), recipient=old.recipient))
    assert not result.get("failed"), result.get("msg")
    return src


def rekey(run_module, moto, bucket, pairs, check_mode=False, **extra):
    old, new, _third = pairs
    params = s3(moto, bucket, state="reencrypted", old_recipient=old.recipient, recipient=new.recipient, identity=str(old.identity))
    params.update(extra)
    return run_module("offsite_rekey", params, check_mode=check_mode)


def decrypts(identity, data):
    return subprocess.run(["age", "-d", "-i", str(identity)], input=data, capture_output=True, check=False).returncode == 0


def assert_restores(run_module, moto, bucket, src, identity, tmp_path, stamp):
    dest = tmp_path / ("restore-" + stamp)
    dest.mkdir()
    prefixes = [prefix for prefix in ("db-", "media-") if any(name.startswith(prefix + stamp) for name in os.listdir(src))]
    fetched = run_module("offsite_fetch", s3(moto, bucket, dest=str(dest), identity=str(identity), select=stamp, prefixes=prefixes))
    assert not fetched.get("failed"), fetched.get("msg")
    for name in os.listdir(dest):
        assert files_of(dest / name) == files_of(src / name), name
    assert sorted(os.listdir(dest)) == sorted(name for name in os.listdir(src) if stamp in name)


def by_name(result):
    return {item["name"]: item for item in result["sets"]}


# --- tests ------------------------------------------------------------------------------------------------------------

def test_report_check_reencrypt_then_only_the_new_key_restores_and_a_rerun_changes_nothing(run_module, moto, bucket, pairs, shipped,
                                                                                           tmp_path, monkeypatch):
    old, new, _third = pairs
    monkeypatch.setattr(_s3store, "PART_SIZE", 5 << 20)  # the big snapshot goes up again as a multipart upload
    big = media_snapshot(shipped, "2026-11-23", big=6 << 20)
    assert not run_module("offsite_sync", s3(moto, bucket, src=str(shipped), recipient=old.recipient)).get("failed")
    sets = SETS + ["media-2026-11-23"]
    assert all(meta.get("recipient") == old.recipient for name, meta in heads(moto, bucket).items() if name.endswith(".age"))

    report = run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient, recipient=new.recipient))
    assert not report.get("failed"), report.get("msg")
    assert report["changed"] is False and report["reencrypted"] == [] and report["retired"] == []
    assert {name: (item["status"], item["recipient"], item["action"]) for name, item in by_name(report).items()} == {
        name: ("complete", "old", "none") for name in sets}
    assert "off-host sets by recipient: 5 old" in report["msg"]

    before = listing(moto, bucket)
    check = rekey(run_module, moto, bucket, pairs, check_mode=True)
    assert not check.get("failed"), check.get("msg")
    assert check["changed"] is True and check["reencrypted"] == [] and check["bytes"] > 6 << 20
    assert [item["action"] for item in check["sets"]] == ["reencrypt"] * 5
    assert listing(moto, bucket) == before

    run = rekey(run_module, moto, bucket, pairs)
    assert not run.get("failed"), run.get("msg")
    assert run["changed"] is True and sorted(run["reencrypted"]) == sorted(sets)
    assert run["msg"].startswith("re-encrypted 5 set(s) to the new recipient")
    after, uploads = listing(moto, bucket)
    assert uploads == [] and not any("/.rekey." in key for key in after)
    assert sorted(after) == sorted(before[0])
    for name, meta in heads(moto, bucket).items():
        if name.endswith(".age"):
            assert meta["recipient"] == new.recipient, name
            data = body(moto, bucket, name)
            assert not decrypts(old.identity, data) and decrypts(new.identity, data), name
    for stamp in ("2026-11-21", "2026-11-22", "2026-11-23"):
        assert_restores(run_module, moto, bucket, shipped, new.identity, tmp_path, stamp)
    assert files_of(tmp_path / "restore-2026-11-23" / "media-2026-11-23") == files_of(big)

    stored = listing(moto, bucket)
    for check_mode in (True, False):
        again = rekey(run_module, moto, bucket, pairs, check_mode=check_mode)
        assert not again.get("failed"), again.get("msg")
        assert again["changed"] is False and again["reencrypted"] == [] and "nothing to re-encrypt" in again["msg"]
    assert listing(moto, bucket) == stored
    # offsite_sync, now with the new key, finds every set as it would have shipped it: markers and members.
    synced = run_module("offsite_sync", s3(moto, bucket, src=str(shipped), recipient=new.recipient))
    assert synced["changed"] is False and synced["uploaded"] == [], synced
    report = run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient, recipient=new.recipient))
    assert {item["recipient"] for item in report["sets"]} == {"new"}


def strip_recipient(moto, bucket, name):
    """The object as offsite_sync wrote it before it recorded the recipient."""
    client = s3_test_client(moto, ACCESS, SECRET)
    meta = client.head_object(Bucket=bucket, Key="host1/" + name)["Metadata"]
    meta.pop("recipient", None)
    client.copy_object(Bucket=bucket, Key="host1/" + name, CopySource={"Bucket": bucket, "Key": "host1/" + name},
                       Metadata=meta, MetadataDirective="REPLACE")


def test_objects_without_recorded_recipient_count_as_old_only_when_the_leaked_key_opens_them(
        run_module, moto, bucket, pairs, shipped, tmp_path):
    old, new, third = pairs
    for name, meta in heads(moto, bucket).items():
        if "recipient" in meta:
            strip_recipient(moto, bucket, name)
    # A set shipped to another key, also without the metadata.
    other_src = tmp_path / "other"
    other_src.mkdir()
    plain_dump(other_src, "2026-11-24")
    assert not run_module("offsite_sync", s3(moto, bucket, src=str(other_src), recipient=third.recipient, retention=False)).get("failed")
    strip_recipient(moto, bucket, "db-2026-11-24.sql.gz.age")
    strip_recipient(moto, bucket, "db-2026-11-24.manifest.json.age")

    blind = run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient))
    assert {item["recipient"] for item in blind["sets"]} == {"unknown"}
    seen = run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient, identity=str(old.identity)))
    assert {name: item["recipient"] for name, item in by_name(seen).items()} == dict({name: "old" for name in SETS}, **{"db-2026-11-24": "other"})

    run = rekey(run_module, moto, bucket, pairs)
    assert not run.get("failed"), run.get("msg")
    assert sorted(run["reencrypted"]) == sorted(SETS)
    after = heads(moto, bucket)
    assert "recipient" not in after["db-2026-11-24.sql.gz.age"]  # not the leaked key's: left as it was
    assert all(meta["recipient"] == new.recipient for name, meta in after.items() if name.endswith(".age") and "2026-11-24" not in name)
    assert_restores(run_module, moto, bucket, shipped, new.identity, tmp_path, "2026-11-22")


@pytest.mark.parametrize("point", ["offsite_rekey_member_replaced", "offsite_rekey_marker_removed"])
def test_a_run_killed_midway_leaves_no_complete_looking_set_and_a_rerun_finishes(
        run_module, moto, bucket, pairs, shipped, tmp_path, point):
    old, new, _third = pairs
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / (point + ".hold")).touch()
    params = s3(moto, bucket, state="reencrypted", old_recipient=old.recipient, recipient=new.recipient, identity=str(old.identity),
                select=["2026-11-21"])
    kill_at(start_module("offsite_rekey", params, fault_dir), fault_dir, point)

    # The set being changed (the oldest first: db-2026-11-21) has no marker: readers do not take it for complete.
    keys = listing(moto, bucket)[0]
    assert "host1/db-2026-11-21.manifest.json.age" not in keys and "host1/.rekey.db-2026-11-21.manifest.json.age" in keys
    report = run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient, recipient=new.recipient))
    assert by_name(report)["db-2026-11-21"]["status"] == "reencrypting"
    dest = tmp_path / "early"
    dest.mkdir()
    refused = run_module("offsite_fetch", s3(moto, bucket, dest=str(dest), identity=str(new.identity), select="2026-11-21"))
    assert refused.get("failed") and "no complete db- set of 2026-11-21" in refused["msg"], refused
    assert os.listdir(dest) == []

    resumed = rekey(run_module, moto, bucket, pairs, select=["2026-11-21"])
    assert not resumed.get("failed"), resumed.get("msg")
    assert resumed["reencrypted"] == ["db-2026-11-21", "media-2026-11-21"]
    keys, uploads = listing(moto, bucket)
    assert uploads == [] and not any("/.rekey." in key for key in keys)
    assert_restores(run_module, moto, bucket, shipped, new.identity, tmp_path, "2026-11-21")
    states = {name: item["recipient"] for name, item in by_name(
        run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient, recipient=new.recipient))).items()}
    assert states == {"db-2026-11-21": "new", "media-2026-11-21": "new", "db-2026-11-22": "old", "media-2026-11-22": "old"}
    assert rekey(run_module, moto, bucket, pairs, select=["2026-11-21"])["changed"] is False


def test_retired_refuses_to_leave_no_set_on_the_new_key_then_deletes_markers_first(run_module, moto, bucket, pairs, shipped, tmp_path):
    old, new, _third = pairs
    params = s3(moto, bucket, state="retired", old_recipient=old.recipient, recipient=new.recipient)
    before = listing(moto, bucket)
    for check_mode in (True, False):
        refused = run_module("offsite_rekey", params, check_mode=check_mode)
        assert refused.get("failed") and refused["changed"] is False, refused
        assert "would leave no complete db- set encrypted to the new recipient" in refused["msg"], refused["msg"]
        assert refused["msg"].endswith("nothing was changed")
    assert listing(moto, bucket) == before

    assert not rekey(run_module, moto, bucket, pairs, select=["2026-11-22"]).get("failed")
    check = run_module("offsite_rekey", params, check_mode=True)
    assert check["changed"] is True and check["retired"] == [] and check["bytes"] > 0
    assert {item["name"] for item in check["sets"] if item["action"] == "retire"} == {"db-2026-11-21", "media-2026-11-21"}
    kept = listing(moto, bucket)
    run = run_module("offsite_rekey", params)
    assert not run.get("failed"), run.get("msg")
    assert run["retired"] == ["db-2026-11-21", "media-2026-11-21"] and kept != listing(moto, bucket)
    assert run["deleted"] == ["host1/db-2026-11-21.manifest.json.age", "host1/db-2026-11-21.sql.gz.age",
                              "host1/media-2026-11-21.set.json", "host1/media-2026-11-21.tar.age"]
    assert sorted(key for key in listing(moto, bucket)[0]) == sorted(key for key in kept[0] if "2026-11-21" not in key)
    assert run_module("offsite_rekey", params)["changed"] is False
    assert_restores(run_module, moto, bucket, shipped, new.identity, tmp_path, "2026-11-22")

    # force: even the last sets go (here: none is left on the old key, so nothing to do).
    assert run_module("offsite_rekey", dict(params, force=True))["changed"] is False


def test_force_retires_the_last_sets(run_module, moto, bucket, pairs, shipped):
    old, new, _third = pairs
    run = run_module("offsite_rekey", s3(moto, bucket, state="retired", old_recipient=old.recipient, recipient=new.recipient,
                                         force=True, select=["2026-11-21"]))
    assert not run.get("failed"), run.get("msg")
    assert run["retired"] == ["db-2026-11-21", "media-2026-11-21"]
    assert not any("2026-11-21" in key for key in listing(moto, bucket)[0])


def test_a_wrong_identity_is_refused_before_any_change(run_module, moto, bucket, pairs, shipped, tmp_path):
    old, new, third = pairs
    before = listing(moto, bucket)
    both = tmp_path / "both.key"
    both.write_text(old.identity.read_text() + new.identity.read_text())
    both.chmod(0o400)
    exposed = tmp_path / "exposed.key"
    exposed.write_text(old.identity.read_text())
    exposed.chmod(0o644)
    for identity, message in ((new.identity, "is not the private key of old_recipient %s (its public key: %s)" % (old.recipient, new.recipient)),
                              (third.identity, "is not the private key of old_recipient"),
                              (both, "(its public keys: %s, %s)" % (old.recipient, new.recipient)),
                              (exposed, "readable or writable by others (mode 0644)"),
                              (tmp_path / "missing.key", "cannot be read")):
        for check_mode in (True, False):
            result = rekey(run_module, moto, bucket, pairs, check_mode=check_mode, identity=str(identity))
            assert result.get("failed") and result["changed"] is False, result
            assert message in result["msg"] and result["msg"].endswith("nothing was changed"), result["msg"]
            assert old.secret not in json.dumps(result) and new.secret not in json.dumps(result)
    assert listing(moto, bucket) == before


@pytest.mark.parametrize("option,value,message", [
    ("prefixes", ["../db-"], "must be a non-empty file name prefix without '/'"),
    ("prefixes", ["db-/x"], "without '/'"),
    ("prefixes", [".rekey.db-"], "a leading dot or a control character"),
    ("prefixes", ["db-\n"], "a leading dot or a control character"),
    ("prefixes", [], "prefixes is empty"),
    ("select", ["../../etc/passwd"], "is neither 'all' nor a stamp"),
    ("select", ["2026-11-21/../x"], "is neither 'all' nor a stamp"),
    ("select", ["2026-02-30"], "is neither 'all' nor a stamp"),
    ("select", ["2026-11-30"], "select names 2026-11-30, of which there is no set off-host"),
    ("recipient", "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ", "recipient is an age PRIVATE key"),
    ("recipient", "age1$(touch pwned)", "recipient is not an age public key"),
    ("old_recipient", "ssh-ed25519 AAAA", "old_recipient is not an age public key"),
])
def test_hostile_options_are_refused_and_nothing_changes(run_module, moto, bucket, pairs, shipped, tmp_path, option, value, message):
    before = listing(moto, bucket)
    result = rekey(run_module, moto, bucket, pairs, **{option: value})
    assert result.get("failed") and result["changed"] is False, result
    assert message in result["msg"] and result["msg"].endswith("nothing was changed"), result["msg"]
    if option == "recipient":
        assert value not in result["msg"]
    assert listing(moto, bucket) == before and not (tmp_path / "pwned").exists()


def test_the_new_recipient_must_not_be_the_leaked_one(run_module, moto, bucket, pairs, shipped):
    old = pairs[0]
    result = rekey(run_module, moto, bucket, pairs, recipient=old.recipient)
    assert result.get("failed") and "recipient is old_recipient" in result["msg"], result


def test_secrets_never_appear_in_results(run_module, moto, bucket, pairs, shipped):
    old, new, _third = pairs
    results = [run_module("offsite_rekey", s3(moto, bucket, old_recipient=old.recipient, identity=str(old.identity))),
               rekey(run_module, moto, bucket, pairs, check_mode=True),
               rekey(run_module, moto, bucket, pairs),
               rekey(run_module, moto, bucket, pairs, identity=str(new.identity))]
    assert [bool(result.get("failed")) for result in results] == [False, False, False, True]
    for result in results:
        text = json.dumps(result)
        assert old.secret not in text and new.secret not in text and old.secret.lower() not in text
        assert SECRET not in text and "PLAINTEXT-" not in text


def test_a_killed_runs_unfinished_upload_of_a_temporary_object_is_aborted_once_stale(moto, bucket):
    """A run killed while it uploaded `.rekey.<name>` in parts leaves the upload in the bucket; a later run aborts it
    once offsite_sync would call it stale (a younger one may be a run still going), and never another upload."""
    import datetime  # pylint: disable=import-outside-toplevel
    from ansible_collections.runbooks.incident.plugins.module_utils import _offsite, _offsite_rekey  # pylint: disable=import-outside-toplevel

    client = s3_test_client(moto, ACCESS, SECRET)
    store = _s3store.Store(_s3store.s3_client(moto, access_key=ACCESS, secret_key=SECRET), bucket, "host1/")
    for key in ("host1/.rekey.db-2026-11-21.dump.age", "host1/db-2026-11-21.dump.age", "host1/.rekey.notes.txt"):
        client.create_multipart_upload(Bucket=bucket, Key=key)
    # moto reports every upload as initiated at 2010-11-10T20:48:33Z: the run's clock is set relative to that.
    initiated = datetime.datetime(2010, 11, 10, 20, 48, 33, tzinfo=datetime.timezone.utc)
    later = initiated + datetime.timedelta(seconds=_offsite.STALE_UPLOAD_SECONDS + 60)

    young = initiated + datetime.timedelta(seconds=60)
    assert _offsite_rekey.abort_stale_uploads(store, ["db-", "media-"], check_mode=False, now=young) == 0, "maybe a run going on"
    assert _offsite_rekey.abort_stale_uploads(store, ["db-", "media-"], check_mode=True, now=later) == 1
    assert len(listing(moto, bucket)[1]) == 3, "check mode aborts nothing"
    assert _offsite_rekey.abort_stale_uploads(store, ["db-", "media-"], check_mode=False, now=later) == 1
    assert sorted(listing(moto, bucket)[1]) == ["host1/.rekey.notes.txt", "host1/db-2026-11-21.dump.age"], \
        "only the temporary object of a set member; offsite_sync's own uploads and foreign names are left"
