# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Where the off-host copies live: any S3-compatible storage (AWS S3, Backblaze B2, MinIO, ...).
    DOCUMENTATION = r"""
options:
  bucket:
    description: Bucket of the off-host copies.
    type: str
    required: true
  prefix:
    description:
      - Key prefix of this host's sets in I(bucket), either empty or ending in C(/); the roles pass
        C(<inventory_hostname>/). Only objects directly under it are read, written or removed.
    type: str
    default: ""
  endpoint_url:
    description: URL of an S3-compatible service (Backblaze B2, MinIO, ...). Leave unset for AWS S3.
    type: str
  region:
    description: Region of the bucket.
    type: str
    default: us-east-1
  access_key:
    description:
      - Access key id. When unset, boto3 finds credentials itself (C(AWS_ACCESS_KEY_ID) and so on).
      - Never logged and never on a command line.
    type: str
  secret_key:
    description: Secret access key of I(access_key) (never logged).
    type: str
"""
