# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""API-key pepper rotation, soft (grace window) or hard (no grace), crash-safe. PRIVATE to the collection.

The service reads, at start, from its secrets directory:
  api_key_pepper                         the current pepper (new keys are hashed with it)
  api_key_pepper.previous                the previous pepper, accepted until...
  api_key_pepper.previous_expires_at     ...this ISO-8601 time (a key presented with it is re-hashed)
and this module adds api_key_pepper.rotation, a JSON record of the last rotation without any secret: change id,
mode, fingerprints, expiry, state. The files are written from a sops-encrypted file when there is one, because
/run/secrets is a tmpfs filled from it at boot. The sops file is changed first, in one atomic replace, so it is
the durable truth. The files follow in an order that keeps every key valid at each step of a soft rotation:
previous and its expiry first, then the current pepper, then removals, and the record last.

Without a sops file the files are the truth. The new pepper is first written to api_key_pepper.next, with the
record in state `pending`, so a run killed midway resumes with the same pepper.
"""
from __future__ import annotations

import datetime
import grp
import json
import os
import pwd
import re
import secrets

from ansible_collections.runbooks.incident.plugins.module_utils import _faults, _fileio
# The fingerprint is the service's (sha256 of the value as read, 16 hex digits); the record is JSON without a secret.
from ansible_collections.runbooks.incident.plugins.module_utils._secret import fingerprint, record_of, utcnow

GRACE_MAX_DAYS = 30
PEPPER_BYTES = 32
# The file names are also the sops file's keys and the names the secrets unit writes (its NAME pattern).
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$")
# A pepper, an expiry or a rotation record is a line; a bigger file there is something else.
MAX_FILE_BYTES = 1 << 16


class PepperError(Exception):
    pass


def new_pepper():
    return secrets.token_hex(PEPPER_BYTES)


class Layout:
    """Where each item lives: files on the host, and the same names as top-level keys of the sops file."""

    def __init__(self, path, previous_path=None):
        for given in (path, previous_path):
            if given is not None and (not os.path.isabs(given) or not FILE_NAME.match(os.path.basename(given))):
                raise PepperError("%r is not a pepper file name: give an absolute path whose last part is a plain name "
                                  "(letters, digits and _.-), as the secrets unit writes them" % given)
        self.current = path
        self.previous = previous_path or path + ".previous"
        self.expiry = self.previous + "_expires_at"
        self.record = path + ".rotation"
        self.next = path + ".next"

    def items(self):
        return dict(current=self.current, previous=self.previous, expiry=self.expiry, record=self.record)

    def key(self, item):
        return os.path.basename(self.items()[item])


def read_file(path):
    """The text of a secrets file as the service reads it (trailing ASCII whitespace stripped), None if absent or empty.

    Reached without following a symlink (_fileio.open_file); anything but a regular file holding UTF-8 text is refused.
    """
    try:
        fd = _fileio.open_file(path)
    except FileNotFoundError:
        return None
    except _fileio.UnsafePathError as exc:
        raise PepperError("%s: %s" % (path, exc.strerror)) from None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise PepperError("%s holds more than %d bytes: it is not a pepper file" % (path, MAX_FILE_BYTES))
    raw = raw.rstrip()
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PepperError(
            "%s holds %d bytes that are not text (a raw binary pepper): pepper_rotate keeps peppers as text (32 random "
            "bytes written as 64 hex digits), as the sops file and the secrets unit hold them, so it cannot carry this one "
            "over as the previous pepper. Restore the text pepper from the sops file (restart the secrets unit), or write "
            "a text one by hand (openssl rand -hex 32) and re-issue the keys hashed with the raw one" % (path, len(raw))) from None
    return value or None


def read_files(layout):
    return {item: read_file(path) for item, path in layout.items().items()}


def read_sops(layout, document):
    state = {}
    for item in layout.items():
        value = document.get(layout.key(item))
        if isinstance(value, (dict, list)):
            raise PepperError("%s in the sops file is a %s, not a string: set it to the pepper's text"
                              % (layout.key(item), "mapping" if isinstance(value, dict) else "list"))
        state[item] = None if value is None else str(value)
    return state


def check_owner(owner, group):
    """The files' owner and group must exist before anything is written."""
    for name, lookup in ((owner, pwd.getpwnam), (group, grp.getgrnam)):
        if name is not None:
            try:
                lookup(name)
            except KeyError:
                raise PepperError("no such user or group: %s" % name) from None


def parse_file_mode(value):
    """The files' mode from an octal string ("0400") or an integer (YAML reads an unquoted 0400 as 256, the mode)."""
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            mode = -1
    else:
        mode = value if isinstance(value, int) and not isinstance(value, bool) else -1
    if not 0 <= mode <= 0o777:
        raise PepperError("file_mode must be an octal mode such as 0400, not %r" % (value,))
    if mode & 0o007:
        raise PepperError("file_mode %04o lets every user read the pepper or change it: use 0400 (0440 for a secrets group)" % mode)
    return mode


def remove_file(path):
    """Remove the file at `path` (a symlink there itself, never what it points to); none there is fine."""
    with _fileio.parent_dir(path) as (dir_fd, name):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def parse_expiry(value):
    try:
        parsed = datetime.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None


def rotated(state, mode, grace_days, change_id, pepper, now, force=False):
    """The state after a rotation of `state` (which must hold a current pepper)."""
    if not state.get("current"):
        raise PepperError("there is no current pepper to rotate from")
    if mode == "soft" and state.get("previous") and not force:
        expires = parse_expiry(state.get("expiry"))
        if expires is not None and expires > now:
            raise PepperError(
                "the previous pepper %s is still accepted until %s: a second soft rotation would drop it and every key "
                "still hashed with it. Retire it first (state=retired), or force=true"
                % (fingerprint(state["previous"]), expires.isoformat()))
    target = dict(current=pepper, previous=None, expiry=None)
    if mode == "soft":
        target.update(previous=state["current"], expiry=(now + datetime.timedelta(days=grace_days)).isoformat())
    target["record"] = json.dumps(dict(
        change_id=change_id, mode=mode, state="done", at=now.isoformat(), fingerprint=fingerprint(pepper),
        previous_fingerprint=fingerprint(target["previous"]), replaced_fingerprint=fingerprint(state["current"]),
        previous_expires_at=target["expiry"]), sort_keys=True)
    return target


def retired(state, change_id, now, force=False):
    """The state with the previous pepper removed; refused while it is still accepted, unless forced."""
    expires = parse_expiry(state.get("expiry"))
    if state.get("previous") and expires is not None and expires > now and not force:
        raise PepperError("the previous pepper %s is accepted until %s: retiring it now needs force=true"
                          % (fingerprint(state["previous"]), expires.isoformat()))
    record = dict(record_of(state) or {}, change_id=change_id, state="done", retired_at=now.isoformat(),
                  retired_fingerprint=fingerprint(state.get("previous")), previous_fingerprint=None, previous_expires_at=None)
    return dict(current=state["current"], previous=None, expiry=None, record=json.dumps(record, sort_keys=True))


def summary(state):
    record = record_of(state) or {}
    return dict(fingerprint=fingerprint(state.get("current")), previous_fingerprint=fingerprint(state.get("previous")),
                previous_expires_at=state.get("expiry"), change_id=record.get("change_id"), last_mode=record.get("mode"))


def write_files(layout, target, owner=None, group=None, file_mode=0o400, check_mode=False):
    """Bring the files to `target` in the crash-safe order; returns the items changed."""
    current = read_files(layout)
    order = (["previous", "expiry"] if target.get("previous") else []) + ["current"]
    order += [item for item in ("previous", "expiry") if not target.get(item)] + ["record"]
    changed = []
    for item in order:
        path = layout.items()[item]
        if current.get(item) == target.get(item):
            continue
        changed.append(item)
        if check_mode:
            continue
        if target.get(item) is None:
            remove_file(path)
        else:
            _fileio.makedirs(os.path.dirname(path), mode=0o750)
            with _fileio.atomic_writer(path, mode=file_mode, owner=owner, group=group) as handle:
                handle.write(target[item].encode())
        _faults.checkpoint("pepper_file_" + item)
    return changed


def write_pending(layout, target, owner=None, group=None, file_mode=0o400):
    """Files-only, before the files change: the new pepper and a record in state `pending`, so a run killed midway
    resumes with this pepper (read back by pending_pepper)."""
    with _fileio.atomic_writer(layout.next, mode=0o400) as handle:
        handle.write(target["current"].encode())
    with _fileio.atomic_writer(layout.record, mode=file_mode, owner=owner, group=group) as handle:
        handle.write(json.dumps(dict(record_of(target), state="pending"), sort_keys=True).encode())
    _faults.checkpoint("pepper_after_pending")


def pending_pepper(state, change_id, pepper):
    """The new pepper of an interrupted files-only rotation of `change_id`, or None (`pepper`: what <path>.next holds)."""
    record = record_of(state) or {}
    if record.get("change_id") != change_id or record.get("state") != "pending":
        return None
    return pepper if pepper and fingerprint(pepper) == record.get("fingerprint") else None


class Plan:
    """What a run is to do, with everything read and checked and nothing changed (see plan)."""

    def __init__(self, layout, store, document, truth, target, msg, replaced=None, done=False, pending=None, write_pending_first=False):
        self.layout = layout
        self.store = store  # a _sops.Sops, or None when the files are the truth
        self.document = document  # the decrypted sops file
        self.truth = truth  # the state the run starts from: the sops file's, or the files'
        self.target = target  # the state the run brings the sops file and the files to
        self.msg = msg
        self.replaced = replaced  # fingerprint of the pepper a rotation replaces
        self.done = done  # the last record is this change id's, done
        self.pending = pending  # the new pepper of an interrupted files-only run of this change id
        self.write_pending_first = write_pending_first


def plan(path, change_id, state="rotated", mode="soft", grace_days=GRACE_MAX_DAYS, force=False, previous_path=None,
         owner=None, group=None, store=None, now=None):
    """Read and check everything, change nothing: the Plan of a run of pepper_rotate.

    The truth is the sops file (`store`) when there is one, else the files. A change id whose record is done plans
    no change (files lagging behind the sops file are brought up by apply). A files-only rotation of this change id
    interrupted after its pending record resumes with the pepper it left in <path>.next, from the pepper it
    replaced. Otherwise state=retired drops the previous pepper, and state=rotated makes a new pepper current.
    """
    layout = Layout(path, previous_path)
    check_owner(owner, group)
    document = store.decrypt() if store else None
    files = read_files(layout)  # every file is read (and refused if it is not a text file) before any change
    leftover = read_file(layout.next)
    truth = read_sops(layout, document) if store else files
    record = record_of(truth) or {}
    now = now or utcnow()
    context = dict(layout=layout, store=store, document=document, truth=truth)
    if record.get("change_id") == change_id and record.get("state") == "done":
        return Plan(target=truth, msg="change %s is already applied" % change_id, done=True, **context)
    if state == "retired":
        if not truth.get("previous"):
            return Plan(target=truth, msg="there is no previous pepper to retire", **context)
        return Plan(target=retired(truth, change_id, now, force), msg="previous pepper %s retired" % fingerprint(truth["previous"]), **context)
    pending = None if store else pending_pepper(truth, change_id, leftover)
    if pending:  # an interrupted files-only run of this change: the same new pepper, from the same old one
        old = next((value for value in (truth["current"], truth["previous"]) if fingerprint(value) == record.get("replaced_fingerprint")), None)
        if old is None:
            raise PepperError("the interrupted rotation %s cannot resume: the pepper it replaced is in neither %s nor %s"
                              % (change_id, layout.current, layout.previous))
        base, pepper, force = dict(current=old), pending, True
    else:
        base, pepper = truth, new_pepper()
    target = rotated(base, mode, grace_days, change_id, pepper, now, force)
    replaced = fingerprint(base["current"])
    msg = "%s rotation: pepper %s replaces %s%s" % (
        mode, fingerprint(pepper), replaced, ", accepted until %s" % target["expiry"] if target.get("expiry") else ", which no longer works")
    return Plan(target=target, msg=msg, replaced=replaced, pending=pending, write_pending_first=not store and not pending, **context)


def apply(planned, owner=None, group=None, file_mode=0o400, check_mode=False):
    """Bring the sops file, then the files, to the target of Plan `planned` (in check mode, only say what would change).

    Returns pepper_rotate's result: changed, msg, sops_keys_changed, files_changed, the summary of the target, and
    replaced_fingerprint when the run rotates.
    """
    layout, store, document = planned.layout, planned.store, planned.document
    keys = {layout.key(item): planned.target.get(item) for item in layout.items()}
    sops_changed = sorted(key for key, value in keys.items() if document.get(key) != value) if store else []
    owner_group = dict(owner=owner, group=group, file_mode=file_mode)
    if check_mode:
        files = write_files(layout, planned.target, check_mode=True, **owner_group)
    else:
        if store:
            store.apply(keys, current=document)
            _faults.checkpoint("pepper_after_sops")
        elif planned.write_pending_first:
            write_pending(layout, planned.target, **owner_group)
        files = write_files(layout, planned.target, **owner_group)
        remove_file(layout.next)
    paths = layout.items()
    result = dict(changed=bool(sops_changed or files), msg=planned.msg, sops_keys_changed=sops_changed,
                  files_changed=[paths[item] for item in files], **summary(planned.target))
    if planned.replaced:
        result["replaced_fingerprint"] = planned.replaced
    return result
