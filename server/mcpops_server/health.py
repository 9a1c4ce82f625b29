"""The seed's /health: ``{status, timestamp, checks}``; 200 when healthy, 503 on a critical failure.

Checks run concurrently, each bounded by ``health.timeout``, so a dead dependency never holds
the endpoint longer than that. Redis is critical (sessions, rate limits and notes live there);
the authorization server is not (keys and verified tokens are cached), so its failure reports
``degraded`` with 200. While draining for shutdown the instance answers 503 ``draining`` so the
load balancer stops sending new sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from . import __version__, metrics
from .auth import JWKSVerifier
from .config import Settings


class HealthChecker:
    def __init__(self, settings: Settings, redis: Redis, verifier: JWKSVerifier | None):
        self.settings = settings
        self.timeout = settings.health.timeout
        self.redis = redis
        self.verifier = verifier

    async def _redis(self) -> str:
        await self.redis.ping()
        return "ok"

    async def _auth(self) -> str:
        if self.verifier is None:
            return "disabled"
        await self.verifier.keys.refresh(deadline=self.timeout)  # what it fetches, the verifier uses
        return "ok"

    async def _one(self, fn: Callable[[], Awaitable[str]]) -> tuple[bool, str]:
        try:
            return True, await asyncio.wait_for(fn(), self.timeout)
        except TimeoutError:
            return False, f"error: timed out after {self.timeout:g} s"
        except Exception as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            return False, f"error: {exc.__class__.__name__}{': ' + text if text else ''}"

    async def run(self, *, draining: bool = False) -> tuple[int, dict[str, Any]]:
        checks: dict[str, tuple[Callable[[], Awaitable[str]], bool]] = {
            "redis": (self._redis, True),
            "auth_server": (self._auth, False),
        }
        results = await asyncio.gather(*(self._one(fn) for fn, _ in checks.values()))
        body_checks: dict[str, str] = {}
        status = "healthy"
        for (name, (_, critical)), (ok, text) in zip(checks.items(), results, strict=True):
            body_checks[name] = text
            metrics.health_status.labels(check=name).set(1 if ok else 0)
            if not ok:
                if critical:
                    status = "unhealthy"
                elif status == "healthy":
                    status = "degraded"
        if draining:
            status = "draining"
        body = {
            "status": status,
            "timestamp": datetime.now(UTC).isoformat(),
            "checks": body_checks,
            "instance_id": self.settings.server.instance_id,
            "version": __version__,
        }
        code = 503 if status in ("unhealthy", "draining") else 200
        return code, body
