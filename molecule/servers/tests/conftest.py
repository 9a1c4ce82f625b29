"""Helpers of the servers scenario's testinfra suite (issue 12: several servers behind one endpoint).

One Debian 12 container (mcpops-srv, molecule.yml) on the docker network mcpops-servers runs three
servers (group_vars/all/10_servers.yml), read here through the collection's own filter
`mcp_servers`, so the tests and the roles agree on every name, port, path and user. The clients are
the SDK's, on the controller, through nginx over TLS: URLs on the public name
(https://mcp.mcpops.test/<server>/mcp), connected to the container's address with TLS verified for
the public name against the lab CA (mcp_probe.resolve_hook). Helpers of the default scenario
(wait_until, journal, mint_token, run_playbook; mcp_probe.py, steady_load.py) are reused by import
path. The rules: poll with a deadline, never sleep to synchronise, print the unit's journal when a
service check fails, never print a secret.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import testinfra
import yaml
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[3]
SCENARIO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = REPO / "molecule" / "default" / "tests"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_default = _load("mcpops_default_conftest", DEFAULT_TESTS / "conftest.py")
mcp_probe = _load("mcpops_mcp_probe", DEFAULT_TESTS / "mcp_probe.py")
LoadProcess = _load("mcpops_load_process", DEFAULT_TESTS / "load_process.py").LoadProcess
_filter = _load("mcpops_filter_mcp_servers", REPO / "plugins" / "filter" / "mcp_servers.py")
wait_until = _default.wait_until
journal = _default.journal
mint_token = _default.mint_token
LAB_DIR = _default.LAB_DIR
PUBLIC_NAME = _default.PUBLIC_NAME
CA_CERT = LAB_DIR / "ca" / "ca.crt"
HOST = os.environ.get("MCPOPS_SERVERS_HOST", "mcpops-srv")
NETWORK = os.environ.get("MCPOPS_SERVERS_NETWORK", "mcpops-servers")
GROUP_VARS = SCENARIO / "group_vars" / "all"
SERVER_PYTHON = _default.SERVER_PYTHON


def _servers() -> dict[str, dict]:
    """The scenario's servers as the filter completes them (name -> path, user, ports, ...)."""
    lab = yaml.safe_load((GROUP_VARS / "00_lab.yml").read_text())
    ours = yaml.safe_load((GROUP_VARS / "10_servers.yml").read_text())
    hostvars = {**lab, **ours}
    return {s["name"]: s for s in _filter.mcp_servers(hostvars)}


SERVERS = _servers()
DEFAULT_SERVER = next(name for name, s in SERVERS.items() if s["default"])


def url(path: str) -> str:
    return f"https://{PUBLIC_NAME}{path}"


def resource_url(name: str) -> str:
    """A server's protected resource (the `aud` its instances accept): https://<public host>/<name>/mcp."""
    return url(SERVERS[name]["path"])


def metadata_url(name: str) -> str:
    """Where the server's RFC 9728 metadata is served: /.well-known/oauth-protected-resource/<name>/mcp."""
    return url("/.well-known/oauth-protected-resource" + SERVERS[name]["path"])


def token_for(name: str, sub: str, scope: str = "mcp:tools") -> str:
    return mint_token(scope=scope, sub=sub, aud=resource_url(name))


def unit(port: int) -> str:
    return f"mcpops-server@{port}.service"


def port_of_session(session_id: str | None) -> int:
    """The instance port behind a session id (`<host letters>-<port>.<hex>`, the route id)."""
    assert session_id, "the server issued no session id"
    m = re.match(r"^[A-Za-z0-9]+-(\d+)\.", session_id)
    assert m, f"session id {session_id!r} does not start with a route id <host>-<port>"
    return int(m.group(1))


@pytest.fixture(scope="session")
def srv():
    return testinfra.get_host(f"docker://{HOST}")


@pytest.fixture(scope="session")
def address() -> str:
    """The container's IPv4 address on the scenario's network (the controller reaches nginx there)."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", HOST],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)[NETWORK]["IPAddress"]


def _http(
    address: str, token: str | None, read_timeout: float, hooks: dict | None = None
) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    event_hooks = {"request": [mcp_probe.resolve_hook(PUBLIC_NAME, address)]}
    for key, more in (hooks or {}).items():
        event_hooks[key] = event_hooks.get(key, []) + list(more)
    return httpx2.AsyncClient(
        verify=ssl.create_default_context(cafile=str(CA_CERT)),
        headers=headers,
        timeout=httpx2.Timeout(30, read=read_timeout),
        event_hooks=event_hooks,
    )


class Opened:
    """An initialized SDK session (the session-based revision, so one instance owns it)."""

    def __init__(self, client: ClientSession, session_id: str | None, init: Any):
        self.client = client
        self.session_id = session_id
        self.init = init

    @property
    def port(self) -> int:
        return port_of_session(self.session_id)


@contextlib.asynccontextmanager
async def mcp_session(address: str, path: str, token: str, read_timeout: float = 60) -> AsyncIterator[Opened]:
    """The SDK's streamable HTTP client through nginx, initialized."""
    seen: list[str] = []

    async def remember(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and not seen:
            seen.append(sid)

    async with (
        _http(address, token, read_timeout, {"response": [remember]}) as http,
        streamable_http_client(url(path), http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        init = await client.initialize()
        yield Opened(client, seen[0] if seen else None, init)


@contextlib.asynccontextmanager
async def modern_client(address: str, path: str, token: str, read_timeout: float = 60) -> AsyncIterator[Any]:
    """The SDK's current Client (the sessionless revision: no session id, every request on its own)."""
    async with (
        _http(address, token, read_timeout) as http,
        Client(streamable_http_client(url(path), http_client=http)) as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def session_on(
    address: str, path: str, token: str, port: int, tries: int = 12
) -> AsyncIterator[Opened]:
    """A session owned by the instance on `port` (nginx spreads new sessions; a few tries get there)."""
    met: list[int] = []
    for _ in range(tries):
        async with mcp_session(address, path, token) as opened:
            if opened.port == port:
                yield opened
                return
            met.append(opened.port)
    raise AssertionError(f"{tries} new sessions on {path} never reached port {port} (got {met})")


async def raw(
    address: str, method: str, path: str, token: str | None = None, body: Any = None
) -> httpx2.Response:
    """One HTTP request through nginx (TLS verified for the public name)."""
    headers = {"Accept": "application/json, text/event-stream"}
    async with _http(address, token, 30) as http:
        if body is None:
            return await http.request(method, url(path), headers=headers)
        return await http.request(method, url(path), headers=headers, json=body)


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "servers-test", "version": "1"},
    },
}


def resource_metadata(challenge: str) -> str | None:
    m = re.search(r'resource_metadata="([^"]+)"', challenge)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------ on the host


_METRICS_PY = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


def instance_metrics(srv, port: int) -> str:
    """/metrics of one instance, read on the host over loopback (plain: one host, no instance TLS)."""
    res = srv.run(shlex.join(["python3", "-c", _METRICS_PY, f"http://127.0.0.1:{port}/metrics"]))
    assert res.rc == 0, f"/metrics of port {port}: {res.stderr}\n{journal(srv, unit(port))}"
    return res.stdout


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of `name` (whatever its labels)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_labels(text: str, name: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            out.append(dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0])))
    return out


def main_pid(srv, port: int) -> int:
    pid = int(srv.check_output(f"systemctl show -p MainPID --value {unit(port)}") or 0)
    assert pid, f"{unit(port)} has no main process\n{journal(srv, unit(port))}"
    return pid


def children(srv, pid: int) -> dict[int, str]:
    """The direct children of a process: pid -> command line."""
    out = srv.run(f"ps -o pid=,args= --ppid {pid}").stdout
    found = {}
    for line in out.splitlines():
        child, _, args = line.strip().partition(" ")
        if child.isdigit():
            found[int(child)] = args.strip()
    return found


def process_user(srv, pid: int) -> str:
    return srv.check_output(f"ps -o user= -p {pid}").strip()


def cgroup_dir(srv, pid: int) -> str:
    """The unified (v2) cgroup directory of a process, as the host's cgroup namespace (cgroupns host)
    names it: under /sys/fs/cgroup on a pure v2 machine, /sys/fs/cgroup/unified on a hybrid one (the
    lab's machines are hybrid; systemd's IPAddressAllow/Deny programs sit on the unified hierarchy)."""
    line = next(x for x in srv.check_output(f"cat /proc/{pid}/cgroup").splitlines() if x.startswith("0::"))
    pure = srv.file("/sys/fs/cgroup/cgroup.controllers").exists
    path = ("/sys/fs/cgroup" if pure else "/sys/fs/cgroup/unified") + line[3:]
    assert srv.file(path + "/cgroup.procs").exists, f"no cgroup.procs in {path}"
    return path


def lab_secret(name: str) -> str:
    return (LAB_DIR / "secrets" / name).read_text().split()[0]


# ------------------------------------------------------------------------------------ playbooks


def inventory() -> Path:
    """molecule's inventory (verify sets MOLECULE_INVENTORY_FILE; its group_vars are this scenario's)."""
    raw_path = os.environ.get("MOLECULE_INVENTORY_FILE") or os.environ.get("MCPOPS_TEST_INVENTORY")
    assert raw_path and Path(raw_path).exists(), "run by molecule verify (MOLECULE_INVENTORY_FILE)"
    return Path(raw_path)


def run_site(*extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The collection's site playbook (mcpops.deploy.site) on the scenario's host, from the controller."""
    return _default.run_playbook(Path("mcpops.deploy.site"), inventory(), *extra, timeout=timeout)
