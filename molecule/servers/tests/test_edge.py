"""Every server through nginx over TLS with the SDK's client: tools, progress, and one protected
resource per server (issue 12: "Each server is exposed at https://<public host>/<server>/mcp"; "a
token for server A gets 401 on server B"; "progress notifications stream from a bridged server")."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import pytest
from conftest import (
    CA_CERT,
    DEFAULT_SERVER,
    DEFAULT_TESTS,
    INITIALIZE,
    PUBLIC_NAME,
    SERVERS,
    mcp_session,
    metadata_url,
    mint_token,
    raw,
    resource_metadata,
    resource_url,
    token_for,
    url,
)

# One real call per server, and what its answer must hold.
CALLS = {
    "notes": ("notes_search", {"query": "", "limit": 1}, '"notes"'),
    "time": ("get_current_time", {"timezone": "UTC"}, "UTC"),
    "everything": ("echo", {"message": "through nginx and the bridge"}, "through nginx and the bridge"),
    "memory": ("read_graph", {}, "entities"),
    "hostile": ("whoami", {}, "/var/lib/mcpops-hostile"),
    "oldtime": ("get_current_time", {"timezone": "UTC"}, "UTC"),
}
TOOLS = {
    "notes": "notes_add",
    "time": "convert_time",
    "everything": "trigger-long-running-operation",
    "memory": "create_entities",
    "hostile": "hog",
    "oldtime": "convert_time",
}


def text_of(result) -> str:
    parts = [getattr(c, "text", "") for c in result.content]
    if result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def list_and_call(address: str, path: str, token: str, server: str) -> tuple[set[str], object]:
    tool, args, _ = CALLS[server]

    async def go():
        async with mcp_session(address, path, token) as s:
            names = {t.name for t in (await s.client.list_tools()).tools}
            return names, await s.client.call_tool(tool, args)

    return anyio.run(go)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_tools_list_and_a_call_on_each_server(address, server):
    names, result = list_and_call(
        address, SERVERS[server]["path"], token_for(server, f"edge-{server}"), server
    )
    assert TOOLS[server] in names and CALLS[server][0] in names, f"{server}: tools/list gave {sorted(names)}"
    assert not result.is_error, f"{server}: {result}"
    assert CALLS[server][2] in text_of(result), f"{server}: {text_of(result)[:500]}"


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_the_sdk_current_client_on_each_server(address, server):
    """mcp_probe.py: the SDK's `Client`, which negotiates the current (sessionless) revision, as
    today's clients do; the tests above use ClientSession (the 2025 handshake, session-owned)."""
    tool, args, expected = CALLS[server]
    argv = [sys.executable, str(DEFAULT_TESTS / "mcp_probe.py"), url(SERVERS[server]["path"])]
    argv += ["--resolve", f"{PUBLIC_NAME}:{address}", "--ca", str(CA_CERT), "--list"]
    argv += ["--token", token_for(server, f"edge-current-{server}"), "--call", tool, json.dumps(args)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = (
        json.loads(res.stdout.strip().splitlines()[-1])
        if res.stdout.strip()
        else {"stderr": res.stderr[-2000:]}
    )
    assert out.get("ok"), f"{server}: {out}"
    assert TOOLS[server] in out["tools"], out["tools"]
    call = out["calls"][0]
    assert not call["is_error"] and expected in call["text"] + json.dumps(call["structured"]), call


def test_the_default_server_also_answers_at_mcp(address):
    # The token's audience is the one /mcp's own challenge names (the default server's resource).
    challenge = anyio.run(raw, address, "POST", "/mcp", None, INITIALIZE)
    assert challenge.status_code == 401, challenge.text
    meta_url = resource_metadata(challenge.headers.get("www-authenticate", ""))
    assert meta_url, challenge.headers
    meta = anyio.run(raw, address, "GET", meta_url.removeprefix(f"https://{PUBLIC_NAME}"))
    assert meta.status_code == 200, meta.text
    aud = meta.json()["resource"]
    assert aud in (url("/mcp"), resource_url(DEFAULT_SERVER)), meta.json()
    names, result = list_and_call(address, "/mcp", mint_token(sub="edge-default", aud=aud), DEFAULT_SERVER)
    assert TOOLS[DEFAULT_SERVER] in names, sorted(names)
    assert not result.is_error and CALLS[DEFAULT_SERVER][2] in text_of(result), result


def test_progress_streams_from_the_npm_server_as_it_happens(address):
    """server-everything's trigger-long-running-operation: 6 steps over 3 s, each a notification."""
    token = token_for("everything", "edge-progress")
    events: list[float] = []

    async def go():
        async with mcp_session(address, SERVERS["everything"]["path"], token) as s:

            async def on_progress(progress, total, message):
                events.append(time.monotonic())

            start = time.monotonic()
            result = await s.client.call_tool(
                "trigger-long-running-operation", {"duration": 3, "steps": 6}, progress_callback=on_progress
            )
            return start, time.monotonic(), result

    start, end, result = anyio.run(go)
    assert not result.is_error and "Long running operation completed" in text_of(result), result
    assert len(events) == 6, f"{len(events)} progress notifications, 6 expected"
    # Unbuffered: the notifications arrive as the steps happen, spread over the call, not at its end.
    assert events[0] - start < 1.5, f"first notification after {events[0] - start:.2f} s"
    assert events[-1] - events[0] > 2.0, f"notifications within {events[-1] - events[0]:.2f} s"
    assert end - events[0] > 2.0, "the first notification came with the result (buffered)"


@pytest.mark.parametrize(("holder", "other"), [("time", "everything"), ("everything", "time")])
def test_a_token_for_one_server_is_refused_by_another(address, holder, other):
    token = token_for(holder, f"edge-aud-{holder}")
    own = anyio.run(raw, address, "POST", SERVERS[holder]["path"], token, INITIALIZE)
    assert own.status_code == 200, f"the token is refused by its own server {holder}: {own.status_code}"
    refused = anyio.run(raw, address, "POST", SERVERS[other]["path"], token, INITIALIZE)
    assert refused.status_code == 401, (
        f"{holder}'s token on {other}: {refused.status_code} {refused.text[:300]}"
    )
    challenge = refused.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), refused.headers
    assert resource_metadata(challenge) == metadata_url(other), challenge
    meta = anyio.run(raw, address, "GET", "/.well-known/oauth-protected-resource" + SERVERS[other]["path"])
    assert meta.status_code == 200, meta.text
    assert meta.json()["resource"] == resource_url(other), meta.json()
