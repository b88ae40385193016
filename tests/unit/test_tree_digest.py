# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One tree digest: a directory on disk, the tar stream written of it and the tree extracted from that stream digest
the same, however odd the tree; and a digest recorded before (a manifest's `sha256`, an object's `sha256-tree`)
still verifies.

The digest covers the regular files (a hard link as the file it is) by relative path. A symbolic link is skipped
by the digest on both paths (the tar stream carries it, extraction restores it), an empty directory too; a FIFO is
skipped on disk and refused by the tar stream. A directory-format dump holding anything but regular files is refused
before its digest is compared. Real files under tmp_path."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _dumpfile, _fileio, _offsite, _tarstream

# A small tree of regular files and its digest, computed by both definitions the collection had before
# (_fileio.sha256_tree over os.walk, and _offsite's tree digest of a tar stream), which agreed on it: a manifest or
# an off-host object recording it must keep verifying.
OLD_TREE = {
    "toc.dat": b"PGDMP toc\n",
    "3001.dat.gz": b"rows 3001\n" * 3,
    "empty": b"",
    "a-b": b"dash\n",
    "a/x": b"slash\n",
    "nested/deeper/ünïcødé ✓ фото.jpg": b"\xff\xd8 photo",
    "with space/file name.txt": b"spaced\n",
}
OLD_DIGEST = "35da993007756e10055ebd88680a950d44b76e628a365ffc1e925e30936a4d46"
# A directory-format dump as pg_dump writes it (regular files only, one of them empty) and its digest, the same way.
OLD_DUMP = {"toc.dat": b"PGDMP toc\n", "3001.dat.gz": b"rows 3001\n" * 3, "3002.dat.gz": b""}
OLD_DUMP_DIGEST = "f48d7077d8dcdb5b4adc9c54aab0f4371fdb026c639a959d32f104b383b099cb"
NOT_UTF8 = os.fsdecode(b"caf\xe9 latin-1.txt")  # a name that is not UTF-8, as Python sees it (surrogate-escaped)


def write_tree(root: Path, files: dict) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def odd_tree(root: Path) -> Path:
    """Nested directories, an empty directory and file, unicode, spaces and a name that is not UTF-8, names whose walk
    order is not their sorted order, hard links, symbolic links to a file, a directory and nothing."""
    write_tree(root, OLD_TREE)
    (root / NOT_UTF8).write_bytes(b"latin-1 name\n")
    (root / "nested" / "empty dir").mkdir()
    os.link(root / "a" / "x", root / "nested" / "hard link to a-x")
    os.symlink("../toc.dat", root / "nested" / "link to toc")
    os.symlink("deeper", root / "nested" / "link to deeper")
    os.symlink("missing", root / "dangling")
    return root


def tar_of(root: Path) -> tuple[bytes, str]:
    out = io.BytesIO()
    written = _tarstream.write_tar(str(root), out)
    return out.getvalue(), written


def files_in_stream(data: bytes) -> dict:
    """{name: sha256} of the regular files a tar stream holds, read with tarfile alone (hard links as their target)."""
    per_file = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for member in tar:
            if member.isfile():
                per_file[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            elif member.islnk():
                per_file[member.name] = per_file[member.linkname]
    return per_file


def links_in(root: Path) -> dict:
    return {str(path.relative_to(root)): os.readlink(path) for path in root.rglob("*") if path.is_symlink()}


def test_disk_stream_and_extracted_tree_agree_on_an_odd_tree(tmp_path):
    root = odd_tree(tmp_path / "tree")
    on_disk, per_file = _fileio.sha256_tree(str(root))
    data, written = tar_of(root)
    in_stream = files_in_stream(data)
    assert in_stream == per_file
    assert written == _fileio.tree_digest(in_stream) == on_disk
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    _tarstream.extract_tar(io.BytesIO(data), str(extracted))
    assert _fileio.sha256_tree(str(extracted)) == (on_disk, per_file)
    # Covered: every regular file, under each of its names; the symbolic links are not, but the stream carries them.
    assert sorted(per_file) == sorted(list(OLD_TREE) + [NOT_UTF8, "nested/hard link to a-x"])
    assert per_file["nested/hard link to a-x"] == per_file["a/x"] == hashlib.sha256(b"slash\n").hexdigest()
    assert links_in(extracted) == links_in(root) == {"dangling": "missing", "nested/link to deeper": "deeper",
                                                     "nested/link to toc": "../toc.dat"}
    assert (extracted / "nested" / "empty dir").is_dir()
    assert _fileio.tree_files(str(root)) == sorted(per_file)
    assert _fileio.tree_size(str(root)) == sum(len(data) for data in OLD_TREE.values()) + len(b"slash\n") + len(b"latin-1 name\n")


def test_symbolic_links_and_empty_directories_are_skipped_by_the_digest_on_both_paths(tmp_path):
    plain = write_tree(tmp_path / "plain", OLD_TREE)
    odd = write_tree(tmp_path / "odd", OLD_TREE)
    os.symlink("toc.dat", odd / "link to a file")  # followed, it would add toc.dat's content under its name
    os.symlink("nested", odd / "link to a directory")  # followed, it would add nested/ twice
    (odd / "an empty directory").mkdir()
    assert _fileio.sha256_tree(str(odd))[0] == _fileio.sha256_tree(str(plain))[0] == OLD_DIGEST
    assert tar_of(odd)[1] == tar_of(plain)[1] == OLD_DIGEST


def test_a_fifo_is_skipped_on_disk_without_being_opened_and_refused_by_the_tar_stream(tmp_path):
    root = write_tree(tmp_path / "tree", OLD_TREE)
    os.mkfifo(root / "nested" / "fifo")
    found = []
    reader = threading.Thread(target=lambda: found.append(_fileio.sha256_tree(str(root))[0]), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # opening a FIFO for reading waits for a writer: unblock the thread, then fail
        with open(root / "nested" / "fifo", "wb"):
            pass
        pytest.fail("the tree digest opened a FIFO")
    assert found == [OLD_DIGEST]
    with pytest.raises(_tarstream.TarStreamError, match="fifo is not a regular file, directory or symbolic link: cannot ship it"):
        tar_of(root)


def test_a_digest_recorded_by_the_old_definitions_still_verifies(tmp_path):
    root = write_tree(tmp_path / "media-2026-11-22", OLD_TREE)
    assert _fileio.sha256_tree(str(root))[0] == OLD_DIGEST
    assert tar_of(root)[1] == OLD_DIGEST
    dump = write_tree(tmp_path / "db-2026-11-22.dir", OLD_DUMP)
    assert _dumpfile.check_digest(str(dump), "directory", {"sha256": OLD_DUMP_DIGEST}) == OLD_DUMP_DIGEST
    assert tar_of(dump)[1] == OLD_DUMP_DIGEST


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
def test_a_directory_dump_holding_what_its_digest_skips_is_refused(tmp_path, planted):
    """pg_dump writes regular files only: a link (which the digest skips, and pg_restore would read through), a FIFO or
    a subdirectory in a dump is refused before its digest is compared, not taken as part of an intact dump."""
    dump = write_tree(tmp_path / "db-2026-11-22.dir", OLD_DUMP)
    target = tmp_path / "elsewhere.dat"
    target.write_bytes(b"not from pg_dump\n")
    if planted == "symlink":
        os.symlink(target, dump / "3001.dat")
    elif planted == "fifo":
        os.mkfifo(dump / "3001.dat")
    else:
        (dump / "3001.dat").mkdir()
    assert _fileio.sha256_tree(str(dump))[0] == OLD_DUMP_DIGEST
    with pytest.raises(_dumpfile.DumpError, match="holds 3001.dat, which is not a regular file: not a directory-format dump"):
        _dumpfile.check_digest(str(dump), "directory", {"sha256": OLD_DUMP_DIGEST})


def test_a_set_member_digests_its_tree_as_the_tar_stream_does(tmp_path):
    """What offsite_sync records for a directory (sha256-tree) is the digest of the directory on disk, also with a
    name that is not UTF-8, and the set's fingerprint reads such a name too."""
    src = tmp_path / "backups"
    root = odd_tree(src / "media-2026-11-22")
    local = _offsite.local_sets(str(src), ["media-"])["media-"]["2026-11-22"]
    assert local.ready, local.why
    (member,) = local.members
    assert member.kind == "tar"
    assert member.plain_digest()["sha256-tree"] == _fileio.sha256_tree(str(root))[0]
    assert len(local.fingerprint()) == 64
