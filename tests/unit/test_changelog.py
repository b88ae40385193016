# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The changelog is antsibull-changelog's: the fragments lint clean and CHANGELOG.rst is what they render to."""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))
import changelog  # noqa: E402  pylint: disable=wrong-import-position


def test_the_fragments_lint_clean():
    assert changelog.lint() == []


def test_the_changelog_is_what_the_fragments_render_to():
    rendered = changelog.render()
    assert "Added\n-----" in rendered and "service_layout" in rendered
    assert changelog.OUTPUT.read_text() == rendered
