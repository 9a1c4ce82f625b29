"""The issuer's signing keys: found, fetched, kept fresh; one store shared by the verifier and /health.

Keys come from (in order) ``auth.jwks_file`` (pinned: read once, no network), ``auth.jwks_url``, or
the ``jwks_uri`` of the issuer's metadata, discovered with RFC 8414 and then OpenID Connect
discovery. The key set is fetched again

- on a schedule: after the ``max-age`` of the JWKS response's ``Cache-Control``, kept between a
  floor of 30 s (or the ceiling, if that is lower) and the ceiling ``auth.jwks_max_age``;
- when a token names a key id the store does not hold (at most every 10 s);
- by the health check (itself cached, so at most once per ``health.cache_ttl``).

They all share the fetch in flight, which is bounded as a whole (discovery included) by
``auth.fetch_timeout``. Each key set fetched replaces the one before, so a key the issuer stopped
publishing is gone after the next refresh, and so is its fingerprint: the verifier drops the cached
tokens it verified with that key. A failed fetch keeps the keys already held (the health check
reports the issuer, and the instance is ``degraded``) and is retried after the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt import PyJWK

from . import metrics
from .config import AuthSettings

logger = logging.getLogger("mcpops.auth")

_REFETCH_MIN_INTERVAL = 10.0  # on-demand refresh for an unknown key id, at most this often
_FLOOR = 30.0  # shortest scheduled refresh interval (unless the ceiling is lower)

KTY_ALGS = {
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "EC": {"ES256", "ES384", "ES512"},
    "OKP": {"EdDSA"},
}


class FetchError(Exception):
    """The key set could not be fetched. ``code``: ``unreachable``, ``timeout`` or ``error``."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


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


def refresh_interval(cache_control: str | None, ceiling: float) -> float:
    """Seconds until the next scheduled fetch, from the JWKS response's Cache-Control header."""
    floor = min(_FLOOR, ceiling)
    if not cache_control:
        return ceiling
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return floor
    try:
        max_age = float(int(directives["max-age"]))
    except (KeyError, ValueError):
        return ceiling
    return min(ceiling, max(floor, max_age))


def _fingerprint(jwk: dict[str, Any]) -> str:
    return json.dumps(jwk, sort_keys=True, separators=(",", ":"))


def _fetch_error(exc: BaseException) -> FetchError:
    if isinstance(exc, FetchError):
        return exc
    detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    import httpx2  # imported by the store's HTTP client already

    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return FetchError("timeout", detail)
    if isinstance(exc, httpx2.TransportError | OSError):
        return FetchError("unreachable", detail)
    return FetchError("error", detail)


class KeyStore:
    def __init__(self, settings: AuthSettings):
        assert settings.issuer_url
        self.settings = settings
        self.issuer = settings.issuer_url
        self.ceiling = settings.jwks_max_age
        self.jwks_uri: str | None = settings.jwks_url
        self._keys: dict[str | None, tuple[PyJWK, str]] = {}
        self.fingerprints: frozenset[str] = frozenset()
        self.last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_fetch = -math.inf  # monotonic start of the last fetch, whoever asked for it
        self._next_fetch = math.inf  # monotonic due time of the scheduled fetch
        self._scheduler: asyncio.Task[None] | None = None
        self._client: Any = None

    @property
    def pinned(self) -> bool:
        return bool(self.settings.jwks_file)

    def get(self, kid: str | None) -> tuple[PyJWK, str] | None:
        """The key named ``kid`` and its fingerprint (a lone key serves tokens without a kid)."""
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:
            found = next(iter(self._keys.values()))
        return found

    # ------------------------------------------------------------ life cycle
    async def start(self) -> None:
        if self.pinned:
            assert self.settings.jwks_file
            n = self._install(_read_json_file(self.settings.jwks_file))
            logger.info("loaded %d pinned verification key(s) from %s", n, self.settings.jwks_file)
            return
        try:
            await self.refresh()
        except FetchError as exc:
            logger.warning("could not fetch the issuer's keys at start-up (will retry): %s", exc.detail)
        self._scheduler = asyncio.create_task(self._schedule(), name="jwks-refresh")

    async def aclose(self) -> None:
        for task in (self._scheduler, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._scheduler = self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------ refreshing
    async def refresh(self, *, deadline: float | None = None) -> None:
        """Fetch the key set now, or join the fetch in flight. Raises FetchError (or TimeoutError when
        ``deadline`` passes first; the fetch then goes on for whoever else waits for it)."""
        if self.pinned:
            return
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(self._fetch(), name="jwks-fetch")
            task.add_done_callback(_retrieve)
        if deadline is None:
            await asyncio.shield(task)
            return
        async with asyncio.timeout(deadline):
            await asyncio.shield(task)

    async def refresh_on_demand(self) -> bool:
        """For a key id the store does not hold: fetch unless one started less than 10 s ago."""
        if self.pinned:
            return False
        if self._inflight is None and time.monotonic() - self._last_fetch < _REFETCH_MIN_INTERVAL:
            return False
        await self.refresh()
        return True

    async def _schedule(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(max(0.0, self._next_fetch - time.monotonic()))
            if time.monotonic() < self._next_fetch:
                continue  # a fetch for somebody else moved the schedule
            try:
                await self.refresh()
            except FetchError as exc:
                if not failing:
                    logger.warning(
                        "could not refresh the issuer's keys, keeping the %d held: %s",
                        len(self._keys),
                        exc.detail,
                        extra={"event": "jwks_refresh", "result": exc.code},
                    )
                failing = True
            else:
                if failing:
                    logger.info("the issuer's keys are refreshed again", extra={"event": "jwks_refresh"})
                failing = False
            if self._next_fetch <= time.monotonic():  # never spin
                self._next_fetch = time.monotonic() + min(_FLOOR, self.ceiling)

    async def _fetch(self) -> None:
        self._last_fetch = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.fetch_timeout):
                if self.jwks_uri is None:
                    self.jwks_uri = await self._discover()
                resp = await self._get(self.jwks_uri)
                doc = resp.json()
            self._install(doc)
        except Exception as exc:
            error = _fetch_error(exc)
            self.last_error = error.detail
            self._next_fetch = time.monotonic() + min(_FLOOR, self.ceiling)
            metrics.jwks_fetches_total.labels(result="error").inc()
            raise error from None
        finally:
            self._inflight = None
        self.last_error = None
        self._next_fetch = time.monotonic() + refresh_interval(
            resp.headers.get("cache-control"), self.ceiling
        )
        metrics.jwks_fetches_total.labels(result="ok").inc()

    def _http(self) -> Any:
        if self._client is None:
            import httpx2  # the SDK's HTTP client; imported lazily (pinned keys need no network)

            self._client = httpx2.AsyncClient(timeout=self.settings.fetch_timeout, follow_redirects=False)
        return self._client

    async def _get(self, url: str) -> Any:
        resp = await self._http().get(url, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise FetchError("error", f"GET {url}: HTTP {resp.status_code}")
        return resp

    async def _discover(self) -> str:
        errors: list[FetchError] = []
        for url in discovery_urls(self.issuer):
            try:
                meta = (await self._get(url)).json()
            except Exception as exc:  # the whole fetch's deadline is outside, and ends the loop
                err = _fetch_error(exc)
                errors.append(FetchError(err.code, f"{url}: {err.detail}"))
                continue
            if not isinstance(meta, dict) or meta.get("issuer") != self.issuer:
                errors.append(FetchError("error", f"{url}: issuer does not match"))
                continue
            if not isinstance(meta.get("jwks_uri"), str):
                errors.append(FetchError("error", f"{url}: no jwks_uri"))
                continue
            return meta["jwks_uri"]
        codes = {e.code for e in errors}
        code = codes.pop() if len(codes) == 1 else "error"
        raise FetchError(code, "metadata discovery failed: " + "; ".join(e.detail for e in errors))

    # ------------------------------------------------------------ the key set
    def _install(self, doc: Any) -> int:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise FetchError("error", "not a JWK set")
        keys: dict[str | None, tuple[PyJWK, str]] = {}
        for jwk in doc["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in KTY_ALGS:
                continue
            if any(p in jwk for p in ("d", "k")):
                continue  # never accept private or symmetric material as a verification key
            try:
                keys[jwk.get("kid")] = (PyJWK(jwk), _fingerprint(jwk))
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                logger.warning("ignoring a JWK the server cannot use: %s", exc)
        if not keys:
            raise FetchError("error", "no usable signing keys")
        gone = sorted(str(kid) for kid, (_, fp) in self._keys.items() if keys.get(kid, (None, ""))[1] != fp)
        self._keys = keys
        self.fingerprints = frozenset(fp for _, fp in keys.values())
        if gone:
            logger.info(
                "the issuer no longer publishes key(s) %s; tokens verified with them are refused",
                ", ".join(gone),
                extra={"event": "jwks_key_removed"},
            )
        return len(keys)


def _read_json_file(path: str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a fetch's failure as seen: every waiter may have given up on it already."""
    if not task.cancelled():
        task.exception()
