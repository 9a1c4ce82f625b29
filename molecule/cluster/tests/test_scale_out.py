"""Checklist item 18 on VMs: add a third app host to the running cluster (docs/checklist.md).

The procedure as documented: a fresh Debian host is put into `mcp_servers` in the inventory and
site.yml runs on every host, while clients keep calling through the lb. Then the new host serves
sessions through the lb, Prometheus scrapes it, Redis' firewall admits it, its logs reach the
collector and verify.yml passes on the grown inventory. This suite runs last (file order): the
third host stays in the scenario's configuration until `molecule destroy`, and its container is
removed when the module ends.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
import testinfra
import yaml
from conftest import (
    CA_CERT,
    LAB_DIR,
    NETWORK,
    PUBLIC_NAME,
    REPO,
    SteadyLoad,
    address_of,
    assert_active,
    controller_script,
    mint_token,
    molecule_inventory,
    run_playbook,
    wait_until,
)

NEW = "mcpops-app3"
PORTS = (8000, 8001)
# The first test waits for a fresh host's whole converge (the fixture `grown`).
pytestmark = pytest.mark.timeout(1500)


def _remove_container() -> None:
    subprocess.run(["docker", "rm", "-f", NEW], capture_output=True, check=False)


@pytest.fixture(scope="module")
def grown_inventory() -> Path:
    """A fresh container on the scenario's network, and molecule's inventory with it in mcp_servers."""
    _remove_container()
    image = f"mcpops/{os.environ.get('MOLECULE_DISTRO') or 'debian12'}:latest"
    subprocess.run(
        [str(REPO / "scripts" / "lab-host"), NEW, image, "--network", NETWORK], check=True, timeout=120
    )
    source = molecule_inventory()
    inventory = yaml.safe_load(source.read_text())
    inventory["all"]["hosts"][NEW] = {"ansible_connection": "community.docker.docker"}
    inventory["mcp_servers"]["hosts"][NEW] = {}
    folder = Path(tempfile.mkdtemp(prefix="mcpops-grown-"))
    (folder / "ansible_inventory.yml").write_text(yaml.safe_dump(inventory))
    (folder / "group_vars").symlink_to((source.parent / "group_vars").resolve())
    yield folder / "ansible_inventory.yml"
    _remove_container()


@pytest.fixture(scope="module")
def grown(grown_inventory, tmp_path_factory) -> dict:
    load = SteadyLoad(tmp_path_factory.mktemp("grow-load"), workers=4, streams=1, client="current", rate=5)
    try:
        load.wait_for_calls(10)
        res = run_playbook("site.yml", grown_inventory, timeout=1200)
        load.wait_for_calls(10)
    finally:
        out = load.stop()
    return {"res": res, "load": out}


def _tail(res) -> str:
    return res.stdout[-5000:] + res.stderr[-2000:]


def test_site_yml_adds_the_host_without_failing_a_call(grown, capsys):
    res, load = grown["res"], grown["load"]
    with capsys.disabled():
        print(
            f"\nadding {NEW}: {load['calls']} calls, {load['failed']} failed; "
            f"{load['streams']} streams, {load['streams_failed']} failed"
        )
    assert res.returncode == 0, _tail(res)
    assert load["failed"] == 0 and load["streams_failed"] == 0, load["errors"]


def test_the_new_host_serves_sessions_through_the_lb(grown):
    assert grown["res"].returncode == 0, _tail(grown["res"])
    new = testinfra.get_host(f"docker://{NEW}")
    for port in PORTS:
        assert_active(new, f"mcpops-server@{port}")
    tokens = Path(tempfile.mkdtemp(prefix="mcpops-grown-")) / "tokens"
    tokens.write_text("\n".join(mint_token(sub=f"grown-{i}") for i in range(8)) + "\n")
    out = controller_script(
        "sessions_load.py",
        f"https://{address_of('mcpops-lb')}/mcp",
        "--token-file",
        str(tokens),
        "--ca",
        str(CA_CERT),
        "--host-header",
        PUBLIC_NAME,
        "--sessions",
        "36",
        "--calls",
        "2",
    )
    assert out["failed"] == 0, out
    on_new = [route for route in out["routes"] if route.startswith("mcpopsapp3-")]
    assert on_new, f"no session on {NEW}: {out['routes']}"


def test_prometheus_scrapes_the_new_host(grown, hosts):
    assert grown["res"].returncode == 0, _tail(grown["res"])
    ops = hosts["mcpops-ops"]
    script = (
        "import json, urllib.request;"
        "u = 'http://127.0.0.1:9090/api/v1/targets?state=active';"
        "d = json.load(urllib.request.urlopen(u, timeout=5))['data']['activeTargets'];"
        "print(json.dumps([[t['labels'].get('instance', ''), t['health']] for t in d]))"
    )

    def new_targets_up() -> list:
        targets = json.loads(ops.check_output(shlex.join(["python3", "-c", script])))
        mine = [(i, h) for i, h in targets if i.startswith(NEW)]
        return mine if len(mine) >= len(PORTS) + 1 and all(h == "up" for _i, h in mine) else []

    up = wait_until(new_targets_up, 90, 2, f"Prometheus targets of {NEW} up (instances and node exporter)")
    assert {f"{NEW}:{p}" for p in PORTS} <= {i for i, _h in up}


def test_redis_admits_the_new_host_and_its_logs_reach_the_collector(grown, hosts):
    assert grown["res"].returncode == 0, _tail(grown["res"])
    assert address_of(NEW) in hosts["mcpops-data"].check_output("nft list set inet mcpops redis_sources_v4")
    wait_until(
        lambda: hosts["mcpops-ops"].file(f"/var/log/mcpops/{NEW}/mcpops-server.json").exists,
        60,
        1,
        f"{NEW}'s server log on the collector",
    )


def test_verify_yml_passes_on_the_grown_inventory(grown, grown_inventory):
    assert grown["res"].returncode == 0, _tail(grown["res"])
    backups = LAB_DIR / "backups" / "redis"  # test_checklist.py backed up there (item 14 wants one)
    extra = ("--check", "-e", f"verify_backup_dir={backups}")
    res = run_playbook("verify.yml", grown_inventory, *extra, timeout=600)
    assert res.returncode == 0, _tail(res)
