"""The client address (clientaddr.py): X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

from mcpops_server.clientaddr import ClientAddress


def test_client_address_trusts_x_forwarded_for_only_from_proxies():
    client_of = ClientAddress(("127.0.0.1/32", "10.0.0.0/8"))

    def scope(peer, xff=None):
        headers = [(b"x-forwarded-for", xff.encode())] if xff else []
        return {"client": (peer, 1234), "headers": headers}

    assert client_of(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"  # untrusted peer: header ignored
    assert client_of(scope("127.0.0.1", "1.2.3.4")) == "1.2.3.4"
    assert client_of(scope("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.1.1")) == "1.2.3.4"  # rightmost untrusted hop
    assert client_of(scope("127.0.0.1")) == "127.0.0.1"
