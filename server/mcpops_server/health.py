"""The seed's /health: ``{status, timestamp, checks}``; 200 when healthy, 503 on a critical failure.

Checks run concurrently, each bounded by ``health.timeout``, so a dead dependency never holds
the endpoint longer than that. Redis is critical (sessions, rate limits and notes live there);
the authorization server is not (keys and verified tokens are cached), so its failure reports
``degraded`` with 200. While draining for shutdown the instance answers 503 ``draining`` so the
load balancer stops sending new sessions.

Anyone who can reach /health must not be able to drive load on Redis or the identity provider
through it: a result is served to every caller for ``health.cache_ttl`` seconds, and callers that
arrive while the checks run wait for that one run. The body says per check only ``ok``,
``disabled``, ``unreachable``, ``timeout`` or ``error``; what went wrong (addresses, exception
text) goes to the log, when a check starts failing, changes its failure, and once a minute after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import __version__, metrics
from .auth import JWKSVerifier
from .config import Settings
from .jwks import FetchError

logger = logging.getLogger("mcpops.health")

_RELOG_INTERVAL = 60.0


def failure_code(exc: BaseException) -> str:
    """The short code the body shows for a failed check."""
    if isinstance(exc, FetchError):
        return exc.code
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "unreachable"
    return "error"


class HealthChecker:
    def __init__(self, settings: Settings, redis: Redis, verifier: JWKSVerifier | None):
        self.settings = settings
        self.timeout = settings.health.timeout
        self.cache_ttl = settings.health.cache_ttl
        self.redis = redis
        self.verifier = verifier
        self._cached: tuple[float, int, dict[str, Any]] | None = None  # (valid until, code, body)
        self._inflight: asyncio.Task[tuple[int, dict[str, Any]]] | None = None
        self._logged: dict[str, tuple[str, float]] = {}  # check -> (code, monotonic) last logged

    async def _redis(self) -> str:
        await self.redis.ping()
        return "ok"

    async def _auth(self) -> str:
        if self.verifier is None:
            return "disabled"
        await self.verifier.keys.refresh(deadline=self.timeout)  # what it fetches, the verifier uses
        return "ok"

    async def _one(self, name: str, fn: Callable[[], Awaitable[str]]) -> tuple[bool, str]:
        try:
            code = await asyncio.wait_for(fn(), self.timeout)
        except Exception as exc:
            code = failure_code(exc)
            self._log_failure(name, code, exc)
            return False, code
        if name in self._logged:
            del self._logged[name]
            logger.info("health check %s: %s again", name, code, extra={"event": "health", "result": code})
        return True, code

    def _log_failure(self, name: str, code: str, exc: BaseException) -> None:
        now = time.monotonic()
        last = self._logged.get(name)
        if last is not None and last[0] == code and now - last[1] < _RELOG_INTERVAL:
            return
        self._logged[name] = (code, now)
        if isinstance(exc, FetchError):
            detail = exc.detail
        elif isinstance(exc, TimeoutError):
            detail = f"no answer within {self.timeout:g} s"
        else:
            detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        logger.warning("health check %s failed: %s", name, detail, extra={"event": "health", "result": code})

    async def _check(self) -> tuple[int, dict[str, Any]]:
        checks: dict[str, tuple[Callable[[], Awaitable[str]], bool]] = {
            "redis": (self._redis, True),
            "auth_server": (self._auth, False),
        }
        results = await asyncio.gather(*(self._one(name, fn) for name, (fn, _) in checks.items()))
        body_checks: dict[str, str] = {}
        status = "healthy"
        for (name, (_, critical)), (ok, code) in zip(checks.items(), results, strict=True):
            body_checks[name] = code
            metrics.health_status.labels(check=name).set(1 if ok else 0)
            if not ok:
                if critical:
                    status = "unhealthy"
                elif status == "healthy":
                    status = "degraded"
        body = {
            "status": status,
            "timestamp": datetime.now(UTC).isoformat(),
            "checks": body_checks,
            "instance_id": self.settings.server.instance_id,
            "version": __version__,
        }
        return (503 if status == "unhealthy" else 200), body

    async def _check_and_keep(self) -> tuple[int, dict[str, Any]]:
        try:
            code, body = await self._check()
            self._cached = (time.monotonic() + self.cache_ttl, code, body)
            return code, body
        finally:
            self._inflight = None

    async def run(self, *, draining: bool = False) -> tuple[int, dict[str, Any]]:
        cached = self._cached
        if cached is not None and time.monotonic() < cached[0]:
            code, body = cached[1], cached[2]
        else:
            task = self._inflight
            if task is None:
                task = self._inflight = asyncio.create_task(self._check_and_keep(), name="health")
            # shielded: a caller that goes away does not cancel the run the others wait for
            code, body = await asyncio.shield(task)
        if draining:
            return 503, {**body, "status": "draining"}
        return code, body
