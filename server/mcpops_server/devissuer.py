"""A lab token issuer for ``make demo`` and the molecule tests. Never used in production.

    python -m mcpops_server.devissuer init DIR [--iss URL]
        creates DIR/private_key.pem (EC P-256, 0600), DIR/jwks.json (public key) and
        DIR/issuer.json ({"issuer": URL}); running it again changes nothing.
    python -m mcpops_server.devissuer token DIR --aud URL --scope "a b" [--sub S] [--ttl N] [--iss URL]
        prints a signed ES256 access token.

Point the server at it with ``auth.jwks_file: DIR/jwks.json`` and ``auth.issuer_url`` = the issuer.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_ISSUER = "https://devissuer.mcpops.invalid"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(private_key: Any) -> dict[str, str]:
    nums = private_key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64u(nums.x.to_bytes(32, "big")),
        "y": _b64u(nums.y.to_bytes(32, "big")),
    }
    # RFC 7638 thumbprint as kid: stable for a key, so re-running init is a no-op.
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    jwk["kid"] = _b64u(hashlib.sha256(canonical.encode()).digest())
    jwk["alg"] = "ES256"
    jwk["use"] = "sig"
    return jwk


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


def init(directory: str, issuer: str | None = None) -> list[str]:
    """Create the key pair and JWKS. Returns the files created or rewritten (empty: nothing changed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key_path = d / "private_key.pem"
    changed: list[str] = []
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        if _write_if_changed(key_path, pem, 0o600):
            changed.append(str(key_path))
    jwks = json.dumps({"keys": [public_jwk(key)]}, indent=2, sort_keys=True) + "\n"
    if _write_if_changed(d / "jwks.json", jwks, 0o644):
        changed.append(str(d / "jwks.json"))
    iss_path = d / "issuer.json"
    if issuer is not None or not iss_path.exists():
        doc = json.dumps({"issuer": issuer or DEFAULT_ISSUER}) + "\n"
        if _write_if_changed(iss_path, doc, 0o644):
            changed.append(str(iss_path))
    return changed


def issuer_of(directory: str) -> str:
    p = Path(directory) / "issuer.json"
    if p.exists():
        return json.loads(p.read_text(encoding="utf-8"))["issuer"]
    return DEFAULT_ISSUER


def token(
    directory: str,
    *,
    aud: str,
    scope: str = "",
    sub: str = "lab-user",
    ttl: int = 3600,
    iss: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(
        (Path(directory) / "private_key.pem").read_bytes(), password=None
    )
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": iss or issuer_of(directory),
        "sub": sub,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "client_id": "mcpops-lab",
    }
    if scope:
        claims["scope"] = scope
    claims.update(extra or {})
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": public_jwk(key)["kid"]})  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcpops_server.devissuer", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="create the key pair and jwks.json (idempotent)")
    i.add_argument("dir")
    i.add_argument("--iss", help=f"issuer URL recorded for tokens (default {DEFAULT_ISSUER})")
    t = sub.add_parser("token", help="print a signed access token")
    t.add_argument("dir")
    t.add_argument("--aud", required=True, help="the resource URL, e.g. https://mcp.example.com/mcp")
    t.add_argument("--scope", default="", help='space-separated scopes, e.g. "mcp:read mcp:write"')
    t.add_argument("--sub", default="lab-user")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    t.add_argument("--iss", help="issuer (default: the one recorded by init)")
    args = p.parse_args(argv)
    if args.command == "init":
        changed = init(args.dir, args.iss)
        for path in changed:
            print(f"created {path}")
        flag = "true" if changed else "false"
        print(f"changed={flag} jwks={Path(args.dir) / 'jwks.json'} issuer={issuer_of(args.dir)}")
        return 0
    if not (Path(args.dir) / "private_key.pem").exists():
        print(f"devissuer: {args.dir} has no private_key.pem; run init first", file=sys.stderr)
        return 2
    print(token(args.dir, aud=args.aud, scope=args.scope, sub=args.sub, ttl=args.ttl, iss=args.iss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
