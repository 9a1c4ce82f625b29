"""The mcp_server role's per-server files as Ansible renders them (issue 18): each instance's drop-in
hands it copies of the host's files of its own instead of a group that reads them, a server's own
settings win over mcp_server_extra_config, and no secret value is written into either file."""

from __future__ import annotations

import json

import pytest
import yaml
from mcpops_server import config as runtime_config
from role_render import render_role

# Three hosts (the instances serve TLS with the pki certificate), Redis on its own host (rediss://),
# a pinned JWKS, a key ring and a global extra config that would collapse every server onto one
# Redis prefix and one bridge size.
INVENTORY = """
all:
  children:
    mcp_lb:
      hosts:
        lb1: {ansible_host: 10.0.0.2}
    redis:
      hosts:
        redis1: {ansible_host: 10.0.0.30, redis_port: 6379, redis_tls_port: 6380}
    mcp_servers:
      hosts:
        app1:
          ansible_host: 10.0.0.11
          mcp_server_servers:
            - {name: notes, kind: python, ports: [8000, 8001], default: true}
            - name: time
              kind: stdio
              pypi: mcp-server-time==2025.9.25
              ports: [8100]
              env: {TZ: UTC}
              secrets: {API_KEY: s3cret-api-value, OTHER: second-secret-value}
              bridge: {max_children: 4}
            - name: odd
              kind: stdio
              executable: '/opt/my tools/srv \\'
              ports: [8200]
        app2:
          ansible_host: 10.0.0.12
          mcp_server_ports: [8000]
  vars:
    mcp_server_auth_resource_url: https://mcp.example.com/mcp
    mcp_server_auth_server_url: https://login.example.com
    mcp_server_auth_jwks_file: files/jwks.json
    mcp_server_request_state_keys: [c2VjcmV0LWtleS1yaW5nLXZhbHVlLXRoYXQtaXMtbG9uZw==]
    mcp_server_redis_password: redis-pass-value
    mcp_server_extra_config:
      redis: {key_prefix: 'global:'}
      bridge: {max_children: 9, idle_timeout: 30}
      logging: {level: DEBUG}
      server: {name: everyone}
"""

TASKS = """
- name: Resolve the stdio servers' commands as servers_artifacts.yml would
  ansible.builtin.set_fact:
    __mcp_server_commands:
      time: {argv: [/opt/mcpops/servers/time/releases/r1/venv/bin/mcp-server-time], release: r1}
      odd: {argv: ['/opt/my tools/srv \\'], release: ''}
- name: Render the single server's config.yaml
  ansible.builtin.template:
    src: "{{ render_templates }}/config.yaml.j2"
    dest: "{{ render_out }}/{{ inventory_hostname }}/config.yaml"
    mode: "0644"
  when: not __mcp_server_multi | bool
- name: Render each server's config.yaml
  ansible.builtin.template:
    src: "{{ render_templates }}/config.yaml.j2"
    dest: "{{ render_out }}/{{ inventory_hostname }}/{{ __mcp_server_srv.name }}.yaml"
    mode: "0644"
  loop: "{{ __mcp_server_servers }}"
  loop_control: {loop_var: __mcp_server_srv}
  when: __mcp_server_multi | bool
- name: Render each instance's drop-in
  ansible.builtin.template:
    src: "{{ render_templates }}/mcpops-server-dropin.conf.j2"
    dest: "{{ render_out }}/{{ inventory_hostname }}/{{ item.1 }}.conf"
    mode: "0644"
  loop: "{{ __mcp_server_servers | subelements('ports') }}"
  when: __mcp_server_multi | bool
- name: Write what migrate runs with (configure.yml)
  ansible.builtin.copy:
    content: "{{ __mcp_server_configs | to_json }}"
    dest: "{{ render_out }}/{{ inventory_hostname }}/configs.json"
    mode: "0644"
"""

SECRETS = ("s3cret-api-value", "second-secret-value", "redis-pass-value", "c2VjcmV0LWtleS1yaW5n")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The files of both app hosts, rendered once for the module's tests."""
    tmp_path = tmp_path_factory.mktemp("mcp_server_templates")
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    return render_role(tmp_path / "run", "mcp_server", tmp_path / "inventory.yml", "mcp_servers", TASKS)


def _settings(dropin: str) -> list[tuple[str, str]]:
    return [
        tuple(line.split("=", 1))
        for line in dropin.splitlines()
        if line and line[0] not in "#[" and "=" in line
    ]


ORIGINALS = {
    "jwks.json": "/etc/mcpops/jwks.json",
    "request_state_keys": "/etc/mcpops/request_state_keys",
    "tls.crt": "/etc/mcpops/pki/host.crt",
    "tls.key": "/etc/mcpops/pki/host.key",
    "redis-ca.crt": "/etc/mcpops/pki/ca.crt",
    "redis.crt": "/etc/mcpops/pki/host.crt",
    "redis.key": "/etc/mcpops/pki/host.key",
}
SERVER_OF_PORT = {"8000": "notes", "8001": "notes", "8100": "time", "8200": "odd"}


def test_each_instance_reads_its_servers_own_copies_named_by_the_runtimes_variables(rendered):
    config = yaml.safe_load(rendered["app1/time.yaml"])
    for port, server in SERVER_OF_PORT.items():
        settings = _settings(rendered[f"app1/{port}.conf"])
        assert ("SupplementaryGroups", "") in settings, "the template unit's ssl-cert group is not reset"
        assert not [k for k, _ in settings if k == "LoadCredential"]
        base = f"/etc/mcpops/servers/{server}/"
        variables = dict(
            v.split("=", 1)
            for k, v in settings
            if k == "Environment" and "=" + base in v and not v.startswith("MCPOPS_CONFIG=")
        )
        assert sorted(v.removeprefix(base) for v in variables.values()) == sorted(ORIGINALS)
        for variable, value in variables.items():
            # The variable is the runtime's name of the setting config.yaml points at the original:
            # the environment overrides it, so the instance reads its server's copy instead.
            section, key = runtime_config.ENV_VARS[variable].split(".")
            assert config[section][key] == ORIGINALS[value.removeprefix(base)], variable


def test_a_servers_own_settings_win_over_the_extra_config_and_the_single_server_keeps_it(rendered):
    notes, time_ = (yaml.safe_load(rendered[f"app1/{n}.yaml"]) for n in ("notes", "time"))
    legacy = yaml.safe_load(rendered["app2/config.yaml"])
    assert (notes["redis"]["key_prefix"], time_["redis"]["key_prefix"]) == ("mcpops:notes:", "mcpops:time:")
    assert (notes["server"]["name"], time_["server"]["name"]) == ("notes", "time")
    assert time_["bridge"]["max_children"] == 4 and time_["bridge"]["idle_timeout"] == 30
    assert time_["bridge"]["env"] == {"TZ": "UTC"}
    assert time_["bridge"]["env_file"] == "/etc/mcpops/servers/time/child.env"
    assert notes["logging"]["level"] == time_["logging"]["level"] == "DEBUG"
    # Without mcp_server_servers the extra config is still merged last, as before.
    assert legacy["redis"]["key_prefix"] == "global:" and legacy["server"]["name"] == "everyone"


def test_no_secret_value_is_written_into_a_config_or_a_drop_in(rendered):
    leaked = [(path, s) for path, text in rendered.items() for s in SECRETS if s in text]
    assert leaked == []


def test_the_executable_is_quoted_in_the_drop_ins_comment_and_the_memory_fits_the_children(rendered):
    odd = rendered["app1/8200.conf"]
    assert '# Instance 8200 of server "odd" (stdio: "/opt/my tools/srv \\\\").' in odd.splitlines()
    assert not [line for line in odd.splitlines() if line.endswith("\\")]
    assert ("MemoryMax", "2560M") in _settings(odd)  # 256M + 9 children (the extra config's) x 256M
    assert ("MemoryMax", "1280M") in _settings(rendered["app1/8100.conf"])  # its own max_children: 4


def test_migrate_runs_with_the_copies_of_the_servers_instances(rendered):
    """migrate runs as the server's user in a transient unit (configure.yml): the same copies reach it
    through the same variables."""
    notes = next(
        c for c in json.loads(rendered["app1/configs.json"]) if c["config"].endswith("/notes/config.yaml")
    )
    settings = _settings(rendered["app1/8000.conf"])
    want = ["--unit=mcpops-migrate-notes"]
    want += [
        "--setenv=" + v
        for k, v in settings
        if k == "Environment" and "=/etc/mcpops/servers/notes/" in v and not v.startswith("MCPOPS_CONFIG=")
    ]
    assert notes["run_args"] == want and len(want) == 8
    assert json.loads(rendered["app2/configs.json"]) == [
        {"config": "/etc/mcpops/config.yaml", "user": "mcpuser", "group": "mcpuser", "kind": "python"}
    ]
