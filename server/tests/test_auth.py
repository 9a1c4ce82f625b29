"""Every bad token is refused with the right status and challenge; good ones pass."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mcpops_testlib import ACCEPT_BOTH, INIT_REQUEST, Issuer, ServerProc, wait_for


def _call(server, token: str | None):
    headers = {"Accept": ACCEPT_BOTH}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.post(server.mcp_url, json=INIT_REQUEST, headers=headers)


def _bad_tokens(issuer, aud):
    now = int(time.time())
    return {
        "malformed": "not.a.jwt",
        "garbage": "abc",
        "expired": issuer.token(aud, exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not_yet_valid": issuer.token(aud, nbf=now + 3600, iat=now),
        "wrong_iss": issuer.token(aud, iss="https://evil.example"),
        "wrong_aud": issuer.token(aud, aud="https://other.example/mcp"),
        "no_aud": issuer.token(aud, aud=None),
        "no_exp": issuer.token(aud, exp=None),
        "alg_none": issuer.token_alg_none(aud),
        "hs256_with_public_key": issuer.token_hs256_with_public_key(aud),
        "unknown_kid": issuer.token(aud, kid="rogue", key=ec.generate_private_key(ec.SECP256R1())),
        "wrong_key_known_kid": issuer.token(aud, key=issuer.rogue_key),
        "alg_key_mismatch": issuer.token(aud, alg="ES256", kid="rsa1", key=issuer.ec_key),
    }


@pytest.mark.parametrize(
    "case",
    [
        "malformed",
        "garbage",
        "expired",
        "not_yet_valid",
        "wrong_iss",
        "wrong_aud",
        "no_aud",
        "no_exp",
        "alg_none",
        "hs256_with_public_key",
        "unknown_kid",
        "wrong_key_known_kid",
        "alg_key_mismatch",
    ],
)
def test_bad_token_gets_401_with_resource_metadata(fleet, issuer, case):
    s = fleet.main
    r = _call(s, _bad_tokens(issuer, s.mcp_url)[case])
    assert r.status_code == 401, (case, r.status_code, r.text)
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{s.base}/.well-known/oauth-protected-resource/mcp"' in challenge


def test_missing_token_gets_401_with_resource_metadata(fleet):
    s = fleet.main
    r = _call(s, None)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert f'resource_metadata="{s.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert "error=" not in challenge  # RFC 6750 §3.1: no error code when no credentials were sent


def test_missing_scope_gets_403_insufficient_scope(fleet, issuer):
    s = fleet.main
    r = _call(s, issuer.token(s.mcp_url, scope="other read"))
    assert r.status_code == 403
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="mcp"' in challenge
    assert "resource_metadata=" in challenge


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256"])
def test_good_tokens_pass(fleet, issuer, alg):
    s = fleet.main
    r = _call(s, issuer.token(s.mcp_url, alg=alg, scope="extra mcp"))
    assert r.status_code == 200, r.text
    assert r.headers["mcp-session-id"]


def test_scp_claim_and_leeway(fleet, issuer):
    s = fleet.main
    now = int(time.time())
    # expired 10 s ago, inside the 30 s leeway; scopes as an `scp` list
    tok = issuer.token(s.mcp_url, scope=None, scp=["mcp"], exp=now - 10, iat=now - 100, nbf=now - 100)
    assert _call(s, tok).status_code == 200


def test_unknown_kid_triggers_a_refetch(fleet, issuer):
    s = fleet.main
    before = issuer.jwks_hits
    r = _call(s, issuer.token(s.mcp_url, kid="rogue-" + str(time.time()), key=issuer.rogue_key))
    assert r.status_code == 401
    # The first refetch after start-up is allowed (throttled afterwards); either way keys were asked for
    # at least once in this process's life through discovery.
    assert issuer.meta_hits >= 1 and issuer.jwks_hits >= 1
    assert issuer.jwks_hits >= before


@pytest.fixture(scope="module")
def rotating(workdir, redis_srv) -> Iterator[tuple[Issuer, ServerProc]]:
    """An issuer of its own (the test withdraws a key) and an instance refreshing its keys every second."""
    iss = Issuer()
    iss.extra_keys.append(("old", ec.generate_private_key(ec.SECP256R1())))
    iss.start()
    s = ServerProc("rotating", workdir / "rotating", {})
    s.env.update(
        {
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-rot:",
            "AUTH_SERVER_URL": iss.url,
            "RESOURCE_SERVER_URL": f"http://127.0.0.1:{s.port}/mcp",
            "AUTH_JWKS_MAX_AGE": "1",
        }
    )
    try:
        s.start()
        yield iss, s
    finally:
        with contextlib.suppress(Exception):
            s.stop()
        iss.stop()


def test_a_key_the_issuer_withdraws_stops_being_trusted(rotating):
    iss, s = rotating
    old_key = iss.extra_keys[0][1]
    old_tok = iss.token(s.mcp_url, kid="old", key=old_key)
    assert _call(s, old_tok).status_code == 200  # verified, and now in the token cache
    assert _call(s, old_tok).status_code == 200
    # Rotation: the issuer publishes a new key and stops publishing the old one.
    new_key = ec.generate_private_key(ec.SECP256R1())
    iss.extra_keys.append(("new", new_key))
    iss.withdrawn.add("old")
    wait_for(lambda: _call(s, old_tok).status_code == 401, 10, "the withdrawn key's token to be refused")
    assert _call(s, iss.token(s.mcp_url, kid="new", key=new_key)).status_code == 200
    assert _call(s, iss.token(s.mcp_url)).status_code == 200  # the keys still published are untouched
    # A freshly signed token with the withdrawn key is refused too.
    r = _call(s, iss.token(s.mcp_url, kid="old", key=old_key))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
