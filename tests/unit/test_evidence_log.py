# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_log: appends once per id, and any edit of the past (row, order, evidence file) is detected."""
from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _evidence


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
