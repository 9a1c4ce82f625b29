"""tools, progress streaming, notes persistence, session ids, malformed JSON-RPC, /health and metadata."""

from __future__ import annotations

import json
import time
import uuid

import anyio
import httpx2
from conftest import mcp_session
from mcpops_testlib import ACCEPT_BOTH, INIT_REQUEST, post_body


def test_tools_list_and_call(fleet, issuer):
    s = fleet.main

    async def go():
        async with mcp_session(s.mcp_url, issuer.token(s.mcp_url)) as c:
            tools = (await c.list_tools()).tools
            names = {t.name for t in tools}
            assert {"notes_add", "notes_get", "notes_search", "notes_delete", "slow_count"} <= names
            for t in tools:
                assert t.description, t.name
                assert t.input_schema.get("type") == "object", t.name
                assert "properties" in t.input_schema, t.name
            title = "note-" + uuid.uuid4().hex
            added = await c.call_tool(
                "notes_add", {"title": title, "body": "remember the milk", "tags": ["Shop"]}
            )
            assert not added.is_error
            note = added.structured_content
            assert note["title"] == title and note["tags"] == ["shop"]
            got = await c.call_tool("notes_get", {"note_id": note["id"]})
            assert got.structured_content["body"] == "remember the milk"
            found = await c.call_tool("notes_search", {"query": title[-12:]})
            assert [n["id"] for n in found.structured_content["notes"]] == [note["id"]]
            by_tag = await c.call_tool("notes_search", {"tag": "shop", "limit": 100})
            assert note["id"] in [n["id"] for n in by_tag.structured_content["notes"]]
            deleted = await c.call_tool("notes_delete", {"note_id": note["id"]})
            assert deleted.structured_content["deleted"] is True
            missing = await c.call_tool("notes_get", {"note_id": note["id"]})
            assert missing.is_error
            bad = await c.call_tool("notes_get", {"note_id": "not-a-number"})
            assert bad.is_error

    anyio.run(go)


def test_progress_notifications_arrive_before_the_result(fleet, issuer):
    s = fleet.main
    n, interval_ms = 4, 250

    async def go():
        seen: list[tuple[float, float]] = []

        async def on_progress(progress, total, message):
            seen.append((time.monotonic(), progress))

        async with mcp_session(s.mcp_url, issuer.token(s.mcp_url)) as c:
            t0 = time.monotonic()
            res = await c.call_tool(
                "slow_count", {"n": n, "interval_ms": interval_ms}, progress_callback=on_progress
            )
            t_done = time.monotonic()
        assert not res.is_error
        assert res.content[0].text == f"counted to {n}"
        assert [p for _, p in seen] == [1, 2, 3, 4]
        # Unbuffered: the first notification arrived long before the call returned, and they were spread out.
        total = (n - 1) * interval_ms / 1000
        assert seen[0][0] - t0 < total / 2
        assert t_done - seen[0][0] >= total * 0.8
        assert seen[-1][0] <= t_done

    anyio.run(go)


def test_session_ids_carry_the_instance_id(fleet, issuer):
    s = fleet.main
    tok = issuer.token(s.mcp_url)
    r = httpx2.post(
        s.mcp_url,
        headers={"Authorization": f"Bearer {tok}", "Accept": ACCEPT_BOTH},
        json=INIT_REQUEST,
    )
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    head, _, tail = sid.partition(".")
    assert head == f"p{s.port}" and len(tail) == 32 and int(tail, 16) >= 0


def test_malformed_json_rpc(fleet, issuer):
    s = fleet.main
    tok = issuer.token(s.mcp_url)
    r = post_body(s.mcp_url, b"{this is not json", tok)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700
    r = post_body(s.mcp_url, json.dumps({"hello": "world"}).encode(), tok)
    assert r.status_code == 400
    assert r.json()["error"]["code"] in (-32600, -32602, -32700)


def test_health_and_metadata(fleet, issuer):
    s = fleet.main
    r = httpx2.get(s.base + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"redis": "ok", "auth_server": "ok"}
    assert "timestamp" in body
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        m = httpx2.get(s.base + path)
        assert m.status_code == 200, path
        doc = m.json()
        assert doc["resource"] == s.mcp_url
        assert doc["authorization_servers"] == [issuer.url]
        assert doc["scopes_supported"] == ["mcp"]
