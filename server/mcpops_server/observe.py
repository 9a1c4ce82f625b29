"""What the request path tells the operator: HTTP metrics and the access line, tool metrics.

``HttpObserver`` is called by the gateway once a request ends: ``mcp_http_requests_total`` and
``mcp_http_request_duration_seconds`` by route label (a served path, ``/.well-known`` or ``other``, so
clients cannot make up label values), and one access line (``mcpops.access``) carrying what the
layers below left in ``scope["state"]`` (user, session, tool name and result). A 200 from /health or
the metrics path writes no line: probes and scrapers would drown the rest.

``ToolObserver`` is a context-tier middleware of the SDK's low-level server: request context for
the log records of a call, ``mcp_tool_calls_total`` and ``mcp_tool_duration_seconds``, a line of
its own for a failed call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.tool_name_validation import TOOL_NAME_REGEX
from mcp_types import INVALID_PARAMS, CallToolResult, PaginatedRequestParams

from . import metrics
from .asgi import header
from .logging import request_id_var, session_id_var, tool_name_var, user_id_var
from .sdk import lowlevel_server, tool_lookup

logger = logging.getLogger("mcpops.server")
access_logger = logging.getLogger("mcpops.access")
tool_logger = logging.getLogger("mcpops.tools")

_METHODS = frozenset({"GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH"})
_HANDSHAKE = frozenset({"initialize", "notifications/initialized"})
_RELIST_INTERVAL = 5.0  # seconds between two tools/list calls made for the metric labels
_RELIST_PAGES = 20
_LISTED_MAX = 10_000  # tool names remembered for the metric labels
_BAD_TOOL_NAME = "Invalid tool name: 1 to 128 characters from A-Z a-z 0-9 _ . - are allowed"


class HttpObserver:
    """The HTTP metrics and the access line of each request."""

    def __init__(self, routes: Iterable[str], quiet: Iterable[str]):
        self.routes = frozenset(routes)  # paths that are a metric label of their own
        self.quiet = frozenset(quiet)  # paths whose 200s write no access line

    def route_label(self, path: str) -> str:
        if path in self.routes:
            return path
        if path.startswith("/.well-known/"):
            return "/.well-known"
        return "other"

    def finished(
        self,
        scope: Any,
        method: str,
        path: str,
        status: int,
        duration: float,
        client_ip: str,
        sent_bytes: int,
        state: dict[str, Any],
    ) -> None:
        label = self.route_label(path)
        method_label = method if method in _METHODS else "other"
        metrics.http_requests(label, method_label, str(status)).inc()
        metrics.http_duration(label, method_label).observe(duration)
        if status == 200 and path in self.quiet:
            return
        access_logger.info(
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "event": "access",
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
                "client_ip": client_ip,
                "bytes": sent_bytes,
                "user_id": state.get("user_id"),
                "session_id": state.get("session_id"),
                "tool_name": state.get("tool_name"),
                "result": state.get("tool_result"),
                "user_agent": header(scope, b"user-agent"),
            },
        )


class ToolObserver:
    """Context-tier MCP middleware: request context for logs, tool metrics and a line per call.

    It is the outermost middleware, so it also refuses a ``tools/call`` whose name the protocol does
    not allow (1 to 128 characters from ``A-Z a-z 0-9 _ . -``, the SDK's ``TOOL_NAME_REGEX``) with
    INVALID_PARAMS before anything else sees, logs or echoes the name.

    Tool names become metric labels only when the server lists them; any other name is counted as
    ``unknown``, so clients cannot grow the metrics with made-up names. An ``MCPServer`` is asked
    directly; for a low-level ``Server`` the names come from the ``tools/list`` answers that pass
    through here, and, when a call names a tool not seen yet, from calling its ``tools/list``
    handler (at most every ``_RELIST_INTERVAL`` seconds).
    """

    def __init__(self, server: MCPServer | Server[Any], on_use: Callable[[str], None] | None = None):
        self.server = server
        self.on_use = on_use  # told the session id of every message but the handshake
        self.lowlevel = lowlevel_server(server)
        self.has_tool = tool_lookup(server)
        self.listed: set[str] = set()
        self.relisted_at = -math.inf

    async def _label(self, ctx: Any, name: str) -> str:
        if self.has_tool is not None:
            return name if self.has_tool(name) else "unknown"
        if name in self.listed:
            return name
        now = time.monotonic()
        if now - self.relisted_at >= _RELIST_INTERVAL:
            self.relisted_at = now
            await self._relist(ctx)
        return name if name in self.listed else "unknown"

    async def _relist(self, ctx: Any) -> None:
        entry = self.lowlevel.get_request_handler("tools/list")
        if entry is None:
            return
        cursor = None
        try:
            for _page in range(_RELIST_PAGES):
                result = await entry.handler(ctx, PaginatedRequestParams(cursor=cursor))
                self._learn(result)
                cursor = getattr(result, "next_cursor", None)
                if not cursor:
                    break
        except Exception:
            logger.debug("could not list the app's tools for the metric labels", exc_info=True)

    def _learn(self, result: Any) -> None:
        """Remember the names in a tools/list answer (a result model or its wire dict)."""
        tools = result.get("tools") if isinstance(result, dict) else getattr(result, "tools", None)
        for tool in tools or ():
            name = tool.get("name") if isinstance(tool, dict) else getattr(tool, "name", None)
            if isinstance(name, str) and len(self.listed) < _LISTED_MAX and TOOL_NAME_REGEX.fullmatch(name):
                self.listed.add(name)

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        request = ctx.request
        scope_state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
        tokens = [
            (request_id_var, request_id_var.set(scope_state.get("request_id"))),
            (user_id_var, user_id_var.set(scope_state.get("user_id"))),
            (session_id_var, session_id_var.set(scope_state.get("session_id"))),
        ]
        try:
            if self.on_use is not None and ctx.method not in _HANDSHAKE:
                session_id = scope_state.get("session_id")
                if session_id:
                    self.on_use(session_id)
            if ctx.method == "tools/list" and self.lowlevel is self.server:
                out = await call_next(ctx)
                self._learn(out)
                return out
            if ctx.method != "tools/call" or ctx.request_id is None:
                return await call_next(ctx)
            raw_name = (ctx.params or {}).get("name")
            valid = isinstance(raw_name, str) and TOOL_NAME_REGEX.fullmatch(raw_name) is not None
            label = await self._label(ctx, raw_name) if valid else "invalid"
            tokens.append((tool_name_var, tool_name_var.set(label)))
            if isinstance(scope_state, dict):
                scope_state["tool_name"] = label
            started = time.perf_counter()
            result = "error"
            try:
                if not valid:
                    raise MCPError(code=INVALID_PARAMS, message=_BAD_TOOL_NAME)
                out = await call_next(ctx)
                is_error = (
                    out.isError
                    if isinstance(out, CallToolResult)
                    else bool(out.get("isError"))
                    if isinstance(out, dict)
                    else False
                )
                result = "error" if is_error else "success"
                return out
            finally:
                duration = time.perf_counter() - started
                metrics.tool_calls(metrics.ENDPOINT, label, result).inc()
                metrics.tool_duration(metrics.ENDPOINT, label).observe(duration)
                if isinstance(scope_state, dict):
                    scope_state["tool_result"] = result
                # The request's access line carries tool_name and the result; a line of its own only
                # for failures (or with LOG_LEVEL=DEBUG).
                level = logging.INFO if result == "error" else logging.DEBUG
                if tool_logger.isEnabledFor(level):
                    tool_logger.log(
                        level,
                        "tool call %s: %s",
                        label,
                        result,
                        extra={
                            "duration_ms": round(duration * 1000, 2),
                            "result": result,
                            "event": "tool_call",
                        },
                    )
        finally:
            for var, token in reversed(tokens):
                var.reset(token)
