# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Publish files of a service checkout to its git remote. PRIVATE to the collection: no compatibility promise.

A rotation changes the sops file in the host's checkout; the repository of record must get it too, or the next
deploy from the repository brings the old secrets back. Files that must travel with it (sops' .sops.yaml after
the age key changed) go in the same commit. The commit is built on the remote branch as fetched, with only those
files changed (a temporary index: the checkout's own index and other files are not touched), and pushed without
force: a push that lost a race is rebuilt on the new remote head. If the remote changed one of those files since
the checkout's HEAD (someone else rotated or edited it), nothing is pushed: that needs a person. Afterwards the
checkout is fast-forwarded to the pushed commit, so it is clean and the next `git pull` of a deploy works.

The deploy key reaches ssh through GIT_SSH_COMMAND (a path, never key material); git runs with argv lists.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile

PUSH_ATTEMPTS = 3
BRANCH = re.compile(r"^(?!.*\.\.)(?!.*//)[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}(?<![./])$")
REMOTE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class GitError(Exception):
    pass


class Checkout:
    def __init__(self, repo, ssh_key_file=None, known_hosts_file=None, accept_new_host_key=False, git="git"):
        self.repo = repo
        self.git = git
        self.env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            self.env.pop(name, None)
        if ssh_key_file or known_hosts_file or accept_new_host_key:
            ssh = ["ssh", "-o", "BatchMode=yes"]
            if ssh_key_file:
                ssh += ["-i", ssh_key_file, "-o", "IdentitiesOnly=yes"]
            if known_hosts_file:
                ssh += ["-o", "UserKnownHostsFile=" + known_hosts_file]
            ssh += ["-o", "StrictHostKeyChecking=" + ("accept-new" if accept_new_host_key else "yes")]
            self.env["GIT_SSH_COMMAND"] = " ".join(shlex.quote(part) for part in ssh)

    def run(self, *args, env=None, check=True):
        try:
            res = subprocess.run([self.git, "-C", self.repo] + list(args), capture_output=True, text=True,
                                 encoding="utf-8", errors="replace", env=dict(self.env, **(env or {})), check=False)
        except FileNotFoundError:
            raise GitError("%s not found: install git on the managed host" % self.git) from None
        if check and res.returncode != 0:
            raise GitError("git %s failed: %s" % (args[0], (res.stderr.strip() or res.stdout.strip())[-400:] or "no output"))
        return res

    def out(self, *args):
        return self.run(*args).stdout.strip()

    def blob_at(self, commit, path):
        """The blob id of `path` in `commit`, or None when the commit has no such file."""
        res = self.run("rev-parse", "--verify", "--quiet", "%s:%s" % (commit, path), check=False)
        return res.stdout.strip() or None

    def is_ancestor(self, older, newer):
        return self.run("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0


def check_relative(path):
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in path:
        raise GitError("path %r must be a relative path inside the checkout (no .., no leading /)" % path)


def all_paths(path, extra_paths=()):
    """`path` first, then each of `extra_paths` once (a repeat, or `path` itself, is dropped)."""
    paths = [path]
    for extra in extra_paths or ():
        if extra not in paths:
            paths.append(extra)
    return paths


def open_checkout(repo, path, remote, branch, extra_paths=(), **ssh):
    """(Checkout, branch) after checking the checkout, the files and the names."""
    paths = all_paths(path, extra_paths)
    for each in paths:
        check_relative(each)
    if not REMOTE.match(remote or ""):
        raise GitError("remote %r is not a remote name" % remote)
    if not os.path.isdir(os.path.join(repo, ".git")):
        raise GitError("%s is not a git checkout (the service is deployed from a copy?): use mode fetch instead" % repo)
    checkout = Checkout(repo, **ssh)
    if checkout.out("rev-parse", "--show-toplevel") != os.path.realpath(repo):
        raise GitError("%s is not the top of its git checkout" % repo)
    branch = branch or checkout.out("symbolic-ref", "--short", "-q", "HEAD")
    if not BRANCH.match(branch or ""):
        raise GitError("branch %r is not a branch name (is the checkout on a detached HEAD? name the branch)" % branch)
    for each in paths:
        full = os.path.join(repo, each)
        if os.path.islink(full) or not os.path.isfile(full):
            raise GitError("%s is not a regular file in the checkout" % each)
    return checkout, branch


def remote_head(checkout, remote, branch):
    """The commit of the remote branch, as the remote says now (ls-remote: nothing is fetched)."""
    lines = checkout.out("ls-remote", "--heads", remote, "refs/heads/" + branch).splitlines()
    return lines[0].split()[0] if lines else None


def publish(repo, path, change_id, message, remote="origin", branch=None, author=("runbooks.incident", "runbooks-incident@localhost"),
            check_mode=False, extra_paths=(), **ssh):
    """Push the checkout's `path` and `extra_paths` to `remote`/`branch` in one commit unless the remote already has
    that content of each; returns a result dict."""
    paths = all_paths(path, extra_paths)
    checkout, branch = open_checkout(repo, path, remote, branch, extra_paths=paths[1:], **ssh)
    result = dict(branch=branch, remote=remote, path=path, paths=paths, pushed=False, checkout_updated=False)
    local_blobs = dict(zip(paths, checkout.out("hash-object", "--", *paths).splitlines()))
    names, verb = ", ".join(paths), "is" if len(paths) == 1 else "are"
    if check_mode:
        head = remote_head(checkout, remote, branch)
        known = head and checkout.run("cat-file", "-e", head + "^{commit}", check=False).returncode == 0
        published = bool(known and all(checkout.blob_at(head, each) == local_blobs[each] for each in paths))
        return dict(result, changed=not published, commit=head, msg="%s %s %s %s/%s" % (
            names, verb, "already in" if published else "would be pushed to", remote, branch))
    for _attempt in range(PUSH_ATTEMPTS):
        checkout.run("fetch", "--quiet", remote, "+refs/heads/%s:refs/remotes/%s/%s" % (branch, remote, branch))
        base = checkout.out("rev-parse", "--verify", "refs/remotes/%s/%s^{commit}" % (remote, branch))
        remote_blobs = {each: checkout.blob_at(base, each) for each in paths}
        differing = [each for each in paths if remote_blobs[each] != local_blobs[each]]
        if not differing:
            result.update(commit=base, msg="%s/%s already holds this %s" % (remote, branch, names))
            break
        for each in differing:  # the remote's copy must still be HEAD's, else someone else changed it meanwhile
            if remote_blobs[each] != checkout.blob_at("HEAD", each):
                raise GitError("%s on %s/%s changed since this checkout's HEAD (someone else changed or rotated it): nothing was "
                               "pushed; merge the two by hand" % (each, remote, branch))
        commit = _commit_on(checkout, base, differing, "%s (%s)" % (message, change_id), author)
        pushed = checkout.run("push", "--quiet", "--porcelain", remote, "%s:refs/heads/%s" % (commit, branch), check=False)
        if pushed.returncode == 0:
            result.update(commit=commit, pushed=True, msg="pushed %s to %s/%s as %s" % (names, remote, branch, commit[:12]))
            break
        if "rejected" not in pushed.stdout + pushed.stderr:
            raise GitError("git push failed: %s" % (pushed.stderr.strip() or pushed.stdout.strip())[-400:])
    else:
        raise GitError("the remote branch %s/%s kept moving: %d pushes were rejected" % (remote, branch, PUSH_ATTEMPTS))
    result["checkout_updated"], result["warning"] = _fast_forward(checkout, result["commit"], paths)
    result["changed"] = result["pushed"] or result["checkout_updated"]
    return result


def _commit_on(checkout, base, paths, message, author):
    """A commit on `base` whose only changes are the checkout's `paths`, each with its mode (a temporary index; the
    real one is untouched)."""
    blobs = checkout.out("hash-object", "-w", "--", *paths).splitlines()
    entries = []
    for path, blob in zip(paths, blobs):
        mode = "100755" if os.access(os.path.join(checkout.repo, path), os.X_OK) else "100644"
        entries += ["--cacheinfo", "%s,%s,%s" % (mode, blob, path)]
    with tempfile.TemporaryDirectory(prefix="runbooks-git-") as scratch:
        index = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
        checkout.run("read-tree", base, env=index)
        checkout.run("update-index", "--add", *entries, env=index)
        tree = checkout.run("write-tree", env=index).stdout.strip()
    name, email = author
    identity = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    return checkout.run("commit-tree", tree, "-p", base, "-m", message, env=identity).stdout.strip()


def _fast_forward(checkout, commit, paths):
    """(updated, warning): move the checkout to `commit` when that is a fast-forward; the files already hold its content."""
    head = checkout.out("rev-parse", "HEAD")
    if head == commit:
        return False, None
    if not checkout.is_ancestor(head, commit):
        return False, "the checkout has commits the remote does not (HEAD %s): it was left as it is" % head[:12]
    checkout.run("add", "--", *paths)  # staged equal to the target: the fast-forward then keeps them
    merged = checkout.run("merge", "--quiet", "--ff-only", commit, check=False)
    if merged.returncode != 0:
        return False, "the checkout could not be fast-forwarded to %s: %s" % (commit[:12], merged.stderr.strip()[-300:])
    return True, None
