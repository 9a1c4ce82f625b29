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
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.request_state import RequestStateSecurity
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
from .logging import request_id_var, session_id_var, user_id_var
from .notes import SCHEMA_VERSION, NotesStore
from .observe import HttpObserver, ToolObserver
from .ratelimit import RateLimiter, RateLimitGate
from .sdk import (
    InstanceSessionManager,
    attach_session_manager,
    custom_routes,
    install_key_ring,
    lowlevel_server,
)
from .tools import StoreRef, build_reference_server
from .transport import TransportSecurity

logger = logging.getLogger("mcpops.server")

MCP_PATH = "/mcp"
WELL_KNOWN = "/.well-known/oauth-protected-resource"
_DRAINING_HEADERS = ((b"retry-after", b"1"), (b"connection", b"close"))


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


# ------------------------------------------------------------------------------- gateway


def _valid_request_id(value: str | None) -> bool:
    """A client's X-Request-ID is kept when it is 1 to 128 printable ASCII characters, no spaces."""
    return value is not None and 0 < len(value) <= 128 and all(33 <= ord(c) <= 126 for c in value)


class Gateway:
    """The ASGI app: request id, client address, CORS headers, transport rules, drain, observation.

    /mcp goes to the auth gate and what follows it, anything else to Starlette.
    """

    def __init__(
        self,
        mcp_chain: Any,
        other: Any,
        client_address: ClientAddress,
        transport: TransportSecurity,
        observer: HttpObserver,
    ):
        self.mcp = mcp_chain
        self.other = other
        self.client_address = client_address
        self.transport = transport
        self.observer = observer
        self.draining = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.other(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        request_id = header(scope, b"x-request-id")
        if not _valid_request_id(request_id):
            request_id = uuid.uuid4().hex
        client_ip = self.client_address(scope)
        session_id = header(scope, b"mcp-session-id")
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_ip"] = client_ip
        state["session_id"] = session_id
        request_id_token = request_id_var.set(request_id)
        session_id_token = session_id_var.set(session_id)
        user_id_token = user_id_var.set(None)
        origin = header(scope, b"origin")
        cors_ok = self.transport.cors_allowed(origin)
        request_id_bytes = request_id.encode()
        status = 0
        sent_bytes = 0

        async def send_wrapped(message: Any) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id_bytes))
                if cors_ok:
                    headers.extend(self.transport.cors_headers(origin))  # type: ignore[arg-type]
                for name, value in headers:
                    if name.lower() == b"mcp-session-id":
                        state["session_id"] = value.decode("latin-1")
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        is_mcp = path == MCP_PATH
        if is_mcp:
            metrics.mcp_connections.inc()
        try:
            answer = self.transport.screen(scope, method, origin, cors_ok, is_mcp)
            if answer is not None:
                await send_response(
                    send_wrapped, answer.status, answer.body, answer.content_type, answer.headers
                )
            elif not is_mcp:
                await self.other(scope, receive, send_wrapped)
            elif self.draining and session_id is None:
                await send_response(send_wrapped, 503, b"Shutting down", TEXT, _DRAINING_HEADERS)
            else:
                await self.mcp(scope, receive, send_wrapped)
        finally:
            if is_mcp:
                metrics.mcp_connections.dec()
            duration = time.perf_counter() - started
            self.observer.finished(scope, method, path, status or 500, duration, client_ip, sent_bytes, state)
            request_id_var.reset(request_id_token)
            session_id_var.reset(session_id_token)
            user_id_var.reset(user_id_token)


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
    lowlevel = lowlevel_server(server)
    if s.server.request_state_keys and s.server.app:
        install_key_ring(lowlevel, s.server.request_state_keys, lowlevel.name)

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
    attach_session_manager(lowlevel, manager)  # MCPServer.session_manager; user code may rely on it
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

        meta_path = WELL_KNOWN + meta_url.split(WELL_KNOWN, 1)[1]
        routes.append(Route(meta_path, prm, methods=["GET"]))
        if meta_path != WELL_KNOWN:
            routes.append(Route(WELL_KNOWN, prm, methods=["GET"]))

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
    routes.extend(custom_routes(server))

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
    served = [MCP_PATH, "/health", WELL_KNOWN]  # a metric label each
    quiet = ["/health"]  # no access line for a 200
    if s.metrics.enabled:
        served.append(s.metrics.path)
        quiet.append(s.metrics.path)
    gateway = Gateway(chain, inner, client_address, TransportSecurity(s), HttpObserver(served, quiet))
    rt.gateway = gateway
    return gateway, rt


def with_settings_override(settings: Settings, **server_fields: Any) -> Settings:
    return replace(settings, server=replace(settings.server, **server_fields))


__all__ = ["Runtime", "__version__", "build_app", "load_user_app"]
