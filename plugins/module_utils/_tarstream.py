# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A directory as one deterministic tar stream, and its safe extraction. PRIVATE to the collection: no
compatibility promise.

write_tar() writes a directory (a media snapshot, a directory-format dump) as a PAX tar stream in name order, member
names relative to the directory ('.' is the directory itself), hard links within it kept as links, symbolic links
as links (never followed); a FIFO, socket or device is refused. It returns the tree digest of what it wrote
(_fileio.tree_digest over the regular files, hard links counted as the files they are): the digest
_fileio.sha256_tree computes from the directory on disk, before writing and after extract_tar().

extract_tar() reads such a stream into an empty directory and refuses, with TarStreamError, whatever could write
outside it or through a link: absolute names, '..', a name twice, a hard link to something not extracted before it,
a symbolic link leading out of the directory (also by way of another link), a special file. Modes (without set-id
bits) and mtimes are restored, owners too when running as root.

Pure standard library; no Ansible imports.
"""
from __future__ import annotations

import os
import tarfile

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio


class TarStreamError(Exception):
    """A tree that cannot be written as a tar stream, or a tar stream that is not extracted; in words for the operator."""


def write_tar(root, out):
    """Write the directory `root` as a tar stream (PAX, name order, hard links within it kept) to `out`.

    Member names are relative to `root` ('.' is root itself). Returns the tree digest of its regular files
    (_fileio.tree_digest).
    """
    per_file = {}
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # pylint: disable=consider-using-with
    try:
        for rel, path in _fileio.walk_tree(root):
            info = tar.gettarinfo(path, arcname=rel)
            if info is None or not (info.isdir() or info.isfile() or info.issym() or info.islnk()):
                raise TarStreamError("%s is not a regular file, directory or symbolic link: cannot ship it" % path)
            if info.isfile():
                with os.fdopen(_fileio.open_file(path), "rb") as handle:
                    hashing = _fileio.HashingReader(handle)
                    tar.addfile(info, hashing)
                per_file[rel] = hashing.digest.hexdigest()
            else:
                tar.addfile(info)
                if info.islnk():
                    per_file[rel] = per_file[info.linkname]
    finally:
        tar.close()
    return _fileio.tree_digest(per_file)


def safe_name(name, what):
    """A member name or hard link target as a relative path inside the extraction root, else TarStreamError."""
    if name == ".":
        return name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise TarStreamError("the archive has an unsafe %s %r (absolute, '..' or not normalised): refused" % (what, name))
    return name


def _owner_ids(member):
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel
    try:
        uid = pwd.getpwnam(member.uname).pw_uid
    except KeyError:
        uid = member.uid
    try:
        gid = grp.getgrnam(member.gname).gr_gid
    except KeyError:
        gid = member.gid
    return uid, gid


def _link_inside(name, target, symlinks):
    """Whether symlink `name` -> `target` stays inside the tree: walked from its directory, the target never leaves
    the root and never passes through another symlink of the tree (whose own target would decide where '..' goes)."""
    if target.startswith("/") or not target:
        return False
    parts = name.split("/")[:-1]
    steps = [part for part in target.split("/") if part not in ("", ".")]
    for index, part in enumerate(steps):
        if part == "..":
            if not parts:
                return False
            parts.pop()
            continue
        parts.append(part)
        if index < len(steps) - 1 and "/".join(parts) in symlinks:
            return False
    return True


def extract_tar(stream, root):
    """Extract a tar stream written by write_tar into the existing, empty directory `root`.

    Refuses absolute names, '..', a name twice, links leading out of `root` (also by way of another link), writing
    through a symbolic link and special files. Modes (without set-id bits) and mtimes are restored, owners too when
    running as root.
    """
    as_root = os.geteuid() == 0
    files, symlinks, directories, seen = set(), {}, [], set()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = safe_name(member.name, "member name")
            if name in seen:
                raise TarStreamError("the archive has %r twice: refused" % name)
            seen.add(name)
            parents = name.split("/")[:-1]
            if any("/".join(parents[:depth]) in symlinks for depth in range(1, len(parents) + 1)):
                raise TarStreamError("the archive writes %r through a symbolic link: refused" % name)
            path = os.path.join(root, name)
            if parents:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            if member.isdir():
                os.makedirs(path, mode=0o700, exist_ok=True)
                directories.append((path, member))
                continue
            if name == ".":
                raise TarStreamError("the archive's root entry is not a directory: refused")
            if member.isfile():
                source = tar.extractfile(member)
                with open(path, "xb") as handle:
                    for chunk in iter(lambda: source.read(_fileio.CHUNK), b""):
                        handle.write(chunk)
                files.add(name)
            elif member.islnk():
                target = safe_name(member.linkname, "hard link target")
                if target not in files:
                    raise TarStreamError("the archive links %r to %r, which is not a file extracted before it: refused"
                                         % (name, target))
                os.link(os.path.join(root, target), path)
                continue
            elif member.issym():
                if not _link_inside(name, member.linkname, symlinks):
                    raise TarStreamError("the archive has a symbolic link %r to %r, outside the snapshot: refused"
                                         % (name, member.linkname))
                os.symlink(member.linkname, path)
                symlinks[name] = member.linkname
                continue
            else:
                raise TarStreamError("the archive has a special file %r: refused" % name)
            if as_root:
                os.chown(path, *_owner_ids(member))
            os.chmod(path, member.mode & 0o777)
            os.utime(path, (member.mtime, member.mtime))
    # A link checked before a later link it passes through was known: check them all again, with every link known.
    for name, target in sorted(symlinks.items()):
        if not _link_inside(name, target, symlinks):
            raise TarStreamError("the archive has a symbolic link %r to %r, which leads outside the snapshot through another "
                                 "link: refused" % (name, target))
    # Directories last, deepest first: their mtimes would change with every file written into them. None of them is a
    # link: a name is extracted once, and nothing is written through a link.
    for path, member in reversed(directories):
        if as_root:
            os.chown(path, *_owner_ids(member))
        os.chmod(path, member.mode & 0o777)
        os.utime(path, (member.mtime, member.mtime))
