# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decrypt the service's sops file and write each top-level key to <dest>/<key> (mode 0400, owner:group).

Run by the <service>-secrets unit at boot: <dest> is a tmpfs, so this is the only path from the encrypted file
in the repository to the files the app reads. A <dest> on any other filesystem is refused before anything is
decrypted: plaintext secrets never reach a disk. Values never reach argv, stdout or the journal; files that are no
longer in the sops file are removed (a retired secret must not linger).
"""
import argparse
import grp
import json
import os
import pwd
import re
import subprocess
import sys
import tempfile

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Filesystems that live in memory only.
VOLATILE = ("tmpfs", "ramfs")


def filesystem_type(path):
    """The type of the filesystem that holds `path`, or would once it is created: the deepest mount above it."""
    path = os.path.realpath(path)
    found, kind = "", None
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields, _sep, rest = line.partition(" - ")
            point = fields.split()[4].encode().decode("unicode_escape")  # mountinfo writes a space as \040
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(found):
                found, kind = point, rest.split()[0]
    return kind


def decrypt(source):
    res = subprocess.run(["sops", "--decrypt", "--output-type", "json", source],
                         capture_output=True, check=False)
    if res.returncode != 0:
        # sops' stderr names the failure (no key, wrong key, bad MAC) and never holds plaintext.
        sys.exit("cannot decrypt %s: %s" % (source, res.stderr.decode(errors="replace").strip()))
    data = json.loads(res.stdout)
    if not isinstance(data, dict):
        sys.exit("%s must hold a mapping of secret names to values" % source)
    for key, value in data.items():
        if not NAME.match(key):
            sys.exit("secret name %r is not a plain file name" % key)
        if isinstance(value, (dict, list)) or value is None:
            sys.exit("secret %s must be a string, not %s" % (key, type(value).__name__))
    return {key: str(value) for key, value in data.items()}


def write_atomically(dest, name, value, uid, gid):
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".%s." % name)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o400)
        os.write(fd, value.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(dest, name))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="sops-encrypted YAML/JSON file")
    parser.add_argument("--dest", required=True, help="directory the app reads (a tmpfs)")
    parser.add_argument("--owner", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()

    kind = filesystem_type(args.dest)
    if kind not in VOLATILE:
        sys.exit("%s is on a %s filesystem, not in memory (tmpfs): decrypted secrets must never reach a disk; nothing "
                 "was decrypted" % (args.dest, kind or "unknown"))
    secrets = decrypt(args.source)
    uid, gid = pwd.getpwnam(args.owner).pw_uid, grp.getgrnam(args.group).gr_gid
    os.makedirs(args.dest, mode=0o750, exist_ok=True)
    os.chown(args.dest, 0, gid)
    os.chmod(args.dest, 0o750)
    for name, value in sorted(secrets.items()):
        write_atomically(args.dest, name, value, uid, gid)
    stale = sorted(entry.name for entry in os.scandir(args.dest)
                   if entry.is_file(follow_symlinks=False) and entry.name not in secrets)
    for name in stale:
        os.unlink(os.path.join(args.dest, name))
    print("materialized %d secret(s) into %s: %s%s" % (
        len(secrets), args.dest, ", ".join(sorted(secrets)), "; removed: " + ", ".join(stale) if stale else ""))


if __name__ == "__main__":
    main()
