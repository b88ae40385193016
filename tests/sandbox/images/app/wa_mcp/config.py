# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Service configuration, read from ``WA_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_password_file: Path
    db_sslmode: str | None
    secrets_dir: Path
    media_dir: Path
    audit_archive_dir: Path
    graph_url: str
    graph_api_version: str
    listen: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(
            db_host=env.get("WA_DB_HOST", "postgres"),
            db_port=int(env.get("WA_DB_PORT", "5432")),
            db_name=env.get("WA_DB_NAME", "wa_mcp"),
            db_user=env.get("WA_DB_USER", "wa"),
            db_password_file=Path(env.get("WA_DB_PASSWORD_FILE", "/run/secrets/db_password")),
            db_sslmode=env.get("WA_DB_SSLMODE") or None,
            secrets_dir=Path(env.get("WA_SECRETS_DIR", "/run/secrets")),
            media_dir=Path(env.get("WA_MEDIA_DIR", "/data/media")),
            audit_archive_dir=Path(env.get("WA_AUDIT_ARCHIVE_DIR", "/data/audit-archive")),
            graph_url=env.get("WA_GRAPH_URL", "http://graph:8081").rstrip("/"),
            graph_api_version=env.get("WA_GRAPH_API_VERSION", "v21.0"),
            listen=env.get("WA_LISTEN", "0.0.0.0:8080"),
        )

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _sep, port = self.listen.rpartition(":")
        return host or "0.0.0.0", int(port)
