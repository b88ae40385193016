# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role age_key through ansible-playbook on localhost, with a real age key split on paper shares
(shamir_split): the key is rebuilt on the host from share files on the controller or from share lines (an AWX
survey's password fields), 0400, its recipient published; a dry run predicts without writing, a re-run changes
nothing; too few shares, a share with a typo and two sources at once are refused with nothing written; neither the
key nor a share appears in the output, even at -vvv."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from conftest import require  # pylint: disable=import-error

require(shutil.which("age-keygen"), "age-keygen (Debian package age)")
ROLE = [{"name": "key", "ansible.builtin.include_role": {"name": "runbooks.incident.age_key"}},
        {"name": "recipient", "ansible.builtin.debug": {"msg": "recipient={{ age_key_recipient }} changed={{ age_key_changed }}"}}]


@pytest.fixture(name="shares")
def shares_fixture(tmp_path, run_module):
    """A real age key, its public key and a 2-of-3 split of it: the share files and their share lines."""
    key = tmp_path / "original.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    result = run_module("shamir_split", dict(secret_file=str(key), threshold=2, shares=3, dest_dir=str(tmp_path / "shares")))
    assert not result.get("failed"), result
    files = [tmp_path / "shares" / f"share-{i}-of-3.txt" for i in (1, 2, 3)]
    lines = [next(line for line in path.read_text().splitlines() if line.count(":") >= 4) for path in files]
    secret = next(line for line in key.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    return {"key": key, "public": public, "files": files, "lines": lines, "secret": secret}


def role_vars(tmp_path, **more):
    return {"age_key_file": str(tmp_path / "etc" / "age.key"), "age_key_group": "root", **more}


def assert_nothing_secret(output, shares):
    assert shares["secret"] not in output and shares["secret"][15:40] not in output
    assert not any(line.split(":", 3)[3][:40] in output for line in shares["lines"])


def test_the_key_is_rebuilt_from_share_files_in_four_runs(ansible_play, tmp_path, shares):
    (tmp_path / "etc").mkdir()
    dest = tmp_path / "etc" / "age.key"
    given = role_vars(tmp_path, age_key_share_files=[str(shares["files"][0]), str(shares["files"][2])])
    check = ansible_play(ROLE, check=True, extra_vars=given, verbosity=3)
    assert check.rc == 0, check.stdout[-3000:] + check.stderr
    assert check["runbooks.incident.age_key : Rebuild the age key from its paper shares"]["changed"] is True
    assert not dest.exists(), "a dry run writes no key"

    run = ansible_play(ROLE, extra_vars=given, verbosity=3)
    assert run.rc == 0, run.stdout[-3000:] + run.stderr
    assert dest.read_bytes() == shares["key"].read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o400 and dest.stat().st_uid == 0
    assert f"recipient={shares['public']} changed=True" in run.stdout

    for check_mode in (True, False):
        again = ansible_play(ROLE, check=check_mode, extra_vars=given, verbosity=3)
        assert again.rc == 0 and f"recipient={shares['public']} changed=False" in again.stdout, again.stdout[-3000:]
    for output in (check.stdout, run.stdout, again.stdout, check.stderr, run.stderr):
        assert_nothing_secret(output, shares)


def test_the_key_is_rebuilt_from_share_lines_typed_in(ansible_play, tmp_path, shares):
    (tmp_path / "etc").mkdir()
    run = ansible_play(ROLE, extra_vars=role_vars(tmp_path, age_key_shares=shares["lines"][1:]), verbosity=3)
    assert run.rc == 0, run.stdout[-3000:] + run.stderr
    assert (tmp_path / "etc" / "age.key").read_bytes() == shares["key"].read_bytes()
    assert_nothing_secret(run.stdout + run.stderr, shares)


def test_too_few_shares_or_a_typo_are_refused_and_write_nothing(ansible_play, tmp_path, shares):
    (tmp_path / "etc").mkdir()
    few = ansible_play(ROLE, extra_vars=role_vars(tmp_path, age_key_shares=shares["lines"][:1]), verbosity=3)
    assert few.rc != 0 and "nothing was written" in few.stdout, few.stdout[-3000:]
    line = shares["lines"][0]
    # A character of the checksum (hex, read in either case) changed to another digit: "A" for an "a" is no typo.
    typo = line[:-3] + ("0" if line[-3].lower() != "0" else "1") + line[-2:]
    wrong = ansible_play(ROLE, extra_vars=role_vars(tmp_path, age_key_shares=[typo, shares["lines"][1]]), verbosity=3)
    assert wrong.rc != 0 and "nothing was written" in wrong.stdout, wrong.stdout[-3000:]
    assert os.listdir(tmp_path / "etc") == []
    assert_nothing_secret(few.stdout + few.stderr + wrong.stdout + wrong.stderr, shares)


def test_a_key_and_shares_together_are_refused(ansible_play, tmp_path, shares):
    (tmp_path / "etc").mkdir()
    both = ansible_play(ROLE, extra_vars=role_vars(tmp_path, age_key_content=shares["key"].read_text(), age_key_shares=shares["lines"]))
    assert both.rc != 0 and "Both age_key_content and paper shares" in both.stdout
    assert os.listdir(tmp_path / "etc") == []
    assert_nothing_secret(both.stdout + both.stderr, shares)


@pytest.mark.parametrize("source", ["content", "shares"])
def test_a_different_key_on_the_host_is_not_replaced_unless_asked(ansible_play, tmp_path, shares, source):
    """The key given by mistake (another one) must not destroy the only key the host's secrets open."""
    (tmp_path / "etc").mkdir()
    dest = tmp_path / "etc" / "age.key"
    subprocess.run(["age-keygen", "-o", str(dest)], check=True, capture_output=True)
    os.chmod(dest, 0o400)
    before = dest.read_bytes()
    given = {"age_key_content": shares["key"].read_text()} if source == "content" else {"age_key_shares": shares["lines"][:2]}
    refused = ansible_play(ROLE, extra_vars=role_vars(tmp_path, **given), verbosity=3)
    assert refused.rc != 0 and "holds another age key" in refused.stdout and "Nothing was changed" in refused.stdout
    assert dest.read_bytes() == before
    assert_nothing_secret(refused.stdout + refused.stderr, shares)

    replaced = ansible_play(ROLE, extra_vars=role_vars(tmp_path, age_key_replace=True, **given))
    assert replaced.rc == 0, replaced.stdout[-3000:]
    assert dest.read_bytes() == shares["key"].read_bytes()
    # The same key again is no replacement: no age_key_replace needed.
    same = ansible_play(ROLE, extra_vars=role_vars(tmp_path, **given))
    assert same.rc == 0 and f"recipient={shares['public']} changed=False" in same.stdout, same.stdout[-3000:]
