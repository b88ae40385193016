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
import json
import os
import secrets

from ansible_collections.runbooks.incident.plugins.module_utils import _faults, _fileio
# The fingerprint is the service's (sha256 of the value as read, 16 hex digits); the record is JSON without a secret.
from ansible_collections.runbooks.incident.plugins.module_utils._secret import fingerprint, record_of

GRACE_MAX_DAYS = 30
PEPPER_BYTES = 32


class PepperError(Exception):
    pass


def new_pepper():
    return secrets.token_hex(PEPPER_BYTES)


class Layout:
    """Where each item lives: files on the host, and the same names as top-level keys of the sops file."""

    def __init__(self, path, previous_path=None):
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
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().rstrip()
    except FileNotFoundError:
        return None
    return value or None


def read_files(layout):
    return {item: read_file(path) for item, path in layout.items().items()}


def read_sops(layout, document):
    return {item: (None if document.get(layout.key(item)) is None else str(document[layout.key(item)]))
            for item in layout.items()}


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
            os.unlink(path)
        else:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o750, exist_ok=True)
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


def pending_pepper(layout, state, change_id):
    """The new pepper of an interrupted files-only rotation of `change_id`, or None."""
    record = record_of(state) or {}
    if record.get("change_id") != change_id or record.get("state") != "pending":
        return None
    pepper = read_file(layout.next)
    return pepper if pepper and fingerprint(pepper) == record.get("fingerprint") else None
