"""Shared helpers for the testinfra suites of every scenario.

Scenarios other than `default` reuse them with `from conftest_shared import ...` or by symlink.
The rules they follow: never sleep to synchronise (poll with a deadline), and a failing service
check prints the unit's journal so that the failure explains itself.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
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
# Every group of site.yml; the one host of the scenario is in all of them.
GROUPS = ("mcp_servers", "mcp_lb", "redis", "monitoring", "log_collectors")


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


# --------------------------------------------------------------------------------------------
# MCP server and Redis helpers (test_mcp_server.py, test_redis.py; the nginx tests reuse probe())
# --------------------------------------------------------------------------------------------

PROBE_SRC = Path(__file__).with_name("mcp_probe.py")
PROBE_PATH = "/usr/local/lib/mcpops-tests/mcp_probe.py"
DEFAULT_INSTANCES = [8000]


def container_name(host) -> str:
    """The docker container behind a testinfra host (docker:// or ansible backend)."""
    backend = host.backend
    name = getattr(backend, "name", None)
    if backend.NAME == "ansible":
        hostvars = host.ansible.get_variables()
        name = hostvars.get("ansible_host") or hostvars.get("inventory_hostname") or name
    return str(name)


def instances(host) -> list[int]:
    """The instance ports of the host, as the inventory says (the role's default: [8000])."""
    env = os.environ.get("MCPOPS_TEST_INSTANCES")
    if env:
        return [int(p) for p in env.split(",")]
    try:
        ports = host.ansible.get_variables().get("mcp_server_ports")
    except Exception:
        ports = None
    if not ports:
        text = (REPO / "inventories/local/group_vars/all/main.yml").read_text()
        m = re.search(r"^mcp_server_ports:\s*\[([0-9, ]+)\]", text, re.M)
        ports = [int(p) for p in m.group(1).split(",")] if m else DEFAULT_INSTANCES
    return [int(p) for p in ports]


def put_file(host, src: Path, dest: str, mode: str = "0644") -> None:
    data = base64.b64encode(src.read_bytes()).decode()
    d, q = shlex.quote(os.path.dirname(dest)), shlex.quote(dest)
    host.run_expect([0], f"install -d -m 0755 {d} && echo {data} | base64 -d > {q} && chmod {mode} {q}")


def probe(
    host,
    url: str,
    *,
    token: str | None = None,
    ca: str | None = None,
    host_header: str | None = None,
    list_tools: bool = False,
    calls: list[tuple[str, dict]] = (),
    python: str = SERVER_PYTHON,
    timeout: float = 30.0,
) -> dict:
    """Run the SDK's streamable HTTP client inside the host (mcp_probe.py); return its JSON."""
    put_file(host, PROBE_SRC, PROBE_PATH)
    argv = [python, PROBE_PATH, url, "--timeout", str(timeout)]
    if token:
        argv += ["--token", token]
    if ca:
        argv += ["--ca", ca]
    if host_header:
        argv += ["--host-header", host_header]
    if list_tools:
        argv.append("--list")
    for name, args in calls:
        argv += ["--call", name, json.dumps(args)]
    res = host.run(shlex.join(argv))
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"mcp_probe printed no JSON (rc={res.rc}): {res.stdout}\n{res.stderr}") from None
    out["_rc"] = res.rc
    out["_stderr"] = res.stderr
    return out


_HEALTH_PY = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=3)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except Exception:
    print(0); print("{}")
"""


def health(host, port: int) -> tuple[int, dict]:
    """GET /health of one instance from inside the host: (status, JSON body or {})."""
    res = host.run(shlex.join(["python3", "-c", _HEALTH_PY, f"http://127.0.0.1:{port}/health"]))
    lines = res.stdout.strip().splitlines()
    try:
        return int(lines[0]), json.loads(lines[1])
    except (ValueError, IndexError):
        return 0, {}


def wait_healthy(host, port: int, timeout: float = 30.0) -> dict:
    unit = f"mcpops-server@{port}.service"
    try:
        return wait_until(
            lambda: (lambda s, b: b if s == 200 else None)(*health(host, port)),
            timeout=timeout,
            what=f"/health 200 on port {port}",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\njournal of {unit}:\n{journal(host, unit)}") from None


def main_pid(host, unit: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}") or 0)


def lab_secret(name: str) -> str:
    """A password the lab's password lookup generated (inventories/local/group_vars/all/main.yml)."""
    return (LAB_DIR / "secrets" / name).read_text().split()[0]


def redis_cli(host, *args: str, user: str | None = None, password: str | None = None, port: int = 6379):
    """redis-cli on the host over loopback; the password travels in REDISCLI_AUTH, not argv."""
    cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning"]
    if user:
        cmd += ["--user", user]
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    return host.run(env + shlex.join([*cmd, *args]))


def run_playbook(
    playbook: Path, inventory: Path, *extra: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    """ansible-playbook from the controller with the repo's ansible.cfg (FQCNs resolve to the checkout)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_INJECT_FACT_VARS="false")
    env.setdefault("MCPOPS_LAB_DIR", str(LAB_DIR))
    exe = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(exe), "-i", str(inventory), str(playbook), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def site_inventory(host) -> Path:
    """An inventory like molecule's: this container in every group, the lab's group_vars."""
    d = Path(tempfile.mkdtemp(prefix="mcpops-inv-"))
    name = container_name(host)
    groups = {g: {"hosts": {name: None}} for g in GROUPS}
    inv = {"all": {"children": groups, "vars": {"ansible_connection": "community.docker.docker"}}}
    (d / "hosts.yml").write_text(json.dumps(inv))
    (d / "group_vars").symlink_to(REPO / "inventories" / "local" / "group_vars")
    return d / "hosts.yml"
