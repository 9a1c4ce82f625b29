"""Load generator of the edge benchmarks (proxy_bench.py, stream_bench.py, open_streams.py, scaleout.py).

Reads one JSON job on stdin, writes one JSON result on stdout and its progress on stderr. It needs
only httpx2 (the MCP SDK's HTTP client) and the standard library, so it runs where the client should
be: inside the lab host with the release's own Python (/opt/mcpops/current/venv/bin/python), where
both nginx on 443 and the instances on loopback are reachable, or on the controller against a load
balancer on the docker network. It never sees the issuer's key: the controller mints the tokens.

Job keys (the controller scripts fill them in):
  mode       "proxy" | "stream" | "streams" | "scaleout"
  edge       {"url": "https://127.0.0.1/mcp", "host": "mcp.mcpops.test", "ca": "/etc/mcpops/pki/ca.crt"}
  direct     {"host": "127.0.0.1"}: instances reached by the port in their route id (proxy, stream)
  tokens     bearer tokens, one per session
  ...        the mode's own parameters (see each run_* function)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-06-18"


def log(msg: str) -> None:
    print(f"[agent {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes (/proc)


def unit_pid(unit: str) -> int | None:
    """MainPID of a systemd unit on this host, None when it has none (or systemctl is missing)."""
    try:
        out = subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", unit],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except FileNotFoundError:
        return None
    return int(out) if out.isdigit() and out != "0" else None


def nginx_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "nginx":
                    pids.append(int(p.name))
            except OSError:
                continue
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB; (0, 0) when the process is gone."""
    fields = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in fields:
                fields[k] = int(v.split()[0])
    except OSError:
        pass
    return fields["VmRSS"], fields["VmHWM"]


class Procs:
    """The processes whose CPU and memory the benchmark reads: nginx (master and workers) and the
    instances by port. Only on the host that runs them; elsewhere every reading is empty."""

    def __init__(self, ports: list[int]) -> None:
        self.local = Path("/run/systemd/system").exists()
        self.instances = {p: unit_pid(f"mcpops-server@{p}.service") for p in ports} if self.local else {}
        self.instances = {p: pid for p, pid in self.instances.items() if pid}
        self.nginx = nginx_pids() if self.local else []

    def cpu(self) -> dict[str, float]:
        snap = {f"instance_{p}": cpu_seconds(pid) for p, pid in self.instances.items()}
        snap["nginx"] = sum(cpu_seconds(pid) for pid in self.nginx)
        t = os.times()
        snap["agent"] = t.user + t.system
        return snap

    def rss(self) -> dict[str, int]:
        snap = {f"instance_{p}": rss_kib(pid)[0] for p, pid in self.instances.items()}
        snap["nginx"] = sum(rss_kib(pid)[0] for pid in self.nginx)
        return snap

    def hwm(self) -> dict[str, int]:
        return {f"instance_{p}": rss_kib(pid)[1] for p, pid in self.instances.items()}


# --------------------------------------------------------------------------- MCP over streamable HTTP


def sse_messages(body: str) -> list[dict[str, Any]]:
    if body.lstrip().startswith("{"):
        return [json.loads(body)]
    return [
        json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()
    ]


def rpc_result(body: str) -> dict[str, Any]:
    for msg in sse_messages(body):
        if "result" in msg or "error" in msg:
            return msg
    raise ValueError("no JSON-RPC response in " + body[:200])


class Target:
    """One way to reach /mcp: the edge (nginx, TLS, public Host name) or one instance directly."""

    def __init__(
        self,
        url: str,
        host: str | None = None,
        ca: str | None = None,
        local_address: str | None = None,
        conns: int = 64,
    ) -> None:
        self.url = url
        self.base = {"Host": host} if host else {}
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        limits = httpx2.Limits(max_connections=conns, max_keepalive_connections=conns)
        transport = httpx2.AsyncHTTPTransport(verify=verify, limits=limits, local_address=local_address)
        self.client = httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(30.0))

    async def close(self) -> None:
        await self.client.aclose()


class Session:
    def __init__(self, target: Target, headers: dict[str, str]) -> None:
        self.target = target
        self.headers = headers
        self.id = headers["Mcp-Session-Id"]
        self.route = self.id.split(".", 1)[0]

    @property
    def port(self) -> int:
        """The instance port, from the route id `<host part>-<port>`."""
        return int(self.route.rsplit("-", 1)[1].lstrip("p"))

    @property
    def host_part(self) -> str:
        return self.route.rsplit("-", 1)[0]

    async def close(self) -> None:
        with contextlib.suppress(httpx2.HTTPError):
            await self.target.client.delete(self.target.url, headers=self.headers)


class Refused(Exception):
    pass


async def open_session(target: Target, token: str | None) -> Session:
    headers = {**target.base, "Accept": ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    r = await target.client.post(target.url, json=init, headers=headers)
    if r.status_code != 200 or "mcp-session-id" not in r.headers:
        raise Refused(f"initialize: HTTP {r.status_code} {r.text[:160]!r}")
    headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
    headers["Mcp-Protocol-Version"] = rpc_result(r.text)["result"]["protocolVersion"]
    r = await target.client.post(
        target.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    if r.status_code != 202:
        raise Refused(f"notifications/initialized: HTTP {r.status_code}")
    return Session(target, headers)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


async def drive(sessions: list[Session], seconds: float, total: int, warm: int = 10) -> dict[str, Any]:
    """Every session calls the tool `add` back to back: `warm` calls each first (not measured), then
    until `total` calls or `seconds` have passed. Returns requests/s, latency percentiles, errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = [total]
    stop_at = [math.inf]

    async def worker(s: Session, n_warm: int, seq: int) -> None:
        """n_warm > 0: that many unmeasured calls; 0: measured calls until a bound is reached."""
        warming = n_warm > 0
        i = seq
        while True:
            if warming:
                if n_warm == 0:
                    return
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
                "params": CALL,
            }
            t0 = time.perf_counter()
            try:
                r = await s.target.client.post(s.target.url, json=body, headers=s.headers)
                msg = rpc_result(r.text) if r.status_code == 200 else {}
                ok = "result" in msg and not msg["result"].get("isError")
                why = f"HTTP {r.status_code}" if r.status_code != 200 else "JSON-RPC error"
            except (httpx2.HTTPError, ValueError) as exc:
                ok, why = False, type(exc).__name__
            dt = time.perf_counter() - t0
            if ok and not warming:
                latencies.append(dt)
            elif not ok:
                errors[why] = errors.get(why, 0) + 1

    await asyncio.gather(*(worker(s, warm, k * 1_000_000) for k, s in enumerate(sessions)))
    stop_at[0] = time.monotonic() + seconds
    t_start = time.perf_counter()
    await asyncio.gather(*(worker(s, 0, k * 1_000_000 + 1000) for k, s in enumerate(sessions)))
    elapsed = time.perf_counter() - t_start
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(pct(latencies, 50) * 1000, 2) if n else None,  # type: ignore[operator]
        "p99_ms": round(pct(latencies, 99) * 1000, 2) if n else None,  # type: ignore[operator]
    }


# The call the throughput modes send: the reference toolset has no pure function and notes_* work in
# Redis; slow_count with n=1, no pause and no progress token is the cheapest call it serves (one
# result), the same work on every path.
CALL = {"name": "slow_count", "arguments": {"n": 1, "interval_ms": 0}}


def edge_target(job: dict[str, Any], conns: int = 64, local_address: str | None = None) -> Target:
    e = job["edge"]
    return Target(e["url"], host=e.get("host"), ca=e.get("ca"), local_address=local_address, conns=conns)


async def open_many(target: Target, tokens: list[str], parallel: int = 16) -> tuple[list[Session], list[str]]:
    sem = asyncio.Semaphore(parallel)
    refused: list[str] = []

    async def one(tok: str) -> Session | None:
        async with sem:
            try:
                return await open_session(target, tok)
            except (Refused, httpx2.HTTPError) as exc:
                refused.append(str(exc) or type(exc).__name__)
                return None

    got = await asyncio.gather(*(one(t) for t in tokens))
    return [s for s in got if s], refused


# --------------------------------------------------------------------------- 1. proxy overhead


async def run_proxy(job: dict[str, Any]) -> dict[str, Any]:
    """C sessions through nginx, and for each one a direct session to the instance nginx gave it (so
    both paths load the instances alike); rounds alternate the two paths."""
    tokens = job["tokens"]
    edge = edge_target(job, conns=2 * len(tokens))
    via, refused = await open_many(edge, tokens)
    if refused:
        raise SystemExit(f"sessions through nginx refused: {refused[:3]}")
    direct_targets: dict[int, Target] = {}
    direct: list[Session] = []
    for s, tok in zip(via, tokens, strict=True):
        if s.port not in direct_targets:
            direct_targets[s.port] = Target(
                f"http://{job['direct']['host']}:{s.port}/mcp", conns=2 * len(tokens)
            )
        direct.append(await open_session(direct_targets[s.port], tok))
    ports = sorted(direct_targets)
    procs = Procs(ports)
    log(f"{len(via)} sessions per path, instances {ports} ({[s.port for s in via]})")
    rounds: list[dict[str, Any]] = []
    for r in range(job["rounds"]):
        order = ("edge", "direct") if r % 2 == 0 else ("direct", "edge")
        row: dict[str, Any] = {"order": list(order)}
        for path in order:
            before = procs.cpu()
            res = await drive(via if path == "edge" else direct, job["seconds"], job["requests"])
            after = procs.cpu()
            n = res["requests"] + len(via) * 10
            res["cpu_ms_per_call"] = {k: round((after[k] - before[k]) * 1000 / n, 3) for k in after}
            row[path] = res
            log(f"round {r + 1} {path:6}: {res['rps']} req/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms")
        rounds.append(row)
    for s in via + direct:
        await s.close()
    for t in [edge, *direct_targets.values()]:
        await t.close()
    return {"sessions": [s.route for s in via], "ports": ports, "rounds": rounds, "cpus": os.cpu_count()}


# --------------------------------------------------------------------------- 2. streaming delay


async def timed_stream(s: Session, n: int, interval_ms: int, call_id: int) -> dict[str, Any]:
    """One slow_count call; arrival time of each progress notification and of the result, in seconds
    after the request was sent (perf_counter)."""
    body = {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {
            "name": "slow_count",
            "arguments": {"n": n, "interval_ms": interval_ms},
            "_meta": {"progressToken": f"p{call_id}"},
        },
    }
    arrivals: dict[int, float] = {}
    result_at = None
    t0 = time.perf_counter()
    async with s.target.client.stream("POST", s.target.url, json=body, headers=s.headers) as r:
        if r.status_code != 200:
            raise SystemExit(f"slow_count: HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.perf_counter() - t0
            msg = json.loads(line[5:])
            if msg.get("method") == "notifications/progress":
                arrivals[int(msg["params"]["progress"])] = now
            elif msg.get("id") == call_id:
                result_at = now
                break
    if len(arrivals) != n or result_at is None:
        raise SystemExit(f"slow_count: {len(arrivals)} of {n} notifications, result {result_at is not None}")
    return {"arrivals": [round(arrivals[i], 6) for i in range(1, n + 1)], "result": round(result_at, 6)}


async def run_stream(job: dict[str, Any]) -> dict[str, Any]:
    """Pairs of slow_count calls on the same instance, one through nginx and one straight to it, in
    alternating order; the arrival times of each notification number are compared within a pair."""
    tok = job["tokens"][0]
    edge = edge_target(job, conns=4)
    via = await open_session(edge, tok)
    dt = Target(f"http://{job['direct']['host']}:{via.port}/mcp", conns=4)
    direct = await open_session(dt, tok)
    log(
        f"instance {via.route}: {job['pairs']} pairs of "
        f"slow_count(n={job['n']}, interval_ms={job['interval_ms']})"
    )
    for s in (via, direct):  # warm-up: connections, the token cache, the tool's first call
        await timed_stream(s, 2, 0, 1)
    pairs = []
    for p in range(job["pairs"]):
        order = ("edge", "direct") if p % 2 == 0 else ("direct", "edge")
        pair: dict[str, Any] = {"order": list(order)}
        for path in order:
            pair[path] = await timed_stream(
                via if path == "edge" else direct, job["n"], job["interval_ms"], 100 + p
            )
        pairs.append(pair)
    await via.close()
    await direct.close()
    await edge.close()
    await dt.close()
    return {"instance": via.route, "pairs": pairs}


# --------------------------------------------------------------------------- 3. open streams


async def run_streams(job: dict[str, Any]) -> dict[str, Any]:
    """`len(tokens)` sessions through nginx, each holding one slow_count stream (a progress
    notification every interval_ms, n of them); clients spread over loopback source addresses so
    the per-address edge limits see many clients, as they would in production."""
    tokens: list[str] = job["tokens"]
    addrs: list[str | None] = job.get("source_addresses") or [None]
    per = math.ceil(len(tokens) / len(addrs))
    targets = [edge_target(job, conns=per + 8, local_address=a) for a in addrs]
    before = Procs(job.get("ports", [])).rss()  # the instances before any of our sessions exist
    t_setup = time.monotonic()
    sessions: list[Session] = []
    refused: list[str] = []
    for k, t in enumerate(targets):
        got, ref = await open_many(t, tokens[k * per : (k + 1) * per], parallel=job.get("open_parallel", 16))
        sessions += got
        refused += ref
    setup_s = time.monotonic() - t_setup
    log(f"{len(sessions)} sessions open in {setup_s:.1f} s ({len(refused)} refused)")
    ports = sorted({s.port for s in sessions})
    procs = Procs(ports)
    n, interval_ms = job["n"], job["interval_ms"]
    gap_limit = interval_ms / 1000 + job.get("gap_slack", 5.0)
    state = {"open": 0}
    events: list[tuple[float, int]] = []  # (monotonic, open streams) at each change
    outcome: list[dict[str, Any]] = []

    async def hold(k: int, s: Session, start_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))  # pacing of the ramp, not synchronisation
        rec: dict[str, Any] = {"route": s.route, "progress": 0, "max_gap_s": 0.0}
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "slow_count",
                "arguments": {"n": n, "interval_ms": interval_ms},
                "_meta": {"progressToken": f"s{k}"},
            },
        }
        opened = False
        try:
            async with s.target.client.stream("POST", s.target.url, json=body, headers=s.headers) as r:
                if r.status_code != 200:
                    rec["end"] = f"refused: HTTP {r.status_code}"
                    return
                opened = True
                state["open"] += 1
                events.append((time.monotonic(), state["open"]))
                last = time.monotonic()
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    now = time.monotonic()
                    rec["max_gap_s"] = max(rec["max_gap_s"], round(now - last, 3))
                    last = now
                    msg = json.loads(line[5:])
                    if msg.get("method") == "notifications/progress":
                        rec["progress"] += 1
                    elif msg.get("id") == 7:
                        rec["end"] = "result" if "result" in msg else f"error: {msg.get('error')}"
                        break
                else:
                    rec["end"] = "closed early"
        except httpx2.HTTPError as exc:
            rec["end"] = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            if opened:
                state["open"] -= 1
                events.append((time.monotonic(), state["open"]))
            outcome.append(rec)

    samples: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def monitor() -> None:
        t_mon = time.monotonic()
        while not done.is_set():
            samples.append(
                {"t": round(time.monotonic() - t_mon, 1), "open": state["open"], "rss_kib": procs.rss()}
            )
            if len(samples) % 10 == 0:
                log(
                    f"{state['open']} streams open, RSS MiB {[round(v / 1024) for v in procs.rss().values()]}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=1.0)

    mon = asyncio.create_task(monitor())
    t0 = time.monotonic()
    rate = job.get("ramp_per_second", 100)
    await asyncio.gather(*(hold(k, s, t0 + k / rate) for k, s in enumerate(sessions)))
    done.set()
    await mon
    hwm = procs.hwm()
    # The longest stretch during which every opened stream was open at once.
    full = len(sessions)
    all_open_from = next((t for t, c in events if c == full), None)
    all_open_until = next((t for t, c in events if all_open_from and t > all_open_from and c < full), None)
    dropped = [
        r for r in outcome if r.get("end") != "result" or r["progress"] != n or r["max_gap_s"] > gap_limit
    ]
    for s in sessions:
        await s.close()
    for t in targets:
        await t.close()
    return {
        "requested": len(tokens),
        "sessions_open": len(sessions),
        "sessions_refused": refused[:10],
        "sessions_refused_count": len(refused),
        "setup_seconds": round(setup_s, 1),
        "source_addresses": len(addrs),
        "max_open": max((c for _t, c in events), default=0),
        "all_open_seconds": round(all_open_until - all_open_from, 1)
        if all_open_from and all_open_until
        else None,
        "completed": sum(1 for r in outcome if r.get("end") == "result" and r["progress"] == n),
        "dropped": len(dropped),
        "dropped_examples": dropped[:10],
        "max_gap_s": max((r["max_gap_s"] for r in outcome), default=None),
        "gap_limit_s": gap_limit,
        "per_instance_streams": {p: sum(1 for s in sessions if s.port == p) for p in ports},
        "rss_before_sessions_kib": before,
        "rss_samples": samples,
        "rss_hwm_kib": hwm,
        "measured_processes": bool(procs.instances),
    }


# --------------------------------------------------------------------------- 4. scale-out


async def run_scaleout(job: dict[str, Any]) -> dict[str, Any]:
    """Through the load balancer only. Phase `one`: C sessions all owned by the instances of one app
    host; phase `two`: C sessions split evenly over two hosts. nginx routes a session's calls to its
    owner (affinity), so phase one is one app host in rotation for the measured calls without
    touching any host's configuration. Sessions nginx placed elsewhere are deleted."""
    c = job["concurrency"]
    group_by = job.get("group_by", "host")
    edge = edge_target(job, conns=4 * c)
    tokens = job["tokens"]
    pool: dict[str, list[Session]] = {}
    k = 0
    while k < len(tokens):
        s = await open_session(edge, tokens[k])
        k += 1
        key = s.host_part if group_by == "host" else s.route
        pool.setdefault(key, []).append(s)
        groups = sorted(pool)
        if len(groups) >= 2 and len(pool[groups[0]]) >= c and len(pool[groups[1]]) >= c // 2:
            break
    groups = sorted(pool)
    if len(groups) < 2 or len(pool[groups[0]]) < c or len(pool[groups[1]]) < c // 2:
        raise SystemExit(
            f"scaleout: after {k} sessions the load balancer placed them on "
            f"{[(g, len(pool[g])) for g in groups]};"
            f" need {c} on one {group_by} and {c // 2} on another (more --tokens?)"
        )
    a, b = groups[0], groups[1]
    one = pool[a][:c]
    two = pool[a][: c - c // 2] + pool[b][: c // 2]
    keep = {id(s) for s in one + two}
    for g in groups:
        for s in pool[g]:
            if id(s) not in keep:
                await s.close()
    log(
        f"groups by {group_by}: {groups}; phase one: {c} on {a}; "
        f"phase two: {c - c // 2} on {a}, {c // 2} on {b}"
    )
    rounds = []
    for r in range(job["rounds"]):
        order = ("one", "two") if r % 2 == 0 else ("two", "one")
        row: dict[str, Any] = {"order": list(order)}
        for phase in order:
            res = await drive(one if phase == "one" else two, job["seconds"], job["requests"])
            row[phase] = res
            log(f"round {r + 1} {phase}: {res['rps']} req/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms")
        rounds.append(row)
    for s in {id(s): s for s in one + two}.values():
        await s.close()
    await edge.close()
    return {"group_by": group_by, "groups": groups, "phase_one": [a], "phase_two": [a, b], "rounds": rounds}


MODES = {"proxy": run_proxy, "stream": run_stream, "streams": run_streams, "scaleout": run_scaleout}


def main() -> int:
    job = json.load(sys.stdin)
    result = asyncio.run(MODES[job["mode"]](job))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
