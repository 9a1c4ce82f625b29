"""JSON (or text) log lines with the seed's fields plus request context.

Context (request id, user id, session id, tool name) lives in context variables set by the
HTTP middleware and by the MCP-level observer, so every line logged while handling a request
carries it without passing it around.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
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
)


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JSONFormatter(logging.Formatter):
    """The seed's JSON formatter: timestamp, level, logger, message, module, function, line, + context."""

    def __init__(self, static: dict[str, Any] | None = None):
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
        }
        data.update(self.static)
        for name, var in _CONTEXT_FIELDS:
            v = var.get()
            if v is not None:
                data[name] = v
        d = record.__dict__
        for name in _EXTRA_FIELDS:
            if name in d and d[name] is not None:
                data[name] = d[name]
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people: one readable line, context appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"]
        seen = set()
        for name, var in _CONTEXT_FIELDS:
            v = record.__dict__.get(name) or var.get()
            if v is not None:
                parts.append(f"{name}={v}")
                seen.add(name)
        for name in _EXTRA_FIELDS:
            if name not in seen and record.__dict__.get(name) is not None:
                parts.append(f"{name}={record.__dict__[name]}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(settings: LoggingSettings, *, instance_id: str | None = None) -> None:
    formatter: logging.Formatter
    if settings.format == "json":
        formatter = JSONFormatter({"instance_id": instance_id} if instance_id else None)
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
