"""The reference toolset: a notes store in Redis, and ``slow_count`` (a streaming probe)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.request_state import RequestStateSecurity
from pydantic import Field

from .notes import NotesStore


class StoreRef:
    """Filled in by the app's lifespan once Redis is connected."""

    store: NotesStore | None = None

    def get(self) -> NotesStore:
        if self.store is None:
            raise ToolError("the notes store is not available")
        return self.store


INSTRUCTIONS = (
    "Reference toolset of mcpops-server: a notes store (notes_add, notes_get, notes_search, "
    "notes_delete) and slow_count, which streams progress notifications."
)


def _principal(ctx: Context) -> str | None:
    """Who is calling: the principal the auth gate put in the request's state (None without auth)."""
    request = ctx.request_context.request
    state = getattr(request, "scope", {}).get("state") or {}
    return state.get("principal")


def build_reference_server(
    name: str, ref: StoreRef, request_state_security: RequestStateSecurity | None = None
) -> MCPServer:
    mcp: MCPServer = MCPServer(
        name=name,
        instructions=INSTRUCTIONS,
        request_state_security=request_state_security,
        log_level="WARNING",
    )

    @mcp.tool(description="Store a note (title, body, optional tags) and return it with its new id.")
    async def notes_add(
        ctx: Context,
        title: Annotated[str, Field(description="Short title", min_length=1, max_length=200)],
        body: Annotated[str, Field(description="Note text", max_length=100_000)] = "",
        tags: Annotated[list[str], Field(description="Optional tags", max_length=20)] = [],  # noqa: B006
    ) -> dict[str, Any]:
        note = await ref.get().add(_principal(ctx), title, body, tags)
        return note.as_dict()

    @mcp.tool(description="Fetch one note by id.")
    async def notes_get(
        ctx: Context, note_id: Annotated[int, Field(description="Note id", ge=1)]
    ) -> dict[str, Any]:
        note = await ref.get().get(_principal(ctx), note_id)
        if note is None:
            raise ToolError(f"note {note_id} not found")
        return note.as_dict()

    @mcp.tool(
        description=(
            "Search notes, newest first: case-insensitive text match on title and body, optional tag filter."
        )
    )
    async def notes_search(
        ctx: Context,
        query: Annotated[str, Field(description="Text to look for; empty matches every note")] = "",
        tag: Annotated[str | None, Field(description="Only notes carrying this tag")] = None,
        limit: Annotated[int, Field(description="Maximum number of notes returned", ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        notes = await ref.get().search(_principal(ctx), query, tag, limit)
        return {"count": len(notes), "notes": [n.as_dict() for n in notes]}

    @mcp.tool(description="Delete a note by id. Returns whether a note was deleted.")
    async def notes_delete(
        ctx: Context, note_id: Annotated[int, Field(description="Note id", ge=1)]
    ) -> dict[str, Any]:
        return {"deleted": await ref.get().delete(_principal(ctx), note_id), "id": note_id}

    @mcp.tool(
        description=(
            "Count from 1 to n, sending one progress notification every interval_ms milliseconds before "
            "returning. A probe for unbuffered streaming (SSE) through every proxy on the path."
        )
    )
    async def slow_count(
        ctx: Context,
        n: Annotated[int, Field(description="How many progress notifications to send", ge=1, le=1000)] = 5,
        interval_ms: Annotated[
            int, Field(description="Pause between notifications, ms", ge=0, le=60_000)
        ] = 200,
    ) -> str:
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"count {i}/{n}")
            if i < n and interval_ms:
                await anyio.sleep(interval_ms / 1000)
        return f"counted to {n}"

    return mcp
