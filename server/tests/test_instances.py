"""Two instances sharing Redis: one rate limit across both; sessions routed by their owning instance."""

from __future__ import annotations

import itertools
import time
import uuid

import anyio
import httpx2
from conftest import PUBLIC_HOST, mcp_session
from mcpops_testlib import ACCEPT_BOTH, INIT_REQUEST

AUD = f"https://{PUBLIC_HOST}/mcp"
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def test_rate_limit_counts_across_two_instances(fleet, issuer):
    """Limit 10/min per principal: alternate requests between the instances; the 11th is refused."""
    for _attempt in range(3):
        window = int(time.time() // 60)
        tok = issuer.token(AUD, sub="rl-" + uuid.uuid4().hex)
        headers = {"Authorization": f"Bearer {tok}", "Accept": ACCEPT_BOTH}
        codes = []
        retry_after = None
        for server in itertools.islice(itertools.cycle([fleet.ra, fleet.rb]), 12):
            r = httpx2.post(server.mcp_url, json=PING, headers=headers)
            codes.append(r.status_code)
            if r.status_code == 429 and retry_after is None:
                retry_after = r.headers.get("retry-after")
        if int(time.time() // 60) != window:
            continue  # crossed a window boundary mid-test: counts reset, try again
        assert all(c != 429 for c in codes[:10]), codes
        assert codes[10:] == [429, 429], codes
        assert retry_after is not None and 1 <= int(retry_after) <= 60
        # a different principal is not affected
        other = issuer.token(AUD, sub="rl-other-" + uuid.uuid4().hex)
        r = httpx2.post(fleet.rb.mcp_url, json=PING, headers={**headers, "Authorization": f"Bearer {other}"})
        assert r.status_code != 429
        metrics = httpx2.get(fleet.ra.base + "/metrics").text + httpx2.get(fleet.rb.base + "/metrics").text
        assert "mcp_ratelimit_rejected_total" in metrics
        return
    raise AssertionError("could not run within one rate-limit window")


class AffinityRouter(httpx2.AsyncBaseTransport):
    """What nginx does with its `map`: requests carrying Mcp-Session-Id go to the instance named by the
    id's prefix; requests without one go round-robin. The Host header stays the public name."""

    def __init__(self, backends: dict[str, int]):
        self.backends = backends
        self.rr = itertools.cycle(sorted(backends))
        self.inner = httpx2.AsyncHTTPTransport()
        self.routed: list[tuple[str | None, str]] = []

    async def handle_async_request(self, request):
        sid = request.headers.get("mcp-session-id")
        target = sid.split(".", 1)[0] if sid else next(self.rr)
        self.routed.append((sid, target))
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.backends[target])
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


def test_shared_request_state_key_ring_is_loaded(fleet):
    for server in (fleet.ra, fleet.rb):
        ready = [x for x in server.log_lines() if x.get("event") == "ready"]
        assert ready and ready[0]["settings"]["request_state_keys"] == 2
        assert ready[0]["settings"]["instance_id"] in ("ia", "ib")


def test_sessions_are_routed_to_their_owning_instance(fleet, issuer):
    router = AffinityRouter({"ia": fleet.ra.port, "ib": fleet.rb.port})

    async def one_session():
        tok = issuer.token(AUD, sub="route-" + uuid.uuid4().hex)
        async with mcp_session(f"https://{PUBLIC_HOST}/mcp", tok, transport=router) as c:
            tools = await c.list_tools()
            assert any(t.name == "slow_count" for t in tools.tools)
            res = await c.call_tool("slow_count", {"n": 2, "interval_ms": 10})
            assert not res.is_error

    async def go():
        for _ in range(4):
            await one_session()

    anyio.run(go)
    owners = {sid.split(".", 1)[0] for sid, _ in router.routed if sid}
    assert owners == {"ia", "ib"}, router.routed  # round-robin spread the sessions over both
    for sid, target in router.routed:
        if sid:
            assert sid.startswith(target + ".")

    # Without affinity a follow-up request on the other instance is lost: the id is unknown there.
    tok = issuer.token(AUD, sub="route-neg-" + uuid.uuid4().hex)
    headers = {"Authorization": f"Bearer {tok}", "Accept": ACCEPT_BOTH}
    r = httpx2.post(fleet.ra.mcp_url, json=INIT_REQUEST, headers=headers)
    sid = r.headers["mcp-session-id"]
    assert sid.startswith("ia.")
    lost = httpx2.post(fleet.rb.mcp_url, json=PING, headers={**headers, "Mcp-Session-Id": sid})
    assert lost.status_code == 404


def test_chunked_counting_never_lets_more_than_the_limit_through(redis_srv):
    """Instances reserve counts from Redis in chunks; two limiters sharing Redis stay within the limit."""
    from mcpops_server.config import RateLimitSettings
    from mcpops_server.ratelimit import RateLimiter
    from redis.asyncio import Redis

    async def go():
        prefix = f"t-chunk-{uuid.uuid4().hex[:6]}:"
        r1, r2 = Redis.from_url(redis_srv.url), Redis.from_url(redis_srv.url)
        try:
            settings = RateLimitSettings(requests_per_minute=100, timeout=5)  # chunking, not deadlines
            a, b = RateLimiter(r1, settings, prefix), RateLimiter(r2, settings, prefix)
            assert a.chunk == 5
            window = int(time.time() // 60)
            allowed = 0
            for i in range(150):
                d = await (a if i % 3 else b).hit("sub:someone")
                allowed += d.allowed
                if not d.allowed:
                    assert 1 <= d.retry_after <= 60
            if int(time.time() // 60) != window:
                return None
            return allowed
        finally:
            await r1.aclose()
            await r2.aclose()

    for _ in range(3):
        allowed = anyio.run(go)
        if allowed is not None:
            assert 100 - 5 <= allowed <= 100, allowed
            return
    raise AssertionError("could not run within one rate-limit window")
