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
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import (
    CA_CERT,
    GROUP_VARS,
    PUBLIC_NAME,
    SERVERS,
    LoadProcess,
    journal,
    main_pid,
    run_site,
    token_for,
    unit,
    url,
)

OLD = "2026.10.10"  # the inventory's version (group_vars/all/10_servers.yml)
NEW = "2026.8.18"  # the release of mcp-server-time published just before it (the same tools/list)
BASE = "/opt/mcpops/servers/time"
TAGS = ("--tags", "mcp_server")


def load_on_time(workdir: Path, address: str, workers: int = 3):
    """steady_load.py against /time/mcp (its get_current_time), through nginx, until stop()."""
    tokens = [token_for("time", f"bump-{i}") for i in range(workers)]
    return LoadProcess(
        url(SERVERS["time"]["path"]),
        tokens,
        workdir,
        CA_CERT,
        resolve=f"{PUBLIC_NAME}:{address}",
        workers=workers,
        streams=0,
        rate=4,
        client="current",
        call="get_current_time",
        call_args=json.dumps({"timezone": "UTC"}),
    )


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


@pytest.mark.timeout(900)  # two site runs (the mcp_server tag) on a shared 2-core machine
def test_a_version_bump_under_load_loses_no_call_and_keeps_the_old_release(srv, address):
    before = current(srv)
    assert before.startswith(f"mcp-server-time-{OLD}-"), f"{BASE}/current is {before}"
    others = {p: main_pid(srv, p) for name, s in SERVERS.items() if name != "time" for p in s["ports"]}
    workdir = Path(tempfile.mkdtemp(prefix="mcpops-bump-"))
    load = load_on_time(workdir, address)
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
    # Only the time server's instances restarted: each instance's stamp covers its own server's files.
    assert {p: main_pid(srv, p) for p in others} == others, "another server's instance restarted"

    # Back to the inventory's version (the old release is still there), so idempotence holds.
    back = run_site(*TAGS)
    assert back.returncode == 0, back.stdout[-5000:] + back.stderr[-2000:]
    assert current(srv) == before, f"{BASE}/current is {current(srv)} after restoring {OLD}"
