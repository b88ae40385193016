# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_bundle: copies that keep their sources' content, mode and mtime, nothing followed or opened that should
not be, SHA256SUMS that sha256sum -c accepts, and a verification that names every file missing, altered or added."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _evidence_bundle, _timeline
from conftest import fed_fifo, kill_at, planted_link, start_module  # pylint: disable=import-error

OLD = 1_600_000_000  # 2020-09-13: an mtime no copy gets by accident


def collect(run_module, sources=(), commands=(), dest=None, check_mode=False, **more):
    params = dict(incident_id="INC-7", collected_by="alice", dest=str(dest), **more)
    if sources:
        params["sources"] = [str(source) for source in sources]
    if commands:
        params["commands"] = [list(argv) for argv in commands]
    return run_module("evidence_bundle", params, check_mode=check_mode)


def verify(run_module, bundle, check_mode=False, **more):
    return run_module("evidence_bundle", dict(state="verified", bundle=str(bundle), **more), check_mode=check_mode)


def state_of(root: Path) -> dict:
    """Everything about the tree under `root` a collection could change, atimes aside."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        entry = [stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_size,
                 info.st_mtime_ns, info.st_ctime_ns]
        if stat.S_ISREG(info.st_mode):
            entry.append(hashlib.sha256(path.read_bytes()).hexdigest())
        elif stat.S_ISLNK(info.st_mode):
            entry.append(os.readlink(path))
        found[str(path)] = entry
    return found


def bundle_bytes(bundle: Path) -> bytes:
    """Every byte of every regular file in the bundle (no link followed)."""
    return b"".join(path.read_bytes() for path in sorted(bundle.rglob("*")) if path.is_file() and not path.is_symlink())


def copy_of(bundle: Path, source: Path) -> Path:
    return bundle / "files" / str(source).lstrip("/")


@pytest.fixture(name="service")
def service_fixture(tmp_path):
    """A service tree: modes, an old mtime, an owner other than root, a subdirectory, a link inside and one leading out."""
    root = tmp_path / "srv" / "app"
    (root / "conf").mkdir(parents=True)
    (root / "app.log").write_text("GET /login 200\n")
    (root / "conf" / "settings.ini").write_text("[db]\nhost = db\n")
    (root / "run.sh").write_text("#!/bin/sh\nexec app\n")
    (root / "run.sh").chmod(0o750)
    (root / "conf" / "settings.ini").chmod(0o640)
    (root / "setuid-tool").write_bytes(b"\x7fELF")
    (root / "setuid-tool").chmod(0o4755)
    if os.geteuid() == 0:
        os.chown(root / "conf" / "settings.ini", 65534, 65534)
    (root / "current.log").symlink_to("app.log")
    for path in (root / "app.log", root / "conf" / "settings.ini", root / "run.sh", root / "conf", root / "current.log"):
        os.utime(path, (OLD, OLD), follow_symlinks=False)
    return root


# ------------------------------------------------------------------------------------------------ collecting
def test_copies_keep_content_mode_mtime_and_owner_and_no_source_changes(run_module, tmp_path, service):
    before = state_of(service)
    result = collect(run_module, [service], dest=tmp_path / "evidence")
    assert result["changed"] and not result.get("failed"), result
    assert state_of(service) == before
    bundle = Path(result["bundle"])
    assert bundle.parent == tmp_path / "evidence" and bundle.name.startswith("INC-7-")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700 and stat.S_IMODE((tmp_path / "evidence").stat().st_mode) == 0o700
    for name in ("app.log", "conf/settings.ini", "run.sh"):
        source, copy = service / name, copy_of(bundle, service / name)
        assert copy.read_bytes() == source.read_bytes(), name
        assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(source.stat().st_mode), name
        assert copy.stat().st_mtime_ns == source.stat().st_mtime_ns, name
        assert (copy.stat().st_uid, copy.stat().st_gid) == (source.stat().st_uid, source.stat().st_gid), name
    # A set-user-ID bit is recorded, never reproduced on root's copy.
    assert stat.S_IMODE(copy_of(bundle, service / "setuid-tool").stat().st_mode) == 0o755
    inventory = [json.loads(line) for line in (bundle / "inventory.jsonl").read_text().splitlines()]
    by_path = {entry.get("path"): entry for entry in inventory}
    assert by_path[str(service / "setuid-tool")]["mode"] == "4755"
    assert by_path[str(service / "conf")]["mtime_ns"] == OLD * 10 ** 9
    assert os.readlink(copy_of(bundle, service / "current.log")) == "app.log"
    custody = json.loads((bundle / "custody.json").read_text())
    assert custody["incident_id"] == "INC-7" and custody["collected_by"] == "alice" and custody["host"]["hostname"]
    assert custody["collected_at"].endswith("Z") and custody["sha256sums"]["sha256"] == result["sha256sums_digest"]
    assert hashlib.sha256((bundle / "SHA256SUMS").read_bytes()).hexdigest() == result["sha256sums_digest"]
    assert hashlib.sha256((bundle / "custody.json").read_bytes()).hexdigest() == result["custody_digest"]
    [source] = custody["sources"]
    assert source["status"] == "collected" and source["type"] == "directory" and source["files"] == 4
    assert result["files"] == 5 and result["bytes"] > 0  # four copies and the inventory
    checked = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert verify(run_module, bundle, incident_id="INC-7")["problems"] == []


def test_a_symlink_out_of_the_tree_is_copied_as_a_link_never_followed(run_module, tmp_path, service):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$TOPSECRETHASH:19000::::::\n")
    (service / "conf" / "leak").symlink_to(secret)
    (service / "up").symlink_to("../../shadow")
    (service / "dangling").symlink_to(tmp_path / "nowhere")
    top_link = tmp_path / "link-to-secret"
    top_link.symlink_to(secret)
    result = collect(run_module, [service, top_link], dest=tmp_path / "evidence")
    assert not result.get("failed"), result
    bundle = Path(result["bundle"])
    assert b"TOPSECRETHASH" not in bundle_bytes(bundle)
    assert os.readlink(copy_of(bundle, service / "conf" / "leak")) == str(secret)
    assert os.readlink(copy_of(bundle, service / "up")) == "../../shadow"
    assert os.readlink(copy_of(bundle, top_link)) == str(secret)
    records = {record["path"]: record for record in result["sources"]}
    assert records[str(top_link)]["type"] == "symlink" and records[str(top_link)]["target"] == str(secret)
    assert "not followed" in records[str(top_link)]["note"]
    inventory = [json.loads(line) for line in (bundle / "inventory.jsonl").read_text().splitlines()]
    leak = next(entry for entry in inventory if entry.get("path") == str(service / "conf" / "leak"))
    assert leak["target"] == str(secret) and "out of the collected tree" in leak["note"] and "sha256" not in leak
    inside = next(entry for entry in inventory if entry.get("path") == str(service / "current.log"))
    assert "note" not in inside
    assert verify(run_module, bundle)["problems"] == []


def test_fifos_are_recorded_and_never_opened(run_module, tmp_path, service):
    call = fed_fifo(service / "pipe", "FIFO-CONTENT-IN-TREE\n")
    result = call(lambda: collect(run_module, [service], dest=tmp_path / "evidence"))
    assert not result.get("failed"), result
    bundle = Path(result["bundle"])
    assert b"FIFO-CONTENT-IN-TREE" not in bundle_bytes(bundle) and not copy_of(bundle, service / "pipe").exists()
    assert result["sources"][0]["not_copied"] == 1
    top = tmp_path / "top.fifo"
    call = fed_fifo(top, "FIFO-CONTENT-TOP\n")
    result = call(lambda: collect(run_module, [top], dest=tmp_path / "evidence"))
    assert not result.get("failed"), result
    [record] = result["sources"]
    assert record["status"] == "recorded" and record["type"] == "fifo" and "never opened" in record["note"]
    assert b"FIFO-CONTENT-TOP" not in bundle_bytes(Path(result["bundle"]))


def test_a_missing_source_is_recorded_with_a_warning_and_the_rest_collected(run_module, tmp_path, service):
    gone = tmp_path / "var" / "log" / "gone.log"
    result = collect(run_module, [gone, service / "app.log"], dest=tmp_path / "evidence")
    assert result["changed"] and not result.get("failed"), result
    assert result["missing"] == [str(gone)]
    assert any(str(gone) in warning and "missing" in warning for warning in result["warnings"])
    custody = json.loads((Path(result["bundle"]) / "custody.json").read_text())
    assert [record["status"] for record in custody["sources"]] == ["missing", "collected"]
    assert copy_of(Path(result["bundle"]), service / "app.log").read_text() == "GET /login 200\n"


def test_same_basenames_from_two_directories_and_dotdot_paths(run_module, tmp_path):
    first, second = tmp_path / "a" / "app.log", tmp_path / "b" / "app.log"
    for path, text in ((first, "from a\n"), (second, "from b\n")):
        path.parent.mkdir()
        path.write_text(text)
    dotted = tmp_path / "a" / ".." / "b" / "app.log"
    result = collect(run_module, [first, second, dotted, tmp_path / "a", first], dest=tmp_path / "evidence")
    assert not result.get("failed"), result
    bundle = Path(result["bundle"])
    assert copy_of(bundle, first).read_text() == "from a\n" and copy_of(bundle, second).read_text() == "from b\n"
    statuses = [(record["path"], record["status"]) for record in result["sources"]]
    assert statuses == [(str(first), "covered"), (str(second), "collected"), (str(tmp_path / "a"), "collected")]
    assert verify(run_module, bundle)["problems"] == []


def test_a_source_whose_place_in_the_bundle_is_a_link_collected_before_is_unreadable(run_module, tmp_path):
    """A link collected from one source is never followed by the copy of another one that lies beyond it."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "app.log").write_text("through the link\n")
    link = tmp_path / "x" / "link"
    link.parent.mkdir()
    link.symlink_to(real)
    result = collect(run_module, [link, link / "app.log"], dest=tmp_path / "evidence")
    assert not result.get("failed"), result
    bundle = Path(result["bundle"])
    assert [record["status"] for record in result["sources"]] == ["collected", "unreadable"]
    place = "files%s" % link
    assert result["sources"][1]["reason"] == ("its place in the bundle, %s, is taken by a symlink or file collected from "
                                              "another source" % place)
    assert (bundle / place).is_symlink() and not (real / "app.log.partial").exists() and list(real.iterdir()) == [real / "app.log"]
    assert verify(run_module, bundle)["problems"] == []


def test_odd_names_are_listed_so_that_sha256sum_checks_them(run_module, tmp_path):
    tree = tmp_path / "odd"
    tree.mkdir()
    names = ["with space", "new\nline", "back\\slash", "car\rriage", " leading", "trailing ", "-dash", "*star",
             "both\\n\nmixed", "ünïcødé"]
    for number, name in enumerate(names):
        (tree / name).write_text("content %d\n" % number)
    raw = os.path.join(os.fsencode(tree), b"latin1-\xe9")
    with open(raw, "wb") as handle:
        handle.write(b"not utf-8 name\n")
    result = collect(run_module, [tree], dest=tmp_path / "evidence")
    assert not result.get("failed"), result
    bundle = Path(result["bundle"])
    checked = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(b": OK") == len(names) + 2  # and the inventory
    assert verify(run_module, bundle)["problems"] == []
    (copy_of(bundle, tree / "new\nline")).chmod(0o600)
    copy_of(bundle, tree / "new\nline").write_text("forged\n")
    failed = verify(run_module, bundle)
    assert failed["failed"] and [item["path"] for item in failed["problems"]] == ["files%s/new\nline" % tree]


def test_check_mode_creates_nothing_and_runs_no_command(run_module, tmp_path, service):
    dest = tmp_path / "evidence"
    marker = tmp_path / "ran"
    result = collect(run_module, [service, tmp_path / "missing"], [["touch", str(marker)], ["no-such-program-x"]],
                     dest=dest, check_mode=True)
    assert result["changed"] and not result.get("failed"), result
    assert not dest.exists() and not marker.exists()
    assert result["bundle"].startswith(str(dest / "INC-7-")) and result["missing"] == [str(tmp_path / "missing")]
    assert result["commands"] == [dict(argv=["touch", str(marker)], found=True), dict(argv=["no-such-program-x"], found=False)]
    assert result["files"] == 4 + 2 + 1 and result["bytes"] == sum(
        (service / name).stat().st_size for name in ("app.log", "conf/settings.ini", "run.sh", "setuid-tool"))
    real = collect(run_module, [service], [["touch", str(marker)]], dest=dest)
    assert real["files"] == result["files"] and marker.exists()


def test_each_run_makes_a_new_bundle_never_overwriting_one(tmp_path, service):
    moment = datetime.datetime(2026, 11, 22, 3, 15, 2, tzinfo=datetime.timezone.utc)
    dest = tmp_path / "evidence"
    first = _evidence_bundle.collect([str(service)], [], str(dest), "INC-7", "alice", now=moment)
    second = _evidence_bundle.collect([str(service)], [], str(dest), "INC-7", "bob", now=moment)
    assert first["bundle"] == str(dest / "INC-7-20261122T031502Z") and second["bundle"] == first["bundle"] + "-2"
    assert json.loads(Path(first["bundle"], "custody.json").read_text())["collected_by"] == "alice"
    assert sorted(os.listdir(dest)) == ["INC-7-20261122T031502Z", "INC-7-20261122T031502Z-2"]
    assert _evidence_bundle.verify(first["bundle"])["problems"] == []


def test_large_files_are_streamed_whole_and_proc_files_read_to_their_end(run_module, tmp_path):
    big = tmp_path / "dump.sql"
    block = os.urandom(1 << 16)
    with open(big, "wb") as handle:
        for _index in range(40):  # 2.5 MiB: more than one read
            handle.write(block)
    result = collect(run_module, [big, "/proc/version"], dest=tmp_path / "evidence")
    assert not result.get("failed") and result["warnings"] == [], result
    copy = copy_of(Path(result["bundle"]), big)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert result["sources"][0]["size"] == big.stat().st_size
    # /proc files say they are empty; they are read to their end.
    assert copy_of(Path(result["bundle"]), Path("/proc/version")).read_text() == Path("/proc/version").read_text()


def test_a_log_growing_while_it_is_copied_is_copied_as_it_was_when_opened(tmp_path, monkeypatch):
    log = tmp_path / "live.log"
    log.write_text("line 1\nline 2\n")
    real_src = _evidence_bundle._src  # pylint: disable=protected-access

    def appending(call, *args, **kwargs):
        if call is os.read:  # the service writes while the copy is being read
            with open(log, "a", encoding="utf-8") as handle:
                handle.write("line written during the copy\n")
        return real_src(call, *args, **kwargs)

    monkeypatch.setattr(_evidence_bundle, "_src", appending)
    result = _evidence_bundle.collect([str(log)], [], str(tmp_path / "evidence"), "INC-7", "alice")
    copy = copy_of(Path(result["bundle"]), log)
    assert copy.read_text() == "line 1\nline 2\n" and "during the copy" in log.read_text()
    entry = next(json.loads(line) for line in (Path(result["bundle"]) / "inventory.jsonl").read_text().splitlines()
                 if json.loads(line).get("path") == str(log))
    assert entry["sha256"] == hashlib.sha256(b"line 1\nline 2\n").hexdigest() and entry["size"] == 14
    assert "changed while it was copied" in entry["note"] and any("changed while" in warning for warning in result["warnings"])
    assert _evidence_bundle.verify(result["bundle"])["problems"] == []


def test_a_tree_too_deep_to_walk_is_recorded_not_descended(run_module, tmp_path):
    deep = tmp_path / "trap"
    levels = _evidence_bundle.MAX_DEPTH + 5
    bottom = Path(deep, *["d"] * levels)
    bottom.mkdir(parents=True)
    (bottom / "deepest.txt").write_text("unreachable\n")
    (deep / "top.txt").write_text("reachable\n")
    result = collect(run_module, [deep], dest=tmp_path / "evidence")
    assert not result.get("failed"), result
    bundle = Path(result["bundle"])
    assert copy_of(bundle, deep / "top.txt").read_text() == "reachable\n"
    assert b"unreachable" not in bundle_bytes(bundle)
    assert any("directory levels" in warning for warning in result["warnings"])
    assert verify(run_module, bundle)["problems"] == []


# ------------------------------------------------------------------------------------------------ commands
def test_commands_are_captured_with_rc_and_stderr_and_a_missing_program_is_recorded(run_module, tmp_path):
    pwned = tmp_path / "pwned"
    result = collect(run_module, commands=[["sh", "-c", "echo out; echo err >&2; exit 3"], ["no-such-program-x", "--help"],
                                           ["printf", "%s\n", "$(touch %s)" % pwned, "a;b|c"], ["touch %s" % pwned],
                                           ["sleep", "30"]],
                     dest=tmp_path / "evidence", timeout=1)
    assert result["changed"] and not result.get("failed"), result
    bundle = Path(result["bundle"])
    shell, missing, printf, spaced, sleep = result["commands"]
    assert shell["rc"] == 3 and not shell["timed_out"]
    assert (bundle / shell["stdout"]).read_text() == "out\n" and (bundle / shell["stderr"]).read_text() == "err\n"
    assert shell["stdout"] == "commands/01-sh.stdout"
    assert missing["error"] == "program not found: no-such-program-x" and missing["rc"] is None and missing["stdout"] is None
    assert any("no-such-program-x" in warning for warning in result["warnings"])
    assert (bundle / printf["stdout"]).read_text() == "$(touch %s)\na;b|c\n" % pwned
    assert spaced["error"].startswith("program not found") and not pwned.exists()
    assert sleep["timed_out"] and sleep["rc"] < 0
    assert not list((bundle / "commands").glob("02-*"))
    custody = json.loads((bundle / "custody.json").read_text())
    assert [command["rc"] for command in custody["commands"]] == [3, None, 0, None, sleep["rc"]]
    assert verify(run_module, bundle)["problems"] == []


@pytest.mark.parametrize("commands", [["ps aux"], [[]], [["ps", {"a": 1}]], [[""]], ["not a list"]],
                         ids=["string", "empty", "dict word", "empty program", "text"])
def test_a_command_that_is_not_an_argv_list_is_refused_before_anything_runs(run_module, tmp_path, commands):
    dest = tmp_path / "evidence"
    result = run_module("evidence_bundle", dict(incident_id="INC-7", collected_by="alice", dest=str(dest), commands=commands))
    assert result["failed"] and "nothing was kept" in result["msg"] and not dest.exists(), result


# ------------------------------------------------------------------------------------------------ refusals
def test_a_symlinked_dest_is_refused_and_nothing_is_written(run_module, tmp_path, service):
    target = tmp_path / "elsewhere"
    target.mkdir()
    dest = tmp_path / "evidence"
    dest.symlink_to(target)
    result = collect(run_module, [service], dest=dest)
    assert result["failed"] and "symlink" in result["msg"] and "nothing was kept" in result["msg"]
    assert list(target.iterdir()) == []
    planted = planted_link(tmp_path, "evidence")
    result = collect(run_module, [service], dest=planted / "bundles")
    assert result["failed"] and "refusing to follow the symlink" in result["msg"]
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("where", ["inside", "the source itself", "through a symlink"])
def test_a_dest_inside_a_source_is_refused_and_nothing_is_written(run_module, tmp_path, service, where):
    before = state_of(service)
    if where == "inside":
        dest = service / "conf" / "evidence"
    elif where == "the source itself":
        dest = service
    else:
        (tmp_path / "alias").symlink_to(service)
        dest = tmp_path / "alias" / "evidence"
    result = collect(run_module, [service], dest=dest)
    assert result["failed"] and "inside the source" in result["msg"], result
    assert state_of(service) == before


def test_a_dest_others_can_write_to_is_refused(run_module, tmp_path, service):
    dest = tmp_path / "shared-evidence"
    dest.mkdir()
    dest.chmod(0o777)
    result = collect(run_module, [service], dest=dest)
    assert result["failed"] and "writable by others" in result["msg"] and list(dest.iterdir()) == []


@pytest.mark.parametrize("params", [dict(incident_id="../x"), dict(incident_id="a b"), dict(collected_by="two\nlines"),
                                    dict(collected_by=" padded"), dict(timeout=0), dict(collected_by="")],
                         ids=["id traversal", "id space", "who newline", "who padded", "timeout", "who empty"])
def test_invalid_options_are_refused_and_nothing_is_written(run_module, tmp_path, service, params):
    dest = tmp_path / "evidence"
    result = run_module("evidence_bundle", dict(dict(incident_id="INC-7", collected_by="alice", dest=str(dest),
                                                     sources=[str(service)]), **params))
    assert result["failed"] and not dest.exists(), result


def test_a_killed_collection_leaves_no_bundle_and_its_leftover_is_removed(run_module, tmp_path, service):
    dest = tmp_path / "evidence"
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / "evidence_bundle_publish.hold").touch()
    params = dict(incident_id="INC-7", collected_by="alice", dest=str(dest), sources=[str(service)])
    kill_at(start_module("evidence_bundle", params, fault_dir), fault_dir, "evidence_bundle_publish")
    [leftover] = os.listdir(dest)
    assert leftover.startswith(".INC-7-") and leftover.endswith(".partial")
    result = collect(run_module, [service], dest=dest)
    assert not result.get("failed") and any("killed" in warning for warning in result["warnings"]), result
    assert os.listdir(dest) == [os.path.basename(result["bundle"])]


# ------------------------------------------------------------------------------------------------ verifying
@pytest.mark.parametrize("tamper", ["modified", "deleted", "added", "sha256sums rewritten", "link retargeted",
                                    "custody of another incident"])
def test_verification_names_each_file_missing_altered_or_added(run_module, tmp_path, service, tamper):
    result = collect(run_module, [service], [["echo", "hello"]], dest=tmp_path / "evidence")
    bundle = Path(result["bundle"])
    intact = verify(run_module, bundle, check_mode=True)
    assert not intact.get("failed") and intact["changed"] is False and intact["problems"] == [], intact
    assert intact["sha256sums_digest"] == result["sha256sums_digest"] and intact["files"] == result["files"]
    log = copy_of(bundle, service / "app.log")
    expected = {}
    if tamper == "modified":
        log.chmod(0o600)
        log.write_text("GET /login 500\n")
        expected = {"files%s/app.log" % service: "altered"}
    elif tamper == "deleted":
        (bundle / "commands" / "01-echo.stdout").unlink()
        expected = {"commands/01-echo.stdout": "missing"}
    elif tamper == "added":
        (bundle / "files" / "planted.txt").write_text("evidence that was never collected\n")
        expected = {"files/planted.txt": "added"}
    elif tamper == "sha256sums rewritten":
        log.chmod(0o600)
        log.write_text("GET /login 500\n")
        sums = bundle / "SHA256SUMS"
        sums.chmod(0o600)
        old = hashlib.sha256(b"GET /login 200\n").hexdigest()
        sums.write_text(sums.read_text().replace(old, hashlib.sha256(b"GET /login 500\n").hexdigest()))
        expected = {"SHA256SUMS": "altered", "files%s/app.log" % service: "altered"}
    elif tamper == "link retargeted":
        link = copy_of(bundle, service / "current.log")
        link.unlink()
        link.symlink_to("/etc/shadow")
        expected = {"files%s/current.log" % service: "altered"}
    else:
        custody = bundle / "custody.json"
        custody.chmod(0o600)
        custody.write_text(custody.read_text().replace('"INC-7"', '"INC-8"'))
        expected = {"custody.json": "altered"}
    checked = verify(run_module, bundle, incident_id="INC-7")
    assert checked["failed"] and checked["changed"] is False, checked
    assert {item["path"]: item["problem"] for item in checked["problems"]} == expected, checked["problems"]
    for path in expected:
        assert path in checked["msg"]
    assert verify(run_module, bundle, check_mode=True, incident_id="INC-7")["problems"] == checked["problems"]


def test_a_forged_sha256sums_line_leading_out_of_the_bundle_is_invalid_never_read(run_module, tmp_path, service):
    result = collect(run_module, [service], dest=tmp_path / "evidence")
    bundle = Path(result["bundle"])
    sums = bundle / "SHA256SUMS"
    sums.chmod(0o600)
    with open(sums, "a", encoding="utf-8") as handle:
        handle.write("%s  ../../../etc/passwd\n%s  /etc/shadow\nnot a line\n" % ("0" * 64, "1" * 64))
    checked = verify(run_module, bundle)
    assert checked["failed"] and {(item["path"], item["problem"]) for item in checked["problems"]} == {
        ("SHA256SUMS", "altered"), ("SHA256SUMS", "invalid")}
    assert len([item for item in checked["problems"] if item["problem"] == "invalid"]) == 3


def test_verifying_what_is_no_bundle_fails_clearly(run_module, tmp_path):
    missing = verify(run_module, tmp_path / "nowhere")
    assert missing["failed"] and "no bundle" in missing["msg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = verify(run_module, empty)
    assert result["failed"] and {item["path"] for item in result["problems"]} == {"custody.json", "SHA256SUMS"}


# ------------------------------------------------------------------------------------------------ through ansible
def test_collected_and_verified_through_ansible_playbook(ansible_play, tmp_path, service):
    dest = tmp_path / "evidence"
    tasks = [
        {"name": "collect", "runbooks.incident.evidence_bundle": {
            "incident_id": "INC-7", "collected_by": "{{ who }}", "dest": str(dest),
            "sources": [str(service), str(tmp_path / "missing.log")], "commands": [["id", "-u"]]}, "register": "evidence"},
        {"name": "verify", "runbooks.incident.evidence_bundle": {
            "state": "verified", "bundle": "{{ evidence.bundle }}", "incident_id": "INC-7"}},
    ]
    dry = ansible_play(tasks[:1], check=True, extra_vars={"who": "alice"})
    assert dry.rc == 0 and dry["collect"]["changed"] and not dest.exists(), dry.stdout
    play = ansible_play(tasks, extra_vars={"who": "alice"})
    assert play.rc == 0, play.stdout + play.stderr
    collected, verified = play["collect"], play["verify"]
    assert collected["changed"] and collected["missing"] == [str(tmp_path / "missing.log")]
    assert verified["changed"] is False and verified["problems"] == [] and verified["collected_by"] == "alice"
    assert verified["sha256sums_digest"] == collected["sha256sums_digest"]


def test_collecting_evidence_is_no_mitigation_in_the_timeline():
    """A run that only preserved evidence changed the incident's record, not the service: the post-mortem must not
    tick 'Mitigation deployed' for it."""
    collected = dict(status="changed", action="runbooks.incident.evidence_bundle", task="preserve the evidence")
    assert _timeline.changed_by_collection(collected) and not _timeline.is_remediation(collected)
    run = dict(mode="apply", outcome="ok", tasks=[collected])
    assert _timeline.mitigating_run(dict(runs=[run])) is None
