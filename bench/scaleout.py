"""Scale-out: throughput through the load balancer with one app host and then with two, one run, ratio.

    python bench/scaleout.py --lb mcpops-lb [--concurrency C] [--seconds S] [--rounds R]   # cluster
    python bench/scaleout.py --lab NAME --group-by instance                               # one-host lab

Everything goes through the load balancer (nginx, TLS, public name mcp.mcpops.test, verified
against the deployment CA). No host's configuration is touched: nginx keeps a session on the
instance that owns it (the Mcp-Session-Id prefix is the instance's route id, `<host part>-<port>`),
so the benchmark opens sessions until it holds C owned by one app host and C/2 owned by another,
and deletes the rest. Phase `one` drives C sessions of the first host: for the measured calls only
that host is in rotation. Phase `two` drives C sessions split evenly over both. Rounds alternate the
phases; the ratio two/one is the median of the paired rounds (2.0 is linear scaling).
`initialize` requests are spread by nginx as usual while the sessions are set up, not while measuring.

With --lb the agent runs here (the controller's Python, which has httpx2) and reaches the load
balancer on the docker network: ADDRESS may be an IP address or a container name (its first
network's address is used). The CA is $MCPOPS_LAB_DIR/ca/ca.crt. With --lab the agent runs inside a
one-host lab as the other edge benchmarks do; there both instances share one host, so use
`--group-by instance` (one instance against two) to check the mechanism, not to measure scale-out.
Tokens carry one principal per session; the app hosts' rate limit (mcp_server_ratelimit_per_minute,
600 by default) must be above what C sessions send, or calls get 429 (counted as errors).
Writes bench/results/scaleout.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from edgelab import (
    HERE,
    LAB_DIR,
    PUBLIC_NAME,
    add_lab_args,
    check_lab,
    context,
    docker,
    lab_edge,
    load_note,
    median,
    mint_tokens,
    run_agent,
    write_result,
)


def lb_address(value: str) -> str:
    if all(c.isdigit() or c == "." for c in value) or ":" in value:
        return value
    nets = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", value).stdout)
    for net in nets.values():
        if net.get("IPAddress"):
            return net["IPAddress"]
    raise SystemExit(f"--lb {value}: the container has no IPv4 address on any network")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_lab_args(ap)
    ap.add_argument("--lb", help="the load balancer's address or container name (cluster); without it, --lab")
    ap.add_argument(
        "--group-by",
        choices=["host", "instance"],
        help="what one unit of scale is (default: host with --lb, instance with --lab)",
    )
    ap.add_argument("--concurrency", type=int, default=16, help="sessions driven in each phase (default 16)")
    ap.add_argument("--seconds", type=float, default=8.0, help="time bound of one measured run (default 8)")
    ap.add_argument(
        "--requests", type=int, default=20000, help="call bound of one measured run (default 20000)"
    )
    ap.add_argument("--rounds", type=int, default=6, help="rounds, each one run per phase (default 6)")
    ap.add_argument("--out", default=str(HERE / "results" / "scaleout.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    if args.lb:
        addr = lb_address(args.lb)
        where = None
        edge = {"url": f"https://{addr}/mcp", "host": PUBLIC_NAME, "ca": str(LAB_DIR / "ca" / "ca.crt")}
        group_by = args.group_by or "host"
        target: dict[str, object] = {"lb": args.lb, "address": addr}
        agent = "on the controller, over the docker network to the load balancer"
    else:
        lab = check_lab(args.lab)
        where = args.lab
        edge = lab_edge()
        group_by = args.group_by or "instance"
        target = {"lab": lab}
        agent = "inside the lab host (release venv Python), loopback to nginx:443"
    c = args.concurrency
    job = {
        "mode": "scaleout",
        "edge": edge,
        "tokens": mint_tokens(6 * c, "bench-scale-"),
        "concurrency": c,
        "group_by": group_by,
        "seconds": args.seconds,
        "requests": args.requests,
        "rounds": args.rounds,
    }
    res = run_agent(job, where)
    rounds = res["rounds"]
    pairs = [r["two"]["rps"] / r["one"]["rps"] for r in rounds if r["one"]["rps"]]
    ratio = round(median(pairs) or 0.0, 3)
    errors = {p: sum(sum(r[p]["errors"].values()) for r in rounds) for p in ("one", "two")}

    def med(phase: str, key: str) -> float:
        return round(median([r[phase][key] for r in rounds if r[phase][key] is not None]) or 0.0, 2)

    result = {
        **context(load_start),
        "benchmark": "scale-out",
        "target": target,
        "agent": agent,
        "group_by": group_by,
        "groups_seen": res["groups"],
        "phase_one": res["phase_one"],
        "phase_two": res["phase_two"],
        "load": {
            "concurrency": c,
            "seconds_bound": args.seconds,
            "requests_bound": args.requests,
            "rounds": args.rounds,
            "call": "tools/call slow_count(n=1, interval_ms=0), HTTP/1.1 keep-alive",
        },
        "rounds": rounds,
        "rps_median": {"one": med("one", "rps"), "two": med("two", "rps")},
        "p50_ms_median": {"one": med("one", "p50_ms"), "two": med("two", "p50_ms")},
        "p99_ms_median": {"one": med("one", "p99_ms"), "two": med("two", "p99_ms")},
        "ratio_two_over_one": ratio,
        "ratio_per_round": [round(x, 3) for x in pairs],
        "errors": errors,
    }
    print()
    for phase, label in (
        ("one", f"one {group_by} {res['phase_one']}"),
        ("two", f"two {group_by}s {res['phase_two']}"),
    ):
        print(
            f"{label:50} {result['rps_median'][phase]:>8} req/s  p50 {result['p50_ms_median'][phase]} ms  "
            f"p99 {result['p99_ms_median'][phase]} ms  (median of {len(rounds)})"
        )
    print(
        f"scale-out ratio two/one: {ratio} "
        f"(median of paired rounds {result['ratio_per_round']}); errors {errors}; " + load_note(result)
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
