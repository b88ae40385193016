#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: cert_rekey
short_description: Give a certbot lineage a new key and revoke the certificate it replaces, once per incident
version_added: 0.1.0
description:
  - The steps of a key compromise around a certbot renewal, each done once per incident and recorded with
    M(runbooks.incident.incident_steps) (C(<state_dir>/<cert_name>/<incident_id>/<step>.json)).
  - I(step=replaced), before certbot runs. Records the certificate the lineage holds now (the archive file
    C(live/<cert_name>/cert.pem) links to, its serial and its key) and the keys nginx serves. A re-run after any
    failure revokes that certificate, never one issued in between.
  - Then certbot renews the lineage (C(--new-key)) and nginx serves the new certificate. That is not a step of this
    module. It reads whether certbot renewed from the lineage itself (RV(renewed)).
  - I(step=new_key). Checks that nginx serves, for every name, a key that is neither the replaced certificate's nor
    one it served before, and records it. Fails otherwise, and nothing is revoked.
  - I(step=revoked). Checks the key again (with I(new_key)) and that the archive file still holds the replaced
    certificate while the lineage has moved on. Then it revokes the certificate at the CA with C(certbot revoke) and
    records it. A certificate the CA had revoked already (a run that died before its record) is recorded as done.
    A revocation cannot be undone, so ask for a confirmation before this step.
  - Without I(step), it only reads what the incident did and what the lineage holds. It refuses a revocation when
    C(cert.pem) is not a link into certbot's archive, because after the renewal no file would hold the certificate
    to revoke.
  - Reading a certificate needs the Python cryptography library on the host (C(python3-cryptography), which
    certbot's Debian package depends on).
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details:
      - Predicts each step and writes and revokes nothing. Before certbot renewed (nginx still serves the certificate
        to replace), the key check is only announced.
  diff_mode:
    support: none
options:
  incident_id:
    description: The incident the steps are recorded under (letters, digits and C(._:-), at most 64).
    type: str
    required: true
  cert_name:
    description: certbot's lineage name (C(<config_dir>/live/<cert_name>)).
    type: str
    required: true
  step:
    description: The step to do and record. Omit it to only read.
    type: str
    choices: [replaced, new_key, revoked]
  names:
    description: The certificate's DNS names, for the record and the messages.
    type: list
    elements: str
    default: []
  new_key:
    description: The incident asks for a new key. certbot has renewed only once the lineage holds another key, and the served key is checked.
    type: bool
    default: false
  revoke_reason:
    description: The reason of the revocation (I(step=revoked)). Empty when the incident revokes nothing.
    type: str
    choices: ["", keycompromise, superseded, unspecified, affiliationchanged, cessationofoperation]
    default: ""
  served_public_keys:
    description:
      - The public key (SHA-256, as RV(runbooks.incident.cert_inspect#module:report) gives it) of the certificate
        nginx serves now for each name, an empty string for a name it serves none.
      - I(step=replaced) records them as the keys served before. I(step=new_key) and I(step=revoked) check them.
    type: list
    elements: str
    default: []
  config_dir:
    description: certbot's configuration directory.
    type: path
    default: /etc/letsencrypt
  state_dir:
    description: Where the records are kept, one directory per lineage.
    type: path
    default: /var/lib/runbooks-incident/certificates
  acme_server:
    description: The ACME directory URL certbot revokes at.
    type: str
    default: https://acme-v02.api.letsencrypt.org/directory
  acme_ca_bundle:
    description: CA bundle certbot trusts for the ACME server (a private or test CA). Unset or empty uses the system one.
    type: path
  log_path:
    description: certbot's debug log. certbot logs beside it, and the cause of a failed revocation is read from it.
    type: path
    default: /var/log/letsencrypt/letsencrypt.log
  work_dir:
    description: certbot's working directory.
    type: path
    default: /var/lib/letsencrypt
requirements:
  - cryptography (Python library) on the managed host
  - certbot, for I(step=revoked)
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Re-key wa.example.com once for incident INC-2026-0042
  module_defaults:
    runbooks.incident.cert_rekey:
      incident_id: INC-2026-0042
      cert_name: wa.example.com
      names: [wa.example.com]
      new_key: true
      revoke_reason: keycompromise
  block:
    - name: What did the incident do about the key?
      runbooks.incident.cert_rekey:
      register: rekey

    - name: Record the certificate the new one replaces, before certbot runs
      runbooks.incident.cert_rekey:
        step: replaced
        served_public_keys: "{{ verdict.report | map(attribute='public_key') | list }}"
      when: not rekey.renewed

    # ... certbot renew --force-renewal --new-key, nginx reloaded, the served certificate verified (verdict_after) ...

    - name: Check the new key, then revoke the replaced certificate
      runbooks.incident.cert_rekey:
        step: "{{ item }}"
        served_public_keys: "{{ verdict_after.report | map(attribute='public_key') | list }}"
      loop: [new_key, revoked]
"""

RETURN = r"""
msg:
  description: What the step did or would do; what the incident did already.
  returned: always
  type: str
  sample: "Revoked certificate 4a2b... (/etc/letsencrypt/archive/wa.example.com/cert3.pem) at the CA with reason keycompromise."
steps:
  description: The steps recorded for the incident.
  returned: success
  type: list
  elements: str
  sample: [new_key, replaced, revoked]
done:
  description: The record of each step in RV(steps).
  returned: success
  type: dict
current:
  description:
    - The lineage's current certificate, C(path) (the archive file, empty when C(cert.pem) is not a link), C(serial)
      (hex), C(public_key) (SHA-256) and C(not_after). Empty when there is no lineage.
  returned: success
  type: dict
  sample: {path: /etc/letsencrypt/archive/wa.example.com/cert3.pem, serial: 4a2b, public_key: "3e:0c:...", not_after: "20270220153550Z"}
replaced:
  description: The certificate the incident replaces (recorded, or in check mode what would be), as RV(current). Empty when none.
  returned: success
  type: dict
revoked:
  description: The record of the revocation, C(reason), C(serial), C(path), C(already_revoked) and C(at). Empty until then.
  returned: success
  type: dict
renewed:
  description: certbot renewed the lineage since the incident recorded the certificate it replaces.
  returned: success
  type: bool
to_revoke:
  description: The certificate a revocation of this incident is still to revoke, as RV(current). Empty when none is.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _cert_rekey, _certificate, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            incident_id=dict(type="str", required=True),
            cert_name=dict(type="str", required=True),
            step=dict(type="str", choices=["replaced", "new_key", "revoked"]),
            names=dict(type="list", elements="str", default=[]),
            new_key=dict(type="bool", default=False),
            revoke_reason=dict(type="str", choices=[""] + list(_cert_rekey.REVOKE_REASONS), default=""),
            served_public_keys=dict(type="list", elements="str", default=[], no_log=False),
            config_dir=dict(type="path", default="/etc/letsencrypt"),
            state_dir=dict(type="path", default="/var/lib/runbooks-incident/certificates"),
            acme_server=dict(type="str", default="https://acme-v02.api.letsencrypt.org/directory"),
            acme_ca_bundle=dict(type="path"),
            log_path=dict(type="path", default="/var/log/letsencrypt/letsencrypt.log"),
            work_dir=dict(type="path", default="/var/lib/letsencrypt"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    errors = (_cert_rekey.RekeyError, _certificate.CertificateError, OSError)
    try:
        rekey = _cert_rekey.Rekey(params["config_dir"], params["state_dir"], params["cert_name"], params["incident_id"],
                                  names=params["names"], new_key=params["new_key"], revoke_reason=params["revoke_reason"],
                                  check_mode=module.check_mode)
        keys = params["served_public_keys"]
        if params["step"] is None:
            changed, result = False, rekey.status()
        elif params["step"] == "replaced":
            changed, result = rekey.record_replaced(keys)
        elif params["step"] == "new_key":
            changed, result = rekey.check_new_key(keys)
        else:
            certbot = _cert_rekey.certbot_revoke(params["config_dir"], params["log_path"], params["acme_server"],
                                                 params["work_dir"], params["acme_ca_bundle"])
            changed, result = rekey.revoke(keys, certbot)
    except errors as exc:
        module.fail_json(msg=str(exc) if getattr(exc, "changed", False) else "%s. Nothing was changed." % exc)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
