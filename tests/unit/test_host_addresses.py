"""host_addresses: which addresses the firewall allows for an inventory host."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("host_addresses", ROOT / "plugins/filter/host_addresses.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
host_addresses = plugin.host_addresses

FACTS = {
    "ansible_facts": {
        "all_ipv4_addresses": ["10.0.0.5", "172.17.0.1"],
        "all_ipv6_addresses": ["fe80::1", "2001:db8::5", "FEBF::2", "fec0::3", "fd00::5"],
    },
    "ansible_host": "192.0.2.99",
}


def test_firewall_address_wins_as_a_string_or_a_list():
    hostvars = {
        "lb1": {**FACTS, "firewall_address": "198.51.100.7"},
        "lb2": {**FACTS, "firewall_address": ["198.51.100.8", "2001:db8:1::/48"]},
    }
    assert host_addresses(["lb1", "lb2"], hostvars) == {
        "lb1": ["198.51.100.7"],
        "lb2": ["198.51.100.8", "2001:db8:1::/48"],
    }


def test_firewall_address_null_or_empty_leaves_the_host_unresolved():
    hostvars = {"a": {**FACTS, "firewall_address": None}, "b": {**FACTS, "firewall_address": ["", None]}}
    assert host_addresses(["a", "b"], hostvars) == {"a": [], "b": []}


def test_gathered_facts_without_link_local_v6():
    # fe80::/10 spans fe80:: to febf:...; fec0:: (old site-local) is not link-local
    assert host_addresses(["app1"], {"app1": FACTS}) == {
        "app1": ["10.0.0.5", "172.17.0.1", "2001:db8::5", "fec0::3", "fd00::5"]
    }


def test_facts_without_ipv6_list():
    hostvars = {"app1": {"ansible_facts": {"all_ipv4_addresses": ["10.0.0.5"]}}}
    assert host_addresses(["app1"], hostvars) == {"app1": ["10.0.0.5"]}


def test_ansible_host_is_used_only_when_it_is_an_ip_address_or_network():
    hostvars = {
        "v4": {"ansible_host": "10.0.0.7"},
        "v6": {"ansible_host": "2001:db8::7"},
        "cidr": {"ansible_host": "10.0.1.0/24"},
        "name": {"ansible_host": "app.example.com"},
        "hexname": {"ansible_host": "cafe"},
        "bad": {"ansible_host": "10.0.0.300"},
        "none": {},
        "nofacts": {"ansible_facts": {}, "ansible_host": "10.0.0.8"},
    }
    assert host_addresses(list(hostvars), hostvars) == {
        "v4": ["10.0.0.7"],
        "v6": ["2001:db8::7"],
        "cidr": ["10.0.1.0/24"],
        "name": [],
        "hexname": [],
        "bad": [],
        "none": [],
        "nofacts": ["10.0.0.8"],
    }


def test_hosts_are_deduplicated_in_order_and_unknown_hosts_have_no_address():
    hostvars = {"b": {"ansible_host": "10.0.0.2"}, "a": {"ansible_host": "10.0.0.1"}}
    got = host_addresses(["b", "a", "b", "ghost", "a"], hostvars)
    assert list(got) == ["b", "a", "ghost"]
    assert got == {"b": ["10.0.0.2"], "a": ["10.0.0.1"], "ghost": []}


def test_nested_host_lists_are_flattened():
    hostvars = {"a": {"ansible_host": "10.0.0.1"}, "b": {"ansible_host": "10.0.0.2"}}
    assert host_addresses([["a"], ["b", "a"]], hostvars) == {"a": ["10.0.0.1"], "b": ["10.0.0.2"]}


def test_addresses_are_strings():
    hostvars = {"a": {"firewall_address": ["x", 3]}}
    got = host_addresses(["a"], hostvars)
    assert got == {"a": ["x", "3"]}
    assert all(type(v) is str for v in got["a"])


def test_the_filter_is_registered_under_its_file_name():
    assert plugin.FilterModule().filters() == {"host_addresses": host_addresses}
