#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pg_role_password
short_description: Give a PostgreSQL role the password held in a sops file, as a SCRAM verifier
version_added: 0.1.0
description:
  - Reads the password from top-level key I(password_key) of I(sops_file) on the managed host and makes it the
    password of I(role) with C(ALTER ROLE ... PASSWORD '<SCRAM-SHA-256 verifier>'). The verifier is computed here,
    so the clear password never reaches the server, its logs, a process argument or a result.
  - The password is the value as the service reads its password file, only a trailing line end removed (spaces
    are part of it). A password with non-ASCII characters or a NUL is refused with nothing changed, because a PostgreSQL
    client normalises such a password (SASLprep) or cuts it before SCRAM, and the role could not log in with it.
  - Compares first. When the role's stored verifier already matches the password, nothing is done. After the
    change, the stored verifier is read back and checked.
  - Used by role C(runbooks.incident.key_compromise) after M(runbooks.incident.secret_rotate) put the new password
    in the sops file (the old one kept as C(<key>.previous)), and again to put the old one back on rollback.
  - Reading the stored verifier (C(pg_authid)) needs a superuser I(login_user); the seeds' compose stack connects
    as C(wa), the superuser of its C(postgres) container, over the container's local socket.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
  - runbooks.incident.sops
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    details: Passwords are never diffed.
options:
  role:
    description: The role whose password is set.
    type: str
    default: wa
  password_key:
    description: Top-level key of I(sops_file) holding the password.
    type: str
    default: db_password
notes:
  - I(sops_file) is required.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: The database accepts the password now in the sops file
  runbooks.incident.pg_role_password:
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    password_key: db_password
    role: wa
    compose_project_dir: /opt/whatsapp-mcp
"""

RETURN = r"""
msg:
  description: What was done.
  returned: always
  type: str
  sample: role wa now has the password db_password (fingerprint 5c1d0e7a9b3f2e41)
fingerprint:
  description: First 16 hex digits of the sha256 of the password, to tell passwords apart without showing them.
  returned: success
  type: str
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pg, _scram, _secret, _service_db, _sops


def main():
    module = _params.postgres_module(dict(
        **_params.sops_argument_spec(),
        role=dict(type="str", default="wa"),
        password_key=dict(type="str", default="db_password", no_log=False),
    ))
    params = module.params
    if not params["sops_file"]:
        module.fail_json(msg="sops_file is required")
    role, key = params["role"], params["password_key"]
    runtime = _pg.Runtime.from_params(params)
    try:
        _pg.check_name(role, "role name")
        password = _sops.Sops(params["sops_file"], params["age_key_file"], params["sops_binary"]).decrypt().get(key)
        if not isinstance(password, str) or not password.strip():
            raise _sops.SopsError("%s has no %s" % (params["sops_file"], key))
        password = password.rstrip("\r\n")  # as the service reads it from its secrets file (spaces are part of it)
        _scram.check_password(password)
        runtime.ping()
        changed = _service_db.set_role_password(runtime, role, password, check_mode=module.check_mode)
    except (_pg.PgError, _sops.SopsError, _scram.ScramError, OSError) as exc:
        module.fail_json(msg="password of role %s not set from %s: %s" % (role, key, exc))
    fp = _secret.fingerprint(password)
    msg = ("role %s %s the password %s (fingerprint %s)" % (role, "now has" if changed else "already has", key, fp))
    module.exit_json(changed=changed, msg=msg, fingerprint=fp)


if __name__ == "__main__":
    main()
