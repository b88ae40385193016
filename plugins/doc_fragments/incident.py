# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The incident/change id every state-changing action of the collection takes.
    DOCUMENTATION = r"""
options:
  incident_id:
    description:
      - Id of the incident or change this action belongs to (for example C(INC-2026-0042) or an AWX job id).
      - Letters, digits and C(._:-), at most 64 characters. It is recorded in the host's journal and in the
        result, so a timeline can be rebuilt from what the automation actually did.
    type: str
    required: true
"""
