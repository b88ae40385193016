# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What fills a filesystem and what could be reclaimed (storage_info). PRIVATE to the collection: no compatibility
promise. Read-only: it lists directories and stats entries, never opens a file's contents, never changes anything.

Each filesystem holding one of the given paths is described with os.statvfs (space and inodes, as `df` and `df -i`
count them) and /proc/self/mountinfo (mount point, device, type). Then it is walked from its mount point like
`du -x`: sizes are allocated bytes (st_blocks * 512), a directory's size is everything beneath it, another mount is
never entered (st_dev differs), symlinks are never followed, a hard-linked file and a directory reached twice (a bind
mount of the same filesystem) count once. The walk keeps only the N largest files and directories (heaps), lists one
directory at a time (one open descriptor whatever the depth) and stops at `max_entries` entries or at the deadline,
saying `truncated`. An entry that vanishes or a directory that cannot be listed is counted in `unreadable`.

Candidates are measured only when asked: rotated logs by name under the given directories (never a current log),
docker's dangling images and unused build cache from `docker system df -v`, the journal from `journalctl --disk-usage`.
A tool that is missing or fails makes its candidate skipped, with the reason; it never fails the run.
"""
from __future__ import annotations

import datetime
import heapq
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import time

MOUNTINFO = "/proc/self/mountinfo"
MAX_PATHS = 32
MAX_LARGEST = 1000
MAX_ENTRIES = 10 ** 9
MAX_TIMEOUT = 86400
COMMAND_TIMEOUT = 60  # seconds one docker or journalctl command may take
MAX_OUTPUT = 64 << 20  # bytes of a command's output read (docker system df -v lists every image and cache record)
CANDIDATES = ("rotated_logs", "docker", "journal")

# A rotated log by its name: logrotate's numbered (`syslog.1`, `app.log.12`), dated (`dateext`: `syslog-20260101`),
# `.old` and compressed (`.gz`, `.xz`, `.zst`, `.bz2`, also after a number: `syslog.2.gz`) files. A current log
# (`app.log`, `syslog`, `messages`) ends in none of these.
ROTATED = re.compile(r".+(\.[0-9]+|\.old|-[0-9]{8}|\.(gz|xz|zst|bz2))", re.DOTALL)
# The same test for find(1), whose -regex matches the whole path: the last component only.
ROTATED_FIND = r".*/[^/]+(\.[0-9]+|\.old|-[0-9]{8}|\.(gz|xz|zst|bz2))"
JOURNAL_VACUUM = "journalctl --vacuum-size=100M"


class StorageError(Exception):
    """A refused option: the message says which and why; nothing was read."""


# ------------------------------------------------------------------------------------------------- options
def _whole(name, value, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise StorageError("%s is %r: a whole number from %d to %d" % (name, value, minimum, maximum))
    return value


def _absolute(name, paths, maximum=MAX_PATHS):
    if not isinstance(paths, list):
        raise StorageError("%s is %r: a list of absolute paths" % (name, paths))
    if len(paths) > maximum:
        raise StorageError("%s names %d paths: at most %d" % (name, len(paths), maximum))
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise StorageError("%s: %r is not an absolute path" % (name, path))
    return paths


_TRUE, _FALSE = ("true", "yes", "on", "1", "y", "t"), ("false", "no", "off", "0", "n", "f")


def _flag(name, value):
    """A boolean of `candidates`, which Ansible does not convert (a dict option with its own keys): true/false as YAML
    and Jinja write them."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE + _FALSE:
        return str(value).strip().lower() in _TRUE
    raise StorageError("%s is %r: true or false" % (name, value))


def check_params(params):
    """The options, `candidates` completed ({rotated_logs: [...], docker: bool, journal: bool}), once each is valid;
    StorageError otherwise, before anything is read."""
    if not _absolute("paths", params["paths"]):
        raise StorageError("paths is empty: name at least one path")
    _whole("largest", params["largest"], 0, MAX_LARGEST)
    _whole("max_entries", params["max_entries"], 1, MAX_ENTRIES)
    _absolute("exclude", params["exclude"], maximum=1000)
    _whole("threshold_percent", params["threshold_percent"], 0, 100)
    _whole("timeout", params["timeout"], 1, MAX_TIMEOUT)
    candidates = params.get("candidates") or {}
    if not isinstance(candidates, dict):
        raise StorageError("candidates is %r: a dict with rotated_logs, docker and journal" % (candidates,))
    unknown = sorted(str(key) for key in set(candidates) - set(CANDIDATES))
    if unknown:
        raise StorageError("candidates: %s unknown (rotated_logs, docker and journal are)" % ", ".join(map(repr, unknown)))
    logs = candidates.get("rotated_logs") or []
    checked = dict(rotated_logs=_absolute("candidates.rotated_logs", [logs] if isinstance(logs, str) else logs),
                   docker=_flag("candidates.docker", candidates.get("docker")),
                   journal=_flag("candidates.journal", candidates.get("journal")))
    return dict(params, candidates=checked)


# ------------------------------------------------------------------------------------------------- display
def shown(path):
    """A path as on disk, for JSON: a byte that is not UTF-8 becomes `\\xNN` (os.scandir hands it over as a
    surrogate, which JSON and Ansible's controller cannot carry); any other character, newline included, stays."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def one_line(text):
    """`text` for the one-line message: control characters escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in shown(text))


def human(count):
    """Bytes in binary units, as `du -h` (1.5 GiB)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return "%d B" % count if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024
    return "%d B" % count  # not reached


def _iso(seconds):
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------- mounts
def _unescape(field):
    # The kernel writes a space, tab, newline and backslash in a mount point as \040, \011, \012, \134.
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), field))


def parse_mountinfo(data):
    """[{'mount', 'device', 'fstype'}] of /proc/self/mountinfo's bytes, in its order (a later mount on the same point
    hides the earlier). Fields: id parent major:minor root mount-point options [optional...] - fstype source super."""
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if b"-" not in fields or len(fields) < 7:
            continue
        tail = fields[fields.index(b"-") + 1:]
        mounts.append(dict(mount=_unescape(fields[4]), fstype=_unescape(tail[0]) if tail else None,
                           device=_unescape(tail[1]) if len(tail) > 1 else None))
    return mounts


def read_mountinfo(path=MOUNTINFO):
    try:
        with open(path, "rb") as handle:
            return parse_mountinfo(handle.read())
    except OSError:
        return []


def _beneath(path, mount):
    return mount == "/" or path == mount or path.startswith(mount + "/")


def mount_of(path, device, mounts):
    """The mount entry whose filesystem holds `path` (a real path on `device`): the longest mount point above it
    whose root is on that device. Without a matching entry (no /proc, a btrfs subvolume's own st_dev), the topmost
    directory above `path` still on `device`, with device and type unknown."""
    best = None
    for entry in mounts:
        if _beneath(path, entry["mount"]) and (best is None or len(entry["mount"]) >= len(best["mount"])):
            best = entry
    try:
        if best is not None and os.stat(best["mount"]).st_dev == device:
            return best
    except OSError:
        pass
    current = path
    while current != "/":
        parent = os.path.dirname(current)
        if os.stat(parent).st_dev != device:
            break
        current = parent
    return dict(mount=current, device=None, fstype=None)


def describe(path, info, mounts, threshold):
    """The filesystem holding `path` (os.stat `info`): mount, device, type, space and inodes as df counts them (used
    percent of what non-root users could have: used / (used + available)), and whether it is full."""
    entry = mount_of(os.path.realpath(path), info.st_dev, mounts)
    fs = os.statvfs(path)
    used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    available = fs.f_bavail * fs.f_frsize
    percent = round(100.0 * used / (used + available), 1) if used + available else 0.0
    inodes_used = fs.f_files - fs.f_ffree
    # A filesystem without an inode table (btrfs, some network filesystems) says 0 inodes: no percent then.
    inodes_percent = round(100.0 * inodes_used / fs.f_files, 1) if fs.f_files else None
    full = percent >= threshold or (inodes_percent is not None and inodes_percent >= threshold)
    size = fs.f_blocks * fs.f_frsize
    return dict(path=shown(path), mount=shown(entry["mount"]), device=entry["device"] and shown(entry["device"]),
                fstype=entry["fstype"] and shown(entry["fstype"]), size_bytes=size, used_bytes=used,
                available_bytes=available, used_percent=percent, inodes=fs.f_files, inodes_used=inodes_used,
                inodes_used_percent=inodes_percent, full=full, size_human=human(size), used_human=human(used),
                available_human=human(available), root=entry["mount"])


# ------------------------------------------------------------------------------------------------- walking
class Budget:
    """How much one walk may do: `max_entries` entries, and until `deadline` (time.monotonic())."""

    def __init__(self, max_entries, deadline):
        self.left = max_entries
        self.deadline = deadline
        self.spent = False

    def take(self):
        """False once the entries or the time are spent (and from then on)."""
        if not self.spent and (self.left <= 0 or time.monotonic() >= self.deadline):
            self.spent = True
        if self.spent:
            return False
        self.left -= 1
        return True


def _keep(heap, size, item):
    """Keep the largest `size` items of heap (a min-heap: the smallest kept is first, pushed out by a larger one)."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def _listing(path, counts):
    """The entries of directory `path`, read whole (its descriptor closed before any is descended into); [] and
    counted unreadable when it cannot be listed (vanished, permission denied)."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError:
        counts["unreadable"] += 1
        return []


def walk(top, largest, budget, exclude=frozenset()):
    """The `largest` largest directories and files of the filesystem of `top`, from `top` down, as `du -x` counts.

    {'largest_dirs': [{path, bytes, bytes_human}], 'largest_files': [{path, bytes, bytes_human, mtime}], 'entries',
    'unreadable', 'truncated'}, largest first. A directory of `exclude` (real paths) is neither counted nor entered."""
    counts = dict(entries=0, unreadable=0)
    dirs, files = [], []
    if top in exclude:
        return dict(largest_dirs=[], largest_files=[], entries=0, unreadable=0, truncated=False)
    info = os.lstat(top)
    device = info.st_dev
    seen_dirs, linked = {(device, info.st_ino)}, set()
    # A frame: [path, bytes so far, subdirectories not yet entered, listed]. Its bytes go to its parent when done.
    stack = [[top, info.st_blocks * 512, [], False]]
    while stack:
        frame = stack[-1]
        if not frame[3]:
            frame[3] = True
            for entry in _listing(frame[0], counts):
                if not budget.take():
                    break
                counts["entries"] += 1
                if entry.path in exclude:
                    continue
                try:
                    entry_info = entry.stat(follow_symlinks=False)
                except OSError:  # vanished since the listing
                    counts["unreadable"] += 1
                    continue
                if entry_info.st_dev != device:  # another filesystem mounted here: never entered
                    continue
                size = entry_info.st_blocks * 512
                key = (entry_info.st_dev, entry_info.st_ino)
                if stat.S_ISDIR(entry_info.st_mode):
                    if key not in seen_dirs:  # reached twice through a bind mount of this filesystem
                        seen_dirs.add(key)
                        frame[2].append((entry.path, size))
                    continue
                if entry_info.st_nlink > 1:
                    if key in linked:
                        continue
                    linked.add(key)
                frame[1] += size
                if stat.S_ISREG(entry_info.st_mode) and largest:
                    _keep(files, largest, (size, entry.path, entry_info.st_mtime))
        if frame[2] and not budget.spent:
            path, size = frame[2].pop()
            stack.append([path, size, [], False])
            continue
        stack.pop()
        if stack:
            stack[-1][1] += frame[1]
        if largest:
            _keep(dirs, largest, (frame[1], frame[0]))
    return dict(
        largest_dirs=[dict(path=shown(path), bytes=size, bytes_human=human(size)) for size, path in sorted(dirs, reverse=True)],
        largest_files=[dict(path=shown(path), bytes=size, bytes_human=human(size), mtime=_iso(mtime))
                       for size, path, mtime in sorted(files, reverse=True)],
        entries=counts["entries"], unreadable=counts["unreadable"], truncated=budget.spent)


# ------------------------------------------------------------------------------------------------- candidates
def candidate(name, size, count, how, detail, skipped=None):
    return dict(name=name, bytes=size, bytes_human=human(size), count=count, how=how, detail=detail, skipped=skipped)


def rotated_logs(directories, budget):
    """Rotated log files (by name, ROTATED) under `directories`, each walked on its own filesystem without following
    a symlink below it, a hard-linked file counted once."""
    count = size = unreadable = 0
    missing, biggest, linked, seen_dirs = [], None, set(), set()
    for top in directories:
        try:
            info = os.stat(top)  # the directory itself may be a symlink (/var/log moved to another disk)
        except OSError:
            missing.append(top)
            continue
        if not stat.S_ISDIR(info.st_mode):
            missing.append(top)
            continue
        pending = [top]
        seen_dirs.add((info.st_dev, info.st_ino))
        while pending and not budget.spent:
            counts = dict(unreadable=0)
            for entry in _listing(pending.pop(), counts):
                if not budget.take():
                    break
                try:
                    entry_info = entry.stat(follow_symlinks=False)
                except OSError:
                    counts["unreadable"] += 1
                    continue
                key = (entry_info.st_dev, entry_info.st_ino)
                if entry_info.st_dev != info.st_dev:
                    continue
                if stat.S_ISDIR(entry_info.st_mode):
                    if key not in seen_dirs:
                        seen_dirs.add(key)
                        pending.append(entry.path)
                elif stat.S_ISREG(entry_info.st_mode) and ROTATED.fullmatch(entry.name):
                    if entry_info.st_nlink > 1:
                        if key in linked:
                            continue
                        linked.add(key)
                    count += 1
                    size += entry_info.st_blocks * 512
                    if biggest is None or entry_info.st_blocks * 512 > biggest[0]:
                        biggest = (entry_info.st_blocks * 512, entry.path)
            unreadable += counts["unreadable"]
    searched = [path for path in directories if path not in missing]
    detail = "%d rotated log file%s in %s" % (count, "" if count == 1 else "s", ", ".join(map(shown, searched)) or "no directory")
    if biggest:
        detail += "; the largest %s (%s)" % (shown(biggest[1]), human(biggest[0]))
    if missing:
        detail += "; not a directory: %s" % ", ".join(map(shown, missing))
    if unreadable:
        detail += "; %d unreadable" % unreadable
    if budget.spent:
        detail += "; the walk was cut short (max_entries or timeout): there may be more"
    how = "find -H %s -xdev -type f -regextype posix-extended -regex %s -delete" % (
        " ".join(shlex.quote(path) for path in searched) or "<directory>", shlex.quote(ROTATED_FIND))
    return candidate("rotated_logs", size, count, how, detail)


class Skip(Exception):
    """A candidate cannot be measured: the message says why."""


def _command(argv, deadline):
    """stdout of `argv` that exited 0; Skip when its program is not on PATH, fails or does not answer in time."""
    program = shutil.which(argv[0])
    if program is None:
        raise Skip("%s is not on PATH" % argv[0])
    limit = min(COMMAND_TIMEOUT, deadline - time.monotonic())
    if limit < 1:
        raise Skip("the run's timeout was spent before %s ran" % argv[0])
    try:
        res = subprocess.run([program] + argv[1:], capture_output=True, timeout=limit, check=False, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", PAGER="cat"))
    except subprocess.TimeoutExpired:
        raise Skip("%s did not answer within %d s" % (" ".join(argv[:3]), limit)) from None
    except OSError as exc:
        raise Skip("cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None
    if res.returncode != 0:
        lines = res.stderr.decode("utf-8", "replace").strip().splitlines() or ["(no message)"]
        raise Skip("%s exited %d: %s" % (" ".join(argv[:3]), res.returncode, lines[0][:200]))
    return res.stdout[:MAX_OUTPUT].decode("utf-8", "replace")


# go-units HumanSize (docker): decimal units, 3 or 4 significant digits, `%g` (so 999.5 kB may read `1e+03kB`).
_DOCKER_SIZE = re.compile(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kKMGTPEZY]?)i?B\s*")
_DECIMAL = {"": 1, "k": 1000, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4, "P": 1000 ** 5, "E": 1000 ** 6,
            "Z": 1000 ** 7, "Y": 1000 ** 8}


def docker_size(text):
    """Bytes of a size as docker prints it (`0B`, `12.3kB`, `1.23GB`), or None (`N/A`)."""
    match = _DOCKER_SIZE.fullmatch(text or "")
    return int(float(match.group(1)) * _DECIMAL[match.group(2)]) if match else None


def parse_docker_df(text):
    """{'dangling', 'dangling_count', 'unused_tagged', 'cache', 'cache_count'} from `docker system df -v --format
    '{{json .}}'` (one JSON object: Images, Containers, Volumes, BuildCache, sizes as docker prints them).

    dangling: the unique size (layers no other image shares) of the untagged images no container uses, what
    `docker image prune` frees; unused_tagged: the same for tagged images (only `docker image prune --all` frees
    them: not counted as reclaimable). cache: the build cache records neither in use nor shared, what docker itself
    reports as the build cache's reclaimable size and `docker builder prune --all` frees."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    found = dict(dangling=0, dangling_count=0, unused_tagged=0, cache=0, cache_count=0)
    for image in data.get("Images") or []:
        if str(image.get("Containers")) != "0":
            continue  # used by a container, or unknown (N/A): no prune removes it
        unique = docker_size(image.get("UniqueSize"))
        if unique is None:
            unique = docker_size(image.get("Size")) or 0
        if image.get("Repository") == "<none>" and image.get("Tag") == "<none>":
            found["dangling"] += unique
            found["dangling_count"] += 1
        else:
            found["unused_tagged"] += unique
    for record in data.get("BuildCache") or []:
        if str(record.get("InUse")).lower() == "false" and str(record.get("Shared")).lower() == "false":
            found["cache"] += docker_size(record.get("Size")) or 0
            found["cache_count"] += 1
    return found


def docker(deadline):
    """Two candidates: docker's dangling images and its unused build cache."""
    try:
        found = parse_docker_df(_command(["docker", "system", "df", "-v", "--format", "{{json .}}"], deadline))
    except (Skip, ValueError) as exc:
        reason = str(exc) if isinstance(exc, Skip) else "docker system df -v printed no usable JSON: %s" % exc
        return [candidate("docker_dangling_images", 0, 0, "docker image prune --force", "skipped: %s" % reason, reason),
                candidate("docker_build_cache", 0, 0, "docker builder prune --all --force", "skipped: %s" % reason, reason)]
    return [candidate("docker_dangling_images", found["dangling"], found["dangling_count"], "docker image prune --force",
                      "%d untagged image%s no container uses (their unique size, from docker system df -v); unused tagged images "
                      "hold %s more, freed only by docker image prune --all" % (
                          found["dangling_count"], "" if found["dangling_count"] == 1 else "s", human(found["unused_tagged"]))),
            candidate("docker_build_cache", found["cache"], found["cache_count"], "docker builder prune --all --force",
                      "%d build cache record%s neither in use nor shared with an image (docker system df -v)" % (
                          found["cache_count"], "" if found["cache_count"] == 1 else "s"))]


_JOURNAL = re.compile(r"take up ([0-9.]+)\s*([KMGTPE]?)B?\b")
_BINARY = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5, "E": 1024 ** 6}


def parse_journal_usage(text):
    """Bytes of `journalctl --disk-usage` (`Archived and active journals take up 1.2G in the file system.`; older
    systemd: `Journals take up 24.0M on disk.`), binary units as systemd prints them."""
    match = _JOURNAL.search(text)
    if not match:
        raise ValueError("no size in %r" % text.strip()[:200])
    return int(float(match.group(1)) * _BINARY[match.group(2)])


def journal(deadline):
    how = JOURNAL_VACUUM
    try:
        size = parse_journal_usage(_command(["journalctl", "--disk-usage"], deadline))
    except (Skip, ValueError) as exc:
        reason = str(exc) if isinstance(exc, Skip) else "journalctl --disk-usage: %s" % exc
        return candidate("journal", 0, 0, how, "skipped: %s" % reason, reason)
    return candidate("journal", size, 1 if size else 0, how,
                     "the journal files take up %s (journalctl --disk-usage); vacuuming removes archived files only, the "
                     "active ones stay" % human(size))


# ------------------------------------------------------------------------------------------------- the run
def _summary(fs):
    text = "%s %s%% used (%s free" % (one_line(fs["mount"]), fs["used_percent"], fs["available_human"])
    if fs["inodes_used_percent"] is not None:
        text += ", inodes %s%%" % fs["inodes_used_percent"]
    return text + (")%s" % (", FULL" if fs["full"] else ""))


def run(params):
    """The result of storage_info for checked `params`: filesystems, candidates, reclaimable_bytes, full, missing."""
    deadline = time.monotonic() + params["timeout"]
    mounts = read_mountinfo()
    exclude = frozenset(os.path.realpath(path) for path in params["exclude"])
    filesystems, missing, seen = [], [], set()
    for path in params["paths"]:
        try:
            info = os.stat(path)
        except OSError:
            missing.append(shown(path))
            continue
        if info.st_dev in seen:  # one more path on a filesystem already described
            continue
        seen.add(info.st_dev)
        filesystems.append(describe(path, info, mounts, params["threshold_percent"]))
    wanted = params.get("candidates") or {}
    candidates = []
    if wanted.get("rotated_logs"):
        candidates.append(rotated_logs(wanted["rotated_logs"], Budget(params["max_entries"], deadline)))
    if wanted.get("docker"):
        candidates.extend(docker(deadline))
    if wanted.get("journal"):
        candidates.append(journal(deadline))
    # The walks last: a walk cut short by the deadline still says what it found; a command cut short says nothing.
    for fs in filesystems:
        root = fs.pop("root")
        if params["largest"]:
            fs.update(walk(root, params["largest"], Budget(params["max_entries"], deadline), exclude))
        else:
            fs.update(largest_dirs=[], largest_files=[], entries=0, unreadable=0, truncated=False)
    reclaimable = sum(item["bytes"] for item in candidates)
    full = [fs["mount"] for fs in filesystems if fs["full"]]
    parts = [_summary(fs) for fs in filesystems] or ["no filesystem"]
    if missing:
        parts.append("missing: %s" % ", ".join(one_line(path) for path in missing))
    if candidates:
        parts.append("reclaimable %s (%s)" % (human(reclaimable), ", ".join(
            "%s %s" % (item["name"], "skipped" if item["skipped"] else item["bytes_human"]) for item in candidates)))
    if any(fs["truncated"] for fs in filesystems):
        parts.append("walk truncated on %s" % ", ".join(one_line(fs["mount"]) for fs in filesystems if fs["truncated"]))
    return dict(changed=False, filesystems=filesystems, candidates=candidates, reclaimable_bytes=reclaimable,
                reclaimable_human=human(reclaimable), full=full, missing=missing,
                msg="%s%s" % ("FULL: %s; " % ", ".join(map(one_line, full)) if full else "", "; ".join(parts)))
