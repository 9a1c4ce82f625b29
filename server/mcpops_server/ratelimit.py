"""Per-principal fixed-window rate limits counted in Redis, so the limit holds across all instances.

The counter of a principal lives in Redis under ``<prefix>rl:<principal digest>:<window>`` (windows
of 60 s, numbered from the epoch; hosts are NTP-synced). Going to Redis on every request would
cost a round trip per call, so an instance reserves counts in chunks (``INCRBY``) of 1/20 of the
limit and hands them out locally until the chunk is used up. With a limit below 40 the chunk is
1, i.e. every request is counted in Redis. What a chunk reserves but does not use is still counted,
so with N instances serving the same principal in the same minute the limit can bite up to
(N-1)/20 of the limit early; it never lets more than the limit through. Once a principal is over
the limit in a window, the instance answers 429 locally until the window ends.

When Redis cannot be reached the request is allowed or refused as ``ratelimit.on_redis_error``
says, counted in ``mcp_ratelimit_redis_errors_total`` and logged (at most every 10 s).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from . import metrics
from .config import RateLimitSettings

logger = logging.getLogger("mcpops.ratelimit")

WINDOW = 60
CHUNK_DIVISOR = 20
_MAX_LEASES = 50_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0
    limit: int = 0


class _Lease:
    __slots__ = ("denied", "left", "window")

    def __init__(self, window: int, left: int, denied: bool):
        self.window = window
        self.left = left
        self.denied = denied


class RateLimiter:
    def __init__(self, redis: Redis, settings: RateLimitSettings, key_prefix: str):
        self.redis = redis
        self.limit = settings.requests_per_minute
        self.chunk = max(1, self.limit // CHUNK_DIVISOR)
        self.deny_on_error = settings.on_redis_error == "deny"
        self.prefix = key_prefix + "rl:"
        self._leases: dict[str, _Lease] = {}
        self._last_error_log = 0.0

    def _key(self, principal: str, window: int) -> str:
        # Principals can be long or carry odd bytes (token subjects); hash them into a fixed shape.
        digest = hashlib.blake2b(principal.encode(), digest_size=12).hexdigest()
        return f"{self.prefix}{digest}:{window}"

    def _denied(self, window: int, now: float) -> Decision:
        return Decision(False, retry_after=max(1, int((window + 1) * WINDOW - now + 0.999)), limit=self.limit)

    async def hit(self, principal: str) -> Decision:
        now = time.time()
        window = int(now // WINDOW)
        lease = self._leases.get(principal)
        if lease is not None and lease.window == window:
            if lease.left > 0:
                lease.left -= 1
                return Decision(True, limit=self.limit)
            if lease.denied:
                return self._denied(window, now)
        key = self._key(principal, window)
        try:
            total = int(await self.redis.incrby(key, self.chunk))
            if total == self.chunk or (total // self.chunk) % 64 == 0:
                await self.redis.expire(key, WINDOW + 5)
        except Exception as exc:
            return self._redis_error(exc, now)
        available = min(self.chunk, self.limit - (total - self.chunk))
        if len(self._leases) >= _MAX_LEASES:
            self._leases = {p: v for p, v in self._leases.items() if v.window == window}
        if available <= 0:
            self._leases[principal] = _Lease(window, 0, True)
            return self._denied(window, now)
        self._leases[principal] = _Lease(window, available - 1, available < self.chunk)
        return Decision(True, limit=self.limit)

    def _redis_error(self, exc: Exception, now: float) -> Decision:
        action = "deny" if self.deny_on_error else "allow"
        metrics.ratelimit_redis_errors_total.labels(action=action).inc()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            logger.warning(
                "rate limit check failed, %s requests while Redis is unreachable: %s",
                "refusing" if self.deny_on_error else "allowing",
                exc.__class__.__name__,
                extra={"event": "ratelimit_redis_error", "result": action},
            )
        if self.deny_on_error:
            return Decision(False, retry_after=5, limit=self.limit)
        return Decision(True, limit=self.limit)
