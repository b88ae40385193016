# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cert_inspect: every verdict the certificates role acts on, on certificates made here (a root, an intermediate,
leaves expiring when the case needs), and once end to end: a real nginx serves them over TLS, and the results of
community.crypto.get_certificate, as the role registers them, are what the module judges."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from acmelab import free_port  # pylint: disable=import-error
from ansible_collections.runbooks.incident.plugins.module_utils import _certificate
from certlab import Authority, now  # pylint: disable=import-error
from conftest import require  # pylint: disable=import-error

NAME = "wa.example.com"
THRESHOLDS = dict(min_days=30, warn_days=30, page_days=7)


@pytest.fixture(scope="module", name="ca")
def ca_fixture():
    return Authority()


@pytest.fixture(scope="module", name="intermediate")
def intermediate_fixture(ca):
    return ca.intermediate()


def got(leaf, *chain, msg=None):
    """What get_certificate returns for a name (cert, unverified_chain), or only `msg` when leaf is None."""
    if leaf is None:
        return {"msg": msg}
    return {"cert": leaf.pem, "unverified_chain": [leaf.pem] + [c.pem for c in chain]}


def judge(served, trusted=None, lineage="", names=(NAME,), **thresholds):
    result = _certificate.judge(list(names), served, trusted, lineage, NAME, **dict(THRESHOLDS, **thresholds))
    return result, {entry["name"]: entry for entry in result["report"]}


@pytest.mark.parametrize("days_left, problems, level", [
    (120.5, [], "ok"),
    (31.5, [], "ok"),
    (30.5, [], "warn"),                                      # 30 days left: warned of, not yet due for renewal
    (29.5, ["valid for less than 30 days"], "warn"),
    (8.5, ["valid for less than 30 days"], "warn"),         # 8 days left: still a warning, one day above the page
    (7.5, ["valid for less than 30 days"], "page"),         # 7 days left: the page threshold
    (2.5, ["valid for less than 30 days"], "page"),
    (-3.5, ["expired"], "page"),
])
def test_days_left_decide_renewal_warning_and_page(intermediate, days_left, problems, level):
    leaf = intermediate.issue(NAME, days_left=days_left)
    result, report = judge({NAME: got(leaf, intermediate)}, lineage=leaf.pem)
    entry = report[NAME]
    assert entry["problems"] == problems and entry["level"] == level and not entry["page_worthy"]
    assert entry["days_left"] == int(days_left // 1)
    assert entry["not_after"] == leaf.cert.not_valid_after_utc.strftime("%Y%m%d%H%M%SZ")
    assert entry["public_key"] == leaf.public_key and entry["serial"] == leaf.serial
    assert entry["issuer"] == "runbooks.incident test intermediate"
    assert result["ok"] is (not problems)
    assert [e["name"] for e in result["page"] + result["warn"]] == ([] if level == "ok" else [NAME])
    assert result[level] == [entry] if level != "ok" else True


def test_the_thresholds_are_options(intermediate):
    leaf = intermediate.issue(NAME, days_left=20.5)
    dummy, report = judge({NAME: got(leaf, intermediate)}, lineage=leaf.pem, min_days=14, warn_days=14, page_days=21)
    assert report[NAME]["problems"] == [] and report[NAME]["level"] == "page"
    dummy, report = judge({NAME: got(leaf, intermediate)}, lineage=leaf.pem, min_days=10, warn_days=25, page_days=3)
    assert report[NAME]["problems"] == [] and report[NAME]["level"] == "warn"


def test_a_certificate_not_valid_yet(intermediate):
    leaf = intermediate.issue(NAME, days_left=200, valid_for=100)  # from 100 days on
    dummy, report = judge({NAME: got(leaf, intermediate)}, lineage=leaf.pem)
    assert report[NAME]["problems"] == ["not valid yet (from %s)" % leaf.cert.not_valid_before_utc.strftime("%Y%m%d%H%M%SZ")]


def test_served_but_not_the_lineage_certificate(intermediate):
    """nginx was not reloaded after a renewal, or its files are not the lineage's: renew, but nobody is paged."""
    served, lineage = intermediate.issue(NAME), intermediate.issue(NAME)
    result, report = judge({NAME: got(served, intermediate)}, lineage=lineage.pem)
    assert report[NAME]["problems"] == [_certificate.LINEAGE_MISMATCH] and report[NAME]["level"] == "ok"
    assert result["problems"] == [report[NAME]] and result["ok"] is False


def test_no_lineage_or_a_lineage_file_that_is_no_certificate(intermediate):
    leaf = intermediate.issue(NAME)
    dummy, report = judge({NAME: got(leaf, intermediate)})
    assert report[NAME]["problems"] == ["no certbot lineage %s" % NAME]
    dummy, report = judge({NAME: got(leaf, intermediate)}, lineage="-----BEGIN CERTIFICATE-----\ngarbage\n")
    assert len(report[NAME]["problems"]) == 1 and report[NAME]["problems"][0].startswith(
        "the certbot lineage %s holds no certificate: not a PEM certificate" % NAME)


@pytest.mark.parametrize("sans, name, covered", [
    ([NAME], NAME, True),
    (["WA.Example.COM"], NAME, True),
    (["other.example.com"], NAME, False),
    (["*.example.com"], NAME, True),
    (["*.example.com"], "example.com", False),
    (["*.example.com"], "a.wa.example.com", False),
    ([], NAME, False),                                       # a common name alone covers nothing
])
def test_a_name_the_certificate_is_not_for_is_paged(intermediate, sans, name, covered):
    leaf = intermediate.issue(*sans, common_name=NAME)
    dummy, report = judge({name: got(leaf, intermediate)}, lineage=leaf.pem, names=[name])
    assert ("name not in the certificate" not in report[name]["problems"]) is covered
    assert report[name]["page_worthy"] is not covered and (report[name]["level"] == "page") is not covered


def test_chain_problems_are_paged(ca, intermediate):
    leaf = intermediate.issue(NAME)
    other = ca.intermediate("another intermediate")
    cases = {
        "incomplete": (got(leaf), None, "chain incomplete: nginx serves 1 certificate, no intermediate"),
        "wrong intermediate": (got(leaf, other), None, "chain out of order or with a wrong intermediate: certificate 1 "
                                                       "is issued by CN=runbooks.incident test intermediate, certificate 2 "
                                                       "is CN=another intermediate"),
        "out of order": (dict(got(leaf), unverified_chain=[leaf.pem, ca.pem, intermediate.pem]), None,
                         "chain out of order or with a wrong intermediate"),
        "not trusted": (got(leaf, intermediate), {"msg": "certificate verify failed: unable to get local issuer"},
                        "chain not trusted: certificate verify failed: unable to get local issuer"),
    }
    for label, (served, trust, words) in cases.items():
        dummy, report = judge({NAME: served}, trusted=None if trust is None else {NAME: trust}, lineage=leaf.pem)
        entry = report[NAME]
        assert len(entry["problems"]) == 1 and entry["problems"][0].startswith(words), (label, entry)
        assert entry["page_worthy"] and entry["level"] == "page" and entry["days_left"] == 60, label
    trusted = {NAME: {"cert": leaf.pem}}
    dummy, report = judge({NAME: got(leaf, intermediate)}, trusted=trusted, lineage=leaf.pem)
    assert report[NAME]["problems"] == [] and report[NAME]["level"] == "ok"


def test_nothing_served_is_paged(intermediate):
    leaf = intermediate.issue(NAME)
    result, report = judge({NAME: got(None, msg="Failed to get cert from 203.0.113.10:443: timed out"),
                            "b.example.com": {}}, lineage=leaf.pem, names=[NAME, "b.example.com", "c.example.com"])
    assert report[NAME]["problems"] == ["no certificate served: Failed to get cert from 203.0.113.10:443: timed out"]
    assert report["b.example.com"]["problems"] == ["no certificate served: unreachable"]
    assert report["c.example.com"]["problems"] == ["no certificate served: not fetched"]
    for entry in report.values():
        assert entry["days_left"] == -1 and entry["page_worthy"] and entry["level"] == "page" and entry["public_key"] == ""
    assert [e["name"] for e in result["page"]] == [NAME, "b.example.com", "c.example.com"]


def test_several_names_in_one_report(intermediate):
    good, soon = intermediate.issue(NAME), intermediate.issue("api.example.com", days_left=12.5)
    result, report = judge({NAME: got(good, intermediate), "api.example.com": got(soon, intermediate)}, lineage=good.pem,
                           names=[NAME, "api.example.com"])
    assert [e["name"] for e in result["report"]] == [NAME, "api.example.com"]
    assert report[NAME]["level"] == "ok" and report["api.example.com"]["level"] == "warn"
    assert report["api.example.com"]["problems"] == ["valid for less than 30 days", _certificate.LINEAGE_MISMATCH]
    assert result["warn"] == [report["api.example.com"]] and result["page"] == []


def test_the_module_reads_get_certificate_results(run_module, intermediate):
    leaf = intermediate.issue(NAME, days_left=5.5)
    results = [dict(got(leaf, intermediate), item=NAME, changed=False, ansible_loop_var="item", invocation={"module_args": {}}),
               {"item": "b.example.com", "msg": "connection refused", "changed": False, "failed": False}]
    result = run_module("cert_inspect", {"names": [NAME, "b.example.com"], "served": results, "lineage_cert": leaf.pem,
                                         "cert_name": NAME, "trusted": [{"item": NAME, "skipped": True}]})
    assert not result["changed"] and not result["ok"]
    assert [e["level"] for e in result["report"]] == ["page", "page"]
    assert result["report"][0]["problems"] == ["valid for less than 30 days"] and result["report"][0]["days_left"] == 5
    assert result["report"][1]["problems"] == ["no certificate served: connection refused"]
    assert run_module("cert_inspect", {"names": [NAME], "served": results}, check_mode=True)["report"][0]["days_left"] == 5


@pytest.mark.parametrize("params, words", [
    ({"served": [{"cert": "x"}]}, "served[0] has no item"),
    ({"served": [{"item": NAME, "cert": ["x"]}]}, "served[0].cert is not a str"),
    ({"trusted": [{"item": NAME, "unverified_chain": [1]}]}, "trusted[0].unverified_chain holds something that is not PEM"),
    ({"served": [{"item": NAME, "cert": "not a certificate"}]}, "what was served for %s: not a PEM certificate" % NAME),
    ({"names": []}, "names must list"),
    ({"page_days": -1}, "page_days must be 0 to 3650"),
])
def test_input_it_cannot_judge_is_refused(run_module, params, words):
    result = run_module("cert_inspect", dict({"names": [NAME]}, **params))
    assert result.get("failed") and words in result["msg"], result


# End to end: nginx serves the certificates over TLS on loopback, get_certificate fetches them as the role does.

def nginx_serving(base, port, sites):
    """nginx on 127.0.0.1:port serving, per server name, a chain (PEM text) and its key; the first is the default."""
    servers = []
    for index, (name, chain, key) in enumerate(sites):
        (base / f"{index}.pem").write_text(chain)
        (base / f"{index}.key").write_text(key)
        servers.append(f"server {{ listen 127.0.0.1:{port} ssl{' default_server' if index == 0 else ''}; server_name {name}; "
                       f"ssl_certificate {base}/{index}.pem; ssl_certificate_key {base}/{index}.key; return 204; }}")
    (base / "nginx.conf").write_text(f"daemon off; user root; pid {base}/nginx.pid; error_log {base}/error.log;\n"
                                     f"events {{}}\nhttp {{ access_log off;\n{chr(10).join(servers)}\n}}\n")
    proc = subprocess.Popen(["nginx", "-p", str(base), "-c", str(base / "nginx.conf")], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert proc.poll() is None and time.monotonic() < deadline, (base / "error.log").read_text()
        time.sleep(0.05)


def test_what_nginx_serves_judged_as_the_role_does(ansible_play, tmp_path, ca, intermediate):
    require(shutil.which("nginx"), "nginx")
    good, soon, alone = intermediate.issue(NAME), intermediate.issue("soon.example.com", days_left=5.5), intermediate.issue("alone.example.com")
    (tmp_path / "root.pem").write_text(ca.pem)
    (tmp_path / "other-root.pem").write_text(Authority("another root").pem)
    port, names = free_port(), [NAME, "soon.example.com", "alone.example.com", "unknown.example.com"]
    proc = nginx_serving(tmp_path, port, [(NAME, good.pem + intermediate.pem, good.key_pem()),
                                          ("soon.example.com", soon.pem + intermediate.pem, soon.key_pem()),
                                          ("alone.example.com", alone.pem, alone.key_pem())])
    try:
        fetch = {"host": "127.0.0.1", "port": port, "server_name": "{{ item }}", "timeout": 5}
        judge_args = {"names": names, "served": "{{ served.results }}", "lineage_cert": good.pem, "cert_name": NAME,
                      "min_days": 30, "warn_days": 30, "page_days": 7}
        play = ansible_play([
            {"name": "served", "community.crypto.get_certificate": dict(fetch, get_certificate_chain=True), "loop": names,
             "register": "served", "failed_when": False},
            {"name": "trusted", "community.crypto.get_certificate": dict(fetch, ca_cert=str(tmp_path / "root.pem")),
             "loop": names, "register": "trusted", "failed_when": False},
            {"name": "untrusted", "community.crypto.get_certificate": dict(fetch, ca_cert=str(tmp_path / "other-root.pem")),
             "loop": [NAME], "register": "untrusted", "failed_when": False},
            {"name": "Judge", "runbooks.incident.cert_inspect": dict(judge_args, trusted="{{ trusted.results }}")},
            {"name": "Judge again", "runbooks.incident.cert_inspect": dict(judge_args, trusted="{{ untrusted.results }}")},
        ])
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert play.rc == 0, play.stdout + play.stderr
    report = {entry["name"]: entry for entry in play["Judge"]["report"]}
    assert report[NAME]["problems"] == [] and report[NAME]["level"] == "ok" and report[NAME]["public_key"] == good.public_key
    assert report["soon.example.com"]["problems"] == ["valid for less than 30 days", _certificate.LINEAGE_MISMATCH]
    assert report["soon.example.com"]["level"] == "page" and report["soon.example.com"]["days_left"] == 5
    assert report["alone.example.com"]["problems"] == [_certificate.LINEAGE_MISMATCH,
                                                       "chain incomplete: nginx serves 1 certificate, no intermediate"]
    # nginx answers a name it has no server for with its default server's certificate.
    assert report["unknown.example.com"]["problems"] == ["name not in the certificate"]
    assert [e["name"] for e in play["Judge"]["page"]] == ["soon.example.com", "alone.example.com", "unknown.example.com"]
    problems = {entry["name"]: entry["problems"] for entry in play["Judge again"]["report"]}
    assert problems[NAME][0].startswith("chain not trusted: ") and "verify failed" in problems[NAME][0], problems
    assert problems["soon.example.com"] == report["soon.example.com"]["problems"]  # not verified: no result for it
    assert now() < good.cert.not_valid_after_utc
