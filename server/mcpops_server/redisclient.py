"""Redis clients, built from the ``redis`` settings.

An instance holds two pools: one for the notes store and /health (``redis.socket_timeout``, one
reconnect after a broken connection), and, with rate limiting on, one for the limiter, which sits on
every request (``ratelimit.timeout``, no retries). ``mcpops-server migrate`` uses the first kind.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .config import Settings


def redis_client(settings: Settings, *, timeout: float | None = None, retry: bool = True) -> Redis:
    """A pooled client. ``timeout`` (default ``redis.socket_timeout``) bounds each wait: for a free
    connection, to connect, for a reply. ``retry`` allows one reconnect after a broken connection
    (a Redis restart, an idle connection dropped); a timeout is never retried."""
    redis_settings = settings.redis
    timeout = redis_settings.socket_timeout if timeout is None else timeout
    pool = BlockingConnectionPool.from_url(
        redis_settings.url,
        max_connections=redis_settings.max_connections,
        timeout=timeout,
        username=redis_settings.username,
        password=redis_settings.password,
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
