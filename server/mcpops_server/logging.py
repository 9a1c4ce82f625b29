"""JSON (or text) log lines with the seed's fields plus request context.

Context (request id, user id, session id, tool name) lives in context variables set by the
HTTP middleware and by the MCP-level observer, so every line logged while handling a request
carries it without passing it around.

Much of what is logged comes from clients (paths, headers, tool names, exception messages that
quote them), so every line is bounded and cannot be forged: a field or message longer than
``FIELD_MAX`` characters is cut and ends with ``...[truncated N chars]``, a record never takes more
than ``LINE_MAX`` characters, and control characters are escaped (``\\n``, ``\\x1b``) in both
formats, so a value can neither start a new line nor reach a terminal as an escape sequence.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from .config import LoggingSettings

request_id_var: ContextVar[str | None] = ContextVar("mcpops_request_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("mcpops_user_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("mcpops_session_id", default=None)
tool_name_var: ContextVar[str | None] = ContextVar("mcpops_tool_name", default=None)

_CONTEXT_FIELDS = (
    ("request_id", request_id_var),
    ("user_id", user_id_var),
    ("session_id", session_id_var),
    ("tool_name", tool_name_var),
)
# Extra attributes copied into the JSON object when a call passes them with extra={...}.
_EXTRA_FIELDS = (
    "request_id",
    "user_id",
    "session_id",
    "tool_name",
    "duration_ms",
    "method",
    "path",
    "status",
    "client_ip",
    "bytes",
    "user_agent",
    "result",
    "reason",
    "event",
    "instance_id",
    "settings",
    "server",
    "pid",
    "exit_code",
)


FIELD_MAX = 2048  # characters of one field or of the message
LINE_MAX = 8192  # characters of one formatted record, traceback included
_TRACE_MAX = 4096  # characters of a traceback before the line budget is applied
_TRACE_HEAD = 1024  # of a cut traceback, this much of the start is kept (the rest from the end)
_SQUEEZED = 256  # per field, when a record would still exceed LINE_MAX

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TEXT_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]}
_TEXT_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
# json.dumps escapes C0 itself; DEL, C1 and the separators are escaped here (valid JSON escapes).
_JSON_UNSAFE_RE = re.compile("[\x7f-\x9f\u2028\u2029]")


_PLAIN = (int, float, bool, type(None))


def cap(value: str, limit: int = FIELD_MAX) -> str:
    """``value`` cut to ``limit`` characters, with a marker saying how much was dropped."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[truncated {len(value) - limit} chars]"


def _bounded(value: Any, limit: int, depth: int = 0) -> Any:
    """A log-safe copy: strings capped, containers capped in size and depth, other objects as text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return cap(value, limit)
    if depth < 2 and isinstance(value, dict):
        items = list(value.items())[:32]
        return {cap(str(k), 64): _bounded(v, limit, depth + 1) for k, v in items}
    if depth < 2 and isinstance(value, list | tuple | set | frozenset):
        return [_bounded(v, limit, depth + 1) for v in list(value)[:32]]
    return cap(str(value), limit)


def _cap_trace(text: str, limit: int) -> str:
    """A traceback cut to ``limit`` characters: long lines shortened, then head and tail kept."""
    lines = [cap(line, 512) for line in text.splitlines()]
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    head = min(_TRACE_HEAD, limit // 4)
    dropped = len(text) - limit
    return f"{text[:head]}\n...[truncated {dropped} chars]...\n{text[len(text) - (limit - head) :]}"


def escape_text(value: str) -> str:
    """Control characters as visible escapes (``\\n``, ``\\x1b``): one value, one line, no terminal codes."""
    if _CONTROL_RE.search(value) is None:
        return value
    return value.translate(_TEXT_ESCAPES)


# One encoder for every line: json.dumps(..., default=str) would build a new one per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


def _json_line(data: dict[str, Any]) -> str:
    line = _ENCODER.encode(data)
    # An ASCII line (isascii() is a flag lookup) can hold only DEL of the characters escaped here.
    if (not line.isascii() or "\x7f" in line) and _JSON_UNSAFE_RE.search(line) is not None:
        line = _JSON_UNSAFE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line


# The last whole second formatted and its text: one tuple, so that threads logging at once agree.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds; the date and time up to the second are formatted once a second."""
    global _last_second
    second = int(created)
    micro = round((created - second) * 1e6)  # as datetime.fromtimestamp rounds
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    last, text = _last_second
    if last != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (second, text)
    return f"{text}.{micro // 1000:03d}Z"


def _fields(record: logging.LogRecord, static: dict[str, Any]) -> dict[str, Any]:
    """Static, context and extra fields of a record (uncapped), in a stable order."""
    data: dict[str, Any] = dict(static)
    for name, var in _CONTEXT_FIELDS:
        v = var.get()
        if v is not None:
            data[name] = v
    d = record.__dict__
    for name in _EXTRA_FIELDS:
        if name in d and d[name] is not None:
            data[name] = d[name]
    return data


class JSONFormatter(logging.Formatter):
    """The seed's JSON formatter: timestamp, level, logger, message, module, function, line, + context."""

    def __init__(self, static: dict[str, Any] | None = None):
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        head: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
        }
        fields = _fields(record, self.static)
        trace = self.formatException(record.exc_info) if record.exc_info else None
        line = self._line(head, fields, trace, FIELD_MAX, _TRACE_MAX)
        if len(line) <= LINE_MAX:
            return line
        line = self._line(head, fields, trace, _SQUEEZED, LINE_MAX // 4, truncated=True)
        if len(line) <= LINE_MAX:
            return line
        # Many long fields, each full of escapes: keep what identifies the record.
        keep = ("timestamp", "level", "logger", "message", "module", "function", "line")
        slim = {k: _bounded(head[k], _SQUEEZED // 2) for k in keep}
        for k in ("instance_id", "request_id", "event"):
            if k in fields:
                slim[k] = _bounded(fields[k], 64)
        slim["truncated"] = True
        return _json_line(slim)

    @staticmethod
    def _line(
        head: dict[str, Any],
        fields: dict[str, Any],
        trace: str | None,
        limit: int,
        trace_limit: int,
        truncated: bool = False,
    ) -> str:
        data = {}
        for part in (head, fields):
            for k, v in part.items():
                # the common case (short text, numbers) without a call
                short = (type(v) is str and len(v) <= limit) or type(v) in _PLAIN
                data[k] = v if short else _bounded(v, limit)
        if trace is not None:
            data["exception"] = _cap_trace(trace, trace_limit)
        if truncated:
            data["truncated"] = True
        return _json_line(data)


class TextFormatter(logging.Formatter):
    """For people: one readable line, context appended as key=value; tracebacks indented below it."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = f"{ts} {record.levelname:<7} {escape_text(cap(record.name, 128))}: "
        message = record.getMessage()
        pairs: list[tuple[str, Any]] = []
        seen = set()
        for name, var in _CONTEXT_FIELDS:
            v = record.__dict__.get(name) or var.get()
            if v is not None:
                pairs.append((name, v))
                seen.add(name)
        for name in _EXTRA_FIELDS:
            if name not in seen and record.__dict__.get(name) is not None:
                pairs.append((name, record.__dict__[name]))
        trace = self.formatException(record.exc_info) if record.exc_info else None
        line = self._line(prefix, message, pairs, trace, FIELD_MAX, _TRACE_MAX)
        if len(line) > LINE_MAX:
            line = self._line(prefix, message, pairs, trace, _SQUEEZED, LINE_MAX // 4) + " truncated=true"
        if len(line) > LINE_MAX:
            line = prefix + escape_text(cap(message, _SQUEEZED // 2)) + " truncated=true"
        return line

    @staticmethod
    def _line(
        prefix: str,
        message: str,
        pairs: list[tuple[str, Any]],
        trace: str | None,
        limit: int,
        trace_limit: int,
    ) -> str:
        parts = [prefix + escape_text(cap(message, limit))]
        for name, v in pairs:
            parts.append(f"{name}={escape_text(cap(v if isinstance(v, str) else str(v), limit))}")
        line = " ".join(parts)
        if trace is not None:
            # Every traceback line is indented: a message inside it cannot pass for a log line.
            body = _cap_trace(trace, trace_limit)
            line += "".join("\n  | " + escape_text(t) for t in body.split("\n"))
        return line


def configure(
    settings: LoggingSettings, *, instance_id: str | None = None, server: str | None = None
) -> None:
    """Root handlers and format; every JSON line carries ``instance_id`` and ``server`` (server.name:
    several servers' instances may share a host and its journal)."""
    formatter: logging.Formatter
    if settings.format == "json":
        static = {key: value for key, value in (("instance_id", instance_id), ("server", server)) if value}
        formatter = JSONFormatter(static or None)
    else:
        formatter = TextFormatter()
    handlers: list[logging.Handler] = []
    for h in settings.handlers:
        if h.type == "file" and h.filename:
            handlers.append(logging.handlers.WatchedFileHandler(h.filename, encoding="utf-8"))
        else:
            handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(settings.level)
    # uvicorn: our access line replaces its own; its error logger goes through the root handlers.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # The SDK logs every session creation at INFO; keep it, but its per-request chatter is DEBUG.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpcore2").setLevel(logging.WARNING)
