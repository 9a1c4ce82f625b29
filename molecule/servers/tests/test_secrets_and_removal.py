"""Secrets never printed, and a removed server really gone (issue 18: "No secret value appears in the
output of site.yml at -vvv, on a failing task (a check-config refusal, for example), or in --diff. A
multi-line value is either refused before any host changes or passed on intact"; "removing a server
from the inventory stops it and removes its user, secrets and (unless the user asks to keep it) its data").

The site playbook runs three times from the controller: whole, with one more server (`scratch`, the
hostile server again, with a secret of this test's) at -vvv with --diff; at -vvv with a configuration
its check-config refuses; and with a secret holding a newline. Then once as the inventory stands, which
removes `scratch`. The last three run the mcp_server role only (--tags mcp_server): the role that
reads the secrets, refuses the bad configuration and removes the server. On a failure only booleans
and the output's tail without any secret are printed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import GROUP_VARS, SERVERS, lab_secret, main_pid, run_site, unit

pytestmark = pytest.mark.timeout(900)  # each test is a site run (-vvv ones are slower)

SCRATCH = {
    "name": "scratch",
    "kind": "stdio",
    "executable": "/usr/local/bin/mcpops-hostile",
    "ports": [8600],
    "isolation": "per_principal",
    "bridge": {"max_children": 2, "child_memory_max": "32M"},
}


def with_servers(extra_servers: list[dict], **more) -> Path:
    servers = yaml.safe_load((GROUP_VARS / "10_servers.yml").read_text())["mcp_server_servers"]
    path = Path(tempfile.mkdtemp(prefix="mcpops-secrets-")) / "vars.yml"
    path.write_text(yaml.safe_dump({"mcp_server_servers": servers + extra_servers, **more}))
    return path


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<SECRET>")
    return text[-4000:]


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    return {
        "scratch": "scratch-" + os.urandom(12).hex(),
        "everything": lab_secret("everything_probe"),
        "redis": lab_secret("redis_app"),
    }


def leaked(output: str, secrets: dict[str, str]) -> list[str]:
    return sorted(name for name, value in secrets.items() if value in output)


def test_a_new_server_with_a_secret_at_vvv_and_diff_prints_no_secret(srv, secrets):
    scratch = dict(SCRATCH, secrets={"SCRATCH_TOKEN": secrets["scratch"]}, env={"MODE": "test"})
    res = run_site("-vvv", "--diff", "-e", f"@{with_servers([scratch])}", timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, redact(out, list(secrets.values()))
    assert leaked(out, secrets) == [], "a secret value is in the output of site.yml -vvv --diff"
    assert srv.service(unit(8600)).is_running
    env = srv.file("/etc/mcpops/servers/scratch/child.env")
    assert env.user == "mcp-scratch" and env.mode == 0o600
    assert f"SCRATCH_TOKEN={secrets['scratch']}\n" in env.content_string, "the secret did not arrive intact"


def test_a_check_config_refusal_at_vvv_prints_no_secret_and_changes_nothing(srv, secrets):
    scratch = dict(SCRATCH, secrets={"SCRATCH_TOKEN": secrets["scratch"]}, env={"MODE": "test"})
    before = {name: srv.file(f"/etc/mcpops/servers/{name}/config.yaml").sha256sum for name in SERVERS}
    pids = {port: main_pid(srv, port) for s in SERVERS.values() for port in s["ports"]}
    bad = with_servers([scratch], mcp_server_extra_config={"ratelimit": {"requests_per_minute": -5}})
    res = run_site("-vvv", "-e", f"@{bad}", "--tags", "mcp_server", timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode != 0, redact(out, list(secrets.values()))
    assert "ratelimit.requests_per_minute" in out, redact(out, list(secrets.values()))
    assert leaked(out, secrets) == [], "a secret value is in the output of a failing site.yml -vvv"
    assert {name: srv.file(f"/etc/mcpops/servers/{name}/config.yaml").sha256sum for name in SERVERS} == before
    assert {port: main_pid(srv, port) for s in SERVERS.values() for port in s["ports"]} == pids


def test_a_secret_with_a_newline_is_refused_before_any_change_without_showing_it(srv, secrets):
    cut = "first-line-" + os.urandom(6).hex()
    scratch = dict(SCRATCH, secrets={"SCRATCH_TOKEN": f"{cut}\nINJECTED=1"})
    env_before = srv.file("/etc/mcpops/servers/scratch/child.env").sha256sum
    res = run_site("-vvv", "-e", f"@{with_servers([scratch])}", "--tags", "mcp_server", timeout=600)
    out = res.stdout + res.stderr
    flat = " ".join(out.split())
    assert res.returncode != 0
    assert "(scratch).secrets.SCRATCH_TOKEN = '<hidden>'" in flat, redact(out, [cut, *secrets.values()])
    assert cut not in out and leaked(out, secrets) == [], "a refused secret is in the output"
    assert srv.file("/etc/mcpops/servers/scratch/child.env").sha256sum == env_before


def test_removing_the_server_from_the_inventory_removes_its_instances_user_secrets_and_data(srv):
    assert srv.user("mcp-scratch").exists
    res = run_site(
        "--tags", "mcp_server", timeout=900
    )  # the role that removes it; the others follow the list
    assert res.returncode == 0, res.stdout[-4000:]
    assert not srv.service(unit(8600)).is_running
    assert not srv.file("/etc/systemd/system/mcpops-server@8600.service.d/10-server.conf").exists
    assert not srv.user("mcp-scratch").exists
    assert not srv.group("mcp-scratch").exists
    for path in ("/etc/mcpops/servers/scratch", "/var/lib/mcpops-scratch", "/opt/mcpops/servers/scratch"):
        assert not srv.file(path).exists, f"{path} is left behind"
    for name in SERVERS:  # the others are untouched
        assert srv.user(SERVERS[name]["user"]).exists
