# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage_full role's report and confirmation text, from what its tasks registered (the filters of
plugins/filter/storage_full.py). PRIVATE to the collection: no compatibility promise.

The inputs are the results as Ansible registers them: storage_info's `filesystems` and `candidates`, a looped task's
result (`results`, one per item, each with its `item`; an item that did not run has none of the module's keys), a
task that did not run (`skipped`, none of the module's keys) or {} for one never reached. Nothing here runs or
changes anything. Byte counts the modules do not already give in words are shown as ansible.builtin.human_readable
shows them (`70.31 MB`); the ones storage_info and rotated_logs_delete give (`bytes_human`, `1.2 GiB`) are shown as
given.
"""
from __future__ import annotations

from ansible.module_utils.common.text.formatters import bytes_to_human

FILESYSTEMS_HEADER = "mount | used % | free | inodes used % | full"
FILESYSTEMS_COLUMNS = ("mount", "used_percent", "available_human", "inodes_used_percent", "full")
BACKUPS_HEADER = "prefix | entries the policy removes | bytes freed | sets kept | newest kept"
ROWS_HEADER = "name | table | rows matching | table bytes"
NOT_SELECTED = "not selected"
UNKNOWN = "?"


def human(size):
    """Bytes as ansible.builtin.human_readable shows them."""
    return bytes_to_human(size)


def row(*fields):
    """One line of a table: its fields as text, separated by ` | `."""
    return " | ".join(str(field) for field in fields)


def items(registered):
    """The per-item results of a looped task's registered result; none when it was never reached."""
    return list((registered or {}).get("results") or [])


def measured(candidates):
    """storage_info's candidates by name."""
    return {candidate["name"]: candidate for candidate in candidates or []}


def is_measured(candidates, name):
    """The candidate was measured (not skipped, and asked for)."""
    return name in candidates and candidates[name].get("skipped") is None


def filesystems_table(filesystems):
    """storage_info's filesystems as a table: the header, then one line per filesystem (mount, used %, free, inodes
    used %, full)."""
    return [FILESYSTEMS_HEADER] + [row(*(filesystem[column] for column in FILESYSTEMS_COLUMNS)) for filesystem in filesystems or []]


def backup_plans(registered):
    """The retention plans backup_retention returned (its items that ran; none when the directory was missing)."""
    return [plan for plan in items(registered) if "removed" in plan]


def backups_table(registered):
    """The retention plans as a table: the header, then per policy its prefix, the set entries it removes, the bytes
    that frees (stale partial entries included), the sets kept and the newest kept. [] when no plan was read."""
    plans = backup_plans(registered)
    if not plans:
        return []
    lines = [BACKUPS_HEADER]
    for plan in plans:
        newest = plan["kept"][0] if plan["kept"] else {}
        lines.append(row(plan["item"]["prefix"], len(plan["removed"]), human(plan["removed_bytes"]), len(plan["kept"]),
                         newest.get("stamp", "none")))
    return lines


def backups_removing(registered):
    """The paths the retention plans remove: the set entries, then the stale partial entries."""
    plans = backup_plans(registered)
    return [path for plan in plans for path in plan["removed"]] + [path for plan in plans for path in plan.get("removed_partials") or []]


def row_counts(registered):
    """The expired row counts pg_purge returned (its items that ran)."""
    return [count for count in items(registered) if "matched" in count]


def rows_table(registered):
    """The expired row counts as a table: the header, then per condition its name, the table, the rows matching and
    the table's bytes. [] when no condition was counted."""
    counts = row_counts(registered)
    if not counts:
        return []
    return [ROWS_HEADER] + [row(count["item"]["name"], count["table"], count["matched"], human(count["table_bytes_before"])) for count in counts]


def rows_over(registered, max_rows):
    """`name: rows` of each condition matching more rows than max_rows."""
    return ["%s: %s" % (count["item"]["name"], count["matched"]) for count in row_counts(registered) if count["matched"] > int(max_rows)]


def destroys(reclaim, candidates, rotated_logs=None, log_dirs=(), journal_keep="", backups=None, backup_dir="", expired_rows=None,
             vacuum=False):
    """What a confirmed run destroys, one phrase per action, naming how much: the rotated logs listed (rotated_logs:
    rotated_logs_delete in check mode), docker's dangling images and build cache and the journal (as storage_info
    measured them; only when selected in reclaim and measured), the backup entries the retention plans remove (backups)
    and the expired rows counted (expired_rows). An action with nothing to destroy is left out."""
    by_name = measured(candidates)
    human_of = {name: candidate.get("bytes_human", UNKNOWN) for name, candidate in by_name.items()}
    phrases = []
    rotated_logs = rotated_logs or {}
    if rotated_logs.get("count", 0) > 0:
        phrases.append("delete %s rotated log file(s) (%s) under %s" % (rotated_logs["count"], rotated_logs["bytes_human"], ", ".join(log_dirs)))
    if "docker" in reclaim and is_measured(by_name, "docker_dangling_images"):
        phrases.append("remove docker's dangling images (%s) and its unused build cache (%s)"
                       % (human_of["docker_dangling_images"], human_of.get("docker_build_cache", UNKNOWN)))
    if "journal" in reclaim and is_measured(by_name, "journal"):
        phrases.append("vacuum the journal (%s) down to %s (archived files only)" % (human_of["journal"], journal_keep))
    removing = backups_removing(backups)
    if "backups" in reclaim and removing:
        freed = sum(plan["removed_bytes"] for plan in backup_plans(backups))
        phrases.append("remove %d backup entries (%s) of %s that the retention policy does not keep (the newest dump, verified, is kept)"
                       % (len(removing), human(int(freed)), backup_dir))
    counts = row_counts(expired_rows)
    total = sum(count["matched"] for count in counts)
    if "expired_rows" in reclaim and total > 0:
        each = ", ".join("%s: %s" % (count["item"]["name"], count["matched"]) for count in counts)
        phrases.append("delete %d expired row(s) (%s)%s" % (total, each, ", then VACUUM their tables" if vacuum else ""))
    return phrases


def _last(lines, containing=""):
    """The last of the lines that contain the text; '' when none does."""
    found = [line for line in lines or [] if containing in line]
    return found[-1] if found else ""


def reclaimed(results, candidates_before, candidates_after=()):
    """What each reclaiming action freed, by action (rotated_logs, journal, docker, backups, expired_rows), from the
    results its tasks registered (results: rotated_logs, journal, docker_images, docker_build_cache, backups,
    expired_rows; a task that did not run has none of its module's keys) and storage_info's candidates before and
    after. An action whose task did not run is `not selected`."""
    def result(name):
        return results.get(name) or {}

    before = {name: candidate.get("bytes_human", UNKNOWN) for name, candidate in measured(candidates_before).items()}
    after = {name: candidate.get("bytes_human", UNKNOWN) for name, candidate in measured(candidates_after).items()}
    logs, journal, images, cache = result("rotated_logs"), result("journal"), result("docker_images"), result("docker_build_cache")
    report = dict.fromkeys(("rotated_logs", "journal", "docker", "backups", "expired_rows"), NOT_SELECTED)
    if "count" in logs:
        report["rotated_logs"] = "%s in %s file(s)" % (logs["bytes_human"], logs["count"])
    if "rc" in journal:
        freed = _last(journal.get("stderr_lines"), "freed")
        report["journal"] = "journal %s -> %s: %s" % (before.get("journal", UNKNOWN), after.get("journal", UNKNOWN), freed)
    if "rc" in images:
        report["docker"] = "images: %s; build cache: %s" % (_last(images.get("stdout_lines")), _last(cache.get("stdout_lines")))
    # A looped task registers its results also when every item was skipped (backups not selected): those do not count.
    removals = [removal for removal in items(result("backups")) if not removal.get("skipped")]
    if removals:
        entries = sum(len(removal.get("removed") or []) for removal in removals)
        freed = sum(removal["removed_bytes"] for removal in removals if "removed_bytes" in removal)
        report["backups"] = "%d entries, %s" % (entries, human(int(freed)))
    done = [purge for purge in items(result("expired_rows")) if "deleted" in purge]
    if done:
        report["expired_rows"] = [row(purge["item"]["name"], purge["deleted"], human(purge["reclaimed_bytes"])) for purge in done]
    return report
