"""Session limits: per principal, in total, and a short life for sessions nobody uses."""

from __future__ import annotations

import contextlib
import uuid

import anyio
import httpx2
import pytest
from conftest import mcp_session
from mcpops_testlib import RawSession, ServerProc, wait_for

PER_PRINCIPAL = 5
TOTAL = 2 * PER_PRINCIPAL
UNUSED_TIMEOUT = 2


@pytest.fixture(scope="module")
def limited(workdir, redis_srv, issuer):
    s = ServerProc("limited", workdir / "limited", {})
    s.env.update(
        {
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-limited:",
            "AUTH_ISSUER_URL": issuer.url,
            "AUTH_JWKS_URL": issuer.url + "/jwks.json",
            "RESOURCE_SERVER_URL": f"http://127.0.0.1:{s.port}/mcp",
            "RATE_LIMIT_PER_MINUTE": "100000",
            "MCP_MAX_SESSIONS_PER_PRINCIPAL": str(PER_PRINCIPAL),
            "MCP_MAX_SESSIONS": str(TOTAL),
            "MCP_SESSION_UNUSED_TIMEOUT": str(UNUSED_TIMEOUT),
        }
    )
    s.start()
    yield s
    with contextlib.suppress(Exception):
        s.stop()


def _active(s: ServerProc) -> float:
    return s.metric(httpx2.get(s.base + "/metrics").text, "mcp_sessions_active")


def test_one_principal_cannot_take_every_session(limited, issuer):
    s = limited

    def sessions(sub: str, n: int, *, use: bool) -> list[RawSession]:
        out = []
        token = issuer.token(s.mcp_url, sub=sub)
        for _ in range(n):
            sess = RawSession(s.mcp_url, token)
            r = sess.open()
            assert r.status_code == 200, (sub, r.status_code, r.text)
            if use:
                assert sess.request("ping") == {"jsonrpc": "2.0", "id": sess._next_id, "result": {}}
            out.append(sess)
        return out

    def refused(sub: str) -> httpx2.Response:
        return RawSession(s.mcp_url, issuer.token(s.mcp_url, sub=sub)).open()

    a_sub = "a-" + uuid.uuid4().hex[:6]
    a = sessions(a_sub, PER_PRINCIPAL, use=True)
    over = refused(a_sub)
    assert over.status_code == 429, (over.status_code, over.text)
    err = over.json()
    assert err["jsonrpc"] == "2.0" and err["id"] is None and "sessions" in err["error"]["message"], err

    # another principal is unaffected: it initializes and calls a tool
    async def b_calls() -> None:
        async with mcp_session(s.mcp_url, issuer.token(s.mcp_url, sub="b-" + uuid.uuid4().hex[:6])) as c:
            res = await c.call_tool("notes_search", {"query": "zzz"})
            assert not res.is_error

    anyio.run(b_calls)

    # the total: with TOTAL sessions open, anyone's new session is refused (503) until one ends
    c = sessions("c-" + uuid.uuid4().hex[:6], TOTAL - PER_PRINCIPAL, use=True)
    full = refused("d-" + uuid.uuid4().hex[:6])
    assert full.status_code == 503, (full.status_code, full.text)
    assert all(sess.close() == 200 for sess in c)

    # sessions opened and never used end after the unused timeout, used ones stay
    e_sub = "e-" + uuid.uuid4().hex[:6]
    sessions(e_sub, PER_PRINCIPAL, use=False)
    assert refused(e_sub).status_code == 429
    wait_for(lambda: _active(s) == PER_PRINCIPAL, UNUSED_TIMEOUT + 15, "the unused sessions to end")
    assert refused(e_sub).status_code == 200  # room again for that principal
    for sess in a:
        assert sess.post("ping").status_code == 200  # outlived the unused timeout: they were used
