# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable file writes: media blobs under WA_MEDIA_DIR and audit archive files."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path


def write_atomically(target: Path, chunks: Iterable[bytes], mode: int = 0o640) -> None:
    """Write via a temp file in the same directory + rename, so readers never see a partial file; fsync file and directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        # Makes the rename itself durable, not just the file contents.
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def store_media(media_dir: Path, client_id: int, chunks: Iterable[bytes]) -> tuple[str, str, int]:
    """Store a blob at <client_id>/<YYYY>/<MM>/<uuid>; return (path relative to media_dir, sha256 hex, size)."""
    now = datetime.now(timezone.utc)
    relative = Path(str(client_id), f"{now:%Y}", f"{now:%m}", uuid.uuid4().hex)
    digest = hashlib.sha256()
    size = 0

    def measured() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    write_atomically(media_dir / relative, measured())
    return relative.as_posix(), digest.hexdigest(), size
