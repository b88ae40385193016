# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each role's README.md, generated from its meta/argument_specs.yml (the one description of a role's inputs).

    role_docs.py            write roles/*/README.md
    role_docs.py --check    exit 1 naming each README that differs from what its argument specs give (make test
                            runs it through tests/unit/test_role_docs.py)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "roles"
GENERATED = "<!-- Generated from meta/argument_specs.yml by tests/role_docs.py: edit the specs, then run `make docs`. -->"


def plain(text: str) -> str:
    """Ansible's documentation markup (C(), I(), M(), U(), L()) as Markdown."""
    text = re.sub(r"\b[CI]\(([^()]*(?:\([^()]*\)[^()]*)*)\)", lambda m: "`%s`" % m.group(1), text)
    text = re.sub(r"\bM\(([^)]*)\)", r"`\1`", text)
    text = re.sub(r"\bU\(([^)]*)\)", r"<\1>", text)
    text = re.sub(r"\bL\(([^,]*),\s*([^)]*)\)", r"[\1](\2)", text)
    return text


def paragraphs(description) -> list[str]:
    if description is None:
        return []
    return [plain(str(item)) for item in (description if isinstance(description, list) else [description])]


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "`%s`" % str(value).lower()
    if value == "" or value == [] or value == {}:
        return "`%s`" % (yaml.safe_dump(value, default_flow_style=True).strip())
    return "`%s`" % (value if isinstance(value, (str, int, float)) else yaml.safe_dump(value, default_flow_style=True).strip())


def render(role: str, specs: dict) -> str:
    lines = [GENERATED, "", "# runbooks.incident.%s" % role, ""]
    main = specs.get("main", {})
    if main.get("short_description"):
        lines += [plain(main["short_description"]), ""]
    for name, entry in specs.items():
        heading = "## Entry point `%s`" % name
        lines += [heading + ("" if name == "main" else " (`tasks_from: %s`)" % name), ""]
        if name != "main" and entry.get("short_description"):
            lines += [plain(entry["short_description"]), ""]
        for paragraph in paragraphs(entry.get("description")):
            lines += [paragraph, ""]
        options = entry.get("options") or {}
        if not options:
            lines += ["No options.", ""]
            continue
        lines += ["| variable | type | default | description |", "|---|---|---|---|"]
        for option, spec in options.items():
            kind = spec.get("type", "str")
            if kind == "list" and spec.get("elements"):
                kind = "list of %s" % spec["elements"]
            description = " ".join(paragraphs(spec.get("description")))
            if spec.get("choices"):
                description += " Choices: %s." % ", ".join("`%s`" % choice for choice in spec["choices"])
            if spec.get("required"):
                description += " Required."
            lines.append("| `%s` | %s | %s | %s |" % (option, kind, cell(shown(spec.get("default"))), cell(description)))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def expected() -> dict[Path, str]:
    return {path.parent.parent / "README.md": render(path.parts[-3], yaml.safe_load(path.read_text())["argument_specs"])
            for path in sorted(ROLES.glob("*/meta/argument_specs.yml"))}


def drift() -> list[str]:
    """The READMEs that differ from what their argument specs give."""
    return [str(path.relative_to(ROOT)) for path, text in expected().items() if not path.exists() or path.read_text() != text]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = drift()
        for path in stale:
            print("%s differs from its meta/argument_specs.yml: run `make docs`" % path)
        return 1 if stale else 0
    if argv:
        sys.stderr.write(__doc__)
        return 2
    for path, text in expected().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
