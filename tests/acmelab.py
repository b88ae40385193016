# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Let's Encrypt on loopback: pebble (the ACME test CA) with its DNS server pebble-challtestsrv, and a real nginx
serving the webroot for http-01 challenges. certbot 2.1 issues, renews and revokes against it, with directories of
its own per case. Shared by tests/unit/test_certbot_diagnose.py and tests/unit/test_cert_rekey.py."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require  # pylint: disable=import-error

FIREWALLED = "127.0.0.77"  # a loopback address of "this host" whose port 80 a DROP rule blackholes
ELSEWHERE = "127.0.0.2"    # an address nothing listens on: "another server"
NEEDED = ("pebble", "pebble-challtestsrv", "certbot", "nginx", "openssl")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class AcmeLab:
    """pebble + challtestsrv + nginx on loopback; `certbot()` runs a real issuance and returns its log."""

    def __init__(self, base: Path):
        self.base, self.webroot = base, base / "webroot"
        self.webroot.mkdir()
        self.ports = {name: free_port() for name in ("acme", "acme_mgmt", "http", "tls", "dns", "dns_mgmt")}
        self.procs: dict[str, subprocess.Popen] = {}
        self._tls_for_pebble()
        (base / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.ports['acme']}", "managementListenAddress": f"127.0.0.1:{self.ports['acme_mgmt']}",
            "certificate": "cert.pem", "privateKey": "key.pem", "httpPort": self.ports["http"], "tlsPort": self.ports["tls"],
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        http = self.ports["http"]
        (base / "nginx.conf").write_text(f"""
            daemon off; user root; pid {base}/nginx.pid; error_log {base}/nginx-error.log;
            events {{}}
            http {{
              access_log off;
              server {{ listen 127.0.0.1:{http} default_server; listen {FIREWALLED}:{http} default_server;
                       location /.well-known/acme-challenge/ {{ root {self.webroot}; }} }}
              server {{ listen 127.0.0.1:{http}; server_name other-server.example.com;
                       location /.well-known/acme-challenge/ {{ return 200 "someone else's site"; }} }}
            }}""")
        self._start("dns", ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.ports['dns']}", "-http01", "", "-https01", "",
                            "-tlsalpn01", "", "-management", f"127.0.0.1:{self.ports['dns_mgmt']}", "-defaultIPv6", ""],
                    self.ports["dns_mgmt"])
        self._start("pebble", ["pebble", "-config", "pebble.json", "-dnsserver", f"127.0.0.1:{self.ports['dns']}"],
                    self.ports["acme"], env=dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0"))
        self.start_nginx()

    def _tls_for_pebble(self):
        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.base)
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lab CA", "-keyout", "ca.key",
                "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "req.csr")
        (self.base / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", "san.ext", "-out", "cert.pem")

    def _start(self, name, argv, port, env=None):
        log = open(self.base / f"{name}.out", "wb")  # pylint: disable=consider-using-with
        self.procs[name] = subprocess.Popen(argv, cwd=self.base, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        _wait_for(port)

    def start_nginx(self):
        self._start("nginx", ["nginx", "-p", str(self.base), "-c", str(self.base / "nginx.conf")], self.ports["http"])

    def stop_nginx(self):
        self.procs["nginx"].terminate()
        self.procs["nginx"].wait(10)

    def dns(self, path, **body):
        """Change what the CA's DNS answers (pebble-challtestsrv's management API)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['dns_mgmt']}{path}", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5):
            pass

    def point(self, name, address):
        self.dns("/add-a", host=name + ".", addresses=[address])

    def certbot(self, name, case, webroot=None, server=None):
        """Issue a certificate for `name` with its own certbot directories; returns (rc, path of the log)."""
        run = subprocess.run(
            ["certbot", "certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
             "--server", server or self.server, "--webroot", "-w", str(webroot or self.webroot), "-d", name, *self.dirs(case)],
            env=self.env(), capture_output=True, text=True, check=False, timeout=120)
        return run.returncode, self.base / case / "logs" / "letsencrypt.log"

    @property
    def server(self):
        return f"https://127.0.0.1:{self.ports['acme']}/dir"

    def env(self):
        """certbot's environment: it trusts pebble's TLS certificate."""
        return dict(os.environ, REQUESTS_CA_BUNDLE=str(self.base / "ca.pem"))

    def dirs(self, case):
        """certbot's --config-dir, --work-dir and --logs-dir of a case."""
        home = self.base / case
        return ["--config-dir", str(home / "etc"), "--work-dir", str(home / "work"), "--logs-dir", str(home / "logs")]

    def renew(self, case, *extra):
        """certbot renew --force-renewal of the case's lineage (its webroot and server are in its renewal file)."""
        run = subprocess.run(["certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew", "--non-interactive",
                              *extra, *self.dirs(case)], env=self.env(), capture_output=True, text=True, check=False, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        return run

    def status(self, serial):
        """What pebble says of a certificate (its management API): {"Status": "Valid" | "Revoked", "Reason": n, ...}."""
        context = ssl.create_default_context(cafile=str(self.base / "ca.pem"))
        url = f"https://127.0.0.1:{self.ports['acme_mgmt']}/cert-status-by-serial/{serial}"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return json.load(response)

    def close(self):
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running():
    """An AcmeLab in a directory of its own, stopped and removed on exit; fails (never skips) without its tools."""
    missing = [tool for tool in NEEDED if not shutil.which(tool)]
    require(not missing, ", ".join(missing))
    base = Path(tempfile.mkdtemp(prefix="acme-lab-"))
    lab = AcmeLab(base)
    try:
        yield lab
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", name="lab")
def lab_fixture():
    """One AcmeLab for a test module (import this into it)."""
    with running() as lab:
        yield lab
