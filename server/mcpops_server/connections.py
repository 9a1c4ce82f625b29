"""Bounds on HTTP connections that uvicorn itself does not set.

uvicorn closes idle keep-alive connections, but a client that opens a connection and then sends
its request headers slowly, or never finishes them, keeps it open for ever. Behind nginx that cannot
happen (nginx has client_header_timeout); an instance serving TLS itself (tls.cert_file) is exposed
to it. The protocol below closes a connection whose request headers are not complete within
server.header_timeout seconds of the connection opening or of the request's first byte.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("mcpops.connections")


def header_deadline_protocol(timeout: float) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn.Config(http=...) with a request-header deadline."""

    class HeaderDeadlineProtocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._header_deadline is None:
                    self._arm()  # the first bytes of the next request on a kept-alive connection
            else:
                self._disarm()  # the request line and headers are in

        def _arm(self) -> None:
            self._header_deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expired(self) -> None:
            self._header_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                logger.warning(
                    "closed a connection whose request headers did not arrive within %g s",
                    timeout,
                    extra={"event": "header_timeout", "client_ip": self.client[0] if self.client else ""},
                )
                self.transport.close()

    return HeaderDeadlineProtocol
