"""Session ids that name the instance owning the session: ``<instance_id>.<32 hex>``.

Several instances sit behind one nginx. The first request of a session carries no id, so it
can land on any instance; nginx then routes every later request by the prefix of its
``Mcp-Session-Id`` header (a ``map``) to the instance that minted it.

The SDK (2.3) mints ids inside ``StreamableHTTPSessionManager._admit_session`` with
``uuid4().hex`` and offers no hook for it. We subclass the manager and override that one
method, keeping its body identical apart from the id. The override is small and the class is
otherwise untouched; if a later SDK adds a session-id factory, this module shrinks to passing it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

logger = logging.getLogger("mcpops.sessions")


def new_session_id(instance_id: str) -> str:
    return f"{instance_id}.{secrets.token_hex(16)}"


def owner_of(session_id: str) -> str | None:
    head, sep, tail = session_id.partition(".")
    return head if sep and len(tail) == 32 else None


class InstanceSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, minting instance-owned session ids."""

    def __init__(self, *args: Any, instance_id: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.instance_id = instance_id

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # Mirrors StreamableHTTPSessionManager._admit_session (mcp 2.3.0) except for the id.
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            return None
        session_id = new_session_id(self.instance_id)
        http_transport = StreamableHTTPServerTransport(
            mcp_session_id=session_id,
            is_json_response_enabled=self.json_response,
            event_store=self.event_store,
            security_settings=self.security_settings,
            retry_interval=self.retry_interval,
            idle_timeout=self.session_idle_timeout,
        )
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = http_transport
        logger.debug("created session %s", session_id)
        return http_transport

    @property
    def open_sessions(self) -> int:
        return len(self._server_instances)

    def close_standalone_streams(self) -> int:
        """Graceful shutdown: end every session's GET (notification) stream so clients let go."""
        n = 0
        for transport in list(self._server_instances.values()):
            try:
                transport.close_standalone_sse_stream()
                n += 1
            except Exception:  # a transport mid-teardown; nothing to close
                logger.debug("could not close a standalone stream", exc_info=True)
        return n
