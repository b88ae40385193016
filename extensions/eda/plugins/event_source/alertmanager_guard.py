# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""runbooks.incident.alertmanager_guard: Alertmanager's webhook, one event per alert, each judged by guardrails.

Alertmanager POSTs groups of alerts (webhook payload version 4). Each alert becomes an event naming the host it is
about, the incident it belongs to (so that reruns join one incident timeline) and what the guardrails decided:

- ``run``: act on it;
- ``repeat``: this alert (its fingerprint) was acted on less than ``window`` seconds ago - one run per alert per window;
- ``capped``: its alert name was already acted on for ``max_hosts_per_alert`` hosts in the window - the blast radius;
- ``tripped``: ``max_runs_per_hour`` runs were started in the last hour, across every alert - the circuit breaker;
- ``resolved``: the alert is resolved; nothing to run;
- ``no_host``: no label names one host (a pattern such as ``all`` or ``web*`` is not one): nothing to run.

The first ``capped`` of an alert name in a window and the first ``tripped`` of an hour carry ``guard.notify: true``,
for a rule that pages a human instead. The counts live in this process: a restart of the rulebook starts them anew.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import os
import re
import ssl
import time
from typing import Any

DOCUMENTATION = r"""
---
short_description: Receive Alertmanager's webhook, one event per alert, with guardrails
description:
  - An ansible-rulebook event source for Alertmanager's webhook receiver (payload version 4). Each alert of a
    notification becomes an event with C(alertname), C(status), C(host), C(incident_id), C(labels),
    C(annotations), C(fingerprint) and C(guard) (C(decision) run, repeat, capped, tripped, resolved or no_host; C(reason);
    C(notify) on the first capped or tripped), and C(meta.hosts) set to the host.
options:
  host:
    description: The address to listen on.
    type: str
    default: "0.0.0.0"
  port:
    description: The TCP port to listen on.
    type: int
    default: 5000
  token:
    description:
      - The bearer token Alertmanager sends (its receiver's C(http_config.authorization.credentials)); also read from
        the environment variable C(RUNBOOKS_EDA_TOKEN). Without one, any client is accepted.
    type: str
  certfile:
    description: The certificate (PEM, with its chain) to serve HTTPS with; without it, plain HTTP (behind a TLS proxy).
    type: str
  keyfile:
    description: The private key of O(certfile).
    type: str
  window:
    description: Seconds during which an alert is acted on once, and the blast radius is counted.
    type: int
    default: 3600
  max_hosts_per_alert:
    description: Hosts acted on per alert name per window; the next ones are capped.
    type: int
    default: 3
  max_runs_per_hour:
    description: Runs started per hour across every alert; beyond, the circuit breaker trips.
    type: int
    default: 10
  host_labels:
    description: The alert labels naming the host, first found wins (C(instance) loses its C(:port)).
    type: list
    elements: str
    default: [host, nodename, instance]
  incident_from:
    description: The incident of an alert - its C(fingerprint) (one per alert), or its notification's C(group_key).
    type: str
    choices: [fingerprint, group_key]
    default: fingerprint
  incident_prefix:
    description: The incident id is C(<prefix>-<16 hex characters>).
    type: str
    default: AM
"""

EXAMPLES = r"""
- name: Alerts start the safe runbooks
  hosts: all
  sources:
    - runbooks.incident.alertmanager_guard:
        port: 5000
        max_hosts_per_alert: 3
        max_runs_per_hour: 10
  rules:
    - name: Renew an expiring certificate
      condition: event.alertname == "CertificateExpiring" and event.guard.decision == "run"
      action:
        debug:
"""

HOUR = 3600


class Guard:
    """The guardrails' state and decisions. `clock` returns seconds (monotonic)."""

    def __init__(self, window=3600, max_hosts_per_alert=3, max_runs_per_hour=10, clock=time.monotonic):
        if min(window, max_hosts_per_alert, max_runs_per_hour) < 1:
            raise ValueError("window, max_hosts_per_alert and max_runs_per_hour must be at least 1")
        self.window, self.max_hosts, self.max_runs, self.clock = window, max_hosts_per_alert, max_runs_per_hour, clock
        self.acted = {}  # fingerprint -> when it was last acted on
        self.hosts = collections.defaultdict(dict)  # alertname -> {host: when}
        self.runs = collections.deque()  # when each run started, the last hour's
        self.capped_notified = {}  # alertname -> when
        self.tripped_notified = None

    def _forget(self, now):
        self.acted = {key: when for key, when in self.acted.items() if now - when < self.window}
        for name in list(self.hosts):
            self.hosts[name] = {host: when for host, when in self.hosts[name].items() if now - when < self.window}
            if not self.hosts[name]:
                del self.hosts[name]
        while self.runs and now - self.runs[0] >= HOUR:
            self.runs.popleft()

    def judge(self, alertname, host, fingerprint, firing=True):
        """{decision, reason, notify} for one alert, and the counts updated when it is to run."""
        now = self.clock()
        self._forget(now)
        if not firing:
            return {"decision": "resolved", "reason": "the alert is resolved", "notify": False}
        if fingerprint in self.acted:
            return {"decision": "repeat", "notify": False,
                    "reason": "acted on %ds ago (once per %ds)" % (now - self.acted[fingerprint], self.window)}
        hosts = self.hosts.get(alertname, {})
        if host not in hosts and len(hosts) >= self.max_hosts:
            notify = now - self.capped_notified.get(alertname, -self.window) >= self.window
            if notify:
                self.capped_notified[alertname] = now
            return {"decision": "capped", "notify": notify,
                    "reason": "%s was acted on for %d hosts in %ds (%s): at most %d" % (
                        alertname, len(hosts), self.window, ", ".join(sorted(hosts)), self.max_hosts)}
        if len(self.runs) >= self.max_runs:
            notify = self.tripped_notified is None or now - self.tripped_notified >= HOUR
            if notify:
                self.tripped_notified = now
            return {"decision": "tripped", "notify": notify,
                    "reason": "%d runs started in the last hour, across every alert: at most %d" % (len(self.runs), self.max_runs)}
        self.acted[fingerprint] = now
        self.hosts[alertname][host] = now
        self.runs.append(now)
        return {"decision": "run", "reason": "within every guardrail", "notify": False}


# One inventory host, never a pattern: an alert's label must not widen a run's limit ("all", "web*", "a,b", "!x").
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NOT_A_HOST = {"all", "ungrouped", "localhost"}


def host_of(labels, host_labels):
    """The host an alert is about: the first of `host_labels` set; `instance` (host:port) loses its port."""
    for name in host_labels:
        value = str(labels.get(name) or "")
        if name == "instance" and value.count(":") == 1:
            value = re.sub(r":\d+$", "", value)
        if value:
            return value
    return ""


def acceptable_host(host):
    """A name or an IPv4 address (an IPv6 address's colons read as pattern separators in a limit)."""
    return bool(HOST_NAME.match(host)) and host.lower() not in NOT_A_HOST


def incident_of(prefix, key):
    return "%s-%s" % (prefix, hashlib.sha256(key.encode()).hexdigest()[:16])


def events_of(payload, guard, host_labels=("host", "nodename", "instance"), incident_from="fingerprint", prefix="AM"):
    """The events of one Alertmanager notification (a dict), judged in the order of its alerts."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager notification: no list of alerts")
    events = []
    for alert in payload["alerts"]:
        labels = alert.get("labels") or {}
        alertname = labels.get("alertname", "")
        host = host_of(labels, host_labels)
        fingerprint = alert.get("fingerprint") or hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
        key = payload.get("groupKey", "") if incident_from == "group_key" else fingerprint
        one_host = acceptable_host(host)
        if one_host:
            verdict = guard.judge(alertname, host, fingerprint, firing=alert.get("status", payload.get("status")) == "firing")
        else:
            verdict = {"decision": "no_host", "notify": False,
                       "reason": "no label of %s names one host (%r)" % ("/".join(host_labels), host)}
        events.append({
            "alertname": alertname, "status": alert.get("status", payload.get("status", "")), "host": host,
            "incident_id": incident_of(prefix, key), "labels": labels, "annotations": alert.get("annotations") or {},
            "fingerprint": fingerprint, "starts_at": alert.get("startsAt", ""), "guard": verdict,
            "meta": {"hosts": host} if one_host else {},
        })
    return events


def tls_context(certfile, keyfile):
    """The server's TLS context, or None for plain HTTP; a key without a certificate (or the reverse) is refused."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise ValueError("alertmanager_guard: certfile and keyfile go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


async def main(queue: asyncio.Queue, args: dict[str, Any]) -> None:
    from aiohttp import web  # pylint: disable=import-outside-toplevel  # ansible-rulebook's own dependency

    context = tls_context(args.get("certfile"), args.get("keyfile"))
    guard = Guard(int(args.get("window", 3600)), int(args.get("max_hosts_per_alert", 3)), int(args.get("max_runs_per_hour", 10)))
    token = args.get("token") or os.environ.get("RUNBOOKS_EDA_TOKEN", "")
    host_labels = args.get("host_labels") or ["host", "nodename", "instance"]
    incident_from = args.get("incident_from", "fingerprint")
    prefix = args.get("incident_prefix", "AM")
    lock = asyncio.Lock()  # one notification at a time: the guard's counts are read and updated together

    async def receive(request):
        if token and not hmac.compare_digest(request.headers.get("Authorization", ""), "Bearer " + token):
            raise web.HTTPUnauthorized(text="a bearer token is required")
        try:
            payload = await request.json()
            async with lock:
                events = events_of(payload, guard, host_labels, incident_from, prefix)
                for event in events:
                    await queue.put(event)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"events": len(events)})

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, args.get("host", "0.0.0.0"), int(args.get("port", 5000)),
                       ssl_context=context)
    await site.start()
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()
