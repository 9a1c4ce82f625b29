"""Builds the ASGI application: the pieces of the request path, put together once at start-up.

Request path, outermost first (all pure ASGI, no per-request Starlette middleware objects)::

    Gateway    (here) request id, client address (clientaddr.py), transport rules: CORS, body
               limit, Host/Origin for /mcp (transport.py), draining during shutdown, then the
               HTTP metrics and access line once the request ends (observe.HttpObserver)
    /mcp  ->   AuthGate (auth.py: JWT, 401/403) -> RateLimitGate (ratelimit.py: Redis, 429)
               -> InFlightCalls (inflight.py) -> the SDK's session manager (sdk.py, sessions.py)
               -> the MCP server, its first middleware ToolObserver (observe.py)
    else  ->   Starlette: /health, /metrics, RFC 9728 metadata, the user's custom routes

Every response the path answers itself goes through ``asgi.send_response``. The MCP server is the
reference toolset, the user's ``server.app``, or the stdio bridge (``bridge.command``, bridge.py:
a low-level ``Server`` forwarding to child processes); either way we drive its low-level ``Server``
with our own session manager (instance-owned session ids).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.request_state import RequestStateSecurity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import metrics
from .asgi import TEXT, header, send_response
from .auth import AuthGate, JWKSVerifier, protected_resource_metadata, resource_metadata_url
from .bridge import ChildPool, build_bridge_server
from .clientaddr import ClientAddress
from .config import Settings
from .health import HealthChecker
from .inflight import InFlightCalls
from .logging import request_id_var, session_id_var, user_id_var
from .notes import SCHEMA_VERSION, NotesStore
from .observe import HttpObserver, ToolObserver
from .ratelimit import RateLimiter, RateLimitGate
from .redisclient import redis_client
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
    """``server.app`` cannot be imported, or does not name an MCP server."""


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


# ------------------------------------------------------------------------------- gateway


def _valid_request_id(value: str | None) -> bool:
    """A client's X-Request-ID is kept when it is 1 to 128 printable ASCII characters, no spaces."""
    return (
        value is not None
        and 0 < len(value) <= 128
        and value.isascii()
        and value.isprintable()  # for ASCII: 0x20 to 0x7e
        and " " not in value
    )


# Request ids name a request in the logs; they are not secrets (a client may choose its own), so
# they come from a generator seeded once from the OS, without a system call per request.
_request_ids = random.Random(os.urandom(32))  # noqa: S311


def _new_request_id() -> str:
    return f"{_request_ids.getrandbits(128):032x}"


class Gateway:
    """The ASGI app uvicorn serves: what every request goes through, then /mcp or Starlette."""

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
        self.open_mcp = 0  # requests on /mcp in progress: mcp_active_connections reads it when scraped

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.other(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        request_id = header(scope, b"x-request-id")
        if not _valid_request_id(request_id):
            request_id = _new_request_id()
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
                if session_id is None:  # a new session's id is in the response (else it is the request's)
                    for name, value in headers:
                        if name.lower() == b"mcp-session-id":
                            state["session_id"] = value.decode("latin-1")
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        is_mcp = path == MCP_PATH
        if is_mcp:
            self.open_mcp += 1
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
                self.open_mcp -= 1
            duration = time.perf_counter() - started
            self.observer.finished(scope, method, path, status or 500, duration, client_ip, sent_bytes, state)
            request_id_var.reset(request_id_token)
            session_id_var.reset(session_id_token)
            user_id_var.reset(user_id_token)


# ------------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class Runtime:
    """What the CLI needs to drive shutdown."""

    gateway: Gateway
    manager: InstanceSessionManager
    inflight: InFlightCalls

    def begin_drain(self) -> None:
        self.gateway.draining = True
        closed = self.manager.close_standalone_streams()
        if closed:
            logger.info("closed %d notification stream(s) for shutdown", closed)

    async def end_calls(self) -> int:
        """At the end of the graceful timeout: every call still open gets a JSON-RPC error."""
        return await self.inflight.end_all()


def build_app(settings: Settings) -> tuple[Gateway, Runtime]:
    store_ref = StoreRef()
    pool: ChildPool | None = None
    if settings.bridge.enabled:
        pool = ChildPool(
            settings.bridge, settings.server.name, settings.auth.issuer_url or settings.auth.server_url
        )
        server: MCPServer | Server[Any] = build_bridge_server(settings.server.name, pool)
        metrics.bridge_children.labels(settings.server.name).set_function(lambda: pool.running)
    elif settings.server.app:
        server = load_user_app(settings.server.app)
    else:
        security = (
            RequestStateSecurity(keys=list(settings.server.request_state_keys))
            if settings.server.request_state_keys
            else None
        )
        server = build_reference_server(settings.server.name, store_ref, security, settings.notes)
    lowlevel = lowlevel_server(server)
    if settings.server.request_state_keys and settings.server.app:
        install_key_ring(lowlevel, settings.server.request_state_keys, lowlevel.name)

    manager = InstanceSessionManager(
        app=lowlevel,
        instance_id=settings.server.instance_id,
        stateless=settings.server.stateless,
        security_settings=None,  # Host and Origin are checked by transport.py, with the configured names
        max_request_body_size=settings.server.max_body_bytes,
        session_idle_timeout=settings.server.session_idle_timeout,
        session_unused_timeout=settings.server.session_unused_timeout,
        max_sessions=settings.server.max_sessions,
        max_sessions_per_principal=settings.server.max_sessions_per_principal,
    )
    lowlevel.middleware.insert(0, ToolObserver(server, manager.mark_used))
    attach_session_manager(lowlevel, manager)  # MCPServer.session_manager; user code may rely on it
    metrics.sessions_active.set_function(lambda: manager.open_sessions)

    # The /mcp chain, built inside out.
    client_address = ClientAddress(settings.server.trusted_proxies)
    inflight = InFlightCalls(manager.handle_request)
    chain: Any = inflight
    redis = redis_client(settings)
    # The limiter sits on every request: a pool of its own, its own short deadline, no retries.
    limiter_redis = (
        redis_client(settings, timeout=settings.ratelimit.timeout, retry=False)
        if settings.ratelimit.enabled
        else None
    )
    if limiter_redis is not None:
        limiter = RateLimiter(limiter_redis, settings.ratelimit, settings.redis.key_prefix)
        chain = RateLimitGate(chain, limiter, client_address)
    routes: list[BaseRoute] = []
    verifier: JWKSVerifier | None = None
    if settings.auth.enabled:
        assert settings.auth.resource_server_url
        verifier = JWKSVerifier(settings.auth)
        metadata_url = resource_metadata_url(settings.auth.resource_server_url)
        chain = AuthGate(chain, verifier, metadata_url, settings.auth.required_scopes)
        metadata = protected_resource_metadata(settings.auth, settings.server.name)

        async def resource_metadata(request: Request) -> Response:
            return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=300"})

        metadata_path = WELL_KNOWN + metadata_url.split(WELL_KNOWN, 1)[1]
        routes.append(Route(metadata_path, resource_metadata, methods=["GET"]))
        if metadata_path != WELL_KNOWN:
            routes.append(Route(WELL_KNOWN, resource_metadata, methods=["GET"]))

    # Everything else: Starlette.
    health = HealthChecker(settings, redis, verifier)

    async def health_endpoint(request: Request) -> Response:
        code, body = await health.run(draining=gateway.draining)  # gateway: bound below, before any request
        return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})

    routes.append(Route("/health", health_endpoint, methods=["GET", "HEAD"]))
    if settings.metrics.enabled:

        async def metrics_endpoint(request: Request) -> Response:
            body, content_type = metrics.render()
            return Response(body, media_type=content_type)

        routes.append(Route(settings.metrics.path, metrics_endpoint, methods=["GET"]))
    routes.extend(custom_routes(server))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        store_ref.store = NotesStore(redis, settings.redis.key_prefix, settings.notes)
        if not settings.server.app and pool is None:
            try:
                version = await store_ref.store.schema_version()
                if version < SCHEMA_VERSION:
                    logger.warning(
                        "notes schema version %d is behind %d: run `mcpops-server migrate`",
                        version,
                        SCHEMA_VERSION,
                    )
            except Exception as exc:
                logger.warning("Redis is not reachable at start-up: %s", exc.__class__.__name__)
        if verifier is not None:
            await verifier.start()
        if pool is not None:
            await pool.start()
        try:
            async with manager.run():
                yield
        finally:
            if pool is not None:
                await pool.aclose()  # after the calls in flight: stdin closed, SIGTERM, SIGKILL
            if verifier is not None:
                await verifier.aclose()
            await redis.aclose()
            if limiter_redis is not None:
                await limiter_redis.aclose()

    other = Starlette(routes=routes, lifespan=lifespan)
    served = [MCP_PATH, "/health", WELL_KNOWN]  # a metric label each
    quiet = ["/health"]  # no access line for a 200
    if settings.metrics.enabled:
        served.append(settings.metrics.path)
        quiet.append(settings.metrics.path)
    gateway = Gateway(chain, other, client_address, TransportSecurity(settings), HttpObserver(served, quiet))
    metrics.mcp_connections.set_function(lambda: gateway.open_mcp)
    return gateway, Runtime(gateway, manager, inflight)


__all__ = ["AppLoadError", "Gateway", "Runtime", "build_app", "load_user_app"]
