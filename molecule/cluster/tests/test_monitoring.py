"""Prometheus and Alertmanager on the ops host, as the monitoring and exporters roles leave them.

Every target the inventory describes is up (cross-host scrapes over verified TLS with client
certificates), every alert rule is loaded and healthy, and the Watchdog alert travels through
Alertmanager to a webhook receiver that this test starts on the ops host. The inventory must set
monitoring_alertmanager_receiver to {type: webhook, url: "http://127.0.0.1:9099/"}.

MCPOPS_MONITORING_HOST and MCPOPS_MONITORING_EXPECTED (JSON: job -> number of targets) let the same
tests run against another topology (roles/monitoring/tests/lab.sh does).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections import Counter
from urllib.parse import quote

import pytest
import testinfra
from conftest import journal, wait_until

OPS = os.environ.get("MCPOPS_MONITORING_HOST", "mcpops-ops")
EXPECTED_TARGETS = json.loads(
    os.environ.get(
        "MCPOPS_MONITORING_EXPECTED",
        '{"mcp": 4, "node": 5, "nginx": 1, "redis": 1, "prometheus": 1, "alertmanager": 1}',
    )
)
ALERTS = {
    "Watchdog",
    "InstanceDown",
    "MCPHigh5xxRatio",
    "MCPToolLatencyHigh",
    "MCPAuthFailureSpike",
    "MCPRateLimiterFailingOpen",
    "RedisDown",
    "CertificateExpiringSoon",
    "DiskFillingUp",
    "LogShippingQueueGrowing",
}
PKI = "/etc/mcpops/pki"
WEBHOOK_UNIT = "mcpops-test-webhook"
WEBHOOK_PORT = 9099
WEBHOOK_FILE = f"/run/{WEBHOOK_UNIT}/bodies.jsonl"
# Appends each POSTed body as one line; the transient unit's RuntimeDirectory holds the file.
WEBHOOK_CODE = f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open({WEBHOOK_FILE!r}, "ab") as f:
            f.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", {WEBHOOK_PORT}), H).serve_forever()
"""


@pytest.fixture(scope="module")
def ops():
    return testinfra.get_host(f"docker://{OPS}")


def api(ops, path: str, port: int = 9090) -> dict:
    out = ops.run(f"curl -sS --max-time 10 {shlex.quote(f'http://127.0.0.1:{port}{path}')}")
    assert out.rc == 0, f"{path}: {out.stderr}\n{journal(ops, 'prometheus')}"
    return json.loads(out.stdout)


def targets(ops) -> list[dict]:
    return api(ops, "/api/v1/targets?state=active")["data"]["activeTargets"]


def test_services_run(ops):
    for unit in ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter"):
        svc = ops.service(unit)
        assert svc.is_running and svc.is_enabled, f"{unit}:\n{journal(ops, unit)}"


def test_prometheus_and_alertmanager_listen_on_loopback_only(ops):
    listening = [line.split()[3] for line in ops.check_output("ss -H -ltn").splitlines()]
    for port in (9090, 9093):
        mine = [a for a in listening if a.endswith(f":{port}")]
        assert mine == [f"127.0.0.1:{port}"], f"port {port}: {mine}"
    assert not [a for a in listening if a.endswith(":9094")], "Alertmanager's cluster port 9094 is open"


def test_every_target_is_up(ops):
    def all_up():
        found = targets(ops)
        jobs = Counter(t["labels"]["job"] for t in found)
        down = [t for t in found if t["health"] != "up"]
        return (not down and dict(jobs) == EXPECTED_TARGETS) and found

    try:
        wait_until(all_up, timeout=120, what="every target up")
    except AssertionError:
        report = [
            (t["labels"]["job"], t["labels"]["instance"], t["scrapeUrl"], t["health"], t["lastError"])
            for t in targets(ops)
        ]
        raise AssertionError(f"expected {EXPECTED_TARGETS}, got:\n" + "\n".join(map(str, report))) from None


def test_mcp_targets_are_the_inventory_instances(ops):
    mcp = [t for t in targets(ops) if t["labels"]["job"] == "mcp"]
    assert len(mcp) == EXPECTED_TARGETS["mcp"]
    assert len({t["labels"]["instance"] for t in mcp}) == len(mcp), "two mcp targets share an instance label"
    assert all(t["labels"].get("route") for t in mcp), "an mcp target has no route label"


def test_scrapes_of_other_hosts_use_tls(ops):
    remote = [
        t
        for t in targets(ops)
        if t["labels"]["job"] in ("node", "nginx", "redis") and t["labels"]["host"] != OPS
    ]
    assert remote, "no exporter on another host is scraped"
    plain = [t["scrapeUrl"] for t in remote if not t["scrapeUrl"].startswith("https://")]
    assert not plain, f"cross-host scrapes without TLS: {plain}"
    local = [
        t["scrapeUrl"]
        for t in targets(ops)
        if t["labels"].get("host") == OPS and t["labels"]["job"] == "node"
    ]
    assert local and all(u.startswith("http://127.0.0.1:") for u in local), local


def test_remote_exporter_wants_a_client_certificate(ops):
    """Only a holder of a deployment certificate may scrape: without one the handshake fails."""
    remote = [t for t in targets(ops) if t["labels"]["job"] == "node" and t["labels"]["host"] != OPS]
    assert remote, "no node exporter on another host"
    url = remote[0]["scrapeUrl"]
    anonymous = ops.run(
        f"curl -sS --max-time 10 --cacert {PKI}/ca.crt -o /dev/null -w '%{{http_code}}' {url}"
    )
    assert anonymous.rc != 0 or anonymous.stdout != "200", f"{url} answered a client without a certificate"
    known = ops.run(
        f"curl -sS --max-time 10 --cacert {PKI}/ca.crt --cert {PKI}/host.crt --key {PKI}/host.key "
        f"-o /dev/null -w '%{{http_code}}' {url}"
    )
    assert known.stdout == "200", f"{url} refused the ops host's certificate: {known.stderr}"
    no_ca = ops.run(f"curl -sS --max-time 10 --cert {PKI}/host.crt --key {PKI}/host.key -o /dev/null {url}")
    assert no_ca.rc != 0, f"{url} verified without the deployment CA (system trust store)"


UNITS = {
    "node": "prometheus-node-exporter.service",
    "nginx": "prometheus-nginx-exporter.service",
    "redis": "prometheus-redis-exporter.service",
}


def exposure(host, unit: str) -> float:
    out = host.run(f"systemd-analyze security --no-pager {unit}").stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, f"systemd-analyze security {unit}: {out[-500:]}"
    return float(match.group(1))


def test_units_are_hardened(ops):
    """Every exporter (on its own host), Alertmanager and the certificate timer's unit are confined."""
    checked = []
    for t in targets(ops):
        unit = UNITS.get(t["labels"]["job"])
        if unit is None:
            continue
        host = ops if t["labels"]["host"] == OPS else testinfra.get_host(f"docker://{t['labels']['host']}")
        checked.append((t["labels"]["host"], unit, host))
    checked += [(OPS, "prometheus-alertmanager.service", ops), (OPS, "mcpops-cert-expiry.service", ops)]
    for name, unit, host in checked:
        props = host.check_output(f"systemctl show -p ProtectSystem -p NoNewPrivileges -p User {unit}")
        assert "ProtectSystem=strict" in props and "NoNewPrivileges=yes" in props, f"{name} {unit}: {props}"
        score = exposure(host, unit)
        assert score < 3.0, f"{name} {unit}: systemd-analyze security exposure {score}"
    user = ops.check_output("systemctl show -p User prometheus-node-exporter.service")
    assert user == "User=prometheus", user


def test_every_rule_is_loaded_and_healthy(ops):
    def rules():
        groups = api(ops, "/api/v1/rules")["data"]["groups"]
        found = [r for g in groups for r in g["rules"]]
        return found if found and all(r["health"] == "ok" for r in found) else None

    found = wait_until(rules, timeout=90, what="every rule evaluated with health ok")
    assert {r["name"] for r in found if r["type"] == "alerting"} == ALERTS


def test_certificate_expiry_metric_on_every_host(ops):
    hosts = {t["labels"]["host"] for t in targets(ops) if t["labels"]["job"] == "node"}
    query = f'mcpops_tls_cert_not_after_seconds{{path="{PKI}/host.crt"}} - time()'

    def series():
        result = api(ops, "/api/v1/query?query=" + quote(query))["data"]["result"]
        return result if {r["metric"]["host"] for r in result} == hosts else None

    result = wait_until(series, timeout=90, what=f"the certificate expiry metric of {sorted(hosts)}")
    assert all(float(r["value"][1]) > 0 for r in result), f"a host certificate has expired: {result}"


@pytest.fixture
def webhook(ops):
    ops.run(f"systemctl stop {WEBHOOK_UNIT}; systemctl reset-failed {WEBHOOK_UNIT}")
    started = ops.run(
        f"systemd-run --unit={WEBHOOK_UNIT} --property=RuntimeDirectory={WEBHOOK_UNIT} "
        f"/usr/bin/python3 -c {shlex.quote(WEBHOOK_CODE)}"
    )
    assert started.rc == 0, started.stderr
    wait_until(
        lambda: ops.run(f"ss -H -ltn 'sport = :{WEBHOOK_PORT}'").stdout.strip(),
        timeout=20,
        interval=0.25,
        what="the test webhook listening",
    )
    yield
    ops.run(f"systemctl stop {WEBHOOK_UNIT}")


@pytest.mark.timeout(240)
def test_watchdog_reaches_the_webhook_receiver(ops, webhook):
    """Prometheus -> Alertmanager -> receiver: the always-firing Watchdog arrives at the webhook.

    Alertmanager sends the Watchdog again every monitoring_alertmanager_watchdog_repeat_interval
    (default 1m) and retries a failed delivery, so a webhook started now gets it within about two.
    """

    def watchdog():
        out = ops.run(f"cat {WEBHOOK_FILE}")
        for line in out.stdout.splitlines():
            body = json.loads(line)
            for alert in body.get("alerts", []):
                if alert["labels"].get("alertname") == "Watchdog" and alert["status"] == "firing":
                    return body
        return None

    try:
        body = wait_until(watchdog, timeout=200, interval=2, what="the Watchdog alert at the webhook")
    except AssertionError:
        raise AssertionError(journal(ops, "prometheus-alertmanager")) from None
    assert body["receiver"] == "mcpops"
