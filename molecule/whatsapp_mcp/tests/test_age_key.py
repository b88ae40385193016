# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The age key (docs/runbooks/backups.md, "Age key"): a re-bootstrap without it refuses and changes nothing; a first
set-up generates it root-only; the paper split writes shares from which any threshold of them rebuild the key."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import tempfile

from conftest import playbook, restored, unchanged  # pylint: disable=import-error

KEY = "/etc/whatsapp-mcp/age.key"
ROLE_ALONE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "age_key.yml")
COLLECTIONS = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], ".build", "collections")


def test_a_rebootstrap_without_the_age_key_refuses_says_where_it_is_and_changes_nothing(host):
    with restored(host, KEY):
        host.check_output(f"rm {KEY}")
        with unchanged():
            # The key is neither on the host nor given (the AWX credential left out).
            rc, out = playbook("rebootstrap.yml", "incident_id=MOLECULE-NO-AGE-KEY", "backup=none", "whatsapp_mcp_age_key=")
        assert rc != 0
        assert f"No age key at {KEY} and none given in age_key_content" in out
        assert "paper shares (age_key_shares, or age_key_share_files" in out and "age_key_generate=true" in out
        assert not host.file(KEY).exists  # not generated behind the operator's back


def test_a_first_set_up_generates_a_root_only_key_once(host):
    path = "/etc/whatsapp-mcp/first-setup-age.key"
    with restored(host, path):
        rc, out = playbook(ROLE_ALONE, f"age_key_file={path}", "age_key_generate=true")
        assert rc == 0, out
        key = host.file(path)
        assert key.mode == 0o400 and key.user == "root" and key.group == "whatsapp-mcp-secrets"
        recipient = host.check_output(f"age-keygen -y {path}")
        assert re.fullmatch(r"age1[0-9a-z]{58}", recipient) and f"recipient={recipient}" in out
        generated = key.sha256sum
        rc, out = playbook(ROLE_ALONE, f"age_key_file={path}", "age_key_generate=true")
        assert rc == 0 and "changed=0" in out, out
        assert host.file(path).sha256sum == generated  # a second run never replaces the key


def test_the_paper_split_writes_shares_any_two_of_which_rebuild_the_key(host):
    with tempfile.TemporaryDirectory() as shares_dir:
        rc, out = playbook(ROLE_ALONE, "age_key_split=true", f"age_key_split_dir={shares_dir}")
        assert rc == 0, out
        files = sorted(glob.glob(os.path.join(shares_dir, "app", "*")))
        assert len(files) == 3 and all(os.stat(path).st_mode & 0o777 == 0o600 for path in files), files
        key = host.check_output(f"cat {KEY}")
        assert not any(key.split("AGE-SECRET-KEY-")[-1][:20] in open(path, encoding="utf-8").read() for path in files)
        for pair in ((0, 1), (0, 2), (1, 2)):
            dest = os.path.join(shares_dir, "rebuilt-%d%d" % pair)
            args = json.dumps({"share_files": [files[i] for i in pair], "dest": dest})
            res = subprocess.run(["ansible", "localhost", "-m", "runbooks.incident.shamir_combine", "-a", args],
                                 capture_output=True, text=True, check=False, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS))
            assert res.returncode == 0, res.stdout + res.stderr
            with open(dest, encoding="utf-8") as rebuilt:
                assert rebuilt.read().strip() == key.strip(), pair


def test_a_rebootstrap_rebuilds_a_lost_key_from_its_paper_shares(host):
    """The operator has two of the three paper shares, scanned into files on the controller, and no key."""
    before = host.file(KEY).sha256sum
    with tempfile.TemporaryDirectory() as shares_dir, restored(host, KEY):
        rc, out = playbook(ROLE_ALONE, "age_key_split=true", f"age_key_split_dir={shares_dir}")
        assert rc == 0, out
        files = sorted(glob.glob(os.path.join(shares_dir, "app", "*")))
        host.check_output(f"rm {KEY}")
        rc, out = playbook("rebootstrap.yml", "incident_id=MOLECULE-AGE-SHARES", "backup=none", "whatsapp_mcp_age_key=",
                           json.dumps({"whatsapp_mcp_age_key_share_files": files[1:]}))
        assert rc == 0, out
        key = host.file(KEY)
        assert key.sha256sum == before and key.mode == 0o400 and key.group == "whatsapp-mcp-secrets"
        assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"


def test_a_wrong_key_is_refused_before_the_service_is_touched(host, tmp_path):
    """Another key given: refused before anything is written while the host has its own; even when the operator
    insists (age_key_replace), the run stops before the service restarts, saying the key does not open the secrets."""
    wrong = tmp_path / "wrong.key"
    subprocess.run(["age-keygen", "-o", str(wrong)], check=True, capture_output=True)
    given = tmp_path / "given.json"  # a key goes in a vars file, as AWX hands a credential over, never in argv
    given.write_text(json.dumps({"whatsapp_mcp_age_key": wrong.read_text()}))
    started = "docker ps -q | xargs docker inspect -f '{{.Name}} {{.State.StartedAt}}' | sort"
    services = host.check_output(started)
    with restored(host, KEY):
        with unchanged():
            rc, out = playbook("rebootstrap.yml", "incident_id=MOLECULE-WRONG-KEY", "backup=none", vars_files=[str(given)])
        assert rc != 0 and f"{KEY} holds another age key" in out and "Nothing was changed" in out, out

        rc, out = playbook("rebootstrap.yml", "incident_id=MOLECULE-WRONG-KEY", "backup=none", "age_key_replace=true", vars_files=[str(given)])
        assert rc != 0 and "does not decrypt /opt/whatsapp-mcp/ops/secrets/secrets.enc.yaml" in out, out
        assert "identity did not match" in out and "The service was not started" in out
        assert host.check_output(started) == services, "no container restarted"
    assert json.loads(host.check_output("curl -fsS http://127.0.0.1/health"))["status"] == "ok"
