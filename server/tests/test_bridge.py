"""The stdio bridge (bridge.py), end to end: real mcpops-server instances whose bridge.command runs
the fixture bridge_child.server as child processes, called with the SDK's streamable HTTP client and
real tokens. Both client generations: ``ClientSession`` (the initialize handshake, a session) and the
current ``Client`` (the sessionless 2026-07-28 revision: server/discover, an envelope on each request),
against children that negotiated a handshake-era version. Waits poll with deadlines; nothing sleeps
to synchronise."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION
from mcpops_server.bridge import ChildPool, params_for_child, result_for_client
from mcpops_server.config import BridgeSettings
from mcpops_testlib import PYTHON, PYTHONPATH, ServerProc, running, wait_for

CHILD = [PYTHON, "-m", "bridge_child.server"]
SECRET = "s3cret-value-for-the-child"


def bridge_env(redis_srv: Any, issuer: Any, name: str, **more: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_srv.url,
        "REDIS_KEY_PREFIX": f"t-{name}:",
        "AUTH_ISSUER_URL": issuer.url,
        "AUTH_JWKS_URL": issuer.url + "/jwks.json",
        "REQUIRED_SCOPES": "mcp",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "MCP_SERVER_NAME": name,
        "MCP_GRACEFUL_TIMEOUT": "5",
        "BRIDGE_COMMAND": json.dumps(CHILD),
        "BRIDGE_ENV": json.dumps({"PYTHONPATH": PYTHONPATH, "FIXTURE_SECRET": SECRET}),
        "BRIDGE_CALL_TIMEOUT": "20",
        "BRIDGE_STARTUP_TIMEOUT": "20",
        "BRIDGE_RESTART_BACKOFF_MAX": "1",
        **more,
    }


def proc(workdir: Any, name: str, env: dict[str, str]) -> ServerProc:
    p = ServerProc(name, workdir / name, {})
    p.env.update(env)
    p.env["RESOURCE_SERVER_URL"] = p.mcp_url
    return p


class Bridges:
    pp: ServerProc  # per_principal, two children at most, small stdout bounds
    shared: ServerProc  # one child for everyone, calls cut after 2 s
    reap: ServerProc  # per_principal, children reaped after half a second
    guard: ServerProc  # one child for everyone, two calls in flight per principal, lines up to 256 KiB


@pytest.fixture(scope="module")
def bridges(workdir, redis_srv, issuer) -> Iterator[Bridges]:
    b = Bridges()
    b.pp = proc(
        workdir,
        "bridge-pp",
        bridge_env(
            redis_srv,
            issuer,
            "bridge-pp",
            BRIDGE_MAX_CHILDREN="2",
            BRIDGE_MAX_LINE_BYTES="65536",
            BRIDGE_MAX_MESSAGES_PER_SECOND="500",
        ),
    )
    shared = bridge_env(
        redis_srv, issuer, "bridge-shared", BRIDGE_ISOLATION="shared", BRIDGE_CALL_TIMEOUT="2"
    )
    b.shared = proc(workdir, "bridge-shared", shared)
    reap = bridge_env(redis_srv, issuer, "bridge-reap", BRIDGE_IDLE_TIMEOUT="0.5")
    b.reap = proc(workdir, "bridge-reap", reap)
    guard = bridge_env(
        redis_srv,
        issuer,
        "bridge-guard",
        BRIDGE_ISOLATION="shared",
        BRIDGE_MAX_CALLS_PER_PRINCIPAL="2",
        BRIDGE_MAX_LINE_BYTES="262144",
    )
    b.guard = proc(workdir, "bridge-guard", guard)
    with running(b.pp, b.shared, b.reap, b.guard):
        yield b


@contextlib.asynccontextmanager
async def session(s: ServerProc, token: str) -> AsyncIterator[tuple[ClientSession, Any]]:
    """The SDK's client, initialized; with the initialize result."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as hc,
        streamable_http_client(s.mcp_url, http_client=hc) as (r, w),
        ClientSession(r, w) as c,
    ):
        init = await c.initialize()
        yield c, init


@contextlib.asynccontextmanager
async def client(s: ServerProc, token: str) -> AsyncIterator[Client]:
    """The SDK's current Client (as molecule's mcp_probe.py uses it), connected: server/discover."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as hc,
        Client(streamable_http_client(s.mcp_url, http_client=hc)) as c,
    ):
        yield c


def token(issuer: Any, s: ServerProc, sub: str) -> str:
    return issuer.token(s.mcp_url, sub=sub)


async def call(s: ServerProc, tok: str, name: str, args: dict[str, Any] | None = None) -> Any:
    async with session(s, tok) as (c, _):
        return await c.call_tool(name, args or {})


def value(result: Any) -> Any:
    assert not result.is_error, result
    return result.structured_content["result"]


def events(s: ServerProc, event: str) -> list[dict[str, Any]]:
    return [x for x in s.log_lines() if x.get("event") == event]


def metrics_text(s: ServerProc) -> str:
    return httpx2.get(s.base + "/metrics").text


def bridge_metric(s: ServerProc, name: str, **labels: str) -> float:
    """One sample of an mcpops_bridge_* metric of this instance's server (label server=its name)."""
    return s.metric(metrics_text(s), f"mcpops_bridge_{name}", server=s.env["MCP_SERVER_NAME"], **labels)


def fresh(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll predicate() until it is truthy (its value), failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await anyio.sleep(0.02)
    return found


# ------------------------------------------------------------------------------------ forwarding


def test_capabilities_tools_resources_prompts_and_errors_are_the_childs(bridges, issuer):
    s = bridges.pp

    async def go():
        async with session(s, token(issuer, s, fresh("alice"))) as (c, init):
            caps = init.capabilities
            assert caps.tools is not None and caps.resources is not None and caps.prompts is not None
            assert init.server_info.name == "bridge-pp"
            assert init.instructions == "Fixture of the bridge tests."
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"counter", "slow", "wait", "crash", "junk", "shout"} <= names
            assert value(await c.call_tool("counter", {})) == 1
            failed = await c.call_tool("fail", {})
            assert failed.is_error and "always fails" in failed.content[0].text
            listed = (await c.list_resources()).resources
            assert [str(r.uri) for r in listed] == ["fixture://hello"]
            read = await c.read_resource("fixture://hello")
            assert read.contents[0].text == "hello from the child"
            templates = (await c.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["fixture://greeting/{name}"]
            assert (await c.read_resource("fixture://greeting/bob")).contents[0].text == "hello, bob"
            prompts = (await c.list_prompts()).prompts
            assert [p.name for p in prompts] == ["review"]
            got = await c.get_prompt("review", {"code": "x = 1"})
            assert "x = 1" in got.messages[0].content.text
            # the child's JSON-RPC error comes back as that error
            with pytest.raises(MCPError) as raised:
                await c.get_prompt("no-such-prompt", {})
            assert "no-such-prompt" in str(raised.value) or "Unknown prompt" in str(raised.value)

    anyio.run(go)
    text = metrics_text(s)
    assert s.metric(text, "mcp_tool_calls_total", endpoint="/mcp", tool_name="counter", result="success") >= 1
    lines = s.log_lines()
    assert lines and all(x.get("server") == "bridge-pp" for x in lines)  # every line names the server


def test_the_current_client_is_served_by_a_handshake_era_child(bridges, issuer):
    """The 2026-07-28 client's envelope stays with the bridge: the child (the SDK's dual-era stdio
    loop, which refuses an enveloped request on a handshake connection) answers every request, and
    the client gets the fields its revision requires."""
    s = bridges.pp

    async def go():
        async with session(s, token(issuer, s, fresh("old"))) as (_, init):
            child_version = init.server_info.version
        async with client(s, token(issuer, s, fresh("modern"))) as c:
            assert c.protocol_version == LATEST_MODERN_VERSION
            assert c.server_info is not None
            assert (c.server_info.name, c.server_info.version) == ("bridge-pp", child_version)
            caps = c.server_capabilities
            assert caps.tools is not None and caps.resources is not None and caps.prompts is not None
            assert c.instructions == "Fixture of the bridge tests."
            listed = await c.list_tools()
            assert {"counter", "slow", "wait", "envelope"} <= {t.name for t in listed.tools}
            assert listed.result_type == "complete" and listed.cache_scope == "private"
            assert value(await c.call_tool("counter", {})) == 1
            seen = json.loads((await c.call_tool("envelope", {})).content[0].text)
            assert seen["protocol_version"] == LATEST_HANDSHAKE_VERSION
            assert not [k for k in seen["meta_keys"] if k.startswith("io.modelcontextprotocol/")], seen
            failed = await c.call_tool("fail", {})
            assert failed.is_error and "always fails" in failed.content[0].text
            assert (await c.read_resource("fixture://greeting/bob")).contents[0].text == "hello, bob"
            assert "x = 1" in (await c.get_prompt("review", {"code": "x = 1"})).messages[0].content.text
            with pytest.raises(MCPError):
                await c.get_prompt("no-such-prompt", {})

    anyio.run(go)


def test_the_current_client_gets_progress_before_the_result(bridges, issuer):
    s = bridges.pp

    async def go():
        seen: list[tuple[float, float]] = []

        async def on_progress(progress, total, message):
            seen.append((time.monotonic(), progress))

        async with client(s, token(issuer, s, fresh("modern-prog"))) as c:
            await c.call_tool("pid", {})  # the child is up: timing below is the call's alone
            res = await c.call_tool("slow", {"n": 3, "interval_ms": 300}, progress_callback=on_progress)
            t_done = time.monotonic()
        assert value(res) == 3
        assert [p for _, p in seen] == [1, 2, 3]
        assert t_done - seen[0][0] >= 0.5  # the first progress came while the call ran

    anyio.run(go)


def test_the_current_clients_cancellation_reaches_the_child(bridges, issuer):
    s = bridges.pp

    async def go():
        async with client(s, token(issuer, s, fresh("modern-cancel"))) as c:
            assert value(await c.call_tool("cancelled", {})) == 0
            with anyio.move_on_after(1):
                await c.call_tool("wait", {"seconds": 30})
            deadline = time.monotonic() + 10
            while value(await c.call_tool("cancelled", {})) != 1:
                assert time.monotonic() < deadline, "the child never saw the cancellation"
                await anyio.sleep(0.05)

    anyio.run(go)


def test_the_envelope_is_translated_per_era():
    """What a child and a client of either era get (no processes: the two translations alone)."""
    client_info = "io.modelcontextprotocol/clientInfo"
    meta = {
        "progressToken": 7,
        "io.modelcontextprotocol/protocolVersion": LATEST_MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/logLevel": "info",
        "com.example/trace": "t1",
    }
    params = {"name": "x", "arguments": {"a": 1}, "_meta": meta, "inputResponses": {}, "requestState": "s"}
    legacy = params_for_child(params, LATEST_HANDSHAKE_VERSION)
    kept = {"progressToken": 7, "com.example/trace": "t1"}
    assert legacy == {"name": "x", "arguments": {"a": 1}, "_meta": kept}
    assert params["_meta"] is meta and len(meta) == 6  # the client's params are not changed
    only_envelope = {"_meta": {k: v for k, v in meta.items() if k.startswith("io.")}}
    assert params_for_child(only_envelope, "2024-11-05") == {}
    # a child of the 2026-07-28 revision: the bridge's envelope instead of the client's
    modern = params_for_child(params, LATEST_MODERN_VERSION)
    assert modern == {
        **params,
        "_meta": {
            **kept,
            "io.modelcontextprotocol/protocolVersion": LATEST_MODERN_VERSION,
            "io.modelcontextprotocol/clientInfo": {
                "name": "mcpops-bridge",
                "version": modern["_meta"][client_info]["version"],
            },
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    }
    assert params_for_child(None, LATEST_MODERN_VERSION)["_meta"][client_info]["name"] == "mcpops-bridge"
    assert params_for_child(None, LATEST_HANDSHAKE_VERSION) is None

    tools = {"tools": [], "nextCursor": "n", "_meta": {"k": 1}}
    info = {"name": "srv", "version": "2.0"}
    assert result_for_client("tools/list", tools, LATEST_HANDSHAKE_VERSION, info) == tools
    modern = result_for_client("tools/list", tools, LATEST_MODERN_VERSION, info)
    assert modern == {
        "tools": [],
        "nextCursor": "n",
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {"k": 1, SERVER_INFO_META_KEY: info},
    }
    called = result_for_client("tools/call", {"content": [], "isError": True}, LATEST_MODERN_VERSION, info)
    assert called["resultType"] == "complete" and "cacheScope" not in called and called["isError"] is True
    # a 2026-07-28 child's result for a handshake-era client: no reserved _meta keys, no input_required
    stamped = {"tools": [], "resultType": "complete", "_meta": {SERVER_INFO_META_KEY: info}}
    assert result_for_client("tools/list", stamped, LATEST_HANDSHAKE_VERSION) == {
        "tools": [],
        "resultType": "complete",
    }
    asking = {"resultType": "input_required", "inputRequests": {}, "requestState": "s"}
    with pytest.raises(MCPError, match="input_required"):
        result_for_client("tools/call", asking, LATEST_HANDSHAKE_VERSION)
    assert result_for_client("tools/call", asking, LATEST_MODERN_VERSION)["resultType"] == "input_required"


def test_the_child_gets_its_environment_and_not_the_instances(bridges, issuer):
    s = bridges.pp
    tok = token(issuer, s, fresh("env"))

    async def go():
        async with session(s, tok) as (c, _):
            assert value(await c.call_tool("env", {"name": "FIXTURE_SECRET"})) == SECRET
            assert value(await c.call_tool("env", {"name": "REDIS_URL"})) is None
            assert value(await c.call_tool("env", {"name": "PATH"}))

    anyio.run(go)
    assert SECRET not in s.log_text()


def test_progress_arrives_before_the_result(bridges, issuer):
    s = bridges.pp
    n, interval_ms = 4, 250

    async def go():
        seen: list[tuple[float, float]] = []

        async def on_progress(progress, total, message):
            seen.append((time.monotonic(), progress))

        async with session(s, token(issuer, s, fresh("prog"))) as (c, _):
            await c.call_tool("pid", {})  # the child is up: timing below is the call's alone
            t0 = time.monotonic()
            args = {"n": n, "interval_ms": interval_ms}
            res = await c.call_tool("slow", args, progress_callback=on_progress)
            t_done = time.monotonic()
        assert value(res) == n
        assert [p for _, p in seen] == [1, 2, 3, 4]
        total = (n - 1) * interval_ms / 1000
        assert seen[0][0] - t0 < total / 2
        assert t_done - seen[0][0] >= total * 0.8

    anyio.run(go)


def test_a_cancelled_call_is_cancelled_in_the_child(bridges, issuer):
    s = bridges.pp
    tok = token(issuer, s, fresh("cancel"))

    async def go():
        async with session(s, tok) as (c, _):
            assert value(await c.call_tool("cancelled", {})) == 0
            with anyio.move_on_after(1):
                await c.call_tool("wait", {"seconds": 30})
            deadline = time.monotonic() + 10
            while value(await c.call_tool("cancelled", {})) != 1:
                assert time.monotonic() < deadline, "the child never saw the cancellation"
                await anyio.sleep(0.05)

    anyio.run(go)


def test_calls_in_flight_share_a_child_and_each_gets_its_own_progress(bridges, issuer):
    s = bridges.pp
    tok = token(issuer, s, fresh("mux"))

    async def go():
        seen: dict[int, list[float]] = {n: [] for n in (2, 3, 4, 5)}
        results: dict[int, Any] = {}
        async with session(s, tok) as (c, _), session(s, tok) as (c2, _):
            pid = value(await c.call_tool("pid", {}))

            async def one(client: ClientSession, n: int) -> None:
                async def on_progress(progress, total, message):
                    seen[n].append(progress)

                args = {"n": n, "interval_ms": 100}
                results[n] = await client.call_tool("slow", args, progress_callback=on_progress)

            async with anyio.create_task_group() as tg:
                for n in seen:
                    tg.start_soon(one, c if n % 2 else c2, n)
            assert value(await c2.call_tool("pid", {})) == pid  # one child served both sessions
        assert {n: value(r) for n, r in results.items()} == {n: n for n in seen}
        assert seen == {n: [float(i) for i in range(1, n + 1)] for n in seen}

    anyio.run(go)


def test_a_child_of_the_2026_07_28_revision_serves_both_clients(workdir, redis_srv, issuer):
    """A stdio server that refuses initialize (naming 2026-07-28 alone) is asked server/discover and
    gets the bridge's envelope on every request; clients of either era are served."""
    command = json.dumps([PYTHON, "-m", "bridge_child.modern"])
    s = proc(workdir, "bridge-modern", bridge_env(redis_srv, issuer, "bridge-modern", BRIDGE_COMMAND=command))

    async def exercise(c: Any) -> None:
        assert {t.name for t in (await c.list_tools()).tools} == {"echo", "steps", "envelope", "ask"}
        assert (await c.call_tool("echo", {"text": "hi"})).content[0].text == "hi"
        seen: list[float] = []

        async def on_progress(progress, total, message):
            seen.append(progress)

        assert (await c.call_tool("steps", {"n": 3}, progress_callback=on_progress)).content[0].text == "3"
        assert seen == [1, 2, 3]
        envelope = json.loads((await c.call_tool("envelope", {})).content[0].text)
        assert envelope["io.modelcontextprotocol/protocolVersion"] == LATEST_MODERN_VERSION
        assert envelope["io.modelcontextprotocol/clientInfo"]["name"] == "mcpops-bridge"  # not the client's

    async def go():
        async with session(s, token(issuer, s, fresh("old"))) as (c, init):
            assert init.capabilities.tools is not None and init.instructions == "Modern fixture."
            assert (init.server_info.name, init.server_info.version) == ("bridge-modern", "9.9.9")
            await exercise(c)
            with pytest.raises(MCPError, match="input_required"):
                await c.call_tool("ask", {})
        async with client(s, token(issuer, s, fresh("new"))) as c:
            assert c.protocol_version == LATEST_MODERN_VERSION and c.instructions == "Modern fixture."
            assert c.server_info is not None
            assert (c.server_info.name, c.server_info.version) == ("bridge-modern", "9.9.9")
            await exercise(c)

    with running(s):
        anyio.run(go)


# ------------------------------------------------------------------------------------ isolation


def test_per_principal_gives_each_subject_its_own_child(bridges, issuer):
    s = bridges.pp
    alice, bob = token(issuer, s, fresh("alice")), token(issuer, s, fresh("bob"))

    async def go():
        assert value(await call(s, alice, "counter")) == 1
        assert value(await call(s, alice, "counter")) == 2  # a new session, the same child
        assert value(await call(s, bob, "counter")) == 1
        assert value(await call(s, alice, "counter")) == 3
        assert value(await call(s, alice, "pid")) != value(await call(s, bob, "pid"))

    anyio.run(go)


def test_shared_gives_everyone_one_child(bridges, issuer):
    s = bridges.shared
    alice, bob = token(issuer, s, fresh("alice")), token(issuer, s, fresh("bob"))

    async def go():
        # The instance's first call: its tool name is not known yet, so ToolObserver lists the tools
        # (for the metric label) from inside the call; that must not run the call twice.
        assert value(await call(s, alice, "counter")) == 1
        assert value(await call(s, bob, "counter")) == 2
        assert value(await call(s, alice, "pid")) == value(await call(s, bob, "pid"))

    anyio.run(go)
    text = metrics_text(s)
    assert s.metric(text, "mcp_tool_calls_total", endpoint="/mcp", tool_name="counter", result="success") == 2


def test_a_call_past_the_call_timeout_is_answered_and_cancelled_in_the_child(bridges, issuer):
    s = bridges.shared  # bridge.call_timeout: 2; after test_shared, which needs the instance fresh

    async def go():
        async with session(s, token(issuer, s, fresh("slowpoke"))) as (c, _):
            before = value(await c.call_tool("cancelled", {}))
            started = time.monotonic()
            with pytest.raises(MCPError) as late:
                await c.call_tool("wait", {"seconds": 30})
            assert 1.5 < time.monotonic() - started < 10
            assert "did not answer within 2 s (bridge.call_timeout)" in str(late.value)
            deadline = time.monotonic() + 10
            while value(await c.call_tool("cancelled", {})) != before + 1:
                assert time.monotonic() < deadline, "the child never saw the cancellation"
                await anyio.sleep(0.05)

    anyio.run(go)


def test_the_cap_on_children_evicts_the_idle_most_and_refuses_when_all_are_busy(bridges, issuer):
    s = bridges.pp  # bridge.max_children: 2
    a, b, c = (token(issuer, s, fresh(n)) for n in ("capa", "capb", "capc"))

    async def go():
        assert value(await call(s, a, "counter")) == 1
        assert value(await call(s, b, "counter")) == 1
        stops = bridge_metric(s, "child_stops_total", reason="evicted")
        assert value(await call(s, c, "counter")) == 1  # a's child, idle longest, makes room
        assert value(await call(s, b, "counter")) == 2  # b's is still there
        assert value(await call(s, a, "counter")) == 1  # a starts over (c's child was idle longest)
        assert bridge_metric(s, "child_stops_total", reason="evicted") >= stops + 2
        assert bridge_metric(s, "children") == 2

        # both children busy: a third principal is refused, with a reason
        async with (
            session(s, a) as (ca, _),
            session(s, b) as (cb, _),
            session(s, c) as (cc, _),  # initialize answers from the capabilities known already
            anyio.create_task_group() as tg,
        ):
            in_flight = [anyio.Event(), anyio.Event()]
            for client, event in zip((ca, cb), in_flight, strict=True):

                async def on_progress(progress, total, message, event=event):
                    event.set()  # the child is working on the call: its first progress arrived

                args = {"n": 1, "interval_ms": 1500}
                tg.start_soon(
                    functools.partial(client.call_tool, "slow", args, progress_callback=on_progress)
                )
            with anyio.fail_after(10):
                for event in in_flight:
                    await event.wait()
            with pytest.raises(MCPError) as refused:
                await cc.call_tool("counter", {})
            assert "bridge.max_children" in str(refused.value)
        assert bridge_metric(s, "refused_total", reason="max_children") >= 1

    anyio.run(go)


def test_idle_children_are_reaped(bridges, issuer):
    s = bridges.reap  # bridge.idle_timeout: 0.5
    tok = token(issuer, s, fresh("idle"))

    async def go():
        return value(await call(s, tok, "pid"))

    first = anyio.run(go)
    wait_for(
        lambda: [x for x in events(s, "bridge_child_stopped") if (x["pid"], x["reason"]) == (first, "idle")],
        10,
        "the idle child to be stopped",
    )
    wait_for(lambda: bridge_metric(s, "children") == 0, 5, "no child left")
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
    assert anyio.run(go) != first


# ------------------------------------------------------------------------------------ containment


def test_a_crash_mid_call_errors_that_call_and_the_next_one_succeeds(bridges, issuer):
    s = bridges.pp
    tok = token(issuer, s, fresh("crash"))

    async def go():
        async with session(s, tok) as (c, _):
            before = value(await c.call_tool("pid", {}))
            with pytest.raises(MCPError) as crashed:
                await c.call_tool("crash", {})
            assert "exited (code 3)" in str(crashed.value)
            after = value(await c.call_tool("pid", {}))  # same session: a new child behind it
            assert after != before
            return before

    pid = anyio.run(go)
    assert [x for x in events(s, "bridge_child_exited") if x.get("pid") == pid and x.get("exit_code") == 3]
    assert bridge_metric(s, "child_restarts_total", reason="exited") >= 1


@pytest.mark.parametrize(
    ("tool", "args", "what"),
    [
        ("junk", {}, "not a JSON-RPC 2.0 message"),
        ("long_note", {"size": 200_000}, "longer than 65536 bytes"),  # no id: nothing to fail alone
        ("flood", {"count": 5000}, "more than 500 lines in a second"),
    ],
)
def test_a_child_breaking_the_protocol_is_killed_logged_and_replaced(bridges, issuer, tool, args, what):
    s = bridges.pp
    tok = token(issuer, s, fresh(tool))

    async def go():
        async with session(s, tok) as (c, _):
            before = value(await c.call_tool("pid", {}))
            started = time.monotonic()
            with pytest.raises(MCPError) as broken:
                await c.call_tool(tool, args)
            assert time.monotonic() - started < 10  # contained, not hung until the call timeout
            assert "broke the protocol" in str(broken.value) and what in str(broken.value)
            assert value(await c.call_tool("pid", {})) != before
            return before

    pid = anyio.run(go)
    lines = [x for x in events(s, "bridge_child_protocol_error") if x.get("pid") == pid]
    assert len(lines) == 1 and lines[0]["server"] == "bridge-pp" and what in lines[0]["message"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert bridge_metric(s, "child_restarts_total", reason="protocol_error") >= 1


def test_an_answer_over_the_line_bound_fails_its_call_alone(bridges, issuer):
    """MEDIUM 5 of issue 18: one tool's oversized answer used to kill a shared child, and every
    other principal's call with it. Now the line is skipped, its call gets an error naming
    bridge.max_line_bytes, and the call in flight beside it is answered by the same child."""
    s = bridges.guard  # shared; bridge.max_line_bytes: 262144
    a, b = token(issuer, s, fresh("big-a")), token(issuer, s, fresh("big-b"))

    async def go():
        results: dict[str, Any] = {}
        async with session(s, a) as (ca, _), session(s, b) as (cb, _):
            await ca.list_tools()  # the client's tool cache and the metric labels: no lists mid-test
            await cb.list_tools()
            pid = value(await ca.call_tool("pid", {}))
            working = anyio.Event()

            async def on_progress(progress, total, message):
                working.set()

            async def slow() -> None:
                args = {"n": 3, "interval_ms": 1000}
                results["slow"] = await ca.call_tool("slow", args, progress_callback=on_progress)

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                with anyio.fail_after(10):
                    await working.wait()  # a's call is in the child
                # the id before the result (the Python SDK's order), then after it (the TypeScript SDK's)
                for tool in ("huge", "huge_last"):
                    started = time.monotonic()
                    with pytest.raises(MCPError) as too_big:
                        await cb.call_tool(tool, {"size": 400_000})
                    assert time.monotonic() - started < 10
                    assert "larger than bridge.max_line_bytes (262144 bytes)" in str(too_big.value)
            assert value(results["slow"]) == 3  # answered by the same child, after the big lines
            assert value(await cb.call_tool("pid", {})) == pid
        return pid

    pid = anyio.run(go)
    lines = [x for x in events(s, "bridge_child_oversized_reply") if x.get("pid") == pid]
    assert len(lines) == 2 and all(x["bytes"] > 262144 and x["server"] == "bridge-guard" for x in lines)
    assert not [x for x in events(s, "bridge_child_protocol_error") if x.get("pid") == pid]


def test_a_line_nested_too_deep_is_a_protocol_error_and_the_child_is_replaced(bridges, issuer):
    """MEDIUM 10 of issue 18: a deeply nested line raised RecursionError in the stdout reader, which
    died; the child stayed "alive", its calls timed out and it was never replaced."""
    s = bridges.guard  # bridge.call_timeout: 20 s; lines up to 256 KiB, so the line is parsed
    tok = token(issuer, s, fresh("nested"))

    async def go():
        async with session(s, tok) as (c, _):
            before = value(await c.call_tool("pid", {}))
            started = time.monotonic()
            with pytest.raises(MCPError) as broken:
                await c.call_tool("nested", {"depth": 100_000})
            assert time.monotonic() - started < 10  # not the call timeout
            assert "broke the protocol" in str(broken.value), broken.value
            assert value(await c.call_tool("pid", {})) != before  # a new child answers
            return before

    pid = anyio.run(go)
    assert [x for x in events(s, "bridge_child_protocol_error") if x.get("pid") == pid]
    wait_for(lambda: not _exists(pid), 10, f"process {pid} to be gone")


def test_one_principal_cannot_take_every_call_of_a_shared_child(bridges, issuer):
    """MEDIUM 5 of issue 18: one token could hold all bridge.max_calls_per_child slots of a shared
    child. Past bridge.max_calls_per_principal its calls are refused, and the others are served."""
    s = bridges.guard  # shared; bridge.max_calls_per_principal: 2
    a, b = token(issuer, s, fresh("greedy")), token(issuer, s, fresh("modest"))

    async def go():
        async with session(s, a) as (ca, _), session(s, b) as (cb, _):
            await ca.list_tools()  # the client's tool cache and the metric labels: no lists mid-test
            await cb.list_tools()
            async with anyio.create_task_group() as tg:
                in_flight = [anyio.Event(), anyio.Event()]
                for event in in_flight:

                    async def on_progress(progress, total, message, event=event):
                        event.set()  # the child works on this call

                    args = {"n": 1, "interval_ms": 3000}
                    call_a = functools.partial(ca.call_tool, "slow", args, progress_callback=on_progress)
                    tg.start_soon(call_a)
                with anyio.fail_after(10):
                    for event in in_flight:
                        await event.wait()
                with pytest.raises(MCPError) as refused:
                    await ca.call_tool("counter", {})
                assert "bridge.max_calls_per_principal" in str(refused.value)
                assert value(await cb.call_tool("counter", {})) >= 1  # b is served meanwhile
            assert value(await ca.call_tool("counter", {})) >= 1  # a's calls answered: its slots free again

    anyio.run(go)
    assert bridge_metric(s, "refused_total", reason="max_calls_per_principal") >= 1


def test_the_childs_stderr_goes_to_the_log_not_to_the_client(bridges, issuer):
    s = bridges.pp
    marker = fresh("stderr-marker")

    async def go():
        return await call(s, token(issuer, s, fresh("stderr")), "shout", {"text": marker})

    res = anyio.run(go)
    assert value(res) == "shouted" and marker not in json.dumps(res.model_dump(mode="json"))
    line = wait_for(
        lambda: [x for x in events(s, "bridge_child_stderr") if x["message"] == marker], 5, "the stderr line"
    )
    assert line[0]["server"] == "bridge-pp" and line[0]["pid"]


# ------------------------------------------------------------------------------------ starts cut short

SLOW_START = (PYTHON, "-m", "bridge_child.slow_start")


def slow_start(pid_dir: Path, **more: Any) -> BridgeSettings:
    """A bridge whose children take ten minutes to answer initialize, recording their pids."""
    env = (("PYTHONPATH", PYTHONPATH), ("PID_DIR", str(pid_dir)), ("INIT_DELAY", "600"))
    settings: dict[str, Any] = {"startup_timeout": 60.0, "call_timeout": 60.0, "stop_timeout": 1.0}
    return BridgeSettings(command=SLOW_START, env=env, **{**settings, **more})


def started(pid_dir: Path) -> list[tuple[int, int]]:
    """(child, its helper) of each child of slow_start that got initialize."""
    found = [f.read_text().split() for f in pid_dir.iterdir() if not f.name.endswith(".tmp")]
    return [(int(child), int(helper)) for child, helper in found]


def _exists(pid: int) -> bool:
    """A process, or a zombie nobody reaped: a child of this process must be neither."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(pid: int) -> bool:
    """A process that is not a zombie (the helpers are reaped by whoever adopted them, if at all)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_all(pid_dir: Path) -> None:
    """What a failing test would leave behind, killed (the fix makes this a no-op)."""
    for child, helper in started(pid_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(helper, signal.SIGKILL)


def test_starts_cut_short_leave_no_process(tmp_path):
    """HIGH 1 of issue 18: a request cancelled while its child started (the client gone, or
    bridge.call_timeout passed during initialize) left the process running, outside every cap and
    unseen by aclose(). Six such starts must leave no process, reaped, nor its helper."""
    settings = slow_start(tmp_path, call_timeout=2.0)
    errors: list[str] = []

    async def go() -> None:
        pool = ChildPool(settings, "slow-start")
        await pool.start()

        async def one(principal: str, scope: anyio.CancelScope) -> None:
            with scope:
                try:
                    await pool.forward(principal, "tools/list", None, None)
                except MCPError as exc:
                    errors.append(str(exc))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                scope = anyio.CancelScope()
                tg.start_soon(one, f"user-{i}", scope)
                await until(lambda i=i: len(started(tmp_path)) == i + 1, 20, f"child {i} to get initialize")
                if i % 2 == 0:
                    scope.cancel()  # the client went away; the odd ones wait for bridge.call_timeout
        assert len(errors) == 3 and all("(bridge.call_timeout)" in e for e in errors), errors
        pids = started(tmp_path)
        assert len(pids) == 6
        await until(lambda: not [c for c, _ in pids if _exists(c)], 10, "the six children to be gone, reaped")
        await until(lambda: not [h for _, h in pids if _running(h)], 10, "their helpers to be gone")
        assert pool.running == 0 and all(slot.child is None for slot in pool.slots.values())
        assert not pool.starting
        with anyio.fail_after(10):
            await pool.aclose()  # nothing left to stop

    try:
        anyio.run(go)
    finally:
        _kill_all(tmp_path)


def test_shutdown_stops_a_child_still_starting(tmp_path):
    """aclose() stops the children still starting too (stdin closed, SIGTERM, then the group's
    SIGKILL), and their request gets an error."""
    errors: list[str] = []

    async def go() -> tuple[int, int]:
        pool = ChildPool(slow_start(tmp_path), "slow-start")
        await pool.start()

        async def one() -> None:
            try:
                await pool.forward("late", "tools/list", None, None)
            except MCPError as exc:
                errors.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            [(child, helper)] = await until(lambda: started(tmp_path), 20, "the child to get initialize")
            with anyio.fail_after(15):
                await pool.aclose()
            assert not _exists(child)  # stopped and reaped by the time aclose() returns
        return child, helper

    try:
        _child, helper = anyio.run(go)
        assert len(errors) == 1 and "stopped" in errors[0], errors
        wait_for(lambda: not _running(helper), 10, "the helper in its group to be gone")
    finally:
        _kill_all(tmp_path)


# ------------------------------------------------------------------------------------ shutdown


def test_shutdown_stops_the_children(workdir, redis_srv, issuer):
    s = proc(workdir, "bridge-stop", bridge_env(redis_srv, issuer, "bridge-stop", BRIDGE_STOP_TIMEOUT="1"))
    with running(s):
        tok = token(issuer, s, fresh("stop"))

        async def go():
            return value(await call(s, tok, "pid"))

        pid = anyio.run(go)
        assert s.stop() in (0, -15)  # uvicorn re-raises the SIGTERM it drained for
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    stopped = [x for x in events(s, "bridge_child_stopped") if x.get("pid") == pid]
    assert stopped and stopped[0]["reason"] == "shutdown"


# ------------------------------------------------------------------------------------ a published server


EVERYTHING = "@modelcontextprotocol/server-everything@2026.8.31"


@pytest.mark.published
def test_published_npm_server_everything_through_the_bridge(tmp_path, redis_srv, issuer):
    """A real published stdio server: installed with npm (no install scripts), run with node."""
    import shutil
    import subprocess

    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are not on PATH: the published server cannot be installed")
    prefix = tmp_path / "everything"
    prefix.mkdir()
    done = subprocess.run(
        [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", str(prefix), EVERYTHING],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    entry = prefix / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    env = bridge_env(redis_srv, issuer, "everything", BRIDGE_COMMAND=json.dumps([node, str(entry), "stdio"]))
    env["BRIDGE_ENV"] = "{}"
    s = proc(tmp_path, "everything", env)
    with running(s):

        async def on_progress(progress, total, message):
            seen.append(progress)

        async def exercise(c: Any) -> None:
            """What both clients do: list, call, call with progress (the same methods on both)."""
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"echo", "trigger-long-running-operation"} <= names, names
            echoed = await c.call_tool("echo", {"message": "through the bridge"})
            assert not echoed.is_error
            assert "through the bridge" in echoed.content[0].text
            seen.clear()
            args = {"duration": 1, "steps": 3}
            done = await c.call_tool("trigger-long-running-operation", args, progress_callback=on_progress)
            assert not done.is_error and "completed" in done.content[0].text
            assert seen == [1, 2, 3]

        async def go():
            async with session(s, token(issuer, s, fresh("npm"))) as (c, init):
                assert init.capabilities.tools is not None
                await exercise(c)
            # The current Client: server/discover, then every request in the 2026-07-28 envelope; the
            # child negotiated a handshake-era version and must get none of it, the client must get
            # the fields its revision requires (before the fix: "Handler returned an invalid result").
            async with client(s, token(issuer, s, fresh("npm-modern"))) as c:
                assert c.protocol_version == LATEST_MODERN_VERSION
                assert c.server_capabilities.tools is not None
                assert c.server_info is not None and c.server_info.name == "everything"
                await exercise(c)

        seen: list[float] = []
        anyio.run(go)
