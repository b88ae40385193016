# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.shamir_split and shamir_combine: a real age key on paper shares and back, typos, mixed sets, leaks."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _shamir
from conftest import fed_fifo, planted_link, require  # pylint: disable=import-error

require(shutil.which("age-keygen"), "age-keygen (Debian package age)")
require(_shamir.CRYPTO_IMPORT_ERROR is None, "pycryptodome")

# Characters of the base32 alphabet, to make a one-character typo that stays in the alphabet.
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@pytest.fixture(name="age_key")
def age_key_fixture(tmp_path):
    """A real age key file (comments and the AGE-SECRET-KEY line), its bytes and its secret line."""
    key = tmp_path / "keys.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    data = key.read_bytes()
    secret_line = next(line for line in data.decode().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    return key, data, secret_line


def split(run_module, key, dest_dir, threshold=3, shares=5, check_mode=False, **extra):
    return run_module("shamir_split", dict(secret_file=str(key), threshold=threshold, shares=shares, dest_dir=str(dest_dir), **extra),
                      check_mode=check_mode)


def share_line(path):
    return next(line for line in path.read_text().splitlines() if not line.startswith("#"))


def with_typo(line):
    """`line` with one character of its share field replaced by another base32 character."""
    fields = line.split(":")
    position = 5
    replacement = B32[(B32.index(fields[3][position]) + 1) % len(B32)]
    fields[3] = fields[3][:position] + replacement + fields[3][position + 1:]
    return ":".join(fields)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_three_of_five_reopens_the_exact_age_key(run_module, tmp_path, age_key):
    key, data, _secret_line = age_key
    shares_dir = tmp_path / "shares"
    result = split(run_module, key, shares_dir)
    assert not result.get("failed"), result
    assert result["changed"] and result["threshold"] == 3 and result["shares"] == 5
    assert result["fingerprint"] == _shamir.fingerprint(data)
    files = [shares_dir / f"share-{index}-of-5.txt" for index in range(1, 6)]
    assert result["files"] == [str(path) for path in files]
    for number, subset in enumerate(itertools.combinations(files, 3)):
        dest = tmp_path / f"reopened-{number}.txt"
        combined = run_module("shamir_combine", dict(share_files=[str(path) for path in subset], dest=str(dest)))
        assert not combined.get("failed"), (subset, combined)
        assert dest.read_bytes() == data, subset
        assert combined["fingerprint"] == result["fingerprint"] and combined["threshold"] == 3
    # The reopened file is a working age key: it still gives the same public key.
    public = subprocess.run(["age-keygen", "-y", str(tmp_path / "reopened-0.txt")], check=True, capture_output=True, text=True).stdout
    assert public == subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout


def test_two_shares_are_not_enough_and_nothing_is_written(run_module, tmp_path, age_key):
    key = age_key[0]
    split(run_module, key, tmp_path / "shares")
    dest = tmp_path / "reopened.txt"
    result = run_module("shamir_combine", dict(share_files=[str(tmp_path / "shares" / f"share-{i}-of-5.txt") for i in (2, 5)], dest=str(dest)))
    assert result["failed"]
    assert "needs 3 shares to reopen the secret, got 2 (index 2, 5)" in result["msg"] and "nothing was written" in result["msg"]
    assert not dest.exists()


def test_more_shares_than_needed_are_accepted(run_module, tmp_path, age_key):
    key, data, _secret_line = age_key
    split(run_module, key, tmp_path / "shares")
    dest = tmp_path / "reopened.txt"
    result = run_module("shamir_combine", dict(share_files=[str(p) for p in sorted((tmp_path / "shares").iterdir())], dest=str(dest)))
    assert not result.get("failed") and result["indices"] == [1, 2, 3] and dest.read_bytes() == data


def test_a_typo_is_caught_and_names_the_share(run_module, tmp_path, age_key):
    key = age_key[0]
    split(run_module, key, tmp_path / "shares")
    lines = [share_line(tmp_path / "shares" / f"share-{i}-of-5.txt") for i in (1, 4, 5)]
    dest = tmp_path / "reopened.txt"
    result = run_module("shamir_combine", dict(shares=[lines[0], with_typo(lines[1]), lines[2]], dest=str(dest)))
    assert result["failed"]
    assert "share #2 given (index 4): checksum mismatch" in result["msg"], result["msg"]
    assert not dest.exists()
    files = run_module("shamir_combine", dict(share_files=[str(tmp_path / "shares" / "share-1-of-5.txt"), str(tmp_path / "typo.txt")], dest=str(dest)))
    assert files["failed"] and "share file" in files["msg"]  # an unreadable file is named too


def test_a_share_typed_back_from_paper_is_read_forgivingly(run_module, tmp_path, age_key):
    key, data, _secret_line = age_key
    split(run_module, key, tmp_path / "shares", threshold=2, shares=3)
    fields = share_line(tmp_path / "shares" / "share-3-of-3.txt").split(":")
    # Base32 in lower case with O, I and B typed as 0, 1 and 8 (not base32 characters), in groups of five over lines.
    for number in (3, 4):
        fields[number] = fields[number].lower().replace("o", "0").replace("i", "1").replace("b", "8")
    line = ":".join(fields)
    retyped = "\n".join(" ".join(line[i:i + 5] for i in range(start, min(start + 60, len(line)), 5)) for start in range(0, len(line), 60))
    dest = tmp_path / "reopened.txt"
    result = run_module("shamir_combine", dict(shares=[(tmp_path / "shares" / "share-1-of-3.txt").read_text(), retyped], dest=str(dest)))
    assert not result.get("failed"), result["msg"]
    assert dest.read_bytes() == data and result["indices"] == [1, 3]


def test_shares_of_two_splits_are_refused(run_module, tmp_path, age_key):
    key = age_key[0]
    split(run_module, key, tmp_path / "a")
    split(run_module, key, tmp_path / "b")
    paths = [tmp_path / "a" / "share-1-of-5.txt", tmp_path / "a" / "share-2-of-5.txt", tmp_path / "b" / "share-3-of-5.txt"]
    dest = tmp_path / "reopened.txt"
    result = run_module("shamir_combine", dict(share_files=[str(p) for p in paths], dest=str(dest)))
    assert result["failed"] and "the shares come from different splits" in result["msg"]
    assert "(3 of 5): index 1, 2;" in result["msg"] and "(3 of 5): index 3;" in result["msg"]
    assert not dest.exists()


def test_share_files_are_private_and_hold_no_part_of_the_secret(run_module, tmp_path, age_key):
    key, data, secret_line = age_key
    shares_dir = tmp_path / "shares"
    result = split(run_module, key, shares_dir, threshold=2, shares=3)
    assert mode_of(shares_dir) == 0o700
    for path in result["files"]:
        assert mode_of(path) == 0o600
        text = open(path, encoding="ascii").read()
        lines = text.splitlines()
        assert len(lines) == 2 and lines[0].startswith("# runbooks.incident Shamir share ") and result["fingerprint"] in lines[0]
        assert lines[1].startswith("rbi-shamir-v1:2of3:")
        secret_text = data.decode()
        assert not any(secret_text[i:i + 12] in text for i in range(len(secret_text) - 12)), path
        assert secret_line[15:] not in text.upper()


def test_results_and_invocation_never_hold_the_secret_or_a_share(run_module, tmp_path, age_key):
    _key, data, secret_line = age_key
    secret = data.decode()
    shares_dir = tmp_path / "shares"
    results = [run_module("shamir_split", dict(secret=secret, threshold=2, shares=3, dest_dir=str(shares_dir)), check_mode=True),
               run_module("shamir_split", dict(secret=secret, threshold=2, shares=3, dest_dir=str(shares_dir)))]
    lines = [share_line(shares_dir / f"share-{i}-of-3.txt") for i in (1, 2, 3)]
    dest = tmp_path / "reopened.txt"
    results += [run_module("shamir_combine", dict(shares=lines[:2], dest=str(dest)), check_mode=True),
                run_module("shamir_combine", dict(shares=lines[:2], dest=str(dest))),
                run_module("shamir_combine", dict(shares=[lines[0], with_typo(lines[2])], dest=str(dest))),
                run_module("shamir_combine", dict(shares=lines[:1], dest=str(dest)))]
    assert [bool(r.get("failed")) for r in results] == [False, False, False, False, True, True]
    assert all("invocation" in r for r in results)
    dumped = json.dumps(results)
    assert secret_line not in dumped and secret_line[15:35] not in dumped
    for line in lines + [with_typo(lines[2])]:
        fields = line.split(":")
        assert line not in dumped and fields[3] not in dumped and fields[4][:40] not in dumped


def test_split_four_runs_keep_the_first_set(run_module, tmp_path, age_key):
    key = age_key[0]
    shares_dir = tmp_path / "shares"
    check = split(run_module, key, shares_dir, check_mode=True)
    assert check["changed"] and not check.get("failed") and not shares_dir.exists()
    first = split(run_module, key, shares_dir)
    assert first["changed"]
    contents = {path: open(path, encoding="ascii").read() for path in first["files"]}
    again_check = split(run_module, key, shares_dir, check_mode=True)
    again = split(run_module, key, shares_dir)
    assert not again_check["changed"] and not again["changed"]
    assert {path: open(path, encoding="ascii").read() for path in first["files"]} == contents
    forced = split(run_module, key, shares_dir, force=True)
    assert forced["changed"] and all(open(path, encoding="ascii").read() != contents[path] for path in first["files"])


def test_split_refuses_other_share_files_unless_forced(run_module, tmp_path, age_key):
    key = age_key[0]
    shares_dir = tmp_path / "shares"
    split(run_module, key, shares_dir)
    other_threshold = split(run_module, key, shares_dir, threshold=2)
    assert other_threshold["failed"] and "they are a 3-of-5 set, not 2-of-5" in other_threshold["msg"]
    other_key = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other_key)], check=True, capture_output=True)
    other_secret = split(run_module, other_key, shares_dir)
    assert other_secret["failed"] and "they reopen another secret" in other_secret["msg"]
    (shares_dir / "share-4-of-5.txt").unlink()
    before = {p.name: p.read_text() for p in shares_dir.iterdir()}
    for check_mode in (True, False):
        incomplete = split(run_module, key, shares_dir, check_mode=check_mode)
        assert incomplete["failed"] and "only 4 of the 5 share files exist" in incomplete["msg"] and "nothing was written" in incomplete["msg"]
    assert {p.name: p.read_text() for p in shares_dir.iterdir()} == before
    assert split(run_module, key, shares_dir, force=True)["changed"]
    assert len(list(shares_dir.iterdir())) == 5


def test_split_validates_its_counts(run_module, tmp_path, age_key):
    key = age_key[0]
    for threshold, shares in ((1, 3), (4, 3), (2, 256)):
        result = split(run_module, key, tmp_path / "shares", threshold=threshold, shares=shares)
        assert result["failed"] and "threshold must be at least 2" in result["msg"]
    assert not (tmp_path / "shares").exists()


def test_combine_four_runs_mode_and_content_drift(run_module, tmp_path, age_key):
    key, data, _secret_line = age_key
    split(run_module, key, tmp_path / "shares", threshold=2, shares=3)
    params = dict(share_files=[str(tmp_path / "shares" / f"share-{i}-of-3.txt") for i in (1, 2)], dest=str(tmp_path / "key.txt"))
    dest = tmp_path / "key.txt"
    check = run_module("shamir_combine", params, check_mode=True)
    assert check["changed"] and check["fingerprint"] == _shamir.fingerprint(data) and not dest.exists()
    first = run_module("shamir_combine", params)
    assert first["changed"] and dest.read_bytes() == data and mode_of(dest) == 0o400
    assert not run_module("shamir_combine", params, check_mode=True)["changed"]
    inode = os.stat(dest).st_ino
    assert not run_module("shamir_combine", params)["changed"] and os.stat(dest).st_ino == inode
    os.chmod(dest, 0o644)
    assert run_module("shamir_combine", params, check_mode=True)["changed"] and mode_of(dest) == 0o644
    assert run_module("shamir_combine", params)["changed"] and mode_of(dest) == 0o400 and os.stat(dest).st_ino == inode
    os.chmod(dest, 0o600)
    dest.write_bytes(b"another key\n")
    assert run_module("shamir_combine", params, check_mode=True)["changed"] and dest.read_bytes() == b"another key\n"
    replaced = run_module("shamir_combine", dict(params, mode="0440"))
    assert replaced["changed"] and dest.read_bytes() == data and mode_of(dest) == 0o440


def test_combine_refuses_a_missing_directory_and_a_bad_mode(run_module, tmp_path, age_key):
    split(run_module, age_key[0], tmp_path / "shares", threshold=2, shares=2)
    share_files = [str(tmp_path / "shares" / f"share-{i}-of-2.txt") for i in (1, 2)]
    missing = run_module("shamir_combine", dict(share_files=share_files, dest=str(tmp_path / "absent" / "key.txt")))
    assert missing["failed"] and "does not exist" in missing["msg"]
    bad_mode = run_module("shamir_combine", dict(share_files=share_files, dest=str(tmp_path / "key.txt"), mode="rw"))
    assert bad_mode["failed"] and "not an octal file mode" in bad_mode["msg"] and not (tmp_path / "key.txt").exists()


def test_nothing_leaks_through_ansible_playbook(ansible_play, tmp_path, age_key):
    key, data, secret_line = age_key
    shares_dir, dest = tmp_path / "shares", tmp_path / "reopened.txt"
    tasks = [
        {"name": "split", "runbooks.incident.shamir_split": {"secret": data.decode(), "threshold": 2, "shares": 3, "dest_dir": str(shares_dir)}},
        {"name": "combine", "runbooks.incident.shamir_combine": {"share_files": [str(shares_dir / "share-1-of-3.txt"), str(shares_dir / "share-3-of-3.txt")],
                                                                 "dest": str(dest)}},
    ]
    outputs = []
    # check (the split only: there are no shares to combine before it), run, check, run.
    for check, play_tasks in ((True, tasks[:1]), (False, tasks), (True, tasks), (False, tasks)):
        played = ansible_play(play_tasks, check=check, diff=True, verbosity=3)
        assert played.rc == 0, played.stdout + played.stderr
        outputs.append(played.stdout + played.stderr)
    assert played["split"]["changed"] is False and played["combine"]["changed"] is False
    lines = [share_line(shares_dir / f"share-{i}-of-3.txt") for i in (1, 2, 3)]
    retyped = ansible_play([{"name": "typed", "runbooks.incident.shamir_combine": {"shares": lines[1:], "dest": str(dest)}}], diff=True, verbosity=3)
    assert retyped.rc == 0 and retyped["typed"]["changed"] is False
    outputs.append(retyped.stdout + retyped.stderr)
    assert dest.read_bytes() == data
    for output in outputs:
        assert secret_line not in output and secret_line[15:35] not in output
        assert not any(line.split(":")[3] in output or line.split(":")[4][:40] in output for line in lines)
    assert key.read_bytes() == data


# ------------------------------------------------------------------------------------------------ hostile input
@pytest.mark.parametrize("mangle", [
    lambda line: line.replace(line.split(":")[3], "ÄÖÜ" + line.split(":")[3][3:]),  # in the share itself
    lambda line: line.replace(line.split(":")[4], line.split(":")[4][:-1] + "ẞ"),  # in the sealed secret
    lambda line: ":".join(line.split(":")[:2] + ["²"] + line.split(":")[3:]),  # a Unicode digit as the index
], ids=["umlauts", "sharp-s", "superscript"])
def test_a_share_with_characters_no_share_has_is_named_not_a_traceback(run_module, tmp_path, age_key, mangle):
    split(run_module, age_key[0], tmp_path / "shares", threshold=2, shares=2)
    lines = [share_line(tmp_path / "shares" / f"share-{i}-of-2.txt") for i in (1, 2)]
    result = run_module("shamir_combine", dict(shares=[mangle(lines[0]), lines[1]], dest=str(tmp_path / "key.txt")))
    assert result["failed"] and "share #1 given" in result["msg"] and "nothing was written" in result["msg"], result
    assert not (tmp_path / "key.txt").exists()


@pytest.mark.parametrize("mode", ["-1", "17777", "77777", True], ids=["negative", "too-large", "way-too-large", "bool"])
def test_combine_refuses_a_mode_that_is_not_a_file_mode(run_module, tmp_path, age_key, mode):
    split(run_module, age_key[0], tmp_path / "shares", threshold=2, shares=2)
    share_files = [str(tmp_path / "shares" / f"share-{i}-of-2.txt") for i in (1, 2)]
    result = run_module("shamir_combine", dict(share_files=share_files, dest=str(tmp_path / "key.txt"), mode=mode))
    assert result["failed"] and "file mode" in result["msg"] and not (tmp_path / "key.txt").exists(), result


def test_split_never_creates_its_directory_through_a_planted_symlink(run_module, tmp_path, age_key):
    link = planted_link(tmp_path, "link")
    elsewhere = tmp_path / "elsewhere"
    result = split(run_module, age_key[0], link / "shares")
    assert result["failed"] and "refusing to follow the symlink link" in result["msg"]
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_secret_file_that_is_not_a_regular_file_is_refused(run_module, tmp_path, age_key, kind):
    odd = tmp_path / "odd"
    if kind == "fifo":
        result = fed_fifo(odd)(lambda: split(run_module, odd, tmp_path / "shares"))
    else:
        odd.symlink_to(age_key[0])  # root would read, and split, whatever the link points to
        result = split(run_module, odd, tmp_path / "shares")
    assert result["failed"] and ("not a regular file" in result["msg"] or "symlink" in result["msg"]), result
    assert not (tmp_path / "shares").exists()


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_share_file_that_is_not_a_regular_file_is_refused(run_module, tmp_path, age_key, kind):
    split(run_module, age_key[0], tmp_path / "shares", threshold=2, shares=2)
    odd = tmp_path / "odd"
    params = dict(share_files=[str(odd), str(tmp_path / "shares" / "share-2-of-2.txt")], dest=str(tmp_path / "key.txt"))
    if kind == "fifo":
        result = fed_fifo(odd)(lambda: run_module("shamir_combine", params))
    else:
        odd.symlink_to(tmp_path / "shares" / "share-1-of-2.txt")
        result = run_module("shamir_combine", params)
    assert result["failed"] and ("not a regular file" in result["msg"] or "symlink" in result["msg"]), result
    assert not (tmp_path / "key.txt").exists()
