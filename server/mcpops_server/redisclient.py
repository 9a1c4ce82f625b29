"""Redis clients, built from the ``redis`` settings.

An instance holds two pools: one for the notes store and /health (``redis.socket_timeout``, one
reconnect after a broken connection), and, with rate limiting on, one for the limiter, which sits on
every request (``ratelimit.timeout``, no retries). ``mcpops-server migrate`` uses the first kind.

With a ``rediss://`` url every connection of every pool is TLS: at least TLS 1.2, the server's
certificate verified against ``redis.tls_ca_file`` only (the system's CA store when it is unset) and
its name against the url's host, and the client certificate ``redis.tls_cert_file`` presented when
set (Redis' ``tls-auth-clients``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .config import RedisSettings, Settings


def tls_context(redis_settings: RedisSettings) -> ssl.SSLContext:
    """The client side of a ``rediss://`` connection. With ``tls_ca_file`` only that file's CAs are
    trusted (not the system's as well), so a certificate from any other CA is refused."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=redis_settings.tls_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    if redis_settings.tls_cert_file:
        context.load_cert_chain(redis_settings.tls_cert_file, redis_settings.tls_key_file)
    return context


class VerifiedTLSConnection(SSLConnection):
    """redis-py's TLS connection with the context built above, shared by the pool's connections
    (redis-py's own would also trust the system CA store beside a CA file)."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any):
        super().__init__(**kwargs)
        self._tls_context = tls_context

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {"host": self.host, "port": self.port, "ssl": self._tls_context}


def redis_client(settings: Settings, *, timeout: float | None = None, retry: bool = True) -> Redis:
    """A pooled client. ``timeout`` (default ``redis.socket_timeout``) bounds each wait: for a free
    connection, to connect (TLS handshake included), for a reply. ``retry`` allows one reconnect after
    a broken connection (a Redis restart, an idle connection dropped); a timeout is never retried."""
    redis_settings = settings.redis
    timeout = redis_settings.socket_timeout if timeout is None else timeout
    options: dict[str, Any] = {
        "max_connections": redis_settings.max_connections,
        "timeout": timeout,
        "username": redis_settings.username,
        "password": redis_settings.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": min(timeout, 2.0),
        "retry": (
            Retry(ExponentialBackoff(cap=0.05, base=0.005), 1, supported_errors=(RedisConnectionError,))
            if retry
            else Retry(NoBackoff(), 0)
        ),
        "health_check_interval": 30,
    }
    options.update(parse_url(redis_settings.url))  # as from_url: what the url says wins
    if redis_settings.tls:
        assert options.get("connection_class") is SSLConnection
        options["connection_class"] = VerifiedTLSConnection
        options["tls_context"] = tls_context(redis_settings)
    return Redis(connection_pool=BlockingConnectionPool(**options))
