# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service around a change of its secrets: restart its units, wait until /health reports what the change expects.
PRIVATE to the collection: no compatibility promise.

Used by the service_restart module (the rotations and the key-compromise steps restart the same way), and by
_appcycle to wait for the service after a database swap.
"""
from __future__ import annotations

import json
import subprocess
import time
from urllib.error import HTTPError, URLError

from ansible.module_utils.urls import open_url

MISSING = object()


class ServiceError(Exception):
    def __init__(self, msg, last=None):
        super().__init__(msg)
        self.last = last  # what /health last reported, for a caller that words the failure its own way


def lookup(document, path):
    """The value at a dotted path of a JSON document, or MISSING."""
    value = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def unmet(document, expect):
    """What of `expect` the document does not report, one line each (empty: everything). An expected value must equal
    the one at its path, or be in it when that is a list; null means absent or null."""
    found = []
    for path, wanted in sorted(expect.items()):
        value = lookup(document, path)
        if wanted is None:
            if value not in (MISSING, None):
                found.append("%s is %s, not absent" % (path, json.dumps(value)))
        elif isinstance(value, list) and not isinstance(wanted, list):
            if wanted not in value:
                found.append("%s does not hold %s" % (path, json.dumps(wanted)))
        elif value is MISSING:
            found.append("%s is absent, not %s" % (path, json.dumps(wanted)))
        elif value != wanted:
            found.append("%s is %s, not %s" % (path, json.dumps(value), json.dumps(wanted)))
    return found


def health(url):
    """(HTTP status, the JSON document or None, a note when there was no answer)."""
    try:
        response = open_url(url, timeout=5, validate_certs=False)
        status, body = response.getcode(), response.read()
    except HTTPError as exc:
        status, body = exc.code, exc.read() if hasattr(exc, "read") else b""
    except (URLError, OSError, ValueError) as exc:
        return None, None, str(getattr(exc, "reason", exc))
    try:
        return status, json.loads(body), None
    except ValueError:
        return status, None, None


def restart(units):
    """systemctl restart, one unit after the other (the secrets unit first: the service reads what it decrypts)."""
    for unit in units:
        res = subprocess.run(["systemctl", "restart", unit], capture_output=True, encoding="utf-8", errors="replace", check=False)
        if res.returncode != 0:
            said = (res.stderr or res.stdout).strip().splitlines()
            raise ServiceError("restarting %s failed: %s" % (unit, said[-1] if said else "exit %d" % res.returncode))


def wait(url, expect, timeout, interval=1.0):
    """Poll /health until it answers 200 with what `expect` says; the document. ServiceError after `timeout` s, saying
    what it last reported (never the whole document: it may name more than the change)."""
    deadline = time.monotonic() + timeout
    while True:
        status, document, note = health(url)
        missing = unmet(document or {}, expect) if status == 200 else []
        if status == 200 and not missing:
            return document
        if time.monotonic() >= deadline:
            last = (note or "HTTP %s" % status) if status != 200 else "; ".join(missing)
            raise ServiceError("%s did not report what was expected within %d s (last: %s)" % (url, timeout, last), last)
        time.sleep(interval)
