"""The monitoring role's Prometheus targets as Ansible renders them for an inventory: one target per
MCP server instance (filter mcpops.deploy.mcp_instances), labelled with the MCP server it serves."""

from __future__ import annotations

import yaml
from role_render import MULTI_SERVER_INVENTORY as INVENTORY
from role_render import render_role

TASKS = """
- name: Render prometheus.yml
  ansible.builtin.template:
    src: "{{ render_templates }}/prometheus.yml.j2"
    dest: "{{ render_out }}/{{ inventory_hostname }}/prometheus.yml"
    mode: "0644"
"""


def test_every_instance_is_a_target_labelled_with_its_server(tmp_path):
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    rendered = render_role(tmp_path / "run", "monitoring", tmp_path / "inventory.yml", "monitoring", TASKS)
    config = yaml.safe_load(rendered["ops1/prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mcp"]
    got = [(c["targets"], c["labels"]["instance"], c["labels"]["server"]) for c in job["static_configs"]]
    # three hosts: TLS, so each target is its host's name (the name its certificate carries)
    assert got == [
        (["app1:8000"], "app1:8000", "notes"),
        (["app1:8001"], "app1:8001", "notes"),
        (["app1:8100"], "app1:8100", "time"),
        (["app2:8000"], "app2:8000", "mcp"),
    ]
