# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter runbooks.incident.stale_files: which installed job code files scheduled_jobs copies again, from the
output of `sha256sum` and `stat -c "%a %U %G %n"` over them (as the role runs it, on real files, and as lines)."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.runbooks.incident.plugins.filter.job_code import FilterModule, stale_files

DIR = "/usr/lib/runbooks/ansible_collections/runbooks/incident/plugins/module_utils"
A, B = "_cli.py", "_pg.py"
DA, DB = hashlib.sha256(b"a\n").hexdigest(), hashlib.sha256(b"b\n").hexdigest()
WANTED = {A: DA, B: DB}


def lines(entries, directory=DIR):
    """The output for {name: (sha256, "mode owner group")} of the files that exist, as the role's command prints it."""
    digests = ["%s  %s/%s" % (digest, directory, name) for name, (digest, _stat) in entries.items()]
    stats = ["%s %s/%s" % (stat, directory, name) for name, (_digest, stat) in entries.items()]
    return "\n".join(digests + stats)


CURRENT = {A: (DA, "644 root root"), B: (DB, "644 root root")}


def test_the_filter_is_registered_under_its_name():
    assert FilterModule().filters() == {"stale_files": stale_files}


def test_everything_current_is_nothing_to_copy():
    assert stale_files(lines(CURRENT), WANTED, DIR) == []
    assert stale_files(lines(CURRENT).split("\n"), WANTED, DIR) == []  # stdout_lines as well as stdout


def test_a_missing_file_is_stale():
    assert stale_files(lines({B: CURRENT[B]}), WANTED, DIR) == [A]
    assert stale_files("", WANTED, DIR) == [A, B]


def test_a_wrong_digest_is_stale():
    assert stale_files(lines({A: (DB, "644 root root"), B: CURRENT[B]}), WANTED, DIR) == [A]


def test_a_digest_line_alone_or_a_stat_line_alone_is_not_enough():
    digest_only = "\n".join(line for line in lines(CURRENT).split("\n") if not line.startswith("644 "))
    stat_only = "\n".join(line for line in lines(CURRENT).split("\n") if line.startswith("644 "))
    assert stale_files(digest_only, WANTED, DIR) == [A, B]
    assert stale_files(stat_only, WANTED, DIR) == [A, B]


@pytest.mark.parametrize("stat", ["666 root root", "755 root root", "4644 root root", "0644 root root"])
def test_a_wrong_mode_is_stale(stat):
    assert stale_files(lines({A: (DA, stat), B: CURRENT[B]}), WANTED, DIR) == [A]


@pytest.mark.parametrize("stat", ["644 nobody root", "644 root nogroup", "644 UNKNOWN root", "644 root  root", "644  root root"])
def test_a_wrong_owner_or_group_is_stale(stat):
    assert stale_files(lines({A: (DA, stat), B: CURRENT[B]}), WANTED, DIR) == [A]


def test_the_mode_owner_and_group_wanted_are_parameters():
    out = lines({A: (DA, "640 jobs staff"), B: (DB, "640 root root")})
    for mode in ("0640", "640", 0o640):
        assert stale_files(out, WANTED, DIR, mode=mode, owner="jobs", group="staff") == [B]
    assert stale_files(out, WANTED, DIR) == [A, B]


@pytest.mark.parametrize("other", [
    DIR + "/_cli.py.bak",                      # a longer name
    DIR + "/x/_cli.py",                        # a deeper path
    "/elsewhere" + DIR + "/_cli.py",           # a path the wanted one ends with
    DIR[:-1] + "/_cli.py",                     # another directory
    DIR + "//_cli.py",                         # the same file, not the path the command was given
    DIR + "/_cli.py ",                         # trailing space
])
def test_lines_of_another_path_do_not_count(other):
    out = lines({B: CURRENT[B]}) + "\n%s  %s\n644 root root %s" % (DA, other, other)
    assert stale_files(out, WANTED, DIR) == [A]


def test_a_line_is_compared_whole_never_searched_in():
    path = DIR + "/" + A
    out = lines({B: CURRENT[B]}) + "\nx%s  %s\n 644 root root %s\n%s  %s\n" % (DA, path, path, DA.upper(), path)
    assert stale_files(out, WANTED, DIR) == [A]
    # The two lines joined into one, or inside a longer one, are not the lines.
    assert stale_files("%s  %s 644 root root %s" % (DA, path, path), {A: DA}, DIR) == [A]
    assert stale_files("\\%s  %s\n644 root root %s" % (DA, path, path), {A: DA}, DIR) == [A]


def test_a_path_with_spaces_is_compared_as_it_is():
    directory = "/srv/two  spaces/644 root root /lib"
    assert stale_files(lines(CURRENT, directory), WANTED, directory) == []
    # What the line for the file "<directory>/_cli.py" would contain after a split at the first or last double space.
    assert stale_files(lines({A: (DA, "644 root root")}, "/srv/two"), WANTED, directory) == [A, B]
    assert stale_files(lines(CURRENT, "/srv/two  spaces/644 root root"), WANTED, directory) == [A, B]


def test_a_line_break_in_a_path_makes_every_file_stale():
    """stat prints such a name across lines, and what follows the break reads as a line of its own: the name
    `x\n644 root root /lib/_cli.py` would print a stat line of /lib/_cli.py. No line can be trusted then."""
    directory = "/srv/a\nb"
    assert stale_files(lines(CURRENT, directory), WANTED, directory) == [A, B]
    name = "x\n%s  %s" % (DA, A)  # no slash: a file name, that would print A's digest line in a directory "" or "."
    assert stale_files(lines(CURRENT), dict(WANTED, **{name: DB}), DIR) == [A, B, name]
    for brk in ("\r", "\x0b", "\x1c", "\u2028"):  # what str.splitlines (stdout_lines) also splits at
        directory = "/srv/a" + brk + "b"
        assert stale_files(lines(CURRENT, directory), WANTED, directory) == [A, B], repr(brk)
        assert stale_files(lines(CURRENT, directory).splitlines(), WANTED, directory) == [A, B], repr(brk)


def test_a_backslash_in_a_path_is_always_stale():
    directory = "/srv/back\\slash"
    assert stale_files(lines(CURRENT, directory), WANTED, directory) == [A, B]


def test_source_files_are_hashed_as_bytes_on_the_controller(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / A).write_bytes(b"a\n")
    (source / B).write_bytes(b"b\n\n  \r\n")  # trailing whitespace counts (a `file` lookup strips it unless told not to)
    wanted_b = hashlib.sha256(b"b\n\n  \r\n").hexdigest()
    assert stale_files(lines({A: CURRENT[A], B: (wanted_b, "644 root root")}), [A, B], DIR, source=str(source)) == []
    assert stale_files(lines(CURRENT), [A, B], DIR, source=str(source)) == [B]
    assert stale_files(lines(CURRENT), [B, A], DIR, source=str(source) + "/") == [B]


def test_the_order_of_the_files_given_is_kept():
    assert stale_files("", {B: DB, A: DA}, DIR) == [B, A]


@pytest.mark.parametrize("kwargs, message", [
    (dict(files=[A, B]), "needs the source directory"),
    (dict(files=WANTED, source="/tmp"), "source directory is for a list"),
    (dict(files={A: "abc"}), "not a sha256"),
    (dict(files={"../x": DA}), "not a file name"),
    (dict(files={"a/b": DA}), "not a file name"),
    (dict(files={"": DA}), "not a file name"),
    (dict(files="_cli.py", source="/tmp"), "must be a list"),
    (dict(files=WANTED, directory=""), "target directory"),
    (dict(files=WANTED, mode="rw-r--r--"), "not an octal mode"),
    (dict(files=WANTED, mode=0o10000), "not a file mode"),
    (dict(files=WANTED, mode=True), "mode must be"),
    (dict(files=WANTED, owner="root root"), "not a user or group name"),
    (dict(files=WANTED, group=""), "not a user or group name"),
    (dict(files=[A], source="/nonexistent"), "cannot read /nonexistent/_cli.py"),
])
def test_bad_arguments_fail_naming_the_problem(kwargs, message):
    args = dict(dict(directory=DIR), **kwargs)
    with pytest.raises(AnsibleFilterError, match=message):
        stale_files("", args.pop("files"), args.pop("directory"), **args)


def test_output_that_is_not_lines_fails():
    with pytest.raises(AnsibleFilterError, match="string or a list of lines"):
        stale_files({"stdout": ""}, WANTED, DIR)
    with pytest.raises(AnsibleFilterError, match="string or a list of lines"):
        stale_files([1, 2], WANTED, DIR)


def run_command(paths):
    """The role's command ("Read the installed job code's digests, modes and owners"), run here."""
    return subprocess.run(["sh", "-c", 'sha256sum -- "$@" 2>/dev/null; stat -c "%a %U %G %n" -- "$@" 2>/dev/null; true', "sh"] + paths,
                          capture_output=True, text=True, check=True).stdout.rstrip("\r\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="the copies must be owned by root")
@pytest.mark.parametrize("dirname", ["plain", "two  spaces", "644 root root x", "line\nbreak", "back\\slash", "tab\there"])
def test_the_real_command_output(tmp_path, dirname):
    """On real files: current ones are not stale, an altered, re-moded or missing one is; odd directories are
    either handled or fully stale, never taken as current when a file differs."""
    source, target = tmp_path / "source", tmp_path / dirname
    source.mkdir()
    target.mkdir()
    names = ["_a.py", "_b.py", "_c.py", "_d.py"]
    for name in names:
        (source / name).write_bytes(name.encode() + b"\n\n")
        (target / name).write_bytes(name.encode() + b"\n\n")
        (target / name).chmod(0o644)
    (target / "_b.py").write_bytes(b"altered\n")
    (target / "_c.py").chmod(0o664)
    (target / "_d.py").unlink()
    (target / "_d.py.bak").write_bytes(b"_d.py\n\n")
    (target / "_d.py.bak").chmod(0o644)
    out = run_command([str(target / name) for name in names + ["_d.py.bak"]])
    result = stale_files(out, names, str(target), source=str(source))
    if dirname in ("line\nbreak", "back\\slash"):
        assert result == names
    else:
        assert result == ["_b.py", "_c.py", "_d.py"]
