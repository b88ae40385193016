# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service's layout, defined once. PRIVATE to the collection: no compatibility promise.

Every path and name the roles act on (directories, files, units, the compose services, the database) comes from here,
through the runbooks.incident.service_layout lookup. An operator sets any of them in the inventory as
`whatsapp_mcp_<name>`; the names derived from it follow (`whatsapp_mcp_data_dir` moves the backups, the media and the
audit archive), and every role's defaults derive from the result.
"""
from __future__ import annotations

import re
import string

PREFIX = "whatsapp_mcp_"

# name: (default, kind, what it is). A default may name others in braces: they are resolved first. The kind says what
# a value must be: an absolute path, a relative or absolute path, a plain name, a PostgreSQL name or an http(s) URL.
LAYOUT = {
    "service": ("whatsapp-mcp", "name", "the service's name: its directories, user, group and units are named after it"),
    "project_dir": ("/opt/{service}", "path", "the service repository: compose file, nginx configuration, encrypted secrets"),
    "config_dir": ("/etc/{service}", "path", "the host's own configuration of the service"),
    "data_dir": ("/var/lib/{service}", "path", "the service's data: database files, media, backups, audit archive"),
    "backup_dir": ("{data_dir}/backups", "path", "local backups (database dumps, media snapshots)"),
    "media_dir": ("{data_dir}/media", "path", "the media files"),
    "audit_archive_dir": ("{data_dir}/audit-archive", "path", "the hourly audit archive"),
    "releases_dir": ("/var/lib/runbooks-incident/releases/{service}", "path",
                     "the record of each deploy (its images, git commit and schema): the targets of a rollback"),
    "secrets_dir": ("/run/secrets", "path", "where the secrets are decrypted at boot (a tmpfs)"),
    "secrets_file": ("ops/secrets/secrets.enc.yaml", "relpath", "the sops-encrypted secrets, relative to project_dir or absolute"),
    "sops_file": ("{project_dir}/{secrets_file}", "path", "the secrets file's absolute path (derived from secrets_file)"),
    "sops_config": ("{project_dir}/ops/sops/.sops.yaml", "path", "sops' rules: the age recipients new secrets files are encrypted to"),
    "age_key_file": ("{config_dir}/age.key", "path", "the age private key the secrets and backups are encrypted to"),
    "tls_dir": ("{config_dir}/tls", "path", "the certificate and key nginx serves"),
    "acme_webroot": ("/var/www/certbot", "path", "the directory nginx serves /.well-known/acme-challenge/ from"),
    "user": ("{service}", "name", "the user the app runs as (owner of the decrypted secrets and the media)"),
    "secrets_group": ("{service}-secrets", "name", "the group that may read the age key and the decrypted secrets"),
    "service_unit": ("{service}.service", "name", "the systemd unit that runs the compose stack"),
    "secrets_unit": ("{service}-secrets.service", "name", "the systemd unit that decrypts the secrets at boot"),
    "domain": ("wa.example.com", "name", "the service's public name (the certificate's subject)"),
    "health_url": ("http://127.0.0.1/health", "url", "the service's health endpoint, as the host reaches it"),
    "app_service": ("app", "name", "the compose service of the app"),
    "db_service": ("postgres", "name", "the compose service of the database"),
    "db": ("wa_mcp", "sqlname", "the database"),
    "db_user": ("wa", "sqlname", "the database role the app and the runbooks log in as"),
    "offsite_prefix": ("{service}/{domain}/", "keyprefix", "where the service's backups are off-host (the key prefix in the bucket): "
                       "the service's identity, not a host's name, so that a host that replaces a dead one finds them"),
}
# Derived only: set through the names they are derived from.
DERIVED = ("sops_file",)

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_KEY_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.@-]*/)+$")


class LayoutError(ValueError):
    pass


def settable():
    """The names an operator may set (as whatsapp_mcp_<name>)."""
    return [name for name in LAYOUT if name not in DERIVED]


def references(template):
    return [field for _text, field, _spec, _conv in string.Formatter().parse(template) if field]


def resolve(given):
    """Every name of the layout: the value `given` (name -> value, without the prefix) or the default, derived from
    the others. Values are checked: absolute paths, plain names, an http(s) URL."""
    unknown = sorted(set(given) - set(settable()))
    if unknown:
        raise LayoutError("not a name of the service's layout: %s (the names: %s)"
                          % (", ".join(PREFIX + name for name in unknown), ", ".join(PREFIX + name for name in settable())))
    resolved = {}

    def value(name, chain=()):
        if name in resolved:
            return resolved[name]
        if name in chain:
            raise LayoutError("the layout's defaults refer to each other in a loop: %s" % " -> ".join(chain + (name,)))
        if name in given:
            found = given[name]
        elif name == "sops_file" and value("secrets_file", chain + (name,)).startswith("/"):
            found = value("secrets_file")
        else:
            default = LAYOUT[name][0]
            found = default.format(**{ref: value(ref, chain + (name,)) for ref in references(default)})
        resolved[name] = check(name, found)
        return resolved[name]

    for name in LAYOUT:
        value(name)
    return resolved


def check(name, found):
    kind = LAYOUT[name][1]
    if not isinstance(found, str) or not found:
        raise LayoutError("%s%s must be a non-empty string, not %r" % (PREFIX, name, found))
    if kind in ("path", "relpath"):
        if "\0" in found or "/../" in "/" + found + "/":
            raise LayoutError("%s%s must be a path without '..': %r" % (PREFIX, name, found))
        if kind == "path" and not found.startswith("/"):
            raise LayoutError("%s%s must be an absolute path: %r" % (PREFIX, name, found))
        return found.rstrip("/") or "/"
    if kind == "keyprefix":
        found = found if found.endswith("/") else found + "/"
        # Every name starts with a letter or digit: no "." or ".." can be one.
        if not _KEY_PREFIX.match(found):
            raise LayoutError("%s%s must be a key prefix of plain names separated by / (letters, digits, and . _ @ -): %r"
                              % (PREFIX, name, found))
        return found
    if kind == "url" and not found.startswith(("http://", "https://")):
        raise LayoutError("%s%s must be an http:// or https:// URL: %r" % (PREFIX, name, found))
    if kind == "sqlname" and not _SQL_NAME.match(found):
        raise LayoutError("%s%s must be a plain PostgreSQL name (letters, digits, _ and $): %r" % (PREFIX, name, found))
    if kind == "name" and not _PLAIN_NAME.match(found):
        raise LayoutError("%s%s must be a plain name (letters, digits, and . _ @ -): %r" % (PREFIX, name, found))
    return found
