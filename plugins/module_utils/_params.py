# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by the collection's modules (documented in the matching doc fragments).
PRIVATE to the collection: no compatibility promise."""
from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule


def postgres_argument_spec():
    """Options of doc fragment runbooks.incident.postgres."""
    return dict(
        login_user=dict(type="str", default="wa"),
        login_password=dict(type="str", no_log=True),
        login_host=dict(type="str"),
        login_port=dict(type="int", default=5432),
        login_unix_socket=dict(type="str"),
        compose_project_dir=dict(type="path"),
        compose_service=dict(type="str", default="postgres"),
        maintenance_db=dict(type="str", default="postgres"),
        pg_bin_dir=dict(type="path"),
    )


POSTGRES_MUTUALLY_EXCLUSIVE = [("compose_project_dir", "login_host"), ("compose_project_dir", "login_unix_socket")]


def postgres_module(options, mutually_exclusive=(), **kwargs):
    """The AnsibleModule of a module that takes the postgres options and its own `options` (argument spec entries,
    after the postgres ones), with check mode. `mutually_exclusive` adds to POSTGRES_MUTUALLY_EXCLUSIVE; the other
    keyword arguments (required_if, required_by, ...) go to AnsibleModule as they are. A string option holding a NUL
    byte fails the module (refuse_nul)."""
    argument_spec = postgres_argument_spec()
    argument_spec.update(options)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=POSTGRES_MUTUALLY_EXCLUSIVE + list(mutually_exclusive), **kwargs)
    refuse_nul(module)
    return module


# A role's connection variables, `<prefix>_<suffix>` (lookup runbooks.incident.postgres_connection), by option.
CONNECTION_VARIABLES = dict(compose_project_dir="project_dir", compose_service="compose_service", login_user="login_user",
                            login_password="login_password", login_host="login_host", login_port="login_port")


def postgres_connection(prefix, variables):
    """The connection options of a role whose variables are `<prefix>_project_dir`, `<prefix>_login_user`, ...
    (`variables` maps variable names to their values). A variable not defined or empty is left out, so a role that
    empties its project directory and names a host reaches the server with libpq. Raises ValueError naming the
    variable for a port that is not one, or a compose project and a server host both set. No value is shown."""
    options = {}
    for option, suffix in CONNECTION_VARIABLES.items():
        value = variables.get("%s_%s" % (prefix, suffix))
        if value is not None and value != "":
            options[option] = value
    if "login_port" in options:
        port = options["login_port"]
        if isinstance(port, bool) or not str(port).strip().isdigit() or not 0 < int(port) < 65536:
            raise ValueError("%s_login_port is not a TCP port number (1-65535)" % prefix)
        options["login_port"] = int(port)
    if "compose_project_dir" in options and "login_host" in options:
        raise ValueError("%s_project_dir and %s_login_host are both set: empty %s_project_dir to reach the server with libpq"
                         % (prefix, prefix, prefix))
    return options


def s3_argument_spec():
    """Options of doc fragment runbooks.incident.s3."""
    return dict(
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(type="str"),
        region=dict(type="str", default="us-east-1"),
        access_key=dict(type="str", no_log=True),
        secret_key=dict(type="str", no_log=True),
    )


S3_REQUIRED_TOGETHER = [("access_key", "secret_key")]


def sops_argument_spec():
    """Options of doc fragment runbooks.incident.sops."""
    return dict(
        sops_file=dict(type="path"),
        age_key_file=dict(type="path", default="/etc/whatsapp-mcp/age.key"),
        sops_binary=dict(type="path", default="sops"),
    )


def backup_trust_argument_spec():
    """Options of doc fragment runbooks.incident.backup_trust."""
    return dict(
        trusted_keys=dict(type="list", elements="str", default=[], no_log=False),
        accept_unsigned=dict(type="bool", default=False),
    )


def refuse_nul(module):
    """fail_json when a string option holds a NUL byte: no path, name, SQL or value of this collection has one, and
    the system calls would raise on it. The value is not shown (it may be a secret)."""
    def walk(value, where):
        if isinstance(value, str):
            return where if "\0" in value else None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
        for key, item in items:
            found = ("%s (a key)" % where if isinstance(key, str) and "\0" in key else None) or walk(item, "%s[%r]" % (where, key))
            if found:
                return found
        return None

    for name, value in module.params.items():
        found = walk(value, name)
        if found:
            module.fail_json(msg="option %s holds a NUL byte, which no option may; nothing was changed" % found)
