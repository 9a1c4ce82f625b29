"""Helpers of the alternative scenario's testinfra suite.

One Debian 13 container (mcpops-alt, molecule.yml) on the docker network mcpops-alt; the controller
reaches it by its address on that network. The certificates, CAs and the package index that
prepare.yml made live under <lab dir>/alt/. MCPOPS_ALT_HOST points the suite at another container
converged with the same group_vars. The rules: poll with a deadline, never sleep to synchronise,
and print the unit's journal when a service check fails.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import testinfra

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
LAB_DIR = Path(os.environ.get("MCPOPS_LAB_DIR", REPO / ".lab"))
ALT_DIR = LAB_DIR / "alt"
DEFAULT_TESTS = REPO / "molecule" / "default" / "tests"
HOST = os.environ.get("MCPOPS_ALT_HOST", "mcpops-alt")
NETWORK = os.environ.get("MCPOPS_ALT_NETWORK", "mcpops-alt")
PUBLIC_NAME = "mcp.mcpops.test"
RESOURCE_URL = f"https://{PUBLIC_NAME}/mcp"
ISSUER_URL = "https://issuer.mcpops.test"
PORTS = (8000, 8001)


def wait_until(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.25, what: str = "") -> T:
    """Call probe() until it returns a truthy value or the deadline passes; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: last={last!r}")
        time.sleep(interval)  # pacing between polls; the deadline decides


def journal(host, unit: str, lines: int = 60) -> str:
    return host.run(f"journalctl -u {shlex.quote(unit)} -n {lines} --no-pager -o short-iso").stdout


@pytest.fixture(scope="session")
def alt():
    return testinfra.get_host(f"docker://{HOST}")


@pytest.fixture(scope="session")
def address() -> str:
    """The container's IPv4 address on the scenario's network (the controller reaches it there)."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", HOST],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)[NETWORK]["IPAddress"]


@pytest.fixture(scope="session")
def token() -> str:
    """A real JWT signed by the lab issuer's key (its JWKS is pinned on the host)."""
    argv = [sys.executable, "-m", "mcpops_server.devissuer", "token", str(LAB_DIR / "issuer")]
    argv += ["--iss", ISSUER_URL, "--aud", RESOURCE_URL, "--scope", "mcp:tools", "--sub", "alt-tester"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def mcp_probe(url: str, *args: str, timeout: float = 120) -> dict:
    """The default scenario's SDK client (mcp_probe.py) run on the controller; its JSON answer."""
    res = subprocess.run(
        [sys.executable, str(DEFAULT_TESTS / "mcp_probe.py"), url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(
            f"mcp_probe.py printed no JSON (rc={res.returncode}): {res.stdout}\n{res.stderr}"
        ) from None
    out["_stderr"] = res.stderr[-2000:]
    return out
