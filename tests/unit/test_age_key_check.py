# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.age_key_check and _age_identity: real age-keygen keys, given whole or as this collection's paper
shares, against the recipients the service's secrets are encrypted to; typos, wrong keys, and nothing of a key or a
share in any result."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _age_identity, _shamir
from conftest import fed_fifo, require  # pylint: disable=import-error

require(shutil.which("age-keygen"), "age-keygen (Debian package age)")
require(_shamir.CRYPTO_IMPORT_ERROR is None, "pycryptodome")
require(_age_identity.CRYPTOGRAPHY_IMPORT_ERROR is None, "cryptography (ansible-core requires it)")

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
BECH32 = _age_identity.CHARSET
# An age public key nobody here holds the private key of (offsite_rekey's documentation sample).
OTHER_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


class AgeKey:
    """A key file written by the real age-keygen: its path, its content, its identity line and its recipient."""

    def __init__(self, path):
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        self.path = path
        self.text = path.read_text()
        self.identity = next(line for line in self.text.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
        self.recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(name="new_key")
def new_key_fixture(tmp_path):
    made = []

    def make():
        made.append(AgeKey(tmp_path / ("key-%d.txt" % len(made))))
        return made[-1]
    return make


def pieces(secret, size=10):
    """Every `size`-character window of `secret` (as written and lowercased): a leak of any part of it shows."""
    windows = {secret[start:start + size] for start in range(0, len(secret) - size + 1)}
    return windows | {window.lower() for window in windows}


def assert_leaks_nothing(result, *secrets, masked=False):
    """Neither a secret nor a part of one is anywhere in the result; no_log's masking (********) would hide a whole
    value that leaked, so its mark must not be there either (unless `masked`: a value the module masks on purpose)."""
    text = json.dumps(result)
    assert masked or "********" not in text, text
    for secret in secrets:
        leaked = [window for window in pieces(secret) if window in text]
        assert not leaked, (leaked[:3], text)


def secret_parts(key):
    """What of an age key must never be shown: its identity line without the public AGE-SECRET-KEY-1 type."""
    return [key.identity[len("AGE-SECRET-KEY-1"):]]


def share_parts(line):
    """What of a share line must never be shown: its share and sealed fields."""
    fields = line.split(":")
    return [fields[3], fields[4]]


def split(run_module, key, dest_dir, threshold=2, count=3):
    """This collection's split of the key file (shamir_split): the share files and their share lines."""
    result = run_module("shamir_split", dict(secret_file=str(key.path), threshold=threshold, shares=count, dest_dir=str(dest_dir)))
    assert not result.get("failed") and result["changed"], result
    files = [dest_dir / _shamir.file_name(index, count) for index in range(1, count + 1)]
    return files, [next(line for line in path.read_text().splitlines() if not line.startswith("#")) for path in files]


def with_typo(line):
    """`line` with one character of its share field replaced by another base32 character."""
    fields = line.split(":")
    replacement = B32[(B32.index(fields[3][5]) + 1) % len(B32)]
    fields[3] = fields[3][:5] + replacement + fields[3][6:]
    return ":".join(fields)


def check(run_module, check_mode=False, **params):
    return run_module("age_key_check", params, check_mode=check_mode)


# --- The module -------------------------------------------------------------------------------------------------


def test_random_keys_give_exactly_age_keygens_public_key(run_module, new_key):
    for _round in range(12):
        key = new_key()
        assert _age_identity.recipient_of(key.identity) == key.recipient
        result = check(run_module, key=key.text, recipients=[OTHER_RECIPIENT, key.recipient])
        assert not result.get("failed"), result
        assert result["changed"] is False and result["matches"] is True
        assert result["recipient"] == key.recipient and result["key_recipients"] == [key.recipient]
        assert_leaks_nothing(result, *secret_parts(key))


def test_a_key_file_with_comments_blank_lines_and_crlf(run_module, new_key):
    key = new_key()
    assert key.text.startswith("# created: ")  # as age-keygen writes it: comments, then the identity
    messy = "\ufeff\n\n  # the service's key, kept offline\r\n" + key.text.replace("\n", "\r\n") + "\n   \n\t" + key.identity + "  \n\n"
    result = check(run_module, key=messy, recipients=[key.recipient])
    assert not result.get("failed") and result["matches"] and result["recipient"] == key.recipient, result
    assert result["key_recipients"] == [key.recipient, key.recipient]  # both identity lines, nothing else
    assert_leaks_nothing(result, *secret_parts(key))


def test_two_identities_the_second_matches(run_module, new_key):
    first, second = new_key(), new_key()
    result = check(run_module, key=first.text + "\n" + second.text, recipients=[second.recipient])
    assert not result.get("failed") and result["matches"], result
    assert result["recipient"] == second.recipient
    assert result["key_recipients"] == [first.recipient, second.recipient]
    assert_leaks_nothing(result, *secret_parts(first), *secret_parts(second))


def test_a_wrong_key_fails_naming_both_public_keys_and_nothing_of_the_key(run_module, new_key):
    service, wrong = new_key(), new_key()
    result = check(run_module, key=wrong.text, recipients=[service.recipient])
    assert result["failed"] and result["matches"] is False and result["changed"] is False, result
    assert result["msg"].startswith(
        "The age key given is not the service's: its public key is %s, the service's secrets and backups are encrypted "
        "to %s. Nothing was changed. " % (wrong.recipient, service.recipient)), result["msg"]
    assert "another service's key" in result["msg"]
    assert result["recipient"] == wrong.recipient and result["key_recipients"] == [wrong.recipient]
    assert_leaks_nothing(result, *secret_parts(wrong))
    assert wrong.text not in json.dumps(result) and wrong.identity not in json.dumps(result)


def test_a_wrong_key_with_two_identities_names_them_all(run_module, new_key):
    service, one, two = new_key(), new_key(), new_key()
    result = check(run_module, key=one.identity + "\n" + two.identity + "\n", recipients=[service.recipient, OTHER_RECIPIENT])
    assert result["failed"], result
    assert "its public keys are %s, %s, the service's secrets and backups are encrypted to %s, %s." % (
        one.recipient, two.recipient, service.recipient, OTHER_RECIPIENT) in result["msg"]
    assert_leaks_nothing(result, *secret_parts(one), *secret_parts(two))


@pytest.mark.parametrize("position", [0, 17, 40, -1])
def test_a_corrupt_key_fails_with_its_checksum_and_is_not_echoed(run_module, new_key, position):
    key = new_key()
    data = key.identity[len("AGE-SECRET-KEY-1"):]
    index = position % len(data)
    changed_char = BECH32.upper()[(BECH32.upper().index(data[index]) + 7) % 32]
    corrupt = "AGE-SECRET-KEY-1" + data[:index] + changed_char + data[index + 1:]
    result = check(run_module, key=key.text.replace(key.identity, corrupt), recipients=[key.recipient])
    assert result["failed"], result
    assert result["msg"] == ("the key given is not an age private key: line 3 of the key: the age key: checksum mismatch, "
                             "it was mistyped or damaged; nothing was changed"), result["msg"]
    assert "recipient" not in result and "matches" not in result
    assert_leaks_nothing(result, *secret_parts(key), corrupt[len("AGE-SECRET-KEY-1"):])


def test_a_public_key_or_garbage_given_as_the_key_is_refused_without_echo(run_module, new_key):
    key = new_key()
    public = check(run_module, key=key.recipient, recipients=[key.recipient])
    assert public["failed"] and "is of type age1... (an age public key), not AGE-SECRET-KEY-1..." in public["msg"], public
    lowered = check(run_module, key=key.identity.lower(), recipients=[key.recipient])
    assert lowered["failed"] and "not in upper case as age writes it" in lowered["msg"], lowered
    assert_leaks_nothing(lowered, *secret_parts(key))
    garbage = "correct horse battery staple"
    other = check(run_module, key=garbage, recipients=[key.recipient])
    assert other["failed"] and "line 1 of the key" in other["msg"], other
    assert_leaks_nothing(other, garbage)
    empty = check(run_module, key="# only a comment\n\n", recipients=[key.recipient])
    assert empty["failed"] and "holds no identity" in empty["msg"], empty


def test_shares_from_this_collections_split_combine_and_match(run_module, tmp_path, new_key):
    key = new_key()
    files, lines = split(run_module, key, tmp_path / "shares")
    for params in (dict(shares=lines[:2]), dict(shares=[files[2].read_text(), lines[0]]), dict(share_files=[str(files[0]), str(files[2])]),
                   dict(shares=[lines[1]], share_files=[str(files[2])]), dict(shares=lines)):
        result = check(run_module, recipients=[key.recipient], **params)
        assert not result.get("failed"), (params, result)
        assert result["matches"] and result["recipient"] == key.recipient and result["changed"] is False
        assert_leaks_nothing(result, *secret_parts(key), *[part for line in lines for part in share_parts(line)])


def test_shares_of_another_key_do_not_match(run_module, tmp_path, new_key):
    service, other = new_key(), new_key()
    _files, lines = split(run_module, other, tmp_path / "other-shares")
    result = check(run_module, shares=lines[:2], recipients=[service.recipient])
    assert result["failed"] and result["matches"] is False, result
    assert result["msg"].startswith(
        "The age key rebuilt from the shares is not the service's: its public key is %s, the service's secrets and backups "
        "are encrypted to %s. Nothing was changed. Were they shares of another split" % (other.recipient, service.recipient)), result["msg"]
    assert_leaks_nothing(result, *secret_parts(other), *[part for line in lines for part in share_parts(line)])


def test_a_share_with_a_typo_is_named_and_not_shown(run_module, tmp_path, new_key):
    key = new_key()
    files, lines = split(run_module, key, tmp_path / "shares")
    typo = with_typo(lines[1])
    result = check(run_module, shares=[lines[0], typo], recipients=[key.recipient])
    assert result["failed"], result
    assert result["msg"] == ("could not reopen the age key from its shares: share #2 given (index 2): checksum mismatch, the "
                             "share was mistyped or damaged; nothing was changed"), result["msg"]
    assert_leaks_nothing(result, *secret_parts(key), *share_parts(lines[0]), *share_parts(typo))
    (tmp_path / "typo.txt").write_text(typo + "\n")
    from_file = check(run_module, share_files=[str(files[0]), str(tmp_path / "typo.txt")], recipients=[key.recipient])
    assert from_file["failed"] and "share file %s (index 2): checksum mismatch" % (tmp_path / "typo.txt") in from_file["msg"], from_file
    assert_leaks_nothing(from_file, *secret_parts(key), *share_parts(lines[0]), *share_parts(typo))


def test_too_few_shares_and_shares_of_two_splits_are_refused(run_module, tmp_path, new_key):
    key = new_key()
    _files, lines = split(run_module, key, tmp_path / "a")
    _files, others = split(run_module, key, tmp_path / "b")
    few = check(run_module, shares=lines[:1], recipients=[key.recipient])
    assert few["failed"] and "needs 2 shares to reopen the secret, got 1" in few["msg"], few
    mixed = check(run_module, shares=[lines[0], others[1]], recipients=[key.recipient])
    assert mixed["failed"] and "the shares come from different splits" in mixed["msg"], mixed
    for result in (few, mixed):
        assert_leaks_nothing(result, *secret_parts(key), *share_parts(lines[0]), *share_parts(others[1]))


def test_shares_of_a_secret_that_is_no_age_key(run_module, tmp_path, new_key):
    key = new_key()
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("the wifi password is hunter2\n")
    result = run_module("shamir_split", dict(secret_file=str(not_a_key), threshold=2, shares=2, dest_dir=str(tmp_path / "s")))
    assert not result.get("failed"), result
    checked = check(run_module, share_files=result["files"], recipients=[key.recipient])
    assert checked["failed"] and checked["msg"].startswith("the secret reopened from the shares is not an age private key: line 1"), checked
    assert "hunter2" not in json.dumps(checked)


def test_a_share_file_that_is_a_fifo_or_missing_is_refused(run_module, tmp_path, new_key):
    key = new_key()
    files, _lines = split(run_module, key, tmp_path / "shares")
    missing = check(run_module, share_files=[str(files[0]), str(tmp_path / "absent.txt")], recipients=[key.recipient])
    assert missing["failed"] and "could not read share file %s" % (tmp_path / "absent.txt") in missing["msg"], missing
    fifo = tmp_path / "fifo"
    result = fed_fifo(fifo, files[1].read_text())(
        lambda: check(run_module, share_files=[str(files[0]), str(fifo)], recipients=[key.recipient]))
    assert result["failed"] and "could not read share file %s" % fifo in result["msg"], result


def test_key_and_shares_together_or_neither_are_refused(run_module, tmp_path, new_key):
    key = new_key()
    files, lines = split(run_module, key, tmp_path / "shares")
    both = check(run_module, key=key.text, shares=lines[:2], recipients=[key.recipient])
    assert both["failed"] and both["msg"] == (
        "give the age key one way: key (the key file's content), or its paper shares in shares and/or share_files "
        "(key and shares given); nothing was changed"), both
    with_files = check(run_module, key=key.text, share_files=[str(files[0])], recipients=[key.recipient])
    assert with_files["failed"] and "(key and share_files given)" in with_files["msg"], with_files
    neither = check(run_module, recipients=[key.recipient])
    assert neither["failed"] and neither["msg"] == (
        "give the age key one way: key (the key file's content), or its paper shares in shares and/or share_files "
        "(none of them is given); nothing was changed"), neither
    # A playbook passes the unused sources' defaults: empty ones are not a source.
    empty = check(run_module, key="", shares=[], share_files=[], recipients=[key.recipient])
    assert empty["failed"] and "(none of them is given)" in empty["msg"], empty
    only_key = check(run_module, key=key.text, shares=[], share_files=[], recipients=[key.recipient])
    assert not only_key.get("failed") and only_key["matches"], only_key
    only_shares = check(run_module, key="", shares=lines[:2], recipients=[key.recipient])
    assert not only_shares.get("failed") and only_shares["matches"], only_shares
    for result in (both, with_files, neither, empty, only_key, only_shares):
        assert_leaks_nothing(result, *secret_parts(key), *[part for line in lines for part in share_parts(line)])


def test_check_mode_gives_the_same_answer(run_module, tmp_path, new_key):
    key, wrong = new_key(), new_key()
    _files, lines = split(run_module, key, tmp_path / "shares")
    for params in (dict(key=key.text, recipients=[key.recipient]), dict(key=wrong.text, recipients=[key.recipient]),
                   dict(shares=lines[:2], recipients=[key.recipient]), dict(shares=[lines[0], with_typo(lines[1])], recipients=[key.recipient]),
                   dict(recipients=[key.recipient])):
        normal, checked = check(run_module, **params), check(run_module, check_mode=True, **params)
        for result in (normal, checked):
            result.pop("invocation", None)
        assert normal == checked, params.keys()
        assert normal["changed"] is False


def test_recipients_are_checked_and_may_be_comma_separated(run_module, new_key):
    key = new_key()
    sops_style = check(run_module, key=key.text, recipients=["%s, %s" % (OTHER_RECIPIENT, key.recipient)])
    assert not sops_style.get("failed") and sops_style["recipient"] == key.recipient, sops_style
    bad = key.recipient[:-1] + BECH32[(BECH32.index(key.recipient[-1]) + 1) % 32]
    mistyped = check(run_module, key=key.text, recipients=[OTHER_RECIPIENT, bad])
    assert mistyped["failed"] and mistyped["msg"] == (
        "recipients (element 2): recipient %s: checksum mismatch, it was mistyped or damaged; nothing was changed" % bad), mistyped
    upper = check(run_module, key=key.text, recipients=[key.recipient.upper()])
    assert upper["failed"] and "is not in lower case as age writes it" in upper["msg"], upper
    private = check(run_module, key=key.text, recipients=[key.identity])
    assert private["failed"] and "a recipient is an age PRIVATE key" in private["msg"], private
    # Not even in the invocation's arguments, where Ansible would show a recipient as given.
    assert_leaks_nothing(private, *secret_parts(key), masked=True)
    assert private["invocation"]["module_args"]["recipients"] == ["VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"], private
    ssh = check(run_module, key=key.text, recipients=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk user@host"])
    assert ssh["failed"] and "SSH public key" in ssh["msg"], ssh
    other = check(run_module, key=key.text, recipients=["hunter2-not-a-key"])
    assert other["failed"] and "hunter2" not in other["msg"] and "is not an age public key" in other["msg"], other
    empty = check(run_module, key=key.text, recipients=[])
    assert empty["failed"] and empty["msg"].startswith("recipients is empty"), empty
    blank = check(run_module, key=key.text, recipients=[" ", ","])
    assert blank["failed"] and blank["msg"].startswith("recipients is empty"), blank


def test_a_nul_byte_is_refused_without_echo(run_module, new_key):
    key = new_key()
    result = check(run_module, key=key.text + "\0", recipients=[key.recipient])
    assert result["failed"] and "option key holds a NUL byte" in result["msg"], result
    assert_leaks_nothing(result, *secret_parts(key))


# --- _age_identity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("valid", ["A12UEL5L", "a12uel5l",
                                   "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
                                   "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
                                   "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
                                   "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w", "?1ezyfcl"])
def test_bech32_accepts_bip173s_valid_strings(valid):
    hrp, _data = _age_identity.bech32_decode(valid, "the string")
    assert hrp == valid[:valid.rfind("1")].lower()


@pytest.mark.parametrize("invalid, reason", [
    ("\x201nwldj5", "holds a character that no age key has"),
    ("\x7f1axkwrx", "holds a character that no age key has"),
    ("pzry9x0s0muk", "is not a bech32 string"),
    ("1pzry9x0s0muk", "is not a bech32 string"),
    ("x1b4n0q5v", "outside the bech32 alphabet"),
    ("li1dgmt3", "is not a bech32 string"),
    ("A1G7SGD8", "checksum mismatch"),
    ("10a06t8", "is not a bech32 string"),
    ("1qzzfhee", "is not a bech32 string"),
    ("A12uEL5L", "mixes upper and lower case"),
    # bech32m's checksum of the same data is not bech32's: age uses bech32.
    ("a1lqfn3a", "checksum mismatch"),
])
def test_bech32_refuses_bip173s_invalid_strings(invalid, reason):
    with pytest.raises(_age_identity.IdentityError, match=reason):
        _age_identity.bech32_decode(invalid, "the string")


def test_bech32_round_trip_and_padding():
    for data in (b"", b"\x00", bytes(range(32)), b"\xff" * 33):
        assert _age_identity.bech32_decode(_age_identity.bech32_encode("age", data), "x") == ("age", data)
    # 32 bytes are 52 five-bit groups and 4 bits of padding: a non-zero padding is refused.
    values = [1] * 52
    polymod = _age_identity._polymod(_age_identity._hrp_expand("age") + values + [0] * 6) ^ 1  # pylint: disable=protected-access
    text = "age1" + "".join(BECH32[v] for v in values + [(polymod >> 5 * (5 - i)) & 31 for i in range(6)])
    with pytest.raises(_age_identity.IdentityError, match="bad padding"):
        _age_identity.bech32_decode(text, "x")


def identity_of(data, hrp=_age_identity.IDENTITY_HRP):
    return _age_identity.bech32_encode(hrp, data).upper()


def test_recipient_of_refuses_wrong_type_length_case_and_checksum(new_key):
    key = new_key()
    scalar = _age_identity.bech32_decode(key.identity, "k")[1]
    assert identity_of(scalar) == key.identity
    cases = [
        (identity_of(scalar[:31]), "holds 31 bytes, not the 32 of an X25519 key"),
        (identity_of(scalar + b"\x00"), "holds 33 bytes, not the 32 of an X25519 key"),
        (identity_of(scalar, "age-plugin-yubikey-"), "is of type AGE-PLUGIN-... (a plugin's identity"),
        (identity_of(scalar, "age-secret-key"), "is of type another one, not AGE-SECRET-KEY-1..."),
        (key.recipient, "is of type age1... (an age public key), not AGE-SECRET-KEY-1... (an age private key)"),
        (key.identity.lower(), "is not in upper case as age writes it"),
        (key.identity[:20] + key.identity[20:].lower(), "mixes upper and lower case"),
        (key.identity[:-1] + ("Q" if key.identity[-1] != "Q" else "P"), "checksum mismatch"),
        (key.identity[:30] + key.identity[31] + key.identity[30] + key.identity[32:], "checksum mismatch"),
        (key.identity[:30] + "O" + key.identity[31:], "outside the bech32 alphabet"),
        (key.identity[:30] + " " + key.identity[30:], "holds a character that no age key has"),
        ("AGE-SECRET-KEY-", "is not a bech32 string"),
        ("", "is not a bech32 string"),
    ]
    for identity, reason in cases:
        if identity == key.identity:
            continue  # a transposition of two equal characters
        with pytest.raises(_age_identity.IdentityError, match=re.escape(reason)) as caught:
            _age_identity.recipient_of(identity)
        for window in pieces(key.identity[len("AGE-SECRET-KEY-1"):]):
            assert window not in str(caught.value), (identity, str(caught.value))
    # Surrounding whitespace is no part of a key.
    assert _age_identity.recipient_of("  %s\n" % key.identity) == key.recipient


def test_recipients_of_key(new_key):
    one, two = new_key(), new_key()
    text = "# a comment\n\n %s \n#%s\n%s\n" % (one.identity, "commented-out", two.identity)
    assert _age_identity.recipients_of_key(text) == [one.recipient, two.recipient]
    for empty in ("", "\n\n", "# just a comment\n  # another\n"):
        with pytest.raises(_age_identity.IdentityError, match="holds no identity"):
            _age_identity.recipients_of_key(empty)
    with pytest.raises(_age_identity.IdentityError, match=r"^line 5 of the key: the age key: checksum mismatch"):
        _age_identity.recipients_of_key(text.replace(two.identity, two.identity[:-1] + ("Q" if two.identity[-1] != "Q" else "P")))
    with pytest.raises(_age_identity.IdentityError, match="not text"):
        _age_identity.recipients_of_key(b"AGE-SECRET-KEY-1")


def test_check_recipient(new_key):
    key = new_key()
    assert _age_identity.check_recipient(" %s\n" % key.recipient) == key.recipient
    assert _age_identity.check_recipient(OTHER_RECIPIENT) == OTHER_RECIPIENT
    scalar_like = _age_identity.bech32_decode(key.recipient, "r")[1]
    cases = [
        (key.recipient.upper(), "recipient %s is not in lower case as age writes it" % key.recipient.upper()),
        (key.recipient[:-1] + ("q" if key.recipient[-1] != "q" else "p"), "checksum mismatch"),
        (_age_identity.bech32_encode("age", scalar_like[:31]), "holds 31 bytes"),
        (_age_identity.bech32_encode("age", scalar_like + b"\x01"), "holds 33 bytes"),
        (key.identity, "a recipient is an age PRIVATE key"),
        (key.identity.lower(), "a recipient is an age PRIVATE key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk", "SSH public key"),
        ("age1", "is not a bech32 string"),
        ("hunter2", "a recipient is not an age public key"),
    ]
    for recipient, reason in cases:
        with pytest.raises(_age_identity.IdentityError) as caught:
            _age_identity.check_recipient(recipient)
        assert reason in str(caught.value), (recipient, str(caught.value))
        assert "hunter2" not in str(caught.value)
        for window in pieces(key.identity[len("AGE-SECRET-KEY-1"):]):
            assert window not in str(caught.value)
