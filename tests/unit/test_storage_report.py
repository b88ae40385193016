# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage_full role's report and confirmation text (module_utils/_storage_report.py, the filters of
plugins/filter/storage_full.py), from results shaped as the role registers them: storage_info's filesystems and
candidates (a skipped candidate has its reason, a measured one null), rotated_logs_delete, backup_retention and
pg_purge looped over the role's items (an item that did not run is Ansible's skipped result), the journalctl and
docker commands, and tasks that were skipped or never reached."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.runbooks.incident.plugins.filter import storage_full

MB = 1 << 20
SKIPPED = dict(changed=False, skipped=True, skip_reason="Conditional result was False", false_condition="'journal' in storage_full_reclaim")
EVERYTHING = ["rotated_logs", "docker", "journal", "backups", "expired_rows"]
DB, MEDIA = dict(prefix="db-", keep_daily=1, keep_monthly=0, keep_yearly=0), dict(prefix="media-", keep_daily=30, keep_monthly=0, keep_yearly=0)
OLD_MEDIA = dict(name="old_media_rows", table="media_messages", where="created_at < now() - interval '90 days'")
OLD_AUDIT = dict(name="old_audit", table="audit_log", where="at < now() - interval '2 years'")


def filesystem(mount, used_percent, available_human, inodes_used_percent, full):
    return dict(path=mount, mount=mount, device="/dev/vda1", fstype="ext4", size_bytes=21003583488, used_bytes=19213627392,
                available_bytes=759177216, used_percent=used_percent, inodes=1310720, inodes_used=157286,
                inodes_used_percent=inodes_used_percent, full=full, size_human="19.6 GiB", used_human="17.9 GiB",
                available_human=available_human, largest_dirs=[], largest_files=[], entries=412233, unreadable=0, truncated=False)


def candidate(name, size, bytes_human, skipped=None):
    return dict(name=name, bytes=0 if skipped else size, bytes_human="0 B" if skipped else bytes_human, count=0 if skipped else 3,
                how="...", detail="skipped: %s" % skipped if skipped else "...", skipped=skipped)


MEASURED = [candidate("rotated_logs", 61440, "60.0 KiB"), candidate("docker_dangling_images", 2147483648, "2.0 GiB"),
            candidate("docker_build_cache", 314572800, "300.0 MiB"), candidate("journal", 2040109465, "1.9 GiB")]
NO_DOCKER = "docker is not on PATH"
DOCKER_SKIPPED = [candidate("rotated_logs", 61440, "60.0 KiB"), candidate("docker_dangling_images", 0, "", NO_DOCKER),
                  candidate("docker_build_cache", 0, "", NO_DOCKER), candidate("journal", 0, "", "journalctl --disk-usage failed: exit 1")]
# storage_full_docker=false and storage_full_journal=false: only the rotated logs were measured.
ONLY_LOGS = [candidate("rotated_logs", 61440, "60.0 KiB")]


def looped(*results):
    """A looped task's registered result."""
    return dict(changed=any(result.get("changed") for result in results), msg="All items completed", results=list(results))


def all_skipped(*items):
    """A looped task whose `when` was false for every item (as Ansible registers it), or that had no item."""
    return dict(changed=False, skipped=True, msg="All items skipped" if items else "No items in the list",
                results=[dict(SKIPPED, item=item, ansible_loop_var="item") for item in items])


def plan(policy, removed, removed_bytes, kept, partials=(), changed=False):
    """backup_retention's result for one policy, as an item of the loop."""
    return dict(changed=changed, item=policy, ansible_loop_var="item", removed=list(removed), removed_partials=list(partials),
                removed_bytes=removed_bytes, kept=[dict(stamp=stamp, reasons=["daily"]) for stamp in kept], ignored=[])


def dump(stamp):
    return ["/var/backups/whatsapp-mcp/db-%s.%s" % (stamp, suffix) for suffix in ("manifest.json", "sql.gz")]


# Three nightly dumps, the policy keeps one: the two others go (four entries, 70 MiB in all).
PLANS = looped(plan(DB, dump("2026-01-01") + dump("2026-01-02"), 70 * MB, ["2026-01-03"]), plan(MEDIA, [], 0, ["2026-01-03T031500Z"]))


def count(condition, matched, table_bytes, deleted=0, reclaimed_bytes=0, changed=False):
    """pg_purge's result for one condition, as an item of the loop (in check mode: counted, nothing deleted)."""
    return dict(changed=changed, item=condition, ansible_loop_var="item", db="wa_mcp", table=condition["table"], matched=matched,
                deleted=deleted, batches=1 if deleted else 0, read_only=False, vacuumed=bool(deleted), table_bytes_before=table_bytes,
                table_bytes_after=table_bytes - reclaimed_bytes, reclaimed_bytes=reclaimed_bytes, msg="...")


COUNTS = looped(count(OLD_MEDIA, 40, 73728000), count(OLD_AUDIT, 3, 8192))
LOGS_PLAN = dict(changed=True, msg="would delete 3 rotated log files (60.0 KiB) in /var/log", files=["/var/log/syslog.1", "/var/log/syslog.2.gz",
                 "/var/log/app/app.log.1"], count=3, bytes=61440, bytes_human="60.0 KiB", not_deleted=[], missing=[], unreadable=0, truncated=False)


def destroys(reclaim, candidates=None, **given):
    """What the confirmed run destroys, with the role's own settings for what is not given."""
    options = dict(rotated_logs=LOGS_PLAN, log_dirs=["/var/log"], journal_keep="100M", backups=PLANS, backup_dir="/var/backups/whatsapp-mcp",
                   expired_rows=COUNTS, vacuum=True)
    options.update(given)
    return storage_full.storage_destroys(reclaim, MEASURED if candidates is None else candidates, **options)


def test_each_filter_is_registered_under_its_name():
    assert storage_full.FilterModule().filters() == {
        "storage_filesystems_table": storage_full.storage_filesystems_table, "storage_backups_table": storage_full.storage_backups_table,
        "storage_rows_table": storage_full.storage_rows_table, "storage_rows_over": storage_full.storage_rows_over,
        "storage_destroys": storage_full.storage_destroys, "storage_reclaimed": storage_full.storage_reclaimed}


# ------------------------------------------------------------------------------------------------ the filesystems
def test_each_filesystem_is_one_line_under_the_header_in_the_order_measured():
    table = storage_full.storage_filesystems_table([filesystem("/", 96.2, "724.0 MiB", 12.0, True),
                                                    filesystem("/var/lib/whatsapp-mcp", 41.0, "11.3 GiB", 0.4, False)])
    assert table == ["mount | used % | free | inodes used % | full", "/ | 96.2 | 724.0 MiB | 12.0 | True",
                     "/var/lib/whatsapp-mcp | 41.0 | 11.3 GiB | 0.4 | False"]


def test_a_filesystem_without_a_fixed_number_of_inodes_shows_none_for_them():
    assert storage_full.storage_filesystems_table([filesystem("/srv", 50.0, "9.8 GiB", None, False)])[1] == "/srv | 50.0 | 9.8 GiB | None | False"


def test_no_filesystem_measured_is_the_header_alone():
    assert storage_full.storage_filesystems_table([]) == ["mount | used % | free | inodes used % | full"]


def test_a_filesystem_missing_what_storage_info_returns_fails_naming_the_filter():
    with pytest.raises(AnsibleFilterError, match="storage_filesystems_table.*used_percent"):
        storage_full.storage_filesystems_table([dict(mount="/", available_human="1 GiB")])


# ------------------------------------------------------------------------------------------------------ backups
def test_each_policy_read_says_what_it_removes_and_the_newest_set_it_keeps():
    assert storage_full.storage_backups_table(PLANS) == [
        "prefix | entries the policy removes | bytes freed | sets kept | newest kept",
        "db- | 4 | 70.00 MB | 1 | 2026-01-03",
        "media- | 0 | 0.00 Bytes | 1 | 2026-01-03T031500Z"]


def test_stale_partial_entries_free_bytes_but_are_not_counted_as_the_sets_entries():
    partial = looped(plan(DB, dump("2026-01-01"), 3 * MB, ["2026-01-03", "2026-01-02"], partials=["/var/backups/whatsapp-mcp/.db-2026-01-04.sql.gz.tmp"]))
    assert storage_full.storage_backups_table(partial)[1] == "db- | 2 | 3.00 MB | 2 | 2026-01-03"


def test_a_policy_that_keeps_no_set_names_none_as_the_newest():
    assert storage_full.storage_backups_table(looped(plan(MEDIA, [], 0, [])))[1] == "media- | 0 | 0.00 Bytes | 0 | none"


@pytest.mark.parametrize("registered", [all_skipped(DB, MEDIA), all_skipped(), {}], ids=["no backup directory", "no policy", "never reached"])
def test_no_plan_read_is_no_table(registered):
    assert storage_full.storage_backups_table(registered) == []


def test_only_the_items_that_ran_are_tabled():
    mixed = looped(dict(SKIPPED, item=DB, ansible_loop_var="item"), plan(MEDIA, [], 0, ["2026-01-03T031500Z"]))
    assert storage_full.storage_backups_table(mixed)[1:] == ["media- | 0 | 0.00 Bytes | 1 | 2026-01-03T031500Z"]


# --------------------------------------------------------------------------------------------------- expired rows
def test_each_condition_counted_is_one_line_with_its_table_and_its_size():
    assert storage_full.storage_rows_table(COUNTS) == [
        "name | table | rows matching | table bytes", "old_media_rows | media_messages | 40 | 70.31 MB", "old_audit | audit_log | 3 | 8.00 KB"]


@pytest.mark.parametrize("registered", [all_skipped(), all_skipped(OLD_MEDIA), {}], ids=["none given", "not run", "never reached"])
def test_no_condition_counted_is_no_table(registered):
    assert storage_full.storage_rows_table(registered) == []


def test_only_the_conditions_over_the_maximum_are_named_with_their_rows():
    counts = looped(count(OLD_MEDIA, 100001, 73728000), count(OLD_AUDIT, 100000, 8192))
    assert storage_full.storage_rows_over(counts, 100000) == ["old_media_rows: 100001"]
    assert storage_full.storage_rows_over(counts, "99999") == ["old_media_rows: 100001", "old_audit: 100000"]  # -e storage_full_max_rows=99999
    assert storage_full.storage_rows_over(counts, 10 ** 12) == []


def test_no_condition_counted_is_none_over():
    assert storage_full.storage_rows_over(all_skipped(), 0) == [] and storage_full.storage_rows_over({}, 0) == []


# -------------------------------------------------------------------------------------- what the confirmed run destroys
def test_everything_selected_and_measured_is_named_with_how_much_in_the_order_reclaimed():
    assert destroys(EVERYTHING) == [
        "delete 3 rotated log file(s) (60.0 KiB) under /var/log",
        "remove docker's dangling images (2.0 GiB) and its unused build cache (300.0 MiB)",
        "vacuum the journal (1.9 GiB) down to 100M (archived files only)",
        "remove 4 backup entries (70.00 MB) of /var/backups/whatsapp-mcp that the retention policy does not keep (the newest dump, verified, is kept)",
        "delete 43 expired row(s) (old_media_rows: 40, old_audit: 3), then VACUUM their tables"]


def test_nothing_selected_destroys_nothing():
    assert destroys([], rotated_logs=SKIPPED) == []


@pytest.mark.parametrize("candidates", [DOCKER_SKIPPED, ONLY_LOGS, []], ids=["skipped", "not measured", "nothing measured"])
def test_docker_and_the_journal_selected_but_not_measured_are_not_touched(candidates):
    assert destroys(["docker", "journal"], candidates, rotated_logs=SKIPPED) == []


def test_a_measured_journal_is_vacuumed_even_when_docker_could_not_be_measured():
    candidates = DOCKER_SKIPPED[:3] + [candidate("journal", 2040109465, "1.9 GiB")]
    assert destroys(["docker", "journal"], candidates, rotated_logs=SKIPPED) == ["vacuum the journal (1.9 GiB) down to 100M (archived files only)"]


def test_the_rotated_logs_are_named_only_when_the_listing_found_some():
    assert destroys(["rotated_logs"], log_dirs=["/var/log", "/srv/log"])[0] == "delete 3 rotated log file(s) (60.0 KiB) under /var/log, /srv/log"
    assert destroys(["rotated_logs"], rotated_logs=dict(LOGS_PLAN, count=0, files=[], bytes=0, bytes_human="0 B")) == []
    assert destroys(["rotated_logs"], rotated_logs=SKIPPED) == [] and destroys(["rotated_logs"], rotated_logs={}) == []


def test_stale_partial_backups_count_among_the_entries_removed():
    partial = looped(plan(DB, dump("2026-01-01"), 3 * MB, ["2026-01-03"], partials=["/var/backups/whatsapp-mcp/.db-2026-01-04.sql.gz.tmp"]))
    assert destroys(["backups"], backups=partial, rotated_logs=SKIPPED) == [
        "remove 3 backup entries (3.00 MB) of /var/backups/whatsapp-mcp that the retention policy does not keep (the newest dump, verified, is kept)"]


@pytest.mark.parametrize("backups", [looped(plan(DB, [], 0, ["2026-01-03"])), all_skipped(DB, MEDIA), {}],
                         ids=["nothing to remove", "no backup directory", "never reached"])
def test_backups_with_nothing_to_remove_are_not_named(backups):
    assert destroys(["backups"], backups=backups, rotated_logs=SKIPPED) == []


def test_expired_rows_without_vacuum_and_conditions_matching_nothing():
    assert destroys(["expired_rows"], rotated_logs=SKIPPED, vacuum="false") == ["delete 43 expired row(s) (old_media_rows: 40, old_audit: 3)"]
    nothing = looped(count(OLD_MEDIA, 0, 73728000), count(OLD_AUDIT, 0, 8192))
    assert destroys(["expired_rows"], rotated_logs=SKIPPED, expired_rows=nothing) == []
    assert destroys(["expired_rows"], rotated_logs=SKIPPED, expired_rows=all_skipped()) == []


def test_what_is_not_selected_is_not_named_however_much_it_would_free():
    assert destroys(["rotated_logs"]) == ["delete 3 rotated log file(s) (60.0 KiB) under /var/log"]


# ------------------------------------------------------------------------------------------------ what was reclaimed
NOT_SELECTED = dict.fromkeys(["rotated_logs", "journal", "docker", "backups", "expired_rows"], "not selected")
JOURNAL_VACUUMED = dict(changed=True, rc=0, cmd=["journalctl", "--vacuum-size=100M"], stdout="", stdout_lines=[], stderr_lines=[
    "Deleted archived journal /var/log/journal/0c1e/system@0005f1-0001.journal~ (128.0M).",
    "Vacuuming done, freed 1.8G of archived journals from /var/log/journal/0c1e.",
    "Vacuuming done, freed 0B of archived journals from /run/log/journal."])
IMAGES_PRUNED = dict(changed=True, rc=0, stdout_lines=["Deleted Images:", "deleted: sha256:4f1c", "", "Total reclaimed space: 1.9GB"])
CACHE_PRUNED = dict(changed=True, rc=0, stdout_lines=["ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED", "k2m\ttrue\t300MB\t2 weeks ago", "Total:\t300MB"])
AFTER = [candidate("rotated_logs", 0, "0 B"), candidate("docker_dangling_images", 0, "0 B"), candidate("docker_build_cache", 0, "0 B"),
         candidate("journal", 100663296, "96.0 MiB")]
NOTHING_RAN = dict(rotated_logs=SKIPPED, journal=SKIPPED, docker_images=SKIPPED, docker_build_cache=SKIPPED, expired_rows=all_skipped(OLD_MEDIA))


def test_everything_reclaimed_says_what_each_action_freed():
    results = dict(rotated_logs=dict(LOGS_PLAN, msg="deleted 3 rotated log files (60.0 KiB) in /var/log"), journal=JOURNAL_VACUUMED,
                   docker_images=IMAGES_PRUNED, docker_build_cache=CACHE_PRUNED,
                   backups=looped(plan(DB, dump("2026-01-01") + dump("2026-01-02"), 70 * MB, ["2026-01-03"], partials=["/b/.db-x.tmp"], changed=True),
                                  plan(MEDIA, ["/var/backups/whatsapp-mcp/media-2026-01-01"], 2 * MB, ["2026-01-03T031500Z"], changed=True)),
                   expired_rows=looped(count(OLD_MEDIA, 40, 73728000, deleted=40, reclaimed_bytes=1327104, changed=True),
                                       count(OLD_AUDIT, 0, 8192)))
    assert storage_full.storage_reclaimed(results, MEASURED, AFTER) == dict(
        rotated_logs="60.0 KiB in 3 file(s)",
        journal="journal 1.9 GiB -> 96.0 MiB: Vacuuming done, freed 0B of archived journals from /run/log/journal.",
        docker="images: Total reclaimed space: 1.9GB; build cache: Total:\t300MB",
        backups="5 entries, 72.00 MB",  # the sets' entries; the bytes also the partial entry's
        expired_rows=["old_media_rows | 40 | 1.27 MB", "old_audit | 0 | 0.00 Bytes"])


def test_nothing_reached_is_nothing_selected():
    assert storage_full.storage_reclaimed({}, MEASURED) == NOT_SELECTED
    assert storage_full.storage_reclaimed(dict.fromkeys(NOT_SELECTED, {}), []) == NOT_SELECTED


def test_the_retention_loop_skipped_item_by_item_is_not_selected():
    """Ansible registers a loop's results even when every item is skipped (backups not among the choices): that is
    "not selected", not "0 entries"."""
    assert storage_full.storage_reclaimed(dict(NOTHING_RAN, backups=all_skipped(DB, MEDIA)), MEASURED) == NOT_SELECTED


def test_the_journal_without_a_measure_after_or_a_freed_line_still_says_it_was_vacuumed():
    quiet = dict(JOURNAL_VACUUMED, changed=False, stderr_lines=["Deleted archived journal /var/log/journal/0c1e/x.journal~ (8.0M)."])
    assert storage_full.storage_reclaimed(dict(NOTHING_RAN, journal=quiet), MEASURED)["journal"] == "journal 1.9 GiB -> ?: "
    assert storage_full.storage_reclaimed(dict(NOTHING_RAN, journal=dict(quiet, stderr_lines=[])), MEASURED, [])["journal"] == "journal 1.9 GiB -> ?: "


def test_docker_images_pruned_with_the_build_cache_skipped_says_so_with_nothing_after_it():
    reclaimed = storage_full.storage_reclaimed(dict(NOTHING_RAN, docker_images=dict(IMAGES_PRUNED, stdout_lines=[])), MEASURED)
    assert reclaimed["docker"] == "images: ; build cache: "


def test_rows_counted_in_check_mode_report_none_deleted():
    check = looped(count(OLD_MEDIA, 40, 73728000))
    assert storage_full.storage_reclaimed(dict(NOTHING_RAN, expired_rows=check), MEASURED)["expired_rows"] == ["old_media_rows | 0 | 0.00 Bytes"]
