"""The topology filter is the one place that names and addresses MCP server instances."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("topology", ROOT / "plugins/filter/topology.py")
topology = importlib.util.module_from_spec(spec)
spec.loader.exec_module(topology)


def test_default_ports_match_the_mcp_server_role():
    defaults_file = ROOT / "roles/mcp_server/defaults/main.yml"
    if not defaults_file.exists():
        pytest.skip("roles/mcp_server does not exist yet")
    defaults = yaml.safe_load(defaults_file.read_text())
    assert defaults["mcp_server_instances"] == topology.DEFAULT_INSTANCES


def test_one_host_reaches_its_own_instances_over_loopback():
    hostvars = {"mcp-1.example.com": {"mcp_server_instances": [8000, 8001], "ansible_host": "10.0.0.5"}}
    got = topology.mcp_instances(["mcp-1.example.com"], hostvars, "mcp-1.example.com")
    assert got == [
        {"host": "mcp-1.example.com", "address": "127.0.0.1", "port": 8000, "route": "mcp1examplecom-8000"},
        {"host": "mcp-1.example.com", "address": "127.0.0.1", "port": 8001, "route": "mcp1examplecom-8001"},
    ]


def test_other_hosts_are_reached_by_listen_address_then_ansible_host():
    hostvars = {
        "app1": {"mcp_server_listen_address": "10.0.0.11"},
        "app2": {"mcp_server_listen_address": "0.0.0.0", "ansible_host": "10.0.0.12"},
        "app3": {},
    }
    got = topology.mcp_instances(["app1", "app2", "app3"], hostvars, "lb")
    assert [(i["address"], i["port"], i["route"]) for i in got] == [
        ("10.0.0.11", 8000, "app1-8000"),
        ("10.0.0.12", 8000, "app2-8000"),
        ("app3", 8000, "app3-8000"),
    ]


def test_route_ids_are_distinct_and_safe_for_nginx_maps():
    hosts = [f"app-{i}.dc1.example.com" for i in range(20)]
    routes = [i["route"] for i in topology.mcp_instances(hosts, {h: {} for h in hosts})]
    assert len(set(routes)) == len(routes)
    assert all(r.replace("-", "").isalnum() and len(r) <= 40 for r in routes)
