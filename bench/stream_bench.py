"""Streaming: the delay nginx adds to a progress notification, p50 and p99, in one run.

    python bench/stream_bench.py [--lab NAME] [--pairs P] [--n N] [--interval-ms I]

Runs against the one-host lab (bench/lab.sh up), the load agent inside the lab host (see
proxy_bench.py for why). One session through nginx (TLS, public name) and one straight to the
instance nginx gave it. Each pair is two calls of slow_count(n=N, interval_ms=I) on that instance,
one per path, in alternating order, one at a time. For notification k of a call, its arrival is
measured at the client from the moment the call was sent; the added delay of notification k is its
arrival through nginx minus its arrival direct, within the pair. So the figure holds the one-way trip
of the request through nginx as well (an upper bound of what a notification alone gains) and the
instance's own timer jitter on both sides (which is why p99 is noisier than p50). Also printed: how
late each notification is after the first one, per path (nginx holding events back would show here
as a growing lateness). Writes bench/results/stream.json. Target: p99 added delay < 50 ms.
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
    mint_tokens,
    percentile,
    run_agent,
    write_result,
)

TARGET_P99_MS = 50.0


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_lab_args(ap)
    ap.add_argument("--pairs", type=int, default=30, help="pairs of calls (default 30)")
    ap.add_argument("--n", type=int, default=20, help="progress notifications per call (default 20)")
    ap.add_argument("--interval-ms", type=int, default=50, help="pause between notifications (default 50)")
    ap.add_argument("--out", default=str(HERE / "results" / "stream.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    lab = check_lab(args.lab)
    job = {
        "mode": "stream",
        "edge": lab_edge(),
        "direct": {"host": "127.0.0.1"},
        "tokens": mint_tokens(1, "bench-stream-"),
        "pairs": args.pairs,
        "n": args.n,
        "interval_ms": args.interval_ms,
    }
    res = run_agent(job, args.lab)
    added: list[float] = []
    added_first: list[float] = []
    late: dict[str, list[float]] = {"edge": [], "direct": []}
    result_added: list[float] = []
    step = args.interval_ms / 1000
    for p in res["pairs"]:
        e, d = p["edge"]["arrivals"], p["direct"]["arrivals"]
        added += [a - b for a, b in zip(e, d, strict=True)]
        added_first.append(e[0] - d[0])
        result_added.append(p["edge"]["result"] - p["direct"]["result"])
        for path in ("edge", "direct"):
            arr = p[path]["arrivals"]
            late[path] += [arr[k] - arr[0] - k * step for k in range(1, len(arr))]
    p50, p99 = ms(percentile(added, 50)), ms(percentile(added, 99))
    result = {
        **context(load_start),
        "benchmark": "streaming delay",
        "lab": lab,
        "agent": "inside the lab host (release venv Python), loopback to nginx:443 and to the instance",
        "load": {
            "pairs": args.pairs,
            "n": args.n,
            "interval_ms": args.interval_ms,
            "instance": res["instance"],
        },
        "samples": len(added),
        "added_delay_ms": {
            "p50": p50,
            "p90": ms(percentile(added, 90)),
            "p99": p99,
            "max": ms(max(added)),
            "min": ms(min(added)),
        },
        "added_delay_first_notification_ms": {
            "p50": ms(percentile(added_first, 50)),
            "max": ms(max(added_first)),
        },
        "added_delay_result_ms": {"p50": ms(percentile(result_added, 50)), "max": ms(max(result_added))},
        "lateness_after_first_ms": {
            path: {"p50": ms(percentile(v, 50)), "p99": ms(percentile(v, 99)), "max": ms(max(v))}
            for path, v in late.items()
        },
        "pairs": res["pairs"],
        "targets": {"added_delay_p99_max_ms": TARGET_P99_MS},
        "met": {"added_delay_p99": p99 is not None and p99 < TARGET_P99_MS},
    }
    print()
    a = result["added_delay_ms"]
    print(
        f"added delay through nginx, {len(added)} notifications in {args.pairs} pairs: "
        f"p50 {a['p50']} ms, p90 {a['p90']} ms, p99 {a['p99']} ms, max {a['max']} ms (min {a['min']} ms)"
    )
    print(
        f"  first notification p50 {result['added_delay_first_notification_ms']['p50']} ms, "
        f"result p50 {result['added_delay_result_ms']['p50']} ms"
    )
    for path, v in result["lateness_after_first_ms"].items():
        print(
            f"  lateness after the first notification, {path:6}: "
            f"p50 {v['p50']} ms, p99 {v['p99']} ms, max {v['max']} ms"
        )
    print(
        f"target p99 < {TARGET_P99_MS:g} ms: {'met' if result['met']['added_delay_p99'] else 'MISSED'}; "
        + load_note(result)
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
