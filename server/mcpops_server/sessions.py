"""Session ids that name the instance owning the session, and limits on how many a client holds.

Ids are ``<instance_id>.<32 hex>``. Several instances sit behind one nginx. The first request of a
session carries no id, so it can land on any instance; nginx then routes every later request by
the prefix of its ``Mcp-Session-Id`` header (a ``map``) to the instance that minted it.

Limits, so that no client can starve the others of sessions:

- ``server.max_sessions``: sessions open on the instance (the SDK's ``max_sessions``); a new
  session beyond it gets 503.
- ``server.max_sessions_per_principal``: sessions one principal (token ``sub``, else the client
  address) holds; its next ``initialize`` gets 429 with a JSON-RPC error, others are unaffected.
- ``server.session_unused_timeout``: a session that has seen nothing but ``initialize`` (and
  ``notifications/initialized``) ends this long after its last request, instead of after
  ``server.session_idle_timeout``. The MCP middleware marks a session used (``mark_used``).

The SDK (2.3) mints ids inside ``StreamableHTTPSessionManager._admit_session`` with
``uuid4().hex`` and offers no hook for it, nor for per-client limits. We subclass the manager and
override that method (its body, a different id, the per-principal count) and ``_discard_session``
(to keep the count), and subclass the transport to shorten the idle deadline of unused sessions
(through its public ``idle_scope``). This module is the only one touching the SDK's session
internals; if a later SDK offers hooks, it shrinks to passing them.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from contextvars import ContextVar
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from . import metrics
from .asgi import JSON, send_response

logger = logging.getLogger("mcpops.sessions")

# Who is asking for a new session: set around each request, read when a session is admitted.
_principal_var: ContextVar[str | None] = ContextVar("mcpops_session_principal", default=None)


def new_session_id(instance_id: str) -> str:
    return f"{instance_id}.{secrets.token_hex(16)}"


def owner_of(session_id: str) -> str | None:
    head, sep, tail = session_id.partition(".")
    return head if sep and len(tail) == 32 else None


class PrincipalSessionLimit(Exception):
    """The principal already holds its share of sessions."""


class SessionTransport(StreamableHTTPServerTransport):
    """The SDK's transport; until the session is used, it expires after ``unused_timeout``."""

    def __init__(self, *args: Any, unused_timeout: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.unused_timeout = unused_timeout
        self.used = False

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().handle_request(scope, receive, send)
        finally:
            self._shorten_if_unused()

    def _shorten_if_unused(self) -> None:
        idle = self.idle_scope
        if self.used or self.unused_timeout is None or idle is None or idle.cancel_called:
            return
        # A finite deadline means nothing is in flight and the idle countdown runs (the SDK sets it
        # to now + idle timeout when the last request ends): bring it forward.
        if math.isfinite(idle.deadline):
            idle.deadline = min(idle.deadline, anyio.current_time() + self.unused_timeout)


class InstanceSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, minting instance-owned session ids and limiting sessions per principal."""

    def __init__(
        self,
        *args: Any,
        instance_id: str,
        max_sessions_per_principal: int | None = None,
        session_unused_timeout: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.instance_id = instance_id
        self.max_sessions_per_principal = max_sessions_per_principal
        self.session_unused_timeout = session_unused_timeout
        self._principal_of: dict[str, str] = {}
        self._sessions_of: dict[str, int] = {}

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        state = scope.get("state") or {}
        principal = state.get("principal") or (f"ip:{state['client_ip']}" if state.get("client_ip") else None)
        token = _principal_var.set(principal)
        try:
            await super().handle_request(scope, receive, send)
        except PrincipalSessionLimit:
            await _refuse(send, self.max_sessions_per_principal or 0)
        finally:
            _principal_var.reset(token)

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # Mirrors StreamableHTTPSessionManager._admit_session (mcp 2.3.0) except for the id, the
        # transport class and the per-principal count. Runs under the SDK's session-creation lock.
        principal = _principal_var.get()
        limit = self.max_sessions_per_principal
        if principal is not None and limit is not None and self._sessions_of.get(principal, 0) >= limit:
            metrics.sessions_rejected("principal_limit").inc()
            logger.warning(
                "refused a new session: the client already holds %d (max_sessions_per_principal)", limit
            )
            raise PrincipalSessionLimit
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            metrics.sessions_rejected("total_limit").inc()
            return None
        session_id = new_session_id(self.instance_id)
        http_transport = SessionTransport(
            mcp_session_id=session_id,
            is_json_response_enabled=self.json_response,
            event_store=self.event_store,
            security_settings=self.security_settings,
            retry_interval=self.retry_interval,
            idle_timeout=self.session_idle_timeout,
            unused_timeout=self.session_unused_timeout,
        )
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = http_transport
        if principal is not None:
            self._principal_of[session_id] = principal
            self._sessions_of[principal] = self._sessions_of.get(principal, 0) + 1
        logger.debug("created session %s", session_id)
        return http_transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        principal = self._principal_of.pop(session_id, None)
        if principal is not None:
            left = self._sessions_of.get(principal, 0) - 1
            if left > 0:
                self._sessions_of[principal] = left
            else:
                self._sessions_of.pop(principal, None)
        await super()._discard_session(session_id, transport)

    def mark_used(self, session_id: str) -> None:
        """The session has served something besides its handshake: it gets the full idle timeout."""
        transport = self._server_instances.get(session_id)
        if isinstance(transport, SessionTransport):
            transport.used = True

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


async def _refuse(send: Any, limit: int) -> None:
    message = f"Too many open sessions for this client (limit {limit}): end one (DELETE) or retry later"
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}).encode()
    await send_response(send, 429, body, JSON)
