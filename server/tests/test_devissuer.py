"""The lab issuer: idempotent init, tokens that verify against its JWKS."""

from __future__ import annotations

import json
import stat
import subprocess

import jwt
from mcpops_testlib import PYTHON


def _run(*args):
    return subprocess.run(
        [PYTHON, "-m", "mcpops_server.devissuer", *args], capture_output=True, text=True, timeout=60
    )


def test_init_is_idempotent_and_tokens_verify(tmp_path):
    d = tmp_path / "iss"
    first = _run("init", str(d), "--iss", "https://lab.example")
    assert first.returncode == 0 and "changed=true" in first.stdout and "created" in first.stdout
    assert stat.S_IMODE((d / "private_key.pem").stat().st_mode) == 0o600
    jwks_before = (d / "jwks.json").read_text()
    second = _run("init", str(d))
    assert "changed=false" in second.stdout and "created" not in second.stdout
    assert (d / "jwks.json").read_text() == jwks_before
    tok = _run(
        "token", str(d), "--aud", "https://mcp.example/mcp", "--scope", "a b", "--sub", "me", "--ttl", "60"
    )
    assert tok.returncode == 0
    token = tok.stdout.strip()
    jwk = json.loads(jwks_before)["keys"][0]
    assert "d" not in jwk
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["ES256"],
        audience="https://mcp.example/mcp",
        issuer="https://lab.example",
    )
    assert claims["sub"] == "me" and claims["scope"] == "a b" and claims["exp"] - claims["iat"] == 60
    missing = _run("token", str(tmp_path / "none"), "--aud", "https://x.example/mcp")
    assert missing.returncode == 2
