"""The reference toolset: a notes store in Redis, and ``slow_count`` (a streaming probe).

The notes tools advertise the store's bounds (``notes.*`` settings) in their input schemas
(maxLength, maxItems); the store enforces them and its refusals name the setting, so they are not
also given to pydantic, whose message would not. (No ``from __future__ import annotations`` here:
the annotations carry the configured bounds, so they are evaluated when the tools are defined.)
"""

from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.request_state import RequestStateSecurity
from pydantic import Field

from . import __version__
from .config import NotesSettings
from .notes import MAX_RESULTS, NotesError, NotesStore


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


def _bound(**schema: int) -> dict[str, Any]:
    """JSON-schema keywords for a bound the store enforces itself."""
    return {"json_schema_extra": schema}


def build_reference_server(
    name: str,
    ref: StoreRef,
    request_state_security: RequestStateSecurity | None = None,
    notes: NotesSettings | None = None,
) -> MCPServer:
    b = notes or NotesSettings()
    mcp: MCPServer = MCPServer(
        name=name,
        # serverInfo.version: clients (and the rolling upgrade's probe) see which release answers.
        version=__version__,
        instructions=INSTRUCTIONS,
        request_state_security=request_state_security,
        log_level="WARNING",
    )

    owner = "everyone's (shared) notes" if b.shared else "the caller's own notes"

    @mcp.tool(
        description=(
            f"Store a note (title, body, optional tags) among {owner} and return it with its new id. "
            f"Bounds: title up to {b.max_title_length} characters, body up to {b.max_bytes} bytes "
            f"(UTF-8), up to {b.max_tags} tags of up to {b.max_tag_length} characters, "
            f"{b.max_per_principal} notes in all; over a bound the note is refused, nothing is stored."
        )
    )
    async def notes_add(
        ctx: Context,
        title: Annotated[
            str, Field(description="Short title", min_length=1, **_bound(maxLength=b.max_title_length))
        ],
        body: Annotated[
            str, Field(description=f"Note text, up to {b.max_bytes} bytes", **_bound(maxLength=b.max_bytes))
        ] = "",
        tags: Annotated[
            list[Annotated[str, Field(**_bound(maxLength=b.max_tag_length))]],
            Field(description="Optional tags (kept lower-case)", **_bound(maxItems=b.max_tags)),
        ] = [],  # noqa: B006
    ) -> dict[str, Any]:
        try:
            note = await ref.get().add(_principal(ctx), title, body, tags)
        except NotesError as exc:
            raise ToolError(str(exc)) from None
        return note.as_dict()

    @mcp.tool(description=f"Fetch one of {owner} by id.")
    async def notes_get(
        ctx: Context, note_id: Annotated[int, Field(description="Note id", ge=1)]
    ) -> dict[str, Any]:
        note = await ref.get().get(_principal(ctx), note_id)
        if note is None:
            raise ToolError(f"note {note_id} not found")
        return note.as_dict()

    @mcp.tool(
        description=(
            f"Search {owner}, newest first: case-insensitive text match on title and body, optional tag "
            f"filter. Returns at most `limit` notes and about {b.max_result_bytes} bytes of them "
            "(`truncated` is true when that cut the answer short). A busy instance answers with an error; "
            "retry then."
        )
    )
    async def notes_search(
        ctx: Context,
        query: Annotated[
            str,
            Field(
                description="Text to look for; empty matches every note",
                **_bound(maxLength=b.max_query_length),
            ),
        ] = "",
        tag: Annotated[
            Annotated[str, Field(**_bound(maxLength=b.max_tag_length))] | None,
            Field(description="Only notes carrying this tag"),
        ] = None,
        limit: Annotated[
            int, Field(description="Maximum number of notes returned", ge=1, le=MAX_RESULTS)
        ] = 20,
    ) -> dict[str, Any]:
        try:
            found = await ref.get().search(_principal(ctx), query, tag, limit)
        except NotesError as exc:
            raise ToolError(str(exc)) from None
        return {
            "count": len(found.notes),
            "notes": [n.as_dict() for n in found.notes],
            "truncated": found.truncated,
        }

    @mcp.tool(description=f"Delete one of {owner} by id. Returns whether a note was deleted.")
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
