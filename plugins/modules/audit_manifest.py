#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: audit_manifest
short_description: Content manifest of an audit archive (size, sha256 per file, Merkle root), computed on this host
version_added: 0.1.0
description:
  - Lists every regular file under I(path) with its size, sha256 and modification time, and a Merkle root over all
    of them. Run it on each host that holds a copy of the archive (the app host and the off-host log server) and
    compare the manifests with M(runbooks.incident.audit_diff) on a third machine, so that neither host has to be
    trusted alone and no archive data crosses the network.
  - Incremental by default. A file whose size, mtime, ctime and inode are those recorded in I(cache) reuses its
    cached digest; any other file is hashed. C(touch -r) restores an edited file's mtime but not its ctime, so an
    edit is always rehashed.
  - I(full=true) does not trust the cache. Every file is hashed, and any cached digest that disagrees with its
    file under the same stat key is returned in RV(cache.mismatches), because somebody edited the cache. The cache also
    holds a digest of its own entries, and a damaged cache is ignored (RV(cache.status=corrupt)).
  - Files are hashed in 256 KiB reads (one reused buffer per thread) on one thread per core, through hashlib (OpenSSL, using the CPU's SHA
    extensions where it has them). The archive is only opened read-only and, where the kernel allows it, with
    C(O_NOATIME). Every path in it is opened one component at a time without following a symlink, so a link
    (also to a directory, also one swapped in during the scan) is never read through. Symlinks and devices are
    listed in RV(irregular).
  - Entries with a hidden name (a leading dot) are not hashed and not descended into. They are listed in
    RV(hidden), so that M(runbooks.incident.audit_diff) reports them (a partial write in progress is pending,
    anything else hidden is a mismatch).
  - The only thing written is the cache file, mode 0600 and replaced atomically. In check mode the cache is read
    but not written.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  path:
    description: Root of the audit archive.
    type: path
    default: /var/lib/whatsapp-mcp/audit-archive
  cache:
    description:
      - File holding the digests of the last run. It is created if missing, and its directory is created with mode 0700.
      - Default C(/var/cache/runbooks-incident/audit-manifest/<path with slashes as underscores>.json).
    type: path
  full:
    description: Hash every file and check the cache instead of trusting it (the daily pass).
    type: bool
    default: false
  workers:
    description: Hashing threads. Default the number of CPUs.
    type: int
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Hourly, incremental manifest of the app host's archive
  runbooks.incident.audit_manifest:
    path: /var/lib/whatsapp-mcp/audit-archive
  register: local_manifest

- name: Daily full pass on the log server (the cache is checked, not trusted)
  runbooks.incident.audit_manifest:
    path: /srv/audit-archive
    full: true
  register: remote_manifest
"""

RETURN = r"""
format:
  description: Manifest format identifier.
  returned: success
  type: str
  sample: runbooks.incident/audit-manifest/1
path:
  description: Absolute path of the archive.
  returned: success
  type: str
  sample: /var/lib/whatsapp-mcp/audit-archive
generated_at:
  description: When the scan started (seconds since the epoch). It is the reference for the grace window in M(runbooks.incident.audit_diff).
  returned: success
  type: int
  sample: 1795305600
finished_at:
  description: When the scan ended (seconds since the epoch, rounded up). A file dated later than this was not changed during the scan.
  returned: success
  type: int
  sample: 1795305602
full:
  description: Whether every file was hashed.
  returned: success
  type: bool
root:
  description: Merkle root (hex sha256) over the files in path order. Two archives with the same root hold the same files with the same contents.
  returned: success
  type: str
  sample: 9f2c4e0b8a7d6c5b4a3928171605f4e3d2c1b0a99887766554433221100ffeed
count:
  description: Number of files.
  returned: success
  type: int
  sample: 8760
bytes:
  description: Total size of the files.
  returned: success
  type: int
  sample: 524288000
hashed:
  description: Files hashed in this run.
  returned: success
  type: int
  sample: 1
reused:
  description: Files whose cached digest was reused.
  returned: success
  type: int
  sample: 8759
irregular:
  description: Paths that are neither regular files nor directories (symlinks, devices). They are not in the manifest.
  returned: success
  type: list
  elements: str
  sample: []
hidden:
  description:
    - Entries with a hidden name, not descended into, with their C(path), C(type) (C(file), C(directory), C(symlink)
      or C(other)), C(size) and C(mtime). They are not in the manifest's files.
  returned: success
  type: list
  elements: dict
  sample: [{path: 2026/11/21/.13.jsonl.1a2b3c4d.partial, type: file, size: 4096, mtime: 1795305590}]
cache:
  description: The cache that was used.
  returned: success
  type: dict
  contains:
    path:
      description: The cache file.
      type: str
    status:
      description:
        - C(ok), C(missing) (first run), C(corrupt) (its own digest disagrees, or a symlink or FIFO is at its name, so it was
          ignored and is rewritten) or C(other_root).
        - C(foreign) is a file that is no cache at all (not JSON, or not this format), as a mistyped I(cache) path would name.
          It is ignored and never rewritten.
      type: str
    mismatches:
      description: Files whose cached digest disagreed with the file under an unchanged stat key (the cache was edited).
      type: list
      elements: str
  sample: {path: /var/cache/runbooks-incident/audit-manifest/var_lib_whatsapp-mcp_audit-archive.json, status: ok, mismatches: []}
files:
  description: Per relative path, its C(size), C(sha256) and C(mtime) (whole seconds).
  returned: success
  type: dict
  sample: {"2026/11/21/13.jsonl": {size: 40960, sha256: 3b1f7c3a0e2d4c5b6a79881726354433221100ffeeddccbbaa99887766554433, mtime: 1795273200}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _audit_manifest, _params


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/lib/whatsapp-mcp/audit-archive"),
            cache=dict(type="path"),
            full=dict(type="bool", default=False),
            workers=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if params["workers"] is not None and params["workers"] < 1:
        module.fail_json(msg="workers must be at least 1, not %d" % params["workers"])
    cache = params["cache"] or _audit_manifest.default_cache_path(params["path"])
    try:
        manifest = _audit_manifest.build(params["path"], cache_path=cache, full=params["full"],
                                         workers=params["workers"], write_cache=not module.check_mode)
    except (_audit_manifest.ManifestError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot build the manifest of %s: %s" % (params["path"], exc))
    if manifest["cache"]["status"] == "foreign":
        module.warn("%s is not a manifest cache: it was neither used nor rewritten; give another cache path" % cache)
    module.exit_json(changed=False, **manifest)


if __name__ == "__main__":
    main()
