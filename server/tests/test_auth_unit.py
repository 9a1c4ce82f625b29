"""The verifier in-process: OIDC discovery fallback, key rotation picked up on an unknown kid."""

from __future__ import annotations

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mcpops_server import auth as auth_mod
from mcpops_server.auth import AuthFailure, JWKSVerifier, discovery_urls, resource_metadata_url
from mcpops_server.config import AuthSettings
from mcpops_testlib import Issuer

AUD = "https://mcp.example.com/mcp"


def test_well_known_urls():
    assert resource_metadata_url(AUD) == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    assert discovery_urls("https://id.example/tenant1") == [
        "https://id.example/.well-known/oauth-authorization-server/tenant1",
        "https://id.example/.well-known/openid-configuration/tenant1",
        "https://id.example/tenant1/.well-known/openid-configuration",
    ]
    assert (
        discovery_urls("https://id.example")[0] == "https://id.example/.well-known/oauth-authorization-server"
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
    monkeypatch.setattr(auth_mod, "_REFETCH_MIN_INTERVAL", 0.0)
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
