"""Transport security: Host and Origin of /mcp, the body limit, CORS.

The SDK has the same checks in ``transport_security.py``; we do them in the gateway instead (the
session manager gets ``security_settings=None``), with the configured names, for every route:

- a CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) gets 204 for
  an origin in ``cors.allowed_origins``, else 403;
- a ``Content-Length`` over ``server.max_body_bytes`` gets 413, one that is not a number 400 (a
  chunked body is bounded by the SDK's ``max_request_body_size``);
- on /mcp, a ``Host`` that is neither one of ``server.public_hosts`` nor a loopback name gets 421
  (DNS rebinding), and an ``Origin`` that is neither configured nor the server's own gets 403.

The answers are built once, here; ``screen`` only picks one, so a request that passes costs no
allocation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .asgi import TEXT, header
from .config import Settings

logger = logging.getLogger("mcpops.server")

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_HEADERS = (
    b"Authorization, Content-Type, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID, X-Request-ID"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response the transport rules give in the app's place."""

    status: int
    body: bytes = b""
    content_type: bytes | None = TEXT
    headers: tuple[tuple[bytes, bytes], ...] = ()


_ORIGIN_NOT_ALLOWED = Answer(403, b"Origin not allowed")
_BAD_CONTENT_LENGTH = Answer(400, b"Invalid Content-Length")
_BAD_HOST = Answer(421, b"Invalid Host header")
_BAD_ORIGIN = Answer(403, b"Invalid Origin header")


def _split_host_port(authority: str, default_port: int) -> tuple[str, int] | None:
    """``host[:port]`` (IPv6 in brackets) as (host, port); None when it is not one."""
    if not authority or any(c in authority for c in "/?#@ "):
        return None
    if authority.startswith("["):
        name, bracket, rest = authority.partition("]")
        name += bracket
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _sep, port = authority.partition(":")
    if not port:
        return name, default_port
    return (name, int(port)) if port.isdigit() and len(port) <= 5 else None


class TransportSecurity:
    """The transport rules, set up once from the settings."""

    def __init__(self, settings: Settings):
        server, cors = settings.server, settings.cors
        self.max_body = server.max_body_bytes
        self.too_large = Answer(413, f"Request body too large (limit {self.max_body} bytes)".encode())
        self.any_port_hosts = set(_LOOPBACK_HOSTS)
        self.exact_hosts = set()
        for host in server.public_hosts:
            if host.endswith("]") or ":" not in host:
                self.any_port_hosts.add(host)
            else:
                self.exact_hosts.add(host)
        origins = set(cors.allowed_origins)
        for host in server.public_hosts:
            origins.add(f"https://{host}")
            origins.add(f"http://{host}")
        self.mcp_origins = {o.rstrip("/").lower() for o in origins}
        self.cors_origins = {o.rstrip("/").lower() for o in cors.allowed_origins}
        self.cors_expose = ", ".join(cors.expose_headers).encode()
        self.preflight = Answer(
            204,
            content_type=None,
            headers=(
                (b"access-control-allow-methods", ", ".join(cors.allowed_methods).encode()),
                (b"access-control-allow-headers", _ALLOW_HEADERS),
                (b"access-control-max-age", str(cors.max_age).encode()),
            ),
        )

    def cors_allowed(self, origin: str | None) -> bool:
        return origin is not None and origin.rstrip("/").lower() in self.cors_origins

    def cors_headers(self, origin: str) -> tuple[tuple[bytes, bytes], ...]:
        """What a response to an allowed origin carries besides its own headers."""
        return (
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-expose-headers", self.cors_expose),
            (b"vary", b"Origin"),
        )

    def screen(
        self, scope: Any, method: str, origin: str | None, cors_ok: bool, is_mcp: bool
    ) -> Answer | None:
        """The answer the transport rules give this request, or None when it goes on to the app."""
        if method == "OPTIONS" and origin is not None and header(scope, b"access-control-request-method"):
            return self.preflight if cors_ok else _ORIGIN_NOT_ALLOWED
        length = header(scope, b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return _BAD_CONTENT_LENGTH
            if too_big:
                return self.too_large
        if is_mcp:
            host = header(scope, b"host")
            if not self._host_ok(host):
                logger.warning("refused a request with Host %r", host)
                return _BAD_HOST
            if origin is not None and not self._origin_ok(origin, host):
                logger.warning("refused a request with Origin %r", origin)
                return _BAD_ORIGIN
        return None

    def _host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.lower()
        if host in self.exact_hosts or host in self.any_port_hosts:
            return True
        name, sep, port = host.rpartition(":")
        return bool(sep) and port.isdigit() and name in self.any_port_hosts

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        """A configured origin, or the server's own: the Host the request was sent to (already checked
        to be a public host or a loopback name) on the same port, any loopback name standing for another.
        """
        normalised = origin.rstrip("/").lower()
        if normalised in self.mcp_origins:
            return True
        scheme, sep, rest = normalised.partition("://")
        if not sep or scheme not in _DEFAULT_PORTS or not host:
            return False
        default = _DEFAULT_PORTS[scheme]
        origin_at = _split_host_port(rest, default)
        host_at = _split_host_port(host.lower(), default)
        if origin_at is None or host_at is None or origin_at[1] != host_at[1]:
            return False
        return origin_at[0] == host_at[0] or (
            origin_at[0] in _LOOPBACK_HOSTS and host_at[0] in _LOOPBACK_HOSTS
        )
