"""Metrics stay bounded: label values fed by clients collapse into a few known ones."""

from __future__ import annotations

import contextlib
import uuid

import httpx2
import pytest
from mcpops_testlib import RawSession, ServerProc


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
