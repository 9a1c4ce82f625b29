"""OAuth 2.1 resource server: JWT access tokens verified against the issuer's JWKS.

Keys come from (in order) ``auth.jwks_file`` (pinned, no network), ``auth.jwks_url``, or the
``jwks_uri`` of the issuer's metadata, discovered with RFC 8414 and then OpenID Connect
discovery. Keys are cached; a token naming an unknown ``kid`` triggers a (throttled) refetch.

Checks: the header's ``alg`` must be on the explicit allow-list (never ``none`` or ``HS*``) and
fit the key's type; ``iss`` must equal the configured issuer exactly; ``aud`` must contain the
resource URL (RFC 8707); ``exp`` is required and ``exp``/``nbf``/``iat`` are checked with a small
leeway; required scopes come from ``scope`` (space-separated) or ``scp`` (list).

Verified tokens are cached for ``token_cache_ttl`` (never past their ``exp``), so a short JWKS
outage does not log anybody out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt import PyJWK
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials

from . import metrics
from .config import AuthSettings
from .logging import user_id_var

logger = logging.getLogger("mcpops.auth")

_REFETCH_MIN_INTERVAL = 10.0
_CACHE_MAX = 10_000

_KTY_ALGS = {
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "EC": {"ES256", "ES384", "ES512"},
    "OKP": {"EdDSA"},
}
_EC_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True)
class Verified:
    access_token: AccessToken
    principal: str
    scopes: frozenset[str]
    cache_until: float


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


def discovery_urls(issuer: str) -> list[str]:
    """RFC 8414 first, then OpenID Connect discovery (path-inserted, then path-appended)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    base = (parts.scheme, parts.netloc)
    urls = [
        urlunsplit((*base, "/.well-known/oauth-authorization-server" + path, "", "")),
        urlunsplit((*base, "/.well-known/openid-configuration" + path, "", "")),
    ]
    if path:
        urls.append(urlunsplit((*base, path + "/.well-known/openid-configuration", "", "")))
    return urls


class JWKSVerifier:
    def __init__(self, settings: AuthSettings):
        assert settings.resource_server_url and settings.issuer_url
        self.settings = settings
        self.issuer = settings.issuer_url
        rs = settings.resource_server_url
        self.audiences = sorted({rs, rs.rstrip("/"), rs.rstrip("/") + "/"})
        self.algorithms = frozenset(a for a in settings.algorithms if a != "none" and not a.startswith("HS"))
        self.required_scopes = tuple(settings.required_scopes)
        self.jwks_uri: str | None = settings.jwks_url
        self._keys: dict[str | None, PyJWK] = {}
        self._cache: dict[str, Verified] = {}
        self._fetch_lock = asyncio.Lock()
        self._last_fetch = 0.0
        self.last_fetch_error: str | None = None
        self._client: Any = None

    # ---------------------------------------------------------------- keys
    @property
    def pinned(self) -> bool:
        return bool(self.settings.jwks_file)

    def _install(self, doc: Any) -> int:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("not a JWK set")
        keys: dict[str | None, PyJWK] = {}
        for jwk in doc["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in _KTY_ALGS:
                continue
            if any(p in jwk for p in ("d", "k")):
                continue  # never accept private or symmetric material as a verification key
            try:
                keys[jwk.get("kid")] = PyJWK(jwk)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                logger.warning("ignoring a JWK the server cannot use: %s", exc)
        if not keys:
            raise ValueError("no usable signing keys")
        self._keys = keys
        return len(keys)

    async def start(self) -> None:
        if self.pinned:
            assert self.settings.jwks_file
            n = self._install(_read_json_file(self.settings.jwks_file))
            logger.info("loaded %d pinned verification key(s) from %s", n, self.settings.jwks_file)
            return
        try:
            await self.refresh(force=True)
        except Exception as exc:
            logger.warning("could not fetch the issuer's keys at start-up (will retry on demand): %s", exc)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> Any:
        if self._client is None:
            import httpx2  # the SDK's HTTP client; imported lazily (pinned keys need no network)

            self._client = httpx2.AsyncClient(timeout=self.settings.fetch_timeout, follow_redirects=False)
        return self._client

    async def _get_json(self, url: str, deadline: float | None = None) -> Any:
        async with asyncio.timeout(deadline or self.settings.fetch_timeout):
            resp = await self._http().get(url, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise ValueError(f"GET {url}: HTTP {resp.status_code}")
        return resp.json()

    async def discover(self, deadline: float | None = None) -> str:
        errors = []
        for url in discovery_urls(self.issuer):
            try:
                meta = await self._get_json(url, deadline)
            except Exception as exc:
                errors.append(f"{url}: {exc.__class__.__name__}")
                continue
            if not isinstance(meta, dict) or meta.get("issuer") != self.issuer:
                errors.append(f"{url}: issuer does not match")
                continue
            if not isinstance(meta.get("jwks_uri"), str):
                errors.append(f"{url}: no jwks_uri")
                continue
            return meta["jwks_uri"]
        raise ValueError("metadata discovery failed: " + "; ".join(errors))

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the key set (throttled unless forced). True if new keys were installed."""
        if self.pinned:
            return False
        async with self._fetch_lock:
            now = time.monotonic()
            if not force and now - self._last_fetch < _REFETCH_MIN_INTERVAL:
                return False
            self._last_fetch = now
            try:
                if self.jwks_uri is None:
                    self.jwks_uri = await self.discover()
                self._install(await self._get_json(self.jwks_uri))
            except Exception as exc:
                self.last_fetch_error = f"{exc.__class__.__name__}: {exc}"
                metrics.jwks_fetches_total.labels(result="error").inc()
                raise
            self.last_fetch_error = None
            metrics.jwks_fetches_total.labels(result="ok").inc()
            return True

    async def check(self, deadline: float) -> str:
        """Health probe: is the issuer's key endpoint answering?"""
        if self.pinned:
            return "ok"
        uri = self.jwks_uri or await self.discover(deadline)
        await self._get_json(uri, deadline)
        return "ok"

    # ---------------------------------------------------------------- tokens
    async def _key_for(self, kid: str | None) -> PyJWK:
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is not None:
            return key
        try:
            await self.refresh()
        except Exception:
            raise AuthFailure("jwks_unavailable", "The issuer's signing keys are unavailable") from None
        key = self._keys.get(kid)
        if key is None:
            raise AuthFailure("unknown_kid", "Unknown signing key")
        return key

    async def verify(self, token: str) -> Verified:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit.cache_until > now:
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
        jwk = await self._key_for(kid)
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
        return Verified(access, principal, frozenset(scopes), until)


def _read_json_file(path: str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _alg_fits(alg: str, jwk: PyJWK) -> bool:
    data = jwk._jwk_data
    if data.get("alg") is not None and data["alg"] != alg:
        return False
    kty = data.get("kty")
    if alg not in _KTY_ALGS.get(kty, ()):
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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        token = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                raw = v.decode("latin-1")
                if raw[:7].lower() == "bearer ":
                    token = raw[7:].strip()
                break
        endpoint = metrics.ENDPOINT
        if not token:
            metrics.auth_attempts(endpoint, "missing").inc()
            await self._deny(send, 401, None, "Authentication required")
            return
        try:
            v = await self.verifier.verify(token)
        except AuthFailure as f:
            metrics.auth_attempts(endpoint, f.reason).inc()
            metrics.auth_duration.observe(time.perf_counter() - t0)
            scope.setdefault("state", {})["auth_failure"] = f.reason
            await self._deny(send, 401, "invalid_token", f.description)
            return
        metrics.auth_duration.observe(time.perf_counter() - t0)
        if not self.required <= v.scopes:
            metrics.auth_attempts(endpoint, "insufficient_scope").inc()
            user_id_var.set(v.access_token.subject)
            scope.setdefault("state", {})["user_id"] = v.access_token.subject
            await self._deny(send, 403, "insufficient_scope", "The access token lacks a required scope")
            return
        metrics.auth_attempts(endpoint, "success").inc()
        user = AuthenticatedUser(v.access_token)
        scope["user"] = user
        scope["auth"] = AuthCredentials(list(v.scopes))
        state = scope.setdefault("state", {})
        state["principal"] = v.principal
        state["user_id"] = v.access_token.subject or v.access_token.client_id
        user_id_var.set(state["user_id"])
        reset = auth_context_var.set(user)
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
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge.encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


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
