"""playbooks/rolling_upgrade.yml on the cluster, under a constant stream of client calls.

The new release is the server's own source with its version raised (a copy in a temporary
directory, passed as mcp_server_source). While the playbook upgrades mcpops-app1 and then
mcpops-app2, steady_load.py calls tools through the lb with legacy sessions (owned by one instance,
so nginx's fail-over to the others is exercised) and keeps progress streams open. Not one call may
fail; the test prints the count.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import (
    APP_HOSTS,
    CA_CERT,
    INSTANCE_PORTS,
    PUBLIC_NAME,
    REPO,
    SteadyLoad,
    address_of,
    controller_script,
    journal,
    mint_token,
    molecule_inventory,
    run_playbook,
)

STREAM_N = 10


def _current_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def new_release(tmp_path_factory) -> tuple[Path, str]:
    """A copy of the server's source whose version is raised: what an operator's upgrade brings."""
    src = tmp_path_factory.mktemp("upgrade-source")
    old = _current_version()
    new = f"{old}.post{int(time.time())}"
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(
        REPO / "server",
        src / "server",
        ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info"),
    )
    for path in (src / "pyproject.toml", src / "server" / "mcpops_server" / "__init__.py"):
        text = path.read_text()
        assert f'"{old}"' in text, f"{path} does not hold the version {old}"
        path.write_text(text.replace(f'"{old}"', f'"{new}"', 1))
    return src, new


def _active_since(host, port: int) -> int:
    out = host.check_output(f"systemctl show -p ActiveEnterTimestampMonotonic --value mcpops-server@{port}")
    return int(out or 0)


@pytest.fixture(scope="module")
def upgraded(hosts, new_release, tmp_path_factory) -> dict:
    """Run the rolling upgrade once under load; the tests below read what happened."""
    src, version = new_release
    load = SteadyLoad(
        tmp_path_factory.mktemp("rolling-load"),
        workers=4,
        streams=2,
        rate=5,
        stream_n=STREAM_N,
        stream_interval_ms=300,
    )
    try:
        res = run_playbook("rolling_upgrade.yml", molecule_inventory(), "-e", f"mcp_server_source={src}")
    finally:
        report = load.stop()
    return {"res": res, "load": report, "version": version}


def _tail(res) -> str:
    return res.stdout[-5000:] + res.stderr[-2000:]


def test_the_rolling_upgrade_fails_no_client_call(upgraded, hosts, capsys):
    res, load = upgraded["res"], upgraded["load"]
    with capsys.disabled():
        print(
            f"\nrolling upgrade under load: {load['calls']} calls, {load['failed']} failed; "
            f"{load['streams']} progress streams, {load['streams_failed']} failed, "
            f"{load['progress']} notifications; calls per instance {load['routes']}; {load['seconds']} s"
        )
    if res.returncode != 0:
        units = [(h, f"mcpops-server@{p}") for h in APP_HOSTS for p in INSTANCE_PORTS]
        journals = "\n".join(journal(hosts[h], unit, 20) for h, unit in units)
        raise AssertionError(f"rolling_upgrade.yml failed (rc={res.returncode}):\n{_tail(res)}\n{journals}")
    failed = load["failed"] + load["streams_failed"]
    assert failed == 0, f"calls failed during the upgrade: {load['errors']}"
    assert load["calls"] >= 100, f"the load was too thin to prove anything: {load}"
    # Every stream delivered every notification: none was cut when its host left the rotation.
    assert load["streams"] >= 2 and load["progress"] == load["streams"] * STREAM_N, load
    # All four instances served calls during the play (sessions move on every 25 calls).
    assert len(load["routes"]) == len(APP_HOSTS) * len(INSTANCE_PORTS), load["routes"]


def test_the_app_hosts_were_upgraded_one_after_the_other(upgraded, hosts):
    assert upgraded["res"].returncode == 0, _tail(upgraded["res"])
    first, second = APP_HOSTS
    restarted_first = [_active_since(hosts[first], p) for p in INSTANCE_PORTS]
    restarted_second = [_active_since(hosts[second], p) for p in INSTANCE_PORTS]
    assert max(restarted_first) < min(restarted_second), (
        f"{first}'s instances came up at {restarted_first}, {second}'s at {restarted_second} (monotonic µs): "
        "the hosts were not upgraded one at a time"
    )
    out = upgraded["res"].stdout
    for host in APP_HOSTS:
        assert f"out of rotation: {host}" in out, f"{host} never left the rotation"
    assert out.index(f"out of rotation: {first}") < out.index(f"out of rotation: {second}")


def test_every_instance_now_answers_with_the_new_release(upgraded, hosts):
    assert upgraded["res"].returncode == 0, _tail(upgraded["res"])
    version = upgraded["version"]
    for name in APP_HOSTS:
        out = hosts[name].check_output("/opt/mcpops/current/venv/bin/mcpops-server --version")
        assert version in out, f"{name} runs {out}, not {version}"
    # And over MCP through the lb: serverInfo.version of the instance that answers.
    probe = controller_script(
        "mcp_probe.py",
        f"https://{address_of('mcpops-lb')}/mcp",
        "--token",
        mint_token(sub="rolling-check"),
        "--ca",
        str(CA_CERT),
        "--host-header",
        PUBLIC_NAME,
        "--list",
    )
    assert probe["ok"] and probe["server"]["version"] == version, probe


def test_every_app_host_is_back_in_rotation(upgraded, hosts):
    assert upgraded["res"].returncode == 0, _tail(upgraded["res"])
    lb = hosts["mcpops-lb"]
    conf = lb.file("/etc/nginx/nginx.conf").content_string
    assert " down;" not in conf, "an app host was left out of rotation"
    assert lb.run("cmp /etc/nginx/nginx.conf /etc/nginx/mcpops-rotation/all.conf").rc == 0
    assert lb.run("nginx -t").rc == 0


def test_a_second_run_with_nothing_to_upgrade_changes_nothing(upgraded, new_release):
    assert upgraded["res"].returncode == 0, _tail(upgraded["res"])
    src, _version = new_release
    res = run_playbook("rolling_upgrade.yml", molecule_inventory(), "-e", f"mcp_server_source={src}")
    assert res.returncode == 0, _tail(res)
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", res.stdout, re.M)
    assert recap and all(changed == "0" for _host, changed in recap), f"a re-run changed something: {recap}"
    assert "out of rotation: mcpops-app" not in res.stdout, "a host left the rotation"
