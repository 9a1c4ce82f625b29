"""Bad input about the servers is refused before anything on the host changes, naming the item, the
field, the value and what is accepted; the rolling upgrade says it does not take several servers yet."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import GROUP_VARS, SERVERS, _default, inventory, main_pid, run_site

pytestmark = pytest.mark.timeout(600)  # site runs that stop in preflight or on the controller

PORTS = [p for s in SERVERS.values() for p in s["ports"]]


def snapshot(srv) -> dict:
    """Every instance's main PID and every server's config file checksum."""
    pids = {port: main_pid(srv, port) for port in PORTS}
    sums = {name: srv.file(f"/etc/mcpops/servers/{name}/config.yaml").sha256sum for name in SERVERS}
    return {"pids": pids, "configs": sums}


def servers_with(change) -> Path:
    servers = yaml.safe_load((GROUP_VARS / "10_servers.yml").read_text())["mcp_server_servers"]
    change(servers)
    path = Path(tempfile.mkdtemp(prefix="mcpops-bad-")) / "servers.yml"
    path.write_text(yaml.safe_dump({"mcp_server_servers": servers}))
    return path


def test_an_unpinned_package_is_refused_before_any_change(srv):
    def unpin(servers):
        next(s for s in servers if s["name"] == "time")["pypi"] = "mcp-server-time"

    before = snapshot(srv)
    res = run_site("-e", f"@{servers_with(unpin)}")
    out = " ".join((res.stdout + res.stderr).split())  # messages may be wrapped
    assert res.returncode != 0, out[-3000:]
    assert (
        "mcp_server_servers[1] (time).pypi = 'mcp-server-time': accepted is one pinned requirement" in out
    ), out[-3000:]
    assert snapshot(srv) == before


def test_an_entry_point_the_package_lacks_is_refused_naming_those_it_has(srv):
    def wrong(servers):
        next(s for s in servers if s["name"] == "time")["command"] = ["uvx", "mcp-server-time"]

    before = snapshot(srv)
    res = run_site("-e", f"@{servers_with(wrong)}", "--tags", "mcp_server")
    out = " ".join((res.stdout + res.stderr).split())  # messages may be wrapped
    assert res.returncode != 0, out[-3000:]
    assert "(time).command[0] = 'uvx': accepted is one of the console scripts of" in out, out[-3000:]
    assert "mcp-server-time" in out.split("(time).command[0]", 1)[1][:300], out[-3000:]
    assert snapshot(srv) == before


def test_the_rolling_upgrade_refuses_several_servers_before_any_host_leaves_rotation(srv):
    before = snapshot(srv)
    nginx_conf = srv.file("/etc/nginx/nginx.conf").sha256sum
    playbook = Path(_default.REPO) / "playbooks" / "rolling_upgrade.yml"
    res = _default.run_playbook(playbook, inventory(), timeout=600)
    out = " ".join((res.stdout + res.stderr).split())  # messages may be wrapped
    assert res.returncode != 0, out[-3000:]
    assert "accepted is the single-server form only" in out, out[-3000:]
    assert srv.file("/etc/nginx/nginx.conf").sha256sum == nginx_conf
    assert snapshot(srv) == before
