"""redis_url: the Redis URL an app host derives from the Redis host's inventory vars."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("redis_url", ROOT / "plugins/filter/redis_url.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
redis_url = plugin.redis_url


def url(redis_vars: dict, from_host: str, **kw) -> str:
    hostvars = {"db1": redis_vars, "app1": {"ansible_host": "10.0.0.20"}}
    return redis_url("db1", hostvars, from_host, **kw)


def test_defaults_on_the_redis_host_and_from_another_host():
    assert url({}, "db1") == "redis://127.0.0.1:6379/0"
    # the default bind is loopback only: another host can only try the Redis host's name
    assert url({}, "app1") == "redis://db1:6379/0"
    assert url({"ansible_host": "10.0.0.7"}, "app1") == "redis://10.0.0.7:6379/0"


def test_port_zero_means_the_unix_socket():
    assert url({"redis_port": 0}, "db1") == "unix:///run/redis/redis-server.sock?db=0"
    assert (
        url({"redis_port": "0", "redis_unixsocket_path": "/run/r.sock"}, "app1") == "unix:///run/r.sock?db=0"
    )


def test_same_host_uses_the_first_bind_address_and_loopback_for_wildcards():
    assert url({"redis_bind_addresses": ["10.0.0.7", "127.0.0.1"]}, "db1") == "redis://10.0.0.7:6379/0"
    assert url({"redis_bind_addresses": ["0.0.0.0"], "redis_port": 6380}, "db1") == "redis://127.0.0.1:6380/0"
    assert url({"redis_bind_addresses": ["::", "10.0.0.7"]}, "db1") == "redis://127.0.0.1:6379/0"
    assert url({"redis_bind_addresses": ["-::1", "127.0.0.1"]}, "db1") == "redis://[::1]:6379/0"


def test_other_host_uses_the_first_outside_bind_address():
    binds = ["127.0.0.1", "-::1", "0.0.0.0", "::", "127.0.1.1", "-10.0.0.7", "10.0.0.8"]
    assert (
        url({"redis_bind_addresses": binds, "ansible_host": "192.0.2.1"}, "app1") == "redis://10.0.0.7:6379/0"
    )


def test_other_host_falls_back_to_ansible_host_then_the_inventory_name():
    binds = ["127.0.0.1", "-::1", "0.0.0.0", "::", "*", "-::*", "localhost"]
    assert (
        url({"redis_bind_addresses": binds, "ansible_host": "10.0.0.9"}, "app1") == "redis://10.0.0.9:6379/0"
    )
    assert url({"redis_bind_addresses": binds}, "app1") == "redis://db1:6379/0"
    assert url({"redis_bind_addresses": [], "ansible_host": "db1.example.com"}, "app1") == (
        "redis://db1.example.com:6379/0"
    )


def test_ipv6_addresses_are_bracketed():
    assert url({"redis_bind_addresses": ["::1", "fd00::5"]}, "app1") == "redis://[fd00::5]:6379/0"
    assert url({"ansible_host": "2001:db8::9"}, "app1") == "redis://[2001:db8::9]:6379/0"
    assert url({"redis_bind_addresses": ["fd00::5"]}, "db1") == "redis://[fd00::5]:6379/0"


def test_a_single_string_and_a_null_bind_setting():
    assert url({"redis_bind_addresses": "10.0.0.7"}, "app1") == "redis://10.0.0.7:6379/0"
    assert url({"redis_bind_addresses": None}, "db1") == "redis://127.0.0.1:6379/0"


def test_the_scheme_keyword():
    assert url({"redis_bind_addresses": ["10.0.0.7"]}, "app1", scheme="rediss") == "rediss://10.0.0.7:6379/0"
    assert url({"redis_port": 0}, "app1", scheme="rediss") == "unix:///run/redis/redis-server.sock?db=0"
    with pytest.raises(AnsibleFilterError, match="scheme"):
        url({}, "app1", scheme="http")


def test_unknown_host_and_bad_port_are_clear_errors():
    with pytest.raises(AnsibleFilterError, match="not an inventory host"):
        redis_url("nope", {"app1": {}}, "app1")
    for bad in ("six", None, -1, 65536):
        with pytest.raises(AnsibleFilterError, match="redis_port"):
            url({"redis_port": bad}, "app1")


def test_the_filter_is_registered_under_its_file_name():
    assert plugin.FilterModule().filters() == {"redis_url": redis_url}


def topology(redis_vars: dict, app_hosts: list[str]) -> dict:
    groups = {"redis": ["db1"], "mcp_servers": app_hosts}
    return {
        "db1": {**redis_vars, "groups": groups},
        "app1": {"ansible_host": "10.0.0.20", "groups": groups},
    }


def test_rediss_when_an_app_host_is_another_host():
    hv = topology({"redis_bind_addresses": ["127.0.0.1", "10.0.0.7"]}, ["app1"])
    assert redis_url("db1", hv, "app1") == "rediss://10.0.0.7:6379/0"
    # the Redis host's own clients also speak TLS: the plain port is off
    assert redis_url("db1", hv, "db1") == "rediss://127.0.0.1:6379/0"


def test_plain_on_one_host_and_when_tls_is_disabled():
    assert redis_url("db1", topology({}, ["db1"]), "db1") == "redis://127.0.0.1:6379/0"
    hv = topology({"redis_tls": "disabled", "ansible_host": "10.0.0.7"}, ["app1"])
    assert redis_url("db1", hv, "app1") == "redis://10.0.0.7:6379/0"
    assert (
        redis_url("db1", topology({"redis_tls": "required"}, ["db1"]), "db1") == "rediss://127.0.0.1:6379/0"
    )
    # an explicit scheme wins over the topology
    assert redis_url("db1", topology({}, ["app1"]), "db1", scheme="redis") == "redis://127.0.0.1:6379/0"


def test_a_bad_tls_mode_is_named():
    expected = "redis_tls of db1 = 'yes': accepted are auto, required, disabled"
    with pytest.raises(AnsibleFilterError, match=expected):
        redis_url("db1", topology({"redis_tls": "yes"}, ["app1"]), "app1")
