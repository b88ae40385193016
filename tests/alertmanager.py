# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Alertmanager's webhook notifications (payload version 4, as Alertmanager 0.27 sends them) for the EDA tests."""
from __future__ import annotations

import hashlib
import json


def alert(alertname, host, status="firing", port=9100, **labels):
    """One alert as Alertmanager sends it; its fingerprint is a hash of its labels, as Alertmanager's is."""
    labels = {"alertname": alertname, "instance": "%s:%d" % (host, port), "job": "node", "severity": "critical", **labels}
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "%s on %s" % (alertname, host)},
        "startsAt": "2026-12-07T03:02:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-07T03:30:00.000Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16],
    }


def notification(*alerts, status=None):
    """A notification of one group of alerts (grouped by alertname, as the usual route does)."""
    alertname = alerts[0]["labels"]["alertname"]
    return {
        "receiver": "eda",
        "status": status or ("firing" if any(item["status"] == "firing" for item in alerts) else "resolved"),
        "alerts": list(alerts),
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="%s"}' % alertname,
        "truncatedAlerts": 0,
    }
