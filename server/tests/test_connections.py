"""Connection bounds (connections.py): half-sent request headers do not hold a connection open."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
from mcpops_testlib import ServerProc


@pytest.fixture(scope="module")
def slow_guarded(workdir, redis_srv) -> Iterator[ServerProc]:
    s = ServerProc(
        "conn",
        workdir / "conn",
        {"REDIS_URL": redis_srv.url, "AUTH_ENABLED": "false", "MCP_HEADER_TIMEOUT": "1"},
    )
    s.start()
    yield s
    s.stop()


def _closed_within(sock: socket.socket, deadline: float) -> float | None:
    """Seconds until the server closes the connection, or None if it is still open at the deadline."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        if data == b"" or b"HTTP/1.1" in data:
            return time.monotonic() - start
    return None


def test_half_sent_headers_are_cut_off_after_header_timeout(slow_guarded):
    with socket.create_connection(("127.0.0.1", slow_guarded.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        took = _closed_within(sock, deadline=10)
    if took is None:
        slow_guarded.fail("a connection with half-sent headers was still open after 10 s")
    assert took < 5, f"closed only after {took:.1f} s (header timeout 1 s)"
    assert "header_timeout" in slow_guarded.log_text()


def test_a_connection_that_sends_nothing_is_cut_off_too(slow_guarded):
    with socket.create_connection(("127.0.0.1", slow_guarded.port)) as sock:
        took = _closed_within(sock, deadline=10)
    assert took is not None and took < 5, f"an idle new connection stayed open ({took})"


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head


def test_complete_requests_on_a_kept_alive_connection_are_served(slow_guarded):
    """Three requests, each after more than the header timeout: the deadline covers only headers."""
    with socket.create_connection(("127.0.0.1", slow_guarded.port)) as sock:
        for i in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            if i < 2:
                time.sleep(1.5)  # idle between requests (the keep-alive timeout is 30 s), not a sync
