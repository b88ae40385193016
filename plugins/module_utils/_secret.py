# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rotation of one generated secret held as a top-level key of a sops file. PRIVATE to the collection.

Keys in the sops file (the service's secrets directory gets the same names when its secrets unit decrypts it):
  <key>             the current value
  <key>.previous    the value it replaced, kept only when asked (a credential that must keep working until the
                    new one is in place everywhere, e.g. a database password), until retired
  <key>.rotation    a JSON record without any secret: change id, time, fingerprints
The whole change is one atomic replace of the sops file (_sops.Sops.apply), so a crash leaves the old or the new
state, never a mix. Re-running the change id that made the record changes nothing.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import secrets

from ansible_collections.runbooks.incident.plugins.module_utils import _faults

MIN_LENGTH = 32
# Far more than any key or password needs; the bound keeps a typo from generating megabytes into the sops file.
MAX_LENGTH = 1024


class SecretError(Exception):
    pass


def fingerprint(value):
    """sha256 of the value as a service reads it (its bytes, trailing ASCII whitespace stripped), 16 hex digits; None for none."""
    return hashlib.sha256(value.encode().rstrip()).hexdigest()[:16] if value else None


def generate(length):
    """A URL-safe random value of exactly `length` characters (6 bits each): safe in files, URLs and SCRAM.
    secret_rotate refuses a length outside MIN_LENGTH..MAX_LENGTH before anything is read."""
    return secrets.token_urlsafe(length)[:length]


def keys(key):
    return dict(current=key, previous=key + ".previous", record=key + ".rotation")


def state_of(document, key):
    return {item: (None if document.get(name) is None else str(document[name])) for item, name in keys(key).items()}


def record_of(state):
    try:
        record = json.loads(state["record"]) if state.get("record") else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def rotated(state, change_id, value, keep_previous, now, force=False):
    """The state after replacing the current value with `value`; the replaced one is kept as previous if asked."""
    if keep_previous and state.get("previous") and not force:
        raise SecretError("a previous value %s from change %s is still kept: retire it first (state=retired) once that change is "
                          "verified, or force=true to drop it" % (fingerprint(state["previous"]), (record_of(state) or {}).get("change_id")))
    previous = state.get("current") if keep_previous else None
    record = dict(change_id=change_id, state="rotated", at=now.isoformat(), fingerprint=fingerprint(value),
                  previous_fingerprint=fingerprint(previous), replaced_fingerprint=fingerprint(state.get("current")))
    return dict(current=value, previous=previous, record=json.dumps(record, sort_keys=True))


def retired(state, change_id, now):
    """The state with the previous value removed."""
    record = dict(record_of(state) or {}, retired_change_id=change_id, retired_at=now.isoformat(),
                  retired_fingerprint=fingerprint(state.get("previous")), previous_fingerprint=None)
    return dict(current=state.get("current"), previous=None, record=json.dumps(record, sort_keys=True))


def summary(state):
    record = record_of(state) or {}
    return dict(fingerprint=fingerprint(state.get("current")), previous_fingerprint=fingerprint(state.get("previous")),
                change_id=record.get("change_id"), rotated_at=record.get("at"))


def plan(values, key, change_id, state="rotated", length=48, keep_previous=False, force=False, now=None):
    """Where secret_rotate takes `values` (state_of the sops file): (target values, message, replaced fingerprint or None).

    state=retired drops the previous value, if there is one. state=rotated changes nothing when the last rotation
    is this change id's and its value is still current, else generates a new value.
    """
    record, now = record_of(values) or {}, now or utcnow()
    if state == "retired":
        if not values.get("previous"):
            return values, "%s has no previous value to retire" % key, None
        return retired(values, change_id, now), "previous %s %s retired" % (key, fingerprint(values["previous"])), None
    if record.get("change_id") == change_id and record.get("fingerprint") == fingerprint(values.get("current")):
        return values, "change %s is already applied to %s" % (change_id, key), None
    value = generate(length)
    target = rotated(values, change_id, value, keep_previous, now, force)
    replaced = fingerprint(values.get("current"))
    kept = ", kept as %s.previous until retired" % key if keep_previous else ", which no longer works"
    return target, "%s %s replaces %s%s" % (key, fingerprint(value), replaced, kept if replaced else ""), replaced


def rotate(store, key, change_id, check_mode=False, **options):
    """Decrypt the sops file of `store` (a _sops.Sops), plan (options: those of plan) and, unless in check mode, apply
    the change in one atomic replace. Returns secret_rotate's result: changed, msg, sops_keys_changed, the summary,
    and replaced_fingerprint when it rotates."""
    document = store.decrypt()
    target, msg, replaced = plan(state_of(document, key), key, change_id, **options)
    changes = {name: target[item] for item, name in keys(key).items()}
    changed_keys = sorted(name for name, value in changes.items() if document.get(name) != value)
    if not check_mode:  # also with nothing to change: it removes what a killed earlier change left
        store.apply(changes, current=document)
        _faults.checkpoint("secret_after_sops")
    result = dict(changed=bool(changed_keys), msg=msg, sops_keys_changed=changed_keys, **summary(target))
    if replaced:
        result["replaced_fingerprint"] = replaced
    return result
