"""The rate limiter when Redis hangs: a short deadline, a circuit breaker, recovery once Redis is back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
import pytest
import redis
from mcpops_testlib import ACCEPT_BOTH, INIT_REQUEST, RedisServer, ServerProc, running, wait_for

# Far below one second; a limiter waiting for the Redis socket timeout (2 s here) cannot meet it.
FAST = 0.75


class Limited:
    allow: ServerProc
    deny: ServerProc
    redis: RedisServer


@pytest.fixture(scope="module")
def limited(workdir) -> Iterator[Limited]:
    """Two instances on a Redis of their own (the tests freeze it), one per ``on_redis_error``."""
    lim = Limited()
    lim.redis = RedisServer(workdir / "redis-frozen")
    lim.redis.start()
    common = {
        "REDIS_URL": lim.redis.url,
        "REDIS_SOCKET_TIMEOUT": "2",
        "AUTH_ENABLED": "false",
        "RATE_LIMIT_PER_MINUTE": "39",  # below 40: every request is counted in Redis (chunk of 1)
        "RATE_LIMIT_BREAKER_COOLDOWN": "1",
    }
    lim.allow = ServerProc("rl-allow", workdir / "rl-allow", {**common, "REDIS_KEY_PREFIX": "t-rla:"})
    lim.deny = ServerProc(
        "rl-deny",
        workdir / "rl-deny",
        {**common, "REDIS_KEY_PREFIX": "t-rld:", "RATE_LIMIT_ON_REDIS_ERROR": "deny"},
    )
    try:
        with running(lim.allow, lim.deny):
            yield lim
    finally:
        lim.redis.stop()


def _timed_post(s: ServerProc, body: dict, sid: str | None = None) -> tuple[httpx2.Response, float]:
    headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
    if sid:
        headers["Mcp-Session-Id"] = sid
    t0 = time.monotonic()
    r = httpx2.post(s.mcp_url, json=body, headers=headers, timeout=30)
    return r, time.monotonic() - t0


def _mcp_round(s: ServerProc) -> list[tuple[int, float]]:
    """initialize, initialized, tools/call slow_count (no Redis) as raw HTTP; (status, seconds) each."""
    out = []
    r, dt = _timed_post(s, INIT_REQUEST)
    out.append((r.status_code, dt))
    sid = r.headers.get("mcp-session-id")
    if r.status_code != 200 or not sid:
        return out
    r, dt = _timed_post(s, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    out.append((r.status_code, dt))
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "slow_count", "arguments": {"n": 1, "interval_ms": 0}},
    }
    r, dt = _timed_post(s, call, sid)
    assert r.status_code != 200 or "counted to 1" in r.text, r.text
    out.append((r.status_code, dt))
    return out


def _metric(s: ServerProc, name: str, **labels: str) -> float:
    return s.metric(httpx2.get(s.base + "/metrics").text, name, **labels)


def _counted(lim: Limited, prefix: str) -> int:
    """Requests the limiter has counted in Redis (all principals, all windows) under a key prefix."""
    r = redis.Redis.from_url(lim.redis.url, socket_timeout=2)
    try:
        return sum(int(r.get(k) or 0) for k in r.scan_iter(match=prefix + "rl:*"))
    finally:
        r.close()


def test_frozen_redis_costs_milliseconds_and_the_limiter_recovers(limited):
    s = limited.allow
    assert all(status in (200, 202) for status, _ in _mcp_round(s))
    with limited.redis.frozen():
        timings = []
        for _ in range(4):
            timings += _mcp_round(s)
        assert all(status in (200, 202) for status, _ in timings), timings
        assert max(dt for _, dt in timings) < FAST, timings
        # After a few failures the breaker opens and requests no longer wait for Redis at all.
        assert _metric(s, "mcp_ratelimit_breaker_open") == 1
        assert _metric(s, "mcp_ratelimit_short_circuited_total", action="allow") >= 1
        assert _metric(s, "mcp_ratelimit_redis_errors_total", action="allow") >= 1

    def counting_again() -> bool:
        before = _counted(limited, "t-rla:")
        _mcp_round(s)
        return _counted(limited, "t-rla:") > before and _metric(s, "mcp_ratelimit_breaker_open") == 0

    wait_for(counting_again, 15, "the limiter to count in Redis again", interval=0.2)


def test_frozen_redis_with_deny_refuses_fast_then_recovers(limited):
    s = limited.deny
    assert _mcp_round(s)[0][0] == 200
    with limited.redis.frozen():
        for _ in range(8):
            r, dt = _timed_post(s, INIT_REQUEST)
            assert r.status_code == 503 and dt < FAST, (r.status_code, dt)
            assert int(r.headers["retry-after"]) >= 1
        assert _metric(s, "mcp_ratelimit_short_circuited_total", action="deny") >= 1

    wait_for(lambda: _timed_post(s, INIT_REQUEST)[0].status_code == 200, 15, "requests to pass again")


def test_breaker_opens_after_consecutive_failures_and_probes_once():
    from mcpops_server.ratelimit import Breaker

    now = [0.0]
    b = Breaker(failures=3, cooldown=5, clock=lambda: now[0])
    for _ in range(2):
        assert b.admit()
        b.failure()
    assert b.admit()
    b.success()  # a success resets the count
    for _ in range(3):
        assert b.admit()
        b.failure()
    assert b.is_open and not b.admit()
    now[0] = 4.9
    assert not b.admit()
    now[0] = 5.0
    assert b.admit()  # half-open: one probe goes through ...
    assert not b.admit()  # ... and only one
    b.failure()  # the probe failed: open for another cooldown
    assert not b.admit()
    now[0] = 10.0
    assert b.admit()
    b.success()
    assert not b.is_open and b.admit() and b.admit()


def test_limiter_settings_defaults():
    from mcpops_server.config import RateLimitSettings

    s = RateLimitSettings()
    assert (s.timeout, s.breaker_failures, s.breaker_cooldown) == (0.25, 3, 5.0)
