"""mcpops-server as the mcp_server role leaves it: a hardened non-root service on every instance port,
healthy, answering a real MCP client, recovering from SIGKILL, refusing bad variables up front."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
from conftest import (
    REPO,
    assert_active,
    container_name,
    health,
    instances,
    journal,
    main_pid,
    mint_token,
    probe,
    run_playbook,
    wait_healthy,
    wait_until,
)

sys.path.insert(0, str(REPO / "plugins" / "filter"))
from mcp_instances import route_id  # the filter the role itself uses for route ids

USER = "mcpuser"
REFERENCE_TOOLS = {"notes_add", "notes_get", "notes_search", "notes_delete", "slow_count"}
HARDENING = {
    "User": USER,
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "Restart": "on-failure",
    "Type": "notify",
    "MemoryMax": str(512 * 1024 * 1024),
    "LimitNOFILE": "65536",
}


def unit(port: int) -> str:
    return f"mcpops-server@{port}.service"


@pytest.fixture(scope="module")
def ports(host) -> list[int]:
    found = instances(host)
    assert found, "no instance ports"
    return found


def test_service_user_is_not_root_and_cannot_log_in(host):
    user = host.user(USER)
    assert user.exists
    assert user.uid != 0 and user.uid < 1000, f"{USER} is not a system user: uid {user.uid}"
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), user.shell
    assert not host.file(user.home).exists, f"{USER} has a home directory: {user.home}"


def test_code_is_read_only_and_config_is_private(host):
    current = host.file("/opt/mcpops/current")
    assert current.is_symlink and current.linked_to.startswith("/opt/mcpops/releases/")
    assert host.file(current.linked_to + "/.complete").exists
    venv = host.file("/opt/mcpops/current/venv")
    assert venv.user == "root" and venv.mode & 0o022 == 0
    probe_write = host.run(f"runuser -u {USER} -- touch /opt/mcpops/current/venv/owned")
    assert probe_write.rc != 0, f"{USER} can write into the virtualenv"
    for path in ("/etc/mcpops/config.yaml", "/etc/mcpops/secrets.env"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", USER, 0o640), f"{path}: {f.user}:{f.group} {oct(f.mode)}"
    state = host.file("/var/lib/mcpops")
    assert state.user == USER and state.mode == 0o750


def test_instances_are_active(host, ports):
    for port in ports:
        assert_active(host, unit(port))


def test_unit_hardening_properties(host, ports):
    for port in ports:
        props = dict(
            line.split("=", 1)
            for line in host.check_output(
                f"systemctl show {unit(port)} -p " + " -p ".join(HARDENING) + " -p TimeoutStopUSec"
            ).splitlines()
        )
        for key, want in HARDENING.items():
            assert props.get(key) == want, f"{unit(port)}: {key}={props.get(key)!r}, want {want!r}"
        stop = props["TimeoutStopUSec"]
        assert re.fullmatch(r"\d+s", stop) and int(stop[:-1]) > 20, f"TimeoutStopSec {stop} is not above 20 s"


def test_exposure_score_at_most_1_5(host, ports):
    for port in ports:
        res = host.run(f"systemd-analyze security --no-pager --threshold=15 {unit(port)}")
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
        assert m, f"no exposure level in:\n{res.stdout}\n{res.stderr}"
        assert float(m.group(1)) <= 1.5, f"{unit(port)} exposure {m.group(1)}:\n{res.stdout}"
        assert res.rc == 0, f"systemd-analyze --threshold=15 failed for {unit(port)}:\n{res.stdout}"


def test_health_200_with_redis_ok_on_every_instance(host, ports):
    hostname = container_name(host)
    for port in ports:
        status, body = health(host, port)
        assert status == 200, f"/health on {port}: {status} {body}\n{journal(host, unit(port))}"
        assert body["status"] == "healthy" and body["checks"]["redis"] == "ok", body
        assert body["instance_id"] == route_id(hostname, port), body


def test_real_mcp_client_on_every_instance(host, ports, token):
    for port in ports:
        url = f"http://127.0.0.1:{port}/mcp"
        title = f"probe-{port}-{time.time_ns()}"
        out = probe(
            host,
            url,
            token=token,
            list_tools=True,
            calls=[("notes_add", {"title": title, "body": f"written through port {port}", "tags": ["t"]})],
        )
        assert out["ok"], f"{url}: {out}\n{journal(host, unit(port))}"
        assert out["protocol_version"] and out["server"]["name"] == "mcpops-server", out
        assert set(out["tools"]) >= REFERENCE_TOOLS, out["tools"]
        added = out["calls"][0]
        assert not added["is_error"], added
        note_id = added["structured"]["id"]
        # Read it back in a new session, on every instance (the store is shared through Redis).
        for other in ports:
            back = probe(
                host,
                f"http://127.0.0.1:{other}/mcp",
                token=token,
                calls=[("notes_get", {"note_id": note_id}), ("notes_search", {"query": title})],
            )
            assert back["ok"], back
            got, found = back["calls"]
            assert not got["is_error"] and got["structured"]["title"] == title, got
            assert note_id in [n["id"] for n in found["structured"]["notes"]], found


def test_mcp_without_token_is_refused(host, ports):
    out = probe(host, f"http://127.0.0.1:{ports[0]}/mcp", list_tools=True)
    assert not out["ok"], f"tools/list without a token succeeded: {out}"
    bad_aud = probe(host, f"http://127.0.0.1:{ports[0]}/mcp", token=mint_token(aud="https://other/mcp"))
    assert not bad_aud["ok"], f"a token for another resource was accepted: {bad_aud}"


def test_sigkill_brings_the_instance_back_healthy_within_5s(host, ports):
    port = ports[-1]
    before = main_pid(host, unit(port))
    assert before > 0, journal(host, unit(port))
    host.run_expect([0], f"systemctl kill --signal=SIGKILL --kill-whom=main {unit(port)}")
    start = time.monotonic()

    def back():
        pid = main_pid(host, unit(port))
        return pid if pid not in (0, before) and health(host, port)[0] == 200 else None

    try:
        wait_until(back, timeout=5, interval=0.1, what=f"{unit(port)} healthy again after SIGKILL")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{journal(host, unit(port))}") from None
    assert time.monotonic() - start <= 5.5


# --------------------------------------------------------------------------------------------
# Bad variables: the play stops in preflight, nothing changes, the service keeps answering.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"mcp_server_ports": [8000, 8000]}, "mcp_server_ports = [8000, 8000]"),
        # the name before 0.2.0 still works (and is what the message names)
        ({"mcp_server_instances": [8000, 8000]}, "mcp_server_instances = [8000, 8000]"),
        ({"mcp_server_app": "not a/module path"}, "mcp_server_app = not a/module path"),
    ],
    ids=["duplicate-ports", "duplicate-ports-deprecated-name", "malformed-app"],
)
@pytest.mark.timeout(900)
def test_bad_variable_fails_in_preflight_and_keeps_serving(host, ports, site_inventory, extra, expected):
    pids = {p: main_pid(host, unit(p)) for p in ports}
    config_before = host.file("/etc/mcpops/config.yaml").sha256sum
    res = run_playbook(REPO / "playbooks" / "site.yml", site_inventory, "-e", json.dumps(extra), timeout=600)
    output = res.stdout + res.stderr
    tail = output[-3000:]
    assert res.returncode != 0, f"the play accepted {extra}:\n{tail}"
    assert expected in output, f"the message does not name variable and value ({expected!r}):\n{tail}"
    assert "accepted" in output
    failed_task = re.findall(r"TASK \[([^\]]*)\]", output.split("fatal:")[0])[-1]
    assert "Preflight" in failed_task or "Assert" in failed_task, f"failed outside preflight: {failed_task}"
    recap = re.search(r"PLAY RECAP \*+\n(.*)", output, re.S)
    assert recap and re.search(r"changed=0\b", recap.group(1)), f"something changed:\n{output[-2000:]}"
    assert host.file("/etc/mcpops/config.yaml").sha256sum == config_before
    for port in ports:
        assert main_pid(host, unit(port)) == pids[port], f"{unit(port)} was restarted"
        status, _ = health(host, port)
        assert status == 200, journal(host, unit(port))


# --------------------------------------------------------------------------------------------
# A user's own MCP server package, deployed through mcp_server_packages + mcp_server_app.
# It gets its own throwaway host (example_app.yml) so that this scenario's host keeps serving the
# reference toolset on every instance behind nginx.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_host(host):
    distro = os.environ.get("MOLECULE_DISTRO") or (
        "debian13" if host.system_info.release.startswith("13") else "debian12"
    )
    name = os.environ.get("MCPOPS_APP_HOST") or f"mcpops-default-app-{distro}"
    lab_host = str(REPO / "scripts" / "lab-host")
    subprocess.run([lab_host, name, f"mcpops/{distro}:latest"], check=True, timeout=120)
    old = os.environ.get("MCPOPS_APP_HOST")
    os.environ["MCPOPS_APP_HOST"] = name
    try:
        res = run_playbook(
            REPO / "molecule" / "default" / "example_app.yml",
            REPO / "molecule" / "default" / "example_app_inventory" / "hosts.yml",
            timeout=900,
        )
        assert res.returncode == 0, f"deploying the example app failed:\n{(res.stdout + res.stderr)[-4000:]}"
        import testinfra

        yield testinfra.get_host(f"docker://{name}")
    finally:
        if old is None:
            os.environ.pop("MCPOPS_APP_HOST", None)
        if not os.environ.get("MCPOPS_KEEP_APP_HOST"):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.mark.timeout(1800)  # the fixture converges a fresh host (Redis, wheelhouse, venv)
def test_user_package_deploys_and_answers_tools_list(app_host, token):
    wait_healthy(app_host, 8000)
    out = probe(
        app_host,
        "http://127.0.0.1:8000/mcp",
        token=token,
        list_tools=True,
        calls=[("reverse_text", {"text": "mcpops"})],
    )
    assert out["ok"], f"{out}\n{journal(app_host, unit(8000))}"
    assert out["server"]["name"] == "example-app", out
    assert out["tools"] == ["reverse_text"], out["tools"]
    assert out["calls"][0]["structured"]["result"] == "spopcm", out["calls"]
    pkgs = app_host.check_output("/opt/mcpops/current/venv/bin/python -m pip list --format=json")
    assert "example-app" in {p["name"] for p in json.loads(pkgs)}


# --------------------------------------------------------------------------------------------
# Rolling, health-gated restarts: a host with two or more instances never stops answering.
# --------------------------------------------------------------------------------------------

_WATCH_PY = """
import json, sys, time, urllib.request
ports, stop, out = [int(p) for p in sys.argv[1].split(",")], sys.argv[2], sys.argv[3]
ticks = gaps = 0
longest = run = 0.0
while True:
    t0 = time.monotonic()
    up = 0
    for p in ports:
        try:
            up += urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1).status == 200
        except Exception:
            pass
    ticks += 1
    if up == 0:
        gaps += 1
        run += time.monotonic() - t0
        longest = max(longest, run)
    else:
        run = 0.0
    try:
        open(stop).close()
        break
    except OSError:
        time.sleep(0.05)
json.dump({"ticks": ticks, "gaps": gaps, "longest_gap_s": round(longest, 3)}, open(out, "w"))
"""


@pytest.mark.timeout(1800)  # two converges of the role on a shared 2-core machine
def test_rolling_restart_keeps_answering(host, ports, site_inventory):
    if len(ports) < 2:
        pytest.skip("needs two or more instances")
    stop, out = "/run/mcpops-watch.stop", "/run/mcpops-watch.json"
    host.run(f"rm -f {stop} {out}")
    pids = {p: main_pid(host, unit(p)) for p in ports}
    watch = shlex.join(["python3", "-c", _WATCH_PY, ",".join(map(str, ports)), stop, out])
    host.run_expect([0], f"nohup {watch} >/dev/null 2>&1 &")
    playbook = REPO / "molecule" / "default" / "mcp_server_only.yml"
    try:
        marker = json.dumps({"mcp_server_extra_env": {"MCPOPS_ROLLING_TEST": str(time.time_ns())}})
        changed = run_playbook(playbook, site_inventory, "-e", marker, timeout=900)
        assert changed.returncode == 0, (changed.stdout + changed.stderr)[-4000:]
        restarted = {p: main_pid(host, unit(p)) for p in ports}
        # Back to the inventory's settings: a second rolling restart, watched too.
        restored = run_playbook(playbook, site_inventory, timeout=900)
        assert restored.returncode == 0, (restored.stdout + restored.stderr)[-4000:]
    finally:
        host.run(f"touch {stop}")
    summary = wait_until(lambda: host.file(out).exists and host.file(out).content_string, timeout=10)
    result = json.loads(summary)
    assert all(restarted[p] not in (0, pids[p]) for p in ports), f"not all restarted: {pids} {restarted}"
    assert result["ticks"] > 50, result
    assert result["gaps"] == 0, f"no instance answered for a while during the rolling restart: {result}"
