"""Monitoring and log shipping on one host: every connection stays on loopback in plain text (the
cluster scenario proves the TLS between hosts). Prometheus scrapes every target of the inventory,
the exporters listen on loopback only, and the server's lines reach the collector on this host."""

from __future__ import annotations

import json
import shlex
import uuid

from conftest import assert_active, container_name, instances, journal, wait_until

testinfra_hosts = ["ansible://monitoring"]


def prometheus_get(host, path: str) -> dict:
    res = host.run(shlex.join(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:9090{path}"]))
    assert res.rc == 0, f"Prometheus {path}: {res.stderr}\n{journal(host, 'prometheus')}"
    return json.loads(res.stdout)


def test_prometheus_scrapes_every_target_over_loopback(host):
    assert_active(host, "prometheus")
    expected = {"mcp": len(instances(host)), "node": 1, "nginx": 1, "redis": 1}

    def all_up():
        targets = prometheus_get(host, "/api/v1/targets?state=active")["data"]["activeTargets"]
        jobs: dict[str, list[dict]] = {}
        for t in targets:
            jobs.setdefault(t["labels"]["job"], []).append(t)
        ok = all(len(jobs.get(job, [])) == n for job, n in expected.items()) and all(
            t["health"] == "up" for t in targets
        )
        return jobs if ok else None

    jobs = wait_until(all_up, timeout=90, interval=2, what="every Prometheus target up")
    for job in expected:
        for t in jobs[job]:
            # One host: plain text on loopback, no certificate needed.
            assert t["scrapeUrl"].startswith(("http://127.0.0.1:", "http://localhost:")), t


def test_exporters_listen_on_loopback_only(host):
    for port in (9100, 9113, 9121, 9090, 9093):
        sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
        assert sockets, f"nothing listens on {port}"
        assert all("127.0.0.1" in s for s in sockets), f"port {port} listens beyond loopback: {sockets}"


def test_server_lines_reach_the_collector_on_this_host(host):
    marker = f"one-host-{uuid.uuid4().hex}"
    line = json.dumps({"message": marker, "logger": "test"})
    host.run_expect([0], f"logger -t mcpops-server {shlex.quote(line)}")
    path = f"/var/log/mcpops/{container_name(host)}/mcpops-server.json"

    def arrived():
        res = host.run(f"grep -h {marker} {path}")
        return res.stdout.splitlines() if res.rc == 0 else None

    got = wait_until(arrived, timeout=30, what=f"{marker} in {path}")
    assert len(got) == 1, got
    record = json.loads(got[0])
    assert json.loads(record["message"]) == json.loads(line)
    # Plain RELP on loopback: the shipper holds a session to the loopback port, none to 2514.
    sessions = host.run("ss -Htn state established '( dport = :2515 )'").stdout
    assert "127.0.0.1:2515" in sessions, sessions
