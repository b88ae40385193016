# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export complete hours of audit_log into append-only JSON-lines files."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .storage import write_atomically

# Arbitrary constant ("wa_arc" in ASCII): two concurrent archivers could otherwise both find an hour missing and both write it.
ARCHIVE_LOCK_ID = 0x77615F617263


def archive_path(archive_dir: Path, hour: datetime) -> Path:
    return archive_dir / f"{hour:%Y/%m/%d}" / f"audit-{hour:%Y%m%dT%H}.jsonl"


def archive_audit_log(conn, archive_dir: Path) -> tuple[int, int]:
    """Write one file per complete UTC hour not yet archived; return (files written, hours already archived)."""
    written = skipped = 0
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (ARCHIVE_LOCK_ID,))
        # The session time zone is UTC (see db.connect), so date_trunc yields UTC hours; the current hour is still open.
        cur.execute("SELECT DISTINCT date_trunc('hour', occurred_at) AS hour FROM audit_log WHERE occurred_at < date_trunc('hour', now()) ORDER BY hour")
        for (hour,) in cur.fetchall():
            target = archive_path(archive_dir, hour)
            if target.exists():
                skipped += 1
                continue
            cur.execute(
                "SELECT id, occurred_at, actor, action, outcome, details FROM audit_log"
                " WHERE occurred_at >= %s AND occurred_at < %s + interval '1 hour' ORDER BY id",
                (hour, hour),
            )
            columns = [column.name for column in cur.description]
            lines = (
                (json.dumps(dict(zip(columns, row)), sort_keys=True, default=lambda value: value.isoformat()) + "\n").encode()
                for row in cur.fetchall()
            )
            write_atomically(target, lines)
            written += 1
        cur.execute("SELECT pg_advisory_unlock(%s)", (ARCHIVE_LOCK_ID,))
    conn.commit()
    return written, skipped
