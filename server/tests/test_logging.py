"""Log lines stay bounded and cannot be forged, whatever a client sends."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import uuid

import pytest
from mcpops_server.logging import JSONFormatter, TextFormatter
from mcpops_testlib import RawSession, ServerProc, jsonrpc_answer, wait_for

FIELD_MAX = 2048  # characters per field or message
LINE_MAX = 8192  # characters per line


@pytest.fixture(scope="module")
def servers(workdir, redis_srv):
    """One instance logging JSON, one logging text; auth off (the log is what is under test)."""
    base = {"REDIS_URL": redis_srv.url, "AUTH_ENABLED": "false", "RATE_LIMIT_ENABLED": "false"}
    js = ServerProc("log-json", workdir / "log-json", {**base, "REDIS_KEY_PREFIX": "t-logj:"})
    tx = ServerProc(
        "log-text", workdir / "log-text", {**base, "REDIS_KEY_PREFIX": "t-logt:", "LOG_FORMAT": "text"}
    )
    try:
        for s in (js, tx):
            s.start(wait=False)
        for s in (js, tx):
            s.wait_ready()
        yield {"json": js, "text": tx}
    finally:
        for s in (js, tx):
            with contextlib.suppress(Exception):
                s.stop()


def _record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("mcpops.test", logging.INFO, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_formatters_cap_fields_and_lines():
    huge = "y" * 200_000
    try:
        raise ValueError("z" * 100_000)
    except ValueError:
        exc_info = sys.exc_info()
    for fmt in (JSONFormatter(), TextFormatter()):
        # one long field: cut to FIELD_MAX with a marker saying so
        line = fmt.format(_record("short", user_agent=huge))
        assert len(line) < FIELD_MAX + 1024, (type(fmt).__name__, len(line))
        assert "[truncated 197952 chars]" in line, line[-300:]
        # everything long at once, exception included: the line stays under LINE_MAX
        rec = _record(huge, path=huge, user_agent=huge, tool_name=huge, client_ip=huge)
        rec.exc_info = exc_info
        line = fmt.format(rec)
        assert len(line) <= LINE_MAX, (type(fmt).__name__, len(line))
        assert "truncated" in line
        if isinstance(fmt, JSONFormatter):
            data = json.loads(line)  # still one valid JSON object
            assert data["logger"] == "mcpops.test" and data["level"] == "INFO"


def test_an_oversized_tool_name_is_refused_and_logs_little(servers):
    for s in servers.values():
        sess = RawSession(s.mcp_url)
        assert sess.open().status_code == 200
        before = s.log_path.stat().st_size
        rid = "big-" + uuid.uuid4().hex
        sess.headers["X-Request-ID"] = rid
        r = sess.post("tools/call", {"name": "x" * 1_000_000, "arguments": {}})
        assert r.status_code == 200, r.text[:300]
        answer = jsonrpc_answer(r)
        assert answer["error"]["code"] == -32602, str(answer)[:300]
        assert "x" * 200 not in r.text  # the name is not echoed back either
        wait_for(lambda s=s, rid=rid: rid in s.log_text(), 10, "the access line of the request")
        written = s.log_path.stat().st_size - before
        assert written < 10_000, (s.name, written, s.log_text()[-2000:])
        # a valid name that is not a tool is still answered by the app, not refused by the guard
        other = jsonrpc_answer(sess.post("tools/call", {"name": "no_such_tool", "arguments": {}}))
        assert other.get("result", {}).get("isError") is True, other


def _raw_get(port: int, target: str, user_agent: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(
            b"GET "
            + target.encode()
            + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: "
            + user_agent
            + b"\r\nConnection: close\r\n\r\n"
        )
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


def test_control_characters_cannot_forge_lines_or_reach_the_terminal(servers):
    for fmt, s in servers.items():
        mark = "m" + uuid.uuid4().hex
        forged = "12:00:00 INFO    mcpops.access: GET /admin 200"
        target = f"/{mark}%0a{forged.replace(' ', '%20')}%0d%1b[2J%c2%9b31m"
        resp = _raw_get(s.port, target, b"agent-" + mark.encode() + b"\x1b[31mred\x9b0m\x7f")
        assert resp.startswith(b"HTTP/1.1 404"), resp[:100]
        wait_for(lambda s=s, mark=mark: s.log_text().count(mark) >= 2, 10, f"{fmt}: the access line")
        text = s.log_text()
        lines = [ln for ln in text.splitlines() if mark in ln]
        assert len(lines) == 1, (fmt, lines)  # path and user agent on one line: nothing forged
        assert not any(ln.startswith("12:00:00 INFO") for ln in text.splitlines()), fmt
        for bad in ("\x1b", "\r", "\x7f", "\x9b"):
            assert bad not in text, (fmt, repr(bad))
        if fmt == "json":
            entry = json.loads(lines[0])
            # escaped on the wire, intact for whoever parses the line
            assert entry["path"] == f"/{mark}\n{forged}\r\x1b[2J\x9b31m"
            assert entry["user_agent"] == f"agent-{mark}\x1b[31mred\x9b0m\x7f"
        else:
            assert "\\n12:00:00" in lines[0] and "\\x1b[2J" in lines[0], lines[0]
