"""Calls in flight on /mcp, and how they end when the instance stops.

On SIGTERM the instance lets calls in flight finish for up to server.graceful_timeout. A call that
outlives it must still end as JSON-RPC, not as a cut connection (the client would see an
incomplete chunked read and could not tell a crash from a shutdown). InFlightCalls wraps the /mcp
chain: it remembers each POST's request body and whether its response is still open, and
end_all() answers every open one with a JSON-RPC error (-32000, "shutting down") on its own
stream, closes the stream, and drops whatever the app sends for it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from .asgi import JSON, send_response

logger = logging.getLogger("mcpops.server")

SHUTDOWN_ERROR = -32000  # JSON-RPC "server error" range: implementation-defined
SHUTDOWN_MESSAGE = "The server is shutting down; retry the call"


def _request_ids(body: bytes) -> list[Any]:
    """The ids of the JSON-RPC requests in a POST body (notifications and responses have none)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    messages = payload if isinstance(payload, list) else [payload]
    return [m["id"] for m in messages if isinstance(m, dict) and "method" in m and m.get("id") is not None]


class _Call:
    """One POST on its way: its request body, and whether its response has started, streams, ended.

    ``end()`` must not write into a message ``forward()`` is still sending. Rather than a lock taken
    for every message of every call, ``forward()`` counts its sends in progress, and ``end()``, which
    runs once at shutdown, waits for that count to reach zero (``idle``, made only then).
    """

    __slots__ = ("body", "done", "idle", "send", "sending", "sse", "started")

    def __init__(self, send: Any):
        self.send = send
        self.body = b""
        self.started = False
        self.sse = False
        self.done = False
        self.sending = 0
        self.idle: asyncio.Event | None = None

    async def forward(self, message: Any) -> None:
        if self.done:
            return  # ended by end(): what the app still sends goes nowhere
        if message["type"] == "http.response.start":
            self.started = True
            for k, v in message.get("headers", ()):
                if k.lower() == b"content-type":
                    self.sse = v.startswith(b"text/event-stream")
                    break
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done = True
        self.sending += 1
        try:
            await self.send(message)
        finally:
            self.sending -= 1
            if self.idle is not None and self.sending == 0:
                self.idle.set()

    async def end(self) -> bool:
        """Answer every request of the body with the shutdown error and close. True if it did."""
        while self.sending:
            if self.idle is None or self.idle.is_set():
                self.idle = asyncio.Event()
            await self.idle.wait()
        # Nothing else runs from here to the first await: a forward() after it sees done and drops.
        if self.done:
            return False
        self.done = True
        errors = [
            {"jsonrpc": "2.0", "id": i, "error": {"code": SHUTDOWN_ERROR, "message": SHUTDOWN_MESSAGE}}
            for i in _request_ids(self.body)
        ]
        try:
            if self.started and self.sse:
                events = [b"event: message\r\ndata: %s\r\n\r\n" % json.dumps(e).encode() for e in errors]
                data = b"".join(events)
                await self.send({"type": "http.response.body", "body": data, "more_body": False})
            elif not self.started:
                payload = errors[0] if len(errors) == 1 else errors
                body = json.dumps(payload).encode() if errors else b""
                await send_response(self.send, 503, body, JSON, [(b"retry-after", b"1")])
            else:  # a plain JSON response already started: all that can be done is to end it
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return False  # the client is gone already
        return True


class InFlightCalls:
    """ASGI wrapper of the /mcp chain that can end every open POST with a JSON-RPC error."""

    def __init__(self, app: Any):
        self.app = app
        self.calls: set[_Call] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        call = _Call(send)

        async def receive_tee() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                call.body += message.get("body", b"")
            return message

        self.calls.add(call)
        try:
            await self.app(scope, receive_tee, call.forward)
        finally:
            self.calls.discard(call)

    async def end_all(self) -> int:
        ended = 0
        for call in list(self.calls):
            ended += await call.end()
        if ended:
            logger.warning("graceful timeout: ended %d call(s) still running with a JSON-RPC error", ended)
        return ended
