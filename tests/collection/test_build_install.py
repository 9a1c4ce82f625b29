"""The collection as users get it: built, installed offline, roles resolved by FQCN from the copy.

Ansible Galaxy is unreachable here, so the install is `--offline`; the dependencies
(community.general, community.crypto, ansible.posix) come from the `ansible` package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
CONTAINER = "mcpops-collection-test"
DOCKER_CONNECTION = "community.docker.docker"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def isolated_env(collections_dir: Path) -> dict[str, str]:
    """An environment that sees only the installed copy, never the working tree's link."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_dir)
    env["ANSIBLE_INJECT_FACT_VARS"] = "false"
    env["ANSIBLE_HOST_KEY_CHECKING"] = "false"
    return env


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out), str(ROOT)], cwd=out)
    (built,) = out.glob("mcpops-deploy-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("collections")
    run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--offline", str(tarball), "-p", str(dest)],
        cwd=dest,
        env=isolated_env(dest),
    )
    return dest


def test_tarball_ships_what_users_need_and_nothing_else(tarball):
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for needed in ["MANIFEST.json", "playbooks/site.yml", "plugins/filter/topology.py", "pyproject.toml"]:
        assert needed in names, f"{needed} missing from {tarball.name}"
    # the mcp_server role builds the server wheel on the controller from the installed copy
    assert "server/mcpops_server/cli.py" in names or "server/mcpops_server/__init__.py" in names
    for role in ROLES:
        assert f"roles/{role}/tasks/main.yml" in names
        assert f"roles/{role}/meta/argument_specs.yml" in names
    for dropped in ["molecule", "tests", "bench", ".ci", "scripts", "server/tests", ".venv", ".cache"]:
        leaked = sorted(n for n in names if n == dropped or n.startswith(dropped + "/"))
        assert not leaked, f"build_ignore misses {dropped}: {leaked[:5]}"


def test_installed_offline_into_an_empty_directory(installed):
    manifest = installed / "ansible_collections" / "mcpops" / "deploy" / "MANIFEST.json"
    assert manifest.is_file()
    listing = run(
        [str(BIN / "ansible-galaxy"), "collection", "list", "mcpops.deploy", "-p", str(installed)],
        cwd=installed,
        env=isolated_env(installed),
    ).stdout
    assert "mcpops.deploy" in listing


def test_roles_and_playbook_resolve_by_fqcn_from_the_installed_copy(installed, tmp_path):
    plays = [
        "- name: Every role by its FQCN",
        "  hosts: all",
        "  gather_facts: false",
        "  roles:",
        *[f"    - mcpops.deploy.{role}" for role in ROLES],
        "- name: The site playbook by its FQCN",
        "  ansible.builtin.import_playbook: mcpops.deploy.site",
    ]
    playbook = tmp_path / "fqcn.yml"
    playbook.write_text("---\n" + "\n".join(plays) + "\n")
    inventory = tmp_path / "hosts.yml"
    groups = "".join(f"    {g}: {{hosts: {{h1: {{}}}}}}\n" for g in ("mcp_servers", "mcp_lb", "redis"))
    inventory.write_text("all:\n  children:\n" + groups)
    assert ROLES, "no roles found"
    out = run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "--syntax-check", str(playbook)],
        cwd=tmp_path,
        env=isolated_env(installed),
    )
    assert "ERROR" not in out.stderr


@pytest.fixture
def container():
    run([str(ROOT / "scripts" / "lab-host"), CONTAINER], cwd=ROOT)
    yield CONTAINER
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)


def test_a_role_from_the_installed_copy_converges_a_real_host(installed, tmp_path, container):
    """One real run: the redis role from the tarball, against a systemd container."""
    password = "collection-test-admin-0123456789"
    playbook = tmp_path / "redis.yml"
    playbook.write_text(
        "---\n"
        "- name: Redis from the installed collection\n"
        "  hosts: all\n"
        "  roles:\n"
        "    - role: mcpops.deploy.redis\n"
        "      vars:\n"
        "        redis_app_password: collection-test-app-0123456789\n"
        f"        redis_admin_password: {password}\n"
    )
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"all:\n  hosts:\n    {container}:\n      ansible_connection: {DOCKER_CONNECTION}\n")
    out = run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "-v"],
        cwd=tmp_path,
        env=isolated_env(installed),
    ).stdout
    assert "failed=0" in out
    cli = ["redis-cli", "--user", "admin", "ping"]
    ping = subprocess.run(
        ["docker", "exec", "-e", f"REDISCLI_AUTH={password}", container, *cli],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
