"""The collection's module mcpops.deploy.mcp_call (plugins/modules/mcp_call.py) against real instances:
the rolling upgrade lets a host back into rotation only when this exchange succeeds, so it must
succeed against a healthy instance and fail, saying why, against everything else."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "mcp_call.py"
spec = importlib.util.spec_from_file_location("mcp_call", MODULE)
mcp_call = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mcp_call)


def params(url: str, **over) -> dict:
    base = {
        "url": url,
        "token": "",
        "host_header": "",
        "ca_path": "",
        "server_name": "",
        "validate_certs": True,
        "tool": "",
        "arguments": {},
        "timeout": 10.0,
    }
    return base | over


def test_a_full_exchange_with_a_tool_call(fleet, issuer):
    s = fleet.main
    call = {"tool": "slow_count", "arguments": {"n": 2, "interval_ms": 0}}
    out = mcp_call.run(params(s.mcp_url, token=issuer.token(s.mcp_url), **call), check_mode=False)
    assert out["server_info"]["name"] == "mcpops-server" and out["server_info"]["version"]
    assert out["session"] is True and "slow_count" in out["tools"]
    assert out["call_result"] == "counted to 2"


def test_check_mode_lists_the_tools_but_calls_none(fleet, issuer):
    s = fleet.main
    out = mcp_call.run(params(s.mcp_url, token=issuer.token(s.mcp_url), tool="slow_count"), check_mode=True)
    assert out["tools"] and out["call_result"] == ""


def test_a_stateless_instance_issues_no_session(fleet, issuer):
    s = fleet.app
    out = mcp_call.run(params(s.mcp_url, token=issuer.token(s.mcp_url)), check_mode=False)
    assert out["session"] is False and out["tools"]


def test_no_token_fails_with_the_challenge(fleet):
    with pytest.raises(mcp_call.CallError, match=r"initialize: HTTP 401 \(WWW-Authenticate: Bearer"):
        mcp_call.run(params(fleet.main.mcp_url), check_mode=False)


def test_an_unknown_tool_fails_naming_what_is_offered(fleet, issuer):
    s = fleet.main
    with pytest.raises(mcp_call.CallError, match="tool = no_such_tool: not offered"):
        mcp_call.run(params(s.mcp_url, token=issuer.token(s.mcp_url), tool="no_such_tool"), check_mode=False)


def test_nothing_listening_fails_without_hanging():
    with pytest.raises(mcp_call.CallError, match="ConnectionRefusedError"):
        mcp_call.run(params("http://127.0.0.1:9/mcp", timeout=2.0), check_mode=False)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"ok": 1}}).encode()),
        (
            "text/event-stream",
            b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\r\n\r\n'
            b'event: message\r\ndata: {"jsonrpc":"2.0","id":3,"result":{"ok":1}}\r\n\r\n',
        ),
    ],
)
def test_answers_are_read_from_json_and_event_streams(content_type, body):
    assert mcp_call.parse_answer(content_type, body, 3)["result"] == {"ok": 1}
