#!/usr/bin/env python3
"""A real MCP client (the SDK's streamable HTTP client) for the tests: one session, printed as JSON.

The tests copy this file into a host and run it with the deployed virtualenv's Python
(/opt/mcpops/current/venv/bin/python), which has the SDK installed, so no client needs
installing anywhere. It uses only the SDK and the standard library.

    mcp_probe.py URL [--token T | --token-file F] [--ca CA.pem] [--host-header NAME]
                 [--resolve NAME:ADDRESS] [--request-id ID] [--list] [--call NAME JSON_ARGS]...
                 [--timeout S]

--resolve connects to ADDRESS whenever the URL's host is NAME (as curl's --resolve): the request
keeps `Host: NAME` and the TLS handshake names and verifies NAME, as a client with DNS would.

One session runs initialize, then tools/list (with --list), then each --call in order. The output
is one JSON object:

    {"ok": true, "url": ..., "session_id": "...", "protocol_version": "...",
     "server": {"name": ..., "version": ...}, "tools": ["..."],
     "calls": [{"name": ..., "is_error": false, "structured": {...}, "text": "...",
                "progress": [{"t": 0.12, "progress": 1.0, "total": 5.0}], "elapsed": 0.61}]}

or {"ok": false, "error": "..."} with exit status 1 when the session fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text")


def resolve_hook(name: str, address: str) -> Any:
    """An httpx2 request hook that sends requests for `name` to `address` (curl's --resolve).

    The Host header stays `name` and the TLS handshake names and verifies `name` (sni_hostname),
    so the server's certificate is checked for the public name while no DNS is needed.
    """

    async def hook(request: httpx2.Request) -> None:
        if request.url.host == name:
            request.url = request.url.copy_with(host=address)
            request.extensions = {**request.extensions, "sni_hostname": name}

    return hook


def _recorder(events: list[dict[str, Any]], start: float) -> Any:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append({"t": round(time.monotonic() - start, 4), "progress": progress, "total": total})

    return on_progress


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    headers: dict[str, str] = {}
    token = args.token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if args.host_header:
        headers["Host"] = args.host_header
    if args.request_id:
        headers["X-Request-ID"] = args.request_id
    verify: Any = ssl.create_default_context(cafile=args.ca) if args.ca else True
    session_ids: list[str] = []

    async def remember_session(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in session_ids:
            session_ids.append(sid)

    out: dict[str, Any] = {"ok": False, "url": args.url}
    hooks: dict[str, list[Any]] = {"response": [remember_session]}
    if args.resolve:
        name, _, address = args.resolve.partition(":")
        hooks["request"] = [resolve_hook(name, address)]
    http = httpx2.AsyncClient(verify=verify, headers=headers, timeout=args.timeout, event_hooks=hooks)
    async with http, Client(streamable_http_client(args.url, http_client=http)) as client:
        info = client.server_info
        out["protocol_version"] = client.protocol_version
        out["server"] = {"name": getattr(info, "name", None), "version": getattr(info, "version", None)}
        if args.list:
            tools = await client.list_tools()
            out["tools"] = [t.name for t in tools.tools]
        calls = []
        for name, raw in args.call or []:
            events: list[dict[str, Any]] = []
            start = time.monotonic()
            result = await client.call_tool(name, json.loads(raw), progress_callback=_recorder(events, start))
            calls.append(
                {
                    "name": name,
                    "is_error": bool(result.is_error),
                    "structured": result.structured_content,
                    "text": _text(result),
                    "progress": events,
                    "elapsed": round(time.monotonic() - start, 4),
                }
            )
        out["calls"] = calls
    out["session_id"] = session_ids[0] if session_ids else None
    out["ok"] = True
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--token")
    p.add_argument("--token-file")
    p.add_argument("--ca", help="CA certificate file to verify an https URL against")
    p.add_argument("--host-header", help="Host header to send (the public name when connecting by address)")
    p.add_argument("--resolve", help="NAME:ADDRESS: connect to ADDRESS for URLs on NAME (TLS verifies NAME)")
    p.add_argument("--request-id", help="X-Request-ID to send with every request (log correlation)")
    p.add_argument("--list", action="store_true", help="run tools/list")
    p.add_argument("--call", nargs=2, action="append", metavar=("NAME", "JSON"), help="tools/call (repeat)")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    if args.token_file:
        args.token = Path(args.token_file).read_text(encoding="utf-8").strip()
    try:
        out = asyncio.run(probe(args))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = exc
        while isinstance(detail, BaseExceptionGroup) and detail.exceptions:
            detail = detail.exceptions[0]
        print(json.dumps({"ok": False, "url": args.url, "error": f"{type(detail).__name__}: {detail}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
