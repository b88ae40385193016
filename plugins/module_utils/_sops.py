# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read and change top-level keys of a sops-encrypted file without a clear value in argv or on disk. PRIVATE.

Values go to `sops set --value-stdin` on stdin and come back from `sops --decrypt` on a pipe. The age identity is
passed in the environment (SOPS_AGE_KEY_FILE). A change is made on an encrypted copy next to the file (same
extension, because sops picks the format from it). The copy is decrypted and compared with what was asked, and
only then renamed over the original. A crash leaves the original file whole.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio


class SopsError(Exception):
    pass


class Sops:
    def __init__(self, path, age_key_file=None, binary="sops"):
        self.path = path
        self.binary = binary
        self.env = dict(os.environ)
        if age_key_file:
            self.env["SOPS_AGE_KEY_FILE"] = age_key_file

    def _run(self, argv, stdin=None):
        try:
            res = subprocess.run([self.binary] + argv, input=stdin, capture_output=True, env=self.env, check=False)
        except FileNotFoundError:
            raise SopsError("%s not found: install sops on the managed host" % self.binary) from None
        if res.returncode != 0:
            # sops' messages name the failure (no key, wrong key, MAC mismatch) and never hold plaintext.
            message = res.stderr.decode(errors="replace").strip()[-400:]
            raise SopsError("sops %s failed on %s: %s" % (argv[0], os.path.basename(self.path), message))
        return res.stdout

    def decrypt(self, path=None):
        """The whole document as a dict (top-level keys)."""
        out = self._run(["--decrypt", "--output-type", "json", path or self.path])
        try:
            data = json.loads(out)
        except ValueError:
            raise SopsError("%s did not decrypt to a document" % (path or self.path)) from None
        if not isinstance(data, dict):
            raise SopsError("%s must hold a mapping of names to values" % (path or self.path))
        return data

    def apply(self, changes, current=None):
        """Set (value) or remove (None) each top-level key of `changes`, atomically. Returns the keys changed."""
        current = self.decrypt() if current is None else current
        wanted = {key: value for key, value in changes.items() if current.get(key) != value and not (value is None and key not in current)}
        if not wanted:
            return []
        directory, name = os.path.split(os.path.abspath(self.path))
        suffix = name[name.index("."):] if "." in name else ""
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % name.split(".")[0], suffix=".partial" + suffix)
        os.close(fd)
        try:
            shutil.copyfile(self.path, tmp)
            shutil.copymode(self.path, tmp)
            info = os.stat(self.path)
            os.chown(tmp, info.st_uid, info.st_gid)
            for key, value in sorted(wanted.items()):
                index = '["%s"]' % key.replace("\\", "\\\\").replace('"', '\\"')
                if value is None:
                    self._run(["unset", tmp, index])
                else:
                    self._run(["set", "--value-stdin", tmp, index], stdin=json.dumps(value).encode())
            result = self.decrypt(tmp)
            expected = {key: value for key, value in dict(current, **wanted).items() if value is not None}
            if result != expected:
                raise SopsError("the re-encrypted copy of %s does not hold what was set; the file was left as it was" % self.path)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            _fileio.fsync_dir(directory)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return sorted(wanted)
