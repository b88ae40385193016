# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why did certbot fail? Classify the last run in certbot's debug log into a cause an operator can act on.

Certbot writes one debug log per run (``letsencrypt.log``, older runs rotated to ``letsencrypt.log.1`` ...; a log
can also hold several runs). The problems the CA reported appear in the summary block certbot prints
(``Domain:``/``Type:``/``Detail:``) and, for errors outside a challenge (rate limits, accounts), as
``urn:ietf:params:acme:error:<type> :: ... :: <detail>``. Let's Encrypt (Boulder) and pebble word the same
failure differently; the patterns below accept both, and the tests run against logs of real failures.
"""
from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.runbooks.incident.plugins.module_utils import _fileio

RUN_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+:DEBUG:certbot\._internal\.main:certbot version: ", re.M)
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
SUMMARY_PROBLEM = re.compile(r"^\s*Domain: (?P<domain>\S+)\n\s*Type:\s+(?P<type>\S+)\n\s*Detail: (?P<detail>.*)$", re.M)
ACME_ERROR_LINE = re.compile(r"urn:(?:ietf:params:)?acme:error:(?P<type>\w+) :: (?P<detail>.*)$", re.M)
CERTBOT_ERROR = re.compile(r"^certbot\.errors\.\w+: (?P<detail>.+)$", re.M)
# Certbot's own words (requests, glibc) when it cannot reach the ACME server: the line to report, and the cause.
ACME_UNREACHABLE_WORDS = (r"Max retries exceeded with url|Failed to establish a new connection|Name or service not known|"
                          r"Temporary failure in name resolution")
ACME_UNREACHABLE = re.compile(r"^.*(?:%s).*$" % ACME_UNREACHABLE_WORDS, re.M)
SUCCESS = re.compile(r"Successfully received certificate|Congratulations, all renewals succeeded|"
                     r"Certificate not yet due for renewal|Successfully deployed certificate|"
                     r"Congratulations! Your certificate", re.M)
# The address the CA connected to: pebble ("dial tcp 1.2.3.4:80: ...") and Boulder ("1.2.3.4: Timeout ...").
DIALED_ADDRESS = re.compile(r"dial tcp \[?(?P<pebble>[0-9a-fA-F.:]+?)\]?:\d+:|: (?P<boulder>[0-9a-fA-F.:]+): "
                            r"(?:Timeout|Connection refused|Fetching|Invalid response)")

# (cause, pattern on "<type> <detail>"), first match wins. The order matters: certbot's own failure to reach the
# ACME server also says "Connection refused" (not about port 80), a rate-limit or CAA error also carries other words,
# and an address that is not this host's explains a timeout better than a firewall does.
RULES = (
    ("acme_unreachable", re.compile(ACME_UNREACHABLE_WORDS, re.I)),
    ("rate_limited", re.compile(r"rateLimited|too many (?:certificates|failed authorizations|new orders|requests)", re.I)),
    ("caa_forbids", re.compile(r"^caa\b|CAA record for .* prevents issuance", re.I)),
    ("dns_unresolved", re.compile(r"^dns\b|DNS problem|could not resolve|no valid (?:A|AAAA|IP) records|NXDOMAIN|SERVFAIL", re.I)),
    ("port_unreachable", re.compile(r"timeout|timed out|deadline exceeded", re.I)),
    ("connection_refused", re.compile(r"connection refused", re.I)),
    ("challenge_not_found", re.compile(r"\b404\b", re.I)),
    ("account_problem", re.compile(r"accountDoesNotExist|deactivated|Unable to find account|No such account|"
                                   r"JWS verification|malformed.*account|externalAccountRequired", re.I)),
    ("unauthorized", re.compile(r"^unauthorized\b|key authorization|did not match|incorrect", re.I)),
)

HINTS = {
    "none": "The last certbot run did not fail.",
    "rate_limited": "Let's Encrypt refused more certificates for now. Do not retry in a loop: wait until the time in "
                    "the error (\"retry after\"), check for duplicate lineages with `certbot certificates`, and test "
                    "with --staging. See https://letsencrypt.org/docs/rate-limits/.",
    "caa_forbids": "A CAA record on the name or a parent domain does not allow Let's Encrypt. Add "
                   "`0 issue \"letsencrypt.org\"` to the CAA set (dig CAA <name>), or remove the CAA records.",
    "dns_unresolved": "The CA could not resolve the name (no A/AAAA record, NXDOMAIN or a failing DNS server). Create "
                      "the record at the DNS provider and check it with `dig +short A <name> @1.1.1.1`.",
    "dns_points_elsewhere": "The name resolves to an address that is not this host, so the CA asked another server "
                            "for the challenge. Fix the A/AAAA record (a stale IP after a move, or an AAAA record to "
                            "an old host), then renew.",
    "port_unreachable": "The CA's connection to port 80 timed out: a firewall (host iptables/ufw, cloud security "
                        "group) drops it. Allow inbound TCP 80 from anywhere; http-01 needs it even when the site "
                        "redirects to HTTPS.",
    "connection_refused": "Nothing listens on port 80 at the address the CA used: nginx is down or not listening "
                          "on :80 (or the port is not published by the container). Start nginx with its port-80 "
                          "server, then renew.",
    "challenge_not_found": "Port 80 answered but the challenge file was not there: the nginx location "
                           "`/.well-known/acme-challenge/` does not serve the directory certbot writes to (--webroot-"
                           "path, /var/www/certbot). Point the location's root at the webroot (and mount it into the "
                           "nginx container).",
    "unauthorized": "The CA fetched a challenge file with the wrong content: another server answers for the name "
                    "(a CDN, a proxy, an old host), or a redirect leads elsewhere. Make this host's nginx answer "
                    "/.well-known/acme-challenge/ itself.",
    "account_problem": "The ACME account certbot used is unknown to the CA, deactivated, or its key is wrong. "
                       "Register a new account (`certbot register`), or restore /etc/letsencrypt/accounts from the "
                       "backup.",
    "acme_unreachable": "Certbot could not reach the ACME server: outbound HTTPS or DNS from this host is broken. "
                        "Check `curl -sI https://acme-v02.api.letsencrypt.org/directory` and the resolver.",
    "unknown": "Certbot failed in a way this classifier does not know; read the evidence lines.",
}


def log_files(path):
    """The log and its rotated predecessors, newest first (letsencrypt.log, letsencrypt.log.1, ...)."""
    directory, name = os.path.split(path)
    rotated = []
    if os.path.isdir(directory or "."):
        for entry in os.listdir(directory or "."):
            suffix = entry[len(name) + 1:] if entry.startswith(name + ".") else ""
            if suffix.isdigit():
                rotated.append((int(suffix), os.path.join(directory, entry)))
    return ([path] if os.path.exists(path) else []) + [rotated_path for dummy, rotated_path in sorted(rotated)]


def split_runs(text):
    """The runs in one log, oldest first. Text before the first run header (a truncated log) is one run."""
    starts = [m.start() for m in RUN_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if text[a:b].strip()]


def _problems(run):
    """(domain, acme type, detail, evidence lines) of each problem reported in one run."""
    found = [(m["domain"], m["type"], m["detail"].strip(), [line.strip() for line in m.group(0).strip().splitlines()]) for m in SUMMARY_PROBLEM.finditer(run)]
    if found:
        return found
    seen = set()
    for match in ACME_ERROR_LINE.finditer(run):
        key = (match["type"], match["detail"])
        if key not in seen:
            seen.add(key)
            found.append((None, match["type"], match["detail"].strip(), [match.group(0).strip()]))
    if not found:
        for pattern in (CERTBOT_ERROR, ACME_UNREACHABLE):
            lines = [match.group(0).strip() for match in pattern.finditer(run)]
            if lines:  # the last one is the error certbot gave up on
                found.append((None, "", lines[-1], lines[-1:]))
                break
    return found


def _dialed(detail):
    match = DIALED_ADDRESS.search(detail)
    if not match:
        return None
    try:
        return str(ipaddress.ip_address(match["pebble"] or match["boulder"]))
    except ValueError:
        return None


def classify_problem(acme_type, detail, host_addresses=None):
    """The cause of one reported problem. `host_addresses`: this host's public addresses (normalized), when known."""
    address = _dialed(detail)
    if host_addresses and address and address not in host_addresses:
        return "dns_points_elsewhere", address
    text = f"{acme_type} {detail}".strip()
    for cause, pattern in RULES:
        if pattern.search(text) or pattern.search(detail):
            return cause, address
    return "unknown", address


def diagnose(path, host_addresses=None):
    """Classify the last certbot run found in `path` (and its rotations). Returns a dict (see the module)."""
    for log in log_files(path):
        # Only a regular file is read: a FIFO planted at the log's name would hold the diagnosis for ever.
        with os.fdopen(_fileio.open_file(log), encoding="utf-8", errors="replace") as handle:
            runs = split_runs(handle.read())
        if not runs:
            continue
        run = runs[-1]
        started = TIMESTAMP.match(run)
        result = {"log": log, "run_started": started.group(1) if started else None, "failures": []}
        for domain, acme_type, detail, evidence in _problems(run):
            cause, address = classify_problem(acme_type, detail, host_addresses)
            result["failures"].append({"domain": domain, "type": acme_type, "detail": detail, "cause": cause,
                                       "address": address, "evidence": evidence})
        if result["failures"]:
            first = result["failures"][0]
            result.update(cause=first["cause"], evidence=[line for f in result["failures"] for line in f["evidence"]])
        elif SUCCESS.search(run) or "Traceback" not in run:
            result.update(cause="none", evidence=[m.group(0) for m in SUCCESS.finditer(run)][-1:])
        else:
            result.update(cause="unknown", evidence=run.strip().splitlines()[-5:])
        result["hint"] = HINTS[result["cause"]]
        return result
    return {"log": None, "run_started": None, "failures": [], "cause": "none", "evidence": [],
            "hint": "No certbot log found: certbot has not run on this host (or logs elsewhere)."}
