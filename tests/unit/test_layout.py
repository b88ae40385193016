# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service's layout is set in one place: _layout and the service_layout lookup derive what is not set, every role's
defaults follow a layout set in the inventory, and no role file names a service path of its own."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.runbooks.incident.plugins.module_utils import _layout

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES = REPO_ROOT / "roles"
LOOKUP = re.compile(r"lookup\('runbooks\.incident\.service_layout', '(\w+)'\)")
LOOKUP_ONLY = re.compile(r"\{\{ lookup\('runbooks\.incident\.service_layout', '(\w+)'\) \}\}")
# The default layout's own values, which a role must never spell out (it would not follow the inventory's).
DEFAULT_MARKERS = ("/opt/whatsapp-mcp", "/etc/whatsapp-mcp", "/var/lib/whatsapp-mcp", "whatsapp-mcp.service",
                   "whatsapp-mcp-secrets", "127.0.0.1/health", "wa_mcp", "/run/secrets", "ops/secrets/secrets.enc.yaml")
ELSEWHERE = {"service": "acme-chat", "project_dir": "/srv/acme/app", "config_dir": "/srv/acme/etc", "data_dir": "/srv/acme/data",
             "secrets_dir": "/run/acme-secrets", "secrets_file": "deploy/secrets.sops.yaml", "health_url": "http://127.0.0.1:8080/healthz",
             "domain": "chat.acme.test", "app_service": "api", "db_service": "db", "db": "acme", "db_user": "acme_user",
             "acme_webroot": "/srv/acme/acme-challenge"}


def test_names_left_out_are_derived_from_the_ones_set():
    layout = _layout.resolve({"data_dir": "/srv/wa", "service": "chat"})
    assert layout["backup_dir"] == "/srv/wa/backups" and layout["media_dir"] == "/srv/wa/media"
    assert layout["audit_archive_dir"] == "/srv/wa/audit-archive"
    assert layout["project_dir"] == "/opt/chat" and layout["config_dir"] == "/etc/chat" and layout["age_key_file"] == "/etc/chat/age.key"
    assert layout["service_unit"] == "chat.service" and layout["secrets_unit"] == "chat-secrets.service"
    assert layout["user"] == "chat" and layout["secrets_group"] == "chat-secrets"
    assert layout["sops_file"] == "/opt/chat/ops/secrets/secrets.enc.yaml"
    assert _layout.resolve({"secrets_file": "/etc/chat/secrets.yaml"})["sops_file"] == "/etc/chat/secrets.yaml"
    assert _layout.resolve({"backup_dir": "/backups/"})["backup_dir"] == "/backups"  # the same directory either way
    assert _layout.resolve({}) == {name: _layout.resolve({})[name] for name in _layout.LAYOUT}


def test_the_off_host_prefix_is_the_services_identity_not_a_hosts_name():
    assert _layout.resolve({})["offsite_prefix"] == "whatsapp-mcp/wa.example.com/"
    assert _layout.resolve({"service": "chat", "domain": "chat.example.org"})["offsite_prefix"] == "chat/chat.example.org/"
    assert _layout.resolve({"offsite_prefix": "old-host"})["offsite_prefix"] == "old-host/"  # an old host's prefix, as shipped before


@pytest.mark.parametrize("given, message", [
    ({"data_dir": "var/lib/wa"}, "whatsapp_mcp_data_dir must be an absolute path"),
    ({"backup_dir": "/srv/wa/../../etc"}, "whatsapp_mcp_backup_dir must be a path without '..'"),
    ({"secrets_file": "../outside.yaml"}, "whatsapp_mcp_secrets_file must be a path without '..'"),
    ({"service": "wa/mcp"}, "whatsapp_mcp_service must be a plain name"),
    ({"service": "wa mcp"}, "whatsapp_mcp_service must be a plain name"),
    ({"db": "wa; DROP TABLE x"}, "whatsapp_mcp_db must be a plain PostgreSQL name"),
    ({"health_url": "file:///etc/passwd"}, "whatsapp_mcp_health_url must be an http:// or https:// URL"),
    ({"sops_file": "/etc/x.yaml"}, "not a name of the service's layout: whatsapp_mcp_sops_file"),
    ({"projectdir": "/opt/x"}, "not a name of the service's layout: whatsapp_mcp_projectdir"),
    ({"user": ""}, "whatsapp_mcp_user must be a non-empty string"),
    ({"offsite_prefix": "../other-service/"}, "whatsapp_mcp_offsite_prefix must be a key prefix of plain names"),
    ({"offsite_prefix": "/abs/"}, "whatsapp_mcp_offsite_prefix must be a key prefix of plain names"),
    ({"offsite_prefix": "a//b/"}, "whatsapp_mcp_offsite_prefix must be a key prefix of plain names"),
    ({"offsite_prefix": "a/./b/"}, "whatsapp_mcp_offsite_prefix must be a key prefix of plain names"),
    ({"offsite_prefix": "a b/"}, "whatsapp_mcp_offsite_prefix must be a key prefix of plain names"),
])
def test_a_value_the_layout_cannot_use_is_refused_naming_its_variable(given, message):
    with pytest.raises(_layout.LayoutError, match=re.escape(message)):
        _layout.resolve(given)


def test_the_lookup_reads_the_inventory_and_refuses_a_bad_value(ansible_play):
    tasks = [{"name": "layout", "ansible.builtin.set_fact": {"layout": "{{ query('runbooks.incident.service_layout') | first }}"}},
             {"name": "two names", "ansible.builtin.set_fact": {
                 "two": "{{ query('runbooks.incident.service_layout', 'backup_dir', 'service_unit') }}"}}]
    result = ansible_play(tasks, extra_vars={"whatsapp_mcp_data_dir": "/srv/wa", "whatsapp_mcp_service": "chat"})
    assert result.rc == 0, result.stdout[-2000:] + result.stderr
    assert result["layout"]["ansible_facts"]["layout"] == _layout.resolve({"data_dir": "/srv/wa", "service": "chat"})
    assert result["two names"]["ansible_facts"]["two"] == ["/srv/wa/backups", "chat.service"]

    templated = ansible_play(tasks[:1], extra_vars={"base": "/srv/base", "whatsapp_mcp_data_dir": "{{ base }}/data"})
    assert templated["layout"]["ansible_facts"]["layout"]["media_dir"] == "/srv/base/data/media"  # inventory templates work

    bad = ansible_play(tasks[:1], extra_vars={"whatsapp_mcp_data_dir": "relative/data"})
    assert bad.rc != 0 and "whatsapp_mcp_data_dir must be an absolute path: 'relative/data'" in bad.stdout
    unknown = ansible_play([{"name": "x", "ansible.builtin.debug": {"msg": "{{ lookup('runbooks.incident.service_layout', 'datadir') }}"}}])
    assert unknown.rc != 0 and "not a name of the service's layout: datadir" in unknown.stdout


def test_the_lookup_reads_another_hosts_layout_when_asked(ansible_play, tmp_path):
    """A drill on a scratch host restores a production host's backups: their prefix is the production host's."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "localhost": {"ansible_connection": "local"},
        "prod": {"whatsapp_mcp_domain": "chat.example.org", "whatsapp_mcp_service": "{{ service_name }}", "service_name": "chat"}}}}))
    tasks = [{"name": "prefix", "ansible.builtin.set_fact": {
        "own": "{{ lookup('runbooks.incident.service_layout', 'offsite_prefix') }}",
        "prod": "{{ lookup('runbooks.incident.service_layout', 'offsite_prefix', host='prod') }}"}}]
    result = ansible_play(tasks, inventory=str(inventory))
    assert result.rc == 0, result.stdout[-2000:] + result.stderr
    assert result["prefix"]["ansible_facts"] == {"own": "whatsapp-mcp/wa.example.com/", "prod": "chat/chat.example.org/"}
    missing = ansible_play([{"name": "x", "ansible.builtin.debug": {
        "msg": "{{ lookup('runbooks.incident.service_layout', 'offsite_prefix', host='gone') }}"}}], inventory=str(inventory))
    assert missing.rc != 0 and "service_layout: gone is not a host of the inventory" in missing.stdout


def role_defaults():
    """{role: its defaults}, every role that has any."""
    return {path.parts[-3]: yaml.safe_load(path.read_text()) or {} for path in sorted(ROLES.glob("*/defaults/main.yml"))}


def layout_derived(defaults):
    """{key: the layout name it is, or None} of the defaults that come from the layout: the lookup itself (a name),
    a value built on it, or a value built on another such default of the same role (None)."""
    derived = {}
    for key, value in defaults.items():
        items = value if isinstance(value, list) else [value]
        whole = LOOKUP_ONLY.fullmatch(items[0]) if len(items) == 1 and isinstance(items[0], str) else None
        if whole:
            derived[key] = whole.group(1)
        elif LOOKUP.search(str(value)):
            derived[key] = None
    grew = True
    while grew:
        grew = False
        for key, value in defaults.items():
            if key not in derived and any(re.search(r"\b%s\b" % re.escape(name), str(value)) for name in derived):
                derived[key] = None
                grew = True
    return derived


def test_every_roles_defaults_follow_a_layout_set_once_in_the_inventory(ansible_play):
    tasks, expected = [], {}
    for role, defaults in role_defaults().items():
        derived = layout_derived(defaults)
        if not derived:
            continue
        tasks.append({"name": "defaults of " + role, "ansible.builtin.include_vars": {"file": str(ROLES / role / "defaults" / "main.yml")}})
        expected.update(derived)
    names = sorted(expected)
    tasks.append({"name": "effective", "ansible.builtin.set_fact": {"effective": "{{ dict(%r | zip(query('ansible.builtin.vars', *%r))) }}" % (names, names)}})
    result = ansible_play(tasks, extra_vars={_layout.PREFIX + name: value for name, value in ELSEWHERE.items()})
    assert result.rc == 0, result.stdout[-3000:] + result.stderr
    effective = result["effective"]["ansible_facts"]["effective"]
    layout = _layout.resolve(ELSEWHERE)
    assert len(effective) > 60  # every role that acts on the service
    for key, value in effective.items():
        shown = yaml.safe_dump(value)
        assert not any(marker in shown for marker in DEFAULT_MARKERS + ("whatsapp-mcp",)), (key, value)
        if expected[key]:
            assert value in (layout[expected[key]], [layout[expected[key]]]), (key, value, expected[key])


def role_files():
    """What roles and playbooks run: tasks, handlers, vars, defaults and templates, and the playbooks."""
    for pattern in ("*/tasks/*.yml", "*/handlers/*.yml", "*/vars/*.yml", "*/defaults/*.yml", "*/templates/*"):
        yield from ROLES.glob(pattern)
    yield from (REPO_ROOT / "playbooks").glob("*.yml")


def test_no_role_or_playbook_spells_out_a_service_path_or_name():
    found = []
    for path in role_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".yml" else line
            found += ["%s:%d: %s" % (path.relative_to(REPO_ROOT), number, marker) for marker in DEFAULT_MARKERS if marker in code]
    assert not found, "\n".join(found)


def test_the_documented_layout_is_the_layout():
    """whatsapp_mcp's argument spec documents every name an operator may set, with its default (role README and
    ansible-doc read it)."""
    spec = yaml.safe_load((ROLES / "whatsapp_mcp" / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = _layout.resolve({})
    documented = {key[len(_layout.PREFIX):]: option.get("default") for key, option in spec.items()
                  if key[len(_layout.PREFIX):] in _layout.LAYOUT}
    assert documented == {name: defaults[name] for name in _layout.settable()}
