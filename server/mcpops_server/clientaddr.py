"""The client's address: the peer's, or what X-Forwarded-For says when the peer is a trusted proxy.

uvicorn's own proxy-header handling is turned off (``proxy_headers=False`` in cli.py); this is its
counterpart (uvicorn keeps it in ``middleware/proxy_headers.py``), except that it is not a
middleware: the gateway calls it once per request and puts the answer in ``scope["state"]``.

Only a peer inside ``server.trusted_proxies`` is believed. Its X-Forwarded-For (several headers are
joined) is walked from the right, and the first hop that is not a trusted proxy is the client; a
header of trusted hops only gives its leftmost one.
"""

from __future__ import annotations

import ipaddress
from typing import Any


class ClientAddress:
    """Called with a request's scope, returns the client's address (a string, as the peer's)."""

    def __init__(self, trusted: tuple[str, ...]):
        self.nets = [ipaddress.ip_network(net) for net in trusted]
        self._cache: dict[str, bool] = {}  # address -> trusted, for at most 4096 addresses

    def _trusted(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        trusted = any(addr in net for net in self.nets)
        if len(self._cache) < 4096:
            self._cache[ip] = trusted
        return trusted

    def __call__(self, scope: dict[str, Any]) -> str:
        peer = (scope.get("client") or ("unknown", 0))[0]
        if not self.nets or not self._trusted(peer):
            return peer
        xff = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                xff = value.decode("latin-1") if xff is None else xff + "," + value.decode("latin-1")
        if not xff:
            return peer
        # Walk from the right: the first address not belonging to a trusted proxy is the client.
        hops = [h.strip() for h in xff.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer
