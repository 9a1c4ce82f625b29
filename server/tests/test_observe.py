"""What the request path reports (observe.py): HTTP and tool metrics move, access and tool-call log
lines carry their fields, and label values fed by clients collapse into a few known ones."""

from __future__ import annotations

import contextlib
import uuid

import anyio
import httpx2
import pytest
from conftest import mcp_session
from mcpops_testlib import RawSession, ServerProc, wait_for


@pytest.fixture(scope="module")
def lowlevel(workdir, redis_srv):
    """A user's low-level Server whose call_tool handler answers any name (it lists only `echo`)."""
    s = ServerProc(
        "lowlevel",
        workdir / "lowlevel",
        {
            "MCP_APP": "mcpops_example.lowlevel:server",
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-low:",
            "AUTH_ENABLED": "false",
            "RATE_LIMIT_ENABLED": "false",
        },
    )
    s.start()
    yield s
    with contextlib.suppress(Exception):
        s.stop()


def test_tool_names_the_server_does_not_list_are_counted_as_unknown(lowlevel):
    s = lowlevel
    with httpx2.Client(timeout=30) as client:
        sess = RawSession(s.mcp_url, client=client)
        assert sess.open().status_code == 200
        # a listed tool, called without listing first, keeps its own name
        ok = sess.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        assert ok["result"]["content"][0]["text"] == "echo: hi"
        for _ in range(500):
            name = "t" + uuid.uuid4().hex
            answer = sess.request("tools/call", {"name": name, "arguments": {}})
            assert answer["result"]["content"][0]["text"] == f"{name}: "  # the app still answers it
        text = client.get(s.base + "/metrics").text
    assert len(text) < 64_000, len(text)
    assert (
        s.metric(text, "mcp_tool_calls_total", endpoint="/mcp", tool_name="unknown", result="success") == 500
    )
    assert s.metric(text, "mcp_tool_calls_total", endpoint="/mcp", tool_name="echo", result="success") == 1
    assert s.metric(text, "mcp_tool_duration_seconds_count", endpoint="/mcp", tool_name="unknown") == 500


def test_metrics_move_after_a_call(fleet, issuer):
    s = fleet.main

    def scrape():
        r = httpx2.get(s.base + "/metrics")
        assert r.status_code == 200
        return r.text

    before = scrape()
    for name in (
        "mcp_auth_attempts_total",
        "mcp_auth_duration_seconds",
        "mcp_tool_calls_total",
        "mcp_tool_duration_seconds",
        "mcp_active_connections",
        "mcp_http_requests_total",
        "mcp_http_request_duration_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in before, name

    async def go():
        async with mcp_session(s.mcp_url, issuer.token(s.mcp_url)) as c:
            await c.call_tool("notes_search", {"query": "zzz"})

    anyio.run(go)
    after = scrape()
    labels = {"endpoint": "/mcp", "tool_name": "notes_search", "result": "success"}
    assert (
        s.metric(after, "mcp_tool_calls_total", **labels)
        == s.metric(before, "mcp_tool_calls_total", **labels) + 1
    )
    ok = {"endpoint": "/mcp", "result": "success"}
    assert s.metric(after, "mcp_auth_attempts_total", **ok) > s.metric(
        before, "mcp_auth_attempts_total", **ok
    )
    post200 = {"path": "/mcp", "method": "POST", "status": "200"}
    assert s.metric(after, "mcp_http_requests_total", **post200) > s.metric(
        before, "mcp_http_requests_total", **post200
    )
    cnt = {"endpoint": "/mcp", "tool_name": "notes_search"}
    assert s.metric(after, "mcp_tool_duration_seconds_count", **cnt) >= 1


def test_json_log_lines_carry_the_fields(fleet, issuer):
    s = fleet.main
    rid = "req-" + uuid.uuid4().hex
    sub = "logger-" + uuid.uuid4().hex[:6]

    async def go():
        async with mcp_session(
            s.mcp_url, issuer.token(s.mcp_url, sub=sub), headers={"X-Request-ID": rid}
        ) as c:
            await c.call_tool("notes_search", {"query": "log"})
            await c.call_tool("notes_get", {"note_id": 987654321})  # fails: gets a tool line of its own

    anyio.run(go)

    def find():
        lines = [x for x in s.log_lines() if x.get("request_id") == rid]
        access = [x for x in lines if x.get("event") == "access" and x.get("tool_name") == "notes_search"]
        failed = [x for x in lines if x.get("event") == "tool_call" and x.get("tool_name") == "notes_get"]
        return (access, failed) if access and failed else None

    access, failed = wait_for(find, 10, "the access and tool-call log lines")
    a = access[0]
    for field in ("timestamp", "level", "logger", "message", "module", "function", "line"):
        assert field in a, field
    assert a["logger"] == "mcpops.access" and a["level"] == "INFO"
    assert a["method"] == "POST" and a["path"] == "/mcp" and a["status"] == 200
    assert a["user_id"] == sub
    assert a["session_id"].startswith(f"p{s.port}.")
    assert a["result"] == "success"
    assert isinstance(a["duration_ms"], float | int)
    f = failed[0]
    assert f["result"] == "error" and f["user_id"] == sub and f["session_id"] == a["session_id"]
    assert isinstance(f["duration_ms"], float | int)
    for field in ("timestamp", "level", "logger", "message", "module", "function", "line"):
        assert field in f, field
