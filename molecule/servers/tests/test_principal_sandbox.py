"""A sandbox per principal (issue 18, "Any MCP server, really isolated").

Through nginx, with real tokens of the lab issuer and the SDK's own clients:

- memory (@modelcontextprotocol/server-memory from npm) keeps its knowledge graph in a file whose
  path (MEMORY_FILE_PATH) points into its state directory; per principal each child sees its own copy
  of that directory at the same path, kept on the host under principals/<digest>.
- hostile (molecule/servers/files/hostile_server.py, deployed as `executable`) does what a malicious
  package would: it reads, writes, lists, connects and allocates wherever the test tells it, and
  reports what happened. Its children may use 48 MiB each (bridge.child_memory_max).
"""

from __future__ import annotations

import json
import os
import shlex

import anyio
import pytest
import yaml
from conftest import (
    GROUP_VARS,
    SERVERS,
    instance_metrics,
    journal,
    main_pid,
    metric_sum,
    modern_client,
    token_for,
    unit,
    wait_until,
)
from mcp.shared.exceptions import MCPError
from mcpops_server.sandbox import principal_digest

MEMORY = SERVERS["memory"]
HOSTILE = SERVERS["hostile"]
ISSUER = yaml.safe_load((GROUP_VARS / "00_lab.yml").read_text())["mcp_server_auth_server_url"]
MEMORY_STATE = "/var/lib/mcpops-memory"
HOSTILE_STATE = "/var/lib/mcpops-hostile"


def fresh(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def digest(sub: str) -> str:
    """The principal's directory name, as the bridge computes it (issuer and `sub:<subject>`)."""
    return principal_digest(ISSUER, f"sub:{sub}")


def text_of(result) -> str:
    return "\n".join(getattr(part, "text", "") for part in result.content)


async def call(address: str, server: dict, sub: str, tool: str, arguments: dict) -> tuple[bool, str]:
    """One tools/call of a principal, over a fresh sessionless client: (is_error, text)."""
    async with modern_client(address, server["path"], token_for(server["name"], sub)) as client:
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:  # a JSON-RPC error (the bridge's): (True, its message)
            return True, f"MCPError: {exc}"
        return bool(result.is_error), text_of(result)


def starts(srv, server: dict) -> float:
    return sum(
        metric_sum(instance_metrics(srv, p), "mcpops_bridge_child_starts_total") for p in server["ports"]
    )


def running_children(srv, server: dict) -> float:
    return sum(metric_sum(instance_metrics(srv, p), "mcpops_bridge_children") for p in server["ports"])


# ------------------------------------------------------------------------------------ the data


def test_a_file_backed_server_keeps_each_principals_data_apart(srv, address):
    alice, bob = fresh("alice"), fresh("bob")
    entity = fresh("alices-project")
    created = {"entities": [{"name": entity, "entityType": "project", "observations": ["alice's eyes only"]}]}

    async def go():
        failed, said = await call(address, MEMORY, alice, "create_entities", created)
        assert not failed, said
        failed, graph = await call(address, MEMORY, alice, "read_graph", {})
        assert not failed and entity in graph, f"alice's own graph lacks her entity: {graph}"
        failed, graph = await call(address, MEMORY, bob, "read_graph", {})
        assert not failed and entity not in graph, f"bob reads alice's graph: {graph}"
        failed, found = await call(address, MEMORY, bob, "search_nodes", {"query": entity})
        assert entity not in found, f"bob finds alice's entity: {found}"

    anyio.run(go)
    own = f"{MEMORY_STATE}/principals/{digest(alice)}/graph.jsonl"
    assert srv.file(own).exists and srv.file(own).contains(entity), f"alice's graph is not in {own}"
    assert not srv.file(f"{MEMORY_STATE}/graph.jsonl").exists, (
        "a child wrote the server's own state directory"
    )
    assert srv.file(f"{MEMORY_STATE}/principals").mode == 0o700
    bobs = f"{MEMORY_STATE}/principals/{digest(bob)}/graph.jsonl"
    assert not srv.file(bobs).exists or not srv.file(bobs).contains(entity)


def test_a_principals_copy_outlives_its_child_and_the_instance(srv, address):
    alice = fresh("alice")
    entity = fresh("kept")
    created = {"entities": [{"name": entity, "entityType": "note", "observations": ["still here"]}]}
    anyio.run(call, address, MEMORY, alice, "create_entities", created)
    for port in MEMORY["ports"]:
        srv.run_expect([0], f"systemctl restart {unit(port)}")
    for port in MEMORY["ports"]:
        wait_until(lambda p=port: srv.service(unit(p)).is_running, 30, what=f"{unit(port)} back")

    def answers():
        try:
            failed, graph = anyio.run(call, address, MEMORY, alice, "read_graph", {})
        except Exception:  # the instances are still coming up behind nginx
            return None
        return graph if not failed else None

    graph = wait_until(answers, 60, 1, "alice's graph after both instances restarted")
    assert entity in graph, f"alice's data did not survive the restart: {graph}"


# ------------------------------------------------------------------------------------ affinity


def test_fifty_sessionless_calls_of_one_principal_start_one_child_across_two_ports(srv, address):
    assert len(MEMORY["ports"]) == 2, MEMORY["ports"]
    carol = fresh("carol")
    before, children_before = starts(srv, MEMORY), running_children(srv, MEMORY)

    async def go():
        for _ in range(5):  # five clients (new connections), ten calls each: nginx decides every request
            async with modern_client(address, MEMORY["path"], token_for("memory", carol)) as client:
                for _ in range(10):
                    result = await client.call_tool("read_graph", {})
                    assert not result.is_error, text_of(result)

    anyio.run(go)
    after = starts(srv, MEMORY)
    assert after - before == 1, (
        f"50 calls of one principal started {after - before} children across {MEMORY['ports']}"
    )
    assert running_children(srv, MEMORY) - children_before <= 1


# ------------------------------------------------------------------------------------ the sandbox


def test_a_hostile_child_sees_only_its_own_sandbox(srv, address):
    alice, bob = fresh("alice"), fresh("bob")

    async def go():
        failed, said = await call(
            address, HOSTILE, alice, "write", {"path": f"{HOSTILE_STATE}/note.txt", "text": "alice"}
        )
        assert not failed, said
        failed, me = await call(address, HOSTILE, bob, "whoami", {})
        assert not failed, me
        mine = json.loads(me)
        assert mine["home"] == HOSTILE_STATE and mine["cwd"] == HOSTILE_STATE and mine["tmpdir"] == "/tmp", (
            mine
        )
        assert not {"REDIS_PASSWORD", "MCPOPS_CONFIG", "CREDENTIALS_DIRECTORY"} & set(mine["env"]), mine[
            "env"
        ]
        attempts = {}
        host_pids = srv.check_output(f"pgrep -u {HOSTILE['user']}").split()
        paths = [
            f"{HOSTILE_STATE}/note.txt",  # bob's own copy: alice's note is not in it
            f"{HOSTILE_STATE}/principals/{digest(alice)}/note.txt",  # alice's copy by its host path
            "/etc/mcpops/servers/hostile/config.yaml",
            "/etc/mcpops/secrets.env",
            "/etc/mcpops/pki/host.key",
            "/etc/mcpops/servers/everything/child.env",
            *(f"/proc/{pid}/environ" for pid in host_pids),  # every process of the server's user
            "/proc/1/environ",
            "/proc/self/environ",
        ]
        for path in paths:
            attempts[path] = await call(address, HOSTILE, bob, "read", {"path": path})
        failed, root = await call(address, HOSTILE, bob, "listdir", {"path": "/"})
        return attempts, json.loads(root)

    attempts, root = anyio.run(go)
    leaked = {path: said for path, (failed, said) in attempts.items() if not failed}
    assert not leaked, f"bob's child read what is not his: {leaked}"
    assert srv.file(f"{HOSTILE_STATE}/principals/{digest(alice)}/note.txt").content_string == "alice"
    assert "proc" not in root and "run" not in root, f"the sandbox's root: {root}"


def test_the_hostile_child_reaches_redis_but_no_other_port_on_the_host(srv, address):
    """Egress by port (nftables, by the server's uid): its Redis port, not node_exporter or another
    server's instance port."""
    sub = fresh("egress")

    async def go():
        out = {}
        for port in (6379, 9100, SERVERS["notes"]["ports"][0], 9090):
            out[port] = await call(address, HOSTILE, sub, "connect", {"host": "127.0.0.1", "port": port})
        return out

    got = anyio.run(go)
    assert got[6379] == (False, '"connected"'), f"the child cannot reach its Redis: {got[6379]}"
    for port in (9100, SERVERS["notes"]["ports"][0], 9090):
        failed, said = got[port]
        assert failed and "Connection" in said, f"the child reached 127.0.0.1:{port}: {said}"


def test_a_child_over_its_memory_bound_dies_alone(srv, address):
    port = HOSTILE["ports"][0]
    pid = main_pid(srv, port)
    alice, bob, greedy = fresh("alice"), fresh("bob"), fresh("greedy")

    async def go():
        for sub in (alice, bob):
            failed, said = await call(address, HOSTILE, sub, "hog", {"mb": 8})
            assert not failed, said
        failed, said = await call(address, HOSTILE, greedy, "hog", {"mb": 200})
        assert failed, f"a child allocated 200 MiB with bridge.child_memory_max 48M: {said}"
        assert said.startswith("MCPError") and "bridge.child_memory_max (48 MiB)" in said, said
        # the others' children still hold their memory and answer
        for sub in (alice, bob):
            failed, said = await call(address, HOSTILE, sub, "hog", {"mb": 1})
            assert not failed and "holding 9 MiB" in said, f"{sub}'s child did not survive: {said}"
        # and the greedy principal gets a new child on its next call
        failed, said = await call(address, HOSTILE, greedy, "whoami", {})
        assert not failed, said

    anyio.run(go)
    assert main_pid(srv, port) == pid, f"the instance restarted\n{journal(srv, unit(port))}"
    assert srv.service(unit(port)).is_running
    assert "killed for memory" in journal(srv, unit(port), 200)


# ------------------------------------------------------------------------------------ the units


@pytest.mark.parametrize("name", ["memory", "hostile", "everything", "time"])
def test_sandboxed_instances_delegate_cgroups_and_survive_a_childs_oom(srv, name):
    port = SERVERS[name]["ports"][0]
    shown = srv.check_output(f"systemctl show -p Delegate -p OOMPolicy -p RestrictNamespaces {unit(port)}")
    assert "Delegate=yes" in shown and "OOMPolicy=continue" in shown, shown
    assert srv.package("bubblewrap").is_installed
    config = yaml.safe_load(srv.file(f"/etc/mcpops/servers/{name}/config.yaml").content_string)
    assert config["bridge"]["sandbox"] == "bubblewrap", config["bridge"]
    assert config["bridge"]["state_dir"] == f"/var/lib/mcpops-{name}", config["bridge"]


def test_no_instance_runs_with_a_bubblewrap_it_could_escape_into(srv):
    """bwrap is not setuid: a child gets no privilege from it, only namespaces of its own user."""
    mode = srv.file("/usr/bin/bwrap").mode
    assert not mode & 0o6000, oct(mode)
    xattrs = srv.run(shlex.join(["python3", "-c", "import os; print(os.listxattr('/usr/bin/bwrap'))"]))
    assert "security.capability" not in xattrs.stdout, xattrs.stdout


# ------------------------------------------------------------------------------------ constraints


def test_an_old_server_runs_with_its_dependency_constraint(srv, address):
    """mcp-server-time 2025.9.25 declares mcp>=1.0.0 and exits at start with mcp 2; with
    `constraints: ["mcp<2"]` it resolves a 1.x SDK and answers through the bridge."""
    old = SERVERS["oldtime"]
    assert old["constraints"] == ["mcp<2"], old

    async def go():
        async with modern_client(address, old["path"], token_for("oldtime", fresh("old"))) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "get_current_time" in tools, tools
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error, text_of(result)
            return text_of(result)

    said = anyio.run(go)
    assert "UTC" in said, said
    release = srv.check_output("readlink -f /opt/mcpops/servers/oldtime/current")
    sdk = srv.run(f"ls -d {release}/venv/lib/python3*/site-packages/mcp-1.*.dist-info")
    assert sdk.rc == 0, f"the release {release} has no mcp 1.x"


def test_each_child_has_a_cgroup_of_its_own_with_its_bounds(srv, address):
    """bridge.child_memory_max (48M for hostile) and bridge.child_tasks_max (128) on the child's own
    cgroup below its instance's, holding the child's processes (v1 controllers in the lab, v2 elsewhere)."""
    failed, said = anyio.run(call, address, HOSTILE, fresh("cgroup"), "whoami", {})
    assert not failed, said
    pid = main_pid(srv, HOSTILE["ports"][0])
    lines = dict(line.split(":", 2)[1:] for line in srv.check_output(f"cat /proc/{pid}/cgroup").splitlines())
    if srv.file("/sys/fs/cgroup/cgroup.controllers").exists:  # cgroup v2: the instance sits in the leaf
        base = "/sys/fs/cgroup" + lines[""].rsplit("/instance", 1)[0]
        bounds = {base: {"memory.max": str(48 << 20), "pids.max": "128"}}
    else:
        memory = next(path for key, path in lines.items() if "memory" in key.split(","))
        pids = next(path for key, path in lines.items() if "pids" in key.split(","))
        bounds = {
            f"/sys/fs/cgroup/memory{memory}": {"memory.limit_in_bytes": str(48 << 20)},
            f"/sys/fs/cgroup/pids{pids}": {"pids.max": "128"},
        }
    for base, files in bounds.items():
        kids = srv.check_output(
            f"find {shlex.quote(base)} -mindepth 1 -maxdepth 1 -type d -name 'child-*'"
        ).split()
        assert kids, f"no child cgroup below {base}"
        for kid in kids:
            for name, value in files.items():
                assert srv.file(f"{kid}/{name}").content_string.strip() == value, f"{kid}/{name}"
        held = [p for kid in kids for p in srv.file(f"{kid}/cgroup.procs").content_string.split()]
        assert held, f"the child cgroups below {base} hold no process"
