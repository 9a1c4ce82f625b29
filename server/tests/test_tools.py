"""The reference toolset as a client sees it: tags keep their value, notes belong to their writer."""

from __future__ import annotations

import uuid

import anyio
from conftest import mcp_session
from mcpops_server.notes import owner_of
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
