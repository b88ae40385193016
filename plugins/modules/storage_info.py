#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: storage_info
short_description: Say what fills a filesystem and what could be reclaimed
version_added: 0.1.0
description:
  - The diagnosis of the storage full incident. Read-only; it never opens a file's contents.
  - Describes the filesystem holding each of I(paths), once per filesystem, with its mount point, device and type (from
    C(/proc/self/mountinfo)), size, used and available bytes and the used percent as C(df) counts them (used out of
    used plus available, so the blocks reserved for root count as unavailable), and total and used inodes as
    C(df -i) counts them. A filesystem whose space or inodes are used at I(threshold_percent) or more is C(full).
  - Walks each such filesystem from its mount point as C(du -x) does and names its I(largest) largest directories
    and files. Sizes are allocated bytes (C(st_blocks * 512)), so a sparse file counts what it holds, not its length. A
    directory's size is everything beneath it. The walk never enters another mount (a different C(st_dev)), never
    follows a symlink, counts a hard-linked file and a directory reached twice (a bind mount of the same filesystem)
    once, and enters no directory of I(exclude). A file that vanishes during the walk or a directory that cannot be
    listed is counted in C(unreadable) and skipped. The walk stops after I(max_entries) entries or when I(timeout) is
    spent and says C(truncated); the sizes found until then are returned.
  - Measures the reclaimable things named in I(candidates), each only when asked; the module deletes nothing, each
    candidate's C(how) names the command that would reclaim it.
  - A name that is not UTF-8 is returned with each such byte written C(\xNN); a newline in a name stays a newline.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Reads as it does outside check mode; it never changes anything.
  diff_mode:
    support: none
options:
  paths:
    description:
      - Absolute paths whose filesystems are examined (at most 32). Several paths on one filesystem describe it once,
        under the first of them; a path that does not exist is returned in RV(missing).
    type: list
    elements: path
    default: [/]
  largest:
    description:
      - How many of the largest directories and of the largest files to name on each filesystem (0 to 1000).
      - C(0) skips the walk; only the space and inodes are read (fast).
    type: int
    default: 15
  max_entries:
    description:
      - The most entries (files, directories, links) one walk reads before it stops and says C(truncated)
        (1 to 1000000000). The walk of the rotated logs of I(candidates) has the same bound of its own.
    type: int
    default: 2000000
  exclude:
    description:
      - Absolute paths of directories the walks never enter or count (symlinks resolved), for example a huge
        directory already known; a mount point in it is not walked at all. Another filesystem mounted below a mount
        point is never entered anyway (C(/proc), C(/sys), C(/dev)).
    type: list
    elements: path
    default: []
  candidates:
    description:
      - The reclaimable things to measure, each only when given, as keys of this dict (no other key is accepted).
      - C(rotated_logs) (a list of absolute directories) counts the rotated log files in them and their
        subdirectories on the same filesystem (a symlink below them is not followed). A rotated log is a regular
        file whose name ends in a number (C(syslog.1), C(app.log.12)), C(.old), a date (C(-YYYYMMDD), logrotate's
        C(dateext)) or C(.gz), C(.xz), C(.zst), C(.bz2) (C(syslog.2.gz)). A current log (C(app.log), C(syslog),
        C(messages)) ends in none of these and is never counted.
      - C(docker) (true or false) measures docker's dangling images and its unused build cache, from
        C(docker system df -v), as two candidates. C(docker_dangling_images) is the unique size (layers no other
        image shares) of the untagged images no container uses, what C(docker image prune) frees; unused tagged
        images are only named in its C(detail) (C(docker image prune --all) would free them too, but they may be
        needed to roll back). C(docker_build_cache) is the build cache neither in use nor shared with an image
        (docker's own reclaimable figure), what C(docker builder prune --all) frees. Docker prints sizes rounded to 3
        or 4 significant digits; the bytes are as exact as that. Skipped, with the reason, when C(docker) is not on
        C(PATH) or its daemon does not answer.
      - C(journal) (true or false) measures the systemd journal with C(journalctl --disk-usage) (archived and active
        files; a vacuum removes the archived ones only). Skipped, with the reason, when C(journalctl) is not on
        C(PATH) or fails.
    type: dict
  threshold_percent:
    description: A filesystem whose space or inodes are used at this percent or more is C(full) (0 to 100).
    type: int
    default: 90
  timeout:
    description:
      - Seconds the whole run may take (1 to 86400). A walk still running then stops and says C(truncated); a
        docker or journalctl command not finished by then (each has 60 seconds at most) makes its candidate
        skipped.
    type: int
    default: 300
notes:
  - Run it as root; otherwise directories of other users cannot be listed and count in C(unreadable).
  - Space that is used but found in no file (C(used_bytes) of RV(filesystems) well above the size of its mount point
    in C(largest_dirs)) is often held by deleted files still open by a process (C(lsof +L1)); the walk cannot see
    them.
seealso:
  - module: runbooks.incident.triage_info
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: What fills the root filesystem
  runbooks.incident.storage_info:
  register: storage

- name: The data disk and the root filesystem, with what could be reclaimed
  runbooks.incident.storage_info:
    paths: [/, /var/lib/docker, /srv/backups]
    largest: 20
    exclude: [/srv/backups/offsite-staging]
    candidates:
      rotated_logs: [/var/log]
      docker: true
      journal: true
    threshold_percent: 85
  register: storage

- name: Only the space and inodes (no walk)
  runbooks.incident.storage_info:
    paths: [/var/lib/postgresql]
    largest: 0
"""

RETURN = r"""
msg:
  description: The filesystems' use, the reclaimable total and the walks cut short, in one line.
  returned: always
  type: str
  sample: "FULL: /; / 96.2% used (1.4 GiB free, inodes 12.0%), FULL; reclaimable 3.1 GiB (rotated_logs 1.2 GiB, journal 1.9 GiB)"
filesystems:
  description: One per filesystem holding one of I(paths), in the order of I(paths).
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: The path of I(paths) that named it (the first, when several are on it).
      type: str
    mount:
      description: Its mount point.
      type: str
    device:
      description: What is mounted there, as C(/proc/self/mountinfo) says (C(/dev/sda1), C(tmpfs), C(overlay)); null when unknown.
      type: str
    fstype:
      description: Its type (C(ext4), C(xfs), C(tmpfs)); null when unknown.
      type: str
    size_bytes:
      description: Its size in bytes.
      type: int
    used_bytes:
      description: Bytes used.
      type: int
    available_bytes:
      description: Bytes available to a user who is not root (the reserved blocks excluded).
      type: int
    used_percent:
      description: Used out of used plus available, one decimal, as C(df) shows it.
      type: float
    inodes:
      description: Its inodes in all.
      type: int
    inodes_used:
      description: Inodes used.
      type: int
    inodes_used_percent:
      description: Inodes used out of all, one decimal; null on a filesystem that has no fixed number (btrfs).
      type: float
    full:
      description: Space or inodes used at I(threshold_percent) or more.
      type: bool
    size_human:
      description: C(size_bytes) in binary units (C(19.6 GiB)).
      type: str
    used_human:
      description: C(used_bytes) in binary units.
      type: str
    available_human:
      description: C(available_bytes) in binary units.
      type: str
    largest_dirs:
      description:
        - The I(largest) largest directories, largest first, each with C(path), C(bytes) (everything beneath it on
          this filesystem) and C(bytes_human). The mount point itself is the first unless excluded.
      type: list
      elements: dict
    largest_files:
      description:
        - The I(largest) largest regular files, largest first, each with C(path), C(bytes), C(bytes_human) and
          C(mtime) (its modification time, UTC, C(YYYY-MM-DDTHH:MM:SSZ)).
      type: list
      elements: dict
    entries:
      description: Entries the walk read.
      type: int
    unreadable:
      description: Directories that could not be listed and entries that vanished during the walk.
      type: int
    truncated:
      description: The walk stopped at I(max_entries) or I(timeout); the sizes are those found until then.
      type: bool
  sample:
    - path: /
      mount: /
      device: /dev/vda1
      fstype: ext4
      size_bytes: 21003583488
      used_bytes: 19213627392
      available_bytes: 759177216
      used_percent: 96.2
      inodes: 1310720
      inodes_used: 157286
      inodes_used_percent: 12.0
      full: true
      size_human: 19.6 GiB
      used_human: 17.9 GiB
      available_human: 724.0 MiB
      largest_dirs:
        - {path: /, bytes: 19102564352, bytes_human: 17.8 GiB}
        - {path: /var, bytes: 15032385536, bytes_human: 14.0 GiB}
      largest_files:
        - {path: /var/lib/docker/containers/4f1c/4f1c-json.log, bytes: 8589934592, bytes_human: 8.0 GiB, mtime: "2026-11-22T03:15:00Z"}
      entries: 412233
      unreadable: 0
      truncated: false
candidates:
  description:
    - One per candidate measured (I(candidates)), each with C(name) (C(rotated_logs), C(docker_dangling_images),
      C(docker_build_cache), C(journal)), C(bytes) and C(bytes_human) (what reclaiming it would free), C(count)
      (files, images or cache records), C(how) (the command that would reclaim it; this module runs none),
      C(detail) (what was counted) and C(skipped) (why it could not be measured, then C(bytes) is 0; else null).
  returned: success
  type: list
  elements: dict
  sample:
    - name: rotated_logs
      bytes: 1288490188
      bytes_human: 1.2 GiB
      count: 42
      how: "find -H /var/log -xdev -type f -regextype posix-extended -regex '.*/[^/]+(\\.[0-9]+|\\.old|-[0-9]{8}|\\.(gz|xz|zst|bz2))' -delete"
      detail: "42 rotated log files in /var/log; the largest /var/log/syslog.1 (512.0 MiB)"
      skipped: null
    - name: docker_build_cache
      bytes: 0
      bytes_human: 0 B
      count: 0
      how: docker builder prune --all --force
      detail: "skipped: docker is not on PATH"
      skipped: docker is not on PATH
reclaimable_bytes:
  description: The total of RV(candidates)' bytes.
  returned: success
  type: int
  sample: 3328599654
reclaimable_human:
  description: RV(reclaimable_bytes) in binary units.
  returned: success
  type: str
  sample: 3.1 GiB
full:
  description: The mount points of the filesystems that are full.
  returned: success
  type: list
  elements: str
  sample: [/]
missing:
  description: The paths of I(paths) that do not exist (or cannot be reached).
  returned: success
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _params, _storage


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="path", default=["/"]),
            largest=dict(type="int", default=15),
            max_entries=dict(type="int", default=2000000),
            exclude=dict(type="list", elements="path", default=[]),
            # Its keys are checked by _storage.check_params: Ansible's own suboptions end in a TypeError on a value
            # that is no dict.
            candidates=dict(type="dict"),
            threshold_percent=dict(type="int", default=90),
            timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    try:
        params = _storage.check_params(module.params)
    except _storage.StorageError as exc:
        module.fail_json(msg="%s; nothing was read" % exc)
    try:
        result = _storage.run(params)
    except OSError as exc:
        module.fail_json(msg="cannot examine %s: %s (nothing was changed)" % (", ".join(module.params["paths"]), exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
