# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets copied off-host, encrypted, to S3-compatible object storage: sync and fetch. PRIVATE to the
collection: no compatibility promise.

Backups leave the host encrypted with age (_age): the host needs only the recipient (public key) to encrypt; the
identity (private key) is needed only to restore. Each entry F of a backup set (see _retention: every entry named
`<prefix><stamp><rest>` with the same stamp) becomes the object `<key prefix>F.age` of a Store (_s3store); a directory
(a media snapshot, a directory-format dump) is shipped as one deterministic tar stream (_tarstream), hard links kept,
as `<key prefix>F.tar.age`. Every object carries user metadata: `kind` (file, tar), `sha256-plain` and `size-plain`
(what was encrypted), `sha256-cipher` (what was uploaded), for a tar `sha256-tree` (the files' contents, as
_fileio.sha256_tree) and, when it was encrypted to one age public key, `recipient` (that key; see _offsite_rekey).

A set is complete off-host only when its MARKER exists, uploaded after every member was uploaded and verified: the
set's manifest (`db-<stamp>.manifest.json.age`), or for a set without one (media) a plaintext
`<name>.set.json` listing the members and their digests. Readers ignore sets without a marker; removals delete the
marker first, so an interrupted removal also leaves an incomplete set, never a complete-looking one.

Uploads stream: age runs as a child process reading the plaintext on stdin, its output goes to S3 in parts
(multipart upload, Content-MD5 per part); an object appears only when the upload is completed, and a failed one is
aborted. The ciphertext's SHA-256 is known only at the end, so a multipart object gets its full metadata by a
server-side copy onto itself (no data through the host); `sha256-cipher` present means verified. A fetch first
checks that each chosen set is complete (every member its marker needs, with verified digests), then streams each
object into `age -d -i <identity file>` and a hidden partial entry, and gives the entries their names only once
both digests of every member matched.

Errors are raised as OffsiteError, or as the error of the layer that failed (_s3store.StoreError, _age.AgeError,
_tarstream.TarStreamError): callers catch ERRORS. Pure standard library plus boto3 (through _s3store); no Ansible
imports.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import stat
import tarfile
from collections import namedtuple

from ansible_collections.runbooks.incident.plugins.module_utils import _age, _dumpfile, _fileio, _retention, _s3store, _tarstream

AGE_SUFFIX = ".age"
TAR_SUFFIX = ".tar"
SET_SUFFIX = ".set.json"
MANIFEST_OBJECT_SUFFIX = _dumpfile.MANIFEST_SUFFIX + AGE_SUFFIX
SET_FORMAT = "runbooks.incident offsite set v1"
# Metadata naming the age public key an object was encrypted to (written since offsite_rekey exists; older objects
# have none, and objects encrypted to an SSH key or a recipients file neither).
RECIPIENT_META = "recipient"
# Multipart uploads left by an interrupted run are aborted by a later run once they are this old (younger ones may
# belong to a run still going).
STALE_UPLOAD_SECONDS = 3600


class OffsiteError(Exception):
    """What went wrong, in words for the operator."""


class IncompleteSet(OffsiteError):
    """A set whose marker is there but not every member it needs (a member deleted or lost off-host)."""


# Everything sync() and fetch() raise about the backups, the store, age or a tar stream (OSError aside).
ERRORS = (OffsiteError, _s3store.StoreError, _age.AgeError, _tarstream.TarStreamError)


def check_prefixes(prefixes):
    """Name prefixes of backup sets, as backup_retention accepts them."""
    if not prefixes:
        raise OffsiteError("prefixes is empty: name at least one kind of backup set, such as db-")
    for prefix in prefixes:
        try:
            _retention.validate(prefix, 1, 0, 0, 0)
        except _retention.RetentionError as exc:
            raise OffsiteError(str(exc)) from exc


# --- local backup sets ------------------------------------------------------------------------------------------------

class Member:
    """One entry of a local backup set and the object it becomes."""

    def __init__(self, src, entry):
        self.entry = entry
        self.path = os.path.join(src, entry)
        mode = os.lstat(self.path).st_mode
        if stat.S_ISDIR(mode):
            self.kind = "tar"
        elif stat.S_ISREG(mode):
            self.kind = "file"
        else:
            raise OffsiteError("%s is neither a regular file nor a directory" % self.path)
        self.object = entry + (TAR_SUFFIX if self.kind == "tar" else "") + AGE_SUFFIX

    def produce(self, out, stats):
        """Write the plaintext (file content or tar stream) to `out`; a tar's tree digest goes to stats['tree']."""
        if self.kind == "file":
            with os.fdopen(_fileio.open_file(self.path), "rb") as handle:  # a link swapped in since is not followed
                for chunk in iter(lambda: handle.read(_fileio.CHUNK), b""):
                    out.write(chunk)
        else:
            stats["tree"] = _tarstream.write_tar(self.path, out)

    def plain_digest(self):
        """{'sha256-plain': ..., ['sha256-tree': ...]} of the plaintext, computed locally (one read of everything)."""
        writer, stats = _fileio.HashingWriter(), {}
        self.produce(writer, stats)
        found = {"sha256-plain": writer.digest.hexdigest()}
        if "tree" in stats:
            found["sha256-tree"] = stats["tree"]
        return found

    def size_estimate(self):
        if self.kind == "file":
            return os.path.getsize(self.path)
        return sum(os.lstat(path).st_size for _rel, path in _fileio.walk_tree(self.path))


class LocalSet:
    """The entries of one stamp in the backup directory; `ready` tells whether it can be shipped, `why` if not."""

    def __init__(self, src, prefix, stamp, entries):
        self.prefix, self.stamp, self.name = prefix, stamp, prefix + stamp
        self.src = src
        self.entries = sorted(entries)
        self.manifest = None  # (entry, parsed manifest) of a dump set
        self.dump = None  # entry of its dump
        self.ready, self.why = True, None
        manifests = [entry for entry in self.entries if entry.endswith(_dumpfile.MANIFEST_SUFFIX)]
        dumps = [entry for entry in self.entries if entry not in manifests and entry.endswith(_dumpfile.KNOWN_SUFFIXES)]
        if len(manifests) > 1:
            self.ready, self.why = False, "it has more than one manifest (%s)" % ", ".join(manifests)
        elif manifests:
            try:
                self.manifest = (manifests[0], _dumpfile.load_manifest(os.path.join(src, manifests[0])))
            except _dumpfile.DumpError as exc:
                self.ready, self.why = False, str(exc)
            else:
                self.dump = self.manifest[1].get("file") or next(
                    (entry for entry in dumps if _dumpfile.manifest_path_for(entry) == manifests[0]), None)
                if self.dump not in self.entries:
                    self.ready, self.why = False, "its manifest %s names a dump %s that is not there" % (manifests[0], self.dump)
        elif dumps:
            self.ready, self.why = False, "%s has no manifest (yet)" % dumps[0]
        self.members = []
        if self.ready:
            try:
                self.members = [Member(src, entry) for entry in self.entries if self.manifest is None or entry != self.manifest[0]]
            except OffsiteError as exc:
                self.ready, self.why = False, str(exc)

    @property
    def marker(self):
        """Object name of the marker uploaded last: the encrypted manifest, or the plaintext set file."""
        return self.manifest[0] + AGE_SUFFIX if self.manifest else self.name + SET_SUFFIX

    def expected(self, member):
        """What a member's object must hold, when the manifest says so without reading the member."""
        if self.manifest is None or member.entry != self.dump:
            return None
        return {"sha256-tree" if member.kind == "tar" else "sha256-plain": self.manifest[1]["sha256"]}

    def fingerprint(self):
        """Digest of every entry's names, types, sizes and mtimes: cheap evidence that the set did not change."""
        digest = hashlib.sha256()
        for entry in self.entries:
            for rel, path in _fileio.walk_tree(os.path.join(self.src, entry)):
                info = os.lstat(path)
                link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
                line = "%s/%s\0%o\0%d\0%d\0%s\n" % (entry, rel, stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns, link)
                digest.update(line.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def _split_name(name, prefixes):
    """(prefix, Stamp) of a name starting with one of `prefixes` and a stamp, else None (longest prefix wins)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if name.startswith(prefix):
            stamp = _retention.parse_stamp(name[len(prefix):])
            return (prefix, stamp) if stamp is not None else None
    return None


def local_sets(src, prefixes):
    """{prefix: {stamp text: LocalSet}} of the backup directory (partial entries are not sets)."""
    try:
        os.close(_fileio.open_dir(src))  # not through a link someone other than root could have planted
    except FileNotFoundError:
        raise OffsiteError("backup directory %s does not exist" % src) from None
    except OSError as exc:
        raise OffsiteError("backup directory %s cannot be used: %s" % (src, exc.strerror or exc)) from None
    grouped = {}
    for entry in sorted(os.listdir(src)):
        if entry.startswith(".") or entry.endswith(_retention.PARTIAL_SUFFIX):
            continue
        found = _split_name(entry, prefixes)
        if found:
            grouped.setdefault(found[0], {}).setdefault(found[1].text, []).append(entry)
    return {prefix: {text: LocalSet(src, prefix, text, entries) for text, entries in grouped.get(prefix, {}).items()}
            for prefix in prefixes}


# --- upload -----------------------------------------------------------------------------------------------------------

def _read_full(stream, size):
    """Up to `size` bytes: fewer only at the end of the stream."""
    pieces, missing = [], size
    while missing:
        data = stream.read(missing)
        if not data:
            break
        pieces.append(data)
        missing -= len(data)
    return b"".join(pieces)


def upload_member(store, member, recipient_argv, extra_meta=None, accept=None):
    """Encrypt and upload a member as `member.object`, verified; returns its metadata.

    `accept(meta)` sees the plaintext digests before the object becomes visible and raises to refuse it.
    """
    stats = {}
    plain = _fileio.HashingWriter()

    def feed(stdin, child):
        del child
        plain.sink = stdin
        member.produce(plain, stats)

    child = _age.Child(recipient_argv, feed)
    upload_id, name = None, member.object
    try:
        part_size = _s3store.part_size(member.size_estimate())
        cipher = _fileio.Digest()
        data = _read_full(child.proc.stdout, part_size)
        parts = []
        if len(data) == part_size:
            upload_id = store.start_upload(name, {"kind": member.kind})
        while data:
            cipher.update(data)
            if upload_id is not None:
                parts.append(store.upload_part(name, upload_id, len(parts) + 1, data))
                data = _read_full(child.proc.stdout, part_size)
            else:
                break
        code = child.exited()
        if child.feed_error is not None:
            raise OffsiteError("reading %s failed: %s" % (member.path, child.feed_error))
        if code != 0:
            raise OffsiteError("age failed encrypting %s: %s" % (member.path, _age.first_line(child.stderr)))
        meta = {"kind": member.kind, "sha256-plain": plain.digest.hexdigest(), "size-plain": str(plain.digest.size),
                "sha256-cipher": cipher.hexdigest()}
        if "tree" in stats:
            meta["sha256-tree"] = stats["tree"]
        meta.update(extra_meta or {})
        if accept is not None:
            accept(meta)
        if upload_id is None:
            store.put(name, data, meta)
        else:
            store.complete_upload(name, upload_id, parts)
            upload_id = None
            store.replace_metadata(name, cipher.size, meta)
    except BaseException:
        child.stop()
        if upload_id is not None:
            store.abort_quietly(store.key(name), upload_id)
        raise
    head = store.head(name)
    if head is None or head.size != cipher.size or any(head.meta.get(key) != value for key, value in meta.items()):
        with contextlib.suppress(_s3store.StoreError):
            store.delete(name)
        raise OffsiteError("%s does not hold what was uploaded (size %s, expected %d; sha256-cipher %s, expected %s): "
                           "it was deleted" % (store.url(name), head and head.size, cipher.size,
                                               head and head.meta.get("sha256-cipher"), meta["sha256-cipher"]))
    return dict(meta, **{"size-cipher": str(cipher.size)})


def _verified(head, kind):
    """Whether an object's metadata shows a verified upload of this kind."""
    return head is not None and head.meta.get("kind") == kind and "sha256-cipher" in head.meta and "sha256-plain" in head.meta


def _matches(meta, wanted):
    return all(meta.get(key) == value for key, value in wanted.items())


class _SetShipper:
    """Ships one local set: members first (skipping verified ones), the marker last."""

    def __init__(self, store, recipient_argv, listing, result, check_mode, recipient_meta=None):
        self.store, self.recipient_argv, self.listing = store, recipient_argv, listing
        self.recipient_meta = recipient_meta or {}  # written on upload, never compared: an older object has none
        self.result, self.check_mode = result, check_mode
        self.marker_removed = False

    def ship(self, local):
        marker = local.marker
        fingerprint = local.fingerprint()
        objects = [member.object for member in local.members] + [marker]
        if all(name in self.listing for name in objects):
            head = self.store.head(marker)
            if head is not None and head.meta.get("set-fingerprint") == fingerprint:
                self.result["skipped"] += len(objects)
                return
        infos, unknown = [], False
        for member in local.members:
            info = self._member(local, member)
            unknown = unknown or info is None
            infos.append((member, info))
        if local.manifest is not None:
            manifest = Member(local.src, local.manifest[0])
            self._member(local, manifest, {"set-fingerprint": fingerprint}, marker=True)
            return
        body = None if unknown else _set_body(local, infos, fingerprint)
        if body is not None and marker in self.listing:
            head = self.store.head(marker)
            if head is not None and head.meta.get("sha256-plain") == hashlib.sha256(body).hexdigest():
                self.result["skipped"] += 1
                return
        if not self.check_mode:
            self.store.put(marker, body, {"kind": "set", "sha256-plain": hashlib.sha256(body).hexdigest(),
                                          "set-fingerprint": fingerprint})
            self.result["bytes_uploaded"] += len(body)
        self.result["uploaded"].append(self.store.key(marker))

    def _member(self, local, member, extra_meta=None, marker=False):
        """Upload a member unless a verified object with the same content is there; its metadata (None in check mode)."""
        extra_meta = extra_meta or {}
        head = self.store.head(member.object) if member.object in self.listing else None
        if _verified(head, member.kind):
            wanted = dict(local.expected(member) or member.plain_digest(), **extra_meta)
            if _matches(head.meta, wanted):
                self.result["skipped"] += 1
                return dict(head.meta, **{"size-cipher": str(head.size)})
        if self.check_mode:
            self.result["uploaded"].append(self.store.key(member.object))
            return None
        if not marker and not self.marker_removed and local.marker in self.listing:
            # The set changes: it must not look complete (old marker, new members) while it does.
            self.store.delete(local.marker)
            self.marker_removed = True
        expected = local.expected(member)

        def accept(meta):
            if expected and not _matches(meta, expected):
                raise OffsiteError("%s does not match its manifest (sha256 %s, the manifest says %s): it is damaged "
                                   "or was replaced, and is not shipped" % (member.path, meta.get("sha256-tree", meta["sha256-plain"])[:16],
                                                                            list(expected.values())[0][:16]))

        info = upload_member(self.store, member, self.recipient_argv, dict(extra_meta, **self.recipient_meta), accept)
        self.result["uploaded"].append(self.store.key(member.object))
        self.result["bytes_uploaded"] += int(info["size-cipher"])
        return info


def _set_body(local, infos, fingerprint):
    members = []
    for member, info in infos:
        record = {"entry": member.entry, "object": member.object, "kind": member.kind, "sha256_plain": info["sha256-plain"],
                  "size_plain": int(info["size-plain"]), "sha256_cipher": info["sha256-cipher"],
                  "size_cipher": int(info["size-cipher"])}
        if "sha256-tree" in info:
            record["sha256_tree"] = info["sha256-tree"]
        members.append(record)
    body = {"format": SET_FORMAT, "set": local.name, "prefix": local.prefix, "stamp": local.stamp,
            "fingerprint": fingerprint, "members": members}
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


# --- remote backup sets -----------------------------------------------------------------------------------------------

class RemoteSet:
    """The objects of one stamp under the key prefix; complete when its marker is there."""

    def __init__(self, prefix, stamp):
        self.prefix, self.stamp, self.name = prefix, stamp, prefix + stamp
        self.objects = {}

    @property
    def marker(self):
        manifests = sorted(name for name in self.objects if name.endswith(MANIFEST_OBJECT_SUFFIX))
        if manifests:
            return manifests[0]
        return self.name + SET_SUFFIX if self.name + SET_SUFFIX in self.objects else None

    @property
    def complete(self):
        return self.marker is not None

    def removal_order(self):
        """Marker first, so that a set half removed looks incomplete."""
        marker = self.marker
        return ([marker] if marker else []) + sorted(name for name in self.objects if name != marker)


def remote_sets(listing, prefixes):
    """{prefix: {stamp text: RemoteSet}} from a listing {name: size}."""
    found = {prefix: {} for prefix in prefixes}
    for name, size in listing.items():
        split = _split_name(name, prefixes)
        if split:
            remote = found[split[0]].setdefault(split[1].text, RemoteSet(split[0], split[1].text))
            remote.objects[name] = size
    return found


def _sort_key(text):
    return _retention.parse_stamp(text).sort_key


def available(remote, prefixes):
    """Complete remote sets, by prefix then newest first."""
    return [dict(name=remote[prefix][text].name, prefix=prefix, stamp=text)
            for prefix in prefixes
            for text in sorted(remote[prefix], key=_sort_key, reverse=True) if remote[prefix][text].complete]


# --- sync -----------------------------------------------------------------------------------------------------------

def _kept(stamps, keep):
    return {text for text, _reasons in _retention.select(stamps, *keep)}


def plan_retention(local, remote, prefixes, keep):
    """({prefix: stamps to ship}, [RemoteSet to remove, oldest first]) under the off-host GFS policy `keep`.

    The policy runs over the complete remote sets and the local sets ready to ship together, so a local set the
    policy would drop right away is not uploaded at all. An incomplete remote set that this run cannot complete
    (a run died uploading or removing it) is removed when the policy would not keep it even if it were complete.
    `keep` None: everything ready is shipped, nothing removed.
    """
    ship, remove = {}, []
    for prefix in prefixes:
        ready = {text for text, local_set in local[prefix].items() if local_set.ready}
        complete = {text for text, remote_set in remote[prefix].items() if remote_set.complete}
        if keep is None:
            ship[prefix] = ready
            continue
        kept = _kept(ready | complete, keep)
        ship[prefix] = ready & kept
        doomed = complete - kept
        for text, remote_set in remote[prefix].items():
            if not remote_set.complete and text not in ship[prefix] and text not in _kept(ready | complete | {text}, keep):
                doomed.add(text)
        remove.extend(remote[prefix][text] for text in doomed)
    remove.sort(key=lambda remote_set: (_sort_key(remote_set.stamp), remote_set.prefix))
    return ship, remove


def sync(store, src, prefixes, recipient, keep=None, check_mode=False, result=None, now=None):
    """Ship the ready local sets of `prefixes` in `src` that are not off-host yet, then apply retention.

    `keep` is (keep_daily, keep_monthly, keep_yearly) or None (no off-host retention). `result` (a dict, filled as
    the run goes so a caller can report what was done before a failure) gets uploaded, skipped, removed,
    bytes_uploaded, aborted_uploads and warnings.
    """
    result = result if result is not None else {}
    result.update(uploaded=[], skipped=0, removed=[], bytes_uploaded=0, aborted_uploads=0, warnings=[])
    check_prefixes(prefixes)
    if keep is not None:
        _retention.validate(prefixes[0], keep[0], keep[1], keep[2], 0)
    recipient_argv = _age.check_recipient(recipient)
    recorded = _age.age1_key(recipient)
    recipient_meta = {RECIPIENT_META: recorded} if recorded else {}
    local = local_sets(src, prefixes)
    listing = store.list()
    remote = remote_sets(listing, prefixes)
    ship, remove = plan_retention(local, remote, prefixes, keep)
    for prefix in prefixes:
        for text, local_set in sorted(local[prefix].items()):
            if not local_set.ready:
                result["warnings"].append("%s is not shipped: %s" % (local_set.name, local_set.why))

    now = now or datetime.datetime.now(datetime.timezone.utc)
    for key, upload_id, initiated in store.uploads():
        if _split_name(key[len(store.prefix):], prefixes) and (now - initiated).total_seconds() > STALE_UPLOAD_SECONDS:
            if not check_mode:
                store.abort_upload(key, upload_id)
            result["aborted_uploads"] += 1

    # Newest first: if the run is cut short, the most recent backups are the ones already off-host.
    order = sorted(((prefix, text) for prefix in prefixes for text in ship[prefix]),
                   key=lambda item: (_sort_key(item[1]), item[0]), reverse=True)
    for prefix, text in order:
        _SetShipper(store, recipient_argv, listing, result, check_mode, recipient_meta).ship(local[prefix][text])

    for remote_set in remove:
        for name in remote_set.removal_order():
            if not check_mode:
                store.delete(name)
            result["removed"].append(store.key(name))
    result["changed"] = bool(result["uploaded"] or result["removed"] or result["aborted_uploads"])
    return result


# --- fetch ------------------------------------------------------------------------------------------------------------

class _Wanted(namedtuple("_Wanted", "object entry kind meta")):
    """A remote member to fetch: its object, the local entry it becomes, its kind and the digests it must match."""

    __slots__ = ()


def _entry_of(store, name, kind):
    """The local entry an object of `kind` becomes, refused unless it is a plain name in the destination."""
    entry = name[:-len(AGE_SUFFIX)] if name.endswith(AGE_SUFFIX) else name
    if kind == "tar":
        if not entry.endswith(TAR_SUFFIX):
            raise OffsiteError("%s is a tar stream but its name does not end in .tar.age" % store.url(name))
        entry = entry[:-len(TAR_SUFFIX)]
    if entry in (".", "") or "/" in entry or entry.startswith(".") or any(ord(char) < 32 or ord(char) == 127 for char in entry):
        raise OffsiteError("%s does not name a backup entry" % store.url(name))
    return _tarstream.safe_name(entry, "object name")


def _listed_members(store, remote_set, marker):
    """The members a set file records: [{object, kind, sha256_plain, ...}], each an object of this set, once."""
    try:
        listed = json.loads(store.read(marker).decode())["members"]
        if not isinstance(listed, list) or not all(isinstance(item, dict) and isinstance(item.get("object"), str) for item in listed):
            raise TypeError("members is not a list of objects")
    except (ValueError, KeyError, TypeError) as exc:
        raise OffsiteError("%s is not a set file written by offsite_sync: %s" % (store.url(marker), exc)) from exc
    names = [item["object"] for item in listed]
    for name in names:
        split = _split_name(name, [remote_set.prefix])
        if name == marker or split is None or split[1].text != remote_set.stamp or names.count(name) > 1:
            raise OffsiteError("the set file %s lists %s%s, which is not a member of the set %s: refused"
                               % (store.url(marker), name, " twice" if names.count(name) > 1 else "", remote_set.name))
    return listed


def _remote_members(store, remote_set):
    """([_Wanted] of a complete remote set's members, _Wanted of its manifest or None), checked against the marker.

    Every member the marker lists must be there with the digests of a verified upload; what is missing is named.
    """
    marker = remote_set.marker
    if marker.endswith(SET_SUFFIX):
        listed = _listed_members(store, remote_set, marker)
        names = [item["object"] for item in listed]
    else:
        listed = None
        names = sorted(name for name in remote_set.objects if name != marker) + [marker]
    heads = {name: store.head(name) for name in names}
    missing = [name for name in names if heads[name] is None]
    if missing:
        raise IncompleteSet("the set %s off-host is incomplete: %s %s missing although its marker %s is there (deleted or "
                            "lost)" % (remote_set.name, ", ".join(store.url(name) for name in missing),
                                       "is" if len(missing) == 1 else "are", marker))
    wanted = []
    for index, name in enumerate(names):
        meta = dict(heads[name].meta)
        if "sha256-cipher" not in meta or "sha256-plain" not in meta or meta.get("kind") not in ("file", "tar"):
            raise OffsiteError("%s has no verified digests (sha256-cipher, sha256-plain): it was not written by "
                               "offsite_sync or was replaced" % store.url(name))
        if listed is not None:
            item = listed[index]
            recorded = {"sha256-plain": item.get("sha256_plain"), "sha256-cipher": item.get("sha256_cipher"),
                        "kind": item.get("kind"), "size-plain": str(item.get("size_plain"))}
            if "sha256_tree" in item:
                recorded["sha256-tree"] = item["sha256_tree"]
            if not _matches(meta, recorded):
                raise OffsiteError("sha256 mismatch: %s is not the object its set file %s records (sha256-cipher %s, "
                                   "recorded %s): it was replaced" % (store.url(name), store.url(marker),
                                                                      str(meta.get("sha256-cipher"))[:16],
                                                                      str(recorded["sha256-cipher"])[:16]))
            meta.update(recorded)
        wanted.append(_Wanted(name, _entry_of(store, name, meta["kind"]), meta["kind"], meta))
    entries = [item.entry for item in wanted]
    if len(set(entries)) != len(entries):
        raise OffsiteError("the set %s has two objects for the same entry (%s): refused" % (remote_set.name, ", ".join(names)))
    if listed is None:
        return wanted[:-1], wanted[-1]
    return wanted, None


def _fd_path(fd, name=None):
    """A path to the directory of descriptor `fd` (or to `name` in it) for functions that take paths: it leads to the
    directory this process reached safely, whatever happens to the names above it."""
    return "/dev/fd/%d/%s" % (fd, name or ".")  # "/dev/fd/N" itself is a (magic) symlink, "/dev/fd/N/." its directory


def _sha256_at(dir_fd, name):
    digest = hashlib.sha256()
    with os.fdopen(os.open(name, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, dir_fd=dir_fd), "rb") as handle:
        for chunk in iter(lambda: handle.read(_fileio.CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_matches(dest_fd, wanted):
    """True if the destination's entry holds what `wanted` records, False if something else is there (a symlink,
    another type, other content), None if nothing is."""
    try:
        mode = os.stat(wanted.entry, dir_fd=dest_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    if wanted.kind == "tar":
        return stat.S_ISDIR(mode) and _tree_digest_at(dest_fd, wanted.entry) == wanted.meta.get("sha256-tree")
    return stat.S_ISREG(mode) and _sha256_at(dest_fd, wanted.entry) == wanted.meta["sha256-plain"]


def _tree_digest_at(dir_fd, name):
    """The tree digest of the directory `name` in the directory of `dir_fd` (a symlink there is not followed)."""
    with _dir_at(dir_fd, name) as root:
        return _fileio.sha256_tree(root)[0]


@contextlib.contextmanager
def _dir_at(dir_fd, name):
    """A path (_fd_path) to the directory `name` in the directory of `dir_fd`, opened without following a symlink."""
    fd = os.open(name, os.O_RDONLY | _fileio.O_DIRECTORY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, dir_fd=dir_fd)
    try:
        yield _fd_path(fd)
    finally:
        os.close(fd)


def _decrypt(store, wanted, identity, consume):
    """Stream an object through `age -d`, give the plaintext reader to `consume`, check both digests.

    The whole object is read even when age stops at its header, so that its ciphertext digest tells a damaged or
    replaced object (digest not the one recorded at upload) from a key it was not encrypted to (digest right, age
    finds no identity: a damaged recipient stanza looks like a wrong key to age). Errors are reported in order of
    cause: the download, a ciphertext that is not the one uploaded, a wrong key, age, the consumer, a plaintext
    that is not the one encrypted.
    """
    cipher = _fileio.Digest()
    outcome = {}
    body = store.body(wanted.object)

    def feed(stdin, child):
        writing = True
        try:
            for chunk in body.iter_chunks(_fileio.CHUNK):
                cipher.update(chunk)
                if writing:
                    try:
                        stdin.write(chunk)
                    except BrokenPipeError:
                        writing = False
                        child.child_done()
                if child.stopping.is_set():
                    return
        except Exception as exc:  # pylint: disable=broad-exception-caught
            outcome["download"] = exc
        finally:
            body.close()

    child = _age.Child([_age.age_binary(), "-d", "-i", identity], feed)
    plain = _fileio.HashingReader(child.proc.stdout)
    try:
        try:
            consume(plain)
            plain.drain()
        except ERRORS as exc:
            outcome["consume"] = exc
            plain.drain()
        except (OSError, tarfile.TarError) as exc:
            outcome["consume"] = OffsiteError("writing %s failed: %s" % (wanted.entry, exc))
            plain.drain()
        code = child.exited()
    except BaseException:
        child.stop()
        raise
    url = store.url(wanted.object)
    stderr = child.stderr.decode(errors="replace")
    if "download" in outcome:
        raise OffsiteError("downloading %s failed: %s" % (url, outcome["download"]))
    if cipher.hexdigest() != wanted.meta["sha256-cipher"]:
        said = " (age: %s)" % _age.first_line(stderr).replace("age: error: ", "") if code != 0 else ""
        raise OffsiteError("sha256 mismatch: %s is not the object that was uploaded (ciphertext sha256 %s, recorded %s): "
                           "it was damaged or replaced, not a key problem%s" % (url, cipher.hexdigest()[:16],
                                                                                wanted.meta["sha256-cipher"][:16], said))
    if _age.NO_IDENTITY in stderr:
        raise OffsiteError("the age key at %s cannot decrypt this backup (%s), which is intact (its ciphertext is the one "
                           "uploaded): wrong key? It was encrypted to other recipients" % (identity, url))
    if code != 0:
        raise OffsiteError("age could not decrypt %s although it is the object uploaded (it was damaged before the upload): %s"
                           % (url, _age.first_line(stderr)))
    if "consume" in outcome:
        raise outcome["consume"]
    if plain.digest.hexdigest() != wanted.meta["sha256-plain"] or str(plain.digest.size) != wanted.meta.get("size-plain"):
        raise OffsiteError("sha256 mismatch: %s decrypts to something else than was uploaded (sha256 %s, recorded %s)"
                           % (url, plain.digest.hexdigest()[:16], wanted.meta["sha256-plain"][:16]))


def _copy_to(handle):
    def copy(reader):
        for chunk in iter(lambda: reader.read(_fileio.CHUNK), b""):
            handle.write(chunk)
    return copy


def _fetch_bytes(store, wanted, identity):
    if int(wanted.meta.get("size-plain") or 0) > _dumpfile.MANIFEST_MAX_BYTES:
        raise OffsiteError("%s is larger than a manifest can be (%d MiB): refused" % (store.url(wanted.object),
                                                                                      _dumpfile.MANIFEST_MAX_BYTES >> 20))
    buffer = io.BytesIO()
    _decrypt(store, wanted, identity, _copy_to(buffer))
    return buffer.getvalue()


def choose(remote, prefixes, select):
    """{prefix: stamp} of the complete set each prefix restores from: the newest, or the one of stamp `select`."""
    chosen = {}
    for prefix in prefixes:
        complete = sorted((text for text, remote_set in remote[prefix].items() if remote_set.complete),
                          key=_sort_key, reverse=True)
        if select == "latest":
            chosen[prefix] = complete[0] if complete else None
        else:
            chosen[prefix] = select if select in complete else None
    return chosen


def check_select(select):
    if not isinstance(select, str):
        raise OffsiteError("select must be 'latest' or a stamp, not %s" % type(select).__name__)
    if select != "latest":
        stamp = _retention.parse_stamp(select)
        if stamp is None or stamp.text != select:
            raise OffsiteError("select %r is neither 'latest' nor a stamp YYYY-MM-DD (optionally THHMMSSZ)" % select)


def _open_dest(dest):
    """A descriptor of the destination directory, reached without following a symlink others could have planted."""
    try:
        return _fileio.open_dir(dest)
    except FileNotFoundError:
        raise OffsiteError("destination directory %s does not exist" % dest) from None
    except OSError as exc:
        raise OffsiteError("destination directory %s cannot be used: %s" % (dest, exc.strerror or exc)) from None


def fetch(store, dest, identity, prefixes, select="latest", list_only=False, check_mode=False):
    """Fetch, decrypt and verify the chosen complete set of each prefix into `dest`; returns a result dict.

    Nothing is written before every chosen set is known to be complete: every member its marker lists is there with
    verified digests, and a dump set's manifest (decrypted in memory) describes a dump that is among them. Then every
    member is decrypted into a hidden partial entry and verified, and only when all are does each get its name.
    """
    check_select(select)
    check_prefixes(prefixes)
    remote = remote_sets(store.list(), prefixes)
    result = dict(changed=False, fetched=[], sets=choose(remote, prefixes, select), available=available(remote, prefixes))
    if list_only:
        return result
    missing = [prefix for prefix, text in result["sets"].items() if text is None]
    if missing:
        names = ", ".join(item["name"] for item in result["available"]) or "none"
        raise OffsiteError("no complete %s set %s off-host in %s (complete sets: %s)"
                           % ("/".join(missing), "at all" if select == "latest" else "of " + select, store.url(), names))
    _age.check_identity(identity)
    _age.age_binary()
    dest_fd = _open_dest(dest)
    try:
        plans = []
        for prefix in prefixes:
            remote_set = remote[prefix][result["sets"][prefix]]
            try:
                plans.append(_plan_set(store, identity, remote_set, dest_fd))
            except IncompleteSet as exc:
                others = [item["stamp"] for item in result["available"] if item["prefix"] == prefix and item["name"] != remote_set.name]
                raise IncompleteSet("%s; nothing was fetched%s" % (exc, "; other %s sets off-host: %s (choose one with select)"
                                                                   % (prefix, ", ".join(others)) if others else "")) from exc
        for todo, _manifest, _data in plans:
            for wanted, present in todo:
                if not present:
                    result["fetched"].append(os.path.join(dest, wanted.entry))
        result["changed"] = bool(result["fetched"])
        if not check_mode:
            _fetch_all(store, identity, plans, dest, dest_fd)
    finally:
        os.close(dest_fd)
    return result


def _plan_set(store, identity, remote_set, dest_fd):
    """([(_Wanted, present)], manifest _Wanted or None, manifest bytes) of one set, checked complete; nothing written."""
    members, manifest = _remote_members(store, remote_set)
    data = None
    todo = []
    for wanted in members + ([manifest] if manifest else []):
        present = _local_matches(dest_fd, wanted)
        if present is False:
            raise OffsiteError("%s exists in the destination and differs from the off-host copy %s (another file, a "
                               "directory or a symlink): move it away to fetch this set" % (wanted.entry, store.url(wanted.object)))
        todo.append((wanted, present))
    if manifest is not None:
        if todo[-1][1]:
            with os.fdopen(os.open(manifest.entry, os.O_RDONLY | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, dir_fd=dest_fd), "rb") as handle:
                data = handle.read()
        else:
            data = _fetch_bytes(store, manifest, identity)
        _check_dump(store, remote_set, manifest, data, members)
    return todo, manifest, data


def _check_dump(store, remote_set, manifest, data, members):
    """The dump a set's manifest describes must be one of its members, with the digest the manifest records."""
    try:
        described = json.loads(data.decode())
    except ValueError as exc:
        raise OffsiteError("the manifest %s is not valid JSON: %s" % (store.url(manifest.object), exc)) from exc
    if not isinstance(described, dict) or not isinstance(described.get("sha256"), str):
        raise OffsiteError("the manifest %s is not a manifest written by pg_backup (no sha256)" % store.url(manifest.object))
    name = described.get("file")
    if name is None:  # as for local sets: the dump whose manifest name this is
        name = next((item.entry for item in members if _dumpfile.manifest_path_for(item.entry) == manifest.entry), None)
    dump = next((item for item in members if item.entry == name), None)
    if dump is None:
        raise IncompleteSet("the set %s off-host is incomplete: its manifest %s describes the dump %r, and no object of "
                            "the set holds it (objects: %s)" % (remote_set.name, store.url(manifest.object), name,
                                                                ", ".join(item.object for item in members) or "only the manifest"))
    recorded = dump.meta.get("sha256-tree" if dump.kind == "tar" else "sha256-plain")
    if recorded != described["sha256"]:
        raise OffsiteError("sha256 mismatch: %s (sha256 %s) is not the dump its manifest describes (%s): it was replaced"
                           % (store.url(dump.object), str(recorded)[:16], described["sha256"][:16]))


def _fetch_all(store, identity, plans, dest, dest_fd):
    """Decrypt every missing member into a hidden partial entry, verified; then rename them all into place (a dump
    set's manifest last). On any failure, every partial entry is removed and no final name was given."""
    staged = []
    try:
        for todo, manifest, data in plans:
            for wanted, present in todo:
                if present:
                    continue
                partial = os.path.basename(_fileio.partial_name(wanted.entry))
                _fileio.remove(os.path.join(dest, partial))  # what a killed run left; a planted link is removed, not followed
                staged.append((partial, wanted.entry))
                if wanted is manifest:
                    _stage_file(dest_fd, partial, lambda handle, data=data: handle.write(data))
                elif wanted.kind == "tar":
                    _stage_tree(store, wanted, identity, dest_fd, partial)
                else:
                    _stage_file(dest_fd, partial, lambda handle, wanted=wanted: _decrypt(store, wanted, identity, _copy_to(handle)))
        while staged:
            partial, entry = staged[0]
            if os.path.lexists(_fd_path(dest_fd, entry)):
                raise OffsiteError("%s appeared in the destination during the fetch: it was not replaced" % entry)
            os.rename(partial, entry, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
            staged.pop(0)
        _fileio.fsync_dir(dest)
    except BaseException:
        for partial, _entry in staged:
            with contextlib.suppress(OSError):
                _fileio.remove(os.path.join(dest, partial))
        raise


def _stage_file(dest_fd, partial, write):
    """A new 0600 file `partial` in the destination, filled by write(handle) and fsync'd."""
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fileio.O_NOFOLLOW | _fileio.O_CLOEXEC, 0o600, dir_fd=dest_fd)
    with os.fdopen(fd, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _stage_tree(store, wanted, identity, dest_fd, partial):
    """Extract into a new directory `partial` of the destination; its files must match the recorded tree digest."""
    os.mkdir(partial, 0o700, dir_fd=dest_fd)
    with _dir_at(dest_fd, partial) as root:
        _decrypt(store, wanted, identity, lambda reader: _tarstream.extract_tar(reader, root))
        found = _fileio.sha256_tree(root)[0]
    if found != wanted.meta.get("sha256-tree"):
        raise OffsiteError("sha256 mismatch: the files extracted from %s do not match the recorded tree digest (%s, "
                           "recorded %s)" % (store.url(wanted.object), found[:16], str(wanted.meta.get("sha256-tree"))[:16]))
