"""Throughput and latency of tools/call: (a) the bare SDK app vs (b) mcpops-server with everything on.

    .venv/bin/python bench/server_bench.py [--requests N] [--seconds S] [--concurrency C] [--rounds R]

Both sides serve the same MCPServer (bench/bench_app.py). (b) runs with JWT auth (pinned JWKS from
the lab issuer), Prometheus metrics, JSON logs (to a file, like journald would take them) and the
Redis rate limiter (a real redis-server on a free port; the limit is set high enough never to bite).
The load is a fixed number of sessions, each sending tools/call back to back over keep-alive
connections, bounded by a request count and a time limit. Rounds alternate a/b to spread noise.
Prints requests/s, p50/p99, the throughput ratio b/a, and idle/loaded RSS; writes
bench/results/server.json.

    .venv/bin/python bench/server_bench.py --profile bench/results/server_profile_after.txt

runs both servers under cProfile (bench/profiled.py, switched on only while a round is measured)
and writes, instead of server.json, their top functions by own and by cumulative time, in
microseconds per tools/call, with mcpops-server's own functions listed apart. The profiler slows
the servers down about twofold, so the figures there are for finding costs, not for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

HERE = Path(__file__).resolve().parent
PY = sys.executable
ACCEPT = "application/json, text/event-stream"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: held open together, so the kernel cannot hand out one twice (a
    port taken and let go before the previous server bound its own could come back)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} during start-up ({url})")
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url}")


def sse_result(body: str) -> Any:
    if body.lstrip().startswith("{"):
        return json.loads(body)
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            msg = json.loads(line[5:])
            if "result" in msg or "error" in msg:
                return msg
    raise ValueError("no JSON-RPC response in " + body[:200])


async def open_session(client: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    r = await client.post(url, json=init, headers={**headers, "Accept": ACCEPT})
    r.raise_for_status()
    h = {**headers, "Accept": ACCEPT, "Mcp-Session-Id": r.headers["mcp-session-id"]}
    h["Mcp-Protocol-Version"] = sse_result(r.text)["result"]["protocolVersion"]
    r = await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
    assert r.status_code == 202, r.status_code
    return h


async def drive(url: str, tokens: list[str | None], total: int, seconds: float) -> dict[str, Any]:
    """`len(tokens)` sessions calling tools/call back to back until `total` calls or `seconds` pass."""
    latencies: list[float] = []
    errors = 0
    limits = httpx2.Limits(max_connections=len(tokens) * 2, max_keepalive_connections=len(tokens) * 2)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
        sessions = []
        for tok in tokens:
            base = {"Authorization": f"Bearer {tok}"} if tok else {}
            sessions.append(await open_session(client, url, base))
        # warm-up: a few calls per session, not measured
        remaining = [total]
        stop_at = [0.0]

        async def worker(h: dict[str, str], n_warm: int) -> None:
            nonlocal errors
            i = 0
            while True:
                if n_warm > 0:
                    n_warm -= 1
                else:
                    if remaining[0] <= 0 or time.monotonic() > stop_at[0]:
                        return
                    remaining[0] -= 1
                i += 1
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "add", "arguments": {"a": i, "b": 1}},
                }
                t0 = time.perf_counter()
                r = await client.post(url, json=body, headers=h)
                dt = time.perf_counter() - t0
                ok = (
                    r.status_code == 200
                    and sse_result(r.text).get("result", {}).get("structuredContent", {}).get("result")
                    == i + 1
                )
                if n_warm == 0 and stop_at[0] and ok:
                    latencies.append(dt)
                elif not ok:
                    errors += 1

        await asyncio.gather(*(worker(h, 20) for h in sessions))
        stop_at[0] = time.monotonic() + seconds
        t_start = time.perf_counter()
        await asyncio.gather(*(worker(h, 0) for h in sessions))
        elapsed = time.perf_counter() - t_start
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(latencies[n // 2] * 1000, 2) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
    }


PROFILE_TOP = 25
OWN_CODE = "mcpops_server/"


def _where(func: tuple[str, int, str]) -> str:
    """A profiled function as `path:line(name)`, the path from its package down."""
    filename, line, name = func
    if filename == "~":
        return name  # a builtin: "<method 'encode' of 'str' objects>"
    for marker in ("site-packages/", "/server/", "/lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            if marker == "/lib/python3":
                filename = "stdlib/" + filename.split("/", 1)[1]
            break
    return f"{filename}:{line}({name})"


def profile_tables(stats_file: Path, calls: int, own_only: bool = False) -> list[str]:
    """The top functions of a profile by own and by cumulative time, in µs per tools/call."""
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    rows = [
        (func, nc, tt, ct)
        for func, (_cc, nc, tt, ct, _callers) in stats.items()
        if not own_only or OWN_CODE in func[0]
    ]
    lines = []
    for title, index in (("own time", 2), ("cumulative time", 3)):
        lines.append(f"  by {title}{', mcpops_server only' if own_only else ''}:")
        lines.append(f"  {'own us':>9}{'cum us':>9}{'calls':>8}  function (per tools/call)")
        for func, nc, tt, ct in sorted(rows, key=lambda r: r[index], reverse=True)[:PROFILE_TOP]:
            lines.append(
                f"  {tt * 1e6 / calls:>9.1f}{ct * 1e6 / calls:>9.1f}{nc / calls:>8.2f}  {_where(func)}"
            )
        lines.append("")
    everything = sum(v[2] for v in stats.values()) * 1e6 / calls
    own = sum(tt for _f, _n, tt, _c in rows) * 1e6 / calls
    lines.append(
        f"  profiled time: {everything:.1f} us per call"
        + (f", {own:.1f} of it in mcpops_server" if own_only else "")
    )
    lines.append("")
    return lines


def signal_profiler(pid: int, sig: int, stats_file: Path | None = None) -> None:
    """Switch a profiled server's profiler on (SIGUSR1) or off and wait for its stats (SIGUSR2)."""
    if stats_file is not None:
        stats_file.unlink(missing_ok=True)
    os.kill(pid, sig)
    if stats_file is None:
        time.sleep(0.2)  # the handler runs at the loop's next wake-up; the load starts after it
        return
    deadline = time.monotonic() + 30
    while not stats_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no profile from pid {pid} in {stats_file}")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4000, help="tools/call per measured run (bound)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time limit per measured run (bound)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent sessions")
    ap.add_argument(
        "--rounds", type=int, default=2, help="alternating a/b rounds; the best of each is reported"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "server.json"))
    ap.add_argument("--b-env", action="append", default=[], help="extra KEY=VALUE for (b), for experiments")
    ap.add_argument(
        "--profile",
        metavar="REPORT",
        help="run both servers under cProfile and write their top functions to REPORT (not server.json)",
    )
    args = ap.parse_args()
    profiled = (lambda stats: [PY, str(HERE / "profiled.py"), str(stats)]) if args.profile else None

    work = Path(tempfile.mkdtemp(prefix="mcpops-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rport, pa, pb = free_ports(3)
        procs.append(
            subprocess.Popen(
                [
                    "/usr/bin/redis-server",
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=work,
            )
        )
        issuer_dir = work / "issuer"
        subprocess.run(
            [PY, "-m", "mcpops_server.devissuer", "init", str(issuer_dir)], check=True, capture_output=True
        )

        # (a) bare SDK app
        env_a = {**os.environ, "PYTHONPATH": str(HERE)}
        stats = {"a": work / "a.prof", "b": work / "b.prof"}
        a = subprocess.Popen(
            [*(profiled(stats["a"]) if profiled else [PY]), str(HERE / "bench_app.py"), str(pa)],
            env=env_a,
            stdout=subprocess.DEVNULL,
            stderr=(work / "a.log").open("wb"),
        )
        procs.append(a)

        # (b) mcpops-server, everything on
        url_b = f"http://127.0.0.1:{pb}/mcp"
        env_b = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(HERE),
            "MCPOPS_CONFIG": str(work / "config.yaml"),
            "MCP_SERVER_PORT": str(pb),
            "MCP_APP": "bench_app:mcp",
            "REDIS_URL": f"redis://127.0.0.1:{rport}/0",
            "AUTH_ISSUER_URL": "https://devissuer.mcpops.invalid",
            "AUTH_JWKS_FILE": str(issuer_dir / "jwks.json"),
            "RESOURCE_SERVER_URL": url_b,
            "REQUIRED_SCOPES": "mcp",
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_PER_MINUTE": "10000000",
            "METRICS_ENABLED": "true",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        env_b.update(kv.split("=", 1) for kv in args.b_env)
        (work / "config.yaml").write_text("{}\n")
        b = subprocess.Popen(
            [*(profiled(stats["b"]) if profiled else [PY]), "-m", "mcpops_server.cli", "serve"],
            env=env_b,
            stdout=subprocess.DEVNULL,
            stderr=(work / "b.log").open("wb"),
        )
        procs.append(b)
        url_a = f"http://127.0.0.1:{pa}/mcp"
        wait_http(f"http://127.0.0.1:{pa}/mcp", a)
        wait_http(f"http://127.0.0.1:{pb}/health", b)
        time.sleep(1.0)  # let start-up garbage settle before reading idle RSS (not synchronisation)
        idle = {"a": rss_kib(a.pid)[0], "b": rss_kib(b.pid)[0]}

        tokens_b = [
            subprocess.run(
                [
                    PY,
                    "-m",
                    "mcpops_server.devissuer",
                    "token",
                    str(issuer_dir),
                    "--aud",
                    url_b,
                    "--scope",
                    "mcp",
                    "--sub",
                    f"bench{i}",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            for i in range(args.concurrency)
        ]
        tokens_a: list[str | None] = [None] * args.concurrency

        runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        pids = {"a": a.pid, "b": b.pid}
        redis_pid = procs[0].pid
        for rnd in range(args.rounds):
            for side, url, toks in (("a", url_a, tokens_a), ("b", url_b, tokens_b)):
                if profiled:
                    signal_profiler(pids[side], signal.SIGUSR1)
                c0, r0 = cpu_seconds(pids[side]), cpu_seconds(redis_pid)
                res = asyncio.run(drive(url, toks, args.requests, args.seconds))
                c1, r1 = cpu_seconds(pids[side]), cpu_seconds(redis_pid)
                if profiled:
                    signal_profiler(pids[side], signal.SIGUSR2, stats[side])
                total = res["requests"] + 20 * args.concurrency  # warm-up calls were served too
                res["server_cpu_ms_per_call"] = round((c1 - c0) * 1000 / total, 3) if total else None
                res["redis_cpu_ms_per_call"] = round((r1 - r0) * 1000 / total, 3) if total else None
                res["round"] = rnd + 1
                runs[side].append(res)
                print(
                    f"round {rnd + 1} {side}: {res['rps']} req/s p50 {res['p50_ms']} ms "
                    f"p99 {res['p99_ms']} ms errors {res['errors']} "
                    f"server CPU {res['server_cpu_ms_per_call']} ms/call"
                )
        if args.profile:
            return write_profile(Path(args.profile), runs, stats, args)
        loaded = {"a": rss_kib(a.pid), "b": rss_kib(b.pid)}
        best = {k: max(v, key=lambda r: r["rps"]) for k, v in runs.items()}
        ratio = round(best["b"]["rps"] / best["a"]["rps"], 3) if best["a"]["rps"] else None
        median_ratio = round(
            statistics.median(r["rps"] for r in runs["b"]) / statistics.median(r["rps"] for r in runs["a"]), 3
        )
        cpu = {
            k: round(statistics.median(r["server_cpu_ms_per_call"] for r in v), 3) for k, v in runs.items()
        }
        paired = round(
            statistics.median(
                rb["rps"] / ra["rps"] for ra, rb in zip(runs["a"], runs["b"], strict=True) if ra["rps"]
            ),
            3,
        )
        cpu_ratio = round(cpu["a"] / cpu["b"], 3) if cpu["b"] else None
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "machine": platform.machine(),
            },
            "load": {
                "concurrency": args.concurrency,
                "requests_bound": args.requests,
                "seconds_bound": args.seconds,
                "rounds": args.rounds,
            },
            "a_bare_sdk": {
                "best": best["a"],
                "runs": runs["a"],
                "idle_rss_mib": round(idle["a"] / 1024, 1),
                "loaded_rss_mib": round(loaded["a"][0] / 1024, 1),
                "peak_rss_mib": round(loaded["a"][1] / 1024, 1),
            },
            "b_mcpops_server": {
                "best": best["b"],
                "runs": runs["b"],
                "idle_rss_mib": round(idle["b"] / 1024, 1),
                "loaded_rss_mib": round(loaded["b"][0] / 1024, 1),
                "peak_rss_mib": round(loaded["b"][1] / 1024, 1),
                "features": [
                    "jwt auth (ES256, pinned JWKS)",
                    "redis rate limit",
                    "prometheus metrics",
                    "json logs (access + tool lines)",
                ],
            },
            "throughput_ratio_b_over_a": ratio,
            "throughput_ratio_median": median_ratio,
            "throughput_ratio_paired_rounds_median": paired,
            "server_cpu_ms_per_call_median": cpu,
            "capacity_ratio_cpu_a_over_b": cpu_ratio,
            "load_average_at_end": os.getloadavg(),
            "targets": {"ratio_min": 0.8, "idle_rss_max_mib": 80},
        }
        print()
        print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'idle MiB':>10}{'loaded MiB':>12}")
        for key, label in (("a_bare_sdk", "(a) bare SDK"), ("b_mcpops_server", "(b) mcpops-server")):
            r = result[key]
            print(
                f"{label:24}{r['best']['rps']:>10}{r['best']['p50_ms']:>10}{r['best']['p99_ms']:>10}{r['idle_rss_mib']:>10}{r['loaded_rss_mib']:>12}"
            )
        print(
            f"throughput ratio b/a: {paired} (median of per-round pairs), {median_ratio} (median rps), "
            f"{ratio} (best of {args.rounds}); target >= 0.80"
        )
        print(
            f"server CPU per call: a {cpu['a']} ms, b {cpu['b']} ms -> capacity ratio a/b {cpu_ratio} "
            f"(robust to other load on the host; load average now {os.getloadavg()[0]:.2f})"
        )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


def write_profile(
    report: Path, runs: dict[str, list[dict[str, Any]]], stats: dict[str, Path], args: argparse.Namespace
) -> int:
    """The profile report: per side, the calls served while profiling and the top functions."""
    lines = [
        f"cProfile of the tools/call load (concurrency {args.concurrency}, {args.rounds} round(s), "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}); python bench/server_bench.py --profile",
        "Times are microseconds per tools/call served while profiled (warm-up calls included); the",
        "profiler's own overhead inflates them, so compare entries, not totals with server.json.",
        "",
    ]
    for side, label in (("a", "(a) bare SDK"), ("b", "(b) mcpops-server, everything on")):
        calls = sum(r["requests"] + 20 * args.concurrency for r in runs[side])
        cpu = round(statistics.median(r["server_cpu_ms_per_call"] for r in runs[side]), 3)
        lines.append(f"== {label}: {calls} calls, server CPU {cpu} ms/call under the profiler")
        gc_file = Path(str(stats[side]) + ".gc.json")
        if gc_file.exists():
            collected = json.loads(gc_file.read_text())
            lines.append(
                "  garbage collection (not in the tables): "
                + ", ".join(
                    f"generation {g}: {n} runs, {s * 1e6 / calls:.1f} us per call"
                    for g, (n, s) in enumerate(
                        zip(collected["collections"], collected["seconds"], strict=True)
                    )
                )
            )
            lines.append("")
        lines.extend(profile_tables(stats[side], calls))
        if side == "b":
            lines.extend(profile_tables(stats[side], calls, own_only=True))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
