"""mcp_instances is the one place that names and addresses MCP server instances."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mcp_instances", ROOT / "plugins/filter/mcp_instances.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
mcp_instances = plugin.mcp_instances


def test_default_ports_match_the_mcp_server_role():
    defaults_file = ROOT / "roles/mcp_server/defaults/main.yml"
    if not defaults_file.exists():
        pytest.skip("roles/mcp_server does not exist")
    defaults = yaml.safe_load(defaults_file.read_text())
    assert defaults["mcp_server_ports"] == plugin.DEFAULT_PORTS
    assert "mcp_server_instances" not in defaults, "the deprecated name must stay unset by default"


def test_one_host_reaches_its_own_instances_over_loopback():
    hostvars = {"mcp-1.example.com": {"mcp_server_ports": [8000, 8001], "ansible_host": "10.0.0.5"}}
    got = mcp_instances(["mcp-1.example.com"], hostvars, "mcp-1.example.com")
    assert got == [
        {"host": "mcp-1.example.com", "address": "127.0.0.1", "port": 8000, "route": "mcp1examplecom-8000"},
        {"host": "mcp-1.example.com", "address": "127.0.0.1", "port": 8001, "route": "mcp1examplecom-8001"},
    ]


def test_own_instances_use_their_specific_listen_address():
    hostvars = {"app1": {"mcp_server_listen_address": "10.0.0.11"}}
    got = mcp_instances(["app1"], hostvars, "app1")
    assert [i["address"] for i in got] == ["10.0.0.11"]


def test_other_hosts_are_reached_by_listen_address_then_ansible_host():
    hostvars = {
        "app1": {"mcp_server_listen_address": "10.0.0.11"},
        "app2": {"mcp_server_listen_address": "0.0.0.0", "ansible_host": "10.0.0.12"},
        "app3": {},
        "app4": {"mcp_server_listen_address": "127.0.0.1", "ansible_host": "10.0.0.14"},
    }
    got = mcp_instances(["app1", "app2", "app3", "app4"], hostvars, "lb")
    assert [(i["address"], i["port"], i["route"]) for i in got] == [
        ("10.0.0.11", 8000, "app1-8000"),
        ("10.0.0.12", 8000, "app2-8000"),
        ("app3", 8000, "app3-8000"),
        ("10.0.0.14", 8000, "app4-8000"),
    ]


def test_route_ids_are_distinct_and_safe_for_nginx_maps():
    hosts = [f"app-{i}.dc1.example.com" for i in range(20)]
    routes = [i["route"] for i in mcp_instances(hosts, {h: {} for h in hosts})]
    assert len(set(routes)) == len(routes)
    assert all(r.replace("-", "").isalnum() and len(r) <= 40 for r in routes)


def test_the_deprecated_name_wins_while_set_as_in_the_role():
    # roles/mcp_server/vars/main.yml: mcp_server_instances, when defined, is used (with a warning)
    hostvars = {"app1": {"mcp_server_ports": [9000, 9001], "mcp_server_instances": [8000]}}
    assert [i["port"] for i in mcp_instances(["app1"], hostvars, "lb")] == [8000]
    role_vars = (ROOT / "roles/mcp_server/vars/main.yml").read_text()
    assert "if mcp_server_instances is defined else mcp_server_ports" in role_vars


def test_the_deprecated_name_alone_still_works():
    hostvars = {"app1": {"mcp_server_instances": [8100, "8101"]}}
    got = mcp_instances(["app1"], hostvars, "lb")
    assert [(i["port"], i["route"]) for i in got] == [(8100, "app1-8100"), (8101, "app1-8101")]


def test_a_host_with_neither_name_gets_the_default_ports():
    got = mcp_instances(["app1", "app2"], {"app1": {}, "app2": {"mcp_server_ports": [8005]}}, "lb")
    assert [(i["host"], i["port"]) for i in got] == [("app1", 8000), ("app2", 8005)]
    assert plugin.DEFAULT_PORTS == [8000]


def test_the_filter_is_registered_under_its_file_name():
    assert plugin.FilterModule().filters() == {"mcp_instances": mcp_instances}
