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
_servers_spec = importlib.util.spec_from_file_location("mcp_servers", ROOT / "plugins/filter/mcp_servers.py")
servers_plugin = importlib.util.module_from_spec(_servers_spec)
_servers_spec.loader.exec_module(servers_plugin)


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
        {
            "host": "mcp-1.example.com",
            "address": "127.0.0.1",
            "port": port,
            "route": f"mcp1examplecom-{port}",
            "tls": False,
            "tls_name": "mcpops-server.internal",
            "server": "mcp",
            "default": True,
            "affinity": "session",
        }
        for port in (8000, 8001)
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


# tls and tls_name: TLS when the hosts of mcp_servers, mcp_lb and monitoring together are more than one.
ONE_HOST_GROUPS = {
    "all": ["h1"],
    "mcp_servers": ["h1"],
    "mcp_lb": ["h1"],
    "monitoring": ["h1"],
    "redis": ["h1"],
}
CLUSTER_GROUPS = {
    "mcp_servers": ["app1", "app2"],
    "mcp_lb": ["lb"],
    "monitoring": ["ops"],
    "redis": ["data"],
}


def test_one_host_deployment_stays_plain():
    got = mcp_instances(["h1"], {"h1": {"mcp_server_ports": [8000, 8001]}}, "h1", groups=ONE_HOST_GROUPS)
    assert [(i["tls"], i["tls_name"]) for i in got] == [(False, "mcpops-server.internal")] * 2


def test_instances_serve_tls_when_clients_come_from_other_hosts():
    hostvars = {"app1": {}, "app2": {}}
    got = mcp_instances(["app1", "app2"], hostvars, "lb", groups=CLUSTER_GROUPS)
    assert [i["tls"] for i in got] == [True, True]
    assert {i["tls_name"] for i in got} == {"mcpops-server.internal"}


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # one app host and the load balancer on another host
        ({"mcp_servers": ["app1"], "mcp_lb": ["lb"]}, True),
        # app and lb on one host, Prometheus elsewhere: it scrapes the instances across hosts
        ({"mcp_servers": ["app1"], "mcp_lb": ["app1"], "monitoring": ["ops"]}, True),
        # Redis on its own host is no client of the instances
        ({"mcp_servers": ["app1"], "mcp_lb": ["app1"], "monitoring": ["app1"], "redis": ["data"]}, False),
        # no group at all (a bare list of hosts)
        ({}, False),
        ({"mcp_servers": [], "mcp_lb": None}, False),
    ],
)
def test_tls_follows_the_hosts_of_the_three_groups(groups, expected):
    got = mcp_instances(["app1"], {"app1": {}}, "lb", groups=groups)
    assert got[0]["tls"] is expected


def test_a_hosts_explicit_switch_wins():
    hostvars = {
        "app1": {"mcp_server_tls_enabled": False},
        "app2": {"mcp_server_tls_enabled": "true", "mcp_server_tls_name": "mcp-backend.example.net"},
    }
    got = mcp_instances(["app1", "app2"], hostvars, "app1", groups=ONE_HOST_GROUPS)
    assert [(i["host"], i["tls"], i["tls_name"]) for i in got] == [
        ("app1", False, "mcpops-server.internal"),
        ("app2", True, "mcp-backend.example.net"),
    ]
    got = mcp_instances(["app1"], {"app1": {"mcp_server_tls_enabled": False}}, "lb", groups=CLUSTER_GROUPS)
    assert got[0]["tls"] is False


def test_a_host_with_its_own_certificate_files_serves_tls():
    # The mcp_server role serves mcp_server_tls_cert_file whenever it is set, so nginx and Prometheus
    # must speak TLS to it even on a one-host deployment (found by the alternative scenario).
    files = {"mcp_server_tls_cert_file": "/srv/tls.crt", "mcp_server_tls_key_file": "/srv/tls.key"}
    got = mcp_instances(["app1"], {"app1": files}, "app1", groups=ONE_HOST_GROUPS)
    assert got[0]["tls"] is True
    got = mcp_instances(
        ["app1"], {"app1": dict(files, mcp_server_tls_enabled=False)}, "lb", groups=CLUSTER_GROUPS
    )
    assert got[0]["tls"] is True
    got = mcp_instances(["app1"], {"app1": {"mcp_server_tls_cert_file": ""}}, "app1", groups=ONE_HOST_GROUPS)
    assert got[0]["tls"] is False


def test_groups_are_read_from_the_hostvars_of_from_host_then_of_the_first_host():
    # Ansible's hostvars carry the groups magic variable for every host.
    hostvars = {"lb": {"groups": CLUSTER_GROUPS}, "app1": {}, "app2": {}}
    assert [i["tls"] for i in mcp_instances(["app1", "app2"], hostvars, "lb")] == [True, True]
    hostvars = {"app1": {"groups": CLUSTER_GROUPS}, "app2": {}}
    assert [i["tls"] for i in mcp_instances(["app1", "app2"], hostvars)] == [True, True]
    hostvars = {"app1": {"groups": ONE_HOST_GROUPS}}
    assert mcp_instances(["app1"], hostvars, "not-in-hostvars")[0]["tls"] is False
    # an explicit groups argument wins over the hostvars' copy
    assert mcp_instances(["app1"], hostvars, "app1", groups=CLUSTER_GROUPS)[0]["tls"] is True


def test_no_hosts_no_instances():
    assert mcp_instances([], {}, "lb") == []


def test_the_filter_is_registered_under_its_file_name():
    assert plugin.FilterModule().filters() == {"mcp_instances": mcp_instances}


def test_legacy_server_name_matches_the_mcp_servers_filter():
    assert plugin.LEGACY_SERVER == servers_plugin.LEGACY_NAME == "mcp"


SERVERS = [
    {"name": "notes", "kind": "python", "ports": [8000, 8001], "default": True},
    {"name": "time", "kind": "stdio", "pypi": "mcp-server-time==2025.9.25", "ports": ["8100"]},
]


def test_a_server_list_gives_every_servers_ports_in_list_order_with_its_name():
    hostvars = {"app1": {"mcp_server_servers": SERVERS, "mcp_server_ports": [9000]}}
    got = mcp_instances(["app1"], hostvars, "lb")
    assert [(i["server"], i["default"], i["port"], i["route"]) for i in got] == [
        ("notes", True, 8000, "app1-8000"),
        ("notes", True, 8001, "app1-8001"),
        ("time", False, 8100, "app1-8100"),
    ]
    # ports are ints (an inventory may template them into strings); mcp_server_ports is not read
    assert all(isinstance(i["port"], int) for i in got)


def test_a_server_list_wins_over_the_deprecated_instances_and_matches_mcp_servers():
    hv = {"mcp_server_servers": SERVERS, "mcp_server_instances": [9000]}
    got = mcp_instances(["app1"], {"app1": hv}, "lb")
    expected = [(s["name"], s["default"], p) for s in servers_plugin.mcp_servers(hv) for p in s["ports"]]
    assert [(i["server"], i["default"], i["port"]) for i in got] == expected


@pytest.mark.parametrize("servers", [None, [], ""])
def test_without_a_server_list_the_legacy_rule_holds(servers):
    hv = {"mcp_server_instances": [8100], "mcp_server_ports": [8000]}
    if servers is not None:
        hv["mcp_server_servers"] = servers
    got = mcp_instances(["app1"], {"app1": hv}, "lb")
    assert [(i["server"], i["default"], i["port"]) for i in got] == [("mcp", True, 8100)]


def test_hosts_with_and_without_a_server_list_mix_in_host_order():
    hostvars = {"app1": {"mcp_server_servers": SERVERS}, "app2": {}}
    got = mcp_instances(["app2", "app1"], hostvars, "lb")
    assert [(i["host"], i["server"], i["port"]) for i in got] == [
        ("app2", "mcp", 8000),
        ("app1", "notes", 8000),
        ("app1", "notes", 8001),
        ("app1", "time", 8100),
    ]
