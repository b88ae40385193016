# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of a runbook done for an incident, one record each. PRIVATE to the collection.

A step that must happen once per incident (a media restore, one step of a key compromise) is recorded only once it
is verified: `<dir>/<incident id>/<step>.json`, written atomically (0600, directories 0700) through _fileio, so a
record is whole or absent and no symlink is followed. A run that died before the record redoes the step; a re-run
after it skips the step. The first record of a step is kept: recording it again changes nothing.
"""
from __future__ import annotations

import datetime
import json
import os
import re

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _run_lock

STEP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
SUFFIX = ".json"


class StepsError(Exception):
    pass


def _incident_dir(directory, incident_id):
    if not _run_lock.INCIDENT_ID.match(incident_id or ""):
        raise StepsError("incident id %r is not letters, digits and ._:- (at most 64, starting with a letter or digit)" % incident_id)
    return os.path.join(directory, incident_id)


def _check_step(step):
    if not STEP.match(step or ""):
        raise StepsError("step %r is not lower-case letters, digits, _ and - (at most 64)" % step)


def done(directory, incident_id):
    """{step: record} of the steps recorded for the incident."""
    where = _incident_dir(directory, incident_id)
    try:
        fd = _fileio.open_dir(where)
    except FileNotFoundError:
        return {}
    try:
        names = _fileio.listdir_at(fd)
    finally:
        os.close(fd)
    records = {}
    for name in sorted(names):
        step = name[:-len(SUFFIX)]
        if not name.endswith(SUFFIX) or not STEP.match(step):
            continue  # a partial write's hidden temp file, or something that is not a record
        fd = _fileio.open_file(os.path.join(where, name))
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise StepsError("%s is not a step record (not JSON): move it away if it is not one" % os.path.join(where, name)) from None
        if not isinstance(record, dict):
            raise StepsError("%s is not a step record (not a JSON object)" % os.path.join(where, name))
        records[step] = record
    return records


def record(directory, incident_id, step, details=None, check_mode=False, now=None):
    """Record `step` as done for the incident, unless it already is. (changed, {step: record} after it)."""
    _check_step(step)
    records = done(directory, incident_id)
    if step in records:
        return False, records
    entry = dict(details or {}, step=step, incident_id=incident_id,
                 at=(now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"))
    if check_mode:
        return True, records
    where = _incident_dir(directory, incident_id)
    _fileio.makedirs(where, 0o700)
    _fileio.write_json(os.path.join(where, step + SUFFIX), entry, mode=0o600)
    return True, dict(records, **{step: entry})
