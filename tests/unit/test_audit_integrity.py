# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""audit_manifest, audit_diff and audit_preserve on real archive trees: every tamper case of the issue is made to
happen on real files (edits with size and mtime restored like `touch -r`, truncation, swaps, renames...) and must be
detected; an untouched archive must report nothing. The two copies stand for the app host and the log server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest
from conftest import fed_fifo, planted_link  # pylint: disable=import-error

HOUR = 3600
OLD = time.time() - 30 * 86400  # archive files of a month ago: far outside any grace window


def make_archive(root, days=3, hours=4, size=3000):
    """A small archive laid out as the service writes it: YYYY/MM/DD/HH.jsonl, each an old, finished hour."""
    for day in range(days):
        for hour in range(hours):
            path = root / "2026" / "10" / ("%02d" % (day + 1)) / ("%02d.jsonl" % hour)
            path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"day": day, "hour": hour, "action": "send_attempt", "pad": "x" * 40}) + "\n"
            path.write_text((line * (size // len(line) + 1))[:size + day * 7 + hour])
            stamp = OLD + day * 86400 + hour * HOUR
            os.utime(path, (stamp, stamp))
    return root


@pytest.fixture(name="pair")
def pair_fixture(tmp_path):
    """(local, remote, cache dir): the app host's archive and the log server's copy of it (mtimes kept)."""
    local = make_archive(tmp_path / "local")
    remote = tmp_path / "remote"
    shutil.copytree(local, remote)  # copy2: content and mtime, as the shipper's tar does
    return local, remote, tmp_path / "cache"


def compare(run_module, local, remote, cache, full=False, **options):
    manifests = {}
    for side, root in (("local", local), ("remote", remote)):
        result = run_module("audit_manifest", dict(path=str(root), cache=str(cache / (side + ".json")), full=full))
        assert not result.get("failed"), result
        manifests[side] = result
    return run_module("audit_diff", dict(local=manifests["local"], remote=manifests["remote"],
                                         fail_on_mismatch=False, **options))


def flip_byte_keeping_size_and_mtime(path, offset=100):
    before = os.stat(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    assert os.stat(path).st_size == before.st_size


ONE = "2026/10/01/01.jsonl"
TWO = "2026/10/02/02.jsonl"


# ------------------------------------------------------------------------------------------------ untouched
def test_an_untouched_archive_reports_no_mismatch_and_equal_roots(run_module, pair):
    local, remote, cache = pair
    result = compare(run_module, local, remote, cache)
    assert result["ok"] is True
    assert result["mismatches"] == [] and result["pending"] == []
    assert result["local_root"] == result["remote_root"]
    assert result["local_count"] == result["remote_count"] == 12


def test_the_manifest_lists_every_file_with_its_real_digest_and_never_writes_the_archive(run_module, pair, tmp_path):
    local, _remote, cache = pair
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in local.rglob("*")}
    result = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "c.json")))
    assert result["changed"] is False and result["count"] == 12
    import hashlib
    for rel, item in result["files"].items():
        data = (local / rel).read_bytes()
        assert item == dict(size=len(data), sha256=hashlib.sha256(data).hexdigest(), mtime=int((local / rel).stat().st_mtime))
    assert result["bytes"] == sum(p.stat().st_size for p in local.rglob("*.jsonl"))
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in local.rglob("*")} == before
    assert oct((cache / "c.json").stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------------------------------------ tamper cases
@pytest.mark.parametrize("side", ["local", "remote"])
def test_a_byte_flipped_with_size_and_mtime_restored_is_detected_incrementally(run_module, pair, side):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)  # warm both caches
    flip_byte_keeping_size_and_mtime((local if side == "local" else remote) / ONE)
    result = compare(run_module, local, remote, cache)
    assert result["ok"] is False
    assert result["mismatches"] == [dict(path=ONE, kind="content")]


@pytest.mark.parametrize("change,kind", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "size"),   # truncation
    (lambda p: p.write_bytes(p.read_bytes() + b"{}\n"), "size"),  # appended bytes
])
def test_truncation_and_appended_bytes_are_detected(run_module, pair, change, kind):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    target = remote / ONE
    before = target.stat()
    change(target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert compare(run_module, local, remote, cache)["mismatches"] == [dict(path=ONE, kind=kind)]


@pytest.mark.parametrize("side,kind", [("remote", "missing_remote"), ("local", "missing_local")])
def test_a_file_deleted_on_either_side_is_detected(run_module, pair, side, kind):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    ((remote if side == "remote" else local) / ONE).unlink()
    assert compare(run_module, local, remote, cache)["mismatches"] == [dict(path=ONE, kind=kind)]


@pytest.mark.parametrize("side,kind", [("local", "missing_remote"), ("remote", "missing_local")])
def test_a_file_added_on_either_side_outside_the_grace_window_is_detected(run_module, pair, side, kind):
    local, remote, cache = pair
    added = (local if side == "local" else remote) / "2026/10/02/23.jsonl"
    added.write_text('{"forged": true}\n')
    os.utime(added, (OLD, OLD))
    result = compare(run_module, local, remote, cache)
    assert result["mismatches"] == [dict(path="2026/10/02/23.jsonl", kind=kind)]


def test_the_file_being_written_this_hour_is_pending_not_a_mismatch(run_module, pair):
    local, remote, cache = pair
    (local / "2026/10/03/04.jsonl").write_text('{"now": true}\n')  # mtime now: not yet shipped
    result = compare(run_module, local, remote, cache, grace_recent_minutes=60)
    assert result["ok"] is True and result["mismatches"] == []
    assert result["pending"] == [dict(path="2026/10/03/04.jsonl", kind="missing_remote")]
    # Without a grace window it is a mismatch.
    assert compare(run_module, local, remote, cache, grace_recent_minutes=0)["mismatches"] == result["pending"]


def test_two_files_contents_swapped_are_both_detected(run_module, pair):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    first, second = remote / "2026/10/01/00.jsonl", remote / "2026/10/01/03.jsonl"
    one, two = first.read_bytes()[:2000], second.read_bytes()[:2000]  # same size, so only content tells
    stamps = [first.stat().st_mtime_ns, second.stat().st_mtime_ns]
    first.write_bytes(two + first.read_bytes()[2000:])
    second.write_bytes(one + second.read_bytes()[2000:])
    for path, stamp in zip((first, second), stamps):
        os.utime(path, ns=(stamp, stamp))
    kinds = compare(run_module, local, remote, cache)["mismatches"]
    assert kinds == [dict(path="2026/10/01/00.jsonl", kind="content"), dict(path="2026/10/01/03.jsonl", kind="content")]


def test_a_renamed_file_is_missing_on_one_side_and_extra_on_the_other(run_module, pair):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    os.rename(remote / ONE, remote / "2026/10/01/11.jsonl")
    assert compare(run_module, local, remote, cache)["mismatches"] == [
        dict(path=ONE, kind="missing_remote"), dict(path="2026/10/01/11.jsonl", kind="missing_local")]


def test_a_whole_days_directory_removed_lists_every_file_of_that_day(run_module, pair):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    shutil.rmtree(remote / "2026/10/02")
    result = compare(run_module, local, remote, cache)
    assert result["mismatches"] == [dict(path="2026/10/02/%02d.jsonl" % hour, kind="missing_remote") for hour in range(4)]


def edit_cache_to_vouch_for(cache_file, archive, rel, old_digest):
    """What an attacker who also controls the host does: make the cache claim the edited file's new stat has the
    old digest, and fix the cache's own digest so it loads as intact."""
    data = json.loads(cache_file.read_text())
    info = (archive / rel).stat()
    data["entries"][rel] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, old_digest]
    data["digest"] = _audit_manifest._entries_digest(data["entries"])  # pylint: disable=protected-access
    cache_file.write_text(json.dumps(data))


def test_a_hand_edited_cache_cannot_make_a_changed_file_pass_the_full_pass(run_module, pair):
    local, remote, cache = pair
    first = compare(run_module, local, remote, cache)
    old_digest = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "local.json")))["files"][ONE]["sha256"]
    assert first["ok"]
    flip_byte_keeping_size_and_mtime(local / ONE)
    edit_cache_to_vouch_for(cache / "local.json", local, ONE, old_digest)

    # The incremental pass trusts the cache (that is what makes it fast) ...
    assert compare(run_module, local, remote, cache)["mismatches"] == []
    # ... the daily full pass does not: the edit is found, and so is the lying cache.
    edit_cache_to_vouch_for(cache / "local.json", local, ONE, old_digest)
    result = compare(run_module, local, remote, cache, full=True)
    assert result["ok"] is False
    assert result["mismatches"] == [dict(path=ONE, kind="content")]
    assert result["cache_mismatches"] == dict(local=[ONE], remote=[])


def test_a_cache_edited_without_fixing_its_own_digest_is_ignored(run_module, pair):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    flip_byte_keeping_size_and_mtime(local / ONE)
    data = json.loads((cache / "local.json").read_text())
    info = (local / ONE).stat()
    data["entries"][ONE][:4] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
    (cache / "local.json").write_text(json.dumps(data))
    manifest = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "local.json")))
    assert manifest["cache"]["status"] == "corrupt" and manifest["hashed"] == 12
    assert compare(run_module, local, remote, cache)["mismatches"] == [dict(path=ONE, kind="content")]


def test_a_manifest_altered_in_transit_is_refused(run_module, pair):
    local, remote, cache = pair
    manifests = [run_module("audit_manifest", dict(path=str(root), cache=str(cache / name)))
                 for root, name in ((local, "l.json"), (remote, "r.json"))]
    manifests[1]["files"][ONE]["sha256"] = "0" * 64  # a forged digest, root left as it was
    result = run_module("audit_diff", dict(local=manifests[0], remote=manifests[1]))
    assert result["failed"] is True and "root does not match its files" in result["msg"]


# ------------------------------------------------------------------------------------------------ fast path
def test_the_incremental_pass_rehashes_only_what_changed(run_module, pair):
    local, _remote, cache = pair
    first = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "c.json")))
    assert first["hashed"] == 12 and first["cache"]["status"] == "missing"
    again = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "c.json")))
    assert again["hashed"] == 0 and again["reused"] == 12 and again["root"] == first["root"]
    os.utime(local / TWO)  # touched: ctime and mtime change, so it is hashed again (content the same)
    touched = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "c.json")))
    assert touched["hashed"] == 1 and touched["root"] == first["root"]
    full = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "c.json"), full=True))
    assert full["hashed"] == 12 and full["cache"]["mismatches"] == []


def test_check_mode_reads_the_cache_but_does_not_write_it(run_module, pair):
    local, _remote, cache = pair
    result = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "c.json")), check_mode=True)
    assert result["count"] == 12 and not (cache / "c.json").exists()


def test_a_directory_can_be_compared_directly_and_prefixes_select_one_hosts_subtree(run_module, pair, tmp_path):
    local, remote, _cache = pair
    log_server = tmp_path / "logserver"
    shutil.copytree(remote, log_server / "app")
    shutil.copytree(remote, log_server / "app2")
    (log_server / "app2" / ONE).unlink()
    assert run_module("audit_diff", dict(local=str(local), remote=str(log_server), remote_prefix="app"))["ok"] is True
    result = run_module("audit_diff", dict(local=str(local), remote=str(log_server), remote_prefix="app2"))
    assert result["failed"] is True and result["mismatches"] == [dict(path=ONE, kind="missing_remote")]
    assert ONE in result["msg"]


def test_bad_input_fails_clearly(run_module, tmp_path):
    missing = run_module("audit_manifest", dict(path=str(tmp_path / "nope"), cache=str(tmp_path / "c.json")))
    assert missing["failed"] is True and "does not exist" in missing["msg"]
    assert not (tmp_path / "c.json").exists()
    garbage = tmp_path / "m.json"
    garbage.write_text('{"format": "something else", "files": {}}')
    result = run_module("audit_diff", dict(local=str(garbage), remote=str(garbage)))
    assert result["failed"] is True and "not an audit manifest" in result["msg"]


# ------------------------------------------------------------------------------------------------ evidence
def test_evidence_keeps_this_hosts_version_read_only_with_digests_and_leaves_the_original(run_module, pair, tmp_path):
    local, remote, cache = pair
    flip_byte_keeping_size_and_mtime(remote / ONE)
    original = (remote / ONE).stat()
    dest = tmp_path / "evidence"
    params = dict(incident_id="INC-1", path=str(remote), files=[ONE, "2026/10/09/00.jsonl"], dest=str(dest))
    predicted = run_module("audit_preserve", params, check_mode=True)
    assert predicted["changed"] is True and not dest.exists()
    kept = run_module("audit_preserve", params)
    assert kept["changed"] is True and [item["path"] for item in kept["preserved"]] == [ONE]
    assert (dest / ONE).read_bytes() == (remote / ONE).read_bytes()
    assert oct((dest / ONE).stat().st_mode & 0o777) == "0o400"
    assert (dest / "SHA256SUMS").read_text() == "%s  %s\n" % (kept["preserved"][0]["sha256"], ONE)
    after = (remote / ONE).stat()
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (original.st_mtime_ns, original.st_ctime_ns, original.st_ino)
    assert run_module("audit_preserve", params)["changed"] is False
    escape = run_module("audit_preserve", dict(params, files=["../../etc/shadow"]))
    assert escape["failed"] is True and "not a path inside the archive" in escape["msg"]


# ------------------------------------------------------------------------------------------------ dates, hidden names
def test_an_edited_file_dated_in_the_future_is_a_mismatch_not_pending(run_module, pair):
    local, remote, cache = pair
    compare(run_module, local, remote, cache)
    flip_byte_keeping_size_and_mtime(local / ONE)
    future = time.time() + 86400
    os.utime(local / ONE, (future, future))
    result = compare(run_module, local, remote, cache, grace_recent_minutes=90)
    assert result["ok"] is False and result["pending"] == []
    assert [(item["path"], item["kind"]) for item in result["mismatches"]] == [(ONE, "future_mtime")]
    assert result["mismatches"][0]["difference"] == "content"


@pytest.mark.parametrize("side", ["local", "remote"])
def test_hidden_files_and_directories_in_the_archive_are_reported(run_module, pair, side):
    local, remote, cache = pair
    archive = local if side == "local" else remote
    for rel in (".forged.jsonl", "2026/10/01/.01.jsonl", ".git/objects/ab", "2026/.cache/x"):
        write_old(archive / rel, '{"hidden": true}\n')
    result = compare(run_module, local, remote, cache, grace_recent_minutes=90)
    assert result["ok"] is False, result
    assert sorted((item["path"], item["kind"], item["side"]) for item in result["mismatches"]) == [
        (".forged.jsonl", "hidden", side), (".git", "hidden", side), ("2026/.cache", "hidden", side),
        ("2026/10/01/.01.jsonl", "hidden", side)]
    manifest = run_module("audit_manifest", dict(path=str(archive), cache=str(cache / "h.json")))
    assert {item["path"]: item["type"] for item in manifest["hidden"]} == {
        ".forged.jsonl": "file", ".git": "directory", "2026/.cache": "directory", "2026/10/01/.01.jsonl": "file"}


def test_a_partial_write_in_progress_is_pending_and_a_stale_one_is_a_mismatch(run_module, pair):
    local, remote, cache = pair
    (local / "2026/10/03/.04.jsonl.1a2b3c4d.partial").write_text('{"now": true}\n')  # being written right now
    (remote / "2026/10/02/.incoming.k3j2x9").write_text('{"now": true}\n')  # the receiver storing a file
    result = compare(run_module, local, remote, cache, grace_recent_minutes=60)
    assert result["ok"] is True and result["mismatches"] == []
    assert sorted((item["path"], item["kind"]) for item in result["pending"]) == [
        ("2026/10/02/.incoming.k3j2x9", "hidden"), ("2026/10/03/.04.jsonl.1a2b3c4d.partial", "hidden")]
    for path in (local / "2026/10/03/.04.jsonl.1a2b3c4d.partial", remote / "2026/10/02/.incoming.k3j2x9"):
        os.utime(path, (OLD, OLD))  # left behind by a crash a month ago
    stale = compare(run_module, local, remote, cache, grace_recent_minutes=60)
    assert stale["ok"] is False and len(stale["mismatches"]) == 2 and stale["pending"] == []


def test_a_symlink_in_either_archive_is_a_mismatch(run_module, pair, tmp_path):
    local, remote, cache = pair
    (remote / "2026/10/01/99.jsonl").symlink_to("/etc/passwd")
    (local / "2026/10/04").symlink_to(tmp_path)
    result = compare(run_module, local, remote, cache)
    assert result["ok"] is False
    assert sorted((item["path"], item["kind"], item["side"]) for item in result["mismatches"]) == [
        ("2026/10/01/99.jsonl", "irregular", "remote"), ("2026/10/04", "irregular", "local")]


def test_a_manifest_with_fields_of_the_wrong_type_is_refused_clearly(run_module, pair):
    local, remote, cache = pair
    flip_byte_keeping_size_and_mtime(remote / ONE)
    manifests = [run_module("audit_manifest", dict(path=str(root), cache=str(cache / name)))
                 for root, name in ((local, "l.json"), (remote, "r.json"))]
    for field, value in (("generated_at", "soon"), ("cache", "none"), ("hidden", {"a": 1}), ("irregular", [1])):
        broken = dict(manifests[0], **{field: value})
        result = run_module("audit_diff", dict(local=broken, remote=manifests[1]))
        assert result["failed"] is True and field in result["msg"] and "not an audit manifest" in result["msg"], (field, result)


def write_old(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (OLD, OLD))


# ------------------------------------------------------------------------------------------------ symlinks
def test_preserve_never_copies_through_a_symlinked_directory_in_the_archive(run_module, pair, tmp_path):
    _local, remote, _cache = pair
    secret = tmp_path / "secret-dir"
    secret.mkdir()
    (secret / "01.jsonl").write_text("root's secret\n")
    shutil.rmtree(remote / "2026/10/01")
    (remote / "2026/10/01").symlink_to(secret)
    dest = tmp_path / "evidence"
    kept = run_module("audit_preserve", dict(incident_id="INC-1", path=str(remote), files=[ONE, TWO], dest=str(dest)))
    assert not kept.get("failed"), kept
    assert [item["path"] for item in kept["preserved"]] == [TWO]
    assert [item["path"] for item in kept["skipped"]] == [ONE] and "symlink" in kept["skipped"][0]["reason"]
    assert not (dest / ONE).exists() and "root's secret" not in (dest / "SHA256SUMS").read_text()


def test_a_symlink_or_file_inside_the_archive_is_named_and_never_followed(tmp_path):
    from ansible_collections.runbooks.incident.plugins.module_utils import _fileio  # pylint: disable=import-outside-toplevel
    (tmp_path / "2026").mkdir()
    (tmp_path / "2026" / "10").symlink_to(tmp_path)
    (tmp_path / "2026" / "11").write_text("")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(_fileio.UnsafePathError, match="2026/10 is a symlink inside the archive: not followed"):
            _audit_manifest.open_dir_beneath(root, ["2026", "10", "01"], create_mode=0o750)
        with pytest.raises(_fileio.UnsafePathError, match="2026/11 is not a directory inside the archive: not followed"):
            _audit_manifest.open_dir_beneath(root, ["2026", "11"])
    finally:
        os.close(root)
    assert not (tmp_path / "01").exists()


def test_preserve_never_writes_through_a_symlinked_directory_of_dest(run_module, pair, tmp_path):
    _local, remote, _cache = pair
    evidence = planted_link(tmp_path, "evidence")
    elsewhere = tmp_path / "elsewhere"
    result = run_module("audit_preserve", dict(incident_id="INC-1", path=str(remote), files=[ONE],
                                               dest=str(evidence / "INC-1" / "audit")))
    assert result["failed"] is True and "refusing to follow the symlink evidence" in result["msg"]
    assert list(elsewhere.iterdir()) == []


def test_the_cache_is_never_written_through_a_symlinked_directory(run_module, pair, tmp_path):
    local, _remote, _cache = pair
    cache = planted_link(tmp_path, "cache")
    elsewhere = tmp_path / "elsewhere"
    result = run_module("audit_manifest", dict(path=str(local), cache=str(cache / "sub" / "c.json")))
    assert result["failed"] is True and "refusing to follow the symlink cache" in result["msg"]
    assert list(elsewhere.iterdir()) == []


def test_a_manifest_file_that_is_a_fifo_is_refused_not_waited_on(run_module, pair, tmp_path):
    local, _remote, _cache = pair
    fifo = tmp_path / "manifest.json"
    result = fed_fifo(fifo, "{}")(lambda: run_module("audit_diff", dict(local=str(local), remote=str(fifo))))
    assert result["failed"] is True and "not a regular file" in result["msg"]


def test_preserve_sums_cannot_be_forged_by_a_file_name(run_module, tmp_path):
    archive = tmp_path / "archive"
    name = "x\n%s  2026/10/01/01.jsonl" % ("0" * 64)
    write_old(archive / name, "evil\n")
    dest = tmp_path / "evidence"
    kept = run_module("audit_preserve", dict(incident_id="INC-1", path=str(archive), files=[name], dest=str(dest)))
    assert not kept.get("failed"), kept
    lines = (dest / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("\\")
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dest, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_cache_path_that_names_another_file_never_rewrites_it(run_module, pair, tmp_path):
    local, _remote, _cache = pair
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = run_module("audit_manifest", dict(path=str(local), cache=str(passwd)))
    assert not result.get("failed") and result["cache"]["status"] == "foreign" and result["count"] == 12
    assert any("not a manifest cache" in warning for warning in result["warnings"])
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


def test_preserve_never_writes_into_a_directory_that_is_not_an_evidence_directory(run_module, tmp_path):
    archive, etc = tmp_path / "archive", tmp_path / "etc"
    write_old(archive / "passwd", "forged\n")
    write_old(etc / "passwd", "root:x:0:0:root:/root:/bin/bash\n")
    result = run_module("audit_preserve", dict(incident_id="INC-1", path=str(archive), files=["passwd"], dest=str(etc)))
    assert result["failed"] and "not an evidence directory" in result["msg"]
    assert (etc / "passwd").read_text() == "root:x:0:0:root:/root:/bin/bash\n" and sorted(p.name for p in etc.iterdir()) == ["passwd"]
    again = tmp_path / "evidence"
    assert run_module("audit_preserve", dict(incident_id="INC-1", path=str(archive), files=["passwd"], dest=str(again)))["changed"]
    write_old(archive / "passwd", "forged again\n")
    assert run_module("audit_preserve", dict(incident_id="INC-1", path=str(archive), files=["passwd"], dest=str(again)))["changed"]
