# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reference implementation of the whatsapp-mcp service used by the incident runbook sandbox."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of message`` (psycopg2 messages span several lines; logs and CLI errors want one)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
