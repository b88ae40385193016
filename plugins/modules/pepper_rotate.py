#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pepper_rotate
short_description: Rotate the API-key pepper, soft (old keys accepted for a grace period) or hard (at once), crash-safe
version_added: 0.1.0
description:
  - API keys are stored as HMAC-SHA256(pepper, token). A new pepper cannot re-hash the stored keys without their
    tokens. In a B(soft) rotation the old pepper becomes the previous one, accepted until C(previous_expires_at).
    The service re-hashes a key with the new pepper when its client presents it in that window. A B(hard) rotation
    (suspected compromise) keeps no previous pepper, so every key hashed with the old one fails at once.
  - I(state=retired) removes the previous pepper once it has expired, or earlier with I(force=true).
  - The new pepper (32 random bytes, hex) is generated on the managed host and never leaves it. Only
    fingerprints (the first 16 hex digits of its sha256, as the service logs them) are returned.
  - With I(sops_file), the sops-encrypted secrets file is changed first, in one atomic replace, keeping every
    other key. It is the durable truth, because C(/run/secrets) is a tmpfs filled from it at boot. The files are
    then written in an order that keeps every valid key valid at each step. The previous pepper and its expiry
    come first, then the current pepper, then removals, then the rotation record C(<path>.rotation). A run killed at
    any point leaves a state in which the service starts and, for a soft rotation, accepts every key that was
    valid before.
  - Without I(sops_file), the files are the truth (a rotation that is lost at reboot if C(/run/secrets) is a tmpfs
    filled from elsewhere). The new pepper is written to C(<path>.next) first, so an interrupted run resumes with it.
  - Idempotent per I(change_id). When the last rotation record has this id, nothing is rotated again. Files
    lagging behind the sops file are brought up to date.
  - Every file is read before anything changes. A pepper file that is not UTF-8 text (such as 32 raw bytes), a
    directory, a FIFO or a symlink at one of the paths, or a path through a symlink in a directory others can write
    to fails the task with nothing changed.
  - Restart the service afterwards, because it reads its peppers at start.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.sops
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    details: Secrets are never diffed.
options:
  path:
    description: The current pepper file the service reads.
    type: path
    default: /run/secrets/api_key_pepper
  previous_path:
    description: The previous pepper file. Its expiry is C(<previous_path>_expires_at). Default C(<path>.previous).
    type: path
  state:
    description: C(rotated) makes a new pepper current. C(retired) removes the previous pepper.
    type: str
    choices: [rotated, retired]
    default: rotated
  mode:
    description: C(soft) keeps the old pepper as the previous one for I(grace_days). C(hard) keeps nothing.
    type: str
    choices: [soft, hard]
    default: soft
  grace_days:
    description: Days the previous pepper stays accepted in a soft rotation (1 to 30; more is refused).
    type: int
    default: 30
  change_id:
    description: Id of the change or incident (letters, digits and C(._:-), at most 64). Re-running the same id does not rotate twice.
    type: str
    required: true
  force:
    description:
      - With I(state=retired), remove a previous pepper that is still accepted.
      - With I(mode=soft), rotate again while a previous pepper is still accepted. That pepper and every key still hashed with it are dropped.
    type: bool
    default: false
  owner:
    description: Owner of the files (the service's user).
    type: str
  group:
    description: Group of the files (the secrets group).
    type: str
  file_mode:
    description:
      - Mode of the files, an octal string such as C("0400") or the integer an unquoted YAML C(0400) becomes. A mode
        that gives every user access (C(0644)) is refused.
    type: raw
    default: "0400"
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Soft rotation, the old pepper accepted for 30 days (the sops file first, then /run/secrets)
  runbooks.incident.pepper_rotate:
    change_id: CHG-2026-0042
    mode: soft
    grace_days: 30
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
    owner: whatsapp-mcp
    group: whatsapp-mcp-secrets

- name: Hard rotation after a suspected leak of the pepper
  runbooks.incident.pepper_rotate:
    change_id: INC-2026-0099
    mode: hard
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml

- name: Retire the previous pepper once its grace period is over
  runbooks.incident.pepper_rotate:
    change_id: CHG-2026-0042-retire
    state: retired
    sops_file: /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml
"""

RETURN = r"""
fingerprint:
  description: Fingerprint of the current pepper after the run.
  returned: success
  type: str
  sample: 3f9a0c1d2e4b5a69
previous_fingerprint:
  description: Fingerprint of the previous pepper, if one is accepted.
  returned: success
  type: str
  sample: 8c1e2f3a4b5c6d7e
previous_expires_at:
  description: Until when the previous pepper is accepted (ISO-8601, UTC).
  returned: success
  type: str
  sample: "2026-12-22T03:04:05+00:00"
replaced_fingerprint:
  description: Fingerprint of the pepper that was current before this rotation.
  returned: when state=rotated
  type: str
  sample: 8c1e2f3a4b5c6d7e
sops_keys_changed:
  description: Keys of the sops file that were (or would be) changed.
  returned: success
  type: list
  elements: str
  sample: [api_key_pepper, api_key_pepper.previous, api_key_pepper.previous_expires_at, api_key_pepper.rotation]
files_changed:
  description: Files that were (or would be) written or removed, in order.
  returned: success
  type: list
  elements: str
  sample: [/run/secrets/api_key_pepper.previous, /run/secrets/api_key_pepper.previous_expires_at, /run/secrets/api_key_pepper]
msg:
  description: What happened.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _pepper, _run_lock, _sops


def main():
    argument_spec = dict(
        path=dict(type="path", default="/run/secrets/api_key_pepper"),
        previous_path=dict(type="path"),
        state=dict(type="str", choices=["rotated", "retired"], default="rotated"),
        mode=dict(type="str", choices=["soft", "hard"], default="soft"),
        grace_days=dict(type="int", default=30),
        change_id=dict(type="str", required=True),
        force=dict(type="bool", default=False),
        owner=dict(type="str"),
        group=dict(type="str"),
        file_mode=dict(type="raw", default="0400"),
    )
    argument_spec.update(_params.sops_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    _params.refuse_nul(module)
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["change_id"]):
        module.fail_json(msg="change_id %r is not valid (letters, digits and ._:-, at most 64); nothing was changed" % params["change_id"])
    if not 1 <= params["grace_days"] <= _pepper.GRACE_MAX_DAYS:
        module.fail_json(msg="grace_days must be between 1 and %d, not %d: a longer window keeps a replaced pepper working too long;"
                         " nothing was changed" % (_pepper.GRACE_MAX_DAYS, params["grace_days"]))
    errors = (_pepper.PepperError, _sops.SopsError, OSError)
    store = _sops.Sops(params["sops_file"], params["age_key_file"], params["sops_binary"]) if params["sops_file"] else None
    owner_group = dict(owner=params["owner"], group=params["group"])
    try:
        file_mode = _pepper.parse_file_mode(params["file_mode"])
        planned = _pepper.plan(params["path"], params["change_id"], state=params["state"], mode=params["mode"], grace_days=params["grace_days"],
                               force=params["force"], previous_path=params["previous_path"], store=store, **owner_group)
    except errors as exc:
        module.fail_json(msg="pepper rotation %s not done: %s; nothing was changed" % (params["change_id"], exc))
    try:
        result = _pepper.apply(planned, file_mode=file_mode, check_mode=module.check_mode, **owner_group)
    except errors as exc:
        module.fail_json(msg="pepper rotation %s not completed: %s; re-run it with the same change_id to complete it"
                         % (params["change_id"], exc))
    if not store and result["changed"]:
        module.warn("no sops_file: the rotation is only in %s; if that is a tmpfs filled from elsewhere at boot, it is lost"
                    " at the next reboot" % os.path.dirname(params["path"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
