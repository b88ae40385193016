# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which installed copies of the host-side job code are stale. PRIVATE to the collection: no compatibility promise.

The scheduled_jobs role reads every installed file in one command on the host, `sha256sum -- PATH...` then
`stat -c "%a %U %G %n" -- PATH...` (each PATH `<directory>/<name>`, errors for a missing file discarded), and copies
only what this module names stale. A file is current only when the output holds both lines it must have, each as a
whole line: `<sha256>  <path>` with the collection copy's digest, and `<mode> <owner> <group> <path>`. Nothing is
searched for inside a line, so a line of another path (`<path>.bak`, a path the wanted one ends with) never counts,
and a path holding spaces is compared as it is.

What a line cannot carry is never taken as current: a path with a backslash (sha256sum escapes that line) is always
stale, and when any path holds a line break, stat prints that name across lines that could read as another file's
line, so every file is stale. A stale file is copied again, which is harmless: the decision errs on that side only.

Runs on the controller (the filter runbooks.incident.stale_files); no Ansible import.
"""
from __future__ import annotations

import collections.abc
import re

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

SHA256 = re.compile(r"[0-9a-f]{64}")
ACCOUNT = re.compile(r"[^\s]+")


class JobCodeError(ValueError):
    """An argument that cannot describe the files (the message says which and why)."""


def mode_text(mode):
    """The mode as `stat -c %a` prints it ('644'), from an int (0o644) or an octal string ('0644', '644')."""
    if isinstance(mode, bool) or not isinstance(mode, (int, str)):
        raise JobCodeError("mode must be an octal string or an integer, not %r" % (mode,))
    if isinstance(mode, str):
        if not re.fullmatch(r"[0-7]{1,5}", mode.strip()):
            raise JobCodeError("mode %r is not an octal mode" % (mode,))
        mode = int(mode.strip(), 8)
    if not 0 <= mode <= 0o7777:
        raise JobCodeError("mode %o is not a file mode" % mode)
    return "%o" % mode


def output_lines(output):
    """The lines of the command's output: a string (`stdout`) is split at newlines only; a list (`stdout_lines`)
    is taken as it is."""
    if isinstance(output, str):
        return output.split("\n")
    if isinstance(output, collections.abc.Iterable) and not isinstance(output, collections.abc.Mapping):
        lines = list(output)
        if all(isinstance(line, str) for line in lines):
            return lines
    raise JobCodeError("the command's output must be a string or a list of lines")


def _check_name(name):
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise JobCodeError("%r is not a file name" % (name,))
    return name


def source_digests(names, source):
    """{name: sha256} of the files `names` in the controller's directory `source`, read as bytes (nothing
    stripped)."""
    if isinstance(names, str) or not isinstance(names, collections.abc.Iterable):
        raise JobCodeError("the files must be a list of names (with the source directory) or a dict of name: sha256")
    if not isinstance(source, str) or not source:
        raise JobCodeError("a list of file names needs the source directory they are read from")
    digests = {}
    for name in names:
        path = source.rstrip("/") + "/" + _check_name(name)
        try:
            digests[name] = _fileio.sha256_file(path)
        except OSError as exc:
            raise JobCodeError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    return digests


def wanted_digests(files, source=None):
    """{name: sha256} from a mapping of them, or from a list of names hashed in `source`."""
    if isinstance(files, collections.abc.Mapping):
        if source is not None:
            raise JobCodeError("the source directory is for a list of file names, not a dict of digests")
        digests = {}
        for name, digest in files.items():
            if not isinstance(digest, str) or not SHA256.fullmatch(digest.lower()):
                raise JobCodeError("the digest of %r is not a sha256 in hex: %r" % (name, digest))
            digests[_check_name(name)] = digest.lower()
        return digests
    return source_digests(files, source)


def stale(output, files, directory, source=None, mode="644", owner="root", group="root"):
    """The names (in the order given) of `files` whose copy `<directory>/<name>` the command's `output` does not
    show as current: missing, of another content, mode, owner or group (see the module docstring).

    `files` is {name: expected sha256}, or a list of names whose expected digest is that of `<source>/<name>`.
    Raises JobCodeError on an argument that cannot be right.
    """
    digests = wanted_digests(files, source)
    if not isinstance(directory, str) or not directory:
        raise JobCodeError("the target directory must be a non-empty path")
    for what, account in (("owner", owner), ("group", group)):
        if not isinstance(account, str) or not ACCOUNT.fullmatch(account):
            raise JobCodeError("%s %r is not a user or group name" % (what, account))
    prefix = "%s %s %s " % (mode_text(mode), owner, group)
    lines = set(output_lines(output))
    paths = {name: directory + "/" + name for name in digests}
    if any(path.splitlines() != [path] for path in paths.values()):
        return list(digests)  # a line break in a path: no line of the output can be trusted to be what it reads as
    return [name for name, path in paths.items()
            if "\\" in path or "%s  %s" % (digests[name], path) not in lines or prefix + path not in lines]
