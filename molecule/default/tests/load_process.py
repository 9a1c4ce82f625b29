"""steady_load.py as a child process of a test: start it, watch its count, stop it and read its report.

Shared by the scenarios that load an endpoint while something changes (cluster: rolling upgrade,
fault drills, a host added; servers: a version bump). Not a test module: the scenarios import it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

STEADY_LOAD = Path(__file__).resolve().with_name("steady_load.py")


class LoadProcess:
    """steady_load.py against `url` until stop(); stop() returns what the clients saw (its JSON).

    `tokens`: one bearer token per client (workers, then streams). `options`: more steady_load.py
    options, `foo_bar=value` for `--foo-bar value`.
    """

    def __init__(self, url: str, tokens: list[str], workdir: Path, ca: Path, **options: object):
        self.stop_file = workdir / "stop-load"
        self.status_file = workdir / "load-status"
        token_file = workdir / "load-tokens"
        token_file.write_text("\n".join(tokens) + "\n")
        argv = [sys.executable, str(STEADY_LOAD), url, "--token-file", str(token_file)]
        argv += ["--stop-file", str(self.stop_file), "--ca", str(ca), "--status-file", str(self.status_file)]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def calls(self) -> int:
        """Calls made so far (updated every fifth call)."""
        try:
            return int(self.status_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def wait_for_calls(self, more: int, timeout: float = 60) -> int:
        """Wait until `more` calls beyond the current count were made; return the new count."""
        target = self.calls() + more
        deadline = time.monotonic() + timeout
        while self.calls() < target:
            if self.proc.poll() is not None:
                raise AssertionError(f"steady_load.py ended early: {self.proc.communicate()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{more} more calls from the load not made within {timeout} s")
            time.sleep(0.2)
        return self.calls()

    def stop(self, timeout: float = 120) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=timeout)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            rc = self.proc.returncode
            raise AssertionError(f"steady_load.py printed no JSON (rc={rc}): {out}\n{err}") from None

    def close(self) -> None:
        """Stop the load if a failed test left it running (a finalizer); its report is dropped."""
        if self.proc.poll() is None:
            self.stop_file.touch()
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
