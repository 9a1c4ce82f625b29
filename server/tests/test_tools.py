"""The reference toolset as a client sees it: tags keep their value."""

from __future__ import annotations

import uuid

import anyio
from conftest import mcp_session


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
