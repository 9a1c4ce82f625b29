"""The two ASGI chores of the request path: reading a request header, sending a complete response.

Everything before the SDK (the gateway, the auth and rate-limit gates, the session limits, the
shutdown of calls in flight) answers with ``send_response``, so every response built here has the
same shape: ``content-type`` (if any), ``content-length``, then the caller's own headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"

_NO_BODY = frozenset({204, 304})  # RFC 9110 §8.6: no Content-Length on these


def header(scope: Any, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def send_response(
    send: Any,
    status: int,
    body: bytes = b"",
    content_type: bytes | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a whole response (start and body) in two messages."""
    start: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        start.append((b"content-type", content_type))
    if status not in _NO_BODY:
        start.append((b"content-length", str(len(body)).encode()))
    start.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
