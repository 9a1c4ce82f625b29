"""Shared helpers for the testinfra suites of every scenario.

Scenarios other than `default` reuse them with `from conftest_shared import ...` or by symlink.
The rules they follow: never sleep to synchronise (poll with a deadline), and a failing service
check prints the unit's journal so that the failure explains itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
LAB_DIR = Path(os.environ.get("MCPOPS_LAB_DIR", REPO / ".lab"))
SERVER_PYTHON = "/opt/mcpops/current/venv/bin/python"
PUBLIC_NAME = "mcp.mcpops.test"
RESOURCE_URL = f"https://{PUBLIC_NAME}/mcp"
ISSUER_URL = "https://issuer.mcpops.test"


def wait_until(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.25, what: str = "") -> T:
    """Call probe() until it returns a truthy value or the deadline passes; return that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: last={last!r}")
        time.sleep(interval)  # pacing between polls, not synchronisation: the deadline decides


def journal(host, unit: str, lines: int = 80) -> str:
    return host.run(f"journalctl -u {unit} -n {lines} --no-pager -o short-iso").stdout


def assert_active(host, unit: str) -> None:
    svc = host.service(unit)
    assert svc.is_running, f"{unit} is not running; journal:\n{journal(host, unit)}"
    assert svc.is_enabled, f"{unit} is not enabled; journal:\n{journal(host, unit)}"


def mint_token(scope: str = "mcp:tools", sub: str = "tester", aud: str = RESOURCE_URL, ttl: int = 600) -> str:
    """A real JWT signed by the lab issuer's private key (its JWKS is pinned on the servers)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcpops_server.devissuer",
            "token",
            str(LAB_DIR / "issuer"),
            "--iss",
            ISSUER_URL,
            "--aud",
            aud,
            "--scope",
            scope,
            "--sub",
            sub,
            "--ttl",
            str(ttl),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def token() -> str:
    return mint_token()
