# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_log: appends once per id, and any edit of the past (row, order, evidence file) is detected."""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _evidence
from conftest import COLLECTIONS, planted_link  # pylint: disable=import-error


def drill(run_module, log, drill_id, result="pass", check_mode=False):
    return run_module("evidence_log", dict(path=str(log), id=drill_id, title="Backup restore drills",
                                           fields={"backup used": "db-2026-11-21", "RTO s": 93.5, "result": result},
                                           evidence={"row_counts": {"clients": 50}, "media": "100/100"}), check_mode=check_mode)


def test_rows_append_once_and_verify(run_module, tmp_path):
    log = tmp_path / "backup-drills.md"
    assert drill(run_module, log, "DRILL-1", check_mode=True)["changed"] and not log.exists()
    first = drill(run_module, log, "DRILL-1")
    assert first["changed"] and first["row"]["result"] == "pass"
    assert not drill(run_module, log, "DRILL-1")["changed"]
    drill(run_module, log, "DRILL-2", result="fail")
    text = log.read_text()
    assert text.startswith("# Backup restore drills") and text.count("| DRILL-") == 2
    evidence = tmp_path / "evidence" / f"{first['row']['evidence sha256']}.json"
    assert '"clients": 50' in evidence.read_text() and oct(evidence.stat().st_mode & 0o777) == "0o440"
    verified = run_module("evidence_log", dict(path=str(log), state="verified"))
    assert verified["rows"] == 2 and not verified["changed"]


@pytest.mark.parametrize("tamper", ["edit a cell", "remove a row", "swap rows", "edit evidence"])
def test_tampering_with_the_past_is_detected_and_blocks_appending(run_module, tmp_path, tamper):
    log = tmp_path / "backup-drills.md"
    for drill_id in ("DRILL-1", "DRILL-2", "DRILL-3"):
        drill(run_module, log, drill_id, result="fail" if drill_id == "DRILL-1" else "pass")
    lines = log.read_text().splitlines(keepends=True)
    rows = [i for i, line in enumerate(lines) if line.startswith("| 20")]
    if tamper == "edit a cell":
        lines[rows[0]] = lines[rows[0]].replace("| fail |", "| pass |")
    elif tamper == "remove a row":
        del lines[rows[1]]
    elif tamper == "swap rows":
        lines[rows[0]], lines[rows[1]] = lines[rows[1]], lines[rows[0]]
    log.write_text("".join(lines))
    if tamper == "edit evidence":
        evidence = sorted((tmp_path / "evidence").iterdir())[0]
        evidence.chmod(0o640)
        evidence.write_text(evidence.read_text().replace("100/100", "99/100"))
    verified = run_module("evidence_log", dict(path=str(log), state="verified"))
    assert verified["failed"] and ("chain is broken" in verified["msg"] or "was changed" in verified["msg"])
    before = log.read_text()
    refused = drill(run_module, log, "DRILL-4")
    assert refused["failed"] and log.read_text() == before


def test_stale_drill_alert(tmp_path):
    log = tmp_path / "backup-drills.md"
    old = datetime.datetime(2026, 5, 1, tzinfo=datetime.timezone.utc)
    _evidence.append(str(log), "DRILL-OLD", {"result": "pass"}, {}, now=old)
    _evidence.append(str(log), "DRILL-NEW", {"result": "fail"}, {}, now=old + datetime.timedelta(days=150))
    _columns, rows = _evidence.verify(str(log))
    now = old + datetime.timedelta(days=151)
    with pytest.raises(_evidence.EvidenceError, match="151 days old"):
        _evidence.newest(rows, {"result": "pass"}, max_age_days=92, now=now)
    assert _evidence.newest(rows, {"result": "pass"}, max_age_days=200, now=now)["id"] == "DRILL-OLD"


# ------------------------------------------------------------------------------------------------ symlinks
def test_a_symlink_at_the_log_path_is_never_followed(run_module, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "backup-drills.md"
    log.symlink_to(victim)
    appended = drill(run_module, log, "DRILL-1")
    assert appended["failed"] and "symlink" in appended["msg"]
    verified = run_module("evidence_log", dict(path=str(log), state="verified"))
    assert verified["failed"] and "symlink" in verified["msg"]
    assert victim.read_text() == "precious\n" and log.is_symlink()


def test_a_log_in_a_symlinked_directory_of_a_shared_directory_is_refused(run_module, tmp_path):
    sub = planted_link(tmp_path, "sub")
    elsewhere = tmp_path / "elsewhere"
    appended = drill(run_module, sub / "backup-drills.md", "DRILL-1")
    assert appended["failed"] and "refusing to follow the symlink sub" in appended["msg"]
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------------------------------------ field content
HOSTILE = ["a\rb", "\r", "two\nlines", "tab\there", "x\u2028y", "p\u2029q", "v\x0bw", "f\x0cg", "n\x85l", "s\x1ct",
           "pipe | in it", "back\\slash", "\\|", "|", "  padded  ", "ünïcødé ✓", "\x1b[31mred"]


def test_hostile_field_values_keep_the_log_readable_and_appendable(run_module, tmp_path):
    log = tmp_path / "backup-drills.md"
    for number, value in enumerate(HOSTILE):
        result = run_module("evidence_log", dict(path=str(log), id="DRILL-%d" % number, fields={"note": value, "result": "pass"}))
        assert not result.get("failed") and result["changed"], (value, result)
    verified = run_module("evidence_log", dict(path=str(log), state="verified", where={"result": "pass"}, max_age_days=1))
    assert not verified.get("failed"), verified
    assert verified["rows"] == len(HOSTILE) and verified["newest"]["id"] == "DRILL-%d" % (len(HOSTILE) - 1)
    again = run_module("evidence_log", dict(path=str(log), id="DRILL-0", fields={"note": "x", "result": "pass"}))
    assert again["changed"] is False and again["rows"] == len(HOSTILE)
    before = log.read_bytes()
    nul = run_module("evidence_log", dict(path=str(log), id="DRILL-NUL", fields={"note": "nul\x00byte", "result": "pass"}))
    assert nul.get("failed") and "NUL byte" in nul["msg"] and log.read_bytes() == before


@pytest.mark.parametrize("fields", [{"a|b": 1}, {"two\nlines": 1}, {"cr\r": 1}, {"": 1}, {" padded": 1}, {"id": 1},
                                    {"chain": 1}, {"evidence sha256": 1}, {"date (UTC)": 1}, {"x\u2028": 1}],
                         ids=["pipe", "newline", "cr", "empty", "padded", "id", "chain", "evidence", "date", "u2028"])
def test_a_column_name_the_log_cannot_hold_is_refused_and_nothing_is_written(run_module, tmp_path, fields):
    log = tmp_path / "backup-drills.md"
    result = run_module("evidence_log", dict(path=str(log), id="DRILL-1", fields=fields))
    assert result["failed"] and "column name" in result["msg"] and "nothing was written" in result["msg"]
    assert not log.exists() and not (tmp_path / "evidence").exists()


@pytest.mark.parametrize("entry_id", ["a|b", "two\nlines", "cr\r", "", " padded", "x\u2028y", "tab\t"])
def test_an_id_the_log_cannot_hold_is_refused_and_never_duplicated(run_module, tmp_path, entry_id):
    log = tmp_path / "backup-drills.md"
    drill(run_module, log, "DRILL-0")
    before = log.read_text()
    for _attempt in range(2):
        result = drill(run_module, log, entry_id)
        assert result["failed"] and "id" in result["msg"] and "nothing was written" in result["msg"]
    assert log.read_text() == before


@pytest.mark.parametrize("title", ["two\n| evil | header |", "cr\rtitle", "x\u2028y"], ids=["newline", "cr", "u2028"])
def test_a_title_that_would_break_the_log_is_refused(run_module, tmp_path, title):
    log = tmp_path / "backup-drills.md"
    result = run_module("evidence_log", dict(path=str(log), id="DRILL-1", title=title, fields={"result": "pass"}))
    assert result["failed"] and "title" in result["msg"] and not log.exists()


def damage(log, how):
    text = log.read_text()
    if how == "a cr split row (an earlier version)":
        # What the earlier version wrote for a value with a carriage return: the chain over the cell as given.
        cells = ["2026-11-21T10:00:00Z", "DRILL-X", "db-1", "9", "pa\rss"]
        digest = "0" * 64
        previous = [line for line in text.splitlines() if line.startswith("| 20")][-1].split("|")[-2].strip()
        log.write_text(text + "| %s |\n" % " | ".join(cells + [digest, _evidence.chain_of(previous, cells, digest)]))
        return "evidence file"
    if how == "a header without id":
        log.write_text(text.replace("| date (UTC) | id |", "| date (UTC) | name |"))
        return "header"
    if how == "bytes that are not UTF-8":
        log.write_bytes(log.read_bytes().replace(b"db-2026-11-21", b"db-\xff\xfe-11-21", 1))
        return "not UTF-8"
    if how == "an evidence digest leading out of evidence/":
        first = [line for line in text.splitlines() if line.startswith("| 20")][0]
        digest = first.split("|")[-3].strip()
        log.write_text(text.replace(digest, "../../../../etc/passwd"))
        return "not a SHA-256"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["a cr split row (an earlier version)", "a header without id", "bytes that are not UTF-8",
                                 "an evidence digest leading out of evidence/"])
def test_a_damaged_log_is_reported_clearly_never_a_traceback(run_module, tmp_path, how):
    log = tmp_path / "backup-drills.md"
    drill(run_module, log, "DRILL-1")
    expected = damage(log, how)
    verified = run_module("evidence_log", dict(path=str(log), state="verified", where={"result": "pass"}, max_age_days=92))
    assert verified["failed"] and expected in verified["msg"], verified["msg"]
    before = log.read_bytes()
    refused = drill(run_module, log, "DRILL-2")
    assert refused["failed"] and expected in refused["msg"] and log.read_bytes() == before


def test_a_recomputed_row_with_a_date_that_is_not_a_date_is_reported(run_module, tmp_path):
    log = tmp_path / "backup-drills.md"
    drill(run_module, log, "DRILL-1")
    rewrite(log, lambda cells: cells.__setitem__(0, "yesterday"))
    verified = run_module("evidence_log", dict(path=str(log), state="verified", where={"result": "pass"}, max_age_days=92))
    assert verified["failed"] and "date" in verified["msg"] and "yesterday" in verified["msg"]


# ------------------------------------------------------------------------------------------------ anchors
def rewrite(log, edit):
    """What the writer of the log can do without an anchor: edit rows and recompute every chain from the public
    start, so that the log verifies again."""
    lines = log.read_text().splitlines()
    previous = _evidence.GENESIS
    out = []
    for line in lines:
        if line.startswith("| 20") or line.startswith("| yesterday"):
            cells = [part.strip() for part in line.strip().strip("|").split("|")]
            body, digest = cells[:-2], cells[-2]
            edit(body)
            previous = _evidence.chain_of(previous, body, digest)
            line = "| %s |" % " | ".join(body + [digest, previous])
        out.append(line)
    log.write_text("\n".join(out) + "\n")


def anchored_drill(run_module, log, anchors, drill_id, result="pass", check_mode=False):
    return run_module("evidence_log", dict(path=str(log), id=drill_id, title="Backup restore drills", anchor_dir=str(anchors),
                                           fields={"backup used": "db-2026-11-21", "RTO s": 93.5, "result": result},
                                           evidence={"media": "100/100"}), check_mode=check_mode)


@pytest.fixture(name="anchored")
def anchored_fixture(run_module, tmp_path):
    """A log of three drills (the first failed) on the writer's host, its heads in a separate directory that stands
    in for the log server's append-only store."""
    log, anchors = tmp_path / "writer" / "backup-drills.md", tmp_path / "logserver" / "anchors"
    for drill_id in ("DRILL-1", "DRILL-2", "DRILL-3"):
        result = anchored_drill(run_module, log, anchors, drill_id, result="fail" if drill_id == "DRILL-1" else "pass")
        assert result["changed"] and not result.get("failed"), result
    return log, anchors


def verify_anchored(run_module, log, anchors):
    return run_module("evidence_log", dict(path=str(log), state="verified", anchor_dir=str(anchors)))


def test_each_append_writes_one_head_that_is_never_rewritten(run_module, anchored):
    log, anchors = anchored
    heads = sorted(anchors.iterdir())
    assert [head.name.split("-")[0] for head in heads] == ["00000001", "00000002", "00000003"]
    records = [json.loads(head.read_text()) for head in heads]
    assert [record["id"] for record in records] == ["DRILL-1", "DRILL-2", "DRILL-3"]
    assert all(oct(head.stat().st_mode & 0o777) == "0o440" for head in heads)
    stamps = [(head.stat().st_ino, head.stat().st_mtime_ns) for head in heads]
    assert anchored_drill(run_module, log, anchors, "DRILL-3")["changed"] is False
    assert [(head.stat().st_ino, head.stat().st_mtime_ns) for head in sorted(anchors.iterdir())] == stamps
    verified = verify_anchored(run_module, log, anchors)
    assert not verified.get("failed") and verified["rows"] == 3 and verified["anchored_rows"] == 3


@pytest.mark.parametrize("rows_left", [2, 0])
def test_truncation_is_detected(run_module, anchored, rows_left):
    log, anchors = anchored
    lines = log.read_text().splitlines(keepends=True)
    rows = [i for i, line in enumerate(lines) if line.startswith("| 20")]
    log.write_text("".join(line for i, line in enumerate(lines) if i not in rows[rows_left:]))
    assert run_module("evidence_log", dict(path=str(log), state="verified"))["rows"] == rows_left  # the chain alone holds
    verified = verify_anchored(run_module, log, anchors)
    assert verified["failed"] and "truncated" in verified["msg"] and "3 rows" in verified["msg"]
    before = log.read_text()
    refused = anchored_drill(run_module, log, anchors, "DRILL-4")
    assert refused["failed"] and "truncated" in refused["msg"] and log.read_text() == before


def test_a_removed_log_is_detected(run_module, anchored):
    log, anchors = anchored
    log.unlink()
    verified = verify_anchored(run_module, log, anchors)
    assert verified["failed"] and "truncated" in verified["msg"]


def test_a_row_edited_with_the_chain_recomputed_is_detected(run_module, anchored):
    log, anchors = anchored
    rewrite(log, lambda cells: cells.__setitem__(-1, "pass"))  # the failed drill now passed
    assert not run_module("evidence_log", dict(path=str(log), state="verified")).get("failed")  # the chain alone is fooled
    verified = verify_anchored(run_module, log, anchors)
    assert verified["failed"] and "row 1 (DRILL-1)" in verified["msg"] and "rewritten" in verified["msg"]
    # New heads for the rewritten log do not help: every head ever written must still hold.
    anchored_drill(run_module, log, anchors, "DRILL-4")
    assert verify_anchored(run_module, log, anchors)["failed"]


def test_a_log_without_anchors_is_anchored_from_its_next_append(run_module, tmp_path):
    log, anchors = tmp_path / "backup-drills.md", tmp_path / "anchors"
    drill(run_module, log, "DRILL-1")
    drill(run_module, log, "DRILL-2")
    verified = verify_anchored(run_module, log, anchors)
    assert not verified.get("failed") and verified["anchored_rows"] == 0
    assert any("not anchored" in warning for warning in verified["warnings"])
    predicted = anchored_drill(run_module, log, anchors, "DRILL-3", check_mode=True)
    assert predicted["changed"] and not anchors.exists()
    anchored_drill(run_module, log, anchors, "DRILL-3")
    assert verify_anchored(run_module, log, anchors)["anchored_rows"] == 3


def test_an_anchor_directory_that_is_not_one_fails_clearly(run_module, anchored):
    log, anchors = anchored
    (anchors / "00000009-notahead.json").write_text("{}")
    verified = verify_anchored(run_module, log, anchors)
    assert verified["failed"] and "00000009-notahead.json" in verified["msg"]
    (anchors / "00000009-notahead.json").unlink()
    head = sorted(anchors.iterdir())[0]
    head.chmod(0o640)
    head.write_text("[]")
    verified = verify_anchored(run_module, log, anchors)
    assert verified["failed"] and head.name in verified["msg"] and "not a head record" in verified["msg"]


def test_duplicate_ids_left_by_an_earlier_version_are_reported(run_module, tmp_path):
    log = tmp_path / "backup-drills.md"
    drill(run_module, log, "DRILL-1")
    # The earlier version stored the id "DRILL|1" as "DRILL/1" and never found it again: one row per run.
    for _run in range(2):
        lines = log.read_text().splitlines()
        last = [line for line in lines if line.startswith("| 20")][-1]
        cells = [part.strip() for part in last.strip().strip("|").split("|")]
        cells[1] = "DRILL/1"
        body, digest = cells[:-2], cells[-2]
        log.write_text(log.read_text() + "| %s |\n" % " | ".join(body + [digest, _evidence.chain_of(cells[-1], body, digest)]))
    verified = run_module("evidence_log", dict(path=str(log), state="verified"))
    assert not verified.get("failed") and verified["rows"] == 3
    assert any("DRILL/1" in warning and "several rows" in warning for warning in verified["warnings"])


def _append_racing(log, drill_id, start):
    start.wait()
    _evidence.append(log, drill_id, {"result": "pass"}, {"n": drill_id})


def test_concurrent_appends_never_fork_the_chain(tmp_path):
    log = str(tmp_path / "backup-drills.md")
    _evidence.append(log, "DRILL-0", {"result": "pass"}, {})
    start = multiprocessing.Event()
    racers = [multiprocessing.Process(target=_append_racing, args=(log, "DRILL-%d" % n, start)) for n in range(1, 9)]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(30)
    _columns, rows = _evidence.verify(log)
    assert sorted(row["id"] for row in rows) == ["DRILL-%d" % n for n in range(9)]


def test_a_path_that_names_another_file_is_never_appended_to(run_module, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    appended = drill(run_module, passwd, "DRILL-1")
    assert appended["failed"] and "not an evidence log" in appended["msg"]
    verified = run_module("evidence_log", dict(path=str(passwd), state="verified"))
    assert verified["failed"] and "not an evidence log" in verified["msg"]
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


def test_the_daily_check_on_the_log_server_catches_a_truncated_log(anchored):
    """The host-side evidence-check job (runbooks-evidence-check.service) checks the anchors too, not only the chain."""
    log, anchors = anchored
    config = log.parent / "evidence-check.json"
    config.write_text(json.dumps(dict(path=str(log), anchor_dir=str(anchors), where={"result": "pass"})))

    def check():
        return subprocess.run([sys.executable, "-m", "ansible_collections.runbooks.incident.plugins.module_utils._cli", "evidence-check",
                               "--config", str(config)], capture_output=True, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)))
    assert check().returncode == 0
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))  # the newest row removed: the chain alone still holds
    failed = check()
    assert failed.returncode == 1 and "truncated" in failed.stderr, failed.stderr


def test_a_log_cut_short_is_caught_even_when_no_anchor_directory_was_chosen(run_module, tmp_path):
    """The issue's case with the module's defaults: the last rows removed, or all of them, no longer verify."""
    log = tmp_path / "backup-drills.md"
    for number in range(3):
        assert drill(run_module, log, "DRILL-%d" % number)["changed"]
    lines = log.read_text().splitlines(keepends=True)
    for keep in (len(lines) - 1, len(lines) - 3):
        log.write_text("".join(lines[:keep]))
        verified = run_module("evidence_log", dict(path=str(log), state="verified"))
        assert verified.get("failed") and "truncated" in verified["msg"], verified
    log.unlink()
    assert "truncated" in run_module("evidence_log", dict(path=str(log), state="verified"))["msg"]
