"""Where we reach into the MCP SDK (2.3) and sse-starlette beyond their public API.

Every private attribute of an ``mcp.*`` object, every override of a private method, and the
sse-starlette switch for shutdown are here and nowhere else, so an SDK upgrade is checked against
this one file:

- ``MCPServer._lowlevel_server`` (the low-level ``Server`` we drive), ``MCPServer._tool_manager``
  (whether a tool exists, for the metric labels), ``MCPServer._custom_starlette_routes`` (the user's
  routes, served next to ours), ``Server._session_manager`` (set so that ``MCPServer.session_manager``
  keeps working for user code, as if ``streamable_http_app()`` had been called).
- The session manager: the SDK (2.3) mints ids inside ``StreamableHTTPSessionManager._admit_session``
  with ``uuid4().hex`` and offers no hook for it, nor for per-client limits. ``InstanceSessionManager``
  overrides that method (its body, with our id, our transport class and the per-principal count of
  sessions.py) and ``_discard_session`` (to keep the count), and reads ``_server_instances``.
  ``SessionTransport`` shortens the idle deadline of unused sessions through the public
  ``idle_scope``. If a later SDK offers hooks, this shrinks to passing them.
- The request-state key ring replaces the ``RequestStateBoundary`` the SDK put in the middleware list.
- sse-starlette's ``AppStatus``: the SDK's SSE responses end the moment uvicorn sees SIGTERM unless
  its automatic drain is turned off; then we end them ourselves (``end_sse_streams``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from sse_starlette.sse import AppStatus
from starlette.routing import BaseRoute

from . import metrics
from .sessions import PrincipalSessionLimit, SessionsPerPrincipal, new_session_id, refuse_session

logger = logging.getLogger("mcpops.sessions")

# Who is asking for a new session: set around each request, read when a session is admitted.
_principal_var: ContextVar[str | None] = ContextVar("mcpops_session_principal", default=None)


# ------------------------------------------------------------------------------- the server object


def lowlevel_server(server: MCPServer | Server[Any]) -> Server[Any]:
    """The low-level ``Server`` behind an ``MCPServer`` (a low-level one is its own)."""
    return server._lowlevel_server if isinstance(server, MCPServer) else server


def tool_lookup(server: MCPServer | Server[Any]) -> Callable[[str], bool] | None:
    """For an ``MCPServer``, a function telling whether it has a tool of that name; None otherwise."""
    manager = getattr(server, "_tool_manager", None)
    if manager is None:
        return None
    return lambda name: manager.get_tool(name) is not None


def custom_routes(server: MCPServer | Server[Any]) -> list[BaseRoute]:
    """The routes an ``MCPServer`` was given with ``custom_route``."""
    return list(server._custom_starlette_routes) if isinstance(server, MCPServer) else []


def attach_session_manager(lowlevel: Server[Any], manager: StreamableHTTPSessionManager) -> None:
    """Make ``manager`` the one ``MCPServer.session_manager`` returns."""
    lowlevel._session_manager = manager


def install_key_ring(lowlevel: Server[Any], keys: tuple[bytes, ...], audience: str) -> None:
    """Swap the SDK's request-state boundary for one sealing with the configured key ring."""
    security = RequestStateSecurity(keys=list(keys))
    boundary = RequestStateBoundary(security, default_audience=audience)
    chain = lowlevel.middleware
    for i, middleware in enumerate(chain):
        if isinstance(middleware, RequestStateBoundary):
            chain[i] = boundary
            return
    chain.insert(0, boundary)


# ------------------------------------------------------------------------------- SSE at shutdown


def keep_sse_streams_at_shutdown() -> None:
    """Stop sse-starlette from ending every SSE stream as soon as uvicorn sees SIGTERM."""
    AppStatus.disable_automatic_graceful_drain()


def end_sse_streams() -> None:
    """End every SSE stream still open (the last step of a drain)."""
    AppStatus.should_exit = True


# ------------------------------------------------------------------------------- sessions


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
        self.per_principal = SessionsPerPrincipal(max_sessions_per_principal)
        self.session_unused_timeout = session_unused_timeout

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        state = scope.get("state") or {}
        if state.get("session_id") is not None:  # the gateway read Mcp-Session-Id: no session is admitted
            await super().handle_request(scope, receive, send)
            return
        principal = state.get("principal") or (f"ip:{state['client_ip']}" if state.get("client_ip") else None)
        token = _principal_var.set(principal)
        try:
            await super().handle_request(scope, receive, send)
        except PrincipalSessionLimit:
            await refuse_session(send, self.per_principal.limit or 0)
        finally:
            _principal_var.reset(token)

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # Mirrors StreamableHTTPSessionManager._admit_session (mcp 2.3.0) except for the id, the
        # transport class and the per-principal count. Runs under the SDK's session-creation lock.
        principal = _principal_var.get()
        self.per_principal.check(principal)
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
        self.per_principal.opened(session_id, principal)
        logger.debug("created session %s", session_id)
        return http_transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        self.per_principal.closed(session_id)
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
        closed = 0
        for transport in list(self._server_instances.values()):
            try:
                transport.close_standalone_sse_stream()
                closed += 1
            except Exception:  # a transport mid-teardown; nothing to close
                logger.debug("could not close a standalone stream", exc_info=True)
        return closed
