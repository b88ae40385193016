#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: evidence_bundle
short_description: Collect files and command output of a security incident into a bundle with digests and a custody record
version_added: 0.1.0
description:
  - I(state=present) makes the directory C(<dest>/<incident_id>-<UTC stamp>) (mode C(0700), stamp C(YYYYMMDDTHHMMSSZ))
    holding copies of I(sources) under C(files/) at their absolute paths (C(files/var/log/app.log)), so two sources
    with the same name never collide, and the output of I(commands) under C(commands/) (C(01-ss.stdout),
    C(01-ss.stderr)). C(inventory.jsonl) describes every entry collected and every command run. C(SHA256SUMS) lists
    the digest of every file of the bundle but itself and C(custody.json), in the format C(sha256sum -c SHA256SUMS)
    checks from inside the bundle (a name holding a backslash or a line break is escaped as C(sha256sum) escapes it).
    C(custody.json) records who collected it (I(collected_by)), when (UTC), on which host, the process that did,
    what was collected (each source with its type, mode, owner, size and mtime, or why it is missing; each command
    with its argv, exit status and output sizes) and the SHA-256 of C(SHA256SUMS).
  - A source is never changed. Files are opened read-only, with C(O_NOFOLLOW) and, where the kernel allows, without
    updating their access time. A path is reached one component at a time and a symlink on the way is followed only
    in a directory only root can write to. A C(..) in a source is resolved as text (C(/srv/app/../x) is C(/srv/x)).
  - Inside a source directory nothing is followed. A symlink is copied as a link and its target is recorded (one
    pointing out of the tree is noted as such), and a FIFO, socket or device is recorded and never opened. A source
    that is itself a symlink is recorded and copied as a link, not followed; list its target to collect what it
    points to. A missing or unreadable source is recorded with the reason, with a warning, and the rest is still
    collected.
  - A file is copied up to the size it had when it was opened, and its digest is that of the bytes copied. A live log
    that grows meanwhile is copied as it was at that moment, and the change is noted. A file that reports size 0 (as
    C(/proc) files do) is copied to its end. Copies are streamed, never read whole into memory.
  - Copies keep their source's content, permission bits, modification time and, when run as root, owner and group. A
    set-user-ID or set-group-ID bit is recorded in C(inventory.jsonl) but not set on the copy. Directories in the bundle
    are C(0700), and their original mode and mtime are in the inventory. The bundle's own files (C(SHA256SUMS),
    C(custody.json), C(inventory.jsonl), command output) are C(0400). The bundle directory (C(0700)) keeps everything
    from other users.
  - Commands run before the files are copied, because process lists and connections change fastest. Each is an argv
    list run without a shell, with stdin from C(/dev/null), in C(/), in a session of its own that is killed whole after
    I(timeout) seconds (the output until then is kept). A program that is not installed is recorded as such, with a
    warning. Its output is never returned by the module.
  - The bundle is written in a hidden, locked C(.<name>.<token>.partial) directory and renamed to its name only when
    C(SHA256SUMS) and C(custody.json) are written, so a bundle under its name is complete. A failed run removes it,
    so nothing is left. A partial directory left by a killed run is removed by the next run into the same I(dest).
    An existing bundle is never overwritten. A second bundle of the same incident in the same second is named
    C(<incident_id>-<stamp>-2).
  - Each run makes a new bundle and reports C(changed), also with an I(incident_id) collected before. This differs
    from the collection's rule that an id acts once, because evidence collected later is a later snapshot and does
    not replace the earlier one. Check mode creates nothing and returns the bundle it would make, what it would
    collect (sources, files and bytes) and which programs are missing.
  - I(state=verified) checks the bundle I(bundle) and changes nothing (also in check mode). It recomputes the digest
    of every file and compares it with C(SHA256SUMS), compares the digest of C(SHA256SUMS) with the one in
    C(custody.json), and compares the bundle's symlinks and each file's digest with C(inventory.jsonl). It fails when
    a file is missing, altered or added, naming each in RV(problems).
  - Against someone who can rewrite the whole bundle, including C(custody.json), keep RV(sha256sums_digest) or
    RV(custody_digest) elsewhere (for example in an M(runbooks.incident.evidence_log) row) and compare the verified
    RV(sha256sums_digest) with it.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: I(state=present) lists what it would collect and runs no command; I(state=verified) is read-only.
  diff_mode:
    support: none
options:
  state:
    description: C(present) collects a new bundle; C(verified) checks the existing bundle I(bundle).
    type: str
    choices: [present, verified]
    default: present
  sources:
    description:
      - Files and directories to copy into the bundle (directories whole, recursively). A path inside a directory
        listed too is collected once, with that directory.
      - With I(state=present), at least one of I(sources) and I(commands) is required.
    type: list
    elements: path
  commands:
    description:
      - Commands whose standard output and error are captured, each an argv list such as C([ss, -tanp]). They are
        run without a shell, so a pipe or a redirection in a word has no special meaning.
    type: list
    elements: raw
  dest:
    description:
      - Directory that holds the bundles. It is created C(0700) when missing. It must belong to root (or the user
        running the module), must not be writable by others unless it is sticky, must not be a symlink, and must
        not be inside a directory listed in I(sources).
    type: path
    default: /var/lib/runbooks-incident/evidence
  incident_id:
    description:
      - Id of the incident the evidence belongs to (for example C(INC-2026-0042)). Letters, digits and C(._:-), at
        most 64 characters. It names the bundle and is recorded in C(custody.json).
      - Required with I(state=present). With I(state=verified), the bundle must be of this incident.
    type: str
  collected_by:
    description:
      - Who collects the evidence (a name or the AWX user), recorded in C(custody.json). Required with I(state=present).
      - At most 256 characters, without line breaks, control characters or surrounding spaces.
    type: str
  bundle:
    description: With I(state=verified), the bundle directory to check (the RV(bundle) a collection returned).
    type: path
  timeout:
    description: Seconds each command may run before its session is killed (1 to 86400).
    type: int
    default: 120
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Preserve the evidence of the compromise
  runbooks.incident.evidence_bundle:
    incident_id: "{{ incident_id }}"
    collected_by: "{{ awx_user_name | default(lookup('env', 'USER')) }}"
    sources:
      - /var/lib/whatsapp-mcp/backups/wa_mcp-incident.sql.gz
      - /var/log/nginx
      - /var/log/auth.log
      - /root/.ssh/authorized_keys
      - /opt/whatsapp-mcp
    commands:
      - [ps, auxwwf]
      - [ss, -tanp]
      - [getent, passwd]
      - [last, -F]
    timeout: 60
  register: evidence

- name: Record the bundle's digest where its writer cannot rewrite it
  runbooks.incident.evidence_log:
    path: /srv/evidence/bundles.md
    id: "{{ incident_id }}"
    fields:
      bundle: "{{ evidence.bundle }}"
      sha256sums: "{{ evidence.sha256sums_digest }}"

- name: Check the bundle before handing it over
  runbooks.incident.evidence_bundle:
    state: verified
    bundle: "{{ evidence.bundle }}"
    incident_id: "{{ incident_id }}"
"""

RETURN = r"""
bundle:
  description: The bundle directory (with I(state=present) in check mode, the one it would create).
  returned: success
  type: str
  sample: /var/lib/runbooks-incident/evidence/INC-2026-0042-20261122T031502Z
files:
  description:
    - Files listed in C(SHA256SUMS) (copies, command output and the inventory).
    - In check mode, the number it would list, counting two per command whose program is installed.
  returned: success
  type: int
  sample: 1284
bytes:
  description: Bytes in those files. In check mode, the bytes of the sources' files (the commands' output is not known before they run).
  returned: success
  type: int
  sample: 73400320
sha256sums_digest:
  description: SHA-256 of C(SHA256SUMS), which C(custody.json) records (with I(state=verified), of the file as it is now). Null in check mode.
  returned: success
  type: str
  sample: 0b6f8a9e4b0d2c5f1e3a7d9c8b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a
custody_digest:
  description: SHA-256 of C(custody.json). Null in check mode.
  returned: with I(state=present)
  type: str
  sample: 5e2c7b1a9d8f6e4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c
sources:
  description:
    - Each source (normalised absolute path) with its C(status), one of C(collected), C(recorded) (a FIFO, socket or
      device, never opened), C(covered) (inside a directory collected with it, see C(covered_by)), C(missing) or
      C(unreadable) (with the C(reason)). C(type), C(mode), C(uid), C(gid), C(owner), C(group), C(size) and C(mtime)
      describe what was found, and C(bundle) is where its copy is. A directory has C(entries), C(files), C(bytes) and
      C(not_copied) (entries recorded but not copied), and a symlink has its C(target).
  returned: with I(state=present)
  type: list
  elements: dict
  sample: [{path: /var/log/auth.log, status: collected, type: file, mode: "0640", owner: root, group: adm, size: 52113,
            mtime: "2026-11-22T03:14:59.123456789Z", bundle: files/var/log/auth.log}]
commands:
  description:
    - Each command with its C(argv), exit status C(rc) (negative, the signal, when it was killed), C(timed_out), and
      the bundle's C(stdout) and C(stderr) files with their C(stdout_bytes) and C(stderr_bytes). A command that could
      not start has an C(error) (C(program not found) for a missing program) and no output files.
    - In check mode, each command's C(argv) and whether its program was C(found).
  returned: with I(state=present)
  type: list
  elements: dict
  sample: [{argv: [ss, -tanp], rc: 0, timed_out: false, stdout: commands/01-ss.stdout, stderr: commands/01-ss.stderr,
            stdout_bytes: 2210, stderr_bytes: 0}]
missing:
  description: The sources that did not exist.
  returned: with I(state=present)
  type: list
  elements: str
  sample: [/root/.ssh/authorized_keys]
incident_id:
  description: The incident of the bundle (with I(state=verified), as C(custody.json) records it).
  returned: success
  type: str
  sample: INC-2026-0042
collected_by:
  description: Who collected the bundle.
  returned: success
  type: str
  sample: alice
collected_at:
  description: When the collection started (UTC).
  returned: success
  type: str
  sample: "2026-11-22T03:15:02.194512Z"
problems:
  description:
    - With I(state=verified), each file of the bundle that is C(missing), C(altered) or C(added) (also C(unreadable),
      or C(invalid) for a C(SHA256SUMS), C(custody.json) or inventory that cannot be read as one), by its C(path) in
      the bundle, with a C(detail). Empty when the bundle is as it was made. Names that are not UTF-8 are shown with
      C(\x) escapes.
  returned: with I(state=verified)
  type: list
  elements: dict
  sample: [{path: files/var/log/auth.log, problem: altered, detail: "its sha256 is 9f86..., SHA256SUMS lists 2c26..."}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _evidence_bundle, _params

MAX_LISTED = 10


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "verified"], default="present"),
            sources=dict(type="list", elements="path"),
            commands=dict(type="list", elements="raw"),
            dest=dict(type="path", default=_evidence_bundle.DEFAULT_DEST),
            incident_id=dict(type="str"),
            collected_by=dict(type="str"),
            bundle=dict(type="path"),
            timeout=dict(type="int", default=_evidence_bundle.DEFAULT_TIMEOUT),
        ),
        required_if=[("state", "present", ("incident_id", "collected_by")),
                     ("state", "present", ("sources", "commands"), True),
                     ("state", "verified", ("bundle",))],
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if params["state"] == "verified":
        try:
            result = _evidence_bundle.verify(params["bundle"], params["incident_id"])
        except (_evidence_bundle.BundleError, OSError, ValueError) as exc:
            module.fail_json(msg="cannot verify the evidence bundle %s: %s; nothing was changed" % (params["bundle"], exc))
        problems = result["problems"]
        if problems:
            listed = ", ".join("%s (%s)" % (item["path"], item["problem"]) for item in problems[:MAX_LISTED])
            more = len(problems) - MAX_LISTED
            module.fail_json(msg="the evidence bundle %s does not verify, %d problem(s): %s%s" % (
                result["bundle"], len(problems), listed, " and %d more" % more if more > 0 else ""), **result)
        module.exit_json(**result)
    try:
        result = _evidence_bundle.collect(params["sources"], params["commands"], params["dest"], params["incident_id"],
                                          params["collected_by"], timeout=params["timeout"], check_mode=module.check_mode)
    except (_evidence_bundle.BundleError, OSError, ValueError) as exc:
        module.fail_json(msg="evidence bundle of %s in %s: %s; nothing was kept" % (params["incident_id"], params["dest"], exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
