#!/usr/bin/env python3
"""A constant stream of MCP calls through one URL until told to stop (test support).

    steady_load.py URL --token-file F --stop-file S [--ca CA] [--host-header H]
                   [--workers 4] [--rate 5] [--calls-per-session 25] [--streams 1]
                   [--stream-n 10] [--stream-interval-ms 300] [--max-seconds 900]
                   [--client legacy|current] [--tool count|notes] [--slow 1.5] [--status-file P]
                   [--call NAME [--call-args JSON]] [--resolve NAME:ADDRESS]

Runs beside a playbook or a fault drill and reports what the clients saw. Each of --workers opens a
session with the SDK's ClientSession (the session-based revision: the instance that minted the
session id owns it, so nginx's affinity and its fail-over to the other instances are exercised),
calls `slow_count` (n=1) at --rate calls a second, and starts a new session every
--calls-per-session calls. Each of --streams runs `slow_count` with --stream-n progress
notifications --stream-interval-ms apart, one after another: event streams that are open while hosts
leave and rejoin the rotation. Tokens come round-robin from --token-file (one subject per worker,
so no worker meets another's rate limit).

--client current uses the SDK's `Client`, which negotiates the sessionless revision: every request
stands alone and any instance serves it. --tool notes calls `notes_add` instead of `slow_count` and
remembers every note the server acknowledged; once stopped, each worker reads its notes back with
`notes_get` (the same principal) and reports the ones missing. --call NAME (with --call-args, a JSON
object) calls that tool instead of `slow_count`, for servers other than the reference toolset (give
--streams 0 there: the event streams call `slow_count`). --resolve NAME:ADDRESS connects to ADDRESS
for URLs on NAME, with `Host: NAME` and TLS verified for NAME (mcp_probe.py's resolve_hook).

Nothing is retried: a call that raises or returns an error counts as failed. The load stops once
--stop-file exists (calls in progress finish) or after --max-seconds, and prints one JSON object:
calls, failed, streams, streams_failed, progress (notifications received), routes (calls per
session-id prefix, i.e. per instance), slow (calls that took --slow seconds or more, with their
start time), notes_acked / notes_missing, first errors with their time since the start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_probe import resolve_hook  # beside this file (run as a script on the controller)


class Tally:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.calls = 0
        self.failed = 0
        self.streams = 0
        self.streams_failed = 0
        self.progress = 0
        self.routes: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.slow: list[dict[str, float]] = []
        self.notes_acked = 0
        self.notes_missing: list[int] = []

    def since(self) -> float:
        return round(time.monotonic() - self.start, 2)

    def error(self, what: str, exc: BaseException | str, started: float | None = None) -> None:
        detail: Any = exc
        while isinstance(detail, BaseExceptionGroup) and detail.exceptions:
            detail = detail.exceptions[0]
        text = detail if isinstance(detail, str) else f"{type(detail).__name__}: {detail}"
        if len(self.errors) < 20:
            since = round(time.monotonic() - self.start, 2)
            entry = {"t": since, "at": round(time.time(), 3), "what": what, "error": text[:300]}
            entry["started"] = round(started or time.time(), 3)  # wall clock: when the failed call began
            self.errors.append(entry)


def stopping(args: argparse.Namespace, tally: Tally) -> bool:
    return Path(args.stop_file).exists() or time.monotonic() - tally.start > args.max_seconds


@contextlib.asynccontextmanager
async def open_client(args: argparse.Namespace, http: httpx2.AsyncClient) -> AsyncIterator[Any]:
    """An initialized client: ClientSession (session-based revision) or Client (sessionless)."""
    if args.client == "current":
        async with Client(streamable_http_client(args.url, http_client=http)) as client:
            yield client
    else:
        async with (
            streamable_http_client(args.url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def worker(args: argparse.Namespace, token: str, verify: Any, tally: Tally, stream: bool) -> None:
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "mcpops-steady-load"}
    if args.host_header:
        headers["Host"] = args.host_header
    session: list[str] = []
    statuses: list[str] = []
    acked: list[int] = []

    async def remember(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid:
            session[:] = [sid]
        if response.status_code >= 400:
            statuses.append(f"HTTP {response.status_code} {response.request.method}")

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        tally.progress += 1

    def client_http() -> httpx2.AsyncClient:
        hooks: dict[str, list[Any]] = {"response": [remember]}
        if args.resolve:
            hooks["request"] = [resolve_hook(*args.resolve.split(":", 1))]
        return httpx2.AsyncClient(verify=verify, headers=headers, timeout=30, event_hooks=hooks)

    what = "stream" if stream else "call"
    began_at = time.time()
    while not stopping(args, tally):
        statuses.clear()
        session.clear()
        began_at = time.time()
        try:
            async with client_http() as http, open_client(args, http) as client:
                for _ in range(1 if stream else args.calls_per_session):
                    if stopping(args, tally):
                        break
                    began = time.monotonic()
                    began_at = time.time()
                    paced = began + 1.0 / args.rate
                    if stream:
                        tally.streams += 1
                        params = {"n": args.stream_n, "interval_ms": args.stream_interval_ms}
                        result = await client.call_tool("slow_count", params, progress_callback=on_progress)
                    elif args.tool == "notes":
                        tally.calls += 1
                        title = f"steady {id(acked)} {tally.calls}"
                        result = await client.call_tool("notes_add", {"title": title, "body": "load"})
                        if not result.is_error and isinstance(result.structured_content, dict):
                            acked.append(int(result.structured_content["id"]))
                    elif args.call:
                        tally.calls += 1
                        result = await client.call_tool(args.call, json.loads(args.call_args))
                    else:
                        tally.calls += 1
                        result = await client.call_tool("slow_count", {"n": 1, "interval_ms": 0})
                    took = time.monotonic() - began
                    if not stream and took >= args.slow and len(tally.slow) < 200:
                        tally.slow.append({"t": round(began - tally.start, 2), "seconds": round(took, 2)})
                    if session:
                        tally.routes[session[0].split(".", 1)[0]] += 1
                    if result.is_error:
                        tally.error(what, f"tool error: {result.content}", began_at)
                        if stream:
                            tally.streams_failed += 1
                        else:
                            tally.failed += 1
                    if not stream:
                        report_progress(args, tally)
                        await asyncio.sleep(max(0.0, paced - time.monotonic()))  # pacing, not synchronisation
        except BaseException as exc:  # a failed exchange is a result here; the worker starts a new session
            if isinstance(exc, KeyboardInterrupt):
                raise
            tally.error(what + (f" ({', '.join(statuses)})" if statuses else ""), exc, began_at)
            if stream:
                tally.streams_failed += 1
            else:
                tally.failed += 1
    if acked:
        tally.notes_acked += len(acked)
        await read_back(args, client_http, acked, tally)


def report_progress(args: argparse.Namespace, tally: Tally) -> None:
    """--status-file holds the number of calls made so far, for a test to wait on."""
    if args.status_file and tally.calls % 5 == 0:
        tmp = Path(args.status_file + ".tmp")
        tmp.write_text(f"{tally.calls} {tally.failed}\n")
        tmp.replace(args.status_file)


async def read_back(args: argparse.Namespace, client_http: Any, acked: list[int], tally: Tally) -> None:
    """Every note the server acknowledged must still be there (the same principal reads it)."""
    try:
        async with client_http() as http, open_client(args, http) as client:
            for note_id in acked:
                result = await client.call_tool("notes_get", {"note_id": note_id})
                if result.is_error:
                    tally.notes_missing.append(note_id)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        tally.error("read back", exc)
        tally.notes_missing.extend(acked)


async def main(args: argparse.Namespace, tokens: list[str]) -> dict[str, Any]:
    verify: Any = ssl.create_default_context(cafile=args.ca) if args.ca else True
    tally = Tally()
    jobs = [worker(args, tokens[i % len(tokens)], verify, tally, False) for i in range(args.workers)]
    jobs += [
        worker(args, tokens[(args.workers + i) % len(tokens)], verify, tally, True)
        for i in range(args.streams)
    ]
    await asyncio.gather(*jobs)
    return {
        "calls": tally.calls,
        "failed": tally.failed,
        "streams": tally.streams,
        "streams_failed": tally.streams_failed,
        "progress": tally.progress,
        "routes": dict(tally.routes),
        "slow": tally.slow,
        "notes_acked": tally.notes_acked,
        "notes_missing": len(tally.notes_missing),
        "notes_missing_ids": tally.notes_missing[:20],
        "seconds": round(time.monotonic() - tally.start, 1),
        "errors": tally.errors,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--token-file", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--ca")
    p.add_argument("--host-header")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rate", type=float, default=5.0, help="calls a second per worker")
    p.add_argument("--calls-per-session", type=int, default=25)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--stream-n", type=int, default=10)
    p.add_argument("--stream-interval-ms", type=int, default=300)
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--client", choices=("legacy", "current"), default="legacy")
    p.add_argument("--tool", choices=("count", "notes"), default="count")
    p.add_argument("--slow", type=float, default=1.5, help="report calls that take this long (s)")
    p.add_argument("--status-file", help="file that holds the number of calls made so far (every 5th)")
    p.add_argument("--call", help="tool to call instead of slow_count (with --call-args)")
    p.add_argument("--call-args", default="{}", help="JSON object of arguments for --call")
    p.add_argument("--resolve", help="NAME:ADDRESS: connect to ADDRESS for URLs on NAME (TLS verifies NAME)")
    parsed = p.parse_args()
    lines = [t for t in Path(parsed.token_file).read_text(encoding="utf-8").split() if t]
    print(json.dumps(asyncio.run(main(parsed, lines))))
