"""mcp_servers: the one list of MCP servers an app host runs (issue 12), validated before anything changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mcp_servers", ROOT / "plugins/filter/mcp_servers.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
mcp_servers = plugin.mcp_servers
ServersError = plugin.ServersError

REFERENCE = {"name": "notes", "kind": "python", "ports": [8000, 8001], "default": True}
PYPI = {"name": "time", "kind": "stdio", "pypi": "mcp-server-time==2025.9.25", "ports": [8100]}
NPM = {
    "name": "everything",
    "kind": "stdio",
    "npm": "@modelcontextprotocol/server-everything@2026.8.31",
    "ports": [8200],
}


def hv(*servers, **extra) -> dict:
    return {"mcp_server_servers": list(servers), "mcp_server_auth_required_scopes": ["mcp:tools"], **extra}


def test_without_a_list_the_host_runs_the_one_server_it_ran_before():
    got = mcp_servers({"mcp_server_ports": [8000, 8001], "mcp_server_app": "pkg.mod:mcp"})
    assert [(s["name"], s["kind"], s["ports"], s["default"], s["app"], s["path"]) for s in got] == [
        ("mcp", "python", [8000, 8001], True, "pkg.mod:mcp", "/mcp/mcp")
    ]
    assert mcp_servers({})[0]["ports"] == [8000]


def test_reference_pypi_and_npm_servers_side_by_side():
    got = mcp_servers(hv(REFERENCE, PYPI, NPM))
    assert [s["name"] for s in got] == ["notes", "time", "everything"]
    notes, time_, everything = got
    assert notes["default"] and notes["app"] == "" and notes["isolation"] == ""
    assert time_["package"] == {"name": "mcp-server-time", "version": "2025.9.25"}
    assert everything["package"] == {
        "name": "@modelcontextprotocol/server-everything",
        "version": "2026.8.31",
    }
    assert time_["isolation"] == everything["isolation"] == "per_principal"
    assert [s["user"] for s in got] == ["mcp-notes", "mcp-time", "mcp-everything"]
    assert [s["path"] for s in got] == ["/notes/mcp", "/time/mcp", "/everything/mcp"]
    assert all(s["scopes"] == ["mcp:tools"] for s in got)


def test_env_secrets_egress_and_command_are_kept():
    server = dict(
        PYPI,
        command=["mcp-server-time", "--local-timezone", "UTC"],
        env={"TZ": "UTC"},
        secrets={"API_KEY": "s3cret"},
        egress=["192.0.2.7", "2001:db8::/32"],
        isolation="shared",
    )
    (got,) = mcp_servers(hv(server))
    assert got["command"] == ["mcp-server-time", "--local-timezone", "UTC"]
    assert got["env"] == {"TZ": "UTC"} and got["secrets"] == {"API_KEY": "s3cret"}
    assert got["egress"] == ["192.0.2.7/32", "2001:db8::/32"] and got["isolation"] == "shared"


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            dict(PYPI, pypi="mcp-server-time"),
            r"\.pypi = 'mcp-server-time': accepted is one pinned requirement",
        ),
        (dict(PYPI, pypi="mcp-server-time>=1"), r"\.pypi = .*name==version"),
        (dict(NPM, npm="@modelcontextprotocol/server-everything@^1.2.0"), r"\.npm = .*exact version"),
        (dict(NPM, npm="@modelcontextprotocol/server-everything"), r"\.npm = "),
        (dict(PYPI, npm="x@1.0.0"), r"accepted is exactly one of pypi, npm, executable"),
        ({"name": "x", "kind": "stdio", "ports": [8100]}, r"'none': accepted is exactly one of"),
        (
            dict(PYPI, pypi="", executable="bin/server"),
            r"\.executable = 'bin/server': accepted is an absolute path",
        ),
        (dict(REFERENCE, pypi="a==1"), r"no pypi, npm or executable for kind python"),
        (dict(REFERENCE, app="not a path"), r"\.app = 'not a path'"),
        (dict(REFERENCE, kind="docker"), r"\.kind = 'docker': accepted is python .* or stdio"),
        (dict(REFERENCE, name="Notes"), r"\.name = 'Notes'"),
        (dict(REFERENCE, name="health"), r"\.name = 'health'.*none of"),
        (dict(REFERENCE, name="a-"), r"\.name = 'a-'"),
        (dict(REFERENCE, ports=[]), r"\.ports = \[\]: accepted is a non-empty list"),
        (dict(REFERENCE, ports=[80]), r"\.ports\[0\] = 80: accepted is a port from 1024"),
        (dict(REFERENCE, ports=[True]), r"\.ports\[0\] = True"),
        (dict(PYPI, isolation="per_user"), r"\.isolation = 'per_user'"),
        (dict(REFERENCE, isolation="shared"), r"no isolation for kind python"),
        (dict(PYPI, env={"lower": "x"}), r"\.env\.lower = 'lower': accepted is an environment variable name"),
        (dict(PYPI, egress=["not-an-address"]), r"\.egress\[0\] = 'not-an-address'"),
        (dict(PYPI, scopes="mcp:tools"), r"\.scopes = 'mcp:tools': accepted is a list"),
        (dict(PYPI, volume="/data"), r"\['volume'\]: accepted is only the fields"),
    ],
)
def test_each_mistake_is_named_with_its_value_and_what_is_accepted(server, message):
    with pytest.raises(ServersError, match=message) as caught:
        mcp_servers(hv(server))
    assert str(caught.value).startswith("mcp_server_servers[0]")


def test_a_secret_value_is_never_shown():
    with pytest.raises(ServersError) as caught:
        mcp_servers(hv(dict(PYPI, secrets={"API_KEY": ["s3cret-value"]})))
    assert "s3cret-value" not in str(caught.value) and "<hidden>" in str(caught.value)


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (
            (REFERENCE, dict(PYPI, name="notes")),
            r"\[1\] \(notes\)\.name = 'notes': accepted is a name used by one server",
        ),
        (
            (REFERENCE, dict(PYPI, ports=[8001])),
            r"\(time\)\.ports = 8001: accepted is a port no other server uses \(notes",
        ),
        (
            (REFERENCE, dict(PYPI, default=True)),
            r"\['notes', 'time'\]: accepted is at most one server with default",
        ),
    ],
)
def test_servers_of_one_host_do_not_collide(servers, message):
    with pytest.raises(ServersError, match=message):
        mcp_servers(hv(*servers))


def test_a_server_may_bound_its_memory_and_set_its_own_bridge_settings():
    got = mcp_servers(
        hv(REFERENCE, dict(NPM, memory_max="768M", bridge={"max_children": 4, "idle_timeout": 60}))
    )
    assert got[1]["memory_max"] == "768M" and got[1]["bridge"] == {"max_children": 4, "idle_timeout": 60}
    assert got[0]["memory_max"] == "" and got[0]["bridge"] == {}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (dict(NPM, memory_max="lots"), "(everything).memory_max = 'lots': accepted is a systemd size"),
        (
            dict(NPM, bridge={"command": ["sh"]}),
            "(everything).bridge = {'command': ['sh']}: accepted is a mapping of",
        ),
        (
            dict(NPM, bridge={"max_children": 0}),
            "(everything).bridge.max_children = 0: accepted is a positive number",
        ),
        (
            dict(REFERENCE, bridge={"max_children": 2}),
            "(notes).bridge = {'max_children': 2}: accepted is no bridge",
        ),
    ],
)
def test_bad_memory_and_bridge_settings_are_named(item, message):
    with pytest.raises(ServersError) as err:
        mcp_servers(hv(item))
    assert message in str(err.value)
