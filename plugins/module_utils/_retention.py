# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Grandfather-father-son pruning of backup sets. PRIVATE to the collection: no compatibility promise.

Pure standard library, no Ansible imports: the `backup_retention` module and host-side tools share it.

A backup SET is every entry of the backup directory named `<prefix><stamp><rest>`, `<stamp>` being `YYYY-MM-DD`
optionally followed by `THHMMSSZ` or `THHMMZ`; entries with the same stamp (a dump and its manifest) are kept or
removed together. Retention is COUNT-based, like restic's `forget --keep-daily/--keep-monthly`: a day, month or
year counts only if it has a backup, so when backups stop the old ones are never all deleted (which is what
`find -mtime +N -delete` does).
"""
from __future__ import annotations

import datetime
import os
import re
import stat
import time
from collections import namedtuple

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

# The time part is optional; the stamp must not run on into letters or digits (`db-2026-11-22T0315.sql` has a
# malformed time, `db-2026-11-221` no date), so such names are reported as ignored instead of being misdated.
_STAMP = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<time>\d{4}(?:\d{2})?)Z)?(?![A-Za-z0-9])")
PARTIAL_SUFFIX = ".partial"
REASONS = ("daily", "monthly", "yearly", "newest")


class RetentionError(ValueError):
    """Invalid input; raised before anything is removed."""


class Stamp(namedtuple("Stamp", "text day seconds")):
    """A parsed stamp: its text as written, its calendar day and, if it has a time part, seconds after midnight."""

    __slots__ = ()

    @property
    def sort_key(self):
        # A date-only stamp sorts before every timed stamp of the same day; equal instants written differently
        # (T0315Z and T031500Z) are told apart by their text so the order is total.
        return (self.day, -1 if self.seconds is None else self.seconds, self.text)


class Plan(namedtuple("Plan", "path sets kept remove stale_partials ignored")):
    """What a retention run does in the directory `path`.

    sets: {stamp text: [entry names]} of every set found; kept: [(stamp text, [reasons])] newest first;
    remove: stamp texts of the sets to remove, oldest first; stale_partials: names of stale partial entries;
    ignored: names starting with the prefix that are not a backup set.
    """

    __slots__ = ()


def parse_stamp(text):
    """The Stamp at the start of `text` (a name with its prefix cut off), or None if it does not parse."""
    match = _STAMP.match(text)
    if not match:
        return None
    try:
        day = datetime.date(*(int(part) for part in match.group("date").split("-")))
        seconds = None
        if match.group("time"):
            clock = match.group("time")
            moment = datetime.time(int(clock[0:2]), int(clock[2:4]), int(clock[4:6] or 0))
            seconds = moment.hour * 3600 + moment.minute * 60 + moment.second
    except ValueError:  # 2026-02-30, 25:00 and the like
        return None
    return Stamp(match.group(0), day, seconds)


def select(stamps, keep_daily, keep_monthly, keep_yearly):
    """The stamps to keep and why: [(stamp text, [reasons])], newest first.

    `stamps` are stamp texts or Stamps. The newest set is always kept. The first `keep_daily` distinct days
    (newest first, only days with a backup count) keep all their sets; each of the first `keep_monthly`
    months and `keep_yearly` years keeps its newest set.
    """
    parsed = [stamp if isinstance(stamp, Stamp) else _parse_whole(stamp) for stamp in stamps]
    ordered = sorted(set(parsed), key=lambda stamp: stamp.sort_key, reverse=True)
    reasons = {}
    daily_days = set(list(dict.fromkeys(stamp.day for stamp in ordered))[:keep_daily])
    for stamp in ordered:
        if stamp.day in daily_days:
            reasons.setdefault(stamp, []).append("daily")
    for reason, period, count in (("monthly", lambda day: (day.year, day.month), keep_monthly),
                                  ("yearly", lambda day: day.year, keep_yearly)):
        for stamp in _newest_of_each(ordered, period, count):
            reasons.setdefault(stamp, []).append(reason)
    if ordered:
        reasons.setdefault(ordered[0], []).append("newest")
    return [(stamp.text, reasons[stamp]) for stamp in ordered if stamp in reasons]


def _parse_whole(text):
    stamp = parse_stamp(text)
    if stamp is None or stamp.text != text:
        raise RetentionError("%r is not a backup stamp (YYYY-MM-DD, optionally followed by THHMMSSZ or THHMMZ)" % text)
    return stamp


def _newest_of_each(ordered, period, count):
    """The newest stamp of each of the `count` newest periods that have one (`ordered` is newest first)."""
    newest = {}
    for stamp in ordered:
        newest.setdefault(period(stamp.day), stamp)
    return list(newest.values())[:count]


def validate(prefix, keep_daily, keep_monthly, keep_yearly, stale_partial_hours):
    if not prefix or "/" in prefix:
        raise RetentionError("prefix %r is not valid: it must be a non-empty file name prefix without '/'" % prefix)
    if keep_daily < 1:
        raise RetentionError("keep_daily must be at least 1 (got %d): the newest backups are always kept" % keep_daily)
    for name, value in (("keep_monthly", keep_monthly), ("keep_yearly", keep_yearly),
                        ("stale_partial_hours", stale_partial_hours)):
        if value < 0:
            raise RetentionError("%s must not be negative (got %d)" % (name, value))


def plan(path, prefix, keep_daily, keep_monthly, keep_yearly, stale_partial_hours, now=None):
    """Decide, without touching anything, what a retention run in the directory `path` removes."""
    validate(prefix, keep_daily, keep_monthly, keep_yearly, stale_partial_hours)
    now = time.time() if now is None else now
    sets, stamps, stale_partials, ignored = {}, {}, [], []
    try:
        dir_fd = _fileio.open_dir(path)
    except FileNotFoundError:
        raise RetentionError("backup directory %s does not exist" % path) from None
    except NotADirectoryError:
        raise RetentionError("backup directory %s is not a directory" % path) from None
    except OSError as exc:
        raise RetentionError("cannot open backup directory %s: %s" % (path, exc)) from exc
    try:
        for name in sorted(_fileio.listdir_at(dir_fd)):
            if name.startswith("." + prefix) or (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
                if now - os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime > stale_partial_hours * 3600:
                    stale_partials.append(name)
                continue
            if not name.startswith(prefix):
                continue
            stamp = parse_stamp(name[len(prefix):])
            if stamp is None:
                ignored.append(name)
                continue
            sets.setdefault(stamp.text, []).append(name)
            stamps[stamp.text] = stamp
    except OSError as exc:
        raise RetentionError("cannot read backup directory %s: %s" % (path, exc)) from exc
    finally:
        os.close(dir_fd)
    kept = select(stamps.values(), keep_daily, keep_monthly, keep_yearly)
    kept_texts = {text for text, _reasons in kept}
    remove = [stamp.text for stamp in sorted(stamps.values(), key=lambda stamp: stamp.sort_key)
              if stamp.text not in kept_texts]
    return Plan(path, sets, kept, remove, stale_partials, ignored)


def planned_removals(retention_plan):
    """(paths of the set entries, paths of the stale partials) the plan removes, in removal order."""
    entries = [os.path.join(retention_plan.path, name)
               for text in retention_plan.remove for name in retention_plan.sets[text]]
    partials = [os.path.join(retention_plan.path, name) for name in retention_plan.stale_partials]
    return entries, partials


def diff(retention_plan):
    """Ansible's diff of a plan: the stamps of the sets before and after, oldest first, one a line."""
    before = sorted(retention_plan.sets, key=lambda text: _parse_whole(text).sort_key)
    kept = {text for text, _reasons in retention_plan.kept}
    return {"before": "\n".join(before), "after": "\n".join(text for text in before if text in kept)}


def apply(retention_plan):
    """Remove what the plan says, oldest set first, going on past failures.

    Returns (removed set entry paths, removed partial paths, [(path, error text)] of entries that could not be
    removed). An entry that is already gone (removed by someone else meanwhile) is neither removed nor failed.
    """
    removed, removed_partials, failures = [], [], []
    entries, partials = planned_removals(retention_plan)
    for paths, done in ((entries, removed), (partials, removed_partials)):
        for path in paths:
            try:
                _fileio.remove(path)  # a symlink is unlinked, a directory removed without following links
            except FileNotFoundError:
                continue
            except OSError as exc:
                failures.append((path, exc.strerror or str(exc)))
                continue
            done.append(path)
    return removed, removed_partials, failures


def freed_bytes(paths):
    """Allocated bytes (st_blocks * 512) that removing `paths` frees: entries and everything below a directory,
    symlinks never followed; a hard-linked file only when all its names are among them (a media snapshot shares
    its unchanged files with the next one: removing it frees only what no other snapshot links). An entry that
    cannot be read counts 0."""
    total, links = 0, {}

    def count(info):
        nonlocal total
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            key = (info.st_dev, info.st_ino)
            links[key] = links.get(key, 0) + 1
            if links[key] == info.st_nlink:
                total += info.st_blocks * 512
            return
        total += info.st_blocks * 512

    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        count(info)
        if not stat.S_ISDIR(info.st_mode):
            continue
        for top, dirs, files in os.walk(path, followlinks=False):
            for name in dirs + files:
                try:
                    count(os.lstat(os.path.join(top, name)))
                except OSError:
                    continue
    return total
