"""mcp_servers: the one list of MCP servers an app host runs (issue 12), validated before anything changes."""

from __future__ import annotations

import importlib.util
import json
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
    assert got["env"] == {"TZ": "UTC"} and got["secret_names"] == ["API_KEY"] and "secrets" not in got
    assert (
        got["egress"]
        == [
            {"network": "192.0.2.7/32", "ports": []},
            {"network": "2001:db8::/32", "ports": []},
        ]
        and got["isolation"] == "shared"
    )


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
        hv(REFERENCE, dict(NPM, memory_max="1280M", bridge={"max_children": 4, "idle_timeout": 60}))
    )
    assert got[1]["memory_max"] == "1280M" and got[1]["bridge"] == {"max_children": 4, "idle_timeout": 60}
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
            "(everything).bridge.max_children = 0: accepted is an integer from 1 to 10000",
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


# Issue 18: secrets never printed, strings without control characters, the runtime's bounds checked
# before a host changes, and the memory a stdio server's children need.

SECRET_VALUES = ("vault-value-1", "second secret 2", "4242424242")


def test_the_answer_carries_secret_names_never_their_values():
    """Every task that loops over the servers shows its item at -v and on failure, so the answer
    itself must not hold a secret value."""
    got = mcp_servers(
        hv(
            REFERENCE,
            dict(PYPI, secrets={"B_TOKEN": SECRET_VALUES[0], "A_KEY": SECRET_VALUES[1]}),
            dict(NPM, secrets={"PIN": int(SECRET_VALUES[2])}, env={"PLAIN": "shown"}),
        )
    )
    text = json.dumps(got)
    assert [s["secret_names"] for s in got] == [[], ["A_KEY", "B_TOKEN"], ["PIN"]]
    assert not [v for v in SECRET_VALUES if v in text], text
    assert all("secrets" not in s for s in got) and "shown" in text


CONTROL_CASES = [
    (dict(REFERENCE, name="notes\n"), ".name = 'notes\\n'"),
    (dict(REFERENCE, kind="python\n"), ".kind = 'python\\n'"),
    (dict(REFERENCE, app="pkg.mod:mcp\n"), ".app = 'pkg.mod:mcp\\n'"),
    (dict(PYPI, pypi="mcp-server-time==2025.9.25\n"), ".pypi = 'mcp-server-time==2025.9.25\\n'"),
    (dict(NPM, npm="@modelcontextprotocol/server-everything@2026.8.31\n"), ".npm = "),
    (dict(PYPI, pypi="", executable="/usr/bin/srv\n"), ".executable = '/usr/bin/srv\\n'"),
    (dict(PYPI, pypi="", executable="/usr/bin/s\x1b[2Jrv"), ".executable = '/usr/bin/s\\x1b[2Jrv'"),
    (dict(PYPI, command=["mcp-server-time", "--tz\tUTC"]), ".command[1] = '--tz\\tUTC'"),
    (dict(PYPI, env={"TZ\n": "UTC"}), ".env.'TZ\\n' = 'TZ\\n'"),
    (dict(PYPI, env={"TZ": "UTC\nLD_PRELOAD=/tmp/x.so"}), ".env.TZ = 'UTC\\nLD_PRELOAD=/tmp/x.so'"),
    (dict(PYPI, secrets={"KEY\r": "x"}), ".secrets.'KEY\\r' = 'KEY\\r'"),
    (dict(PYPI, scopes=["mcp:tools\n"]), ".scopes = ['mcp:tools\\n']"),
    (dict(PYPI, isolation="shared\n"), ".isolation = 'shared\\n'"),
    (dict(PYPI, memory_max="2G\n"), ".memory_max = '2G\\n'"),
    (dict(PYPI, bridge={"sandbox": "none\n"}), ".bridge.sandbox = 'none\\n'"),
    (dict(PYPI, bridge={"max_children": "8\n"}), ".bridge.max_children = '8\\n'"),
    (dict(PYPI, bridge={"child_memory_max": "256M\n"}), ".bridge.child_memory_max = '256M\\n'"),
]


@pytest.mark.parametrize(("server", "where"), CONTROL_CASES)
def test_a_control_character_in_any_string_is_refused_and_named(server, where):
    with pytest.raises(ServersError) as caught:
        mcp_servers(hv(server))
    message = str(caught.value)
    assert message.startswith("mcp_server_servers[0]") and where in message and ": accepted is " in message
    assert "\n" not in message and "\t" not in message and "\x1b" not in message


@pytest.mark.parametrize(
    "value", ["line one\nINJECTED=1", "tab\there", "nul\x00", "nel\x85x", "ls\u2028x", "del\x7f"]
)
def test_a_secret_value_with_a_control_character_is_refused_without_being_shown(value):
    with pytest.raises(ServersError) as caught:
        mcp_servers(hv(dict(PYPI, secrets={"API_KEY": value})))
    message = str(caught.value)
    assert message == (
        "mcp_server_servers[0] (time).secrets.API_KEY = '<hidden>': accepted is a string (quote numbers and "
        "booleans), without control characters (newline, tab, ...)"
    )


def test_the_same_strings_without_control_characters_are_accepted():
    (got,) = mcp_servers(
        hv(
            dict(
                PYPI,
                pypi="",
                executable="/usr/local/bin/my server",
                command=["--a b", "ü"],
                env={"T": "a=b#c"},
            )
        )
    )
    assert got["executable"] == "/usr/local/bin/my server" and got["command"] == ["--a b", "ü"]


@pytest.mark.parametrize(
    ("bridge", "message"),
    [
        ({"max_children": 10_001}, ".bridge.max_children = 10001: accepted is an integer from 1 to 10000"),
        (
            {"max_calls_per_principal": 0},
            ".bridge.max_calls_per_principal = 0: accepted is an integer from 1",
        ),
        ({"idle_timeout": 0}, ".bridge.idle_timeout = 0: accepted is a number of seconds > 0 and <= 604800"),
        ({"stop_timeout": 301}, ".bridge.stop_timeout = 301: accepted is a number of seconds > 0 and <= 300"),
        ({"max_line_bytes": 1023}, ".bridge.max_line_bytes = 1023: accepted is an integer from 1024"),
        ({"child_tasks_max": 7}, ".bridge.child_tasks_max = 7: accepted is an integer from 8 to 100000"),
        ({"child_memory_max": "15M"}, ".bridge.child_memory_max = '15M': accepted is a size from 16M to 1T"),
        ({"child_memory_max": (1 << 40) + 1}, ".bridge.child_memory_max = 1099511627777: accepted is a size"),
        ({"child_memory_max": "1.5G"}, ".bridge.child_memory_max = '1.5G': accepted is a size"),
        ({"sandbox": "firejail"}, ".bridge.sandbox = 'firejail': accepted is one of bubblewrap, none"),
        ({"max_children": True}, ".bridge.max_children = True: accepted is an integer"),
    ],
)
def test_bridge_settings_out_of_the_runtimes_range_are_refused_before_any_change(bridge, message):
    with pytest.raises(ServersError) as caught:
        mcp_servers(hv(dict(PYPI, bridge=bridge)))
    assert message in str(caught.value)


def test_bridge_settings_within_range_are_kept_in_the_type_the_runtime_reads():
    (got,) = mcp_servers(
        hv(
            dict(
                PYPI,
                memory_max="infinity",
                bridge={
                    "max_children": "8",
                    "restart_backoff_max": 0,
                    "call_timeout": "2.5",
                    "child_memory_max": "1T",
                    "child_tasks_max": 100_000,
                    "sandbox": "bubblewrap",
                    "max_calls_per_principal": 10_000,
                },
            )
        )
    )
    assert got["bridge"] == {
        "max_children": 8,
        "restart_backoff_max": 0,
        "call_timeout": 2.5,
        "child_memory_max": "1T",
        "child_tasks_max": 100_000,
        "sandbox": "bubblewrap",
        "max_calls_per_principal": 10_000,
    }


def test_a_stdio_servers_memory_fits_its_instance_and_children_by_default():
    got = mcp_servers(
        hv(
            REFERENCE,
            PYPI,
            dict(NPM, bridge={"max_children": 4, "child_memory_max": "512M"}),
            dict(PYPI, name="shared", ports=[8300], isolation="shared"),
        )
    )
    # 256M + 16 x 256M; 256M + 4 x 512M; a shared server has one child.
    assert [s["memory_max"] for s in got] == ["", "4352M", "2304M", "512M"]


def test_a_stdio_servers_memory_max_below_what_its_children_need_is_refused_naming_both():
    with pytest.raises(ServersError) as caught:
        mcp_servers(hv(dict(NPM, memory_max="768M", bridge={"max_children": 8})))
    assert str(caught.value) == (
        "mcp_server_servers[0] (everything).memory_max = '768M': accepted is at least 2304M, the instance's "
        "256M plus bridge.max_children (8) x bridge.child_memory_max (256M), or infinity (or lower those two)"
    )
    (got,) = mcp_servers(hv(dict(NPM, memory_max="2304M", bridge={"max_children": 8})))
    assert got["memory_max"] == "2304M"


def test_the_extra_configs_bridge_sizes_the_servers_that_do_not_set_their_own():
    extra = {"mcp_server_extra_config": {"bridge": {"max_children": 2, "child_memory_max": "1G"}}}
    got = mcp_servers(hv(PYPI, dict(NPM, bridge={"max_children": 1}), **extra))
    assert [s["memory_max"] for s in got] == ["2304M", "1280M"]
    with pytest.raises(
        ServersError, match=r"^mcp_server_extra_config\.bridge\.max_children = 0: accepted is"
    ):
        mcp_servers(hv(PYPI, mcp_server_extra_config={"bridge": {"max_children": 0}}))


# The settings the role sets from other fields of a server (or that the sandbox derives), not from its
# `bridge` mapping.
NOT_PER_SERVER = {"command", "env", "env_file", "cwd", "isolation", "state_dir", "sandbox_read_only"}


def test_the_filters_bridge_ranges_are_the_runtimes():
    """The filter copies config.py's ranges (it cannot import the server package on a controller
    without it); each end of each range is probed against config.py's own converters."""
    config = pytest.importorskip("mcpops_server.config")
    declared = {k.split(".", 1)[1]: d for k, d in config.declarations().items() if k.startswith("bridge.")}
    assert set(plugin.BRIDGE) == set(declared) - NOT_PER_SERVER

    def accepts(key, value):
        try:
            declared[key].convert(value)
        except config._Bad:
            return False
        return True

    for key, (kind, *spec) in plugin.BRIDGE.items():
        if kind == "choice":
            assert all(accepts(key, word) for word in spec) and not accepts(key, "other"), key
            continue
        lowest, highest = spec
        step = 1 if kind in ("int", "size") else 0.001
        inside = [lowest + step, highest] + ([] if kind == "seconds>" else [lowest])
        outside = [lowest - step, highest + step] + ([lowest] if kind == "seconds>" else [])
        assert all(accepts(key, v) for v in inside), (key, inside)
        assert not any(accepts(key, v) for v in outside), (key, outside)
    defaults = {key: declared[key].default for key in ("max_children", "child_memory_max")}
    assert defaults == {
        "max_children": plugin.DEFAULT_MAX_CHILDREN,
        "child_memory_max": plugin.DEFAULT_CHILD_MEMORY,
    }
