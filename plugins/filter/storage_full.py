# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage_full role's report and confirmation text, from what its tasks registered (module_utils/_storage_report.py).

One file for several filters: each is documented in the file of its name beside this one (storage_destroys.yml, ...),
as ansible-core documents the filters of its core.py.
"""
from __future__ import annotations

import functools

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.runbooks.incident.plugins.module_utils import _storage_report


def _reported(function):
    """The filter, raising a filter error that names it when its input is not what the modules register."""
    @functools.wraps(function)
    def filtered(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise AnsibleFilterError("runbooks.incident.%s: the input is not what the modules register (%s: %s)"
                                     % (function.__name__, type(exc).__name__, exc)) from exc
    return filtered


@_reported
def storage_filesystems_table(filesystems):
    return _storage_report.filesystems_table(filesystems)


@_reported
def storage_backups_table(registered):
    return _storage_report.backups_table(registered)


@_reported
def storage_rows_table(registered):
    return _storage_report.rows_table(registered)


@_reported
def storage_rows_over(registered, max_rows):
    return _storage_report.rows_over(registered, max_rows)


@_reported
def storage_destroys(reclaim, candidates, rotated_logs=None, log_dirs=None, journal_keep="", backups=None, backup_dir="", expired_rows=None,
                     vacuum=False):
    return _storage_report.destroys(reclaim, candidates, rotated_logs=rotated_logs, log_dirs=log_dirs or [], journal_keep=journal_keep,
                                    backups=backups, backup_dir=backup_dir, expired_rows=expired_rows, vacuum=boolean(vacuum, strict=False))


@_reported
def storage_reclaimed(results, candidates_before, candidates_after=None):
    return _storage_report.reclaimed(results, candidates_before, candidates_after or [])


class FilterModule:
    """The storage_full role's report."""

    def filters(self):
        return {
            "storage_filesystems_table": storage_filesystems_table,
            "storage_backups_table": storage_backups_table,
            "storage_rows_table": storage_rows_table,
            "storage_rows_over": storage_rows_over,
            "storage_destroys": storage_destroys,
            "storage_reclaimed": storage_reclaimed,
        }
