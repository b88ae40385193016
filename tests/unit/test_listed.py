# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The listed filter: list inputs as the command line, vars files and AWX surveys send them, through ansible-playbook."""
from __future__ import annotations

import pytest


def listed(ansible_play, value, integers=False):
    res = ansible_play([{"name": "list", "ansible.builtin.set_fact": {
        "got": "{{ value | runbooks.incident.listed(integers=%s) }}" % ("true" if integers else "false")}}], extra_vars={"value": value})
    return res.rc, (res["list"].get("ansible_facts", {}).get("got") if res.rc == 0 else res.stdout)


@pytest.mark.parametrize("value, expected", [
    ("203.0.113.9", ["203.0.113.9"]),
    ("203.0.113.9, 198.51.100.7\n2001:db8::1", ["203.0.113.9", "198.51.100.7", "2001:db8::1"]),
    ("sessions,auth_secret,", ["sessions", "auth_secret"]),
    ([" sessions ", "", "tls"], ["sessions", "tls"]),
    ("", []),
    (None, []),  # what AWX sends for an optional survey field left blank
    ([], []),
])
def test_a_list_or_a_string_of_items_is_a_list(ansible_play, value, expected):
    assert listed(ansible_play, value) == (0, expected)


@pytest.mark.parametrize("value, expected", [("4242", [4242]), ("4242, 4243", [4242, 4243]), ([4242, "4243"], [4242, 4243]), (None, [])])
def test_whole_numbers(ansible_play, value, expected):
    assert listed(ansible_play, value, integers=True) == (0, expected)


@pytest.mark.parametrize("value", ["42a", "-1", "4.5", [True]])
def test_what_is_not_a_whole_number_is_refused_not_read_as_zero(ansible_play, value):
    rc, out = listed(ansible_play, value, integers=True)
    assert rc != 0 and "is not a whole number" in out, out


def test_a_mapping_is_refused(ansible_play):
    rc, out = listed(ansible_play, {"app": 1})
    assert rc != 0 and "is not a list, nor items separated by commas or spaces" in out
