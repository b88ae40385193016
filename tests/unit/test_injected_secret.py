# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lookup('runbooks.incident.injected_secret', name): the secrets the collection's AWX credential types inject as
files (awx/credential_types.yml), read through ansible-playbook as a job would."""
from __future__ import annotations

import re
from pathlib import Path

from awxdata import definitions  # pylint: disable=import-error

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n"


def lookup(name):
    return {"name": "read", "ansible.builtin.set_fact": {"read": "{{ lookup('runbooks.incident.injected_secret', '%s') }}" % name}}


def test_the_file_the_credential_names_is_read_exactly(ansible_play, tmp_path):
    key = tmp_path / "age_key"
    key.write_text("# public key: age1xyz\n" + KEY)
    res = ansible_play([lookup("age_key")], env={"RUNBOOKS_AGE_KEY_FILE": str(key)})
    assert res.rc == 0, res.stdout + res.stderr
    assert res["read"]["ansible_facts"]["read"] == "# public key: age1xyz\n" + KEY  # the last newline kept (SSH keys need it)


def test_without_the_credential_the_secret_is_not_given(ansible_play, monkeypatch):
    monkeypatch.delenv("RUNBOOKS_AGE_KEY_FILE", raising=False)
    res = ansible_play([lookup("age_key")])
    assert res.rc == 0 and res["read"]["ansible_facts"]["read"] == "", res.stdout


def test_a_file_that_cannot_be_read_fails_naming_the_variable_not_the_content(ansible_play, tmp_path):
    res = ansible_play([lookup("tsig_secret")], env={"RUNBOOKS_TSIG_SECRET_FILE": str(tmp_path / "gone")})
    assert res.rc != 0
    assert "RUNBOOKS_TSIG_SECRET_FILE names %s, which cannot be read: No such file or directory" % (tmp_path / "gone") in res.stdout


def test_a_name_that_is_not_a_secret_s_is_refused(ansible_play):
    for name in ("../etc/passwd", "AGE_KEY", "age-key", ""):
        res = ansible_play([lookup(name)])
        assert res.rc != 0 and "is not a secret's name" in res.stdout, name


def test_every_file_a_credential_type_injects_has_a_name_the_lookup_reads():
    """RUNBOOKS_<NAME>_FILE of each injector is what lookup(..., '<name>') reads, and names the file it injects."""
    types = definitions()["controller_credential_types"]
    for kind in types:
        files = kind["injectors"]["file"]
        env = kind["injectors"]["env"]
        assert len(env) == len(files), kind["name"]
        for variable, value in env.items():
            assert re.fullmatch(r"RUNBOOKS_[A-Z][A-Z0-9_]*_FILE", variable), variable
            field = re.fullmatch(r"\{\{ tower\.filename\.(\w+) \}\}", value).group(1)
            assert "template." + field in files and field in {f["id"] for f in kind["inputs"]["fields"]}, (kind["name"], field)
            assert not [name for name in kind["injectors"] if name not in ("file", "env")], "extra_vars would show the secret"


def test_the_example_inventory_reads_every_injected_secret_and_nothing_else():
    """The secrets the example inventory reads from credentials are exactly those the credential types inject (the
    access token is read by its playbook)."""
    injected = {variable[len("RUNBOOKS_"):-len("_FILE")].lower() for kind in definitions()["controller_credential_types"]
                for variable in kind["injectors"]["env"]}
    read = set()
    for path in [REPO_ROOT / "inventories" / "example" / "group_vars" / "all.yml", REPO_ROOT / "playbooks" / "rotate_access_token.yml"]:
        read |= set(re.findall(r"lookup\('runbooks\.incident\.injected_secret', '(\w+)'\)", path.read_text()))
    assert read == injected
