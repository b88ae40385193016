# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # How the PostgreSQL client tools reach the server: libpq from the host, or inside the compose container.
    DOCUMENTATION = r"""
options:
  login_user:
    description: Database role to connect as (the seeds' C(psql -U wa)).
    type: str
    default: wa
  login_password:
    description:
      - Password of I(login_user). Passed to the client tools in the environment (C(PGPASSWORD)), never in argv;
        the compose runtime forwards it with C(docker compose exec -e PGPASSWORD).
      - Not needed for the compose runtime when the container trusts its local socket, as the official image does.
    type: str
  login_host:
    description: Host of the server (libpq runtime). Leave unset for the local socket.
    type: str
  login_port:
    description: Port of the server (libpq runtime).
    type: int
    default: 5432
  login_unix_socket:
    description: Directory of the server's Unix socket (libpq runtime); takes precedence over I(login_host).
    type: str
  compose_project_dir:
    description:
      - Run the client tools inside the database container of this docker compose project
        (C(docker compose --project-directory <dir> exec -T <compose_service> ...)), as the seeds do.
      - When unset, the libpq runtime is used with the client tools installed on the managed host.
    type: path
  compose_service:
    description: Compose service of the database (compose runtime).
    type: str
    default: postgres
  maintenance_db:
    description: Database to connect to for server-wide statements (create, rename, drop databases).
    type: str
    default: postgres
  pg_bin_dir:
    description: Directory of the client tools (libpq runtime), for example C(/usr/lib/postgresql/15/bin); default from C(PATH).
    type: path
"""
