# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Off-host backup sets (_offsite) after the age private key leaked: report, re-encrypt to a new key, retire.
PRIVATE to the collection: no compatibility promise.

Which key an object is encrypted to: its metadata `recipient` (the age public key), written by offsite_sync since
this module exists and by every re-encryption. An object without it (shipped earlier, or to an SSH key or a
recipients file) counts as encrypted to the leaked key only when the leaked identity opens its age header: the
header (and its nonce, never any payload) is downloaded and given to `age -d -i <identity>`; "no identity matched"
means another key. Without an identity such an object is `unknown`. The identity must be the private key of
`old_recipient` and nothing else (age-keygen -y), so "the identity opens it" means "encrypted to the leaked key".

Re-encrypting an object: its ciphertext streams from S3 into `age -d -i <identity>`, the plaintext (pipes only,
never on disk) into `age -r <new recipient>`, the new ciphertext to the temporary object `.rekey.<name>` (a single
or multipart upload, as offsite_sync's); it becomes visible only when the plaintext's SHA-256 and size equal the
original's recorded ones and the old ciphertext was the one recorded. Then a server-side copy replaces the
original, with its full metadata (the new `sha256-cipher`, `recipient`), the copy is read back and its digest
checked, and the temporary object is deleted. Temporary objects start with a dot: no reader takes them for a set.

A set being re-encrypted is never complete-looking with a member that does not verify: its marker is first kept
as `.rekey.<marker>` (a manifest marker re-encrypted to the new key on the way, a set file copied), then deleted;
the members are replaced; the marker comes back last (a set file with the members' new ciphertext digests), then
the kept copy is deleted. A run killed anywhere leaves either a complete set whose every object verifies, or a set
without marker whose kept marker tells the next run to finish it; members already encrypted to the new key are
skipped.

Errors: _offsite.ERRORS (OffsiteError and the layers'). Pure standard library plus boto3 (through _s3store); no
Ansible imports.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import subprocess

from ansible_collections.runbooks.incident.plugins.module_utils import _age, _faults, _fileio, _offsite, _retention

TEMP_PREFIX = ".rekey."
PROBE_BYTES = 64 << 10  # an age header of a few recipients is far shorter
NONCE_BYTES = 16
STATES = ("report", "reencrypted", "retired")
RECIPIENT = _offsite.RECIPIENT_META
# What a re-encryption does not carry over from the original's metadata: it computes these anew.
COMPUTED = ("kind", "sha256-plain", "size-plain", "sha256-cipher", "sha256-tree", RECIPIENT)

_decrypt = _offsite._decrypt  # pylint: disable=protected-access
_Wanted = _offsite._Wanted  # pylint: disable=protected-access
_split_name = _offsite._split_name  # pylint: disable=protected-access
_sort_key = _offsite._sort_key  # pylint: disable=protected-access


class RekeyError(_offsite.OffsiteError):
    """A refusal or failure of offsite_rekey, in words for the operator."""


# --- inputs -----------------------------------------------------------------------------------------------------------

def check_key(value, option):
    """An age public key (age1...), stripped; anything else is refused without repeating it (it may be a secret)."""
    if not isinstance(value, str):
        raise RekeyError("%s must be an age public key (age1...)" % option)
    if value.strip().upper().startswith("AGE-SECRET-KEY-"):
        raise RekeyError("%s is an age PRIVATE key: give its public key (age-keygen -y)" % option)
    key = _age.age1_key(value)
    if key is None:
        raise RekeyError("%s is not an age public key (age1 followed by 58 characters)" % option)
    return key


def check_prefixes(prefixes):
    _offsite.check_prefixes(prefixes)
    for prefix in prefixes:
        if prefix.startswith(".") or any(ord(char) < 32 or ord(char) == 127 for char in prefix):
            raise RekeyError("prefix %r is not the name prefix of backup sets (a leading dot or a control character)" % prefix)


def check_select(select):
    """None for all sets, else the set of stamps selected."""
    if not select or list(select) == ["all"]:
        return None
    stamps = set()
    for text in select:
        stamp = _retention.parse_stamp(text) if isinstance(text, str) else None
        if stamp is None or stamp.text != text:
            raise RekeyError("select %r is neither 'all' nor a stamp YYYY-MM-DD (optionally THHMMSSZ)" % (text,))
        stamps.add(text)
    return stamps


def check_identity(identity, old_recipient):
    """The identity file must hold the private key of old_recipient, and only it."""
    keys = _age.public_keys(identity)
    if keys != [old_recipient]:
        raise RekeyError("the age key %s is not the private key of old_recipient %s (its public key%s: %s): give the "
                         "file of the leaked key alone" % (identity, old_recipient, "s" if len(keys) != 1 else "",
                                                           ", ".join(keys) or "none"))


# --- what is off-host -------------------------------------------------------------------------------------------------

class RekeySet:
    """The objects of one stamp of one prefix, with what this module left of it (kept marker, temporary objects)."""

    def __init__(self, prefix, stamp):
        self.remote = _offsite.RemoteSet(prefix, stamp)
        self.prefix, self.stamp, self.name = prefix, stamp, prefix + stamp
        self.temps = {}  # {temporary object: size}
        self.heads = {}
        self.classes = {}  # {object: old|new|other|unknown} of the encrypted objects

    @property
    def objects(self):
        return self.remote.objects

    @property
    def kept(self):
        """The kept marker `.rekey.<marker>` of a re-encryption under way, or None."""
        kept = sorted(name for name in self.temps
                      if name.endswith(_offsite.MANIFEST_OBJECT_SUFFIX) or name.endswith(_offsite.SET_SUFFIX))
        return kept[0] if kept else None

    @property
    def marker(self):
        """The name of the set's marker: present, or kept by a re-encryption under way."""
        if self.remote.marker:
            return self.remote.marker
        return self.kept[len(TEMP_PREFIX):] if self.kept else None

    @property
    def status(self):
        if self.remote.complete:
            return "complete"
        return "reencrypting" if self.kept else "incomplete"

    @property
    def recipient(self):
        """old, new, other or unknown when every encrypted object says the same, else mixed; none without any."""
        found = set(self.classes.values())
        if not found:
            return "none"
        return found.pop() if len(found) == 1 else "mixed"

    def size(self, names):
        return sum(self.objects.get(name, self.temps.get(name, 0)) for name in names)


def rekey_sets(store, prefixes):
    """{(prefix, stamp): RekeySet} of everything under the key prefix (objects and this module's temporary ones)."""
    found = {}
    for name, size in store.list().items():
        temp = name.startswith(TEMP_PREFIX)
        split = _split_name(name[len(TEMP_PREFIX):] if temp else name, prefixes)
        if split is None:
            continue
        rset = found.setdefault((split[0], split[1].text), RekeySet(split[0], split[1].text))
        if temp:
            rset.temps[name] = size
        else:
            rset.objects[name] = size
    return found


def probe(store, name, size, identity):
    """Whether `identity` opens the age header of an object (True), does not (False), or it is no age file (None).

    Only the header and the payload's nonce are given to age: nothing is decrypted but the file key.
    """
    data = store.read_start(name, max(1, min(size, PROBE_BYTES)))
    end = data.find(b"\n---")
    end = data.find(b"\n", end + 1) if end >= 0 else -1
    if end < 0:
        return None
    res = subprocess.run([_age.age_binary(), "-d", "-i", identity], input=data[:end + 1 + NONCE_BYTES],
                         capture_output=True, check=False)
    stderr = res.stderr.decode(errors="replace")
    if _age.NO_IDENTITY in stderr:
        return False
    if res.returncode == 0 or "unexpected EOF" in stderr or "failed to read nonce" in stderr:
        return True
    return None


def classify(store, rset, old_recipient, new_recipient, identity):
    """Read the heads of a set's objects (and kept marker) and tell which key each encrypted one is encrypted to."""
    for name in sorted(rset.objects) + ([rset.kept] if rset.kept else []):
        head = store.head(name)
        if head is None:  # removed since the listing
            continue
        rset.heads[name] = head
        if name.startswith(TEMP_PREFIX) or head.meta.get("kind") not in ("file", "tar"):
            continue
        recorded = head.meta.get(RECIPIENT)
        if recorded:
            rset.classes[name] = "new" if recorded == new_recipient else "old" if recorded == old_recipient else "other"
        elif identity is None:
            rset.classes[name] = "unknown"
        else:
            opened = probe(store, name, head.size, identity)
            rset.classes[name] = "old" if opened else "other" if opened is False else "unknown"


# --- re-encryption ----------------------------------------------------------------------------------------------------

class _Source:
    """An off-host object as _offsite.upload_member's member: its plaintext is the object decrypted, as a stream."""

    def __init__(self, store, name, head, identity, temp):
        self.store, self.name, self.head, self.identity = store, name, head, identity
        self.kind = head.meta["kind"]
        self.object = temp
        self.path = store.url(name)

    def size_estimate(self):
        try:
            return int(self.head.meta.get("size-plain") or self.head.size)
        except ValueError:
            return self.head.size

    def produce(self, out, stats):
        if "sha256-tree" in self.head.meta:
            stats["tree"] = self.head.meta["sha256-tree"]  # the same plaintext: the same files

        def copy(reader):
            for chunk in iter(lambda: reader.read(_fileio.CHUNK), b""):
                out.write(chunk)
        # Checks the old ciphertext and the plaintext against what was recorded, and tells a wrong key from damage.
        _decrypt(self.store, _Wanted(self.name, self.name, self.kind, self.head.meta), self.identity, copy)


def _cipher_digest(store, name):
    digest = hashlib.sha256()
    body = store.body(name)
    try:
        for chunk in body.iter_chunks(_fileio.CHUNK):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def _verify_copy(store, name, size, meta):
    """The object `name` must be `size` bytes with `meta`, and its content the recorded ciphertext (read back)."""
    head = store.head(name)
    if head is None or head.size != size or any(head.meta.get(key) != value for key, value in meta.items()):
        raise RekeyError("%s does not hold what was copied onto it (size %s, expected %d)" % (store.url(name), head and head.size, size))
    if "sha256-cipher" in meta and _cipher_digest(store, name) != meta["sha256-cipher"]:
        raise RekeyError("sha256 mismatch: %s does not hold the ciphertext copied onto it" % store.url(name))
    return head


def _is_verified(head):
    return head is not None and head.meta.get("kind") in ("file", "tar") and "sha256-cipher" in head.meta and "sha256-plain" in head.meta


class Rekeyer:
    """Re-encrypts and retires sets; `result` is filled as the run goes, so a failure reports what was done."""

    def __init__(self, store, identity, new_recipient, result):
        self.store, self.identity, self.new_recipient = store, identity, new_recipient
        self.result = result
        self.recipient_argv = None

    def _changed(self):
        self.result["changed"] = True

    def _delete(self, name):
        self.store.delete(name)
        self._changed()

    def encrypt_to_temp(self, name, head, extra=None):
        """Re-encrypt object `name` to `.rekey.<name>`, verified; its metadata with size-cipher."""
        if not _is_verified(head):
            raise RekeyError("%s has no verified digests (sha256-cipher, sha256-plain): it was not written by offsite_sync "
                             "or was replaced; it is not re-encrypted" % self.store.url(name))
        if self.recipient_argv is None:
            self.recipient_argv = _age.check_recipient(self.new_recipient)
        carried = {key: value for key, value in head.meta.items() if key not in COMPUTED}
        carried.update(extra or {})
        carried[RECIPIENT] = self.new_recipient

        def accept(meta):
            if meta["sha256-plain"] != head.meta["sha256-plain"] or meta["size-plain"] != head.meta.get("size-plain"):
                raise RekeyError("sha256 mismatch: what was re-encrypted from %s is not its recorded plaintext (sha256 %s, "
                                 "recorded %s)" % (self.store.url(name), meta["sha256-plain"][:16], head.meta["sha256-plain"][:16]))

        temp = TEMP_PREFIX + name
        self._changed()
        info = _offsite.upload_member(self.store, _Source(self.store, name, head, self.identity, temp), self.recipient_argv,
                                      carried, accept)
        self.result["bytes"] += int(info["size-cipher"])
        return temp, info

    def replace(self, name, head):
        """Re-encrypt one object in place: temporary object, verified copy onto the original, temporary deleted."""
        temp, info = self.encrypt_to_temp(name, head)
        self.place(temp, name, info)
        _faults.checkpoint("offsite_rekey_member_replaced")
        self._delete(temp)

    def place(self, temp, name, info):
        meta = {key: value for key, value in info.items() if key != "size-cipher"}
        size = int(info["size-cipher"])
        self.store.copy(temp, name, size, meta)
        self._changed()
        _verify_copy(self.store, name, size, meta)

    def reencrypt(self, rset):
        """Bring every old object of a complete (or half re-encrypted) set to the new key; the marker last."""
        self._begin(rset, "reencrypt")
        store, marker = self.store, rset.marker
        kept = TEMP_PREFIX + marker
        if rset.remote.complete and "old" not in rset.classes.values():
            for temp in sorted(rset.temps):  # what a run killed after the set was done left
                self._delete(temp)
            self.result.pop("in_progress")
            return
        setfile = marker.endswith(_offsite.SET_SUFFIX)
        members = sorted(name for name in rset.objects if name != marker)
        if rset.remote.complete:
            head = rset.heads[marker]
            if setfile or rset.classes.get(marker) != "old":
                store.copy(marker, kept, head.size, head.meta)
                self._changed()
                rset.heads[kept] = _verify_copy(store, kept, head.size, head.meta)
            else:
                self.encrypt_to_temp(marker, head)
                rset.heads[kept] = store.head(kept)
            self._delete(marker)
            _faults.checkpoint("offsite_rekey_marker_removed")
        elif not setfile:
            saved = rset.heads.get(kept)
            if saved is None or not _is_verified(saved) or saved.meta.get(RECIPIENT) not in (self.new_recipient, None):
                raise RekeyError("the kept marker %s of the set %s is not encrypted to the new recipient %s (an earlier run "
                                 "used another one?): it is left as it is" % (store.url(kept), rset.name, self.new_recipient))
        for name in members:
            if rset.classes.get(name) == "old":
                self.replace(name, rset.heads[name])
                rset.classes[name] = "new"
        self._restore_marker(rset, marker, kept, members)
        for temp in sorted(rset.temps):
            if temp != kept and store.head(temp) is not None:
                self._delete(temp)
        self._delete(kept)
        for name, found in list(rset.classes.items()):
            if found == "old":
                rset.classes[name] = "new"
        self.result["reencrypted"].append(rset.name)
        self.result.pop("in_progress")

    def _restore_marker(self, rset, marker, kept, members):
        store = self.store
        saved = rset.heads[kept]
        if not marker.endswith(_offsite.SET_SUFFIX):
            meta = dict(saved.meta)
            store.copy(kept, marker, saved.size, meta)
            self._changed()
            _verify_copy(store, marker, saved.size, meta)
            return
        try:
            document = json.loads(store.read(kept).decode())
            listed = document["members"]
            if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
                raise TypeError("members is not a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            raise RekeyError("%s (the set file of %s) is not a set file written by offsite_sync: %s"
                             % (store.url(kept), rset.name, exc)) from exc
        for item in listed:
            name = item.get("object")
            if name not in members:
                raise RekeyError("the set file %s lists %r, which is not an object of the set %s: refused"
                                 % (store.url(kept), name, rset.name))
            head = store.head(name)
            if not _is_verified(head) or head.meta["sha256-plain"] != item.get("sha256_plain"):
                raise RekeyError("%s is not the object its set file %s records: refused" % (store.url(name), store.url(kept)))
            item["sha256_cipher"], item["size_cipher"] = head.meta["sha256-cipher"], head.size
        body = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()  # as offsite_sync writes it
        meta = dict(saved.meta, **{"sha256-plain": hashlib.sha256(body).hexdigest()})
        store.put(marker, body, meta)
        self._changed()
        _verify_copy(store, marker, len(body), meta)

    def retire(self, rset):
        """Delete a set: its (kept) marker first, so a set half deleted is incomplete, never complete-looking."""
        self._begin(rset, "retire")
        order = ([rset.kept] if rset.kept else []) + rset.remote.removal_order() + sorted(name for name in rset.temps if name != rset.kept)
        for name in order:
            self._delete(name)
            self.result["deleted"].append(self.store.key(name))
        self.result["retired"].append(rset.name)
        self.result.pop("in_progress")

    def _begin(self, rset, action):
        """Say in the result which set is being changed, until it is done (a failure then says what it left)."""
        self.result["in_progress"] = dict(name=rset.name, action=action, kept_marker=self.store.key(TEMP_PREFIX + rset.marker)
                                          if action == "reencrypt" and rset.marker else None)


# --- the run ----------------------------------------------------------------------------------------------------------

def _needs_reencryption(rset):
    return rset.status != "incomplete" and ("old" in rset.classes.values() or rset.status == "reencrypting" or bool(rset.temps))


def _retirable(rset):
    return rset.status != "incomplete" and "old" in rset.classes.values()


def run(store, state, old_recipient, prefixes, select=None, identity=None, recipient=None, force=False, check_mode=False, result=None):
    """Report, re-encrypt or retire the off-host sets encrypted to `old_recipient`; returns the result dict (also
    filled as the run goes, so a caller can report what was done before a failure)."""
    result = result if result is not None else {}
    result.update(changed=False, sets=[], reencrypted=[], retired=[], deleted=[], bytes=0)
    if state not in STATES:
        raise RekeyError("state must be one of %s" % ", ".join(STATES))
    old_recipient = check_key(old_recipient, "old_recipient")
    if recipient is not None:
        recipient = check_key(recipient, "recipient")
        if recipient == old_recipient:
            raise RekeyError("recipient is old_recipient: give the public key of the NEW key pair")
    elif state == "reencrypted":
        raise RekeyError("state=reencrypted needs recipient, the new age public key")
    check_prefixes(prefixes)
    stamps = check_select(select)
    if identity is not None:
        check_identity(identity, old_recipient)
        _age.age_binary()
    elif state == "reencrypted":
        raise RekeyError("state=reencrypted needs identity, the file of the leaked age private key, to decrypt")
    if state == "reencrypted":
        _age.check_recipient(recipient)

    found = rekey_sets(store, prefixes)
    if stamps is not None:
        unknown = sorted(stamps - {stamp for _prefix, stamp in found})
        if unknown:
            raise RekeyError("select names %s, of which there is no set off-host in %s" % (", ".join(unknown), store.url()))
    order = sorted(found.values(), key=lambda rset: (_sort_key(rset.stamp), rset.prefix))
    for rset in order:
        classify(store, rset, old_recipient, recipient, identity)
    chosen = [rset for rset in order if stamps is None or rset.stamp in stamps]
    if state == "reencrypted":
        todo = [rset for rset in chosen if _needs_reencryption(rset)]
    elif state == "retired":
        todo = [rset for rset in chosen if _retirable(rset)]
        _check_retirement(store, order, todo, prefixes, force)
    else:
        todo = []
    for rset in order:
        if rset not in todo:
            action = "none"
        elif state == "retired":
            action = "retire"
        else:
            action = "reencrypt" if "old" in rset.classes.values() or rset.status == "reencrypting" else "clean"
        result["sets"].append(_describe(store, rset, action, rset in chosen))
    result["aborted_uploads"] = abort_stale_uploads(store, prefixes, check_mode) if state != "report" else 0
    if check_mode or not todo:
        result["changed"] = bool(todo or result["aborted_uploads"])
        if check_mode:
            result["bytes"] = sum(rset.size([name for name, found in rset.classes.items() if found == "old"] if state == "reencrypted"
                                            else list(rset.objects) + list(rset.temps)) for rset in todo)
        result["msg"] = _summary(state, todo, result, check_mode, order)
        return result

    rekeyer = Rekeyer(store, identity, recipient, result)
    for rset in todo:
        if state == "reencrypted":
            rekeyer.reencrypt(rset)
        else:
            result["bytes"] += rset.size(list(rset.objects) + list(rset.temps))
            rekeyer.retire(rset)
    result["msg"] = _summary(state, todo, result, False, order)
    for item in result["sets"]:
        if item["action"] == "reencrypt":
            item["recipient"], item["status"] = "new", "complete"
    return result


def abort_stale_uploads(store, prefixes, check_mode, now=None):
    """Abort the multipart uploads of temporary objects that a killed run left, once they are as old as offsite_sync
    calls stale (a younger one may belong to a run still going); the number aborted (would be, in check mode)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    count = 0
    for key, upload_id, initiated in store.uploads():
        name = key[len(store.prefix):]
        if (name.startswith(TEMP_PREFIX) and _split_name(name[len(TEMP_PREFIX):], prefixes)
                and (now - initiated).total_seconds() > _offsite.STALE_UPLOAD_SECONDS):
            if not check_mode:
                store.abort_upload(key, upload_id)
            count += 1
    return count


def _check_retirement(store, order, todo, prefixes, force):
    """Refuse to leave a prefix without a complete set encrypted to the new key (unless forced)."""
    for prefix in prefixes:
        left = [rset for rset in order if rset.prefix == prefix and rset not in todo and rset.status == "complete"
                and rset.recipient == "new"]
        doomed = [rset.name for rset in todo if rset.prefix == prefix]
        if doomed and not left and not force:
            raise RekeyError("retiring %s would leave no complete %s set encrypted to the new recipient off-host in %s: "
                             "re-encrypt one (state=reencrypted) or ship a new backup first, or set force=true; nothing "
                             "was changed" % (", ".join(doomed), prefix, store.url()))


def _describe(store, rset, action, selected):
    members = []
    for name in sorted(rset.objects):
        head = rset.heads.get(name)
        members.append(dict(object=store.key(name), size=rset.objects[name], recipient=rset.classes.get(name, "none"),
                            marker=name == rset.remote.marker, kind=head.meta.get("kind") if head else None))
    return dict(name=rset.name, prefix=rset.prefix, stamp=rset.stamp, status=rset.status, recipient=rset.recipient,
                members=members, temporary=[store.key(name) for name in sorted(rset.temps)], selected=selected, action=action,
                bytes=rset.size(list(rset.objects)))


def _summary(state, todo, result, check_mode, order):
    names = ", ".join(rset.name for rset in todo)
    counts = {}
    for rset in order:
        if rset.status != "incomplete":
            counts[rset.recipient] = counts.get(rset.recipient, 0) + 1
    seen = ", ".join("%d %s" % (count, recipient) for recipient, count in sorted(counts.items())) or "none"
    incomplete = [rset.name for rset in order if rset.status == "incomplete"]
    tail = "; incomplete sets (not handled): %s" % ", ".join(incomplete) if incomplete else ""
    if state == "report" or not todo:
        verb = {"report": "", "reencrypted": "; nothing to re-encrypt", "retired": "; nothing to retire"}[state]
        return "off-host sets by recipient: %s%s%s" % (seen, verb, tail)
    if state == "reencrypted":
        done = "would re-encrypt" if check_mode else "re-encrypted"
        return "%s %d set(s) to the new recipient (%d bytes): %s%s" % (done, len(todo), result["bytes"], names, tail)
    done = "would retire" if check_mode else "retired"
    return "%s %d set(s) encrypted to the leaked key (%d bytes): %s%s" % (done, len(todo), result["bytes"], names, tail)


def failure_message(result, check_mode):
    """What a failed run did, for fail_json: the sets done, the one left half done, or nothing."""
    current = result.get("in_progress")
    parts = []
    for verb in ("reencrypted", "retired"):
        if result.get(verb):
            parts.append("%s before the failure: %s" % ("re-encrypted" if verb == "reencrypted" else verb, ", ".join(result[verb])))
    if current is not None and result.get("changed") and not check_mode:
        if current["action"] == "retire":
            parts.append("the set %s was being retired: its marker is gone, so readers ignore it; a re-run deletes the rest"
                         % current["name"])
        else:
            parts.append("the set %s was being re-encrypted: until a re-run finishes it, it is either complete with every "
                         "object verified, or incomplete (readers ignore it) with its marker kept as %s"
                         % (current["name"], current["kept_marker"]))
    if check_mode or not result.get("changed"):
        parts.append("nothing was changed")
    return "; ".join(parts)
