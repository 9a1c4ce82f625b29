"""A version bump of a stdio server under client load loses no call (issue 12: "Changing a version
gives a new release directory, switched atomically like the server's own releases, with the old one
kept for rollback"). Last by file order: it converges the host twice (the bump, then the original
version back), so the tests before it and molecule's idempotence see the inventory's version.

The load is the default scenario's steady_load.py on the controller, through nginx over TLS, calling
the time server's get_current_time with the SDK's current client (the sessionless protocol
revision: no call depends on which instance answered before). A restarting instance finishes its
calls in flight and takes no new connection, so nginx sends the next ones to the server's other
instance. (An instance's in-memory MCP sessions of the older revision end when it restarts: their
next call gets 404 and the client must initialize again; docs/servers.md says so.) Only the
mcp_server role's steps run (--tags mcp_server): the bump changes nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from conftest import (
    CA_CERT,
    DEFAULT_TESTS,
    GROUP_VARS,
    PUBLIC_NAME,
    SERVERS,
    journal,
    run_site,
    token_for,
    unit,
    url,
    wait_until,
)

OLD = "2026.10.10"  # the inventory's version (group_vars/all/10_servers.yml)
NEW = "2026.8.18"  # the release of mcp-server-time published just before it (the same tools/list)
BASE = "/opt/mcpops/servers/time"
TAGS = ("--tags", "mcp_server")


class Load:
    """steady_load.py against /time/mcp until stop(); stop() returns what the clients saw."""

    def __init__(self, workdir: Path, address: str, workers: int = 3):
        self.stop_file = workdir / "stop"
        self.status_file = workdir / "status"
        tokens = workdir / "tokens"
        tokens.write_text("\n".join(token_for("time", f"bump-{i}") for i in range(workers)) + "\n")
        argv = [sys.executable, str(DEFAULT_TESTS / "steady_load.py"), url(SERVERS["time"]["path"])]
        argv += ["--token-file", str(tokens), "--stop-file", str(self.stop_file), "--ca", str(CA_CERT)]
        argv += ["--resolve", f"{PUBLIC_NAME}:{address}", "--workers", str(workers), "--streams", "0"]
        argv += ["--rate", "4", "--client", "current", "--status-file", str(self.status_file)]
        argv += ["--call", "get_current_time", "--call-args", json.dumps({"timezone": "UTC"})]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def calls(self) -> int:
        try:
            return int(self.status_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def wait_for_calls(self, more: int, timeout: float = 60) -> int:
        target = self.calls() + more

        def progressed() -> bool:
            assert self.proc.poll() is None, f"steady_load.py ended early: {self.proc.communicate()}"
            return self.calls() >= target

        wait_until(progressed, timeout, 0.2, f"{more} more calls from the load")
        return self.calls()

    def stop(self, timeout: float = 120) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=timeout)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise AssertionError(
                f"steady_load.py printed no JSON (rc={self.proc.returncode}): {out}\n{err}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop_file.touch()
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def releases(srv) -> list[str]:
    return srv.run(f"ls -1 {BASE}/releases").stdout.split()


def current(srv) -> str:
    return srv.run(f"readlink -f {BASE}/current").stdout.strip().rsplit("/", 1)[-1]


def bumped_vars(workdir: Path) -> Path:
    """An extra-vars file: the inventory's mcp_server_servers with the time server at NEW."""
    servers = yaml.safe_load((GROUP_VARS / "10_servers.yml").read_text())["mcp_server_servers"]
    for s in servers:
        if s["name"] == "time":
            assert s["pypi"] == f"mcp-server-time=={OLD}", s
            s["pypi"] = f"mcp-server-time=={NEW}"
    path = workdir / "bump.yml"
    path.write_text(yaml.safe_dump({"mcp_server_servers": servers}))
    return path


def test_a_version_bump_under_load_loses_no_call_and_keeps_the_old_release(srv, address):
    before = current(srv)
    assert before.startswith(f"mcp-server-time-{OLD}-"), f"{BASE}/current is {before}"
    workdir = Path(tempfile.mkdtemp(prefix="mcpops-bump-"))
    load = Load(workdir, address)
    try:
        load.wait_for_calls(20)
        bump = run_site("-e", f"@{bumped_vars(workdir)}", *TAGS)
        assert bump.returncode == 0, bump.stdout[-5000:] + bump.stderr[-2000:]
        load.wait_for_calls(20)  # the new release serves
        seen = load.stop()
    finally:
        load.close()
    assert seen["calls"] >= 40 and seen["failed"] == 0, json.dumps(seen)[:3000]
    after = current(srv)
    assert after.startswith(f"mcp-server-time-{NEW}-"), f"{BASE}/current is {after}"
    present = releases(srv)
    assert before in present and after in present, f"releases: {present}"
    for port in SERVERS["time"]["ports"]:
        assert srv.service(unit(port)).is_running, journal(srv, unit(port))

    # Back to the inventory's version (the old release is still there), so idempotence holds.
    back = run_site(*TAGS)
    assert back.returncode == 0, back.stdout[-5000:] + back.stderr[-2000:]
    assert current(srv) == before, f"{BASE}/current is {current(srv)} after restoring {OLD}"
