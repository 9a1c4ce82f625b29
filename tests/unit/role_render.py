"""Shared helpers of the unit tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".cache" / "collections"

# App hosts with several MCP servers (app1) and the legacy single one (app2), a load balancer and a
# monitoring host: three hosts, so the instances serve TLS.
MULTI_SERVER_INVENTORY = """
all:
  children:
    mcp_lb:
      hosts:
        lb1: {ansible_host: 10.0.0.2}
    mcp_servers:
      hosts:
        app1:
          ansible_host: 10.0.0.11
          mcp_server_servers:
            - {name: notes, kind: python, ports: [8000, 8001], default: true}
            - {name: time, kind: stdio, pypi: mcp-server-time==2025.9.25, ports: [8100]}
        app2:
          ansible_host: 10.0.0.12
          mcp_server_ports: [8000]
    monitoring:
      hosts:
        ops1: {ansible_host: 10.0.0.40}
"""

PLAYBOOK = """---
- name: Render templates of a role
  hosts: "{{ render_hosts }}"
  gather_facts: false
  roles:
    - role: render
"""


def render_role(
    tmp_path: Path, role: str, inventory: Path, hosts: str, tasks: str, extra_vars=()
) -> dict[str, str]:
    """Run `tasks` in a role that has the defaults and vars of roles/<role>, as Ansible runs them
    (inventory variables, precedence, filters of the collection), on `hosts` of `inventory` over the
    local connection. The tasks write files under render_out/<inventory_hostname>/; returned by
    their paths relative to render_out."""
    assert (COLLECTIONS / "ansible_collections" / "mcpops" / "deploy").exists(), "run scripts/setup.sh first"
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake = tmp_path / "roles" / "render"
    (fake / "tasks").mkdir(parents=True)
    (fake / "tasks" / "main.yml").write_text(
        "---\n- name: Create the output directory\n  ansible.builtin.file:\n"
        '    path: "{{ render_out }}/{{ inventory_hostname }}"\n    state: directory\n    mode: "0755"\n'
        + tasks
    )
    for part in ("defaults", "vars"):
        (fake / part).mkdir()
        if (ROOT / "roles" / role / part / "main.yml").exists():
            (fake / part / "main.yml").symlink_to(ROOT / "roles" / role / part / "main.yml")
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_NOCOLOR": "1",
    }
    args = [
        "-e",
        "ansible_connection=local",
        "-e",
        "ansible_python_interpreter={{ ansible_playbook_python }}",
    ]
    for item in (
        f"render_out={out}",
        f"render_hosts={hosts}",
        f"render_templates={ROOT / 'roles' / role / 'templates'}",
        *extra_vars,
    ):
        args += ["-e", item]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "play.yml", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {str(f.relative_to(out)): f.read_text() for f in sorted(out.rglob("*")) if f.is_file()}
