"""inventories/example, the inventory users copy: every group of site.yml, hosts in them, and
group_vars that Ansible reads (secrets only as vault references)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventories" / "example"
GROUPS = ("mcp_lb", "mcp_servers", "redis", "monitoring", "log_collectors")


def inventory() -> dict:
    exe = Path(sys.executable).with_name("ansible-inventory")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    out = subprocess.run(
        [str(exe), "-i", str(EXAMPLE), "--list", "--export"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    return json.loads(out.stdout)


def test_every_group_of_site_yml_has_hosts():
    inv = inventory()
    for group in GROUPS:
        assert inv.get(group, {}).get("hosts"), f"inventories/example has no hosts in {group}"
    site = (ROOT / "playbooks" / "site.yml").read_text()
    for group in GROUPS:
        assert group in site


def test_group_vars_are_read_and_secrets_are_vault_references():
    inv = inventory()
    shared = inv["all"]["vars"]
    assert shared["pki_ca_dir"], "the example must say where the deployment CA lives"
    for name in (
        "redis_app_password",
        "redis_admin_password",
        "redis_exporter_password",
        "mcp_server_redis_password",
    ):
        assert re.fullmatch(r"\{\{ vault_[a-z_]+ \}\}", shared[name]), f"{name} is not a vault reference"
    assert inv["mcp_servers"]["vars"]["mcp_server_listen_address"] == "0.0.0.0"
    probe = inv["mcp_servers"]["vars"]["mcp_server_probe_token"]
    assert re.fullmatch(r"\{\{ vault_[a-z_]+ \}\}", probe), "mcp_server_probe_token is not a vault reference"
    assert inv["monitoring"]["vars"]["monitoring_alertmanager_receiver"]["type"] == "webhook"
    assert inv["mcp_lb"]["vars"]["nginx_tls_source"] in ("acme", "files")
