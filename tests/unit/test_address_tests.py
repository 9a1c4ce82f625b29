"""The Jinja tests ip_address, ip_network and dns_name."""

from __future__ import annotations

import importlib.util
import ipaddress
import random
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "plugins/test" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ip_address_mod = load("ip_address")
ip_network_mod = load("ip_network")
dns_name_mod = load("dns_name")
ip_address = ip_address_mod.ip_address
ip_network = ip_network_mod.ip_network
dns_name = dns_name_mod.dns_name

NOT_STRINGS = [
    None,
    0,
    167772161,
    3.5,
    True,
    b"10.0.0.1",
    ["10.0.0.1"],
    {"a": 1},
    ipaddress.ip_address("10.0.0.1"),
]

ADDRESSES = [
    "10.0.0.5",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "::1",
    "2001:db8::1",
    "FD00::5",
    "::ffff:10.0.0.5",
]
NETWORKS = ["10.0.0.0/8", "10.0.0.5/24", "0.0.0.0/0", "192.0.2.1/32", "2001:db8::/32", "fd00::5/64", "::/0"]
NEITHER = [
    "",
    " ",
    "10.0.0",
    "10.0.0.256",
    "010.0.0.1",
    " 10.0.0.1",
    "10.0.0.1\n",
    "1.2.3.4.5",
    "2001:db8:::1",
    "fe80::1%eth0",
    "fe80::%eth0/64",
    "gggg::1",
    "example.com",
    "10.0.0.0/33",
    "2001:db8::/129",
    "10.0.0.0/",
    "/24",
    "10.0.0.0/-1",
    "10.0.0.0/+8",
    "10.0.0.0/255.255.255.0",
    "10.0.0.0/0.0.0.255",
    "10.0.0.0/٢٤",  # Arabic-Indic digits 24
    "10.0.0.0/8/8",
]
NAMES = [
    "a",
    "localhost",
    "mcp.example.com",
    "MCP-1.Example.COM",
    "xn--bcher-kva.example",
    "_acme-challenge.example.com",
    "_",
    "123.example",
    "1.2.3.999",  # not an address, so it is a name as far as the syntax goes
    "a" * 63 + ".com",
    ".".join(["a" * 63] * 3 + ["b" * 61]),  # 253 characters
    "cafe",
    "deadbeef",
]
NOT_NAMES = [
    "",
    "10.0.0.5",
    "::1",
    "2001:db8::1",
    "example.com.",
    ".example.com",
    "a..b",
    "-a.example.com",
    "a-.example.com",
    "a_.example.com",
    "*.example.com",
    "a b",
    "bücher.example",
    "host:8443",
    "a" * 64 + ".com",
    ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 characters
    "mcp.example.com\n",
    "10.0.0.0/8",
]


@pytest.mark.parametrize("value", ADDRESSES)
def test_addresses_are_addresses_and_networks_but_not_names(value):
    assert ip_address(value) is True
    assert ip_network(value) is True
    assert dns_name(value) is False


@pytest.mark.parametrize("value", NETWORKS)
def test_networks_are_networks_only(value):
    assert ip_network(value) is True
    assert ip_address(value) is False
    assert dns_name(value) is False


@pytest.mark.parametrize("value", NEITHER)
def test_malformed_values_are_neither_address_nor_network(value):
    assert ip_address(value) is False
    assert ip_network(value) is False


@pytest.mark.parametrize("value", NAMES)
def test_names(value):
    assert dns_name(value) is True
    assert ip_address(value) is False


@pytest.mark.parametrize("value", NOT_NAMES)
def test_not_names(value):
    assert dns_name(value) is False


@pytest.mark.parametrize("value", NOT_STRINGS, ids=repr)
def test_non_strings_are_false_and_never_raise(value):
    assert ip_address(value) is False
    assert ip_network(value) is False
    assert dns_name(value) is False


def test_a_str_subclass_is_a_string():
    class Tagged(str):  # Ansible hands templates str subclasses
        pass

    assert ip_address(Tagged("10.0.0.1")) is True
    assert ip_network(Tagged("10.0.0.0/8")) is True
    assert dns_name(Tagged("example.com")) is True


# The name check the nginx role used before it called dns_name (roles/nginx/vars/main.yml, __nginx_name_re).
NGINX_NAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$"
)


def test_dns_name_is_the_nginx_name_language_minus_ip_addresses():
    rng = random.Random(20240607)
    alphabet = "ab9Z_-."
    samples = NAMES + NOT_NAMES + ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3000)]
    accepted = 0
    for s in samples:
        # fullmatch: "$" alone would also let a trailing newline through
        expected = NGINX_NAME_RE.fullmatch(s) is not None and not ip_address(s)
        assert dns_name(s) is expected, s
        accepted += expected
    assert 100 < accepted < len(samples) - 100  # both sides of the boundary were exercised


@pytest.mark.parametrize(
    ("module", "name"),
    [(ip_address_mod, "ip_address"), (ip_network_mod, "ip_network"), (dns_name_mod, "dns_name")],
)
def test_each_file_registers_its_one_test(module, name):
    assert module.TestModule().tests() == {name: getattr(module, name)}
