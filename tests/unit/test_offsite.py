# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.offsite_sync and offsite_fetch: backup sets shipped off-host encrypted with age, and back.

S3 is the only emulated service: moto's S3 server (`moto_server`, a real HTTP server on loopback, in memory) stands
in for AWS S3, Backblaze B2 or MinIO, reached with boto3 over plain http. Everything else is real: age and
age-keygen, backup files and directories with hard links, tar streams, and, for the outage, a TCP proxy that cuts
the connection in the middle of a multipart upload.
"""
from __future__ import annotations

import collections
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio, _s3store, _tarstream
from conftest import fresh_bucket, planted_link, require, s3_test_client, without_ambient_aws  # pylint: disable=import-error

SECRET = "s3cr3t-Off-Host-Key-0f9a7c"
ACCESS = "AKIAOFFSITETESTS"
require(shutil.which("age") and shutil.which("age-keygen"), "age and age-keygen")


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch):
    without_ambient_aws(monkeypatch)


def client(endpoint):
    return s3_test_client(endpoint, ACCESS, SECRET)


@pytest.fixture
def bucket(moto, request):
    """A fresh bucket per test: its name."""
    return fresh_bucket(moto, request, "t-", ACCESS, SECRET)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two age key pairs: (identity file, recipient) of the backup key, and of another key."""
    directory = tmp_path_factory.mktemp("age")
    pairs = []
    for name in ("age.key", "other.key"):
        path = directory / name
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        path.chmod(0o400)
        public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
        pairs.append((path, public))
    return pairs


@pytest.fixture
def calls(monkeypatch):
    """Every S3 call the modules make, in order: [(operation, key)]."""
    made = []
    real = _s3store.s3_client

    def recording(*args, **kwargs):
        s3 = real(*args, **kwargs)
        s3.meta.events.register("provide-client-params.s3",
                                lambda params, model, **extra: made.append((model.name, params.get("Key"))))
        return s3
    monkeypatch.setattr(_s3store, "s3_client", recording)
    return made


# --- backup sets as the nightly jobs write them -----------------------------------------------------------------------

def write_manifest(directory, dump, fmt, sha):
    manifest = dict(version=1, tool="runbooks.incident.pg_backup", db="wa_mcp", format=fmt, file=dump, sha256=sha,
                    size=0, tables=["clients", "messages"], row_counts={"clients": 2, "messages": 5})
    (directory / (dump.split(".")[0] + ".manifest.json")).write_text(json.dumps(manifest, indent=2) + "\n")


def plain_dump(directory, stamp):
    sql = ("-- PostgreSQL database dump PLAINTEXT-db-%s\nCOPY public.messages (id, body) FROM stdin;\n" % stamp
           + "".join("%d\tmessage %d of %s\n" % (n, n, stamp) for n in range(2000)) + "\\.\n")
    path = directory / ("db-%s.sql.gz" % stamp)
    path.write_bytes(gzip.compress(sql.encode(), mtime=0))
    write_manifest(directory, path.name, "plain", _fileio.sha256_file(path))


def directory_dump(directory, stamp):
    path = directory / ("db-%s.dir" % stamp)
    path.mkdir()
    (path / "toc.dat").write_bytes(b"PGDMP toc PLAINTEXT-toc-%s" % stamp.encode() + os.urandom(3000))
    for oid in (3001, 3002):
        (path / ("%d.dat.gz" % oid)).write_bytes(gzip.compress(b"rows of %d PLAINTEXT-rows-%s\n" % (oid, stamp.encode()) * 500))
    write_manifest(directory, path.name, "directory", _fileio.sha256_tree(str(path))[0])


def media_snapshot(directory, stamp, previous=None, big=0):
    """A media snapshot: files, a hard link inside it, a hard link to the previous snapshot (rsync --link-dest)."""
    root = directory / ("media-%s" % stamp)
    (root / "ab").mkdir(parents=True)
    (root / "cd").mkdir()
    (root / "ab" / ("photo-%s.jpg" % stamp)).write_bytes(b"\xff\xd8 PLAINTEXT-photo-%s " % stamp.encode() + os.urandom(40000))
    os.link(root / "ab" / ("photo-%s.jpg" % stamp), root / "cd" / "same-photo.jpg")
    (root / "cd" / "voice.ogg").write_bytes(b"OggS PLAINTEXT-voice-%s" % stamp.encode() + os.urandom(5000))
    (root / "cd" / "voice.ogg").chmod(0o640)
    if previous is not None:
        os.link(previous / "cd" / "voice.ogg", root / "ab" / "older-voice.ogg")
    if big:
        (root / "cd" / "video.mp4").write_bytes(os.urandom(big))
    return root


def backup_dir(tmp_path, identity):
    """Two dump sets (plain, directory), two media snapshots, one dump still without its manifest, and the age key."""
    src = tmp_path / "backups"
    src.mkdir()
    plain_dump(src, "2026-11-21")
    directory_dump(src, "2026-11-22")
    first = media_snapshot(src, "2026-11-21")
    media_snapshot(src, "2026-11-22", previous=first, big=17 << 20)
    (src / "db-2026-11-23.sql.gz").write_bytes(gzip.compress(b"-- still being written\n"))
    shutil.copy(identity, src / "age.key")  # the worst place for it: it must still never leave the host
    return src


SHIPPED = ["db-2026-11-21.sql.gz.age", "db-2026-11-21.manifest.json.age", "db-2026-11-22.dir.tar.age",
           "db-2026-11-22.manifest.json.age", "media-2026-11-21.tar.age", "media-2026-11-21.set.json",
           "media-2026-11-22.tar.age", "media-2026-11-22.set.json"]


def s3_params(moto, bucket, **extra):
    return dict(dict(bucket=bucket, prefix="host1/", endpoint_url=moto, access_key=ACCESS, secret_key=SECRET), **extra)


def objects(moto, bucket, prefix="host1/"):
    """{key without prefix: (body, metadata)} of the bucket."""
    s3, found = client(moto), {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        response = s3.get_object(Bucket=bucket, Key=item["Key"])
        found[item["Key"][len(prefix):]] = (response["Body"].read(), response["Metadata"])
    return found


def files_of(root):
    """{relative path: (bytes, mode)} of every file under root, or of the file root."""
    root = Path(root)
    if root.is_file():
        return {".": (root.read_bytes(), 0)}
    return {str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mode & 0o777)
            for path in sorted(root.rglob("*")) if path.is_file()}


def ship(run_module, moto, bucket, src, recipient, **extra):
    result = run_module("offsite_sync", s3_params(moto, bucket, src=str(src), recipient=recipient, **extra))
    assert not result.get("failed"), result.get("msg")
    return result


# --- tests ------------------------------------------------------------------------------------------------------------

def test_push_check_run_check_run_encrypted_verified_marker_last(run_module, moto, bucket, keys, calls, tmp_path):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    params = s3_params(moto, bucket, src=str(src), recipient=recipient)

    check = run_module("offsite_sync", params, check_mode=True)
    assert not check.get("failed"), check.get("msg")
    assert check["changed"] is True and check["bytes_uploaded"] == 0
    assert sorted(check["uploaded"]) == sorted("host1/" + name for name in SHIPPED)
    assert objects(moto, bucket) == {}
    assert any("db-2026-11-23" in warning and "no manifest" in warning for warning in check["warnings"])

    del calls[:]
    run = run_module("offsite_sync", params)
    assert not run.get("failed"), run.get("msg")
    assert run["changed"] is True and run["uploaded"] == check["uploaded"] and run["removed"] == []
    stored = objects(moto, bucket)
    assert sorted(stored) == sorted(SHIPPED)
    assert run["bytes_uploaded"] == sum(len(body) for body, _meta in stored.values())

    # Encrypted: every .age object is age ciphertext, and no plaintext (file content, key) appears in any object.
    secret_key_line = next(line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    plaintexts = [path.read_bytes() for path in src.rglob("*") if path.is_file() and path.name != "age.key"]
    for name, (body, meta) in stored.items():
        assert "age.key" not in name and secret_key_line.encode() not in body and secret_key_line.lower().encode() not in body
        if name.endswith(".age"):
            assert body.startswith(b"age-encryption.org/v1\n")
            assert b"PLAINTEXT-" not in body
            assert not any(plain[64:128] in body for plain in plaintexts if len(plain) >= 128)
            assert meta["sha256-cipher"] == hashlib.sha256(body).hexdigest()
            assert set(meta) >= {"kind", "sha256-plain", "size-plain", "sha256-cipher"}
    assert stored["db-2026-11-21.sql.gz.age"][1]["sha256-plain"] == _fileio.sha256_file(src / "db-2026-11-21.sql.gz")
    assert stored["db-2026-11-22.dir.tar.age"][1]["sha256-tree"] == _fileio.sha256_tree(str(src / "db-2026-11-22.dir"))[0]
    assert stored["media-2026-11-22.tar.age"][1]["kind"] == "tar"
    listed = json.loads(stored["media-2026-11-22.set.json"][0])
    assert [member["object"] for member in listed["members"]] == ["media-2026-11-22.tar.age"]
    assert listed["members"][0]["sha256_cipher"] == stored["media-2026-11-22.tar.age"][1]["sha256-cipher"]

    # The big snapshot went up as a multipart upload, and each set's marker was written after all its members.
    operations = [operation for operation, _key in calls]
    assert "UploadPart" in operations and "CompleteMultipartUpload" in operations
    writes = {}
    for index, (operation, key) in enumerate(calls):
        if operation in ("PutObject", "CompleteMultipartUpload", "CopyObject"):
            writes[key[len("host1/"):]] = index
    for set_name, marker in (("db-2026-11-21", "db-2026-11-21.manifest.json.age"), ("db-2026-11-22", "db-2026-11-22.manifest.json.age"),
                             ("media-2026-11-21", "media-2026-11-21.set.json"), ("media-2026-11-22", "media-2026-11-22.set.json")):
        members = [name for name in SHIPPED if name.startswith(set_name + ".") and name != marker]
        assert members and all(writes[marker] > writes[member] for member in members), (marker, writes)

    for check_mode in (True, False):
        again = run_module("offsite_sync", params, check_mode=check_mode)
        assert not again.get("failed"), again.get("msg")
        assert again["changed"] is False and again["uploaded"] == [] and again["removed"] == []
        assert again["skipped"] == len(SHIPPED)
    assert objects(moto, bucket) == stored


def test_fetch_latest_is_byte_identical_with_hard_links_and_idempotent(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    dest = tmp_path / "restore"
    dest.mkdir()
    params = s3_params(moto, bucket, dest=str(dest), identity=str(identity))

    listing = run_module("offsite_fetch", dict(params, list_only=True))
    assert not listing.get("failed"), listing.get("msg")
    assert listing["changed"] is False and listing["fetched"] == []
    assert listing["available"] == [
        dict(name="db-2026-11-22", prefix="db-", stamp="2026-11-22"), dict(name="db-2026-11-21", prefix="db-", stamp="2026-11-21"),
        dict(name="media-2026-11-22", prefix="media-", stamp="2026-11-22"),
        dict(name="media-2026-11-21", prefix="media-", stamp="2026-11-21")]

    expected = [str(dest / name) for name in ("db-2026-11-22.dir", "db-2026-11-22.manifest.json", "media-2026-11-22")]
    check = run_module("offsite_fetch", params, check_mode=True)
    assert not check.get("failed"), check.get("msg")
    assert check["changed"] is True and check["fetched"] == expected and os.listdir(dest) == []

    run = run_module("offsite_fetch", params)
    assert not run.get("failed"), run.get("msg")
    assert run["changed"] is True and run["fetched"] == expected
    assert run["sets"] == {"db-": "2026-11-22", "media-": "2026-11-22"}
    assert sorted(os.listdir(dest)) == ["db-2026-11-22.dir", "db-2026-11-22.manifest.json", "media-2026-11-22"]
    for name in os.listdir(dest):
        assert files_of(dest / name) == files_of(src / name), name
    media = dest / "media-2026-11-22"
    assert os.stat(media / "ab" / "photo-2026-11-22.jpg").st_ino == os.stat(media / "cd" / "same-photo.jpg").st_ino
    assert os.stat(media / "cd" / "same-photo.jpg").st_nlink == 2
    assert os.stat(media / "cd" / "voice.ogg").st_mode & 0o777 == 0o640

    for check_mode in (True, False):
        again = run_module("offsite_fetch", params, check_mode=check_mode)
        assert not again.get("failed"), again.get("msg")
        assert again["changed"] is False and again["fetched"] == []

    older = run_module("offsite_fetch", dict(params, select="2026-11-21"))
    assert not older.get("failed"), older.get("msg")
    assert sorted(Path(path).name for path in older["fetched"]) == [
        "db-2026-11-21.manifest.json", "db-2026-11-21.sql.gz", "media-2026-11-21"]
    assert (dest / "db-2026-11-21.sql.gz").read_bytes() == (src / "db-2026-11-21.sql.gz").read_bytes()
    # The hard link to the older snapshot is, within this snapshot, an ordinary file with the same content.
    assert files_of(dest / "media-2026-11-21") == files_of(src / "media-2026-11-21")

    missing = run_module("offsite_fetch", dict(params, select="2026-11-23"))
    assert missing.get("failed") and "no complete db-/media- set of 2026-11-23" in missing["msg"]


def test_wrong_or_exposed_age_key_is_refused_and_leaves_nothing(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), (other, _other_recipient) = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    dest = tmp_path / "restore"
    dest.mkdir()
    for prefixes in (["db-"], ["media-"]):  # the manifest first, in memory; a tar stream into a partial directory
        result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(other), prefixes=prefixes))
        assert result.get("failed")
        assert "the age key at %s cannot decrypt this backup" % other in result["msg"] and "wrong key?" in result["msg"]
        assert os.listdir(dest) == []

    exposed = tmp_path / "exposed.key"
    shutil.copy(identity, exposed)
    exposed.chmod(0o644)
    result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(exposed)))
    assert result.get("failed") and "readable or writable by others (mode 0644)" in result["msg"]
    assert os.listdir(dest) == []


class CuttingProxy:
    """A TCP proxy to `port` that cuts every connection once `cut_after` bytes went upstream in all.

    `stay_down`: after the cut every connection is closed once its request line is read (the endpoint is down), and
    the request lines are kept (`refused`: the client's attempts after the cut); otherwise it goes on forwarding.
    """

    def __init__(self, port, cut_after, stay_down):
        self.port, self.cut_after, self.stay_down = port, cut_after, stay_down
        self.sent, self.refused, self.cut = 0, [], threading.Event()
        self.lock = threading.Lock()
        self.sockets = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _address = self.listener.accept()
            except OSError:
                return
            if self.stay_down and self.cut.is_set():
                downstream.settimeout(5)
                try:
                    line = downstream.makefile("rb").readline(8192).strip()
                except OSError:
                    line = b"(no request line)"
                with self.lock:
                    self.refused.append(line)
                with_suppressed(downstream.close)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            with self.lock:
                self.sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, source, target, counted):
        try:
            for data in iter(lambda: source.recv(65536), b""):
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        cutting = not self.cut.is_set() and self.sent > self.cut_after
                        if cutting:
                            self.cut.set()
                    if cutting:
                        self._cut()
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with_suppressed(sock.close)

    def _cut(self):
        with self.lock:
            for sock in self.sockets:
                with_suppressed(lambda sock=sock: sock.shutdown(socket.SHUT_RDWR))

    def close(self):
        with_suppressed(lambda: self.listener.shutdown(socket.SHUT_RDWR))
        with_suppressed(self.listener.close)


def with_suppressed(action):
    try:
        action()
    except OSError:
        pass


def test_endpoint_lost_mid_upload_leaves_an_incomplete_set_the_next_run_completes(
        run_module, moto, bucket, keys, tmp_path, monkeypatch):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    media_snapshot(src, "2026-11-23", big=14 << 20)
    monkeypatch.setattr(_s3store, "PART_SIZE", 5 << 20)  # three parts (S3's smallest part size)
    proxy = CuttingProxy(int(moto.rsplit(":", 1)[1]), cut_after=8 << 20, stay_down=True)
    try:
        failed = run_module("offsite_sync", s3_params(proxy.url, bucket, src=str(src), recipient=recipient))
        # Bounded retries, not a wait for the endpoint: no request is sent more than once plus max_attempts retries
        # (botocore's max_attempts counts the retries).
        attempts = collections.Counter(proxy.refused)
        assert proxy.cut.is_set() and attempts and max(attempts.values()) <= 1 + _s3store.RETRIES["max_attempts"], attempts
    finally:
        proxy.close()
    assert failed.get("failed") and failed["changed"] is False
    assert "off-host sync to s3://%s/host1/ failed: " % bucket in failed["msg"]
    assert "uploading part 2 of s3://%s/host1/media-2026-11-23.tar.age failed" % bucket in failed["msg"]
    assert "nothing was uploaded or removed" in failed["msg"]
    stored = objects(moto, bucket)
    assert "media-2026-11-23.set.json" not in stored and "media-2026-11-23.tar.age" not in stored
    s3 = client(moto)
    assert [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [
        "host1/media-2026-11-23.tar.age"]  # its abort could not reach the endpoint either

    dest = tmp_path / "restore"
    dest.mkdir()
    fetch = s3_params(moto, bucket, dest=str(dest), identity=str(identity), prefixes=["media-"])
    listing = run_module("offsite_fetch", dict(fetch, list_only=True))
    assert listing["sets"] == {"media-": "2026-11-22"}  # the incomplete set is never chosen

    # Two sets whose earlier runs died just before their marker: their members are there and verified.
    for name in ("db-2026-11-22.manifest.json.age", "media-2026-11-21.set.json"):
        s3.delete_object(Bucket=bucket, Key="host1/" + name)
    # moto dates every multipart upload 2010, so the re-run sees the abandoned upload as stale and aborts it.
    resumed = ship(run_module, moto, bucket, src, recipient)
    assert resumed["changed"] is True and resumed["aborted_uploads"] == 1
    assert resumed["uploaded"] == ["host1/media-2026-11-23.tar.age", "host1/media-2026-11-23.set.json",
                                   "host1/db-2026-11-22.manifest.json.age", "host1/media-2026-11-21.set.json"]
    assert resumed["skipped"] == len(SHIPPED) - 2  # the two markers went up again, their members were skipped by content
    assert objects(moto, bucket)["media-2026-11-21.set.json"][0] == stored["media-2026-11-21.set.json"][0]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    fetched = run_module("offsite_fetch", fetch)
    assert not fetched.get("failed"), fetched.get("msg")
    assert fetched["sets"] == {"media-": "2026-11-23"}
    assert files_of(dest / "media-2026-11-23") == files_of(src / "media-2026-11-23")


def test_a_connection_cut_once_is_retried(run_module, moto, bucket, keys, tmp_path, monkeypatch):
    (identity, recipient), _other = keys
    src = tmp_path / "backups"
    src.mkdir()
    media_snapshot(src, "2026-11-23", big=12 << 20)
    monkeypatch.setattr(_s3store, "PART_SIZE", 5 << 20)
    proxy = CuttingProxy(int(moto.rsplit(":", 1)[1]), cut_after=7 << 20, stay_down=False)
    try:
        result = run_module("offsite_sync", s3_params(proxy.url, bucket, src=str(src), recipient=recipient))
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    assert not result.get("failed"), result.get("msg")
    assert result["uploaded"] == ["host1/media-2026-11-23.tar.age", "host1/media-2026-11-23.set.json"]
    dest = tmp_path / "restore"
    dest.mkdir()
    fetched = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(identity), prefixes=["media-"]))
    assert not fetched.get("failed"), fetched.get("msg")
    assert files_of(dest / "media-2026-11-23") == files_of(src / "media-2026-11-23")


def test_off_host_retention_keeps_the_gfs_selection_and_removes_markers_first(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), _other = keys
    src = tmp_path / "backups"
    src.mkdir()
    days = [datetime.date(2026, 11, 22) - datetime.timedelta(days=4 * n) for n in range(24)]  # back to 2026-08-22
    for day in days:
        plain_dump(src, day.isoformat())
    everything = ship(run_module, moto, bucket, src, recipient, retention=False, prefixes=["db-"])
    assert len(everything["uploaded"]) == 48
    # An incomplete set that no run will complete (its removal, or its upload, was cut short long ago).
    client(moto).put_object(Bucket=bucket, Key="host1/db-2026-07-01.sql.gz.age", Body=b"age-encryption.org/v1\n...")

    newest_first = sorted(days, reverse=True)
    kept = set(newest_first[:5])
    newest_of_month = {}
    for day in newest_first:
        newest_of_month.setdefault((day.year, day.month), day)
    kept |= set(sorted(newest_of_month.values(), reverse=True)[:2])
    assert len(kept) == 6  # five daily, and the newest of October

    params = dict(prefixes=["db-"], keep_daily=5, keep_monthly=2)
    check = run_module("offsite_sync", s3_params(moto, bucket, src=str(src), recipient=recipient, **params), check_mode=True)
    assert not check.get("failed"), check.get("msg")
    assert check["changed"] is True and check["uploaded"] == []
    assert len(objects(moto, bucket)) == 49

    run = ship(run_module, moto, bucket, src, recipient, **params)
    assert run["removed"] == check["removed"] and run["uploaded"] == []
    removed_days = sorted(set(days) - kept)
    assert run["removed"][:2] == ["host1/db-2026-07-01.sql.gz.age", "host1/db-%s.manifest.json.age" % removed_days[0]]
    assert run["removed"][1:] == ["host1/db-%s%s" % (day.isoformat(), suffix)
                                  for day in removed_days for suffix in (".manifest.json.age", ".sql.gz.age")]
    assert sorted(objects(moto, bucket)) == sorted("db-%s%s" % (day.isoformat(), suffix)
                                                   for day in kept for suffix in (".sql.gz.age", ".manifest.json.age"))

    # The local sets the policy drops are not shipped again, and nothing more is removed.
    again = ship(run_module, moto, bucket, src, recipient, **params)
    assert again["changed"] is False and again["uploaded"] == [] and again["removed"] == []


def test_a_tampered_object_fails_the_fetch_with_a_sha256_mismatch(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    s3 = client(moto)

    def replace(name, body):
        """Overwrite an object keeping its metadata, as someone with write access to the bucket could."""
        meta = s3.head_object(Bucket=bucket, Key="host1/" + name)["Metadata"]
        s3.put_object(Bucket=bucket, Key="host1/" + name, Body=body, Metadata=meta)

    # Valid age ciphertext to the right key, of other content: decrypts fine, but is not what was uploaded.
    forged = subprocess.run(["age", "-r", recipient], input=b"DROP TABLE messages;\n", capture_output=True, check=True).stdout
    replace("db-2026-11-21.sql.gz.age", forged)
    # Bytes that are not age at all.
    replace("media-2026-11-22.tar.age", os.urandom(4096))
    for select, prefixes, name in (("2026-11-21", ["db-"], "db-2026-11-21.sql.gz.age"),
                                   ("latest", ["media-"], "media-2026-11-22.tar.age")):
        dest = tmp_path / ("restore-" + prefixes[0])
        dest.mkdir()
        result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(identity),
                                                       select=select, prefixes=prefixes))
        assert result.get("failed")
        assert "sha256 mismatch: s3://%s/host1/%s is not the object that was uploaded" % (bucket, name) in result["msg"]
        assert os.listdir(dest) == []


def test_credentials_never_appear_in_results(run_module, moto, bucket, keys, tmp_path, free_port):
    (identity, recipient), _other = keys
    src = tmp_path / "backups"
    src.mkdir()
    plain_dump(src, "2026-11-22")
    dest = tmp_path / "restore"
    dest.mkdir()
    results = [
        run_module("offsite_sync", s3_params(moto, bucket, src=str(src), recipient=recipient)),
        run_module("offsite_sync", s3_params(moto, bucket, src=str(src), recipient=recipient), check_mode=True),
        run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(identity), prefixes=["db-"])),
        # Failures too: an endpoint that does not listen, a bucket that does not exist.
        run_module("offsite_sync", s3_params("http://127.0.0.1:%d" % free_port(), bucket, src=str(src), recipient=recipient)),
        run_module("offsite_fetch", s3_params(moto, "no-such-bucket-here", dest=str(dest), identity=str(identity))),
    ]
    assert [bool(result.get("failed")) for result in results] == [False, False, False, True, True]
    assert "Could not connect to the endpoint URL" in results[3]["msg"]
    for result in results:
        text = json.dumps(result)
        assert SECRET not in text and ACCESS not in text
        assert result["invocation"]["module_args"]["secret_key"] != SECRET


@pytest.mark.parametrize("evil", ["../escaped", "/tmp/absolute", "a/../../escaped", "symlink-out", "through-symlink",
                                  "hardlink-out", "symlink-out-through-symlink", "directory-over-symlink", "twice"])
def test_unsafe_archive_members_are_refused(tmp_path, evil):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, kind=tarfile.REGTYPE, linkname="", data=b"x"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add(".", tarfile.DIRTYPE)
        if evil == "symlink-out":
            add("link", tarfile.SYMTYPE, "../../outside")
        elif evil == "through-symlink":
            add("link", tarfile.SYMTYPE, "inner")
            add("link/file")
        elif evil == "hardlink-out":
            add("link", tarfile.LNKTYPE, "../outside")
        elif evil.startswith("symlink-out-through") or evil == "directory-over-symlink":
            # Each link lexically inside: d/c is the root, e is d/c/.. (lexically d), really the root's parent.
            add("d", tarfile.DIRTYPE)
            add("d/c", tarfile.SYMTYPE, "..")
            add("e", tarfile.SYMTYPE, "d/c/..")
            if evil == "directory-over-symlink":
                add("e", tarfile.DIRTYPE)  # its mode would be set through e, on the root's parent
        elif evil == "twice":
            add("file")
            add("file")
        else:
            add(evil)
    root = tmp_path / "root" / "extract"
    root.mkdir(parents=True)
    mode = stat.S_IMODE((tmp_path / "root").stat().st_mode)
    with pytest.raises(_tarstream.TarStreamError, match="refused"):
        _tarstream.extract_tar(io.BytesIO(buffer.getvalue()), str(root))
    assert sorted(os.listdir(tmp_path)) == ["root"] and os.listdir(tmp_path / "root") == ["extract"]
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == mode
    assert not Path("/tmp/absolute").exists()


# --- a set is complete or refused, before anything is written ------------------------------------------------------------

def replace_object(moto, bucket, name, body, meta=None):
    """Overwrite an object keeping its metadata (or with `meta`), as someone with write access to the bucket could."""
    s3 = client(moto)
    meta = meta if meta is not None else s3.head_object(Bucket=bucket, Key="host1/" + name)["Metadata"]
    s3.put_object(Bucket=bucket, Key="host1/" + name, Body=body, Metadata=meta)


@pytest.mark.parametrize("deleted,select,prefixes,message", [
    ("db-2026-11-22.dir.tar.age", "latest", ["db-", "media-"],
     "the set db-2026-11-22 off-host is incomplete: its manifest s3://{bucket}/host1/db-2026-11-22.manifest.json.age describes "
     "the dump 'db-2026-11-22.dir', and no object of the set holds it (objects: only the manifest)"),
    ("db-2026-11-21.sql.gz.age", "2026-11-21", ["db-"], "describes the dump 'db-2026-11-21.sql.gz', and no object of the set holds it"),
    ("media-2026-11-22.tar.age", "latest", ["db-", "media-"],
     "the set media-2026-11-22 off-host is incomplete: s3://{bucket}/host1/media-2026-11-22.tar.age is missing although its "
     "marker media-2026-11-22.set.json is there"),
])
def test_a_set_missing_a_member_is_incomplete_and_nothing_is_written(run_module, moto, bucket, keys, tmp_path, deleted, select,
                                                                     prefixes, message):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    client(moto).delete_object(Bucket=bucket, Key="host1/" + deleted)
    dest = tmp_path / "restore"
    dest.mkdir()
    params = s3_params(moto, bucket, dest=str(dest), identity=str(identity), select=select, prefixes=prefixes)
    for check_mode in (True, False):
        result = run_module("offsite_fetch", params, check_mode=check_mode)
        assert result.get("failed") and not result.get("changed"), result
        assert message.format(bucket=bucket) in result["msg"] and "nothing was fetched" in result["msg"], result["msg"]
        assert os.listdir(dest) == []
    if select == "latest":  # the way forward: the other set of that prefix
        assert "(choose one with select)" in result["msg"] and "2026-11-21" in result["msg"]


def forged_object(recipient, plain):
    """age ciphertext of `plain` to the backup's own (public) recipient, with the metadata offsite_sync would give it."""
    cipher = subprocess.run(["age", "-r", recipient], input=plain, capture_output=True, check=True).stdout
    return cipher, {"kind": "file", "sha256-plain": hashlib.sha256(plain).hexdigest(), "size-plain": str(len(plain)),
                    "sha256-cipher": hashlib.sha256(cipher).hexdigest()}


@pytest.mark.parametrize("manifest,message", [
    (dict(file="db-2026-11-22.sql.gz", sha256="0" * 64), "describes the dump 'db-2026-11-22.sql.gz', and no object of the set holds it"),
    (dict(file="db-2026-11-22.dir"), "is not a manifest written by pg_backup (no sha256)"),
    (["not", "a", "manifest"], "is not a manifest written by pg_backup"),
])
def test_a_manifest_that_does_not_describe_a_member_of_its_set_is_refused(run_module, moto, bucket, keys, tmp_path, manifest, message):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    replace_object(moto, bucket, "db-2026-11-22.manifest.json.age", *forged_object(recipient, json.dumps(manifest).encode()))
    dest = tmp_path / "restore"
    dest.mkdir()
    result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(identity)))
    assert result.get("failed") and message in result["msg"], result
    assert os.listdir(dest) == []


@pytest.mark.parametrize("listed", [["db-2026-11-22.dir.tar.age"], ["media-2026-11-21.tar.age"], ["media-2026-11-22.tar.age"] * 2,
                                    ["media-2026-11-22.set.json"]])
def test_a_set_file_listing_what_is_not_its_member_is_refused(run_module, moto, bucket, keys, tmp_path, listed):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    body, meta = objects(moto, bucket)["media-2026-11-22.set.json"]
    document = json.loads(body)
    document["members"] = [dict(document["members"][0], object=name) for name in listed]
    replace_object(moto, bucket, "media-2026-11-22.set.json", json.dumps(document).encode(), meta)
    dest = tmp_path / "restore"
    dest.mkdir()
    result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(identity), prefixes=["media-"]))
    assert result.get("failed") and "which is not a member of the set media-2026-11-22: refused" in result["msg"], result
    assert os.listdir(dest) == []


def test_every_set_is_verified_before_any_is_written(run_module, moto, bucket, keys, tmp_path):
    """The db set is fine; the media set's object is damaged: nothing of either is left under a final name."""
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    body, _meta = objects(moto, bucket)["media-2026-11-22.tar.age"]
    replace_object(moto, bucket, "media-2026-11-22.tar.age", body[:-100] + bytes(100))
    dest = tmp_path / "restore"
    dest.mkdir()
    result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(dest), identity=str(identity)))
    assert result.get("failed") and "media-2026-11-22.tar.age is not the object that was uploaded" in result["msg"], result
    assert os.listdir(dest) == []


# --- planted links in the destination ---------------------------------------------------------------------------------

def test_planted_links_in_the_destination_are_never_followed(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    dest = tmp_path / "restore"
    dest.mkdir()
    params = s3_params(moto, bucket, dest=str(dest), identity=str(identity))

    # A link where an entry goes: refused, the link and what it points to left alone.
    (dest / "media-2026-11-22").symlink_to(outside)
    refused = run_module("offsite_fetch", params)
    assert refused.get("failed") and "media-2026-11-22 exists in the destination and differs" in refused["msg"], refused
    assert sorted(os.listdir(dest)) == ["media-2026-11-22"] and os.listdir(outside) == ["precious"]
    (dest / "media-2026-11-22").unlink()

    # Links where the partial entries go (the tree's partial directory, a file's partial): removed, never followed.
    (dest / ".media-2026-11-22.partial").symlink_to(outside)
    (dest / ".db-2026-11-22.manifest.json.partial").symlink_to(outside / "precious")
    (dest / ".db-2026-11-22.dir.partial").symlink_to(outside)
    fetched = run_module("offsite_fetch", params)
    assert not fetched.get("failed"), fetched
    assert sorted(os.listdir(dest)) == ["db-2026-11-22.dir", "db-2026-11-22.manifest.json", "media-2026-11-22"]
    assert os.listdir(outside) == ["precious"] and (outside / "precious").read_text() == "keep me"
    assert files_of(dest / "media-2026-11-22") == files_of(src / "media-2026-11-22")


def test_a_destination_through_a_link_others_could_plant_is_refused(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    restore = planted_link(tmp_path, "restore")
    target = tmp_path / "elsewhere"
    result = run_module("offsite_fetch", s3_params(moto, bucket, dest=str(restore), identity=str(identity)))
    assert result.get("failed") and "refusing to follow the symlink restore in a directory others can write to" in result["msg"], result
    assert os.listdir(target) == []


# --- a damaged object is not a wrong key ------------------------------------------------------------------------------

def flipped(body, where):
    """`body` with one bit flipped in its header: in the recipient stanza's wrapped key (age then finds no identity,
    as for a wrong key), in the header's MAC, or in its first line."""
    header_end = body.index(b"\n---") + 1
    stanza = body.index(b"\n", body.index(b"-> X25519")) + 1  # the stanza's body line
    offset = {"stanza": stanza + 10, "mac": header_end + 10, "intro": 3}[where]
    damaged = bytearray(body)
    damaged[offset] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize("name,prefixes,select", [("media-2026-11-21.tar.age", ["media-"], "2026-11-21"),
                                                  ("db-2026-11-21.manifest.json.age", ["db-"], "2026-11-21"),
                                                  ("db-2026-11-21.sql.gz.age", ["db-"], "2026-11-21")])
def test_a_damaged_age_header_is_reported_as_damage_and_a_wrong_key_as_a_wrong_key(run_module, moto, bucket, keys, tmp_path,
                                                                                   name, prefixes, select):
    (identity, recipient), (other, _other_recipient) = keys
    src = backup_dir(tmp_path, identity)
    ship(run_module, moto, bucket, src, recipient)
    body, _meta = objects(moto, bucket)[name]
    dest = tmp_path / "restore"
    dest.mkdir()
    params = s3_params(moto, bucket, dest=str(dest), identity=str(identity), prefixes=prefixes, select=select)

    for where in ("stanza", "mac", "intro"):
        replace_object(moto, bucket, name, flipped(body, where))
        damaged = run_module("offsite_fetch", params)
        assert damaged.get("failed"), damaged
        assert "wrong key" not in damaged["msg"], (where, damaged["msg"])
        assert "sha256 mismatch: s3://%s/host1/%s is not the object that was uploaded" % (bucket, name) in damaged["msg"], (where, damaged)
        assert "it was damaged or replaced, not a key problem" in damaged["msg"], (where, damaged)
        assert os.listdir(dest) == []

    replace_object(moto, bucket, name, body)
    wrong = run_module("offsite_fetch", dict(params, identity=str(other)))
    assert wrong.get("failed") and "the age key at %s cannot decrypt this backup" % other in wrong["msg"], wrong
    assert "wrong key" in wrong["msg"] and "intact" in wrong["msg"] and "damaged or replaced" not in wrong["msg"]
    assert os.listdir(dest) == []
    assert not run_module("offsite_fetch", params).get("failed")


@pytest.mark.parametrize("setting,value,message", [
    ("endpoint_url", "not a url", "cannot use endpoint_url 'not a url'"),
    ("region", "bad region!", "in region 'bad region!'"),
])
def test_a_malformed_endpoint_or_region_fails_clearly(run_module, tmp_path, setting, value, message):
    dest = tmp_path / "restore"
    dest.mkdir()
    params = {setting: value, "bucket": "b", "prefix": "host1/", "access_key": ACCESS, "secret_key": SECRET}
    for module, extra in (("offsite_fetch", dict(dest=str(dest))), ("offsite_sync", dict(src=str(tmp_path), recipient="age1" + "q" * 58))):
        result = run_module(module, dict(params, **extra))
        assert result.get("failed") and message in result["msg"], result


def test_a_backup_directory_through_a_link_others_could_plant_is_refused(run_module, moto, bucket, keys, tmp_path):
    (identity, recipient), _other = keys
    src = backup_dir(tmp_path, identity)
    backups = planted_link(tmp_path, "backups", src)
    result = run_module("offsite_sync", s3_params(moto, bucket, src=str(backups), recipient=recipient))
    assert result.get("failed") and "refusing to follow the symlink backups in a directory others can write to" in result["msg"], result
    assert "nothing was uploaded or removed" in result["msg"] and objects(moto, bucket) == {}
