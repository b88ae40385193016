# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service's media directory: nightly hard-linked snapshots, and files checked against media_objects.
PRIVATE to the collection: no compatibility promise.

Snapshots are the seeds' `rsync -aH --link-dest=<yesterday>`: a file unchanged since the previous snapshot is a
hard link to it and costs no space. rsync writes into a hidden partial directory that is renamed into place only
once complete and flushed, so a name `<prefix><stamp>` always holds a whole snapshot. A partial directory left by
a crash is removed, never reused: rsync would fix a changed mode or owner in place on a file hard-linked into the
previous snapshot, changing that snapshot too. rsync is given the partial directory by name, so the backup
directory must be one only root can write to: in any other, a symlink planted at that name would redirect root's
copy. Partial and replaced snapshots are removed without following a link (_fileio.remove).

Verification reads a sample of media_objects (storage_path, sha256, size_bytes) and checks each file under the
media directory, refusing paths that lead out of it. Pure Python: host-side jobs import it too.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _pg, _pg_backup, _retention

# rsync exit status for "some source files vanished before they could be transferred": a live media directory
# loses files while it is copied; the snapshot is still consistent with the directory at some moment per file.
RSYNC_VANISHED = 24
STATS = {
    "files_total": re.compile(r"^Number of files: .*\breg: (\d+)", re.M),
    "files_transferred": re.compile(r"^Number of regular files transferred: (\d+)", re.M),
    "bytes_transferred": re.compile(r"^Total transferred file size: (\d+)", re.M),
}
PROBLEMS = ("missing", "size", "sha256", "unsafe_path", "invalid_row")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}\Z")
# What a snapshot name's prefix may not hold: a path separator, control characters (NUL included).
BAD_PREFIX = re.compile("[/\x00-\x1f\x7f]")
MAX_LISTED_PROBLEMS = 100
SEED_SCALE = 2 ** 31  # setseed() takes -1..1; seeds are integers within ±2^31


class MediaError(Exception):
    """Invalid input or a failed operation; raised before anything is changed, or after undoing it."""


# ------------------------------------------------------------------------------------------------ snapshots
def check_stamp(stamp):
    """The parsed stamp (pg_backup's format, and a real calendar date and time), else MediaError."""
    parsed = _retention.parse_stamp(stamp) if _pg_backup.STAMP.match(stamp) else None
    if parsed is None or parsed.text != stamp:
        raise MediaError("stamp %r is not YYYY-MM-DD or YYYY-MM-DDTHHMMSSZ" % stamp)
    return parsed


def snapshots(dest, prefix):
    """{stamp text: Stamp} of the complete snapshots in `dest`: real directories named exactly `<prefix><stamp>`."""
    found = {}
    for entry in os.scandir(dest):
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        parsed = _retention.parse_stamp(entry.name[len(prefix):])
        if parsed is not None and prefix + parsed.text == entry.name:
            found[parsed.text] = parsed
    return found


def previous_snapshot(dest, prefix, stamp):
    """Path of the newest snapshot older than `stamp` (a missing day falls back to the one before), or None."""
    current = check_stamp(stamp)
    older = [parsed for parsed in snapshots(dest, prefix).values() if parsed.sort_key < current.sort_key]
    if not older:
        return None
    return os.path.join(dest, prefix + max(older, key=lambda parsed: parsed.sort_key).text)


def resolve_link_dest(link_dest, dest, prefix, stamp, final):
    """Absolute path of the snapshot to hard-link unchanged files from, or None (`none`, or no earlier snapshot)."""
    if link_dest == "none":
        return None
    if link_dest == "auto":
        return previous_snapshot(dest, prefix, stamp)
    path = os.path.abspath(link_dest)
    if not os.path.isdir(path):
        raise MediaError("link_dest %s is not a directory (use auto, none or an existing snapshot)" % link_dest)
    if os.path.realpath(path) == os.path.realpath(final):
        raise MediaError("link_dest %s is the snapshot being written" % link_dest)
    return path


def rsync_argv(rsync, src, target, link_dest, dry_run=False):
    argv = [rsync, "-aH", "--delete", "--stats", "--no-human-readable"]
    if dry_run:
        argv.append("--dry-run")
    if link_dest:
        argv.append("--link-dest=" + link_dest)
    # Trailing slashes: the contents of src become the contents of target.
    return argv + [os.path.join(src, ""), os.path.join(target, "")]


def run_rsync(argv):
    """Run rsync; returns ({files_total, files_transferred, bytes_transferred}, [warnings])."""
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    warnings = []
    if res.returncode == RSYNC_VANISHED:
        warnings.append("some media files vanished while the snapshot was taken (rsync exit 24); they are not in it")
    elif res.returncode != 0:
        lines = [line.strip() for line in res.stderr.splitlines() if line.strip()]
        raise MediaError("rsync exited with status %d: %s" % (res.returncode, lines[0] if lines else "no error output"))
    return parse_stats(res.stdout), warnings


def parse_stats(text):
    stats = {}
    for key, pattern in STATS.items():
        match = pattern.search(text)
        # rsync leaves `reg:` out of "Number of files" when there are no regular files.
        stats[key] = int(match.group(1)) if match else 0
    return stats


def regular_files(root):
    """Number of regular files under `root` (symlinks not followed), as rsync's `reg:` counts them."""
    count = 0
    for current, dirs, files in os.walk(root):
        for name in files + dirs:
            if stat.S_ISREG(os.lstat(os.path.join(current, name)).st_mode):
                count += 1
    return count


def remove_leftover(path):
    _fileio.remove(path)


def _check_dirs(src, dest):
    if not os.path.exists(src):
        raise MediaError("media directory %s does not exist" % src)
    if not os.path.isdir(src):
        raise MediaError("media directory %s is not a directory" % src)
    if not os.path.isdir(dest):
        raise MediaError("backup directory %s does not exist or is not a directory" % dest)
    fd = _fileio.open_dir(dest)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if info.st_uid not in (0, os.geteuid()):
        raise MediaError("backup directory %s belongs to uid %d, not root: its owner could plant a symlink that "
                         "redirects the snapshot" % (dest, info.st_uid))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise MediaError("backup directory %s is writable by others (mode %04o): a symlink planted there would redirect "
                         "the snapshot; make it root's alone (0700)" % (dest, stat.S_IMODE(info.st_mode)))
    real_src, real_dest = os.path.realpath(src), os.path.realpath(dest)
    if os.path.commonpath([real_src, real_dest]) == real_src:
        raise MediaError("backup directory %s is inside the media directory %s: the snapshot would contain itself"
                         % (dest, src))


def snapshot(src, dest, prefix="media-", stamp=None, link_dest="auto", force=False, check_mode=False):
    """Snapshot `src` into `dest/<prefix><stamp>`; returns the result dict (changed, path, link_dest, counts...)."""
    if not prefix or BAD_PREFIX.search(prefix) or prefix.startswith("."):
        raise MediaError("prefix %r is not valid: it must be a non-empty file name prefix without '/' or control "
                         "characters, not starting with '.' (hidden names are partial snapshots)" % prefix)
    stamp = stamp or _pg_backup.utc_now().strftime("%Y-%m-%d")
    check_stamp(stamp)
    # Absolute paths: rsync never takes a relative path starting with "-" for an option.
    src, dest = os.path.abspath(src), os.path.abspath(dest)
    _check_dirs(src, dest)
    final = os.path.join(dest, prefix + stamp)
    partial = _fileio.partial_name(final)
    replaced = os.path.join(dest, ".%s.replaced" % os.path.basename(final))
    result = dict(path=final, link_dest=None, files_transferred=0, bytes_transferred=0, warnings=[])
    if os.path.lexists(final):
        if not os.path.isdir(final) or os.path.islink(final):
            raise MediaError("%s exists and is not a snapshot directory" % final)
        if not force:
            return dict(result, changed=False, files_total=regular_files(final), msg="%s already exists" % final)
    rsync = shutil.which("rsync")
    if rsync is None:
        raise MediaError("rsync is not installed")
    previous = resolve_link_dest(link_dest, dest, prefix, stamp, final)
    result["link_dest"] = previous
    verb = "replace" if os.path.exists(final) else "create"

    if check_mode:
        # A dry run into an absent directory, as the real run writes into a fresh one; rsync creates nothing.
        stats, _unused = run_rsync(rsync_argv(rsync, src, partial + ".dry-run", previous, dry_run=True))
        return dict(result, changed=True, msg="would %s %s, copying %d of %d files (%d bytes)" % (
            verb, final, stats["files_transferred"], stats["files_total"], stats["bytes_transferred"]), **stats)

    remove_leftover(partial)
    remove_leftover(replaced)
    try:
        stats, warnings = run_rsync(rsync_argv(rsync, src, partial, previous))
        # The files' data on disk before the name says the snapshot is complete (syncfs of the backup filesystem).
        synced = subprocess.run(["sync", "-f", partial], capture_output=True, text=True, check=False)
        if synced.returncode != 0:
            raise MediaError("sync -f %s failed: %s" % (partial, synced.stderr.strip() or "no error output"))
    except (MediaError, OSError) as exc:
        _remove_quietly(partial)
        raise MediaError("%s; the partial snapshot was removed" % exc)
    try:
        if verb == "replace":
            os.rename(final, replaced)
            try:
                os.rename(partial, final)
            except OSError:
                os.rename(replaced, final)
                raise
        else:
            os.rename(partial, final)
    except OSError as exc:
        _remove_quietly(partial)
        raise MediaError("cannot rename %s into place (%s); the partial snapshot was removed" % (final, exc.strerror or exc))
    _fileio.fsync_dir(dest)
    if verb == "replace":
        try:
            _fileio.remove(replaced)
        except OSError as exc:
            warnings.append("the new snapshot is in place, but the one it replaced, %s, could not be removed: %s" % (replaced, exc))
    return dict(result, changed=True, warnings=warnings, msg="%sd %s, copied %d of %d files (%d bytes)" % (
        verb, final, stats["files_transferred"], stats["files_total"], stats["bytes_transferred"]), **stats)


def _remove_quietly(path):
    """Remove a partial snapshot on the way out of a failure (never through a link); the failure is what counts."""
    try:
        _fileio.remove(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------- verification
def parse_sample(value):
    """`all`, or a positive integer (given as int or digits)."""
    text = str(value).strip()
    if text == "all":
        return "all"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise MediaError("sample %r is not a positive integer or 'all'" % value)


def sample_sql(sample, seed=None):
    """SQL selecting the rows to check; storage_path hex-encoded so no byte of it can break the row format."""
    select = "SELECT encode(convert_to(storage_path, 'UTF8'), 'hex'), sha256, size_bytes FROM media_objects"
    if sample == "all":
        return select + " ORDER BY id"
    sql = select + " ORDER BY random(), id LIMIT %d" % sample
    if seed is not None:
        if not -SEED_SCALE <= seed <= SEED_SCALE:
            raise MediaError("seed %d is out of range (-2^31 .. 2^31)" % seed)
        # Same session, before the SELECT: random() then draws the same sequence, hence the same rows.
        sql = "DO $$BEGIN PERFORM setseed(%d::float8 / %d); END$$;\n%s" % (seed, SEED_SCALE, sql)
    return sql


def check_file(root, storage_path, sha256, size):
    """The problem of one media_objects row (one of PROBLEMS), or None when the file is there and intact.

    `root` is the real path of the media directory; a path that is absolute, has a `..` component or resolves
    (through symlinks) outside it is never opened.
    """
    if not isinstance(storage_path, str) or not isinstance(sha256, str) or not SHA256_HEX.match(sha256) \
            or not isinstance(size, int) or size < 0:
        return "invalid_row"
    if not storage_path or os.path.isabs(storage_path) or ".." in storage_path.split("/"):
        return "unsafe_path"
    path = os.path.realpath(os.path.join(root, storage_path))
    if os.path.commonpath([root, path]) != root:
        return "unsafe_path"
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if not stat.S_ISREG(info.st_mode):
        return "missing"
    if info.st_size != size:
        return "size"
    try:
        # The resolved path, opened without following a link: one swapped in since it was resolved is not read.
        fd = _fileio.open_file(path)
    except _fileio.UnsafePathError:
        return "unsafe_path"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise MediaError("cannot read %s: %s" % (path, exc.strerror or exc))
    try:
        digest = hashlib.sha256()
        for chunk in iter(lambda: os.read(fd, _fileio.CHUNK), b""):
            digest.update(chunk)
    except OSError as exc:
        raise MediaError("cannot read %s: %s" % (path, exc.strerror or exc))
    finally:
        os.close(fd)
    return "sha256" if digest.hexdigest() != sha256.lower() else None


def verify(runtime, db, media_dir, sample=100, seed=None):
    """Check a sample of media_objects against the files; returns the result dict (never changes anything)."""
    sample = parse_sample(sample)
    if not os.path.isdir(media_dir):
        raise MediaError("media directory %s does not exist or is not a directory" % media_dir)
    sql = sample_sql(sample, seed)
    try:
        total_rows = int(runtime.scalar("SELECT count(*) FROM media_objects", db))
        rows = runtime.query(sql, db)
    except _pg.PgError as exc:
        raise MediaError("cannot read media_objects of %s: %s" % (db, exc))
    root = os.path.realpath(media_dir)
    problems = []
    for path_hex, sha256, size in rows:
        storage_path = bytes.fromhex(path_hex).decode("utf-8") if path_hex is not None else None
        problem = check_file(root, storage_path, sha256, int(size) if size is not None and size.lstrip("-").isdigit() else None)
        if problem is not None:
            problems.append(dict(storage_path=storage_path, problem=problem))
    return dict(changed=False, sample=sample, total_rows=total_rows, checked=len(rows), ok=len(rows) - len(problems),
                problems=problems[:MAX_LISTED_PROBLEMS], problems_total=len(problems))
