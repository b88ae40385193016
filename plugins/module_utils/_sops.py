# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read and change top-level keys of a sops-encrypted file without a clear value in argv or on disk, and change the
age recipients it is encrypted to (`sops rotate`: a new data key). PRIVATE.

Values go to `sops set --value-stdin` on stdin and come back from `sops --decrypt` on a pipe. The age identity is
passed in the environment (SOPS_AGE_KEY_FILE). A change is made on an encrypted copy, under the file's own name
(sops picks the format from it), in a private work directory beside the file: `.<name>.<8 hex>.sops-partial`,
mode 0700, the copy 0600 from creation. sops reaches the copy through the work directory's descriptor
(/dev/fd/N/<name>), so no path that someone else can change leads it elsewhere. The copy is decrypted and
compared with what was asked, gets the file's owner and mode, and only then is renamed over the file. A crash
leaves the file whole and a private work directory, which the next change of that file removes.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _faults, _fileio

WORK_SUFFIX = ".sops-partial"
# `recipient: age1...` (YAML), `"recipient": "age1..."` (JSON), `sops_age__list_0__map_recipient=age1...` (dotenv, INI).
AGE_RECIPIENT = re.compile(rb"recipient[\"']?[ \t]*[:=][ \t]*[\"']?(age1[02-9ac-hj-np-z]{58})")


class SopsError(Exception):
    pass


def _leftover(name, entry):
    """Whether directory entry `entry` is what a killed change of file `name` left: a work directory of this module,
    or the partial copy (`.<stem>.<mkstemp>.partial<suffixes>`) that versions before the work directory left."""
    if re.fullmatch(r"\.%s\.[0-9a-f]{8}%s" % (re.escape(name), re.escape(WORK_SUFFIX)), entry):
        return True
    stem, dot, suffix = name.partition(".")
    return bool(re.fullmatch(r"\.%s\.[a-z0-9_]{8}\.partial%s" % (re.escape(stem), re.escape(dot + suffix)), entry))


class Sops:
    def __init__(self, path, age_key_file=None, binary="sops"):
        self.path = path
        self.binary = binary
        self.env = dict(os.environ)
        if age_key_file:
            self.env["SOPS_AGE_KEY_FILE"] = age_key_file

    def _run(self, argv, stdin=None, pass_fds=()):
        key_file = self.env.get("SOPS_AGE_KEY_FILE")
        with contextlib.suppress(FileNotFoundError):  # sops says so itself
            if key_file and not stat.S_ISREG(os.stat(key_file).st_mode):  # a FIFO there would hold sops for ever
                raise SopsError("the age key file %s is not a regular file" % key_file)
        try:
            res = subprocess.run([self.binary] + argv, input=stdin, capture_output=True, env=self.env, check=False, pass_fds=pass_fds)
        except FileNotFoundError:
            raise SopsError("%s not found: install sops on the managed host" % self.binary) from None
        except OSError as exc:
            raise SopsError("cannot run %s: %s" % (self.binary, exc.strerror)) from None
        if res.returncode != 0:
            # sops' messages name the failure (no key, wrong key, MAC mismatch) and never hold plaintext.
            message = res.stderr.decode(errors="replace").strip()[-400:]
            raise SopsError("sops %s failed on %s: %s" % (argv[0], os.path.basename(self.path), message))
        return res.stdout

    def decrypt(self):
        """The whole document as a dict (top-level keys). The file must be a regular file, not a symlink or a FIFO."""
        try:
            with _fileio.parent_dir(os.path.abspath(self.path)) as (dir_fd, name):
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise _fileio.UnsafePathError(errno.ELOOP, "is a symlink: refusing to follow it")
                if not stat.S_ISREG(info.st_mode):
                    raise _fileio.UnsafePathError(errno.EINVAL, "is not a regular file")
                return self._document("/dev/fd/%d/%s" % (dir_fd, name), dir_fd)
        except OSError as exc:
            raise SopsError("cannot read %s: %s" % (self.path, exc.strerror or exc)) from None

    def _document(self, reachable, dir_fd):
        """Decrypt `reachable`, a /dev/fd/<dir_fd>/<name> path (sops sees the directory this process reached safely)."""
        out = self._run(["--decrypt", "--output-type", "json", reachable], pass_fds=(dir_fd,))
        try:
            data = json.loads(out)
        except ValueError:
            raise SopsError("%s did not decrypt to a document" % self.path) from None
        if not isinstance(data, dict):
            raise SopsError("%s must hold a mapping of names to values" % self.path)
        return data

    def remove_leftovers(self):
        """Remove the work directories (and older partial copies) that killed changes of this file left beside it:
        never through a symlink, and nothing but names this module makes."""
        path = os.path.abspath(self.path)
        with _fileio.parent_dir(path) as (dir_fd, name):
            listing = os.open(".", os.O_RDONLY | _fileio.O_DIRECTORY | _fileio.O_CLOEXEC, dir_fd=dir_fd)
            try:
                found = sorted(entry.name for entry in os.scandir(listing) if _leftover(name, entry.name))
            finally:
                os.close(listing)
        for entry in found:
            _fileio.remove(os.path.join(os.path.dirname(path), entry))

    def apply(self, changes, current=None):
        """Set (value) or remove (None) each top-level key of `changes`, atomically. Returns the keys changed.

        Leftovers of earlier, killed changes are removed first, also when nothing is to change.
        """
        self.remove_leftovers()
        current = self.decrypt() if current is None else current
        wanted = {key: value for key, value in changes.items() if current.get(key) != value and not (value is None and key not in current)}
        if not wanted:
            return []
        expected = {key: value for key, value in dict(current, **wanted).items() if value is not None}

        def change(copy, work_fd):
            for key, value in sorted(wanted.items()):
                index = '["%s"]' % key.replace("\\", "\\\\").replace('"', '\\"')
                if value is None:
                    self._run(["unset", copy, index], pass_fds=(work_fd,))
                else:
                    self._run(["set", "--value-stdin", copy, index], stdin=json.dumps(value).encode(), pass_fds=(work_fd,))
            if self._document(copy, work_fd) != expected:
                raise SopsError("the re-encrypted copy of %s does not hold what was set; the file was left as it was" % self.path)

        self._replace_with_changed_copy(change)
        return sorted(wanted)

    def age_recipients(self):
        """The age recipients the file is encrypted to (read from its sops metadata; nothing is decrypted)."""
        with open(_fileio.open_file(os.path.abspath(self.path)), "rb") as reader:
            return recipients_in(reader.read())

    def rekey(self, recipients, check_mode=False):
        """Encrypt the file to exactly the age `recipients` (other kinds of keys kept) with a new data key, atomically:
        `sops rotate` on a private copy, which must then list exactly those recipients and decrypt to the same document.
        Returns (added, removed); nothing is written when the recipients are already those, or in check mode."""
        if not check_mode:
            self.remove_leftovers()
        wanted = sorted(set(recipients))
        current = self.age_recipients()
        added = [key for key in wanted if key not in current]
        removed = [key for key in current if key not in wanted]
        if check_mode or not (added or removed):
            return added, removed
        document = self.decrypt()

        def change(copy, work_fd):
            argv = ["rotate", "--in-place"]
            if added:
                argv += ["--add-age", ",".join(added)]
            if removed:
                argv += ["--rm-age", ",".join(removed)]
            self._run(argv + [copy], pass_fds=(work_fd,))
            fd = os.open(os.path.basename(copy), os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, dir_fd=work_fd)
            with open(fd, "rb") as reader:
                now = recipients_in(reader.read())
            if now != wanted:
                raise SopsError("the rotated copy of %s is encrypted to other age recipients than asked; the file was left as it was" % self.path)
            if self._document(copy, work_fd) != document:
                raise SopsError("the rotated copy of %s does not decrypt to the same secrets; the file was left as it was" % self.path)

        self._replace_with_changed_copy(change)
        return added, removed

    def _replace_with_changed_copy(self, change):
        """Copy the file into a private work directory beside it, let change(copy_path, work_fd) change and verify the
        copy (raising SopsError leaves the file as it was), give it the file's owner and mode, and rename it over."""
        path = os.path.abspath(self.path)
        with _fileio.parent_dir(path) as (dir_fd, name):
            work = ".%s.%s%s" % (name, secrets.token_hex(4), WORK_SUFFIX)
            os.mkdir(work, 0o700, dir_fd=dir_fd)
            work_fd = os.open(work, _fileio.DIR_FLAGS, dir_fd=dir_fd)
            try:
                info = _copy(path, work_fd, name)
                change("/dev/fd/%d/%s" % (work_fd, name), work_fd)
                _faults.checkpoint("sops_copy_changed")
                fd = os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, dir_fd=work_fd)
                try:
                    os.fchown(fd, info.st_uid, info.st_gid)
                    os.fchmod(fd, stat.S_IMODE(info.st_mode))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(name, name, src_dir_fd=work_fd, dst_dir_fd=dir_fd)
            finally:
                # Best effort: what a failure here leaves is private, and the next change removes it.
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=work_fd)
                os.close(work_fd)
                with contextlib.suppress(OSError):
                    os.rmdir(work, dir_fd=dir_fd)
        _fileio.fsync_dir(os.path.dirname(path))


def recipients_in(encrypted):
    """The sorted age recipients named in the sops metadata of an encrypted file's bytes (YAML, JSON, dotenv or INI:
    encrypted values are ENC[...] strings, so only the metadata holds `recipient` with an age public key)."""
    return sorted(set(m.decode() for m in AGE_RECIPIENT.findall(encrypted)))


def _copy(path, work_fd, name):
    """Copy the regular file `path` (never through a symlink) to a new 0600 file `name` of work_fd; the original's stat."""
    with os.fdopen(_fileio.open_file(path), "rb") as reader:
        info = os.fstat(reader.fileno())
        target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, 0o600, dir_fd=work_fd)
        with os.fdopen(target, "wb") as writer:
            for chunk in iter(lambda: reader.read(_fileio.CHUNK), b""):
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    return info
