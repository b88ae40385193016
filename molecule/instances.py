# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scenarios' hosts: molecule's create and destroy (its delegated driver; molecule/create.yml, destroy.yml).

Each platform of molecule/<scenario>/molecule.yml is one container named molecule-<scenario>-<name>, on a network of
the scenario's own where the others reach it by its platform name. The inventory keeps the platform names (`app`,
`offhost`), the containers carry the scenario's: two scenarios run side by side without touching each other's hosts.

A platform is `name`, `groups` (molecule's), and
- kind: what the host is.
    host       a bare sandbox host (tests/sandbox/sandbox.py's host image, booting systemd)
    app        a bare host that can run the service's compose stack (nested Docker)
    converged  the app host converged once (sandbox.py converge): the service deployed and healthy
    s3         the S3 emulator (no systemd)
- ip: a fixed address (the scenario's network is then the /24 around it), for what must be named by address;
- volumes: more `docker run -v` arguments.
The flags of a host are sandbox.py's (host_run_args): the sandbox and the scenarios run their hosts the same way.

    instances.py create|destroy SCENARIO INSTANCE_CONFIG    (create reads the platforms, JSON, on stdin)
"""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sandbox"))
import sandbox  # noqa: E402  (tests/sandbox is not a package)

KINDS = {
    "host": {"image": sandbox.HOST_IMAGE},
    "app": {"image": sandbox.HOST_IMAGE, "nested_docker": True},
    # Its nested Docker state is copied from the converged volume at first boot (sandbox.py: SEED_UNIT).
    "converged": {"image": sandbox.CONVERGED_IMAGE, "nested_docker": True, "converged_docker": "/opt/sandbox-docker"},
    "s3": {"image": sandbox.S3_IMAGE, "service": True},
}
LABEL = "runbooks.molecule.scenario"
BOOT_TIMEOUT = 180


def container_name(scenario: str, name: str) -> str:
    return f"molecule-{scenario}-{name}"


def network_name(scenario: str) -> str:
    return f"molecule-{scenario}"


def run_args(scenario: str, platform: dict) -> list[str]:
    """`docker run` arguments (image last) of one platform."""
    kind = KINDS.get(platform.get("kind", "host"))
    if kind is None:
        raise ValueError(f"platform {platform['name']}: kind {platform.get('kind')!r} is not one of {', '.join(KINDS)}")
    name, network = platform["name"], network_name(scenario)
    labels = (f"{LABEL}={scenario}",)
    if kind.get("service"):
        args = ["--detach", "--name", container_name(scenario, name), "--hostname", name, "--network", network,
                "--network-alias", name, "--label", labels[0]]
        args += ["--ip", platform["ip"]] if platform.get("ip") else []
        args += [arg for volume in platform.get("volumes", ()) for arg in ("--volume", volume)]
    else:
        seed = [f"{sandbox.converged_docker_volume()}:{kind['converged_docker']}:ro"] if "converged_docker" in kind else []
        spec = {**kind, "ip": platform.get("ip"), "volumes": [*seed, *platform.get("volumes", ())]}
        args = sandbox.host_run_args(name, spec, container_name(scenario, name), network, labels)
    return [*args, kind["image"]]


def subnet(platforms: list[dict]) -> str | None:
    """The /24 around the fixed addresses, if any platform has one (they must share it)."""
    nets = {str(ipaddress.ip_network(platform["ip"] + "/24", strict=False)) for platform in platforms if platform.get("ip")}
    if len(nets) > 1:
        raise ValueError(f"the fixed addresses are in more than one /24: {', '.join(sorted(nets))}")
    return nets.pop() if nets else None


def instance_config(scenario: str, platforms: list[dict]) -> list[dict]:
    """What molecule's delegated driver reads back: each platform's inventory host reaches its container over
    `docker exec` (community.docker.docker) as root."""
    return [{"instance": platform["name"], "address": container_name(scenario, platform["name"]), "user": "root",
             "connection": "community.docker.docker"} for platform in platforms]


def create(scenario: str, platforms: list[dict], config: Path) -> None:
    args = {platform["name"]: run_args(scenario, platform) for platform in platforms}  # bad input fails before any change
    destroy(scenario, config)
    # New hosts, new records: the incidents a killed run left in the ephemeral directory (molecule prunes it only at
    # a destroy that ends a sequence) would add their runs to this run's timelines.
    shutil.rmtree(config.parent / "incidents", ignore_errors=True)
    net = subnet(platforms)
    sandbox.docker("network", "create", "--label", f"{LABEL}={scenario}", *(["--subnet", net] if net else []),
                   network_name(scenario))
    for name, argv in args.items():
        sandbox.docker("run", *argv)
        sandbox.log(f"{scenario}: {name} started as {container_name(scenario, name)}")
    deadline = time.monotonic() + BOOT_TIMEOUT
    for platform in platforms:
        if KINDS[platform.get("kind", "host")].get("service"):
            continue
        target = container_name(scenario, platform["name"])
        while not sandbox.booted(target):
            if time.monotonic() > deadline:
                state = sandbox.systemd_state(target) or "unknown"
                raise SystemExit(f"{scenario}: {platform['name']} did not finish booting in {BOOT_TIMEOUT} s (systemd: {state})")
            time.sleep(0.5)
    config.write_text(json.dumps(instance_config(scenario, platforms), indent=2) + "\n")


def destroy(scenario: str, config: Path) -> None:
    """Remove the scenario's containers (with their anonymous volumes: a nested /var/lib/docker) and network,
    whatever platforms the scenario has now."""
    found = sandbox.docker("ps", "-aq", "--filter", f"label={LABEL}={scenario}").stdout.split()
    if found:
        sandbox.docker("rm", "-f", "-v", *found)
    for network in sandbox.docker("network", "ls", "-q", "--filter", f"label={LABEL}={scenario}").stdout.split():
        sandbox.docker("network", "rm", network)
    config.write_text("[]\n")


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in ("create", "destroy"):
        raise SystemExit(__doc__)
    action, scenario, config = argv[0], argv[1], Path(argv[2])
    try:
        if action == "create":
            create(scenario, json.load(sys.stdin), config)
        else:
            destroy(scenario, config)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"{scenario}: {' '.join(err.cmd[:3])} failed: {(err.stderr or '').strip()}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
