"""The bridge's children on the host (issue 12: "two principals calling a stateful server see
separate state under per_principal"; "killing a child mid-call gives that call an error, and the
next call succeeds").

State: server-everything's gzip-file-as-resource registers a resource demo://resource/session/<name>
in the child that ran it, readable by later calls to that child (a data: URL, so nothing is fetched).
nginx spreads new sessions over a server's instances and each instance has its own children, so
both principals are steered to the same instance (session_on): only there can a shared child show.
"""

from __future__ import annotations

import base64
import gzip
import os

import anyio
import pytest
from conftest import (
    SERVERS,
    children,
    instance_metrics,
    journal,
    main_pid,
    mcp_session,
    metric_labels,
    metric_sum,
    token_for,
    unit,
    wait_until,
)
from mcp.shared.exceptions import MCPError

EVERYTHING = SERVERS["everything"]
PATH = EVERYTHING["path"]


def fresh(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def test_everything_is_per_principal():
    assert EVERYTHING["isolation"] == "per_principal", EVERYTHING


def test_two_principals_see_separate_state_and_each_has_its_own_child(srv, address):
    """nginx sends each principal to one instance (principal affinity), so a principal's new session
    meets its own child again; the other principal has a child of its own wherever it lands."""
    ports = EVERYTHING["ports"]
    alice, bob = token_for("everything", fresh("alice")), token_for("everything", fresh("bob"))
    name = fresh("state") + ".gz"
    uri = f"demo://resource/session/{name}"
    payload = f"written by alice as {name}".encode()
    data = "data:text/plain;base64," + base64.b64encode(payload).decode()

    def count() -> float:
        return sum(metric_sum(instance_metrics(srv, p), "mcpops_bridge_children") for p in ports)

    before = count()

    async def go():
        async with mcp_session(address, PATH, alice) as s:
            made = await s.client.call_tool("gzip-file-as-resource", {"name": name, "data": data})
            assert not made.is_error, made
            first = s.port
        # A new session of the same principal: the same instance, the same child, the same state.
        async with mcp_session(address, PATH, alice) as s:
            assert s.port == first, f"alice's sessions landed on {first} and then {s.port}"
            read = await s.client.read_resource(uri)
            assert gzip.decompress(base64.b64decode(read.contents[0].blob)) == payload
        # Another principal: its own child, which never saw the resource.
        async with mcp_session(address, PATH, bob) as s:
            listed = await s.client.list_resources()
            assert uri not in {str(r.uri) for r in listed.resources}, "bob's child lists alice's resource"
            with pytest.raises(MCPError):
                await s.client.read_resource(uri)

    anyio.run(go)
    after = count()
    assert after - before == 2, f"children of {ports}: {before} before, {after} after two new subjects"
    text = instance_metrics(srv, ports[0])
    assert metric_labels(text, "mcpops_bridge_children"), "mcpops_bridge_children has no server label"
    running = sum(len(children(srv, main_pid(srv, p))) for p in ports)
    assert running == after, f"the metric says {after} children, the host shows {running}"


def test_killing_the_child_mid_call_errors_that_call_and_the_next_call_succeeds(srv, address):
    token = token_for("everything", fresh("crash"))
    ports = EVERYTHING["ports"]

    def all_children() -> dict[int, str]:
        found: dict[int, str] = {}
        for port in ports:
            found.update(children(srv, main_pid(srv, port)))
        return found

    old = set(all_children())

    async def go():
        progressed = anyio.Event()
        async with mcp_session(address, PATH, token) as s:
            warm = await s.client.call_tool("echo", {"message": "warm"})  # starts this principal's child
            assert not warm.is_error, warm
            mine = {pid: args for pid, args in all_children().items() if pid not in old}
            assert len(mine) == 1, f"expected one new child for the new principal, found {mine}"
            ((pid, args),) = mine.items()
            assert "node" in args and "server-everything" in args, args

            async def on_progress(progress, total, message):
                progressed.set()

            async def kill_when_running():
                await progressed.wait()
                await anyio.to_thread.run_sync(lambda: srv.run_expect([0], f"kill -9 {pid}"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_when_running)
                with pytest.raises(MCPError) as failed:
                    await s.client.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 10, "steps": 10},
                        progress_callback=on_progress,
                    )
            after = await s.client.call_tool("echo", {"message": "after the crash"})  # same session
            return pid, str(failed.value), after

    pid, error, after = anyio.run(go)
    assert error, "the interrupted call got no error message"
    assert not after.is_error and "after the crash" in after.content[0].text, after
    wait_until(lambda: pid not in all_children(), 10, what=f"the killed child {pid} to be gone")
    for port in ports:
        assert srv.service(unit(port)).is_running, (
            f"{unit(port)} died with its child\n{journal(srv, unit(port))}"
        )
