"""The reference toolset as a client sees it: tags keep their value, notes belong to their writer."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import anyio
import pytest
from conftest import mcp_session
from mcpops_server.notes import owner_of
from mcpops_testlib import RedisServer, ServerProc
from redis.asyncio import Redis


def test_tags_keep_commas_and_unicode(fleet, issuer):
    s = fleet.main
    tags = ["red,green", "Grüße", "日本語 タグ"]
    title = "tags-" + uuid.uuid4().hex

    async def go():
        async with mcp_session(s.mcp_url, issuer.token(s.mcp_url)) as c:
            added = await c.call_tool("notes_add", {"title": title, "tags": tags})
            assert not added.is_error, added.content
            note = added.structured_content
            assert note["tags"] == ["red,green", "grüße", "日本語 タグ"]
            got = (await c.call_tool("notes_get", {"note_id": note["id"]})).structured_content
            assert got["tags"] == note["tags"]
            by_tag = await c.call_tool("notes_search", {"tag": "red,green", "limit": 100})
            assert note["id"] in [n["id"] for n in by_tag.structured_content["notes"]]
            assert [n["tags"] for n in by_tag.structured_content["notes"] if n["id"] == note["id"]] == [
                note["tags"]
            ]
            by_half = await c.call_tool("notes_search", {"tag": "red", "limit": 100})
            assert note["id"] not in [n["id"] for n in by_half.structured_content["notes"]]
            by_unicode = await c.call_tool("notes_search", {"tag": "Grüße", "limit": 100})
            assert note["id"] in [n["id"] for n in by_unicode.structured_content["notes"]]

    anyio.run(go)


def test_notes_belong_to_the_principal_that_wrote_them(fleet, issuer, redis_srv):
    s = fleet.main
    alice, bob = "alice-" + uuid.uuid4().hex[:6], "bob:" + uuid.uuid4().hex[:6] + "/*?"
    word = "word" + uuid.uuid4().hex

    async def go():
        async with (
            mcp_session(s.mcp_url, issuer.token(s.mcp_url, sub=alice)) as a,
            mcp_session(s.mcp_url, issuer.token(s.mcp_url, sub=bob)) as b,
        ):
            mine = (
                await a.call_tool("notes_add", {"title": "alice " + word, "tags": ["t"]})
            ).structured_content
            theirs = (await b.call_tool("notes_add", {"title": "bob " + word})).structured_content
            assert (await a.call_tool("notes_get", {"note_id": mine["id"]})).structured_content == mine
            stolen = await b.call_tool("notes_get", {"note_id": mine["id"]})
            assert stolen.is_error and f"note {mine['id']} not found" in stolen.content[0].text
            found = (await b.call_tool("notes_search", {"query": word})).structured_content["notes"]
            assert [n["id"] for n in found] == [theirs["id"]]
            everything = (await b.call_tool("notes_search", {"limit": 100})).structured_content["notes"]
            assert mine["id"] not in [n["id"] for n in everything]
            gone = await b.call_tool("notes_delete", {"note_id": mine["id"]})
            assert gone.structured_content == {"deleted": False, "id": mine["id"]}
            assert not (await a.call_tool("notes_get", {"note_id": mine["id"]})).is_error
            by_tag = (await a.call_tool("notes_search", {"tag": "t"})).structured_content["notes"]
            assert mine["id"] in [n["id"] for n in by_tag]
            return mine["id"]

    mine_id = anyio.run(go)

    async def keys():
        async with Redis.from_url(redis_srv.url, decode_responses=True) as r:
            return [k async for k in r.scan_iter(match="t-main:*")]

    ks = anyio.run(keys)
    # Keyed by a digest of the principal, never by the subject itself.
    assert f"t-main:notes:{owner_of('sub:' + alice)}:{mine_id}" in ks
    assert not [k for k in ks if alice in k or bob in k], ks


# ------------------------------------------------------------------------ a hostile principal

MAX_NOTES = 150  # notes.max_per_principal for this server; the other bounds keep their defaults
ABUSE_SECONDS = 6.0
RSS_GROWTH_BOUND = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def bounded(workdir, redis_srv, issuer):
    s = ServerProc("bounded", workdir / "bounded", {})
    s.env.update(
        {
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-bounded:",
            "AUTH_SERVER_URL": issuer.url,
            "RESOURCE_SERVER_URL": f"http://127.0.0.1:{s.port}/mcp",
            "RATE_LIMIT_PER_MINUTE": "10000000",
            "NOTES_MAX_PER_PRINCIPAL": str(MAX_NOTES),
            "NOTES_MAX_CONCURRENT_SEARCHES": "2",
            "NOTES_SEARCH_WAIT": "0.05",
        }
    )
    s.start()
    yield s
    s.stop()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _error_text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_a_hostile_principal_cannot_exhaust_the_server(bounded, issuer):
    s = bounded
    assert s.proc is not None
    pid = s.proc.pid
    hostile = issuer.token(s.mcp_url, sub="hostile-" + uuid.uuid4().hex[:6])
    victim = issuer.token(s.mcp_url, sub="victim-" + uuid.uuid4().hex[:6])
    big_body = "é" * 8192  # 16384 bytes: exactly notes.max_bytes
    big_tags = [f"{i:02d}" + "t" * 62 for i in range(16)]  # 16 tags of 64 characters
    outcomes: dict[str, int] = {"ok": 0, "busy": 0}
    victim_latencies: list[float] = []

    async def refused_inputs(c) -> None:
        tools = {t.name: t.input_schema for t in (await c.list_tools()).tools}
        add = tools["notes_add"]["properties"]
        assert add["body"]["maxLength"] == 16384 and add["title"]["maxLength"] == 200
        assert add["tags"]["maxItems"] == 16 and add["tags"]["items"]["maxLength"] == 64
        assert tools["notes_search"]["properties"]["query"]["maxLength"] == 200
        over = [
            ({"title": "t", "tags": ["x" * 44_000]}, "notes.max_tag_length is 64"),
            ({"title": "t", "body": "é" * 8193}, "the body is 16386 bytes (UTF-8); notes.max_bytes is 16384"),
            ({"title": "t", "body": "x" * 16385}, "notes.max_bytes is 16384"),
            ({"title": "t", "tags": [str(i) for i in range(17)]}, "17 tags given; notes.max_tags is 16"),
            ({"title": "x" * 201}, "notes.max_title_length is 200"),
        ]
        for args, message in over:
            res = await c.call_tool("notes_add", args)
            assert res.is_error and message in _error_text(res), _error_text(res)
        res = await c.call_tool("notes_search", {"query": "q" * 201})
        assert res.is_error and "notes.max_query_length is 200" in _error_text(res)
        assert (await c.call_tool("notes_search", {"limit": 100})).structured_content["count"] == 0

    async def fill(c, stop: anyio.Event, stored: list[int]) -> None:
        while not stop.is_set():
            res = await c.call_tool("notes_add", {"title": "x" * 200, "body": big_body, "tags": big_tags})
            if res.is_error:
                assert "notes.max_per_principal" in _error_text(res), _error_text(res)
                stop.set()
            else:
                stored.append(res.structured_content["id"])

    async def abuse(c, n: int, deadline: float) -> None:
        searches = [
            {"limit": 100},
            {"query": "no such text"},
            {"tag": "no-such-tag"},
            {"query": "é", "limit": 100},
        ]
        i = n
        while time.monotonic() < deadline:
            res = await c.call_tool("notes_search", searches[i % len(searches)])
            i += 1
            if res.is_error:
                assert "notes.max_concurrent_searches" in _error_text(res), _error_text(res)
                outcomes["busy"] += 1
                continue
            outcomes["ok"] += 1
            got = res.structured_content
            assert got["count"] <= 100
            assert sum(len(json.dumps(n, ensure_ascii=False).encode()) for n in got["notes"]) < 300_000

    async def bystander(c, deadline: float) -> None:
        async def timed(name: str, args: dict):
            t0 = time.monotonic()
            res = await c.call_tool(name, args)
            victim_latencies.append(time.monotonic() - t0)
            return res

        added = await timed("notes_add", {"title": "mine", "body": "quiet"})
        assert not added.is_error, _error_text(added)
        mine = added.structured_content["id"]
        while time.monotonic() < deadline:
            got = await timed("notes_get", {"note_id": mine})
            assert got.structured_content["body"] == "quiet"
            found = await timed("notes_search", {"limit": 100})
            if found.is_error:  # the instance's search slots are shared: busy is an answer too
                assert "notes.max_concurrent_searches" in _error_text(found), _error_text(found)
            else:
                assert [n["id"] for n in found.structured_content["notes"]] == [mine]

    async def go():
        async with mcp_session(s.mcp_url, hostile) as c:
            await refused_inputs(c)
        stop, stored = anyio.Event(), []
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(_with_session, s.mcp_url, hostile, lambda c: fill(c, stop, stored))
        assert len(stored) == MAX_NOTES  # exactly the bound, though four clients raced for it
        baseline = _status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak of what follows
        deadline = time.monotonic() + ABUSE_SECONDS
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(_with_session, s.mcp_url, hostile, lambda c, n=n: abuse(c, n, deadline))
            tg.start_soon(_with_session, s.mcp_url, victim, lambda c: bystander(c, deadline))
        peak = _status_kib(pid, "VmHWM")
        return baseline, peak

    baseline, peak = anyio.run(go)
    slowest = max(victim_latencies, default=0.0)
    print(
        f"RSS {baseline} KiB, at most {peak} KiB during the searches; {outcomes}; bystander {slowest:.3f} s"
    )
    assert (peak - baseline) * 1024 < RSS_GROWTH_BOUND, (baseline, peak, outcomes)
    assert outcomes["ok"] > 0 and outcomes["busy"] > 0, outcomes
    assert victim_latencies and slowest < 2.0, victim_latencies


async def _with_session(url: str, token: str, body) -> None:
    async with mcp_session(url, token) as c:
        await body(c)


def test_a_frozen_redis_costs_a_notes_call_about_the_socket_timeout(workdir):
    """Redis hangs (SIGSTOP): a notes call ends as a tool error after about redis.socket_timeout (1 s
    by default), not after many seconds, and the instance answers again once Redis is back."""
    frozen_redis = RedisServer(workdir / "redis-notes-frozen")
    frozen_redis.start()
    s = ServerProc(
        "notes-frozen",
        workdir / "notes-frozen",
        {"REDIS_URL": frozen_redis.url, "AUTH_ENABLED": "false", "RATE_LIMIT_ENABLED": "false"},
    )
    s.start()
    try:

        async def go() -> tuple[bool, float, bool]:
            async with mcp_session(s.mcp_url) as c:
                with frozen_redis.frozen():
                    t0 = time.monotonic()
                    res = await c.call_tool("notes_add", {"title": "while frozen"})
                    took = time.monotonic() - t0
                after = await c.call_tool("notes_add", {"title": "after"})
            return res.is_error, took, after.is_error

        failed, took, failed_after = anyio.run(go)
        assert failed, "a notes call with Redis frozen did not report an error"
        assert took < 2.5, f"the call took {took:.1f} s with Redis frozen (socket timeout 1 s)"
        assert not failed_after, s.fail("notes_add failed after Redis was back")
    finally:
        s.stop()
        frozen_redis.stop()
