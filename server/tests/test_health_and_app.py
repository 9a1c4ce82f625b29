"""/health while Redis goes away and comes back; a user's own MCPServer through `app:`; request ids;
migrations."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx2
from conftest import mcp_session
from mcpops_server.notes import SCHEMA_VERSION
from mcpops_testlib import ACCEPT_BOTH, INIT_REQUEST, PYTHON, PYTHONPATH, wait_for


def test_health_503_while_redis_is_down_and_200_after(fleet, redis_health):
    s = fleet.health
    r = httpx2.get(s.base + "/health")
    assert r.status_code == 200 and r.json()["checks"]["redis"] == "ok"
    assert r.json()["checks"]["auth_server"] == "disabled"
    redis_health.stop()
    try:

        def down():
            t0 = time.monotonic()
            resp = httpx2.get(s.base + "/health", timeout=5)
            elapsed = time.monotonic() - t0
            assert elapsed < 2.5, elapsed  # bounded by health.timeout (1 s), never hangs
            return resp if resp.status_code == 503 else None

        resp = wait_for(down, 15, "/health to report 503")
        body = resp.json()
        assert body["status"] == "unhealthy"
        assert body["checks"]["redis"] == "unreachable"
        assert "timestamp" in body
        # A short code only: no address, port or exception text for whoever can reach /health ...
        assert not re.search(r"\d+\.\d+\.\d+\.\d+", resp.text), resp.text
        assert "Error" not in resp.text and str(redis_health.port) not in resp.text, resp.text
        # ... the detail is in the log.
        assert re.search(r"health check redis failed: .*Connection", s.log_text())

        # Rate limiting with Redis gone: allowed by default, counted, logged.
        def redis_errors() -> float:
            text = httpx2.get(s.base + "/metrics").text
            return s.metric(text, "mcp_ratelimit_redis_errors_total", action="allow")

        before = redis_errors()
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        for _ in range(40):  # the instance may still hold counts reserved earlier in this minute
            r = httpx2.post(s.mcp_url, json=ping, headers={"Accept": ACCEPT_BOTH})
            assert r.status_code != 429
            if redis_errors() > before:
                break
        assert redis_errors() > before
        assert "rate limit check failed, allowing requests while Redis is unreachable" in s.log_text()
    finally:
        redis_health.start()

    def up():
        resp = httpx2.get(s.base + "/health", timeout=5)
        return resp.status_code == 200 and resp.json()["status"] == "healthy"

    wait_for(up, 15, "/health to recover")


def test_health_is_cached_and_does_not_drive_the_issuer(fleet, issuer):
    s = fleet.main
    jwks_before, meta_before = issuer.jwks_hits, issuer.meta_hits

    def get(_: int) -> httpx2.Response:
        return httpx2.get(s.base + "/health", timeout=10)

    with ThreadPoolExecutor(10) as pool:  # concurrent callers share one check
        answers = list(pool.map(get, range(50)))
    assert {r.status_code for r in answers} == {200}
    assert {r.json()["checks"]["auth_server"] for r in answers} == {"ok"}
    # 50 calls within the cache's 2 s: one fetch, perhaps two if the calls straddle an expiry.
    assert issuer.jwks_hits - jwks_before <= 2, issuer.jwks_hits - jwks_before
    assert issuer.meta_hits - meta_before <= 2


def test_user_app_gets_the_same_treatment(fleet, issuer):
    s = fleet.app
    # auth applies
    r = httpx2.post(s.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]

    async def go():
        async with mcp_session(s.mcp_url, issuer.token(s.mcp_url, scope="")) as c:
            tools = (await c.list_tools()).tools
            assert [t.name for t in tools] == ["shout"]
            assert tools[0].description and tools[0].input_schema["properties"]["text"]
            res = await c.call_tool("shout", {"text": "hi"})
            assert res.content[0].text == "HI!"

    anyio.run(go)
    # the app's own route, health and metrics are there
    assert httpx2.get(s.base + "/hello").text == "hello from the example app"
    assert httpx2.get(s.base + "/health").json()["checks"]["auth_server"] == "ok"
    m = httpx2.get(s.base + "/metrics").text
    assert s.metric(m, "mcp_tool_calls_total", endpoint="/mcp", tool_name="shout", result="success") >= 1
    # stateless mode: no session ids at all
    r = httpx2.post(
        s.mcp_url,
        json=INIT_REQUEST,
        headers={
            "Authorization": f"Bearer {issuer.token(s.mcp_url)}",
            "Accept": ACCEPT_BOTH,
        },
    )
    assert r.status_code == 200 and "mcp-session-id" not in r.headers
    # host validation applies too
    tok = issuer.token(s.mcp_url)
    bad = httpx2.post(
        s.mcp_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"Authorization": f"Bearer {tok}", "Host": "x.example"},
    )
    assert bad.status_code == 421


def test_migrate_is_idempotent(redis_srv, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": PYTHONPATH,
        "REDIS_URL": redis_srv.url,
        "REDIS_KEY_PREFIX": f"mig-{uuid.uuid4().hex[:6]}:",
    }
    env["MCPOPS_CONFIG"] = str(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("auth:\n  enabled: false\n")
    cmd = [PYTHON, "-m", "mcpops_server.cli", "migrate"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"schema_version={SCHEMA_VERSION} changed=true"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert second.stdout.strip() == f"schema_version={SCHEMA_VERSION} changed=false"


def test_notes_survive_a_restart(fleet):
    s = fleet.health  # auth disabled: plain client
    title = "persist-" + uuid.uuid4().hex

    async def add():
        async with mcp_session(s.mcp_url) as c:
            return (await c.call_tool("notes_add", {"title": title, "body": "b"})).structured_content["id"]

    note_id = anyio.run(add)
    assert s.stop() in (0, -15)
    s.start()

    async def get():
        async with mcp_session(s.mcp_url) as c:
            return (await c.call_tool("notes_get", {"note_id": note_id})).structured_content

    assert anyio.run(get)["title"] == title


def test_request_id_is_echoed(fleet):
    r = httpx2.get(fleet.main.base + "/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx2.get(fleet.main.base + "/health")
    assert len(r.headers["x-request-id"]) == 32
