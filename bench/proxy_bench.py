"""Proxy overhead: tools/call throughput through nginx (TLS) against straight to the instances, one run.

    python bench/proxy_bench.py [--lab NAME] [--concurrency C] [--seconds S] [--requests N] [--rounds R]

Runs against the one-host lab (bench/lab.sh up). The load agent (bench/edge_agent.py) runs inside
the lab host with the release's Python: the instances listen on its loopback only, so that is the one
place both paths start from, and loopback keeps docker's bridge out of the comparison. C sessions
are opened through nginx (https://127.0.0.1 with Host mcp.mcpops.test, verified against the
deployment CA, HTTP/1.1 keep-alive); for each, a session is opened straight to the instance nginx
gave it, so both paths load the instances alike. Each session calls slow_count(n=1, interval_ms=0)
back to back (the cheapest tool of the reference toolset). Rounds alternate edge/direct to spread
the noise of a shared machine. Prints requests/s per round, the ratio edge/direct (median of the
paired rounds) and CPU per call of nginx, the instances and the agent; writes bench/results/proxy.json.
Target: ratio >= 0.85.
"""

from __future__ import annotations

import argparse
import os
import sys

from edgelab import (
    HERE,
    add_lab_args,
    check_lab,
    context,
    lab_edge,
    load_note,
    median,
    mint_tokens,
    run_agent,
    write_result,
)

TARGET = 0.85


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_lab_args(ap)
    ap.add_argument("--concurrency", type=int, default=8, help="sessions per path (default 8)")
    ap.add_argument("--seconds", type=float, default=8.0, help="time bound of one measured run (default 8)")
    ap.add_argument(
        "--requests", type=int, default=20000, help="call bound of one measured run (default 20000)"
    )
    ap.add_argument("--rounds", type=int, default=6, help="rounds, each one run per path (default 6)")
    ap.add_argument("--out", default=str(HERE / "results" / "proxy.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    lab = check_lab(args.lab)
    job = {
        "mode": "proxy",
        "edge": lab_edge(),
        "direct": {"host": "127.0.0.1"},
        "tokens": mint_tokens(args.concurrency, "bench-proxy-"),
        "seconds": args.seconds,
        "requests": args.requests,
        "rounds": args.rounds,
    }
    res = run_agent(job, args.lab)
    rounds = res["rounds"]
    pairs = [r["edge"]["rps"] / r["direct"]["rps"] for r in rounds if r["direct"]["rps"]]
    ratio = round(median(pairs) or 0.0, 3)

    def med(path: str, key: str) -> float:
        return round(median([r[path][key] for r in rounds if r[path][key] is not None]) or 0.0, 2)

    def cpu(path: str, key: str) -> float:
        return round(median([r[path]["cpu_ms_per_call"].get(key, 0.0) for r in rounds]) or 0.0, 3)

    inst_keys = [k for k in rounds[0]["edge"]["cpu_ms_per_call"] if k.startswith("instance_")]
    cpu_table = {
        path: {
            "instances": round(sum(cpu(path, k) for k in inst_keys), 3),
            "nginx": cpu(path, "nginx"),
            "agent": cpu(path, "agent"),
        }
        for path in ("edge", "direct")
    }
    server_edge = cpu_table["edge"]["instances"] + cpu_table["edge"]["nginx"]
    capacity = round(cpu_table["direct"]["instances"] / server_edge, 3) if server_edge else None
    errors = {p: sum(sum(r[p]["errors"].values()) for r in rounds) for p in ("edge", "direct")}
    result = {
        **context(load_start),
        "benchmark": "proxy overhead",
        "lab": lab,
        "agent": "inside the lab host (release venv Python), loopback to nginx:443 and to the instances",
        "load": {
            "concurrency": args.concurrency,
            "seconds_bound": args.seconds,
            "requests_bound": args.requests,
            "rounds": args.rounds,
            "call": "tools/call slow_count(n=1, interval_ms=0), HTTP/1.1 keep-alive",
        },
        "sessions_by_instance": {r: res["sessions"].count(r) for r in sorted(set(res["sessions"]))},
        "rounds": rounds,
        "rps_median": {"edge": med("edge", "rps"), "direct": med("direct", "rps")},
        "p50_ms_median": {"edge": med("edge", "p50_ms"), "direct": med("direct", "p50_ms")},
        "p99_ms_median": {"edge": med("edge", "p99_ms"), "direct": med("direct", "p99_ms")},
        "ratio_edge_over_direct": ratio,
        "ratio_per_round": [round(x, 3) for x in pairs],
        "cpu_ms_per_call_median": cpu_table,
        "capacity_ratio_cpu": capacity,
        "errors": errors,
        "targets": {"ratio_min": TARGET},
        "met": {"ratio": ratio >= TARGET and not any(errors.values())},
    }
    print()
    print(
        f"{'':10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'inst. CPU':>11}{'nginx CPU':>11}{'agent CPU':>11}  (median, ms/call)"
    )
    for path in ("edge", "direct"):
        c = cpu_table[path]
        print(
            f"{path:10}{result['rps_median'][path]:>9}{result['p50_ms_median'][path]:>9}"
            f"{result['p99_ms_median'][path]:>9}{c['instances']:>11}{c['nginx']:>11}{c['agent']:>11}"
        )
    print(
        f"throughput ratio edge/direct: {ratio} "
        f"(median of {len(pairs)} paired rounds: {result['ratio_per_round']}); "
        f"target >= {TARGET}: {'met' if result['met']['ratio'] else 'MISSED'}"
    )
    print(
        f"server CPU per call: direct {cpu_table['direct']['instances']} ms, edge {round(server_edge, 3)} ms "
        f"(instances + nginx) -> capacity ratio {capacity}; errors {errors}; " + load_note(result)
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
