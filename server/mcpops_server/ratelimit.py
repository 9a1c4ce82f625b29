"""Per-principal fixed-window rate limits counted in Redis, so the limit holds across all instances.

The counter of a principal lives in Redis under ``<prefix>rl:<principal digest>:<window>`` (windows
of 60 s, numbered from the epoch; hosts are NTP-synced). Going to Redis on every request would
cost a round trip per call, so an instance reserves counts in chunks (``INCRBY``) of 1/20 of the
limit and hands them out locally until the chunk is used up. With a limit below 40 the chunk is
1, i.e. every request is counted in Redis. What a chunk reserves but does not use is still counted,
so with N instances serving the same principal in the same minute the limit can bite up to
(N-1)/20 of the limit early; it never lets more than the limit through. Once a principal is over
the limit in a window, the instance answers 429 locally until the window ends.

Redis sits on the path of every request, so a Redis that hangs must not hang the requests: each
check has its own deadline (``ratelimit.timeout``, a fraction of a second, no retries). A check that
fails or runs out of time lets the request through or refuses it (503) as
``ratelimit.on_redis_error`` says, counted in ``mcp_ratelimit_redis_errors_total`` and logged (at
most every 10 s). After ``ratelimit.breaker_failures`` failures in a row a circuit breaker opens:
for ``ratelimit.breaker_cooldown`` seconds requests follow ``on_redis_error`` without asking Redis
(``mcp_ratelimit_short_circuited_total``, ``mcp_ratelimit_breaker_open``); then one request probes
Redis, and its success closes the breaker.

``RateLimitGate`` puts the limiter in front of the SDK on /mcp, behind the auth gate: the principal
is the token's, else ``ip:<client address>``; a refusal is a JSON-RPC error with ``Retry-After``
and ``RateLimit-Limit``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from . import metrics
from .asgi import JSON, send_response
from .clientaddr import ClientAddress
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
    status: int = 429  # of a refusal: 429 over the limit, 503 when the limit cannot be checked


class Breaker:
    """A consecutive-failure circuit breaker.

    Closed: every call goes through. ``failures`` failures in a row open it for ``cooldown``
    seconds, during which ``admit()`` says no. After that it is half-open: one call (the probe) is
    admitted; its success closes the breaker, its failure opens it for another cooldown.
    """

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.open_until: float | None = None  # set while open or half-open
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def admit(self) -> bool:
        if self.open_until is None:
            return True
        if self.probing or self.clock() < self.open_until:
            return False
        self.probing = True
        return True

    def retry_after(self) -> float:
        return max(0.0, self.open_until - self.clock()) if self.open_until is not None else 0.0

    def success(self) -> bool:
        """Record a call that worked; True when that closed the breaker."""
        was_open = self.open_until is not None
        self.failures = 0
        self.open_until = None
        self.probing = False
        return was_open

    def failure(self) -> bool:
        """Record a failed call; True when that opened the breaker."""
        self.failures += 1
        was_open = self.open_until is not None
        if was_open or self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown
            self.probing = False
        return not was_open and self.open_until is not None


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
        self.action = "deny" if self.deny_on_error else "allow"
        self.timeout = settings.timeout
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown)
        self.prefix = key_prefix + "rl:"
        self._leases: dict[str, _Lease] = {}
        self._last_error_log = 0.0
        self.allowed = Decision(True, limit=self.limit)  # the same for every request let through
        metrics.ratelimit_breaker_open.set(0)

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
                return self.allowed
            if lease.denied:
                return self._denied(window, now)
        if not self.breaker.admit():
            metrics.ratelimit_short_circuited_total.labels(action=self.action).inc()
            return self._fallback()
        key = self._key(principal, window)
        try:
            async with asyncio.timeout(self.timeout):
                total = int(await self.redis.incrby(key, self.chunk))
                if total == self.chunk or (total // self.chunk) % 64 == 0:
                    await self.redis.expire(key, WINDOW + 5)
        except asyncio.CancelledError:  # the request went away; a probe must not stay in flight
            self._failed()
            raise
        except Exception as exc:  # includes running out of time (TimeoutError)
            self._failed()
            return self._redis_error(exc, now)
        if self.breaker.success():
            metrics.ratelimit_breaker_open.set(0)
            logger.info(
                "rate limiter reaches Redis again; counting resumes", extra={"event": "ratelimit_breaker"}
            )
        available = min(self.chunk, self.limit - (total - self.chunk))
        if len(self._leases) >= _MAX_LEASES:
            self._leases = {p: v for p, v in self._leases.items() if v.window == window}
        if available <= 0:
            self._leases[principal] = _Lease(window, 0, True)
            return self._denied(window, now)
        self._leases[principal] = _Lease(window, available - 1, available < self.chunk)
        return self.allowed

    def _failed(self) -> None:
        if self.breaker.failure():
            metrics.ratelimit_breaker_open.set(1)
            logger.warning(
                "rate limiter: %d Redis checks failed in a row; %s requests without asking Redis for %g s",
                self.breaker.failures,
                "refusing" if self.deny_on_error else "allowing",
                self.breaker.cooldown,
                extra={"event": "ratelimit_breaker", "result": self.action},
            )

    def _redis_error(self, exc: Exception, now: float) -> Decision:
        metrics.ratelimit_redis_errors_total.labels(action=self.action).inc()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            logger.warning(
                "rate limit check failed, %s requests while Redis is unreachable: %s",
                "refusing" if self.deny_on_error else "allowing",
                "timed out" if isinstance(exc, TimeoutError) else exc.__class__.__name__,
                extra={"event": "ratelimit_redis_error", "result": self.action},
            )
        return self._fallback()

    def _fallback(self) -> Decision:
        """What ``on_redis_error`` says while the limit cannot be checked."""
        if self.deny_on_error:
            wait = max(1, math.ceil(self.breaker.retry_after() or self.breaker.cooldown))
            return Decision(False, retry_after=wait, limit=self.limit, status=503)
        return self.allowed


class RateLimitGate:
    """ASGI wrapper of the /mcp chain: one ``hit`` per request, a JSON-RPC error with 429 or 503 when refused.

    The principal is the token's (set by the auth gate), else the client address.
    """

    def __init__(self, app: Any, limiter: RateLimiter, client_address: ClientAddress):
        self.app = app
        self.limiter = limiter
        self.client_address = client_address

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        state = scope.setdefault("state", {})
        principal = state.get("principal")
        if not principal:
            client_ip = state["client_ip"] if "client_ip" in state else self.client_address(scope)
            principal = "ip:" + client_ip
        decision = await self.limiter.hit(principal)
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        if decision.status == 429:
            metrics.ratelimit_rejected_total.inc()
            message = f"Rate limit exceeded; retry after {decision.retry_after} s"
        else:
            message = f"Rate limit cannot be checked; retry after {decision.retry_after} s"
        state["rate_limited"] = True
        body = json.dumps(
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}
        ).encode()
        await send_response(
            send,
            decision.status,
            body,
            JSON,
            [
                (b"retry-after", str(decision.retry_after).encode()),
                (b"ratelimit-limit", str(decision.limit).encode()),
            ],
        )
