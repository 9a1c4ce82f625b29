"""Open streams: hold 1000 concurrent SSE streams through nginx for 60 s; drops and per-instance RSS.

    python bench/open_streams.py [--lab NAME] [--streams S] [--hold SECONDS] [--interval-ms I]

Runs against the one-host lab (bench/lab.sh up), the load agent inside the lab host (see
proxy_bench.py for why). S sessions are opened through nginx (TLS, public name), one principal each
(the per-principal session limit is not what is measured). Then each session calls slow_count with
a progress notification every I ms, long enough that every stream is open for the whole hold: the
calls start at --ramp streams a second and each sends n = ceil((hold + ramp time) / I) + 1
notifications, so the last stream opened still streams for `hold` seconds after the first ones.
The clients spread over loopback source addresses (127.0.0.10 and up, --per-address streams each):
nginx's edge limits count per client address (limit_conn 100 by default) and 1000 real clients
come from many addresses.

A stream is dropped when it ends without its result, is refused, misses a notification, or goes
silent for longer than I ms + --gap-slack seconds. The instances' RSS (and nginx's) is sampled every
second from /proc; the instances' VmHWM is read at the end. Prints the figures and writes
bench/results/open_streams.json. Targets: zero drops, at most 256 MiB per instance.
"""

from __future__ import annotations

import argparse
import math
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
    run_agent,
    write_result,
)

TARGET_RSS_MIB = 256


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_lab_args(ap)
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams (default 1000)")
    ap.add_argument(
        "--hold", type=float, default=60.0, help="seconds every stream is open at once (default 60)"
    )
    ap.add_argument(
        "--interval-ms", type=int, default=5000, help="pause between notifications (default 5000)"
    )
    ap.add_argument("--ramp", type=float, default=100.0, help="streams started per second (default 100)")
    ap.add_argument(
        "--per-address", type=int, default=50, help="streams per loopback source address (default 50)"
    )
    ap.add_argument(
        "--gap-slack",
        type=float,
        default=5.0,
        help="seconds of silence beyond the interval that count as a drop",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "open_streams.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    lab = check_lab(args.lab)
    ramp_s = args.streams / args.ramp
    n = math.ceil((args.hold + ramp_s) * 1000 / args.interval_ms) + 1
    n_addr = math.ceil(args.streams / args.per_address)
    if n_addr > 240:
        raise SystemExit(f"--per-address {args.per_address}: {n_addr} source addresses needed, at most 240")
    job = {
        "mode": "streams",
        "edge": lab_edge(),
        "tokens": mint_tokens(args.streams, "bench-streams-"),
        "source_addresses": [f"127.0.0.{10 + k}" for k in range(n_addr)],
        "ports": lab["instance_ports"],
        "n": n,
        "interval_ms": args.interval_ms,
        "ramp_per_second": args.ramp,
        "gap_slack": args.gap_slack,
    }
    print(
        f"{args.streams} streams from {n_addr} source addresses, "
        f"slow_count(n={n}, interval_ms={args.interval_ms}): "
        f"about {ramp_s:.0f} s of ramp + {(n - 1) * args.interval_ms / 1000:.0f} s per stream"
    )
    res = run_agent(job, args.lab)
    samples = res.pop("rss_samples")
    inst_keys = sorted({k for s in samples for k in s["rss_kib"] if k.startswith("instance_")})
    peak_sampled = {k: round(max(s["rss_kib"].get(k, 0) for s in samples) / 1024, 1) for k in inst_keys}
    before = {k: round(v / 1024, 1) for k, v in res.pop("rss_before_sessions_kib").items() if k in inst_keys}
    idle = {k: round(samples[0]["rss_kib"].get(k, 0) / 1024, 1) for k in inst_keys} if samples else {}
    hwm = {k: round(v / 1024, 1) for k, v in res["rss_hwm_kib"].items()}
    nginx_peak = round(max((s["rss_kib"].get("nginx", 0) for s in samples), default=0) / 1024, 1)
    worst = max([*hwm.values(), *peak_sampled.values()], default=0.0)
    held = res["all_open_seconds"]
    met = {
        "zero_drops": res["dropped"] == 0
        and res["sessions_refused_count"] == 0
        and res["sessions_open"] == args.streams,
        "all_open_for_hold": held is not None and held >= args.hold,
        "rss_per_instance": bool(hwm) and worst <= TARGET_RSS_MIB,
    }
    result = {
        **context(load_start),
        "benchmark": "open streams",
        "lab": lab,
        "agent": "inside the lab host (release venv Python), to nginx:443 from several loopback addresses",
        "load": {
            "streams": args.streams,
            "hold_seconds": args.hold,
            "interval_ms": args.interval_ms,
            "notifications_per_stream": n,
            "ramp_per_second": args.ramp,
            "source_addresses": n_addr,
        },
        **res,
        "rss_mib": {
            "before_sessions": before,
            "sessions_open_no_streams": idle,
            "peak_sampled": peak_sampled,
            "hwm": hwm,
            "nginx_peak_sampled": nginx_peak,
        },
        "open_streams_over_time": [[s["t"], s["open"]] for s in samples],
        "targets": {"dropped": 0, "rss_per_instance_max_mib": TARGET_RSS_MIB},
        "met": met,
    }
    print()
    print(
        f"sessions: {res['sessions_open']} of {args.streams} opened "
        f"({res['sessions_refused_count']} refused) "
        f"in {res['setup_seconds']} s, per instance {res['per_instance_streams']}"
    )
    print(
        f"streams: at most {res['max_open']} open at once; "
        f"all {res['sessions_open']} open together for {held} s "
        f"(target >= {args.hold:g} s: {'met' if met['all_open_for_hold'] else 'MISSED'})"
    )
    print(
        f"completed {res['completed']}, dropped {res['dropped']} "
        f"(target 0: {'met' if met['zero_drops'] else 'MISSED'}); "
        f"longest silence in a stream {res['max_gap_s']} s (limit {res['gap_limit_s']} s)"
    )
    for d in res["dropped_examples"][:5]:
        print(f"  dropped: {d}")
    for k in inst_keys:
        print(
            f"RSS {k}: {before.get(k)} MiB before the sessions, {idle.get(k)} MiB with them (no stream), "
            f"{peak_sampled[k]} MiB peak sampled, {hwm.get(k)} MiB VmHWM (the process' lifetime peak)"
        )
    print(
        f"nginx (all processes) peak {nginx_peak} MiB; target <= {TARGET_RSS_MIB} MiB per instance: "
        f"{'met' if met['rss_per_instance'] else 'MISSED'}; " + load_note(result)
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
