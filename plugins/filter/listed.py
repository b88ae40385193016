# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A list input as an operator gives it: a list from the command line or a vars file, or one string from an AWX
survey (documented in listed.yml beside this file)."""
from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError


def listed(value, integers=False):
    if value is None:
        items = []
    elif isinstance(value, str):
        items = re.split(r"[\s,]+", value)
    elif isinstance(value, (list, tuple)):
        items = [item.strip() if isinstance(item, str) else item for item in value]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        raise AnsibleFilterError("listed: %r is not a list, nor items separated by commas or spaces" % (value,))
    items = [item for item in items if item not in ("", None)]
    if not integers:
        return items
    numbers = []
    for item in items:
        if isinstance(item, bool) or not re.fullmatch(r"\d+", str(item)):
            raise AnsibleFilterError("listed: %r is not a whole number" % (item,))
        numbers.append(int(item))
    return numbers


class FilterModule:
    def filters(self):
        return {"listed": listed}
