# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CHANGELOG.rst, rendered by antsibull-changelog from changelogs/ (a fragment per user-visible change).

The version in galaxy.yml is rendered as antsibull-changelog will release it (`antsibull-changelog release` in a
copy, so changelogs/changelog.yaml and the fragments stay as they are until the real release).

    changelog.py            lint the fragments, write CHANGELOG.rst
    changelog.py --check    lint, and exit 1 when CHANGELOG.rst is not what the fragments give (a unit test runs it)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUTPUT = ROOT / "CHANGELOG.rst"


def antsibull(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # release looks for the collection's plugins with ansible-doc (the venv's); the copy has none, so none is listed.
    env = dict(os.environ, PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))
    return subprocess.run([str(BIN / "antsibull-changelog"), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def lint() -> list[str]:
    res = antsibull("lint", cwd=ROOT)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.strip()] if res.returncode or res.stdout.strip() else []


def render() -> str:
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        shutil.copy(ROOT / "galaxy.yml", copy)
        shutil.copytree(ROOT / "changelogs", copy / "changelogs")
        res = antsibull("release", "--version", version, "--date", "1970-01-01", cwd=copy)  # the date is not rendered
        if res.returncode:
            raise SystemExit("antsibull-changelog release failed: %s" % (res.stderr or res.stdout).strip())
        return (copy / OUTPUT.name).read_text()


def main(argv: list[str]) -> int:
    problems = lint()
    for line in problems:
        print(line)
    if problems:
        return 1
    if argv == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != render():
            print("%s is not what changelogs/fragments give: run `make changelog`" % OUTPUT.name)
            return 1
        return 0
    if argv:
        sys.stderr.write(__doc__)
        return 2
    OUTPUT.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
