"""The plugins as Ansible itself loads and calls them: by FQCN from the collection, with real hostvars.

Unit tests call the functions with plain dicts; here a playbook runs them against an inventory, so
HostVars objects, inventory-templated values and Jinja's select/test syntax are part of the check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".cache" / "collections"

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    app:
      vars:
        app_net: 10.0.2.0/24
      hosts:
        app1: {ansible_host: 10.0.0.11, mcp_server_ports: [8000, 8001]}
        app2:
          ansible_host: app2.example.com
          mcp_server_instances: [8100]
          firewall_address: "{{ app_net }}"  # templated in app2's own context
    lb:
      hosts:
        lb1: {ansible_host: "2001:db8::2"}
    mcp_servers:
      children:
        app:
    mcp_lb:
      children:
        lb:
    redis:
      hosts:
        db1:
          ansible_host: 10.0.0.30
          redis_port: "{{ 6000 + 380 }}"
          redis_bind_addresses: ["-::1", "127.0.0.1", "fd00::5"]
  hosts:
    ghost: {ansible_host: ghost.example.com}
    app3:
      ansible_host: 10.0.0.13
      time_version: "2025.9.25"
      mcp_server_servers:
        - {name: notes, kind: python, ports: [8000], default: true}
        - {name: time, kind: stdio, pypi: "mcp-server-time=={{ time_version }}", ports: [8100]}
    localhost: {}
"""

PLAYBOOK = """
- name: Call every filter and test of the collection
  hosts: localhost
  gather_facts: false
  vars:
    hosts_to_allow: "{{ groups['lb'] + groups['app'] + ['ghost', 'app1'] }}"
    samples: ["10.0.0.1", "10.0.0.0/8", "2001:db8::1", "fe80::1%eth0", "mcp.example.com", "app:mcp",
              "pkg.mod:obj", "mcpops:", "a b", 8000]
    one_host: {mcp_servers: [app1]}
  tasks:
    - name: Write the results
      ansible.builtin.copy:
        dest: "{{ out }}"
        mode: "0600"
        content: >-
          {{ {
            'instances': groups['app'] | mcpops.deploy.mcp_instances(hostvars, 'app1'),
            'instances_one_host': ['app1'] | mcpops.deploy.mcp_instances(hostvars, 'app1', groups=one_host),
            'addresses': hosts_to_allow | mcpops.deploy.host_addresses(hostvars),
            'redis_from_app': 'db1' | mcpops.deploy.redis_url(hostvars, 'app1'),
            'redis_on_db': 'db1' | mcpops.deploy.redis_url(hostvars, 'db1', scheme='rediss'),
            'redis_plain_on_db': 'db1' | mcpops.deploy.redis_url(hostvars, 'db1', scheme='redis'),
            'redis_tls': 'db1' | mcpops.deploy.redis_tls(hostvars),
            'servers_legacy': hostvars['app1'] | mcpops.deploy.mcp_servers,
            'servers_listed': hostvars['app3'] | mcpops.deploy.mcp_servers,
            'instances_listed': ['app3'] | mcpops.deploy.mcp_instances(hostvars, 'lb1'),
            'ip_address': samples | select('mcpops.deploy.ip_address') | list,
            'ip_network': samples | select('mcpops.deploy.ip_network') | list,
            'dns_name': samples | select('mcpops.deploy.dns_name') | list,
            'mcp_app_path': samples | select('mcpops.deploy.mcp_app_path') | list,
            'redis_key_prefix': samples | select('mcpops.deploy.redis_key_prefix') | list,
            'is_syntax': '10.0.0.1' is mcpops.deploy.ip_address and 'x y' is not mcpops.deploy.dns_name,
          } | to_json }}
"""


def test_plugins_in_a_playbook(tmp_path):
    assert (COLLECTIONS / "ansible_collections" / "mcpops" / "deploy").exists(), "run scripts/setup.sh first"
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    out = tmp_path / "out.json"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "inventory.yml",
            "play.yml",
            "-e",
            f"out={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(out.read_text())
    # mcp_servers (app1, app2) and mcp_lb (lb1) are three hosts: TLS, read from the real hostvars' groups.
    tls = {"tls": True, "tls_name": "mcpops-server.internal", "server": "mcp", "default": True}
    tls["affinity"] = "session"  # the legacy server keeps no per-principal children
    assert got["instances"] == [
        {"host": "app1", "address": "127.0.0.1", "port": 8000, "route": "app1-8000", **tls},
        {"host": "app1", "address": "127.0.0.1", "port": 8001, "route": "app1-8001", **tls},
        {"host": "app2", "address": "app2.example.com", "port": 8100, "route": "app2-8100", **tls},
    ]
    # mcp_servers reads one host's variables as Ansible templates them (the pin comes from a variable).
    assert [(s["name"], s["ports"]) for s in got["servers_legacy"]] == [("mcp", [8000, 8001])]
    time_pin = {"name": "mcp-server-time", "version": "2025.9.25"}
    assert [s["package"] for s in got["servers_listed"]] == [{}, time_pin]
    # mcp_instances reads the same list through real hostvars: every server's ports, named.
    assert [(i["server"], i["default"], i["port"]) for i in got["instances_listed"]] == [
        ("notes", True, 8000),
        ("time", False, 8100),
    ]
    # The groups keyword wins over the hostvars' copy: one host, plain.
    assert [i["tls"] for i in got["instances_one_host"]] == [False, False]
    assert got["addresses"] == {
        "lb1": ["2001:db8::2"],
        "app1": ["10.0.0.11"],
        "app2": ["10.0.2.0/24"],
        "ghost": [],
    }
    assert list(got["addresses"]) == ["lb1", "app1", "app2", "ghost"]
    # app1 is another host than db1: Redis serves TLS only, read from the real `groups` in hostvars
    assert got["redis_tls"] is True
    assert got["redis_from_app"] == "rediss://[fd00::5]:6380/0"
    assert got["redis_plain_on_db"] == "redis://[::1]:6380/0"
    assert got["redis_on_db"] == "rediss://[::1]:6380/0"
    assert got["ip_address"] == ["10.0.0.1", "2001:db8::1"]
    assert got["ip_network"] == ["10.0.0.1", "10.0.0.0/8", "2001:db8::1"]
    assert got["dns_name"] == ["mcp.example.com"]
    assert got["mcp_app_path"] == ["app:mcp", "pkg.mod:obj"]
    assert got["redis_key_prefix"] == [
        "10.0.0.1",
        "2001:db8::1",
        "mcp.example.com",
        "app:mcp",
        "pkg.mod:obj",
        "mcpops:",
    ]
    assert got["is_syntax"] is True
