"""Shared helpers of the cluster scenario's testinfra suites.

The cluster is five containers on the docker network mcpops-cluster (molecule.yml): mcpops-lb,
mcpops-app1, mcpops-app2, mcpops-data and mcpops-ops. Tests reach each host with a docker
testinfra backend (fixture `hosts`), and the controller reaches the load balancer by its address
on that network. The rules of every suite: poll with a deadline, never sleep to synchronise, and
print the unit's journal when a service check fails.
"""

from __future__ import annotations

import importlib.util
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
DEFAULT_TESTS = REPO / "molecule" / "default" / "tests"
_spec = importlib.util.spec_from_file_location("mcpops_load_process", DEFAULT_TESTS / "load_process.py")
_load_process = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_load_process)
LoadProcess = _load_process.LoadProcess
CA_CERT = LAB_DIR / "ca" / "ca.crt"
PUBLIC_NAME = "mcp.mcpops.test"
RESOURCE_URL = f"https://{PUBLIC_NAME}/mcp"
ISSUER_URL = "https://issuer.mcpops.test"
NETWORK = "mcpops-cluster"
HOSTS = ("mcpops-lb", "mcpops-app1", "mcpops-app2", "mcpops-data", "mcpops-ops")
APP_HOSTS = ("mcpops-app1", "mcpops-app2")
INSTANCE_PORTS = (8000, 8001)
PKI = "/etc/mcpops/pki"


def wait_until(
    probe: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.25,
    what: str = "",
    explain: Callable[[], str] | None = None,
) -> T:
    """Call probe() until it returns a truthy value or the deadline passes; return that value.
    At the deadline the error carries explain()'s text (journals, metrics) when it is given."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or probe}: last={last!r}{detail}"
            )
        time.sleep(interval)  # pacing between polls; the deadline decides


def journal(host, unit: str, lines: int = 80) -> str:
    return host.run(f"journalctl -u {shlex.quote(unit)} -n {lines} --no-pager -o short-iso").stdout


def assert_active(host, unit: str) -> None:
    svc = host.service(unit)
    assert svc.is_running, f"{unit} is not running; journal:\n{journal(host, unit)}"
    assert svc.is_enabled, f"{unit} is not enabled; journal:\n{journal(host, unit)}"


@pytest.fixture(scope="session")
def hosts() -> dict:
    return {name: testinfra.get_host(f"docker://{name}") for name in HOSTS}


def address_of(name: str) -> str:
    """The container's IPv4 address on the scenario's network."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)[NETWORK]["IPAddress"]


def mint_token(scope: str = "mcp:tools", sub: str = "tester", aud: str = RESOURCE_URL, ttl: int = 600) -> str:
    """A real JWT signed by the lab issuer's key (its JWKS is pinned on the app hosts)."""
    argv = [sys.executable, "-m", "mcpops_server.devissuer", "token", str(LAB_DIR / "issuer")]
    argv += ["--iss", ISSUER_URL, "--aud", aud, "--scope", scope, "--sub", sub, "--ttl", str(ttl)]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def controller_script(name: str, *args: str, timeout: float = 180) -> dict:
    """Run one of the default scenario's SDK clients (mcp_probe.py, sessions_load.py) on the
    controller, whose virtualenv has the SDK; return the JSON it prints."""
    res = subprocess.run(
        [sys.executable, str(DEFAULT_TESTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(
            f"{name} printed no JSON (rc={res.returncode}): {res.stdout}\n{res.stderr}"
        ) from None
    out["_rc"] = res.returncode
    out["_stderr"] = res.stderr[-2000:]
    return out


_CONNECT_PY = r"""
import socket, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
payload = sys.argv[4].encode().decode("unicode_escape").encode() if len(sys.argv) > 4 else b""
try:
    sock = socket.create_connection((host, port), timeout=3)
except OSError as exc:
    print("closed", type(exc).__name__); sys.exit(0)
try:
    if mode != "plain":
        ctx = ssl.create_default_context(cafile="/etc/mcpops/pki/ca.crt")
        if mode == "mutual":
            ctx.load_cert_chain("/etc/mcpops/pki/host.crt", "/etc/mcpops/pki/host.key")
        sock = ctx.wrap_socket(sock, server_hostname=host)
    sock.settimeout(3)
    if payload:
        sock.sendall(payload)
    data = sock.recv(200)
    print("open", repr(data[:80].decode("latin-1")))
except (OSError, ssl.SSLError) as exc:
    print("failed", type(exc).__name__, str(exc)[:120])
"""


def connect(host, target: str, port: int, mode: str = "plain", payload: str = "") -> str:
    """From inside `host`, connect to target:port. mode: plain, tls (verify the server against the
    deployment CA) or mutual (also present the host's certificate). Prints what happened:
    `closed ...` (no TCP connection: refused, dropped, timed out), `open '<first bytes>'`, or
    `failed <error>` (connected, then the exchange failed)."""
    argv = ["python3", "-c", _CONNECT_PY, target, str(port), mode]
    if payload:
        argv.append(payload)
    return host.run(shlex.join(argv)).stdout.strip()


def run_playbook(
    name: str, inventory: Path, *extra: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    """playbooks/<name> from the controller with the repo's ansible.cfg, on molecule's inventory."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_INJECT_FACT_VARS="false")
    env.setdefault("MCPOPS_LAB_DIR", str(LAB_DIR))
    exe = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(exe), "-i", str(inventory), str(REPO / "playbooks" / name), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_site(inventory: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """playbooks/site.yml (run_playbook)."""
    return run_playbook("site.yml", inventory, *extra, timeout=timeout)


def molecule_inventory() -> Path:
    raw = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert raw and Path(raw).exists(), "run by molecule verify (MOLECULE_INVENTORY_FILE)"
    return Path(raw)


class SteadyLoad(LoadProcess):
    """The default scenario's steady_load.py on the controller, through the lb, until stop():
    a constant stream of MCP calls plus event streams; stop() returns what the clients saw."""

    def __init__(self, workdir: Path, workers: int = 4, streams: int = 1, **options: object):
        tokens = [mint_token(sub=f"load-{i}") for i in range(workers + streams)]
        url = f"https://{address_of('mcpops-lb')}/mcp"
        super().__init__(
            url,
            tokens,
            workdir,
            CA_CERT,
            host_header=PUBLIC_NAME,
            workers=workers,
            streams=streams,
            **options,
        )
