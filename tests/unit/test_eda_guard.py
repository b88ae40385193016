# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guardrails of the event source runbooks.incident.alertmanager_guard, on Alertmanager's notifications, with a
clock the tests move (the rulebook test runs the source itself in ansible-rulebook)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from alertmanager import alert, notification  # pylint: disable=import-error

SOURCE = Path(__file__).resolve().parents[2] / "extensions" / "eda" / "plugins" / "event_source" / "alertmanager_guard.py"
_spec = importlib.util.spec_from_file_location("alertmanager_guard", SOURCE)
guarded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guarded)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(name="clock")
def clock_fixture():
    return Clock()


def judged(guard, *alerts, **kwargs):
    return [(event["host"], event["guard"]["decision"]) for event in guarded.events_of(notification(*alerts), guard, **kwargs)]


def test_an_alert_runs_once_per_window_then_again(clock):
    guard = guarded.Guard(window=600, clock=clock)
    assert judged(guard, alert("CertificateExpiring", "app-1")) == [("app-1", "run")]
    clock.now += 599
    assert judged(guard, alert("CertificateExpiring", "app-1")) == [("app-1", "repeat")]  # Alertmanager's repeat_interval
    clock.now += 1
    assert judged(guard, alert("CertificateExpiring", "app-1")) == [("app-1", "run")]


def test_a_resolved_alert_runs_nothing_and_does_not_count(clock):
    guard = guarded.Guard(max_runs_per_hour=1, clock=clock)
    assert judged(guard, alert("ServiceDown", "app-1", status="resolved")) == [("app-1", "resolved")]
    assert judged(guard, alert("ServiceDown", "app-1")) == [("app-1", "run")]


def test_the_blast_radius_caps_hosts_per_alert_name_and_pages_once(clock):
    guard = guarded.Guard(max_hosts_per_alert=3, max_runs_per_hour=100, clock=clock)
    events = guarded.events_of(notification(*[alert("ServiceDown", "app-%d" % n) for n in range(5)]), guard)
    assert [event["guard"]["decision"] for event in events] == ["run"] * 3 + ["capped"] * 2
    assert [event["guard"]["notify"] for event in events] == [False] * 3 + [True, False]
    assert "ServiceDown was acted on for 3 hosts" in events[3]["guard"]["reason"] and "app-0, app-1, app-2" in events[3]["guard"]["reason"]
    # A host already acted on is not capped (its repeat is a repeat); another alert name has its own count.
    assert judged(guard, alert("ServiceDown", "app-1", job="other")) == [("app-1", "run")]
    assert judged(guard, alert("DiskFilling", "app-4")) == [("app-4", "run")]


def test_the_circuit_breaker_trips_across_alerts_for_an_hour_and_pages_once(clock):
    guard = guarded.Guard(max_hosts_per_alert=100, max_runs_per_hour=4, clock=clock)
    names = ["ServiceDown", "DiskFilling", "BackupFailed", "CertificateExpiring", "ServiceDown", "DiskFilling"]
    events = [guarded.events_of(notification(alert(name, "app-%d" % n)), guard)[0] for n, name in enumerate(names)]
    assert [event["guard"]["decision"] for event in events] == ["run"] * 4 + ["tripped"] * 2
    assert [event["guard"]["notify"] for event in events] == [False] * 4 + [True, False]
    clock.now += 3599
    assert judged(guard, alert("ServiceDown", "app-9")) == [("app-9", "tripped")]
    clock.now += 1  # the first run is an hour old
    assert judged(guard, alert("ServiceDown", "app-9")) == [("app-9", "run")]


def test_a_storm_of_50_alerts_across_hosts_starts_at_most_the_caps(clock):
    guard = guarded.Guard(max_hosts_per_alert=3, max_runs_per_hour=10, clock=clock)
    names = ("ServiceDown", "DiskFilling", "BackupFailed", "AuditLogMismatch", "CertificateExpiring")
    storm = [alert(name, "app-%02d" % n) for n in range(10) for name in names]
    decisions = [event["guard"]["decision"] for item in storm for event in guarded.events_of(notification(item), guard)]
    assert len(decisions) == 50 and decisions.count("run") == 10
    assert decisions.count("capped") + decisions.count("tripped") == 40


@pytest.mark.parametrize("labels, host", [
    ({"instance": "app-1:9100"}, "app-1"),
    ({"instance": "10.0.0.7:9100"}, "10.0.0.7"),
    ({"host": "app-2", "instance": "10.0.0.7:9100"}, "app-2"),
    ({"nodename": "app_3"}, "app_3"),
])
def test_the_host_is_read_from_the_alert_s_labels(clock, labels, host):
    item = alert("ServiceDown", "x")
    item["labels"] = {"alertname": "ServiceDown", **labels}
    [event] = guarded.events_of(notification(item), guarded.Guard(clock=clock))
    assert event["host"] == host and event["guard"]["decision"] == "run" and event["meta"] == {"hosts": host}


@pytest.mark.parametrize("instance", ["all", "web*", "app-1,app-2", "!app-1", "[2001:db8::1]:9100", "", "localhost:9100", "app-1:9100 extra"])
def test_a_label_that_is_not_one_host_never_becomes_a_limit(clock, instance):
    item = alert("ServiceDown", "x")
    item["labels"] = {"alertname": "ServiceDown", "instance": instance}
    [event] = guarded.events_of(notification(item), guarded.Guard(clock=clock))
    assert event["guard"]["decision"] == "no_host" and event["meta"] == {}, event


def test_the_incident_is_the_alert_s_or_its_group_s(clock):
    one, two = alert("ServiceDown", "app-1"), alert("ServiceDown", "app-2")
    by_alert = guarded.events_of(notification(one, two), guarded.Guard(clock=clock))
    assert by_alert[0]["incident_id"] != by_alert[1]["incident_id"]
    assert all(len(event["incident_id"]) == 19 and event["incident_id"].startswith("AM-") for event in by_alert)
    again = guarded.events_of(notification(one), guarded.Guard(clock=clock))
    assert again[0]["incident_id"] == by_alert[0]["incident_id"]  # a rerun joins the same incident
    by_group = guarded.events_of(notification(one, two), guarded.Guard(clock=clock), incident_from="group_key", prefix="ALERT")
    assert by_group[0]["incident_id"] == by_group[1]["incident_id"] and by_group[0]["incident_id"].startswith("ALERT-")


@pytest.mark.parametrize("payload", [{}, {"alerts": "x"}, [], "text"])
def test_what_is_not_a_notification_is_refused(clock, payload):
    with pytest.raises(ValueError, match="not an Alertmanager notification"):
        guarded.events_of(payload, guarded.Guard(clock=clock))


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        guarded.Guard(max_runs_per_hour=0)


def test_the_webhook_serves_https_with_a_token_and_queues_an_event_per_alert(tmp_path, free_port):
    """main() itself, as ansible-rulebook runs it: HTTPS with the certificate given, the bearer token required, one
    event per alert on the queue, and what is not a notification refused without an event."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=eda", "-addext",
                    "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    port = free_port()
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))

    def post(payload, token):
        request = urllib.request.Request("https://127.0.0.1:%d/alerts" % port, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    async def scenario():
        queue = asyncio.Queue()
        args = {"host": "127.0.0.1", "port": port, "token": "s3cret", "certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "key.pem")}
        server = asyncio.create_task(guarded.main(queue, args))
        loop = asyncio.get_running_loop()
        try:
            while True:  # until it listens (or has failed)
                assert not server.done(), server.exception()
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            statuses = [await loop.run_in_executor(None, post, payload, token) for payload, token in (
                (notification(alert("ServiceDown", "app-1"), alert("ServiceDown", "app-2")), "s3cret"),
                (notification(alert("ServiceDown", "app-3")), "wrong"),
                ({"alerts": "all of them"}, "s3cret"))]
            return statuses, [queue.get_nowait() for dummy in range(queue.qsize())]
        finally:
            server.cancel()

    statuses, events = asyncio.run(scenario())
    assert statuses == [200, 401, 400]
    assert [(event["host"], event["guard"]["decision"]) for event in events] == [("app-1", "run"), ("app-2", "run")]


def test_a_certificate_without_its_key_is_refused():
    with pytest.raises(ValueError, match="certfile and keyfile go together"):
        guarded.tls_context("/etc/ssl/cert.pem", None)
