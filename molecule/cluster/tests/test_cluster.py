"""The deployment across hosts: MCP through the load balancer to both app hosts, TLS on every
connection between hosts (verified against the deployment CA, plain text refused), and a firewall
on each host that opens only what the topology needs."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import (
    APP_HOSTS,
    CA_CERT,
    INSTANCE_PORTS,
    LAB_DIR,
    PUBLIC_NAME,
    address_of,
    assert_active,
    connect,
    controller_script,
    mint_token,
    run_site,
    wait_until,
)


@pytest.fixture(scope="module")
def lb_url() -> str:
    return f"https://{address_of('mcpops-lb')}/mcp"


@pytest.fixture(scope="module")
def token_file() -> Path:
    """One token a subject, so the per-principal limits are not what the tests measure."""
    path = Path(tempfile.mkdtemp(prefix="mcpops-cluster-")) / "tokens"
    path.write_text("\n".join(mint_token(sub=f"cluster-{i}") for i in range(8)) + "\n")
    return path


def route_prefix(name: str, port: int) -> str:
    """The route id an instance puts in front of its session ids (host name letters and digits)."""
    return re.sub(r"[^A-Za-z0-9]+", "", name) + f"-{port}"


def test_each_host_runs_its_services(hosts):
    assert_active(hosts["mcpops-lb"], "nginx")
    for name in APP_HOSTS:
        for port in INSTANCE_PORTS:
            assert_active(hosts[name], f"mcpops-server@{port}")
    assert_active(hosts["mcpops-data"], "redis-server")
    # Roles are where the inventory puts them, and nowhere else.
    assert not hosts["mcpops-lb"].package("redis-server").is_installed
    assert not hosts["mcpops-data"].package("nginx").is_installed
    assert not hosts["mcpops-app1"].package("nginx").is_installed


def test_legacy_sessions_through_the_lb_are_served_by_both_app_hosts(lb_url, token_file):
    """2025-06-18 session clients (Mcp-Session-Id, kept in one instance's memory): every follow-up
    request of a session must reach the instance that minted it, across hosts."""
    out = controller_script(
        "sessions_load.py",
        lb_url,
        "--token-file",
        str(token_file),
        "--ca",
        str(CA_CERT),
        "--host-header",
        PUBLIC_NAME,
        "--sessions",
        "40",
        "--calls",
        "3",
        "--concurrency",
        "8",
    )
    assert out["failed"] == 0, f"sessions failed through the lb: {out}"
    served = {route.rsplit("-", 1)[0] for route in out["routes"]}
    expected = {route_prefix(name, 0).rsplit("-", 1)[0] for name in APP_HOSTS}
    assert expected <= served, f"not every app host served sessions: routes {out['routes']}"


def test_current_client_through_the_lb_uses_redis_across_hosts(lb_url, token_file):
    """The SDK's mcp.Client (sessionless protocol) lists tools and writes and reads a note: the
    notes live in Redis on the data host, reached over TLS from whichever app host served the call."""
    token = token_file.read_text().split()[0]
    out = controller_script(
        "mcp_probe.py",
        lb_url,
        "--token",
        token,
        "--ca",
        str(CA_CERT),
        "--host-header",
        PUBLIC_NAME,
        "--list",
        "--call",
        "notes_add",
        '{"title": "across hosts", "body": "stored on mcpops-data"}',
        "--call",
        "notes_search",
        '{"query": "across hosts"}',
    )
    assert out["ok"], f"MCP through the lb failed: {out}"
    assert "notes_add" in out["tools"]
    calls = out["calls"]
    assert not calls[0]["is_error"], calls[0]
    assert "stored on mcpops-data" in (calls[1]["text"] + str(calls[1]["structured"])), calls[1]


def test_nginx_verifies_the_instances_certificates(hosts):
    conf = hosts["mcpops-lb"].check_output("nginx -T 2>/dev/null")
    assert "proxy_ssl_verify on;" in conf
    assert "proxy_ssl_trusted_certificate /etc/mcpops/pki/ca.crt;" in conf
    assert re.search(r"proxy_pass https://", conf), "nginx proxies to the instances in plain text"


@pytest.mark.parametrize("app", APP_HOSTS)
def test_instances_speak_only_verified_tls_to_the_lb(hosts, app):
    lb = hosts["mcpops-lb"]
    for port in INSTANCE_PORTS:
        got = connect(lb, app, port, "tls", "GET /health HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        assert got.startswith("open 'HTTP/1.1 200"), f"{app}:{port} over TLS from the lb: {got}"
        plain = connect(lb, app, port, "plain", "GET /health HTTP/1.0\\r\\n\\r\\n")
        assert "HTTP/1.1 200" not in plain, f"{app}:{port} answered plain HTTP from the lb: {plain}"


def test_redis_speaks_only_mutual_tls_across_hosts(hosts):
    app = hosts["mcpops-app1"]
    # With the app host's certificate: TLS works and Redis answers (NOAUTH: no password sent).
    got = connect(app, "mcpops-data", 6379, "mutual", "PING\\r\\n")
    assert got.startswith("open '-NOAUTH"), f"Redis over mutual TLS from app1: {got}"
    # Plain text gets no Redis answer at all.
    plain = connect(app, "mcpops-data", 6379, "plain", "PING\\r\\n")
    assert "NOAUTH" not in plain and "PONG" not in plain, f"Redis answered plain text: {plain}"
    # TLS without a client certificate is refused (tls-auth-clients yes).
    anon = connect(app, "mcpops-data", 6379, "tls", "PING\\r\\n")
    assert "NOAUTH" not in anon and "PONG" not in anon, f"Redis answered a client without a cert: {anon}"


def test_app_hosts_reach_redis_over_rediss(hosts):
    config = hosts["mcpops-app1"].file("/etc/mcpops/config.yaml").content_string
    assert "url: rediss://mcpops-data:6379/0" in config
    assert "tls_ca_file: /etc/mcpops/pki/ca.crt" in config


# (from, to, port, open?): only the lb and ops reach instance ports, only app hosts reach Redis.
REACH = [
    ("mcpops-lb", "mcpops-app1", 8000, True),
    ("mcpops-ops", "mcpops-app2", 8001, True),
    ("mcpops-app2", "mcpops-app1", 8000, False),
    ("mcpops-data", "mcpops-app1", 8001, False),
    ("mcpops-app1", "mcpops-data", 6379, True),
    ("mcpops-lb", "mcpops-data", 6379, False),
    ("mcpops-ops", "mcpops-data", 6379, False),
]


@pytest.mark.parametrize(("src", "dst", "port", "expect_open"), REACH)
def test_firewalls_open_only_what_the_topology_needs(hosts, src, dst, port, expect_open):
    got = connect(hosts[src], dst, port, "plain")
    if expect_open:
        assert not got.startswith("closed"), f"{src} -> {dst}:{port} should be open: {got}"
    else:
        assert got.startswith("closed"), f"{src} -> {dst}:{port} should be closed: {got}"


def test_a_tool_calls_log_line_with_its_request_id_reaches_the_collector(hosts, lb_url, token_file):
    """The request id a client sends travels through nginx to the instance, into the instance's JSON
    log line of the tool call, and with that line over RELP to the collector on mcpops-ops."""
    request_id = f"cluster-{uuid.uuid4().hex}"
    out = controller_script(
        "mcp_probe.py",
        lb_url,
        "--token",
        token_file.read_text().split()[0],
        "--ca",
        str(CA_CERT),
        "--host-header",
        PUBLIC_NAME,
        "--request-id",
        request_id,
        "--call",
        "notes_search",
        '{"query": "log line"}',
    )
    assert out["ok"], out
    ops = hosts["mcpops-ops"]
    files = " ".join(f"/var/log/mcpops/{name}/mcpops-server.json" for name in APP_HOSTS)

    def tool_call_lines() -> list[dict]:
        res = ops.run(f"grep -h {request_id} {files}")
        lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        return [
            line
            for line in lines
            if (lambda r: r.get("tool_name") == "notes_search" and r.get("request_id") == request_id)(
                json.loads(line["message"])
            )
        ]

    lines = wait_until(tool_call_lines, timeout=30, what=f"the tool call's line with request id {request_id}")
    assert {line["host"] for line in lines} <= set(APP_HOSTS), lines
    assert all(line["service"] == "mcpops-server" for line in lines), lines


def _serial(host, path: str = "/etc/mcpops/pki/host.crt") -> str:
    return host.check_output(f"openssl x509 -in {path} -noout -serial")


def test_a_certificate_near_expiry_is_renewed_and_redis_serves_the_new_one(hosts, tmp_path):
    """Put a certificate that expires in 5 days (signed by the lab CA for the data host's own key)
    in place of the data host's, then run site.yml for that host: the pki role re-signs it (within
    pki_renew_days, 30), and Redis restarts onto the new certificate, which the app host sees."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert inventory and Path(inventory).exists(), "run by molecule verify (MOLECULE_INVENTORY_FILE)"
    data, app = hosts["mcpops-data"], hosts["mcpops-app1"]
    csr = data.check_output("openssl req -new -key /etc/mcpops/pki/host.key -subj /CN=mcpops-data")
    (tmp_path / "host.csr").write_text(csr + "\n")
    (tmp_path / "ext").write_text(
        "subjectAltName=DNS:mcpops-data,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    ca = LAB_DIR / "ca"
    sign = ["openssl", "x509", "-req", "-in", "host.csr", "-CA", str(ca / "ca.crt")]
    sign += ["-CAkey", str(ca / "ca.key"), "-set_serial", "0x5eed", "-days", "5"]
    sign += ["-extfile", "ext", "-out", "short.crt"]
    subprocess.run(sign, cwd=tmp_path, check=True, capture_output=True)
    put = base64.b64encode((tmp_path / "short.crt").read_bytes()).decode()
    data.run_expect([0], f"echo {put} | base64 -d > /etc/mcpops/pki/host.crt")
    assert _serial(data) == "serial=5EED"
    data.run_expect([0], "systemctl restart redis-server")  # Redis now serves the short certificate
    seen = connect(app, "mcpops-data", 6379, "mutual", "PING\\r\\n")
    assert seen.startswith("open '-NOAUTH"), seen

    res = run_site(Path(inventory), "--limit", "mcpops-data")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    renewed = _serial(data)
    assert renewed != "serial=5EED", "the certificate expiring in 5 days was not renewed"
    assert data.run("openssl x509 -in /etc/mcpops/pki/host.crt -noout -checkend 2592000").rc == 0
    # Redis restarted onto the new certificate: what the app host is served is the renewed one.
    pki = "/etc/mcpops/pki"
    served = app.check_output(
        f"echo | openssl s_client -connect mcpops-data:6379 -CAfile {pki}/ca.crt -cert {pki}/host.crt"
        f" -key {pki}/host.key 2>/dev/null | openssl x509 -noout -serial"
    )
    assert served == renewed, f"Redis still serves {served}, the file holds {renewed}"
