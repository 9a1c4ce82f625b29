#!/usr/bin/env python3
"""Many MCP sessions at once through one URL, with the SDK's streamable HTTP client (test support).

Copied into a host and run with the deployed virtualenv's Python, like mcp_probe.py:

    sessions_load.py URL --token-file F [--ca CA] [--host-header H] [--user-agent UA]
                     [--sessions 50] [--calls 5] [--concurrency 10]

Each session uses the SDK's ClientSession, which speaks the session-based protocol revision
(2025-06-18: the server mints an `Mcp-Session-Id` and keeps the session in that instance's memory),
the case nginx's affinity exists for; the newer sessionless revision that `mcp.Client` negotiates
can be served by any instance. Each session initializes, then runs `slow_count` (n=1) --calls
times. Tokens are taken round-robin from the lines of --token-file (one subject each, so the
server's per-principal rate limit is not what the test measures). Prints one JSON object:
sessions, ok, failed, first errors, and how many sessions each route id (the session id's prefix)
owned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def one_session(i: int, args: argparse.Namespace, tokens: list[str], verify: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "User-Agent": args.user_agent}
    if args.host_header:
        headers["Host"] = args.host_header
    seen: list[str] = []

    statuses: list[str] = []

    async def remember(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in seen:
            seen.append(sid)
        if response.status_code >= 400:  # the SDK's error hides the status; keep it for the report
            statuses.append(f"HTTP {response.status_code} {response.request.method}")

    errors: list[str] = []
    http = httpx2.AsyncClient(
        verify=verify, headers=headers, timeout=30, event_hooks={"response": [remember]}
    )
    try:
        async with (
            http,
            streamable_http_client(args.url, http_client=http) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            for _ in range(args.calls):
                result = await client.call_tool("slow_count", {"n": 1, "interval_ms": 0})
                if result.is_error:
                    errors.append(f"tool error: {result.content}")
    except BaseException as exc:  # every failure of a session is a result here
        detail = exc
        while isinstance(detail, BaseExceptionGroup) and detail.exceptions:
            detail = detail.exceptions[0]
        errors.append(f"{type(detail).__name__}: {detail}")
    return {"session_ids": seen, "errors": errors + statuses if errors else errors}


async def main(args: argparse.Namespace, tokens: list[str]) -> dict[str, Any]:
    verify: Any = ssl.create_default_context(cafile=args.ca) if args.ca else True
    gate = asyncio.Semaphore(args.concurrency)

    async def bounded(i: int) -> dict[str, Any]:
        async with gate:
            return await one_session(i, args, tokens, verify)

    results = await asyncio.gather(*(bounded(i) for i in range(args.sessions)))
    failed = [r for r in results if r["errors"] or len(r["session_ids"]) != 1]
    routes = Counter(r["session_ids"][0].split(".", 1)[0] for r in results if r["session_ids"])
    return {
        "sessions": len(results),
        "ok": len(results) - len(failed),
        "failed": len(failed),
        "errors": [r["errors"] or r["session_ids"] for r in failed][:5],
        "routes": dict(routes),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--token-file", required=True)
    p.add_argument("--ca")
    p.add_argument("--host-header")
    p.add_argument("--user-agent", default="mcpops-sessions-load")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=10)
    parsed = p.parse_args()
    lines = [t for t in Path(parsed.token_file).read_text(encoding="utf-8").split() if t]
    print(json.dumps(asyncio.run(main(parsed, lines))))
