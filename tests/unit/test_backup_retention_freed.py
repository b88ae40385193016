# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_retention's removed_bytes, what the storage full runbook reports before pruning: the allocated bytes the
removal frees, the same in check mode and for real, a media snapshot's files shared with a kept snapshot (hard
links, rsync --link-dest) not counted, a symlink entry's target never counted."""
from __future__ import annotations

import os


def allocated(*paths):
    return sum(os.lstat(path).st_blocks * 512 for path in paths)


def test_removed_bytes_counts_what_the_removal_frees(run_module, tmp_path):
    old = [tmp_path / ("db-2026-11-%02d.sql.gz" % day) for day in (1, 2)]
    for path in old:
        path.write_bytes(b"d" * 40000)
        path.with_name(path.name.replace(".sql.gz", ".manifest.json")).write_text("{}")
    (tmp_path / "db-2026-11-22.sql.gz").write_bytes(b"n" * 40000)
    outside = tmp_path.parent / ("outside-%s.bin" % tmp_path.name)
    outside.write_bytes(b"o" * 100000)
    (tmp_path / "db-2026-11-03.sql.gz").symlink_to(outside)
    removed = [str(path) for path in old] + [str(path.with_name(path.name.replace(".sql.gz", ".manifest.json"))) for path in old]
    expected = allocated(*removed, tmp_path / "db-2026-11-03.sql.gz")

    planned = run_module("backup_retention", dict(path=str(tmp_path), keep_daily=1, keep_monthly=0), check_mode=True)
    assert planned["removed_bytes"] == expected and expected >= 80000, planned
    result = run_module("backup_retention", dict(path=str(tmp_path), keep_daily=1, keep_monthly=0))
    assert result["removed_bytes"] == expected and not (tmp_path / "db-2026-11-01.sql.gz").exists(), result
    assert outside.exists()


def test_a_snapshot_frees_only_the_files_no_kept_snapshot_links(run_module, tmp_path):
    snapshots = [tmp_path / ("media-2026-11-%02d" % day) for day in (20, 21, 22)]
    for index, snapshot in enumerate(snapshots):
        (snapshot / "photos").mkdir(parents=True)
        (snapshot / "photos" / ("own-%d.jpg" % index)).write_bytes(b"x" * 30000)
    shared = snapshots[2] / "photos" / "shared.jpg"
    shared.write_bytes(b"s" * 50000)
    for snapshot in snapshots[:2]:
        os.link(shared, snapshot / "photos" / "shared.jpg")
    gone_together = snapshots[0] / "photos" / "only-old.jpg"
    gone_together.write_bytes(b"g" * 20000)
    os.link(gone_together, snapshots[1] / "photos" / "only-old.jpg")  # both names removed: freed once
    expected = allocated(*(path for snapshot in snapshots[:2] for path in [snapshot, *snapshot.rglob("*")]
                           if path.name != "shared.jpg")) - allocated(gone_together)
    result = run_module("backup_retention", dict(path=str(tmp_path), prefix="media-", keep_daily=1, keep_monthly=0), check_mode=True)
    assert result["removed_bytes"] == expected, result
    assert result["removed"] == [str(snapshots[0]), str(snapshots[1])]
