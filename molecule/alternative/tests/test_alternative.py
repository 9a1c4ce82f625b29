"""The paths no other scenario takes (issue 11, scenario `alternative`), on one Debian 13 host:

1. nginx serves the user's certificate files (nginx_tls_source: files);
2. Redis on its unix socket only (redis_port: 0);
3. the instances serve TLS themselves (mcp_server_tls_cert_file), reached without nginx;
4. stateless mode (mcp_server_stateless);
5. no firewall (firewall_enabled: false);
6. third-party packages from a package index with a CA of its own (mcp_server_pip_index_url,
   mcp_server_pip_extra_ca_certs), served from the controller by prepare.yml.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from conftest import ALT_DIR, PORTS, PUBLIC_NAME, journal, mcp_probe, wait_until


def pem_der(path) -> bytes:
    """The DER bytes of the first certificate of a PEM file."""
    text = path.read_text()
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", text, re.S)
    assert first, f"{path} holds no certificate"
    return ssl.PEM_cert_to_DER_cert(first.group(0))


def served_cert(address: str, port: int, cafile, server_name: str) -> bytes:
    """Handshake with address:port verifying against cafile and server_name; the served leaf (DER)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection((address, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


# 1. nginx with the user's certificate files -----------------------------------------------------


def test_nginx_serves_exactly_the_user_certificate(alt, address):
    served = served_cert(address, 443, ALT_DIR / "web-ca" / "ca.crt", PUBLIC_NAME)
    assert fingerprint(served) == fingerprint(pem_der(ALT_DIR / "web" / "server.crt")), (
        "nginx serves another certificate than nginx_tls_cert_src"
    )
    # The file on the host is the user's file, and its key never left the controller's copy.
    on_host = alt.file("/etc/nginx/tls/server.crt")
    assert on_host.mode == 0o644 and alt.file("/etc/nginx/tls/server.key").mode == 0o600
    assert fingerprint(pem_der_text(on_host.content_string)) == fingerprint(served)


def pem_der_text(text: str) -> bytes:
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", text, re.S)
    assert first, "no certificate in the text"
    return ssl.PEM_cert_to_DER_cert(first.group(0))


def test_nginx_certificate_does_not_verify_against_the_deployment_ca(address):
    with pytest.raises(ssl.SSLCertVerificationError):
        served_cert(address, 443, ALT_DIR / "ca" / "ca.crt", PUBLIC_NAME)


# 4. stateless mode, through nginx with the user's certificate ------------------------------------


def _initialize(url: str, token: str, cafile, host_header: str | None = None) -> tuple[int, dict, str]:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "alt-test", "version": "1"},
        },
    }
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json, text/event-stream")
    req.add_header("Authorization", f"Bearer {token}")
    if host_header:
        req.add_header("Host", host_header)
    ctx = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_stateless_mode_issues_no_session_id(alt, address, token):
    status, headers, body = _initialize(
        f"https://{address}/mcp", token, ALT_DIR / "web-ca" / "ca.crt", PUBLIC_NAME
    )
    assert status == 200, f"initialize through nginx: {status} {body}"
    assert "mcpops-server" in body, body
    assert not {k.lower() for k in headers} & {"mcp-session-id"}, f"a session id was issued: {headers}"
    config = alt.run("cat /etc/mcpops/config.yaml").stdout
    assert re.search(r"^\s+stateless: true$", config, re.M), config


def test_calls_work_through_nginx_without_a_session(address, token):
    title = f"alt-nginx-{time.time_ns()}"
    out = mcp_probe(
        f"https://{address}/mcp",
        "--ca",
        str(ALT_DIR / "web-ca" / "ca.crt"),
        "--host-header",
        PUBLIC_NAME,
        "--token",
        token,
        "--list",
        "--call",
        "notes_add",
        json.dumps({"title": title, "body": "through nginx, stateless"}),
        "--call",
        "notes_search",
        json.dumps({"query": title}),
    )
    assert out["ok"], out
    assert out["session_id"] is None, f"stateless server issued a session id: {out['session_id']}"
    added, found = out["calls"]
    assert not added["is_error"] and not found["is_error"], out["calls"]
    assert added["structured"]["id"] in [n["id"] for n in found["structured"]["notes"]], found


# 3. the instances serve TLS themselves, reached without nginx ------------------------------------


@pytest.mark.parametrize("port", PORTS)
def test_instance_serves_the_user_certificate_itself(alt, address, port):
    served = served_cert(address, port, ALT_DIR / "ca" / "ca.crt", address)
    unit = f"mcpops-server@{port}"
    assert fingerprint(served) == fingerprint(pem_der(ALT_DIR / "instance" / "tls.crt")), (
        f"port {port} serves another certificate than mcp_server_tls_cert_file\n{journal(alt, unit)}"
    )


def test_instance_refuses_plain_http(address):
    req = urllib.request.Request(f"http://{address}:{PORTS[0]}/health")
    with pytest.raises((urllib.error.URLError, OSError, http.client.HTTPException)):
        urllib.request.urlopen(req, timeout=5)


@pytest.mark.parametrize("port", PORTS)
def test_sdk_client_calls_a_tool_over_the_instance_tls(alt, address, token, port):
    title = f"alt-direct-{port}-{time.time_ns()}"
    out = mcp_probe(
        f"https://{address}:{port}/mcp",
        "--ca",
        str(ALT_DIR / "ca" / "ca.crt"),
        "--host-header",
        PUBLIC_NAME,
        "--token",
        token,
        "--call",
        "notes_add",
        json.dumps({"title": title, "body": f"straight to port {port}"}),
    )
    assert out["ok"], f"{out}\n{journal(alt, f'mcpops-server@{port}')}"
    assert not out["calls"][0]["is_error"], out["calls"]
    assert out["session_id"] is None, out


def test_prometheus_scrapes_the_instances_over_their_tls(alt):
    def mcp_targets():
        out = alt.run("curl -s http://127.0.0.1:9090/api/v1/targets?state=active").stdout
        try:
            targets = json.loads(out)["data"]["activeTargets"]
        except (ValueError, KeyError):
            return None
        mcp = [t for t in targets if t["labels"].get("job") == "mcp"]
        return mcp if len(mcp) == len(PORTS) and all(t["health"] == "up" for t in mcp) else None

    try:
        targets = wait_until(mcp_targets, timeout=60, interval=1, what="every mcp target up in Prometheus")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{journal(alt, 'prometheus')}") from None
    assert all(t["scrapeUrl"].startswith("https://") for t in targets), targets


# 2. Redis on its unix socket only ----------------------------------------------------------------


def test_redis_listens_on_no_tcp_port(alt):
    listening = alt.run("ss -ltnH").stdout
    assert not re.search(r":6379\b", listening), listening
    assert alt.socket("unix:///run/redis/redis-server.sock").is_listening, journal(alt, "redis-server")
    conf = alt.run("cat /etc/redis/redis.conf").stdout
    assert re.search(r"^port 0$", conf, re.M), "redis.conf does not say port 0"


def test_server_uses_the_unix_socket(alt):
    config = alt.run("cat /etc/mcpops/config.yaml").stdout
    assert re.search(r"^\s+url: unix:///run/redis/redis-server\.sock\?db=0$", config, re.M), config
    assert "redis" in alt.user("mcpuser").groups


def test_notes_survive_a_redis_restart(alt, address, token):
    title = f"alt-survivor-{time.time_ns()}"
    ca = str(ALT_DIR / "ca" / "ca.crt")
    url = f"https://{address}:{PORTS[0]}/mcp"
    common = ("--ca", ca, "--host-header", PUBLIC_NAME, "--token", token)
    added = mcp_probe(url, *common, "--call", "notes_add", json.dumps({"title": title, "body": "kept"}))
    assert added["ok"] and not added["calls"][0]["is_error"], added
    note_id = added["calls"][0]["structured"]["id"]
    assert alt.run("systemctl restart redis-server").rc == 0, journal(alt, "redis-server")

    def read_back():
        out = mcp_probe(url, *common, "--call", "notes_get", json.dumps({"note_id": note_id}))
        return out if out["ok"] and not out["calls"][0]["is_error"] else None

    back = wait_until(read_back, timeout=30, interval=0.5, what="the note read back after the Redis restart")
    assert back["calls"][0]["structured"]["title"] == title, back


def test_redis_exporter_reads_redis_over_the_socket(alt):
    def up():
        return "redis_up 1" in alt.run("curl -s http://127.0.0.1:9121/metrics").stdout

    wait_until(up, timeout=30, what="redis_up 1 from the Redis exporter")


# 5. no firewall ----------------------------------------------------------------------------------


def test_no_mcpops_nftables_table(alt):
    # With the role off nothing installs nftables on this image; where nft exists, the table is absent.
    if alt.exists("nft"):
        tables = alt.run("nft list tables")
        assert tables.rc == 0, tables.stderr
        assert "mcpops" not in tables.stdout, tables.stdout
    assert not alt.file("/etc/nftables.d").exists or not alt.run("ls /etc/nftables.d").stdout.strip()
    enabled = alt.run("systemctl is-enabled nftables.service").stdout.strip()
    assert enabled in ("", "not-found", "disabled"), f"nftables.service is {enabled}"


# 6. packages from a package index with an extra CA -------------------------------------------------


def test_the_extra_ca_is_in_the_host_store(alt):
    ca = (ALT_DIR / "index-ca" / "ca.crt").read_text().strip()
    installed = alt.file("/usr/local/share/ca-certificates/mcpops-pip-ca.crt")
    assert installed.exists and installed.content_string.strip() == ca
    assert ca in alt.file("/etc/ssl/certs/ca-certificates.crt").content_string


def test_the_release_came_from_the_index(alt, address):
    lock = alt.run("cat /opt/mcpops/current/wheelhouse/lock.txt").stdout.splitlines()
    # The controller's own builds are named by file (./wheels/...), the third-party packages by version.
    names = [
        re.split(r"[=<>!~;\s\[@]", line.strip(), maxsplit=1)[0].lower()
        for line in lock
        if line.strip() and not line.startswith("./wheels/")
    ]
    third_party = [name for name in names if name != "mcpops-server"]
    assert third_party, lock
    # The wheelhouse copied from the controller holds only the server itself.
    wheels = alt.run("ls /opt/mcpops/current/wheelhouse/wheels").stdout.split()
    assert wheels and all(w.startswith("mcpops_server-") for w in wheels), wheels
    log = (ALT_DIR / "index" / "access.log").read_text().splitlines()
    from_host = [line.split() for line in log if line.split()[1:2] == [address]]
    fetched = {
        re.sub(r"[-_.]+", "-", p[3].rsplit("/", 1)[-1].split("-")[0]).lower()
        for p in from_host
        if p[3].startswith("/files/")
    }
    missing = [name for name in third_party if re.sub(r"[-_.]+", "-", name) not in fetched]
    assert not missing, f"installed but never fetched from the index by {address}: {missing}\n" + "\n".join(
        log[-20:]
    )
    lookups = [p for p in from_host if p[2] == "GET"]
    refused = [p for p in lookups if p[-1] != "200"]
    assert lookups and not refused, f"requests of the host the index did not answer with 200: {refused}"


def test_the_server_came_from_the_wheelhouse_not_the_index_decoy(alt, address):
    # The index serves a decoy mcpops-server of the same version (prepare.yml): the host must never
    # fetch it, and the installed package must be the controller's build.
    log = (ALT_DIR / "index" / "access.log").read_text().splitlines()
    decoys = [line for line in log if f" {address} GET /files/mcpops_server-" in line]
    assert not decoys, f"the host fetched the index's decoy server: {decoys}"
    lock = alt.run("cat /opt/mcpops/current/wheelhouse/lock.txt").stdout.splitlines()
    assert [line for line in lock if line.startswith("./wheels/mcpops_server-")], lock
    py = "/opt/mcpops/current/venv/bin/python"
    marker = alt.run(f"{py} -c 'import mcpops_server; print(getattr(mcpops_server, \"DECOY\", False))'")
    assert marker.rc == 0 and marker.stdout.strip() == "False", marker.stdout + marker.stderr
    assert alt.run("/opt/mcpops/current/venv/bin/mcpops-server --version").rc == 0
    pip_check = alt.run("/opt/mcpops/current/venv/bin/python -m pip check --disable-pip-version-check")
    assert pip_check.rc == 0, pip_check.stdout + pip_check.stderr
