#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: secrets_publish
short_description: Push the rotated, sops-encrypted secrets file of a service checkout to its git remote
version_added: 0.1.0
description:
  - A rotation changes the encrypted secrets file in the host's checkout of the service repository. Until the
    repository of record has it, a re-deploy from the repository brings the old secrets back. This module commits
    that file (with the files of I(extra_paths), in the same commit) on top of the remote branch and pushes it,
    without force, then fast-forwards the checkout so it is clean for the next deploy.
  - Only I(path) (and I(extra_paths)) change in the commit, whatever else is modified in the checkout; the checkout's
    index is not used. A push that lost a race is rebuilt on the new remote head. If the remote's copy of I(path) or
    of one of I(extra_paths) changed since the checkout's HEAD (someone else rotated or edited it), nothing is pushed
    and the module fails.
  - Refuses a file that sops does not report as encrypted (C(sops filestatus)), so a clear secret is never pushed.
  - Running it again when the remote already holds the files changes nothing.
extends_documentation_fragment:
  - runbooks.incident.attributes
attributes:
  check_mode:
    support: full
    details: Asks the remote for its branch head (C(git ls-remote)); fetches nothing, commits nothing.
  diff_mode:
    support: none
    details: The file is encrypted, and secrets are never diffed.
options:
  repo:
    description: The service's git checkout on the managed host.
    type: path
    default: /opt/whatsapp-mcp
  path:
    description: The encrypted file, relative to I(repo).
    type: str
    default: ops/secrets/secrets.enc.yaml
  extra_paths:
    description:
      - Other files of the checkout, relative to I(repo), committed in the same single commit as I(path) and pushed
        with it; for example sops' C(.sops.yaml) after the age key changed, so the repository never holds the
        re-encrypted file without the recipients it was encrypted to.
      - Each must be a regular file in the checkout (not a symlink, no C(..), no leading C(/)); I(path) itself and
        repeats are ignored. The remote counts as up to date only when it holds every file with the checkout's
        content; the remote's copy of any of them changed since the checkout's HEAD fails the module.
      - They are not checked with sops (a C(.sops.yaml) is not encrypted), so never list a clear secret here.
    type: list
    elements: str
    default: []
  remote:
    description: The git remote to push to.
    type: str
    default: origin
  branch:
    description: The remote branch. Default the branch the checkout is on.
    type: str
  change_id:
    description: Id of the incident or change, in the commit message.
    type: str
    required: true
  commit_message:
    description: The commit message; C( (<change_id>)) is appended.
    type: str
    default: Rotate secrets
  author_name:
    description: Author and committer name of the commit.
    type: str
    default: runbooks.incident
  author_email:
    description: Author and committer e-mail of the commit.
    type: str
    default: runbooks-incident@localhost
  ssh_key_file:
    description: Private deploy key (write access to the repository) used for an SSH remote.
    type: path
  known_hosts_file:
    description: Known hosts file holding the git server's host key.
    type: path
  accept_new_host_key:
    description: Accept and remember the git server's host key when it is not known yet (else an unknown key fails).
    type: bool
    default: false
  sops_binary:
    description: The sops program, used to check that the file is encrypted.
    type: path
    default: sops
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Push the rotated secrets with the deploy key
  runbooks.incident.secrets_publish:
    repo: /opt/whatsapp-mcp
    change_id: INC-2026-0042
    commit_message: Rotate the API key pepper
    ssh_key_file: /etc/runbooks-incident/deploy-key
    known_hosts_file: /etc/runbooks-incident/git-known-hosts

- name: After the age key changed, push the re-encrypted secrets and sops' config naming the new recipient, in one commit
  runbooks.incident.secrets_publish:
    repo: /opt/whatsapp-mcp
    extra_paths:
      - ops/sops/.sops.yaml
    change_id: INC-2026-0043
    commit_message: Replace the sops age key
    ssh_key_file: /etc/runbooks-incident/deploy-key
    known_hosts_file: /etc/runbooks-incident/git-known-hosts
"""

RETURN = r"""
commit:
  description: The remote branch's commit holding the files (the one pushed, or the one that already had them).
  returned: success
  type: str
  sample: 3f6c1a0e8d7b2c4a5f9e1d0c8b7a6f5e4d3c2b1a
pushed:
  description: Whether this run pushed a commit.
  returned: success
  type: bool
checkout_updated:
  description: Whether the checkout was fast-forwarded to that commit.
  returned: success
  type: bool
path:
  description: The encrypted file, relative to I(repo).
  returned: success
  type: str
  sample: ops/secrets/secrets.enc.yaml
paths:
  description: Every file published, relative to I(repo); I(path) first, then I(extra_paths) without repeats.
  returned: success
  type: list
  elements: str
  sample: [ops/secrets/secrets.enc.yaml, ops/sops/.sops.yaml]
branch:
  description: The remote branch.
  returned: success
  type: str
  sample: main
msg:
  description: What was done.
  returned: always
  type: str
"""

import json
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbooks.incident.plugins.module_utils import _git, _params, _run_lock


def require_encrypted(sops_binary, path):
    """Raise unless sops reports the file as encrypted: a clear secret must never be pushed."""
    try:
        res = subprocess.run([sops_binary, "filestatus", path], capture_output=True, text=True, check=False)
        status = json.loads(res.stdout) if res.returncode == 0 else {}
    except (OSError, ValueError) as exc:
        raise _git.GitError("cannot ask sops whether %s is encrypted: %s" % (path, exc)) from None
    if status.get("encrypted") is not True:
        raise _git.GitError("%s is not a sops-encrypted file (sops filestatus: %s): refusing to push it"
                            % (path, res.stdout.strip() or res.stderr.strip()[-200:]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", default="/opt/whatsapp-mcp"),
            path=dict(type="str", default="ops/secrets/secrets.enc.yaml"),
            extra_paths=dict(type="list", elements="str", default=[]),
            remote=dict(type="str", default="origin"),
            branch=dict(type="str"),
            change_id=dict(type="str", required=True),
            commit_message=dict(type="str", default="Rotate secrets"),
            author_name=dict(type="str", default="runbooks.incident"),
            author_email=dict(type="str", default="runbooks-incident@localhost"),
            ssh_key_file=dict(type="path"),
            known_hosts_file=dict(type="path"),
            accept_new_host_key=dict(type="bool", default=False),
            sops_binary=dict(type="path", default="sops"),
        ),
        supports_check_mode=True,
    )
    _params.refuse_nul(module)
    params = module.params
    if not _run_lock.INCIDENT_ID.match(params["change_id"]):
        module.fail_json(msg="change_id %r is not valid (letters, digits and ._:-, at most 64); nothing was pushed" % params["change_id"])
    for name in ("commit_message", "author_name", "author_email"):
        if not params[name].strip() or (name != "commit_message" and "\n" in params[name]):
            module.fail_json(msg="%s %r is not usable in a commit; nothing was pushed" % (name, params[name]))
    try:
        for path in [params["path"]] + params["extra_paths"]:
            _git.check_relative(path)
        require_encrypted(params["sops_binary"], os.path.join(params["repo"], params["path"]))
        result = _git.publish(params["repo"], params["path"], params["change_id"], params["commit_message"], remote=params["remote"],
                              branch=params["branch"], author=(params["author_name"], params["author_email"]),
                              check_mode=module.check_mode, extra_paths=params["extra_paths"], ssh_key_file=params["ssh_key_file"],
                              known_hosts_file=params["known_hosts_file"], accept_new_host_key=params["accept_new_host_key"])
    except (_git.GitError, OSError) as exc:
        module.fail_json(msg="the secrets file was not published: %s" % exc)
    warning = result.pop("warning", None)
    if warning:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
