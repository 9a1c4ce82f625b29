"""The verifier in-process: OIDC discovery fallback, key rotation picked up on an unknown kid."""

from __future__ import annotations

import socket
import time

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mcpops_server import jwks as jwks_mod
from mcpops_server.auth import AuthFailure, JWKSVerifier, resource_metadata_url
from mcpops_server.config import AuthSettings, Settings
from mcpops_testlib import Issuer

AUD = "https://mcp.example.com/mcp"


def test_well_known_urls():
    assert resource_metadata_url(AUD) == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    assert jwks_mod.discovery_urls("https://id.example/tenant1") == [
        "https://id.example/.well-known/oauth-authorization-server/tenant1",
        "https://id.example/.well-known/openid-configuration/tenant1",
        "https://id.example/tenant1/.well-known/openid-configuration",
    ]
    assert (
        jwks_mod.discovery_urls("https://id.example")[0]
        == "https://id.example/.well-known/oauth-authorization-server"
    )


@pytest.fixture
def oidc_issuer():
    i = Issuer()
    i.oidc_only = True
    i.start()
    yield i
    i.stop()


def test_oidc_discovery_and_rotation(oidc_issuer, monkeypatch):
    iss = oidc_issuer
    monkeypatch.setattr(jwks_mod, "_REFETCH_MIN_INTERVAL", 0.0)
    settings = AuthSettings(
        issuer_url=iss.url, server_url=iss.url, resource_server_url=AUD, required_scopes=("mcp",)
    )

    async def go():
        v = JWKSVerifier(settings)
        await v.start()
        try:
            assert v.jwks_uri == iss.url + "/jwks.json"  # found through OpenID Connect discovery
            ok = await v.verify(iss.token(AUD))
            assert ok.principal.startswith("sub:") and "mcp" in ok.scopes
            # the issuer rotates in a new key: the first token naming it triggers a refetch
            new_key = ec.generate_private_key(ec.SECP256R1())
            iss.extra_keys.append(("ec2", new_key))
            hits = iss.jwks_hits
            rotated = await v.verify(iss.token(AUD, kid="ec2", key=new_key))
            assert iss.jwks_hits == hits + 1 and rotated.access_token.subject
            # cached: no further fetch, same object back
            tok = iss.token(AUD)
            first = await v.verify(tok)
            assert await v.verify(tok) is first
            with pytest.raises(AuthFailure) as exc:
                await v.verify(iss.token(AUD, kid="nope", key=ec.generate_private_key(ec.SECP256R1())))
            assert exc.value.reason == "unknown_kid"
        finally:
            await v.aclose()

    anyio.run(go)


@pytest.fixture
def plain_issuer():
    i = Issuer()
    i.start()
    yield i
    i.stop()


def _settings(iss_url: str, **over) -> AuthSettings:
    return AuthSettings(issuer_url=iss_url, server_url=iss_url, resource_server_url=AUD, **over)


def test_what_health_fetched_the_verifier_uses(plain_issuer, redis_srv):
    """One key store: a key the health check saw is trusted without another fetch."""
    from mcpops_server.health import HealthChecker
    from redis.asyncio import Redis

    iss = plain_issuer

    async def go():
        v = JWKSVerifier(_settings(iss.url))
        redis = Redis.from_url(redis_srv.url)
        await v.start()
        try:
            health = HealthChecker(Settings(auth=v.settings), redis, v)
            key = ec.generate_private_key(ec.SECP256R1())
            iss.extra_keys.append(("seen-by-health", key))
            code, body = await health.run()
            assert code == 200 and body["checks"] == {"redis": "ok", "auth_server": "ok"}
            hits = iss.jwks_hits
            # Within the unknown-kid throttle: only the health check's fetch can have brought this key.
            ok = await v.verify(iss.token(AUD, kid="seen-by-health", key=key))
            assert ok.principal.startswith("sub:") and iss.jwks_hits == hits
        finally:
            await v.aclose()
            await redis.aclose()

    anyio.run(go)


def test_issuer_down_at_refresh_keeps_the_old_keys(plain_issuer):
    iss = plain_issuer

    async def go():
        v = JWKSVerifier(_settings(iss.url, fetch_timeout=0.5))
        await v.start()
        try:
            iss.stop()
            with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
                await v.refresh(force=True)
            assert (await v.verify(iss.token(AUD))).principal.startswith("sub:")
        finally:
            await v.aclose()

    anyio.run(go)


def test_one_deadline_for_discovery_and_keys():
    """An issuer that accepts connections and never answers costs auth.fetch_timeout, not a multiple."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # never accepted: the kernel completes handshakes, nobody answers
    url = f"http://127.0.0.1:{hole.getsockname()[1]}/tenant"  # three discovery URLs to try

    async def go():
        v = JWKSVerifier(_settings(url, fetch_timeout=0.4))
        try:
            t0 = time.monotonic()
            await v.start()  # logs the failure, keeps going
            return time.monotonic() - t0
        finally:
            await v.aclose()

    try:
        assert anyio.run(go) < 0.7
    finally:
        hole.close()


def test_refresh_interval_honours_max_age_within_floor_and_ceiling():
    refresh_interval = jwks_mod.refresh_interval
    assert refresh_interval(None, 300) == 300  # no header: the ceiling
    assert refresh_interval("public, max-age=60", 300) == 60
    assert refresh_interval("max-age=86400", 300) == 300
    assert refresh_interval("max-age=5", 300) == 30  # the floor
    assert refresh_interval("no-store", 300) == 30
    assert refresh_interval("max-age=nonsense", 300) == 300
    assert refresh_interval("max-age=5", 1) == 1  # a ceiling below the floor wins (tests, labs)
    assert refresh_interval("max-age=5", 10) == 10
