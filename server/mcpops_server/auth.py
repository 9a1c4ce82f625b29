"""OAuth 2.1 resource server: JWT access tokens verified against the issuer's JWKS.

The keys are held by ``jwks.KeyStore`` (discovery, scheduled refresh, key rotation); a token
naming an unknown ``kid`` triggers a (throttled) refetch.

Checks: the header's ``alg`` must be on the explicit allow-list (never ``none`` or ``HS*``) and
fit the key's type; ``iss`` must equal the configured issuer exactly; ``aud`` must contain the
resource URL (RFC 8707); ``exp`` is required and ``exp``/``nbf``/``iat`` are checked with a small
leeway; required scopes come from ``scope`` (space-separated) or ``scp`` (list).

Verified tokens are cached for ``token_cache_ttl`` (never past their ``exp``), so a short JWKS
outage does not log anybody out; a cached token whose key the issuer no longer publishes is
refused at its next use.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt import PyJWK
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials

from . import metrics
from .asgi import JSON, header, send_response
from .config import AuthSettings
from .jwks import KTY_ALGS, FetchError, KeyStore
from .logging import user_id_var

logger = logging.getLogger("mcpops.auth")

_CACHE_MAX = 10_000
_EC_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True)
class Verified:
    access_token: AccessToken
    principal: str
    scopes: frozenset[str]
    cache_until: float
    key: str  # fingerprint of the key that verified it: the token is good while the issuer publishes it
    # What the request path hands on, made once per token rather than once per request:
    user: AuthenticatedUser  # scope["user"], the SDK's auth context
    credentials: AuthCredentials  # scope["auth"]
    user_id: str  # the log's user_id: the subject, else the client id


class AuthFailure(Exception):
    """A token was refused; ``reason`` is a short code for logs and metrics."""

    def __init__(self, reason: str, description: str):
        super().__init__(description)
        self.reason = reason
        self.description = description


def resource_metadata_url(resource_url: str) -> str:
    """RFC 9728 §3.1: insert /.well-known/oauth-protected-resource before the resource's path."""
    parts = urlsplit(resource_url)
    path = parts.path if parts.path != "/" else ""
    return urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-protected-resource" + path, "", ""))


class JWKSVerifier:
    def __init__(self, settings: AuthSettings):
        assert settings.resource_server_url and settings.issuer_url
        self.settings = settings
        self.issuer = settings.issuer_url
        rs = settings.resource_server_url
        self.audiences = sorted({rs, rs.rstrip("/"), rs.rstrip("/") + "/"})
        self.algorithms = frozenset(a for a in settings.algorithms if a != "none" and not a.startswith("HS"))
        self.required_scopes = tuple(settings.required_scopes)
        self.keys = KeyStore(settings)
        self._cache: dict[str, Verified] = {}

    # ---------------------------------------------------------------- keys
    @property
    def jwks_uri(self) -> str | None:
        return self.keys.jwks_uri

    async def start(self) -> None:
        await self.keys.start()

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the key set (throttled unless forced). True if a fetch ran."""
        if force:
            await self.keys.refresh()
            return not self.keys.pinned
        return await self.keys.refresh_on_demand()

    # ---------------------------------------------------------------- tokens
    async def _key_for(self, kid: str | None) -> tuple[PyJWK, str]:
        found = self.keys.get(kid)
        if found is not None:
            return found
        try:
            await self.keys.refresh_on_demand()
        except FetchError:
            raise AuthFailure("jwks_unavailable", "The issuer's signing keys are unavailable") from None
        found = self.keys.get(kid)
        if found is None:
            raise AuthFailure("unknown_kid", "Unknown signing key")
        return found

    async def verify(self, token: str) -> Verified:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit.cache_until > now and hit.key in self.keys.fingerprints:
                return hit
            self._cache.pop(token, None)
        verified = await self._verify(token, now)
        if self.settings.token_cache_ttl > 0:
            if len(self._cache) >= _CACHE_MAX:
                self._evict(now)
            self._cache[token] = verified
        return verified

    def _evict(self, now: float) -> None:
        for t in [t for t, v in self._cache.items() if v.cache_until <= now]:
            del self._cache[t]
        while len(self._cache) >= _CACHE_MAX:
            self._cache.pop(next(iter(self._cache)))

    async def _verify(self, token: str, now: float) -> Verified:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailure("malformed", "The access token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthFailure("bad_alg", "The token's signing algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "The access token is malformed")
        jwk, fingerprint = await self._key_for(kid)
        if not _alg_fits(alg, jwk):
            raise AuthFailure("bad_alg", "The token's signing algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                jwk.key,
                algorithms=[alg],
                audience=self.audiences,
                issuer=self.issuer,
                leeway=self.settings.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_iat": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailure("expired", "The access token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailure("not_yet_valid", "The access token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise AuthFailure("bad_issuer", "The access token was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthFailure("bad_audience", "The access token was issued for another resource") from None
        except jwt.InvalidSignatureError:
            raise AuthFailure("bad_signature", "The access token's signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure("missing_claim", f"The access token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise AuthFailure("invalid", "The access token is invalid") from None
        if self.issuer != claims.get("iss"):  # exact, belt and braces
            raise AuthFailure("bad_issuer", "The access token was issued by another issuer")
        scopes = _scopes(claims)
        sub = claims.get("sub")
        client_id = claims.get("client_id") or claims.get("azp") or sub or "unknown"
        exp = int(claims["exp"])
        aud = claims.get("aud")
        access = AccessToken(
            token=token,
            client_id=str(client_id),
            scopes=sorted(scopes),
            expires_at=exp,
            resource=self.settings.resource_server_url if aud else None,
            subject=str(sub) if sub is not None else None,
            claims={"iss": claims.get("iss")},
        )
        principal = f"sub:{sub}" if sub is not None else f"client:{client_id}"
        until = min(now + self.settings.token_cache_ttl, exp + self.settings.leeway)
        return Verified(
            access,
            principal,
            frozenset(scopes),
            until,
            fingerprint,
            user=AuthenticatedUser(access),
            credentials=AuthCredentials(sorted(scopes)),
            user_id=access.subject or access.client_id,
        )


def _alg_fits(alg: str, jwk: PyJWK) -> bool:
    data = jwk._jwk_data
    if data.get("alg") is not None and data["alg"] != alg:
        return False
    kty = data.get("kty")
    if alg not in KTY_ALGS.get(kty, ()):
        return False
    return not (kty == "EC" and _EC_CURVE_ALG.get(data.get("crv", "")) != alg)


def _scopes(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return set(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return {s for s in scp if isinstance(s, str)}
    if isinstance(scp, str):
        return set(scp.split())
    return set()


# -------------------------------------------------------------------- HTTP side


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


class AuthGate:
    """ASGI wrapper for the MCP endpoint: 401/403 per RFC 6750 + RFC 9728, else pass the user on."""

    def __init__(self, app: Any, verifier: JWKSVerifier, metadata_url: str, required_scopes: tuple[str, ...]):
        self.app = app
        self.verifier = verifier
        self.metadata_url = metadata_url
        self.required = frozenset(required_scopes)
        self.required_str = " ".join(required_scopes)
        self.succeeded = metrics.auth_attempts(metrics.ENDPOINT, "success")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        token = None
        authorization = header(scope, b"authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        endpoint = metrics.ENDPOINT
        if not token:
            metrics.auth_attempts(endpoint, "missing").inc()
            await self._deny(send, 401, None, "Authentication required")
            return
        try:
            verified = await self.verifier.verify(token)
        except AuthFailure as failure:
            metrics.auth_attempts(endpoint, failure.reason).inc()
            metrics.auth_duration.observe(time.perf_counter() - started)
            scope.setdefault("state", {})["auth_failure"] = failure.reason
            await self._deny(send, 401, "invalid_token", failure.description)
            return
        metrics.auth_duration.observe(time.perf_counter() - started)
        if not self.required <= verified.scopes:
            metrics.auth_attempts(endpoint, "insufficient_scope").inc()
            user_id_var.set(verified.access_token.subject)
            scope.setdefault("state", {})["user_id"] = verified.access_token.subject
            await self._deny(send, 403, "insufficient_scope", "The access token lacks a required scope")
            return
        self.succeeded.inc()
        scope["user"] = verified.user
        scope["auth"] = verified.credentials
        state = scope.setdefault("state", {})
        state["principal"] = verified.principal
        state["user_id"] = verified.user_id
        user_id_var.set(verified.user_id)
        reset = auth_context_var.set(verified.user)
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(reset)

    async def _deny(self, send: Any, status: int, error: str | None, description: str) -> None:
        parts = []
        if error:
            parts.append(f'error="{error}"')
            parts.append(f'error_description="{_quote(description)}"')
        if self.required_str and (status == 403 or error is None):
            parts.append(f'scope="{_quote(self.required_str)}"')
        parts.append(f'resource_metadata="{self.metadata_url}"')
        challenge = "Bearer " + ", ".join(parts)
        body = json.dumps({"error": error or "invalid_request", "error_description": description}).encode()
        await send_response(
            send,
            status,
            body,
            JSON,
            [(b"www-authenticate", challenge.encode()), (b"cache-control", b"no-store")],
        )


def protected_resource_metadata(settings: AuthSettings, resource_name: str) -> dict[str, Any]:
    """RFC 9728 document."""
    doc: dict[str, Any] = {
        "resource": settings.resource_server_url,
        "authorization_servers": [settings.server_url or settings.issuer_url],
        "bearer_methods_supported": ["header"],
        "resource_name": resource_name,
    }
    if settings.required_scopes:
        doc["scopes_supported"] = list(settings.required_scopes)
    return doc
