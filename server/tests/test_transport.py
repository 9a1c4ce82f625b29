"""Transport security (transport.py): Host/Origin validation, the body limit, CORS."""

from __future__ import annotations

import json

import httpx2
from mcpops_testlib import ACCEPT_BOTH as ACCEPT
from mcpops_testlib import INIT_REQUEST, post_body


def test_bad_host_gets_421(fleet, issuer):
    s = fleet.main
    tok = issuer.token(s.mcp_url)
    r = httpx2.post(
        s.mcp_url,
        json=INIT_REQUEST,
        headers={"Authorization": f"Bearer {tok}", "Accept": ACCEPT, "Host": "evil.example"},
    )
    assert r.status_code == 421


def test_public_host_is_accepted(fleet, issuer):
    s = fleet.ra  # configured with MCP_PUBLIC_HOSTS=mcp.test
    tok = issuer.token("https://mcp.test/mcp")
    for host in ("mcp.test", "mcp.test:443", "localhost:1234"):
        r = httpx2.post(
            s.mcp_url,
            json=INIT_REQUEST,
            headers={"Authorization": f"Bearer {tok}", "Accept": ACCEPT, "Host": host},
        )
        assert r.status_code == 200, (host, r.status_code, r.text)


def test_foreign_origin_gets_403(fleet, issuer):
    s = fleet.main
    tok = issuer.token(s.mcp_url)
    r = httpx2.post(
        s.mcp_url,
        json=INIT_REQUEST,
        headers={"Authorization": f"Bearer {tok}", "Accept": ACCEPT, "Origin": "https://evil.example"},
    )
    assert r.status_code == 403


def test_the_servers_own_origin_is_accepted(fleet, issuer):
    """Same-origin requests pass without cors.allowed_origins; other origins, other ports do not."""

    def status(server, origin, host=None, token=None):
        headers = {"Accept": ACCEPT, "Origin": origin}
        if host:
            headers["Host"] = host
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx2.post(server.mcp_url, json=INIT_REQUEST, headers=headers).status_code

    s = fleet.health  # loopback, no cors.allowed_origins, auth off
    p = s.port
    assert status(s, f"http://127.0.0.1:{p}") == 200
    assert status(s, f"HTTP://LOCALHOST:{p}/") == 200  # another loopback name for the same socket
    assert status(s, f"http://localhost:{p}", host=f"localhost:{p}") == 200
    for foreign in (f"http://127.0.0.1:{p + 1}", "http://localhost", f"http://evil.example:{p}", "null"):
        assert status(s, foreign) == 403, foreign
    r = fleet.ra  # public host mcp.test (any port), auth on
    tok = issuer.token("https://mcp.test/mcp")
    assert status(r, "https://mcp.test", host="mcp.test", token=tok) == 200
    assert status(r, "https://mcp.test:8443", host="mcp.test:8443", token=tok) == 200
    assert status(r, "https://mcp.test:443", host="mcp.test", token=tok) == 200  # default port spelt out
    assert status(r, f"http://127.0.0.1:{r.port}", host="mcp.test", token=tok) == 403
    assert status(r, "https://mcp.test.evil.example", host="mcp.test", token=tok) == 403


def test_cors_for_an_allowed_origin(fleet, issuer):
    s = fleet.main
    pre = httpx2.options(
        s.mcp_url,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id",
        },
    )
    assert pre.status_code == 204
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "mcp-session-id" in pre.headers["access-control-allow-headers"].lower()
    assert pre.headers["access-control-max-age"] == "3600"
    tok = issuer.token(s.mcp_url)
    r = httpx2.post(
        s.mcp_url,
        json=INIT_REQUEST,
        headers={"Authorization": f"Bearer {tok}", "Accept": ACCEPT, "Origin": "https://app.example"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "mcp-session-id" in exposed and "www-authenticate" in exposed
    # a 401 is readable by the browser client too (it needs WWW-Authenticate to start OAuth)
    r = httpx2.post(s.mcp_url, json=INIT_REQUEST, headers={"Accept": ACCEPT, "Origin": "https://app.example"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    bad = httpx2.options(
        s.mcp_url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert bad.status_code == 403


def test_body_over_the_limit_gets_413(fleet, issuer):
    s = fleet.main
    tok = issuer.token(s.mcp_url)
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 9000}}).encode()
    r = post_body(s.mcp_url, big, tok)
    assert r.status_code == 413

    def chunks():
        yield big[:4000]
        yield big[4000:]

    r = httpx2.post(
        s.mcp_url,
        content=chunks(),
        headers={
            "Authorization": f"Bearer {tok}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 413
