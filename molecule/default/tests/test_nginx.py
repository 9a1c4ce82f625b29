"""nginx in front of the MCP server instances: headers, streaming, session affinity, failover, and a
bad input that must fail the play while the running nginx keeps serving."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest
from conftest import (
    PUBLIC_NAME,
    REPO,
    assert_active,
    instances,
    journal,
    mint_token,
    probe,
    put_file,
    run_playbook,
    wait_healthy,
    wait_until,
)
from edge import CA_CERT, curl, docker_network, inventory

testinfra_hosts = ["ansible://mcp_lb"]

HERE = Path(__file__).parent
CA_ON_HOST = "/usr/local/lib/mcpops-tests/ca.crt"
LOAD_PATH = "/usr/local/lib/mcpops-tests/sessions_load.py"
SERVER_PYTHON = "/opt/mcpops/current/venv/bin/python"
# Inside the host the client connects to loopback (the certificate names 127.0.0.1) and sends the
# public Host, as a client resolving the public name to this host would.
EDGE_URL = "https://127.0.0.1/mcp"
SECURITY_HEADERS = {
    "strict-transport-security": None,  # checked below
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@pytest.fixture(scope="module")
def address(host) -> str:
    return docker_network(host)[1]


@pytest.fixture(scope="module")
def edge(host):
    put_file(host, CA_CERT, CA_ON_HOST)
    put_file(host, HERE / "sessions_load.py", LOAD_PATH)
    return host


def assert_security_headers(headers: dict, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        got = headers.get(name)
        assert got is not None and len(got) == 1, f"{what}: {name} missing or repeated: {got}\n{headers}"
        if value is not None:
            assert got[0] == value, f"{what}: {name}: {got[0]!r} != {value!r}"
    hsts = headers["strict-transport-security"][0]
    max_age = int(hsts.split("max-age=")[1].split(";")[0])
    assert max_age >= 31536000 and "includeSubDomains" in hsts, f"{what}: HSTS {hsts!r}"
    assert headers.get("server") == ["nginx"], f"{what}: server_tokens must be off: {headers.get('server')}"


def test_nginx_is_running_with_a_valid_config(host):
    assert_active(host, "nginx.service")
    res = host.run("nginx -t")
    assert res.rc == 0, res.stderr
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.socket("tcp://0.0.0.0:443").is_listening
    assert host.socket("tcp://0.0.0.0:80").is_listening


def test_headers_on_200_from_the_app(address):
    status, headers, body = curl(address, "/health")
    assert status == 200, body
    assert json.loads(body)["status"] in ("ok", "healthy"), body
    assert_security_headers(headers, "GET /health (200)")


def test_headers_on_404_from_nginx(address):
    status, headers, _ = curl(address, "/not-a-path")
    assert status == 404
    assert_security_headers(headers, "GET /not-a-path (404)")


def test_headers_on_401_from_the_app_and_mcp_headers_pass(address):
    status, headers, _ = curl(
        address, "/mcp", "-X", "POST", "-H", "Content-Type: application/json", "-d", "{}"
    )
    assert status == 401
    assert_security_headers(headers, "POST /mcp without a token (401)")
    assert "resource_metadata" in headers.get("www-authenticate", [""])[0], headers


def test_protected_resource_metadata_passes(address):
    status, _, body = curl(address, "/.well-known/oauth-protected-resource/mcp")
    assert status == 200, body
    assert json.loads(body)["resource"] == f"https://{PUBLIC_NAME}/mcp", body


def test_metrics_are_not_public(address):
    status, headers, _ = curl(address, "/metrics")
    assert status == 403
    assert_security_headers(headers, "GET /metrics (403)")


def test_json_access_log_has_request_id_and_upstream(host, address):
    quiet, logged = f"health-{uuid.uuid4().hex}", f"meta-{uuid.uuid4().hex}"
    curl(address, "/health", "-H", f"X-Request-ID: {quiet}")
    status, headers, _ = curl(
        address, "/.well-known/oauth-protected-resource", "-H", f"X-Request-ID: {logged}"
    )
    assert headers.get("x-request-id") == [logged], headers

    def line():
        out = host.run(f"grep -h -- {shlex.quote(logged)} /var/log/nginx/access.log").stdout.strip()
        return out.splitlines()[-1] if out else None

    entry = json.loads(wait_until(line, timeout=10, what="the access log line"))
    assert entry["request_id"] == logged and entry["status"] == status
    assert entry["upstream"].startswith("127.0.0.1:"), entry
    assert entry["upstream_status"] == str(status) and entry["upstream_response_time"], entry
    # /health is never logged (the later request's line is there, so this one would be too).
    assert host.run(f"grep -c -- {shlex.quote(quiet)} /var/log/nginx/access.log").stdout.strip() == "0"


def test_progress_events_stream_through_nginx_before_the_call_ends(edge):
    out = probe(
        edge,
        EDGE_URL,
        token=mint_token(sub="sse-test"),
        ca=CA_ON_HOST,
        host_header=PUBLIC_NAME,
        calls=[("slow_count", {"n": 6, "interval_ms": 500})],
    )
    assert out["ok"], out
    call = out["calls"][0]
    events = call["progress"]
    assert len(events) == 6, call
    # Unbuffered: the first event arrives right away, ~2.5 s before the last and before the result.
    assert events[0]["t"] < 1.0, call
    assert events[-1]["t"] - events[0]["t"] > 2.0, call
    assert call["elapsed"] - events[0]["t"] > 2.0, call


def load(edge, tmp_tokens: int = 5, **opts) -> dict:
    tokens = "\n".join(mint_token(sub=f"load-{i}") for i in range(tmp_tokens))
    token_file = "/usr/local/lib/mcpops-tests/tokens"
    edge.run_expect([0], f"umask 077; printf %s {shlex.quote(tokens)} > {token_file}")
    argv = [SERVER_PYTHON, LOAD_PATH, EDGE_URL, "--token-file", token_file, "--ca", CA_ON_HOST]
    argv += ["--host-header", PUBLIC_NAME]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    res = edge.run(shlex.join(argv))
    assert res.rc == 0 and res.stdout.strip(), f"sessions_load failed: {res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_sessions_stick_to_their_instance(edge):
    ports = instances(edge)
    if len(ports) < 2:
        pytest.skip("session affinity needs two instances (mcp_server_ports)")
    agent = f"affinity-{uuid.uuid4().hex}"
    result = load(edge, sessions=50, calls=5, concurrency=10, user_agent=agent)
    assert result["sessions"] == 50 and result["failed"] == 0, result
    # New sessions are spread: every instance owns some.
    assert len(result["routes"]) == len(ports) and all(n > 0 for n in result["routes"].values()), result
    # Every request that carried a session id went to the port of the instance owning it.
    lines = edge.run(f"grep -h -- {shlex.quote(agent)} /var/log/nginx/access.log").stdout.splitlines()
    routed = [json.loads(x) for x in lines if '"route":"mcpops_all"' not in x]
    assert len(routed) >= 50 * 5, f"only {len(routed)} session requests logged"
    wrong = [e for e in routed if e["upstream"].rsplit(":", 1)[-1] != e["route"].rsplit("_", 1)[-1]]
    assert not wrong, wrong[:5]


@pytest.mark.timeout(600)
def test_new_sessions_succeed_with_one_instance_killed(edge):
    ports = instances(edge)
    if len(ports) < 2:
        pytest.skip("failover needs two instances (mcp_server_ports)")
    victim, survivor = ports[-1], ports[0]
    unit = f"mcpops-server@{victim}.service"
    try:
        edge.run_expect([0], f"systemctl kill --signal=SIGKILL {unit} && systemctl stop {unit}")
        wait_until(
            lambda: not edge.socket(f"tcp://127.0.0.1:{victim}").is_listening,
            timeout=15,
            what=f"{victim} down",
        )
        result = load(edge, sessions=10, calls=2, concurrency=5, user_agent=f"failover-{uuid.uuid4().hex}")
        assert result["failed"] == 0, f"{result}\njournal of nginx:\n{journal(edge, 'nginx.service')}"
        # Every new session was owned by the surviving instance.
        assert result["routes"] and all(r.endswith(f"-{survivor}") for r in result["routes"]), result
    finally:
        edge.run(f"systemctl start {unit}")
        wait_healthy(edge, victim)


def config_fingerprint(host) -> tuple[str, str]:
    digest = host.check_output("sha256sum /etc/nginx/nginx.conf").split()[0]
    return digest, host.check_output("cat /run/nginx.pid")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["-e", "nginx_tls_source=files", "-e", "nginx_tls_cert_src=/nonexistent/mcp.pem"],
            ["nginx_tls_cert_src", "/nonexistent/mcp.pem", "no such file on the controller"],
        ),
        (["-e", "nginx_https_port=70000"], ["nginx_https_port", "70000", "1 to 65535"]),
    ],
    ids=["missing-certificate", "invalid-port"],
)
@pytest.mark.timeout(900)
def test_bad_variable_fails_in_preflight_and_nginx_keeps_serving(host, address, extra, expected):
    before = config_fingerprint(host)
    res = run_playbook(REPO / "playbooks/site.yml", inventory(host), *extra, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    for text in expected:
        assert text in out, f"{text!r} not in the play's output:\n{out[-3000:]}"
    # The preflight play stopped the run: no later play (the first is the firewall's) started.
    assert "PLAY [Host firewall]" not in out, out[-3000:]
    assert config_fingerprint(host) == before
    assert curl(address, "/health")[0] == 200


@pytest.mark.timeout(900)
def test_config_failing_nginx_t_never_replaces_the_running_one(host, address):
    before = config_fingerprint(host)
    res = run_playbook(
        REPO / "playbooks/site.yml",
        inventory(host),
        "--tags",
        "nginx_configure",
        "-e",
        "nginx_extra_config='mcpops_not_a_directive on;'",
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "mcpops_not_a_directive" in out, out[-3000:]
    assert config_fingerprint(host) == before, "nginx.conf was replaced or nginx restarted"
    assert "mcpops_not_a_directive" not in host.file("/etc/nginx/nginx.conf").content_string
    assert curl(address, "/health")[0] == 200


@pytest.mark.timeout(1200)  # two runs of the site playbook's nginx tasks
def test_edge_rate_limit_answers_429(host, address):
    site = REPO / "playbooks/site.yml"
    tight = ["--tags", "nginx_configure", "-e", "nginx_limit_req_rate=1r/s", "-e", "nginx_limit_req_burst=0"]
    try:
        res = run_playbook(site, inventory(host), *tight, timeout=600)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        answers = [
            curl(address, "/mcp", "-X", "POST", "-H", "Content-Type: application/json", "-d", "{}")
            for _ in range(5)
        ]
        statuses = [status for status, _, _ in answers]
        # The first request reaches the app (401: no token); the rest, within a second, are cut at the edge.
        assert statuses[0] == 401 and statuses.count(429) >= 3, statuses
        assert_security_headers(answers[statuses.index(429)][1], "POST /mcp over the limit (429)")
    finally:
        res = run_playbook(site, inventory(host), "--tags", "nginx_configure", timeout=600)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "rate=1r/s" not in host.file("/etc/nginx/nginx.conf").content_string
