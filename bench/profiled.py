"""Run a server under cProfile, switched on and off by signals, for `server_bench.py --profile`.

    python bench/profiled.py STATS_FILE -m module [args...]
    python bench/profiled.py STATS_FILE script.py [args...]

The server starts unprofiled (imports and start-up are not what we measure). SIGUSR1 turns the
profiler on; SIGUSR2 turns it off and writes its statistics (pstats format) to STATS_FILE, through a
temporary file renamed into place, so whoever waits for the file reads it whole. The profiler hooks
the main thread, the one running the event loop, which is where the request path runs.

cProfile does not see the garbage collector (its pauses are charged to whatever function happened
to allocate), so while profiling, the collections of each generation and the time they take are
counted too and written to STATS_FILE.gc.json, before STATS_FILE appears.
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import runpy
import signal
import sys
import time
from typing import Any


class CollectionTimer:
    """Collections per generation and the seconds they took, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.counts[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    target = sys.argv[2:]
    profiler = cProfile.Profile()
    collections = CollectionTimer()

    def start(_signum: int, _frame: Any) -> None:
        collections.on = True
        profiler.enable()

    def stop(_signum: int, _frame: Any) -> None:
        profiler.disable()
        collections.on = False
        with open(out + ".gc.json", "w") as f:
            json.dump({"collections": collections.counts, "seconds": collections.seconds}, f)
        profiler.dump_stats(out + ".tmp")
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
