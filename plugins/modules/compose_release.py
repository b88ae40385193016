#!/usr/bin/python
# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: compose_release
short_description: Record the releases of a docker compose deployment and put a previous one back
version_added: 0.1.0
description:
  - For the bad deploy. A deploy records its release (I(state=recorded)); the rollback plans (I(state=report)) and puts
    the previous release back (I(state=deployed)). The caller then runs C(docker compose up -d) and verifies the
    service; nothing is restarted here.
  - "A release is what was deployed: for each of I(services), the image reference the compose file uses and the image
    id it resolved to (C(docker image inspect)); the git commit of I(project_dir) when it is a git work tree; and the
    versions in the database's migrations table (I(migrations_table)). The references are read with
    C(<compose_command> --project-directory <project_dir> config --format json), run in I(project_dir) with the
    environment the module has (C(COMPOSE_FILE), the project's C(.env))."
  - "Each release is one JSON record C(<id>.json) (mode 0600, written atomically) in I(dir) (mode 0700); the id is the
    UTC time of the record (C(20261206T220000Z), with C(-2), C(-3), ... when taken). A I(dir) that is a symlink, owned by
    another user or writable by others is refused; so is a record that is a symlink, a FIFO or anything but a regular
    file of this user, does not parse, or names another id than its file (named in the message), unless I(force): it is
    then ignored, and never overwritten nor removed."
  - "Each release's images are tagged C(<repository of the reference>:runbooks-release-<id>) (with C(-<service>) added
    when two services of a release share a repository but not an image), so that a new build or pull under the same tag
    leaves the old image tagged, and C(docker image prune) never deletes a release's images."
  - "I(state=recorded): the images in use, the git commit and the migrations. A record with the same image ids and
    commit is reused: it changes only when I(verified) turns it verified (never back), when the database has migrations
    it did not list (they are added) or when I(label) differs; its tags are put back if removed. Then the records beyond
    I(keep) are removed, oldest first, each with the tags it made (C(docker rmi <tag>): never by id, never forced; a tag
    docker will not remove, because a container uses its image, keeps the record); never the release just recorded, the
    newest verified one, nor the one I(release=previous) resolves to."
  - "The current release is the record whose images are those the references resolve to now (the one with the git
    commit in use too, if several). Images deployed by hand are in no record: RV(current) is null and I(state=report) says
    they are unrecorded."
  - "I(state=deployed) puts I(release) back: C(docker tag <image id> <reference>) for each service whose reference does
    not resolve to the release's image, after C(git -C <project_dir> checkout --quiet --detach <commit>) when the release
    has another commit (the references are then those of that commit's compose file). The deployment is noted in the
    target's record (C(deployed_at), with I(incident_id)). When the images in use are unrecorded they are recorded first
    (not verified, labelled as such), so they stay tagged and can be deployed again: the way forward is
    I(state=deployed) with I(release) naming a release."
  - "It refuses, and changes nothing, when the release is not there, when an image of it is gone from docker, when the
    database has migrations the release does not know (listed in the message and RV(unknown_migrations)), when the
    database cannot be read, when the release recorded no migrations, when a service's reference is pinned by digest,
    when I(project_dir) has modifications of tracked files and the release is another commit, or when that commit is not
    in the repository. I(force) deploys despite the migrations, an unreadable database, the modifications and a project
    that is no git work tree any more (then only the images)."
  - "I(release=previous) is the newest verified release that is not the current one and whose images differ from those
    in use; once a rollback to C(previous) put a release in place, C(previous) stays that release until something is
    recorded or deployed again, so a second run changes nothing. To go back further, name the release."
  - The database is read in a read-only transaction (C(default_transaction_read_only)); identifiers are quoted.
extends_documentation_fragment:
  - runbooks.incident.attributes
  - runbooks.incident.postgres
attributes:
  check_mode:
    support: full
    details: Reads everything as a real run does and returns what would be recorded, tagged, checked out and pruned
      (RV(tagged), RV(pruned), RV(checkout), RV(release)); writes, tags and checks out nothing.
  diff_mode:
    support: full
    details: I(state=recorded) shows the record before and after; I(state=deployed) the image id of each service and
      the git commit before and after.
options:
  state:
    description:
      - C(report) reads the releases, the current one and what I(release) (default C(previous)) resolves to; it changes
        nothing.
      - C(recorded) records the release deployed now (after a deploy; again with I(verified=true) once it is healthy).
      - C(deployed) puts I(release) back.
    type: str
    choices: [report, recorded, deployed]
    default: report
  release:
    description:
      - For I(state=deployed) (and I(state=report)), the release, by id (C(20261206T220000Z)), or C(previous) (the
        default).
    type: str
  project_dir:
    description: The directory of the compose project (where its compose file is).
    type: path
    default: /opt/whatsapp-mcp
  compose_command:
    description: The Compose v2 CLI, as argv (for example C([/usr/local/lib/docker/cli-plugins/docker-compose])).
    type: list
    elements: str
    default: [docker, compose]
  docker_command:
    description: The docker CLI, as argv.
    type: list
    elements: str
    default: [docker]
  services:
    description:
      - The services whose images make up a release and are put back. Each must be a service of the project.
    type: list
    elements: str
    default: [app]
  dir:
    description: The directory of the release records (created 0700 when a record is first written).
    type: path
    default: /var/lib/runbooks-incident/releases/whatsapp-mcp
  db:
    description: The database whose migrations table is read.
    type: str
    default: wa_mcp
  migrations_table:
    description:
      - The table of the applied schema migrations, C(table) or C(schema.table) (each part the name as it is, split at
        the last dot), or in SQL quotes (C("My Schema"."migrations")). An empty string disables the schema check (no
        database is read; releases record no migrations).
    type: str
    default: schema_migrations
  migrations_column:
    description: Its column holding the version of each migration (read as text).
    type: str
    default: version
  verified:
    description:
      - With I(state=recorded), the release is verified (healthy after its deploy); only verified releases are
        I(release=previous). C(false) never unverifies a verified record.
    type: bool
    default: false
  label:
    description: With I(state=recorded), a label of the release (for example the git describe of the deploy), at most 200 characters.
    type: str
  keep:
    description: How many release records I(state=recorded) keeps (see the description for those never removed).
    type: int
    default: 5
  force:
    description:
      - Ignore release records that cannot be used (never overwriting them), and deploy despite unknown migrations, an
        unreadable database, a release without migrations, modified tracked files or a project that is no git work tree.
    type: bool
    default: false
  incident_id:
    description:
      - The incident or change (for example C(INC-2026-0042)) noted with a deployment in the release's record.
      - Letters, digits and C(._:-), at most 64 characters.
    type: str
notes:
  - Run it as root (or as the user owning I(dir)) with access to the docker daemon.
  - Images are never pulled or built; a release whose image is gone cannot be deployed.
  - The module does not lock; the collection's run lock serialises runbooks on a host.
author:
  - runbooks.incident contributors (@runbooks)
"""

EXAMPLES = r"""
- name: Record the release just deployed
  runbooks.incident.compose_release:
    state: recorded
    label: "{{ whatsapp_mcp_version }}"
    compose_project_dir: /opt/whatsapp-mcp

- name: Mark it verified once /health answers
  runbooks.incident.compose_release:
    state: recorded
    verified: true
    compose_project_dir: /opt/whatsapp-mcp

- name: What would a rollback deploy?
  runbooks.incident.compose_release:
    compose_project_dir: /opt/whatsapp-mcp
  register: releases

- name: Put the previous verified release back
  runbooks.incident.compose_release:
    state: deployed
    release: previous
    incident_id: INC-2026-0042
    compose_project_dir: /opt/whatsapp-mcp
  register: rollback

- name: Apply it
  ansible.builtin.command:
    cmd: docker compose up -d
    chdir: /opt/whatsapp-mcp
  when: rollback.restart_needed
  changed_when: true

- name: The way forward again, to a named release
  runbooks.incident.compose_release:
    state: deployed
    release: 20261206T220000Z
    incident_id: INC-2026-0042
    compose_project_dir: /opt/whatsapp-mcp
"""

RETURN = r"""
msg:
  description: What was found and done (in check mode, would be done), in one line.
  returned: always
  type: str
  sample: >-
    deployed release 20261206T220000Z (app 0123456789ab), was 20261207T090000Z; run docker compose up -d and verify
state:
  description: I(state) as given.
  returned: success
  type: str
project_dir:
  description: I(project_dir), normalised.
  returned: success
  type: str
dir:
  description: I(dir), normalised.
  returned: success
  type: str
services:
  description: For each of I(services), C(image) (the reference the compose file uses) and C(id) (what it resolves to, null when no such image).
  returned: success
  type: dict
  sample: {app: {image: "whatsapp-mcp/app:latest", id: "sha256:0123..."}}
git:
  description: The git commit of I(project_dir), null when it is no git work tree.
  returned: success
  type: str
releases:
  description:
    - The release records, newest first (after the run; in check mode, as they would be). Each has C(id),
      C(recorded_at), C(label), C(verified), C(git), C(services) (service to C(image) and C(id)), C(deployed_at)
      (list of C(time), C(incident_id), C(release) as asked and C(from)) and C(current).
  returned: success
  type: list
  elements: dict
current:
  description: The id of the current release, null when the images in use are in no record.
  returned: success
  type: str
target:
  description:
    - I(state=report) and I(state=recorded), what I(release) (default C(previous)) resolves to; I(state=deployed), the
      release deployed. Null when there is none.
  returned: success
  type: str
unknown_migrations:
  description:
    - The migrations the database has that RV(target) does not know (sorted); null when not checked (no target,
      I(migrations_table) empty, the database unreadable in I(state=report), or the target recorded none).
  returned: always
  type: list
  elements: str
  sample: ["20261206_add_media_index"]
migrations:
  description: The versions in the migrations table (null when not read).
  returned: success
  type: list
  elements: str
release:
  description: I(state=recorded), the release recorded (or reused), as an item of RV(releases).
  returned: when state=recorded
  type: dict
tagged:
  description: The tags made (would be made), C(<tag>) for I(state=recorded), C(<reference> -> <image id>) for I(state=deployed).
  returned: when state is recorded or deployed
  type: list
  elements: str
untagged:
  description: The runbooks-release tags removed with the records pruned.
  returned: when state=recorded
  type: list
  elements: str
pruned:
  description: The ids of the records removed beyond I(keep).
  returned: when state=recorded
  type: list
  elements: str
restart_needed:
  description: A reference or the checkout changed (would change); run C(docker compose up -d).
  returned: when state=deployed
  type: bool
checkout:
  description: The git commit checked out (would be), or null.
  returned: when state=deployed
  type: str
recorded:
  description: The id under which the unrecorded images in use were recorded before the rollback, or null.
  returned: when state=deployed
  type: str
from:
  description: What was deployed before, C(id) (null when unrecorded), C(services) and C(git).
  returned: when state=deployed
  type: dict
to:
  description: The release deployed, as an item of RV(releases).
  returned: when state=deployed
  type: dict
"""

from ansible_collections.runbooks.incident.plugins.module_utils import _compose_release, _params, _pg


def main():
    module = _params.postgres_module(dict(
        state=dict(type="str", choices=list(_compose_release.STATES), default="report"),
        release=dict(type="str"),
        project_dir=dict(type="path", default="/opt/whatsapp-mcp"),
        compose_command=dict(type="list", elements="str", default=["docker", "compose"]),
        docker_command=dict(type="list", elements="str", default=["docker"]),
        services=dict(type="list", elements="str", default=["app"]),
        dir=dict(type="path", default=_compose_release.DEFAULT_DIR),
        db=dict(type="str", default="wa_mcp"),
        migrations_table=dict(type="str", default="schema_migrations"),
        migrations_column=dict(type="str", default="version"),
        verified=dict(type="bool", default=False),
        label=dict(type="str"),
        keep=dict(type="int", default=5),
        force=dict(type="bool", default=False),
        incident_id=dict(type="str"),
    ))
    try:
        result = _compose_release.run(module.params, check_mode=module.check_mode, diff=module._diff,  # pylint: disable=protected-access
                                      warn=module.warn)
    except _compose_release.Refused as exc:
        module.fail_json(**dict(exc.result, msg=str(exc)))
    except (_compose_release.ReleaseError, _pg.PgError) as exc:
        module.fail_json(msg="%s; nothing was changed" % exc, unknown_migrations=None)
    except _compose_release.ApplyError as exc:
        module.fail_json(msg=str(exc), changed=bool(exc.done), unknown_migrations=None)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the releases of %s: %s; nothing was changed" % (module.params["project_dir"], exc), unknown_migrations=None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
