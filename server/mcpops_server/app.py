"""Builds the ASGI application.

Request path, outermost first (all pure ASGI, no per-request Starlette middleware objects)::

    Gateway    request id, access log line, HTTP metrics, CORS, body limit (Content-Length),
               Host/Origin validation (for /mcp), draining during shutdown
    /mcp  ->   AuthGate (JWT, 401/403) -> RateLimitGate (Redis, 429) -> the SDK's session manager
    else  ->   Starlette: /health, /metrics, RFC 9728 metadata, the user's custom routes

The MCP server is the reference toolset or the user's ``server.app``; either way we drive its
low-level ``Server`` with our own session manager (instance-owned session ids), and add a
context-tier middleware that times tool calls for metrics and logs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.shared.exceptions import MCPError
from mcp.shared.tool_name_validation import TOOL_NAME_REGEX
from mcp_types import INVALID_PARAMS, CallToolResult, PaginatedRequestParams
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import __version__, metrics
from .asgi import TEXT, header, send_response
from .auth import AuthGate, JWKSVerifier, protected_resource_metadata, resource_metadata_url
from .clientaddr import ClientAddress
from .config import Settings
from .health import HealthChecker
from .inflight import InFlightCalls
from .logging import request_id_var, session_id_var, tool_name_var, user_id_var
from .notes import SCHEMA_VERSION, NotesStore
from .ratelimit import RateLimiter, RateLimitGate
from .sessions import InstanceSessionManager
from .tools import StoreRef, build_reference_server
from .transport import TransportSecurity

logger = logging.getLogger("mcpops.server")
access_logger = logging.getLogger("mcpops.access")

MCP_PATH = "/mcp"
_METHODS = frozenset({"GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH"})
_HANDSHAKE = frozenset({"initialize", "notifications/initialized"})
_RELIST_INTERVAL = 5.0  # seconds between two tools/list calls made for the metric labels
_RELIST_PAGES = 20
_LISTED_MAX = 10_000  # tool names remembered for the metric labels
_BAD_TOOL_NAME = "Invalid tool name: 1 to 128 characters from A-Z a-z 0-9 _ . - are allowed"


class AppLoadError(Exception):
    pass


def load_user_app(spec: str) -> MCPServer | Server[Any]:
    """Import ``package.module:attribute`` and return the MCP server object it names."""
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:
        raise AppLoadError(f"cannot import {mod_name}: {exc.__class__.__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"{mod_name} has no attribute {attr}") from None
    if not isinstance(obj, MCPServer | Server):
        raise AppLoadError(f"{spec} is a {type(obj).__name__}, not an MCPServer")
    return obj


def redis_client(settings: Settings, *, timeout: float | None = None, retry: bool = True) -> Redis:
    """A pooled client. ``timeout`` (default ``redis.socket_timeout``) bounds each wait: for a free
    connection, to connect, for a reply. ``retry`` allows one reconnect after a broken connection
    (a Redis restart, an idle connection dropped); a timeout is never retried."""
    r = settings.redis
    timeout = r.socket_timeout if timeout is None else timeout
    pool = BlockingConnectionPool.from_url(
        r.url,
        max_connections=r.max_connections,
        timeout=timeout,
        username=r.username,
        password=r.password,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        retry=(
            Retry(ExponentialBackoff(cap=0.05, base=0.005), 1, supported_errors=(RedisConnectionError,))
            if retry
            else Retry(NoBackoff(), 0)
        ),
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


# ------------------------------------------------------------------------------- tool observer


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
        self.tool_log = logging.getLogger("mcpops.tools")
        self.lowlevel: Server[Any] = server._lowlevel_server if isinstance(server, MCPServer) else server
        self.listed: set[str] = set()
        self.relisted_at = -math.inf

    async def _label(self, ctx: Any, name: str) -> str:
        tm = getattr(self.server, "_tool_manager", None)
        if tm is not None:
            return name if tm.get_tool(name) is not None else "unknown"
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
        for t in tools or ():
            name = t.get("name") if isinstance(t, dict) else getattr(t, "name", None)
            if isinstance(name, str) and len(self.listed) < _LISTED_MAX and TOOL_NAME_REGEX.fullmatch(name):
                self.listed.add(name)

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        req = ctx.request
        scope_state = getattr(req, "scope", {}).get("state", {}) if req is not None else {}
        tokens = [
            (request_id_var, request_id_var.set(scope_state.get("request_id"))),
            (user_id_var, user_id_var.set(scope_state.get("user_id"))),
            (session_id_var, session_id_var.set(scope_state.get("session_id"))),
        ]
        try:
            if self.on_use is not None and ctx.method not in _HANDSHAKE:
                sid = scope_state.get("session_id")
                if sid:
                    self.on_use(sid)
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
            t0 = time.perf_counter()
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
                dt = time.perf_counter() - t0
                metrics.tool_calls(metrics.ENDPOINT, label, result).inc()
                metrics.tool_duration(metrics.ENDPOINT, label).observe(dt)
                if isinstance(scope_state, dict):
                    scope_state["tool_result"] = result
                # The request's access line carries tool_name and the result; a line of its own only
                # for failures (or with LOG_LEVEL=DEBUG).
                self.tool_log.log(
                    logging.INFO if result == "error" else logging.DEBUG,
                    "tool call %s: %s",
                    label,
                    result,
                    extra={"duration_ms": round(dt * 1000, 2), "result": result, "event": "tool_call"},
                )
        finally:
            for var, tok in reversed(tokens):
                var.reset(tok)


# ------------------------------------------------------------------------------- gateway


def _valid_request_id(v: str | None) -> bool:
    return v is not None and 0 < len(v) <= 128 and all(33 <= ord(c) <= 126 for c in v)


class Gateway:
    def __init__(
        self,
        mcp_chain: Any,
        other: Any,
        client_address: ClientAddress,
        transport: TransportSecurity,
        metrics_path: str | None,
    ):
        self.mcp = mcp_chain
        self.other = other
        self.client_address = client_address
        self.transport = transport
        self.draining = False
        self.metrics_path = metrics_path
        self.routes = {MCP_PATH, "/health", "/.well-known/oauth-protected-resource"}
        if self.metrics_path:
            self.routes.add(self.metrics_path)

    def _route_label(self, path: str) -> str:
        if path in self.routes:
            return path
        if path.startswith("/.well-known/"):
            return "/.well-known"
        return "other"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.other(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        rid = header(scope, b"x-request-id")
        if not _valid_request_id(rid):
            rid = uuid.uuid4().hex
        client_ip = self.client_address(scope)
        sid = header(scope, b"mcp-session-id")
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["client_ip"] = client_ip
        state["session_id"] = sid
        rid_token = request_id_var.set(rid)
        sid_token = session_id_var.set(sid)
        uid_token = user_id_var.set(None)
        origin = header(scope, b"origin")
        cors_ok = self.transport.cors_allowed(origin)
        status_box = [0, 0]  # status, bytes
        rid_b = rid.encode()

        async def send_wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid_b))
                if cors_ok:
                    headers.extend(self.transport.cors_headers(origin))  # type: ignore[arg-type]
                for k, v in headers:
                    if k.lower() == b"mcp-session-id":
                        state["session_id"] = v.decode("latin-1")
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                status_box[1] += len(message.get("body", b""))
            await send(message)

        is_mcp = path == MCP_PATH
        if is_mcp:
            metrics.mcp_connections.inc()
        try:
            await self._dispatch(scope, receive, send_wrapped, path, method, origin, cors_ok, is_mcp)
        finally:
            if is_mcp:
                metrics.mcp_connections.dec()
            dt = time.perf_counter() - t0
            status = status_box[0] or 500
            label = self._route_label(path)
            m = method if method in _METHODS else "other"
            metrics.http_requests(label, m, str(status)).inc()
            metrics.http_duration(label, m).observe(dt)
            if not (path == "/health" and status == 200) and not (
                path == self.metrics_path and status == 200
            ):
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
                        "duration_ms": round(dt * 1000, 2),
                        "client_ip": client_ip,
                        "bytes": status_box[1],
                        "user_id": state.get("user_id"),
                        "session_id": state.get("session_id"),
                        "tool_name": state.get("tool_name"),
                        "result": state.get("tool_result"),
                        "user_agent": header(scope, b"user-agent"),
                    },
                )
            request_id_var.reset(rid_token)
            session_id_var.reset(sid_token)
            user_id_var.reset(uid_token)

    async def _dispatch(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        path: str,
        method: str,
        origin: str | None,
        cors_ok: bool,
        is_mcp: bool,
    ) -> None:
        answer = self.transport.screen(scope, method, origin, cors_ok, is_mcp)
        if answer is not None:
            await send_response(send, answer.status, answer.body, answer.content_type, answer.headers)
            return
        if is_mcp:
            if self.draining and header(scope, b"mcp-session-id") is None:
                await send_response(
                    send, 503, b"Shutting down", TEXT, [(b"retry-after", b"1"), (b"connection", b"close")]
                )
                return
            await self.mcp(scope, receive, send)
            return
        await self.other(scope, receive, send)


# ------------------------------------------------------------------------------- assembly


class Runtime:
    """What the CLI needs to drive shutdown, and what the tests poke at."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis: Redis | None = None
        self.verifier: JWKSVerifier | None = None
        self.manager: InstanceSessionManager | None = None
        self.gateway: Gateway | None = None
        self.mcp_server: MCPServer | Server[Any] | None = None
        self.inflight: InFlightCalls | None = None

    async def end_calls(self) -> int:
        """At the end of the graceful timeout: every call still open gets a JSON-RPC error."""
        return await self.inflight.end_all() if self.inflight is not None else 0

    def begin_drain(self) -> None:
        if self.gateway is not None:
            self.gateway.draining = True
        if self.manager is not None:
            n = self.manager.close_standalone_streams()
            if n:
                logger.info("closed %d notification stream(s) for shutdown", n)


def _install_key_ring(lowlevel: Server[Any], keys: tuple[bytes, ...], audience: str) -> None:
    """Swap the SDK's request-state boundary for one sealing with the configured key ring."""
    security = RequestStateSecurity(keys=list(keys))
    boundary = RequestStateBoundary(security, default_audience=audience)
    mw = lowlevel.middleware
    for i, m in enumerate(mw):
        if isinstance(m, RequestStateBoundary):
            mw[i] = boundary
            return
    mw.insert(0, boundary)


def build_app(settings: Settings, runtime: Runtime | None = None) -> tuple[Any, Runtime]:
    rt = runtime or Runtime(settings)
    s = settings
    ref = StoreRef()
    if s.server.app:
        server = load_user_app(s.server.app)
    else:
        security = (
            RequestStateSecurity(keys=list(s.server.request_state_keys))
            if s.server.request_state_keys
            else None
        )
        server = build_reference_server(s.server.name, ref, security, s.notes)
    rt.mcp_server = server
    lowlevel: Server[Any] = server._lowlevel_server if isinstance(server, MCPServer) else server
    if s.server.request_state_keys and s.server.app:
        _install_key_ring(lowlevel, s.server.request_state_keys, lowlevel.name)

    manager = InstanceSessionManager(
        app=lowlevel,
        instance_id=s.server.instance_id,
        stateless=s.server.stateless,
        security_settings=None,  # Host/Origin are checked by the Gateway, with the configured names
        max_request_body_size=s.server.max_body_bytes,
        session_idle_timeout=s.server.session_idle_timeout,
        session_unused_timeout=s.server.session_unused_timeout,
        max_sessions=s.server.max_sessions,
        max_sessions_per_principal=s.server.max_sessions_per_principal,
    )
    lowlevel.middleware.insert(0, ToolObserver(server, manager.mark_used))
    # MCPServer.session_manager reads this; user code may rely on it.
    lowlevel._session_manager = manager
    rt.manager = manager
    metrics.sessions_active.set_function(lambda: manager.open_sessions)

    client_address = ClientAddress(s.server.trusted_proxies)
    rt.inflight = InFlightCalls(manager.handle_request)
    chain: Any = rt.inflight
    redis = redis_client(s)
    rt.redis = redis
    # The limiter sits on every request: a pool of its own, its own short deadline, no retries.
    limiter_redis = redis_client(s, timeout=s.ratelimit.timeout, retry=False) if s.ratelimit.enabled else None
    if limiter_redis is not None:
        limiter = RateLimiter(limiter_redis, s.ratelimit, s.redis.key_prefix)
        chain = RateLimitGate(chain, limiter, client_address)
    routes: list[BaseRoute] = []
    if s.auth.enabled:
        assert s.auth.resource_server_url
        verifier = JWKSVerifier(s.auth)
        rt.verifier = verifier
        meta_url = resource_metadata_url(s.auth.resource_server_url)
        chain = AuthGate(chain, verifier, meta_url, s.auth.required_scopes)
        doc = protected_resource_metadata(s.auth, s.server.name)

        async def prm(request: Request) -> Response:
            return JSONResponse(doc, headers={"Cache-Control": "public, max-age=300"})

        well_known = "/.well-known/oauth-protected-resource"
        meta_path = well_known + (
            meta_url.split(well_known, 1)[1] if meta_url.split(well_known, 1)[1] else ""
        )
        routes.append(Route(meta_path, prm, methods=["GET"]))
        if meta_path != well_known:
            routes.append(Route(well_known, prm, methods=["GET"]))

    health = HealthChecker(s, redis, rt.verifier)

    async def health_ep(request: Request) -> Response:
        draining = rt.gateway is not None and rt.gateway.draining
        code, body = await health.run(draining=draining)
        return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})

    routes.append(Route("/health", health_ep, methods=["GET", "HEAD"]))
    if s.metrics.enabled:

        async def metrics_ep(request: Request) -> Response:
            body, ctype = metrics.render()
            return Response(body, media_type=ctype)

        routes.append(Route(s.metrics.path, metrics_ep, methods=["GET"]))
    if isinstance(server, MCPServer):
        routes.extend(server._custom_starlette_routes)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        ref.store = NotesStore(redis, s.redis.key_prefix, s.notes)
        if not s.server.app:
            try:
                v = await ref.store.schema_version()
                if v < SCHEMA_VERSION:
                    logger.warning(
                        "notes schema version %d is behind %d: run `mcpops-server migrate`", v, SCHEMA_VERSION
                    )
            except Exception as exc:
                logger.warning("Redis is not reachable at start-up: %s", exc.__class__.__name__)
        if rt.verifier is not None:
            await rt.verifier.start()
        try:
            async with manager.run():
                yield
        finally:
            if rt.verifier is not None:
                await rt.verifier.aclose()
            await redis.aclose()
            if limiter_redis is not None:
                await limiter_redis.aclose()

    inner = Starlette(routes=routes, lifespan=lifespan)
    gateway = Gateway(
        chain, inner, client_address, TransportSecurity(s), s.metrics.path if s.metrics.enabled else None
    )
    rt.gateway = gateway
    return gateway, rt


def with_settings_override(settings: Settings, **server_fields: Any) -> Settings:
    return replace(settings, server=replace(settings.server, **server_fields))


__all__ = ["Runtime", "__version__", "build_app", "load_user_app"]
