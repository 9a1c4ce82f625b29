"""mcp_server_commands: which argv each stdio server's bridge runs, from the controller's artefacts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"plugins/filter/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


servers_plugin = _load("mcp_servers")
plugin = _load("mcp_server_commands")

PYPI_BUILD = {
    "kind": "pypi",
    "release": "mcp-server-time-2026.10.19-0123456789ab",
    "entry_points": {"mcp-server-time": "mcp_server_time:main"},
    "install_argv": [["python3", "-m", "venv", "PREFIX/venv"]],
}
NPM_BUILD = {
    "kind": "npm",
    "release": "modelcontextprotocol-server-everything-2026.8.31-ba9876543210",
    "commands": {
        "mcp-server-everything": [
            "node",
            "PREFIX/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        ]
    },
}


def servers(*items):
    return servers_plugin.mcp_servers({"mcp_server_servers": list(items)})


def results(*pairs):
    return [{"item": server, "stdout": json.dumps(build)} for server, build in pairs]


def test_the_named_entry_point_inside_the_release_directory_with_its_arguments():
    srv = servers(
        {"name": "notes", "kind": "python", "ports": [8000]},
        {
            "name": "time",
            "kind": "stdio",
            "pypi": "mcp-server-time==2026.10.19",
            "command": ["mcp-server-time", "--local-timezone", "UTC"],
            "ports": [8100],
        },
        {
            "name": "everything",
            "kind": "stdio",
            "npm": "@modelcontextprotocol/server-everything@2026.8.31",
            "command": ["mcp-server-everything", "stdio"],
            "ports": [8200],
        },
        {
            "name": "local",
            "kind": "stdio",
            "executable": "/usr/local/bin/my-server",
            "command": ["--stdio"],
            "ports": [8300],
        },
    )
    got = plugin.mcp_server_commands(srv, results((srv[1], PYPI_BUILD), (srv[2], NPM_BUILD)))
    assert set(got) == {"time", "everything", "local"}  # python servers run no command
    rel = "/opt/mcpops/servers/time/releases/" + PYPI_BUILD["release"]
    assert got["time"] == {
        "argv": [f"{rel}/venv/bin/mcp-server-time", "--local-timezone", "UTC"],
        "release": PYPI_BUILD["release"],
        "dir": rel,
    }
    erel = "/opt/mcpops/servers/everything/releases/" + NPM_BUILD["release"]
    assert got["everything"]["argv"] == [
        "node",
        f"{erel}/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        "stdio",
    ]
    assert got["local"] == {"argv": ["/usr/local/bin/my-server", "--stdio"], "release": "", "dir": ""}


def test_an_empty_command_runs_the_package_s_only_entry_point():
    srv = servers({"name": "time", "kind": "stdio", "pypi": "mcp-server-time==2026.10.19", "ports": [8100]})
    got = plugin.mcp_server_commands(srv, results((srv[0], PYPI_BUILD)))
    assert got["time"]["argv"] == [
        f"/opt/mcpops/servers/time/releases/{PYPI_BUILD['release']}/venv/bin/mcp-server-time"
    ]


def test_an_unknown_entry_point_names_the_server_the_value_and_the_entry_points_there_are():
    srv = servers(
        {
            "name": "time",
            "kind": "stdio",
            "pypi": "mcp-server-time==2026.10.19",
            "command": ["uvx"],
            "ports": [8100],
        }
    )
    with pytest.raises(plugin.ServersError) as err:
        plugin.mcp_server_commands(srv, results((srv[0], PYPI_BUILD)))
    assert str(err.value) == (
        "mcp_server_servers (time).command[0] = 'uvx': accepted is one of the console scripts of "
        "mcp-server-time==2026.10.19: mcp-server-time"
    )


def test_a_package_with_several_entry_points_needs_a_command():
    build = dict(NPM_BUILD, commands={"a": ["node", "PREFIX/a.js"], "b": ["node", "PREFIX/b.js"]})
    srv = servers({"name": "e", "kind": "stdio", "npm": "e@1.0.0", "ports": [8200]})
    with pytest.raises(
        plugin.ServersError, match=r"\(e\)\.command = \[\]: accepted is \[<entry point>, args...\] .*: a, b"
    ):
        plugin.mcp_server_commands(srv, results((srv[0], build)))


def test_a_server_without_an_artefact_is_an_error_not_a_silent_skip():
    srv = servers({"name": "time", "kind": "stdio", "pypi": "mcp-server-time==2026.10.19", "ports": [8100]})
    with pytest.raises(plugin.ServersError, match="no artefact was built"):
        plugin.mcp_server_commands(srv, [])


# --- dependency constraints (mcp_servers fields that server_artifacts.py takes) -------------------

TIME = {"name": "time", "kind": "stdio", "pypi": "mcp-server-time==2025.9.25", "ports": [8100]}
EVERYTHING = {
    "name": "everything",
    "kind": "stdio",
    "npm": "@modelcontextprotocol/server-everything@2026.8.31",
}
EVERYTHING["ports"] = [8200]


def test_constraints_exclude_newer_and_overrides_are_returned_for_their_kind():
    import datetime as dt

    got = servers(
        dict(TIME, constraints=["mcp<2", "pydantic>=2,<3"], exclude_newer="2025-10-01T12:00:00Z"),
        dict(EVERYTHING, overrides={"@hono/node-server": "1.19.9", "zod": "3.25.76"}),
        dict(TIME, name="dated", ports=[8300], exclude_newer=dt.date(2025, 10, 1)),  # unquoted YAML date
        {"name": "notes", "kind": "python", "ports": [8000]},
    )
    assert got[0]["constraints"] == ["mcp<2", "pydantic>=2,<3"]
    assert got[0]["exclude_newer"] == "2025-10-01T12:00:00Z" and got[0]["overrides"] == {}
    assert got[1]["overrides"] == {"@hono/node-server": "1.19.9", "zod": "3.25.76"}
    assert got[1]["constraints"] == [] and got[1]["exclude_newer"] == ""
    assert got[2]["exclude_newer"] == "2025-10-01"
    assert (got[3]["constraints"], got[3]["exclude_newer"], got[3]["overrides"]) == ([], "", {})


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            dict(EVERYTHING, constraints=["mcp<2"]),
            "(everything).constraints = ['mcp<2']: accepted is nothing",
        ),
        (dict(TIME, overrides={"ms": "2.1.3"}), "(time).overrides = {'ms': '2.1.3'}: accepted is nothing"),
        (dict(EVERYTHING, exclude_newer="2025-10-01"), "(everything).exclude_newer = '2025-10-01'"),
        (dict(TIME, constraints="mcp<2"), "(time).constraints = 'mcp<2': accepted is a list"),
        (dict(TIME, constraints=["mcp"]), "(time).constraints[0] = 'mcp': accepted is a requirement"),
        (dict(TIME, constraints=["mcp<2\n"]), "(time).constraints[0] = 'mcp<2\\n'"),
        (dict(TIME, constraints=["mcp @ https://x.invalid/m.whl"]), "(time).constraints[0]"),
        (dict(TIME, constraints=["mcp<2; python_version>'3'"]), "(time).constraints[0]"),
        (dict(TIME, constraints=[f"p{i}<2" for i in range(65)]), "accepted is a list of at most 64"),
        (dict(TIME, exclude_newer="yesterday"), "(time).exclude_newer = 'yesterday': accepted is a date"),
        (dict(TIME, exclude_newer="2025-10-01T12:00:00"), "(time).exclude_newer = '2025-10-01T12:00:00'"),
        (dict(TIME, exclude_newer="2025-02-30"), "(time).exclude_newer = '2025-02-30'"),
        (dict(EVERYTHING, overrides={"zod": "^3.25.0"}), "(everything).overrides.zod = '^3.25.0'"),
        (dict(EVERYTHING, overrides={"zod": 3}), "(everything).overrides.zod = 3"),
        (dict(EVERYTHING, overrides={"zod\n": "3.25.76"}), "(everything).overrides = 'zod\\n'"),
        (
            dict(EVERYTHING, overrides={"@modelcontextprotocol/server-everything": "2026.1.1"}),
            "not the server's own package",
        ),
        (dict(EVERYTHING, overrides=["zod@3.25.76"]), "(everything).overrides = ['zod@3.25.76']"),
    ],
)
def test_bad_constraints_are_named(item, message):
    with pytest.raises(servers_plugin.ServersError) as err:
        servers(item)
    assert message in str(err.value)
