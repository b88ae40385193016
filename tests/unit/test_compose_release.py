# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""compose_release on real components: the docker daemon of this machine (tiny images made with `docker import` of
a small tar under repositories of a random prefix, nothing pulled, every image and tag removed at the end), the
standalone Compose v2 CLI of the venv (`config` needs no daemon), a real git work tree and a real PostgreSQL
(pg_server) holding the migrations table.

A "deploy" in these tests is what a build or pull does to the compose file's reference: `docker tag <image>
<repo>:latest` (and a git commit of the project)."""
from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from psycopg2 import sql

from conftest import PG_BINDIR, planted_link, run_module  # pylint: disable=import-error
from test_compose_limits import compose_binary  # pylint: disable=import-error

from ansible_collections.runbooks.incident.plugins.module_utils import _compose_release

PREFIX = "runbooks-test-%s" % secrets.token_hex(4)
MADE_IMAGES: list[str] = []


def docker(*args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


def image_id(ref: str) -> str | None:
    res = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def tags_of(prefix: str) -> dict:
    """{repo:tag: image id} of every tag under `prefix`."""
    out = docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    return dict(line.split() for line in out.splitlines() if line.startswith(prefix))


@pytest.fixture(scope="module", autouse=True)
def docker_cleanup():
    require_docker = docker("version", "--format", "{{.Server.Version}}", check=False)
    assert require_docker.returncode == 0, "needs the docker daemon: %s" % require_docker.stderr
    yield
    for tag in tags_of(PREFIX):
        docker("rmi", tag, check=False)
    for made in MADE_IMAGES:
        if image_id(made):
            docker("rmi", made, check=False)
    assert not tags_of(PREFIX)


COMPOSE = """services:
  app:
    image: {repo}:latest
  postgres:
    image: {prefix}-pg/postgres:16
  nginx:
    image: {prefix}-nginx/nginx:1
"""


class Lab:
    """A compose project (a git work tree), images a, b, c of its app, a database with schema_migrations."""

    counter = 0

    def __init__(self, root: Path, pg_server, tmp_path: Path):
        Lab.counter += 1
        self.root = root
        self.pg = pg_server
        self.repo = "%s-%d-%s/app" % (PREFIX, Lab.counter, secrets.token_hex(2))
        self.project = root / "project"
        self.project.mkdir()
        (self.project / "compose.yaml").write_text(COMPOSE.format(repo=self.repo, prefix=PREFIX))
        (self.project / "README").write_text("the app\n")
        self.dir = root / "releases"
        self.images = {}
        for name in ("a", "b", "c"):
            content = tmp_path / ("image-" + name)
            content.mkdir()
            (content / "release").write_text(name + secrets.token_hex(8))
            tar = subprocess.run(["tar", "-C", str(content), "-c", "."], capture_output=True, check=True).stdout
            made = subprocess.run(["docker", "import", "-", "%s:%s" % (self.repo, name)], input=tar, capture_output=True, check=True)
            self.images[name] = made.stdout.decode().strip()
            MADE_IMAGES.append(self.images[name])
        self.git("init", "-q", "-b", "main")
        self.commit("a")
        self.db = "wa_" + secrets.token_hex(4)
        pg_server.create_database(self.db)
        self.sql("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        self.migrate("001", "002")

    # ------------------------------------------------------------------ the world
    def git(self, *args) -> str:
        env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
        return subprocess.run(["git", "-C", str(self.project), *args], capture_output=True, text=True, check=True, env=env).stdout.strip()

    def commit(self, message: str) -> str:
        (self.project / "VERSION").write_text(message + "\n")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def sql(self, statement, *args):
        with self.pg.connect(self.db) as conn, conn.cursor() as cur:
            cur.execute(statement, args or None)
        conn.close()

    def migrate(self, *versions):
        for version in versions:
            self.sql("INSERT INTO schema_migrations VALUES (%s)", version)

    def deploy(self, name: str, message: str | None = None):
        """A build or pull: the compose file's reference now names image `name`, and the project is a new commit."""
        docker("tag", self.images[name], self.repo + ":latest")
        if message:
            self.commit(message)

    def latest(self) -> str | None:
        return image_id(self.repo + ":latest")

    # ------------------------------------------------------------------ the module
    def params(self, **more) -> dict:
        params = dict(project_dir=str(self.project), compose_command=[compose_binary()], dir=str(self.dir), db=self.db,
                      login_unix_socket=self.pg.host, login_port=self.pg.port, login_user="postgres", pg_bin_dir=str(PG_BINDIR))
        params.update(more)
        return params

    def run(self, check_mode=False, diff=False, **more) -> dict:
        return run_module("compose_release", self.params(**more), check_mode=check_mode, diff=diff, tmpdir=str(self.root))

    def ok(self, **more) -> dict:
        result = self.run(**more)
        assert not result.get("failed"), result
        return result

    def snapshot(self) -> dict:
        """Everything a run could change: the records, the tags of this lab's repository, git HEAD and status."""
        files = {}
        if self.dir.exists() or self.dir.is_symlink():
            for path in sorted(self.dir.iterdir()) if self.dir.is_dir() and not self.dir.is_symlink() else []:
                info = path.lstat()
                files[path.name] = path.read_text() if stat.S_ISREG(info.st_mode) else stat.S_IFMT(info.st_mode)
        return dict(files=files, tags=tags_of(self.repo.split("/")[0] + "/"), head=self.head(),
                    status=self.git("status", "--porcelain"))


@pytest.fixture(name="lab")
def lab_fixture(tmp_path, pg_server) -> Lab:
    root = tmp_path / "lab"
    root.mkdir()
    return Lab(root, pg_server, tmp_path)


def released(lab: Lab, name: str, message: str, verified: bool, **more) -> dict:
    """Deploy image `name` as commit `message` and record it."""
    lab.deploy(name, message)
    return lab.ok(state="recorded", verified=verified, label=message, **more)["release"]


# ------------------------------------------------------------------------------------------------- recording
def test_record_is_idempotent_and_becomes_verified(lab):
    lab.deploy("a")
    result = lab.ok(state="recorded", label="v1")
    assert result["changed"] and result["current"] == result["release"]["id"], result
    release = result["release"]
    assert _compose_release.RELEASE_ID.match(release["id"])
    assert release["services"] == {"app": {"image": lab.repo + ":latest", "id": lab.images["a"]}}
    assert release["git"] == lab.head() and release["label"] == "v1" and not release["verified"]
    tag = "%s:runbooks-release-%s" % (lab.repo, release["id"])
    assert result["tagged"] == [tag] and image_id(tag) == lab.images["a"]
    record = lab.dir / (release["id"] + ".json")
    assert stat.S_IMODE(lab.dir.stat().st_mode) == 0o700 and stat.S_IMODE(record.stat().st_mode) == 0o600
    data = json.loads(record.read_text())
    assert data["migrations"] == ["001", "002"] and data["tags"] == {"app": tag}

    before = lab.snapshot()
    again = lab.ok(state="recorded")
    assert not again["changed"] and again["release"]["id"] == release["id"] and "recorded already" in again["msg"], again
    assert lab.snapshot() == before

    verified = lab.ok(state="recorded", verified=True)
    assert verified["changed"] and verified["release"]["verified"] and "verified" in verified["msg"]
    assert not lab.ok(state="recorded", verified=True)["changed"]
    assert lab.ok(state="recorded", verified=False)["release"]["verified"] is True  # never unverified

    lab.migrate("003")
    grown = lab.ok(state="recorded")
    assert grown["changed"] and "migrations 003" in grown["msg"]
    assert json.loads(record.read_text())["migrations"] == ["001", "002", "003"]
    assert [item["id"] for item in grown["releases"]] == [release["id"]]

    # the tag removed by hand is put back
    docker("rmi", tag)
    retag = lab.ok(state="recorded")
    assert retag["changed"] and image_id(tag) == lab.images["a"]


def test_a_new_commit_or_image_is_a_new_release(lab):
    first = released(lab, "a", "one", True)
    second = released(lab, "a", "two", False)  # same image, new commit
    third = released(lab, "b", None, False)  # new image, same commit
    ids = [first["id"], second["id"], third["id"]]
    assert len(set(ids)) == 3
    info = lab.ok()
    assert [item["id"] for item in info["releases"]] == ids[::-1]
    assert info["current"] == third["id"] and [item["current"] for item in info["releases"]] == [True, False, False]
    # previous: verified, not the current one, other images
    assert info["target"] == first["id"] and info["unknown_migrations"] == []


# ------------------------------------------------------------------------------------------------- rollback
def test_rollback_to_previous_then_nothing_more(lab):
    good = released(lab, "a", "good", True)
    good_commit = lab.head()
    bad = released(lab, "b", "bad", False)
    info = lab.ok()
    assert info["current"] == bad["id"] and info["target"] == good["id"] and "would deploy %s" % good["id"] in info["msg"], info

    result = lab.ok(state="deployed", incident_id="INC-7", diff=True)
    assert result["changed"] and result["restart_needed"], result
    assert result["from"]["id"] == bad["id"] and result["to"]["id"] == good["id"] and result["target"] == good["id"]
    assert result["checkout"] == good_commit and lab.head() == good_commit
    assert lab.latest() == lab.images["a"] and result["current"] == good["id"]
    assert result["tagged"] == ["%s:latest -> %s" % (lab.repo, lab.images["a"])]
    assert result["diff"]["before"]["images"] == {"app": lab.images["b"]} and result["diff"]["after"]["images"] == {"app": lab.images["a"]}
    # the bad release keeps its images (its runbooks tag), so the way forward stays open
    assert image_id("%s:runbooks-release-%s" % (lab.repo, bad["id"])) == lab.images["b"]
    record = json.loads((lab.dir / (good["id"] + ".json")).read_text())
    assert record["deployed_at"][0]["incident_id"] == "INC-7" and record["deployed_at"][0]["from"] == bad["id"]

    before = lab.snapshot()
    again = lab.ok(state="deployed", incident_id="INC-7")
    assert not again["changed"] and not again["restart_needed"] and again["target"] == good["id"], again
    assert "deployed already" in again["msg"]
    assert lab.snapshot() == before
    assert lab.ok()["target"] == good["id"]

    # the way forward: the bad release by name
    forward = lab.ok(state="deployed", release=bad["id"], incident_id="INC-7")
    assert forward["changed"] and lab.latest() == lab.images["b"] and lab.head() == bad["git"]


def test_rollback_from_images_deployed_by_hand_records_them_first(lab):
    good = released(lab, "a", "good", True)
    lab.deploy("c")  # pulled by hand: no record
    info = lab.ok()
    assert info["current"] is None and "unrecorded" in info["msg"] and info["target"] == good["id"], info
    result = lab.ok(state="deployed", incident_id="INC-8")
    assert result["changed"] and result["recorded"] and result["from"]["id"] == result["recorded"], result
    assert lab.latest() == lab.images["a"]
    kept = [item for item in result["releases"] if item["id"] == result["recorded"]][0]
    assert kept["services"]["app"]["id"] == lab.images["c"] and not kept["verified"]
    assert image_id("%s:runbooks-release-%s" % (lab.repo, kept["id"])) == lab.images["c"]
    assert not lab.ok(state="deployed")["changed"]
    forward = lab.ok(state="deployed", release=kept["id"])
    assert forward["changed"] and lab.latest() == lab.images["c"]


def test_unknown_migrations_are_refused_unless_forced(lab):
    good = released(lab, "a", "good", True)
    lab.migrate("003_media_index", "004")
    released(lab, "b", "bad", False)
    before = lab.snapshot()
    for params in (dict(), dict(state="deployed")):
        result = lab.run(**params)
        assert result["unknown_migrations"] == ["003_media_index", "004"], result
    result = lab.run(state="deployed")
    assert result["failed"] and "003_media_index, 004" in result["msg"] and result["msg"].endswith("nothing was changed"), result
    assert lab.snapshot() == before and lab.latest() == lab.images["b"]
    forced = lab.ok(state="deployed", force=True)
    assert forced["changed"] and lab.latest() == lab.images["a"] and forced["unknown_migrations"] == ["003_media_index", "004"]
    assert "forced" in forced["msg"] and forced["target"] == good["id"]


def test_a_release_whose_image_is_gone_is_refused(lab):
    good = released(lab, "a", "good", True)
    released(lab, "b", "bad", False)
    docker("rmi", "%s:runbooks-release-%s" % (lab.repo, good["id"]))
    docker("rmi", lab.repo + ":a")  # the last name of image a: docker deletes it
    assert image_id(lab.images["a"]) is None
    before = lab.snapshot()
    result = lab.run(state="deployed", force=True)
    assert result["failed"] and "gone" in result["msg"] and "nothing was changed" in result["msg"], result
    assert lab.snapshot() == before


def test_tracked_modifications_refuse_another_commit(lab):
    released(lab, "a", "good", True)
    released(lab, "b", "bad", False)
    (lab.project / "README").write_text("edited on the host\n")
    (lab.project / "notes.txt").write_text("untracked: no matter\n")
    before = lab.snapshot()
    result = lab.run(state="deployed")
    assert result["failed"] and "README" in result["msg"] and "nothing was changed" in result["msg"], result
    assert "notes.txt" not in result["msg"]
    assert lab.snapshot() == before
    forced = lab.ok(state="deployed", force=True)
    assert forced["changed"] and lab.latest() == lab.images["a"] and (lab.project / "README").read_text() == "edited on the host\n"


def test_without_git_only_images_move(lab, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "compose.yaml").write_text((lab.project / "compose.yaml").read_text())
    lab.deploy("a")
    good = lab.ok(state="recorded", verified=True, project_dir=str(plain))["release"]
    assert good["git"] is None
    lab.deploy("b")
    lab.ok(state="recorded", project_dir=str(plain))
    result = lab.ok(state="deployed", project_dir=str(plain))
    assert result["changed"] and result["checkout"] is None and lab.latest() == lab.images["a"]


def test_no_previous_release_is_refused(lab):
    released(lab, "a", "only", False)
    result = lab.run(state="deployed")
    assert result["failed"] and "no verified release" in result["msg"] and "nothing was changed" in result["msg"], result
    result = lab.run(state="deployed", release="20200101T000000Z")
    assert result["failed"] and "no release 20200101T000000Z" in result["msg"], result


# ------------------------------------------------------------------------------------------------- check mode
def test_check_mode_changes_nothing(lab):
    lab.deploy("a")
    before = lab.snapshot()
    result = lab.run(state="recorded", verified=True, check_mode=True, diff=True)
    assert result["changed"] and result["tagged"] and result["release"]["verified"], result
    assert result["msg"].startswith("would record") and '"verified": true' in result["diff"]["after"] and result["diff"]["before"] == ""
    assert lab.snapshot() == before and not lab.dir.exists()

    good = lab.ok(state="recorded", verified=True)["release"]
    released(lab, "b", "bad", False)
    for step in range(3):
        released(lab, "abc"[step % 3], "r%d" % step, False)
    before = lab.snapshot()
    result = lab.run(state="recorded", keep=2, check_mode=True)
    assert not result.get("failed") and result["changed"] and result["pruned"], result
    assert lab.snapshot() == before

    lab.deploy("b")
    before = lab.snapshot()
    result = lab.run(state="deployed", check_mode=True, diff=True)
    assert result["changed"] and result["restart_needed"] and result["target"] == good["id"] and result["checkout"] == good["git"], result
    assert result["msg"].startswith("would deploy") and result["diff"]["after"]["images"] == {"app": lab.images["a"]}
    assert lab.snapshot() == before


def test_check_mode_of_a_rollback_from_unrecorded_images(lab):
    released(lab, "a", "good", True)
    lab.deploy("c")
    before = lab.snapshot()
    result = lab.run(state="deployed", check_mode=True)
    assert result["changed"] and result["recorded"] and len(result["tagged"]) == 2, result
    assert lab.snapshot() == before


# ------------------------------------------------------------------------------------------------- pruning
def test_keep_prunes_the_oldest_with_only_the_tags_it_made(lab):
    first = released(lab, "a", "v1", True)
    docker("tag", lab.images["a"], lab.repo + ":mine")  # someone's own tag of the same image
    second = released(lab, "b", "v2", False)
    third = released(lab, "c", "v3", False)
    fourth = released(lab, "b", "v4", False)
    result = lab.ok(state="recorded", keep=2)
    # the oldest is the newest verified one (and what previous is): kept; v2 and v3 go
    assert result["pruned"] == [second["id"], third["id"]], result
    assert sorted(result["untagged"]) == sorted("%s:runbooks-release-%s" % (lab.repo, item["id"]) for item in (second, third))
    assert [item["id"] for item in result["releases"]] == [fourth["id"], first["id"]]
    assert sorted(os.listdir(lab.dir)) == sorted([first["id"] + ".json", fourth["id"] + ".json"])
    tags = tags_of(lab.repo + ":")
    assert tags[lab.repo + ":mine"] and tags[lab.repo + ":a"] and tags[lab.repo + ":b"] and tags[lab.repo + ":c"]
    assert image_id("%s:runbooks-release-%s" % (lab.repo, first["id"])) == lab.images["a"]
    assert image_id("%s:runbooks-release-%s" % (lab.repo, fourth["id"])) == lab.images["b"]
    assert not lab.ok(state="recorded", keep=2)["changed"]


# ------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("case", ["symlinked dir", "symlinked record", "fifo record", "unparsable record", "other id inside",
                                  "foreign owner", "bad name"])
def test_records_the_module_cannot_use_are_refused(lab, tmp_path, case):
    lab.deploy("a")
    if case == "symlinked dir":
        real = tmp_path / "real-releases"
        real.mkdir(mode=0o700)
        lab.dir = planted_link(tmp_path, "releases", real)
        name = None
    else:
        lab.dir.mkdir(mode=0o700)
        name = "20260101T000000Z.json"
        path = lab.dir / name
        if case == "symlinked record":
            target = tmp_path / "precious"
            target.write_text("{}")
            path.symlink_to(target)
        elif case == "fifo record":
            os.mkfifo(path, 0o600)
        elif case == "unparsable record":
            path.write_text("{not json")
        elif case == "other id inside":
            path.write_text(json.dumps({"id": "20270101T000000Z"}))
        elif case == "foreign owner":
            path.write_text("{}")
            os.chown(path, 65534, 65534)
        else:
            name = "release-x.json"
            (lab.dir / name).write_text("{}")
        if case in ("unparsable record", "other id inside", "bad name"):
            os.chmod(lab.dir / name, 0o600)
    before = lab.snapshot()
    for params in (dict(), dict(state="recorded"), dict(state="deployed")):
        result = lab.run(**params)
        assert result["failed"] and "nothing was changed" in result["msg"], result
        assert (name or "symlink") in result["msg"], result
    assert lab.snapshot() == before
    if case == "symlinked dir":
        assert not os.listdir(tmp_path / "real-releases")
        return
    forced = lab.ok(state="recorded", force=True)
    assert forced["changed"] and forced["warnings"] and name in forced["warnings"][0], forced
    after = lab.snapshot()
    assert after["files"][name] == before["files"][name]
    assert forced["release"]["id"] + ".json" != name


@pytest.mark.parametrize("case", ["a file", "under a file", "a fifo"])
def test_a_dir_that_is_no_directory_is_refused(lab, tmp_path, case):
    lab.deploy("a")
    odd = tmp_path / "odd"
    odd.mkdir()
    if case == "a file":
        (odd / "releases").write_text("precious\n")
        lab.dir = odd / "releases"
    elif case == "under a file":
        (odd / "file").write_text("precious\n")
        lab.dir = odd / "file" / "releases"
    else:
        os.mkfifo(odd / "releases")
        lab.dir = odd / "releases"
    before = sorted((path.name, path.lstat().st_mode, path.lstat().st_size) for path in odd.iterdir())
    for state in ("report", "recorded", "deployed"):
        result = lab.run(state=state)
        assert result["failed"] and "nothing was changed" in result["msg"] and str(lab.dir) in result["msg"], result
    assert sorted((path.name, path.lstat().st_mode, path.lstat().st_size) for path in odd.iterdir()) == before


def test_a_dir_others_can_write_is_refused(lab):
    lab.deploy("a")
    lab.dir.mkdir()
    lab.dir.chmod(0o777)
    result = lab.run(state="recorded")
    assert result["failed"] and "0777" in result["msg"] and "nothing was changed" in result["msg"], result
    assert not os.listdir(lab.dir)


@pytest.mark.parametrize("params, words", [
    (dict(services=["../x"]), "services"),
    (dict(services=['app"']), "services"),
    (dict(services=["worker"]), "no service worker"),
    (dict(services=["app", "app"]), "twice"),
    (dict(state="deployed", release="../x"), "neither"),
    (dict(state="deployed", release="20261206T220000Z/../../etc/passwd"), "neither"),
    (dict(state="deployed", release='20261206T220000Z"'), "neither"),
    (dict(state="recorded", release="previous"), "not for state=recorded"),
    (dict(state="deployed", incident_id="INC 7; rm"), "incident_id"),
    (dict(state="report", verified=True), "only for state=recorded"),
    (dict(keep=0, state="recorded"), "keep"),
    (dict(db="wa; DROP"), "not accepted"),
    (dict(dir="relative/dir"), "absolute"),
])
def test_hostile_or_wrong_options_are_refused(lab, params, words):
    lab.deploy("a")
    before = lab.snapshot()
    result = lab.run(**params)
    assert result["failed"] and words in result["msg"] and "nothing was changed" in result["msg"], result
    assert lab.snapshot() == before and not lab.dir.exists()


def test_quoted_identifiers_are_read_safely(lab):
    lab.sql('CREATE SCHEMA "s""x"')
    lab.sql('CREATE TABLE "s""x"."mig""rations" ("ver""sion" text)')
    lab.sql('INSERT INTO "s""x"."mig""rations" VALUES (\'q1\'), (\'q2\'), (NULL)')
    lab.sql("CREATE TABLE precious (x int)")
    lab.deploy("a")
    for table in ('s"x.mig"rations', '"s""x"."mig""rations"'):
        result = lab.ok(migrations_table=table, migrations_column='ver"sion')
        assert result["migrations"] == ["q1", "q2"], result
    hostile = lab.run(state="recorded", migrations_table='x"; DROP TABLE precious; --')
    assert hostile["failed"] and "cannot read the migrations" in hostile["msg"] and "nothing was changed" in hostile["msg"], hostile
    with lab.pg.connect(lab.db) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("precious")))
        assert cur.fetchone() == (0,)
    conn.close()
    assert not lab.dir.exists()
    # a report does not fail on an unreadable table: it warns
    info = lab.ok(migrations_table="no_such_table")
    assert info["migrations"] is None and "no_such_table" in info["warnings"][0]
    # no schema check at all
    disabled = lab.ok(state="recorded", migrations_table="")
    assert disabled["changed"] and disabled["migrations"] is None


def test_the_migrations_are_read_read_only(lab):
    lab.deploy("a")
    lab.sql("CREATE FUNCTION bump() RETURNS text LANGUAGE sql AS $$ INSERT INTO schema_migrations VALUES ('x') RETURNING version $$")
    lab.sql("CREATE VIEW writing_migrations AS SELECT bump() AS version")
    result = lab.ok(migrations_table="writing_migrations")
    assert result["migrations"] is None and "read-only transaction" in result["warnings"][0], result
    # a column name is one quoted identifier, whatever it holds
    result = lab.ok(migrations_column='version" FROM schema_migrations, bump() AS "b')
    assert result["migrations"] is None and "does not exist" in result["warnings"][0], result
    with lab.pg.connect(lab.db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_migrations WHERE version = 'x'")
        assert cur.fetchone() == (0,)
    conn.close()


def test_report_without_records_creates_nothing(lab):
    lab.deploy("a")
    result = lab.ok()
    assert not result["changed"] and result["releases"] == [] and result["current"] is None and result["target"] is None
    assert "unrecorded" in result["msg"] and not lab.dir.exists()


# ------------------------------------------------------------------------------------------------- pure logic
@pytest.mark.parametrize("ref, repo", [("app", "app"), ("app:1", "app"), ("reg:5000/a/b:1.2", "reg:5000/a/b"), ("reg:5000/a/b", "reg:5000/a/b"),
                                       ("a/b@sha256:" + "0" * 64, "a/b"), ("a/b:1@sha256:" + "0" * 64, "a/b")])
def test_repository(ref, repo):
    assert _compose_release.repository(ref) == repo


def test_release_tags_of_services_sharing_a_repository():
    ids = {"web": "sha256:" + "1" * 64, "worker": "sha256:" + "2" * 64, "cron": "sha256:" + "1" * 64}
    tags = _compose_release.release_tags("20260101T000000Z", {"web": "x/app:web", "worker": "x/app:worker", "cron": "y:1"}, ids)
    assert tags == {"web": "x/app:runbooks-release-20260101T000000Z-web", "worker": "x/app:runbooks-release-20260101T000000Z-worker",
                    "cron": "y:runbooks-release-20260101T000000Z"}


def test_new_ids_are_unique_and_sort_in_order():
    moment = _compose_release.now_utc().replace(year=2026, month=12, day=6, hour=22, minute=0, second=0)
    taken = set()
    for _step in range(11):
        taken.add(_compose_release.new_id(moment, taken))
    assert "20261206T220000Z" in taken and "20261206T220000Z-11" in taken
    ordered = sorted(taken, key=_compose_release.id_key)
    assert ordered[0] == "20261206T220000Z" and ordered[-1] == "20261206T220000Z-11" and ordered[1] == "20261206T220000Z-2"


@pytest.mark.parametrize("value, parsed", [("schema_migrations", (None, "schema_migrations")), ("app.migrations", ("app", "migrations")),
                                           ('"My Schema"."t.1"', ("My Schema", "t.1")), ('mig"rations', (None, 'mig"rations')),
                                           ('"qu""ote"', (None, 'qu"ote'))])
def test_parse_table(value, parsed):
    assert _compose_release.parse_table(value) == parsed
    schema, name = parsed
    assert _compose_release.table_sql(schema, name).count('"') % 2 == 0


def _record(release_id, image, verified, recorded_at=None):
    return dict(id=release_id, verified=verified, recorded_at=recorded_at or "2026-01-01T00:00:00.000000Z",
                services={"app": {"image": "r:latest", "id": image}}, deployed_at=[])


def test_resolve_previous():
    one, two, three = ("sha256:" + digit * 64 for digit in "123")
    made = (_record("20260101T000000Z", one, True), _record("20260102T000000Z", two, True),
            _record("20260103T000000Z", three, False), _record("20260104T000000Z", two, False))
    records = {item["id"]: item for item in made}
    current = records["20260103T000000Z"]
    assert _compose_release.resolve_previous(records, {"app": three}, current, ["app"])["id"] == "20260102T000000Z"
    # the images in use are unrecorded and those of release two: previous is one
    assert _compose_release.resolve_previous(records, {"app": two}, None, ["app"])["id"] == "20260101T000000Z"
    # after a rollback to previous, previous stays that release
    records["20260102T000000Z"]["deployed_at"] = [dict(time="2026-02-01T00:00:00.000000Z", release="previous")]
    assert _compose_release.resolve_previous(records, {"app": two}, records["20260102T000000Z"], ["app"])["id"] == "20260102T000000Z"
    # ... but not after a deployment by name
    records["20260102T000000Z"]["deployed_at"] = [dict(time="2026-02-01T00:00:00.000000Z", release="20260102T000000Z")]
    assert _compose_release.resolve_previous(records, {"app": two}, records["20260102T000000Z"], ["app"])["id"] == "20260101T000000Z"
