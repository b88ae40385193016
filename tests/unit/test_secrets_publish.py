# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""secrets_publish: a rotated sops file reaches the repository of record (real git, a bare remote on disk, real
sops + age). The SSH transport with a deploy key is exercised by molecule/secret_rotation."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import SOPS, SopsSecrets

SECRETS = "ops/secrets/secrets.enc.yaml"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.test", "GIT_COMMITTER_NAME": "dev",
                               "GIT_COMMITTER_EMAIL": "dev@example.test", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}).stdout.strip()


class Service:
    """The service repository's remote, the host's checkout (a clone of it) and a developer's clone."""

    def __init__(self, tmp_path: Path):
        self.sops = SopsSecrets(tmp_path, {"api_key_pepper": "a" * 64, "db_password": "b" * 40})
        self.remote = tmp_path / "remote.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.remote)], check=True)
        seed = tmp_path / "seed"
        (seed / "ops" / "secrets").mkdir(parents=True)
        (seed / SECRETS).write_bytes(self.sops.sops_file.read_bytes())
        (seed / "README").write_text("service\n")
        git(seed.parent, "init", "-q", "-b", "main", str(seed))
        git(seed, "add", ".")
        git(seed, "commit", "-qm", "initial")
        git(seed, "push", "-q", str(self.remote), "main")
        self.checkout = tmp_path / "opt-whatsapp-mcp"
        self.developer = tmp_path / "developer"
        for clone in (self.checkout, self.developer):
            git(tmp_path, "clone", "-q", str(self.remote), str(clone))

    def rotate(self, key: str, value: str) -> None:
        """What a rotation does to the checkout: the sops file re-encrypted with a new value."""
        subprocess.run([str(SOPS), "set", "--value-stdin", str(self.checkout / SECRETS), '["%s"]' % key], input=json.dumps(value),
                       text=True, check=True, capture_output=True, env=self.sops.env())

    def remote_file(self, path: str = SECRETS) -> bytes:
        return subprocess.run(["git", "--git-dir", str(self.remote), "show", "main:" + path], check=True, capture_output=True).stdout

    def params(self, **extra) -> dict:
        return dict(repo=str(self.checkout), change_id="INC-2026-0042", commit_message="Rotate the API key pepper", sops_binary=str(SOPS),
                    **extra)


@pytest.fixture(name="service")
def service_fixture(tmp_path: Path) -> Service:
    return Service(tmp_path)


def test_four_runs_push_once_and_leave_a_clean_checkout(service: Service, run_module) -> None:
    service.rotate("api_key_pepper", "c" * 64)
    rotated = (service.checkout / SECRETS).read_bytes()
    before = service.remote_file()

    dry = run_module("secrets_publish", service.params(), check_mode=True)
    assert dry["changed"] and service.remote_file() == before

    done = run_module("secrets_publish", service.params())
    assert done["changed"] and done["pushed"] and done["checkout_updated"], done
    assert service.remote_file() == rotated
    assert git(service.checkout, "status", "--porcelain") == ""
    assert git(service.checkout, "rev-parse", "HEAD") == done["commit"]
    message = subprocess.run(["git", "--git-dir", str(service.remote), "log", "-1", "--format=%an|%s", "main"], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert message == "runbooks.incident|Rotate the API key pepper (INC-2026-0042)"
    assert service.sops.decrypted()["api_key_pepper"] != "c" * 64  # the fixture's own file is not the checkout's

    assert not run_module("secrets_publish", service.params(), check_mode=True)["changed"]
    again = run_module("secrets_publish", service.params())
    assert not again["changed"] and not again["pushed"] and again["commit"] == done["commit"]


def test_a_remote_that_moved_on_gets_only_the_secrets_file_on_top(service: Service, run_module) -> None:
    (service.developer / "README").write_text("service, documented\n")
    git(service.developer, "commit", "-qam", "docs")
    git(service.developer, "push", "-q", "origin", "main")
    (service.checkout / "local-notes").write_text("an operator's scratch file\n")
    (service.checkout / "README").write_text("edited on the host\n")
    service.rotate("db_password", "d" * 40)

    done = run_module("secrets_publish", service.params())
    assert done["pushed"], done
    changed = subprocess.run(["git", "--git-dir", str(service.remote), "show", "--name-only", "--format=", "main"], check=True,
                             capture_output=True, text=True).stdout.split()
    assert changed == [SECRETS]
    assert service.remote_file("README") == b"service, documented\n"
    # The host's own edit to a file the remote also changed blocks the fast-forward: kept, and said.
    assert not done["checkout_updated"] and any("fast-forwarded" in w for w in done["warnings"])
    assert (service.checkout / "README").read_text() == "edited on the host\n"
    assert (service.checkout / SECRETS).read_bytes() == service.remote_file()


def test_the_remote_changed_the_secrets_too_nothing_is_pushed(service: Service, run_module) -> None:
    subprocess.run([str(SOPS), "set", "--value-stdin", str(service.developer / SECRETS), '["api_key_pepper"]'], input='"%s"' % ("e" * 64),
                   text=True, check=True, capture_output=True, env=service.sops.env())
    git(service.developer, "commit", "-qam", "rotated by hand")
    git(service.developer, "push", "-q", "origin", "main")
    theirs = service.remote_file()
    service.rotate("api_key_pepper", "f" * 64)

    failed = run_module("secrets_publish", service.params())
    assert failed.get("failed") and "changed since this checkout" in failed["msg"], failed
    assert service.remote_file() == theirs


def test_a_clear_file_is_never_pushed(service: Service, run_module) -> None:
    (service.checkout / SECRETS).write_text("api_key_pepper: not-encrypted-at-all\n")
    failed = run_module("secrets_publish", service.params())
    assert failed.get("failed") and "not a sops-encrypted file" in failed["msg"], failed
    assert b"not-encrypted-at-all" not in service.remote_file()


def test_a_push_that_happened_before_a_crash_only_updates_the_checkout(service: Service, run_module) -> None:
    service.rotate("api_key_pepper", "g" * 64)
    (service.developer / SECRETS).write_bytes((service.checkout / SECRETS).read_bytes())
    git(service.developer, "commit", "-qam", "the same rotation, pushed before the run died")
    git(service.developer, "push", "-q", "origin", "main")

    done = run_module("secrets_publish", service.params())
    assert done["changed"] and not done["pushed"] and done["checkout_updated"], done
    assert git(service.checkout, "status", "--porcelain") == ""


@pytest.mark.parametrize("bad, words", [
    (dict(path="../outside.yaml"), "relative path inside the checkout"),
    (dict(path="/etc/shadow"), "relative path inside the checkout"),
    (dict(remote="origin --upload-pack=touch /tmp/x"), "not a remote name"),
    (dict(branch="main;rm"), "not a branch name"),
    (dict(branch="-x"), "not a branch name"),
    (dict(change_id="INC 42; rm"), "change_id"),
    (dict(author_email="a@b\nInjected: header"), "author_email"),
])
def test_hostile_options_are_refused_with_nothing_pushed(service: Service, run_module, bad: dict, words: str) -> None:
    service.rotate("api_key_pepper", "h" * 64)
    before = service.remote_file()
    failed = run_module("secrets_publish", dict(service.params(), **bad))
    assert failed.get("failed") and words in failed["msg"], failed
    assert service.remote_file() == before


def test_a_copy_deployed_service_is_told_to_fetch_instead(tmp_path: Path, run_module) -> None:
    sops = SopsSecrets(tmp_path, {"api_key_pepper": "a" * 64})
    failed = run_module("secrets_publish", dict(repo=str(sops.sops_file.parent), path=sops.sops_file.name, change_id="INC-1",
                                                sops_binary=str(SOPS)))
    assert failed.get("failed") and "not a git checkout" in failed["msg"] and "fetch" in failed["msg"], failed


def test_a_symlinked_secrets_file_is_refused(service: Service, run_module, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_bytes((service.checkout / SECRETS).read_bytes())
    (service.checkout / SECRETS).unlink()
    (service.checkout / SECRETS).symlink_to(elsewhere)
    failed = run_module("secrets_publish", service.params())
    assert failed.get("failed") and "not a regular file" in failed["msg"], failed


SOPS_CONFIG = "ops/sops/.sops.yaml"


def sops_config(recipient: str) -> str:
    return "creation_rules:\n  - path_regex: ops/secrets/.*\\.enc\\.yaml$\n    age: %s\n" % recipient


def new_recipient(tmp_path: Path) -> str:
    key = tmp_path / "new-age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()


def track_sops_config(service: Service) -> None:
    """sops' config in the repository of record and in the host's checkout (the developer pushed it)."""
    config = service.developer / SOPS_CONFIG
    config.parent.mkdir(parents=True)
    config.write_text(sops_config("age1" + "q" * 58))
    git(service.developer, "add", SOPS_CONFIG)
    git(service.developer, "commit", "-qm", "sops config")
    git(service.developer, "push", "-q", "origin", "main")
    git(service.checkout, "pull", "-q", "--ff-only")


def remote_head_commit(service: Service) -> str:
    return git(service.remote, "rev-parse", "main")


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked-config", "new-config"])
def test_extra_paths_go_in_the_same_single_commit(service: Service, run_module, tmp_path: Path, tracked: bool) -> None:
    if tracked:
        track_sops_config(service)
    before = remote_head_commit(service)
    service.rotate("api_key_pepper", "k" * 64)
    config = service.checkout / SOPS_CONFIG
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(sops_config(new_recipient(tmp_path)))
    params = service.params(extra_paths=[SOPS_CONFIG, SECRETS, SOPS_CONFIG])

    done = run_module("secrets_publish", params)
    assert done["changed"] and done["pushed"] and done["checkout_updated"], done
    assert done["path"] == SECRETS and done["paths"] == [SECRETS, SOPS_CONFIG]
    assert SECRETS in done["msg"] and SOPS_CONFIG in done["msg"]
    assert service.remote_file() == (service.checkout / SECRETS).read_bytes()
    assert service.remote_file(SOPS_CONFIG) == config.read_bytes()
    assert git(service.remote, "rev-parse", "main~1") == before and remote_head_commit(service) == done["commit"]
    changed = git(service.remote, "show", "--name-only", "--format=", "main").split()
    assert sorted(changed) == sorted([SECRETS, SOPS_CONFIG])
    assert git(service.checkout, "status", "--porcelain") == ""
    assert git(service.checkout, "rev-parse", "HEAD") == done["commit"]

    dry = run_module("secrets_publish", params, check_mode=True)
    assert not dry["changed"] and "already in" in dry["msg"], dry
    again = run_module("secrets_publish", params)
    assert not again["changed"] and not again["pushed"] and again["commit"] == done["commit"], again


def test_check_mode_sees_a_changed_extra_file_alone_and_changes_nothing(service: Service, run_module, tmp_path: Path) -> None:
    track_sops_config(service)
    before = remote_head_commit(service)
    config = service.checkout / SOPS_CONFIG
    config.write_text(sops_config(new_recipient(tmp_path)))
    # The secrets file is the remote's: without extra_paths there is nothing to push.
    assert not run_module("secrets_publish", service.params(), check_mode=True)["changed"]

    dry = run_module("secrets_publish", service.params(extra_paths=[SOPS_CONFIG]), check_mode=True)
    assert dry["changed"] and not dry["pushed"] and "would be pushed" in dry["msg"], dry
    assert dry["paths"] == [SECRETS, SOPS_CONFIG] and dry["commit"] == before
    assert remote_head_commit(service) == before and git(service.checkout, "rev-parse", "HEAD") == before
    assert git(service.checkout, "status", "--porcelain").split() == ["M", SOPS_CONFIG]  # modified, not staged or committed


def test_an_extra_file_the_remote_changed_too_is_refused_with_nothing_pushed(service: Service, run_module, tmp_path: Path) -> None:
    track_sops_config(service)
    (service.developer / SOPS_CONFIG).write_text(sops_config("age1" + "z" * 58))
    git(service.developer, "commit", "-qam", "sops config, edited by hand")
    git(service.developer, "push", "-q", "origin", "main")
    before, theirs, secrets = remote_head_commit(service), service.remote_file(SOPS_CONFIG), service.remote_file()
    service.rotate("api_key_pepper", "l" * 64)
    (service.checkout / SOPS_CONFIG).write_text(sops_config(new_recipient(tmp_path)))

    failed = run_module("secrets_publish", service.params(extra_paths=[SOPS_CONFIG]))
    assert failed.get("failed") and "changed since this checkout" in failed["msg"] and SOPS_CONFIG in failed["msg"], failed
    assert remote_head_commit(service) == before
    assert service.remote_file(SOPS_CONFIG) == theirs and service.remote_file() == secrets


@pytest.mark.parametrize("extra, words", [
    ("../outside.yaml", "relative path inside the checkout"),
    ("ops/../../outside.yaml", "relative path inside the checkout"),
    ("/etc/passwd", "relative path inside the checkout"),
    ("symlink", "not a regular file"),
    ("ops/secrets", "not a regular file"),
    ("ops/sops/missing.yaml", "not a regular file"),
])
def test_hostile_extra_paths_are_refused_with_nothing_pushed(service: Service, run_module, tmp_path: Path, extra: str,
                                                             words: str) -> None:
    (tmp_path / "outside.yaml").write_text(sops_config("age1" + "x" * 58))
    if extra == "symlink":
        extra = SOPS_CONFIG
        (service.checkout / SOPS_CONFIG).parent.mkdir(parents=True)
        (service.checkout / SOPS_CONFIG).symlink_to(tmp_path / "outside.yaml")
    service.rotate("api_key_pepper", "m" * 64)
    before = remote_head_commit(service)
    for check_mode in (True, False):
        failed = run_module("secrets_publish", service.params(extra_paths=[extra]), check_mode=check_mode)
        assert failed.get("failed") and words in failed["msg"], failed
    assert remote_head_commit(service) == before
    assert git(service.checkout, "rev-parse", "HEAD") == before


def publish_role(**variables) -> list:
    return [{"name": "publish", "ansible.builtin.include_role": {"name": "runbooks.incident.secrets_publish"},
             "vars": dict(secrets_publish_change_id="INC-2026-0042", **variables)}]


def changed_tasks(result) -> list:
    return [name for play in result.data["plays"] for task in play["tasks"]
            for name in [task["task"]["name"]] if task["hosts"].get("localhost", {}).get("changed")]


def test_role_push_keeps_an_encrypted_backup_copy_and_repeats_nothing(service: Service, ansible_play, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    service.rotate("api_key_pepper", "i" * 64)
    variables = dict(secrets_publish_repo_dir=str(service.checkout), secrets_publish_backup_dir=str(backups))
    env = {"PATH": f"{SOPS.parent}:/usr/bin:/bin"}

    dry = ansible_play(publish_role(**variables), check=True, env=env)
    assert dry.rc == 0, dry.stdout[-2000:]
    assert list(backups.iterdir()) == [] and service.remote_file() != (service.checkout / SECRETS).read_bytes()

    first = ansible_play(publish_role(**variables), env=env)
    assert first.rc == 0, first.stdout[-2000:]
    assert service.remote_file() == (service.checkout / SECRETS).read_bytes()
    copies = list(backups.glob("secrets-*.enc.yaml"))
    assert len(copies) == 1 and copies[0].read_bytes() == service.remote_file()
    assert oct(copies[0].stat().st_mode & 0o777) == "0o600"

    again = ansible_play(publish_role(**variables), env=env)
    assert again.rc == 0 and changed_tasks(again) == [], changed_tasks(again)
    assert len(list(backups.glob("secrets-*.enc.yaml"))) == 1


def test_role_fetch_puts_the_file_in_the_controllers_checkout(service: Service, ansible_play, tmp_path: Path) -> None:
    controller = tmp_path / "controller-checkout" / SECRETS
    service.rotate("db_password", "j" * 40)
    variables = dict(secrets_publish_mode="fetch", secrets_publish_fetch_dest=str(controller),
                     secrets_publish_repo_dir=str(service.checkout), secrets_publish_backup_dir=str(tmp_path / "none"))
    done = ansible_play(publish_role(**variables))
    assert done.rc == 0, done.stdout[-2000:]
    assert controller.read_bytes() == (service.checkout / SECRETS).read_bytes()
    assert "commit and push it" in done.stdout
    assert changed_tasks(ansible_play(publish_role(**variables))) == []


def test_role_refuses_fetch_without_a_destination_saying_the_rotation_is_in_force(service: Service, ansible_play) -> None:
    failed = ansible_play(publish_role(secrets_publish_mode="fetch", secrets_publish_repo_dir=str(service.checkout)))
    assert failed.rc != 0 and "in force on the host" in failed.stdout
    unknown = ansible_play(publish_role(secrets_publish_mode="scp", secrets_publish_repo_dir=str(service.checkout)))
    assert unknown.rc != 0 and "push, fetch, none" in unknown.stdout
