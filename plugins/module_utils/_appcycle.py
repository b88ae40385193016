# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service around a database swap: stop, migrate, start, wait for /health. PRIVATE to the collection.

Used by the pg_restore module only (it needs Ansible's URL code; the host-side jobs do not import it).
"""
from __future__ import annotations

import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _pg, _pg_restore, _service


class AppCycle:
    """The service around the swap: commands (argv lists) to stop it, migrate and start it, and a health URL."""

    def __init__(self, stop=None, migrate=None, start=None, health_url=None, health_timeout=120):
        if health_url is not None and not health_url.startswith(("http://", "https://")):
            raise _pg_restore.RestoreError("health_url %r is not an http:// or https:// URL" % (health_url,))
        self.stop_argv, self.migrate_argv, self.start_argv = stop, migrate, start
        self.health_url = health_url
        self.health_timeout = health_timeout

    @staticmethod
    def _run(argv, what):
        if not argv:
            return
        try:
            res = subprocess.run(argv, capture_output=True, encoding="utf-8", errors="replace", check=False)
        except (OSError, ValueError) as exc:
            # A command that cannot start fails like one that fails: after the swap, it is rolled back.
            raise _pg_restore.RestoreError("%s (%s) cannot run: %s" % (what, " ".join(argv[-3:]), exc))
        if res.returncode != 0:
            raise _pg_restore.RestoreError("%s (%s) failed: %s" % (what, " ".join(argv[-3:]), _pg.first_line(res.stderr or res.stdout)))

    def stop(self):
        self._run(self.stop_argv, "stopping the app")

    def migrate(self):
        self._run(self.migrate_argv, "the migrations")

    def start(self):
        self._run(self.start_argv, "starting the app")
        if self.health_url:
            self.wait_healthy()

    def healthy(self):
        """Whether /health answers 200 now (True when there is no health URL: nothing to wait for)."""
        return not self.health_url or _service.health(self.health_url)[0] == 200

    def wait_healthy(self):
        try:
            _service.wait(self.health_url, {}, self.health_timeout, interval=0.2)
        except _service.ServiceError as exc:
            raise _pg_restore.RestoreError("%s did not answer 200 within %d s (last: %s)"
                                           % (self.health_url, self.health_timeout, exc.last)) from None
