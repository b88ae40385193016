#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: cert_inspect
short_description: Judge the TLS certificate served for each name, against the certbot lineage and the expiry thresholds
version_added: 0.1.0
description:
  - Takes what a TLS client got for each name (the results of M(community.crypto.get_certificate), looped over the
    names, once without and once with the roots to verify against) and the lineage's current C(cert.pem). Returns,
    per name, its problems and the level of the expiry report.
  - "The problems: nothing served (the connection failed); C(expired); C(not valid yet); C(valid for less than
    I(min_days) days); not the lineage certificate (nginx not reloaded, or its files not linked to the lineage); the
    name not in the certificate (its DNS names, a wildcard in the first label); a chain that is incomplete (no
    intermediate served), out of order or with a wrong intermediate, or not trusted by the roots; no certbot lineage."
  - "The level: C(page) at I(page_days) days left or fewer (an expired certificate too), or when a name is not served
    right (nothing served, the name not in the certificate, a chain problem); C(warn) at I(warn_days) days left or
    fewer; C(ok) otherwise."
  - Read-only. Run it where the TLS client stood (the controller, C(delegate_to)). It needs the Python cryptography
    library there, which ansible-core depends on.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  names:
    description: The names to judge, in the order of the report.
    type: list
    elements: str
    required: true
  served:
    description:
      - What M(community.crypto.get_certificate) with C(get_certificate_chain=true) returned for each name, looped over
        I(names) (a registered variable's C(results)). Of each result, C(item) (the name), C(cert) and
        C(unverified_chain), or C(msg) when the connection failed, are read.
      - A name without a result counts as not served.
    type: list
    elements: dict
    default: []
  trusted:
    description:
      - What M(community.crypto.get_certificate) with C(ca_cert) returned for each name, looped over I(names). A result
        without C(cert) is a chain the roots do not verify, and its C(msg) says why.
      - Empty, or a name without a result, does not verify the chain against roots.
    type: list
    elements: dict
    default: []
  lineage_cert:
    description: The certbot lineage's current certificate (the text of C(live/<cert name>/cert.pem)); empty when there is none.
    type: str
    default: ""
  cert_name:
    description: The lineage's name, for the report.
    type: str
    default: ""
  min_days:
    description: A certificate valid for fewer days has the problem C(valid for less than I(min_days) days) (it is due for renewal).
    type: int
    default: 30
  warn_days:
    description: Level C(warn) at this many days left or fewer.
    type: int
    default: 30
  page_days:
    description: Level C(page) at this many days left or fewer.
    type: int
    default: 7
requirements:
  - cryptography (Python library)
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Fetch the certificate served for each name
  community.crypto.get_certificate:
    host: 203.0.113.10
    port: 443
    server_name: "{{ item }}"
    get_certificate_chain: true
  loop: [wa.example.com]
  delegate_to: localhost
  register: served
  failed_when: false

- name: Judge it
  runbooks.incident.cert_inspect:
    names: [wa.example.com]
    served: "{{ served.results }}"
    lineage_cert: "{{ lineage.content | b64decode }}"
    cert_name: wa.example.com
    warn_days: 30
    page_days: 7
  delegate_to: localhost
  register: verdict
"""

RETURN = r"""
report:
  description:
    - Per name, in the order of I(names), C(name), C(not_after) (C(20261122153550Z)), C(days_left) (-1 when nothing
      was served), C(issuer) (its common name), C(public_key) (SHA-256 of the key, C(aa:bb:...)), C(serial) (hex),
      C(problems), C(page_worthy) (not served right, whatever the days left) and C(level) (C(page), C(warn) or C(ok)).
  returned: always
  type: list
  elements: dict
  sample: [{name: wa.example.com, not_after: "20270220153550Z", days_left: 5, issuer: Pebble Intermediate CA 645fc5,
            public_key: "3e:0c:...", serial: 5f1c0a, problems: ["valid for less than 30 days"], page_worthy: false,
            level: page}]
problems:
  description: The entries of RV(report) that have problems.
  returned: always
  type: list
  elements: dict
page:
  description: The entries of RV(report) at level C(page).
  returned: always
  type: list
  elements: dict
warn:
  description: The entries of RV(report) at level C(warn).
  returned: always
  type: list
  elements: dict
ok:
  description: No name has a problem.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.runbooks.incident.plugins.module_utils import _certificate, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", required=True),
            served=dict(type="list", elements="dict", default=[]),
            trusted=dict(type="list", elements="dict", default=[]),
            lineage_cert=dict(type="str", default=""),
            cert_name=dict(type="str", default=""),
            min_days=dict(type="int", default=30),
            warn_days=dict(type="int", default=30),
            page_days=dict(type="int", default=7),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if _certificate.CRYPTOGRAPHY_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_certificate.CRYPTOGRAPHY_IMPORT_ERROR)
    if not params["names"] or not all(params["names"]):
        module.fail_json(msg="names must list the names to judge, none empty")
    for name in ("min_days", "warn_days", "page_days"):
        if not 0 <= params[name] <= 3650:
            module.fail_json(msg="%s must be 0 to 3650 days, not %d" % (name, params[name]))
    try:
        served = _certificate.results_by_name(params["served"], "served")
        trusted = _certificate.results_by_name(params["trusted"], "trusted")
        result = _certificate.judge(params["names"], served, trusted, params["lineage_cert"], params["cert_name"],
                                    params["min_days"], params["warn_days"], params["page_days"])
    except _certificate.CertificateError as exc:
        module.fail_json(msg="cannot judge the served certificates: %s" % exc)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
