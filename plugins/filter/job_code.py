# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: stale_files
short_description: The files whose installed copy is missing or differs, from one sha256sum and stat of them
version_added: 0.1.0
description:
  - Takes the output of C(sha256sum -- PATH...; stat -c "%a %U %G %n" -- PATH...) run on a host over the files
    C(<directory>/<name>) and returns the names whose copy there is missing or differs from the wanted one in content,
    mode, owner or group - the files to copy, so that a host that has them all makes no copy.
  - A file is current only when the output holds, each as a whole line, C(<sha256>  <path>) with the wanted digest and
    C(<mode> <owner> <group> <path>). A line of another path never counts, and a path holding spaces is compared as it is.
  - A path with a backslash (which sha256sum escapes) is always stale; when any path holds a line break every file is
    stale (stat prints such a name across lines). A stale file is copied again, which is harmless.
  - The wanted digests are given, or computed here on the controller from the files of O(source), read as bytes.
positional: files, directory
options:
  _input:
    description: The command's output, C(stdout) (split at newlines only) or C(stdout_lines).
    type: raw
    required: true
  files:
    description:
      - The wanted files, a list of names in O(source), or a dictionary of name to the sha256 (hex) the copy must have.
      - A name is a file name, without a slash.
    type: raw
    required: true
  directory:
    description: The directory of the copies on the host, joined to each name as C(<directory>/<name>), as the command was given them.
    type: str
    required: true
  source:
    description: The controller's directory holding the files O(files) names; required when O(files) is a list, not allowed with a dictionary.
    type: path
  mode:
    description: The mode the copies must have, as an octal string or an integer.
    type: raw
    default: "0644"
  owner:
    description: The user that must own the copies.
    type: str
    default: root
  group:
    description: The group that must own the copies.
    type: str
    default: root
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Read the installed copies' digests, modes and owners
  ansible.builtin.command:
    argv: "{{ ['sh', '-c', 'sha256sum -- \"$@\" 2>/dev/null; stat -c \"%a %U %G %n\" -- \"$@\" 2>/dev/null; true', 'sh'] + targets }}"
  vars:
    targets: "{{ names | map('regex_replace', '^', '/usr/local/lib/jobs/') | list }}"
  register: current
  changed_when: false

- name: Copy only the files that differ
  ansible.builtin.copy:
    src: "files/{{ item }}"
    dest: "/usr/local/lib/jobs/{{ item }}"
    owner: root
    group: root
    mode: "0644"
  loop: "{{ current.stdout | runbooks.incident.stale_files(names, '/usr/local/lib/jobs', source=role_path ~ '/files') }}"

- name: With digests known beforehand, and another mode and owner
  ansible.builtin.debug:
    msg: "{{ current.stdout_lines | runbooks.incident.stale_files({'job.py': job_sha256}, '/opt/jobs', mode='0640', group='jobs') }}"
"""

RETURN = r"""
_value:
  description: The names of O(files) whose copy is missing or differs, in the order O(files) gives them.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.runbooks.incident.plugins.module_utils import _job_code


def stale_files(output, files, directory, source=None, mode="0644", owner="root", group="root"):
    try:
        return _job_code.stale(output, files, directory, source=source, mode=mode, owner=owner, group=group)
    except _job_code.JobCodeError as exc:
        raise AnsibleFilterError("stale_files: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"stale_files": stale_files}
