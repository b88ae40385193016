# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named fault-injection points for crash tests. PRIVATE to the collection: no compatibility promise.

Inert unless RUNBOOKS_INCIDENT_FAULT_DIR is set (only the test suite sets it): then `checkpoint(name)` creates
`<dir>/<name>.reached` and waits while `<dir>/<name>.hold` exists, so a test can kill -9 the run at that exact
point between two steps.
"""
from __future__ import annotations

import os
import time


def checkpoint(name):
    directory = os.environ.get("RUNBOOKS_INCIDENT_FAULT_DIR")
    if not directory:
        return
    with open(os.path.join(directory, name + ".reached"), "w", encoding="utf-8"):
        pass
    while os.path.exists(os.path.join(directory, name + ".hold")):
        time.sleep(0.05)
