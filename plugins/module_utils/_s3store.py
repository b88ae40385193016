# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One bucket and key prefix of S3-compatible object storage, through boto3. PRIVATE to the collection: no
compatibility promise.

A Store lists, reads, writes and deletes the objects directly under its key prefix (objects in sub-prefixes are not
seen): single-request uploads, and multipart uploads (start, parts, complete, abort; part_size() chooses the part
size for an object's size) for objects too large for one request or whose size is not known in advance. Every upload
carries Content-MD5 (per part for a multipart upload); the checksums newer botocore adds by default are not sent, as
several S3-compatible services reject or ignore them. replace_metadata() gives an object new metadata by a
server-side copy onto itself (in ranged parts beyond COPY_LIMIT), and copy() copies an object onto another name the
same way. boto3's errors become StoreError saying what was
being done; retries and timeouts are bounded, so a lost endpoint fails a run instead of hanging it.

Pure standard library plus boto3, imported only when a function needs it; no Ansible imports.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import traceback
from collections import namedtuple

# Parts of a multipart upload: S3 allows 5 MiB to 5 GiB and at most 10,000 parts; the part size doubles for
# objects that would need more than MAX_PARTS parts of 16 MiB (about 140 GiB).
PART_SIZE = 16 << 20
MAX_PARTS = 9000
# CopyObject copies at most 5 GiB in one request; larger objects are copied in ranged parts.
COPY_LIMIT = 5 << 30
COPY_PART_SIZE = 1 << 30
RETRIES = {"max_attempts": 8, "mode": "standard"}
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60

Head = namedtuple("Head", "size meta")


class StoreError(Exception):
    """What went wrong with the object store, in words for the operator."""


def s3_client(endpoint_url=None, region="us-east-1", access_key=None, secret_key=None, attempts=None, read_timeout=None):
    """A boto3 S3 client with bounded retries and timeouts (RETRIES and READ_TIMEOUT unless given); credentials from
    the arguments, else boto3's chain (AWS_ACCESS_KEY_ID and friends)."""
    import boto3  # pylint: disable=import-outside-toplevel
    import botocore.session  # pylint: disable=import-outside-toplevel
    from botocore.config import Config  # pylint: disable=import-outside-toplevel

    options = dict(retries=dict(RETRIES, max_attempts=attempts or RETRIES["max_attempts"]), connect_timeout=CONNECT_TIMEOUT,
                   read_timeout=read_timeout or READ_TIMEOUT)
    try:
        # Content-MD5 on every upload is the integrity check; the default checksums of botocore >= 1.36 are not
        # sent, as several S3-compatible services reject or ignore them.
        config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required", **options)
    except TypeError:  # older botocore (Debian 12 has 1.29), which sends none
        config = Config(**options)
    core = botocore.session.Session()
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region,
                                    botocore_session=core)
    _share_data_loader(core)
    return session.client("s3", endpoint_url=endpoint_url or None, config=config)


_SHARED = {}


def _share_data_loader(core):
    """Give a new botocore session the process's first data loader. A loader parses botocore's service models and
    endpoint rules (megabytes of JSON) once and keeps them: a module run makes one client, but the controller's
    timeline callback makes one per push, and a test process thousands. It holds data files only, never
    credentials, which stay with each session."""
    loader = _SHARED.setdefault("data_loader", core.get_component("data_loader"))
    core.register_component("data_loader", loader)


def store_from(settings):
    """The Store of module options or job settings: endpoint_url, region, access_key, secret_key, bucket, prefix."""
    region = settings.get("region") or "us-east-1"
    try:
        client = s3_client(settings.get("endpoint_url"), region, settings.get("access_key"), settings.get("secret_key"))
    except (ValueError,) + _botocore_errors() as exc:  # an endpoint_url that is not a URL, a malformed region
        raise StoreError("cannot use endpoint_url %r in region %r: %s" % (settings.get("endpoint_url"), region, exc)) from None
    return Store(client, settings["bucket"], settings.get("prefix") or "")


def boto3_missing():
    """The traceback of importing boto3 when it is not installed on the managed host, else None."""
    try:
        import boto3  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return traceback.format_exc()
    return None


def _botocore_errors():
    from botocore.exceptions import BotoCoreError, ClientError  # pylint: disable=import-outside-toplevel
    return BotoCoreError, ClientError


@contextlib.contextmanager
def _s3(what):
    """Turn boto3's errors into StoreError saying what was being done."""
    try:
        yield
    except _botocore_errors() as exc:
        raise StoreError("%s failed: %s" % (what, exc)) from exc


def _md5(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def check_key_prefix(prefix):
    if prefix and (not prefix.endswith("/") or prefix.startswith("/") or "//" in prefix
                   or ".." in prefix.split("/")):
        raise StoreError("prefix %r is not a key prefix: use \"\" or a path ending in '/', such as 'host1/'" % prefix)


class Store:
    """One bucket and key prefix. Names are object keys without the prefix; objects in sub-prefixes are not seen."""

    def __init__(self, client, bucket, prefix=""):
        check_key_prefix(prefix)
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def key(self, name):
        return self.prefix + name

    def url(self, name=""):
        return "s3://%s/%s" % (self.bucket, self.key(name))

    def ensure_bucket(self, region, check_mode=False):
        """Create the bucket if it does not exist; returns True when it was (or would be) created."""
        with _s3("checking the bucket %s" % self.bucket):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return False
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            if not check_mode:
                options = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
                self.client.create_bucket(Bucket=self.bucket, **options)
        return True

    def list(self):
        """{name: size} of the objects directly under the prefix."""
        found = {}
        with _s3("listing %s" % self.url()):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix):]
                    if name and "/" not in name:
                        found[name] = item["Size"]
        return found

    def head(self, name):
        """Head(size, metadata) of an object, or None if there is none."""
        with _s3("reading the metadata of %s" % self.url(name)):
            try:
                response = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return Head(response["ContentLength"], response.get("Metadata") or {})

    def body(self, name):
        with _s3("downloading %s" % self.url(name)):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]

    def read(self, name):
        with _s3("downloading %s" % self.url(name)):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()

    def put(self, name, data, meta):
        with _s3("uploading %s" % self.url(name)):
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data, ContentMD5=_md5(data), Metadata=meta)

    def delete(self, name):
        with _s3("deleting %s" % self.url(name)):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def start_upload(self, name, meta):
        with _s3("starting the upload of %s" % self.url(name)):
            return self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key(name), Metadata=meta)["UploadId"]

    def upload_part(self, name, upload_id, number, data):
        with _s3("uploading part %d of %s" % (number, self.url(name))):
            response = self.client.upload_part(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id,
                                               PartNumber=number, Body=data, ContentMD5=_md5(data))
        return {"ETag": response["ETag"], "PartNumber": number}

    def complete_upload(self, name, upload_id, parts):
        with _s3("completing the upload of %s" % self.url(name)):
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})

    def abort_upload(self, key, upload_id):
        with _s3("aborting the upload of s3://%s/%s" % (self.bucket, key)):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def uploads(self):
        """[(key, upload id, initiated)] of the multipart uploads in progress directly under the prefix."""
        found = []
        with _s3("listing the unfinished uploads under %s" % self.url()):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if "/" not in upload["Key"][len(self.prefix):]:
                        found.append((upload["Key"], upload["UploadId"], upload["Initiated"]))
        return found

    def read_start(self, name, size):
        """The first `size` bytes of an object (fewer if it is shorter); `size` at least 1."""
        with _s3("downloading the start of %s" % self.url(name)):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name), Range="bytes=0-%d" % (size - 1))["Body"].read()

    def replace_metadata(self, name, size, meta):
        """Give an object new metadata by a server-side copy onto itself (in ranged parts beyond COPY_LIMIT)."""
        self.copy(name, name, size, meta)

    def copy(self, source_name, name, size, meta):
        """Server-side copy of the object `source_name` (of `size` bytes) onto `name` with the metadata `meta` (in
        ranged parts beyond COPY_LIMIT); `name` is replaced at once, as an upload replaces it."""
        source = {"Bucket": self.bucket, "Key": self.key(source_name)}
        if size <= COPY_LIMIT:
            with _s3("setting the metadata of %s" % self.url(name) if source_name == name
                     else "copying %s onto %s" % (self.url(source_name), self.url(name))):
                self.client.copy_object(Bucket=self.bucket, Key=self.key(name), CopySource=source, Metadata=meta,
                                        MetadataDirective="REPLACE")
            return
        upload_id = self.start_upload(name, meta)
        try:
            parts = []
            with _s3("copying %s onto %s with its metadata" % (self.url(source_name), "itself" if source_name == name else self.url(name))):
                for start in range(0, size, COPY_PART_SIZE):
                    response = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=self.key(name), UploadId=upload_id, PartNumber=len(parts) + 1,
                        CopySource=source, CopySourceRange="bytes=%d-%d" % (start, min(start + COPY_PART_SIZE, size) - 1))
                    parts.append({"ETag": response["CopyPartResult"]["ETag"], "PartNumber": len(parts) + 1})
            self.complete_upload(name, upload_id, parts)
        except BaseException:
            self.abort_quietly(self.key(name), upload_id)
            raise

    def abort_quietly(self, key, upload_id):
        """Best effort (the store may be what failed): a later run aborts what is left once it is stale."""
        try:
            self.abort_upload(key, upload_id)
        except StoreError:
            pass


def part_size(estimate):
    """The part size of a multipart upload of about `estimate` bytes: PART_SIZE, doubled until MAX_PARTS suffice."""
    size = PART_SIZE
    while estimate > size * MAX_PARTS:
        size *= 2
    return size
