"""Per-principal fixed-window rate limits counted in Redis (so the limit holds across instances).

One ``INCR`` per request on the key ``<prefix>rl:<principal>:<window>``; the first hit of a window
(count 1) also sets the key's expiry, and every 64th hit re-asserts it, so a key can never outlive
its window by much even if an instance died between the two commands. Windows are 60 s, aligned
to the epoch minute (the window number comes from this host's clock; hosts are NTP-synced).
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


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0
    remaining: int = 0
    limit: int = 0


class RateLimiter:
    def __init__(self, redis: Redis, settings: RateLimitSettings, key_prefix: str):
        self.redis = redis
        self.limit = settings.requests_per_minute
        self.deny_on_error = settings.on_redis_error == "deny"
        self.prefix = key_prefix + "rl:"
        self._last_error_log = 0.0

    def _key(self, principal: str, window: int) -> str:
        # Principals can be long or carry odd bytes (token subjects); hash them into a fixed shape.
        digest = hashlib.blake2b(principal.encode(), digest_size=12).hexdigest()
        return f"{self.prefix}{digest}:{window}"

    async def hit(self, principal: str) -> Decision:
        now = time.time()
        window = int(now // WINDOW)
        key = self._key(principal, window)
        try:
            count = int(await self.redis.incr(key))
            if count == 1 or count % 64 == 0:
                await self.redis.expire(key, WINDOW + 5)
        except Exception as exc:
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
        if count > self.limit:
            retry_after = max(1, int((window + 1) * WINDOW - now + 0.999))
            return Decision(False, retry_after=retry_after, limit=self.limit)
        return Decision(True, remaining=self.limit - count, limit=self.limit)
