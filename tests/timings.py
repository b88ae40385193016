# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the suite's time goes: each phase of `make test` records its wall time, and the run ends with the table.

    timings.py run PHASE -- COMMAND...   run COMMAND, record how long it took as PHASE (its exit status is kept);
                                         molecule's output is read as it goes: each scenario action is a phase too
    timings.py start                     begin a new record (the previous one is kept as .build/timings/last.jsonl)
    timings.py report [FILE]             the table of the record (markdown), with the total

Records are JSON lines in .build/timings/current.jsonl: {"phase", "seconds", "status", "started"}. Phases that run at
the same time (make -j) overlap: the table gives each its own wall time, the total is the wall time of the whole run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = Path(os.environ.get("RUNBOOKS_TIMINGS_DIR", ROOT / ".build" / "timings"))
CURRENT = RECORDS / "current.jsonl"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# molecule 26 prints `INFO     [scenario > action] Executing` / `... Executed: Successful`, in colour or not.
ACTION = re.compile(r"\[(?P<scenario>[\w-]+) > (?P<action>[\w-]+)\]:? (?P<what>Executing|Executed: \w+)")


def record(phase: str, seconds: float, status: str, started: float) -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    with open(CURRENT, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(phase=phase, seconds=round(seconds, 1), status=status, started=round(started, 1))) + "\n")


def run(phase: str, argv: list[str]) -> int:
    started = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    actions = {}
    for line in proc.stdout:
        sys.stdout.write(line)
        match = ACTION.search(ANSI.sub("", line))
        if match:
            key = "%s: %s" % (phase, match.group("action"))
            if match.group("what") == "Executing":
                actions[key] = time.time()
            elif key in actions:
                begun = actions.pop(key)
                record(key, time.time() - begun, match.group("what").split(": ")[1].lower(), begun)
    code = proc.wait()
    record(phase, time.time() - started, "ok" if code == 0 else "failed (exit %d)" % code, started)
    return code


def start() -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    if CURRENT.exists():
        CURRENT.replace(RECORDS / "last.jsonl")
    record("start", 0, "ok", time.time())


def minutes(seconds: float) -> str:
    return "%dm%02d" % divmod(round(seconds), 60)


def report(path: Path) -> str:
    """One row per phase in the order they began, with when it began (after the start of the run: phases of
    parallel lanes overlap); a phase run more than once (a scenario's two check runs, the cached image step each make
    target repeats) shows its runs and their total."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    begun = min(row["started"] for row in rows)
    ended = max(row["started"] + row["seconds"] for row in rows)
    phases = {}
    for row in sorted(rows, key=lambda row: row["started"]):
        if row["phase"] == "start" or row["status"] == "missing":  # the start mark; an action with no playbook
            continue
        phase = phases.setdefault(row["phase"], {"began": row["started"] - begun, "seconds": 0.0, "runs": 0, "status": []})
        phase["seconds"] += row["seconds"]
        phase["runs"] += 1
        if row["status"] not in phase["status"]:
            phase["status"].append(row["status"])
    lines = ["| phase | began | time | status |", "|---|---|---|---|"]
    for name, phase in phases.items():
        runs = " (%d runs)" % phase["runs"] if phase["runs"] > 1 else ""
        lines.append("| %s%s | %s | %s | %s |" % (name, runs, minutes(phase["began"]), minutes(phase["seconds"]), ", ".join(phase["status"])))
    lines.append("| **whole run (wall time)** | | **%s** | |" % minutes(ended - begun))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"] and "--" in argv:
        split = argv.index("--")
        return run(argv[1], argv[split + 1:])
    if argv == ["start"]:
        start()
        return 0
    if argv[:1] == ["report"]:
        path = Path(argv[1]) if len(argv) > 1 else CURRENT
        print("\nWhere the time went (%s):\n\n%s" % (path, report(path)))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
