"""The firewall opens the instance ports of every MCP server of an app host (filter
mcpops.deploy.mcp_instances) to the load balancers and monitoring hosts, and to nobody else."""

from __future__ import annotations

import json

from role_render import MULTI_SERVER_INVENTORY as INVENTORY
from role_render import render_role

TASKS = """
- name: Write the restricted services
  ansible.builtin.copy:
    content: "{{ __firewall_restricted | to_json }}"
    dest: "{{ render_out }}/{{ inventory_hostname }}/restricted.json"
    mode: "0644"
"""


def test_every_servers_ports_are_open_to_the_load_balancers_and_monitoring(tmp_path):
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    rendered = render_role(tmp_path / "run", "firewall", tmp_path / "inventory.yml", "mcp_servers", TASKS)
    services = {h: json.loads(rendered[f"{h}/restricted.json"]) for h in ("app1", "app2")}
    (app1,) = [s for s in services["app1"] if s["key"] == "instances"]
    assert app1["ports"] == [8000, 8001, 8100]
    assert sorted(app1["sources"]) == ["10.0.0.2", "10.0.0.40"]
    (app2,) = [s for s in services["app2"] if s["key"] == "instances"]
    assert app2["ports"] == [8000]
