"""nginx.conf as Ansible renders it from the role's template, defaults and vars for whole inventories.

The legacy single-server deployments (the lab inventory, the example inventory) must render exactly
the files in tests/unit/data/nginx/, which were rendered by the template before several servers per
endpoint (issue 12) existed: byte for byte, the rolling upgrade's out-of-rotation variants included.
Inventories with mcp_server_servers get a route per server; when an nginx binary is found (on PATH or
in MCPOPS_NGINX_BIN) those renderings must also pass `nginx -t`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from role_render import render_role

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "unit" / "data" / "nginx"
NGINX_ROLE = ROOT / "roles" / "nginx"

# For the load balancer running it: nginx.conf with every app host in rotation (all.conf) and with
# each one out, as tasks/rotation_prepare.yml renders them.
RENDER_TASKS = """
- name: Render nginx.conf with every app host in rotation
  ansible.builtin.template:
    src: "{{ render_src }}"
    dest: "{{ render_out }}/{{ inventory_hostname }}/all.conf"
    mode: "0644"
  vars:
    __nginx_http2_directive: false
- name: Render nginx.conf with one app host out of rotation
  ansible.builtin.template:
    src: "{{ render_src }}"
    dest: "{{ render_out }}/{{ inventory_hostname }}/out-{{ __nginx_rotation_host }}.conf"
    mode: "0644"
  loop: "{{ groups[nginx_app_group] | default([]) }}"
  loop_control:
    loop_var: __nginx_rotation_host
  vars:
    __nginx_http2_directive: false
    __nginx_rotation_out: ["{{ __nginx_rotation_host }}"]
"""

# The example inventory's shape (one load balancer, two app hosts: TLS to the instances) with several
# servers. app2 runs no "time": its instances must not appear in time's upstreams.
MULTI = """
all:
  vars:
    nginx_server_name: mcp.example.com
    nginx_tls_source: private_ca
    nginx_metrics_allowed_sources: [10.0.0.40]
  children:
    mcp_lb:
      hosts:
        lb1.example.com: {ansible_host: 10.0.0.2}
    mcp_servers:
      hosts:
        app1.example.com:
          ansible_host: 10.0.0.11
          mcp_server_servers:
            - {name: notes, kind: python, ports: [8000, 8001], default: %(default)s}
            - {name: time, kind: stdio, pypi: mcp-server-time==2025.9.25, ports: [8100]}
            - {name: my-tools, kind: stdio, executable: /usr/local/bin/tools, ports: [8200]}
        app2.example.com:
          ansible_host: 10.0.0.12
          mcp_server_servers:
            - {name: notes, kind: python, ports: [8000], default: %(default)s}
            - {name: my-tools, kind: stdio, executable: /usr/local/bin/tools, ports: [8200]}
    monitoring:
      hosts:
        ops1.example.com: {ansible_host: 10.0.0.40}
"""


def render(tmp_path: Path, inventory: Path, src: Path | None = None) -> dict[str, str]:
    """Every rendered file of the inventory's load balancers, by "<lb>/<file>"."""
    src = src or NGINX_ROLE / "templates" / "nginx.conf.j2"
    return render_role(tmp_path, "nginx", inventory, "mcp_lb", RENDER_TASKS, [f"render_src={src}"])


@pytest.mark.parametrize("inventory", ["local", "example"])
def test_a_legacy_single_server_inventory_renders_byte_for_byte_as_before(tmp_path, inventory):
    got = render(tmp_path, ROOT / "inventories" / inventory)
    expected = {
        str(f.relative_to(DATA / inventory)): f.read_text()
        for f in sorted((DATA / inventory).rglob("*.conf"))
    }
    assert expected, f"no reference renderings in {DATA / inventory}"
    assert sorted(got) == sorted(expected)
    for name, text in expected.items():
        assert got[name] == text, f"{inventory}/{name} differs from the rendering before issue 12"


def _multi(tmp_path: Path, default: bool) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(MULTI % {"default": "true" if default else "false"})
    return render(tmp_path, inventory)


def _block(conf: str, head: str) -> str:
    """The body of the block that starts with `head {` (one level of braces)."""
    start = conf.index(head + " {")
    return conf[start : conf.index("\n\t}", start)]


def test_several_servers_get_an_upstream_map_and_location_each(tmp_path):
    conf = _multi(tmp_path, default=True)["lb1.example.com/all.conf"]
    app1, app2 = "10.0.0.11", "10.0.0.12"
    # /health and /metrics: every instance of every server
    assert re.findall(r"server (\S+) max_fails", _block(conf, "upstream mcpops_all")) == [
        f"{app1}:8000",
        f"{app1}:8001",
        f"{app1}:8100",
        f"{app1}:8200",
        f"{app2}:8000",
        f"{app2}:8200",
    ]
    # one upstream per server, of its instances only (the name sanitised: my-tools)
    servers = {
        name: re.findall(r"server (\S+) max_fails", _block(conf, f"upstream mcpops_{name}_all"))
        for name in ("notes", "time", "my_tools")
    }
    assert servers == {
        "notes": [f"{app1}:8000", f"{app1}:8001", f"{app2}:8000"],
        "time": [f"{app1}:8100"],
        "my_tools": [f"{app1}:8200", f"{app2}:8200"],
    }
    # a session route's backups are its own server's other instances, never another server's
    notes_route = _block(conf, "upstream mcpops_app1examplecom_8001")
    assert re.findall(r"server (\S+) backup;", notes_route) == [f"{app1}:8000", f"{app2}:8000"]
    assert re.findall(r"server (\S+) backup;", _block(conf, "upstream mcpops_app1examplecom_8100")) == []
    assert re.findall(r"server (\S+) backup;", _block(conf, "upstream mcpops_app2examplecom_8200")) == [
        f"{app1}:8200"
    ]
    # one session map per server, defaulting to the server's upstream, naming only its routes
    tools_map = _block(conf, "map $http_mcp_session_id $mcpops_upstream_my_tools")
    assert "default mcpops_my_tools_all;" in tools_map
    assert re.findall(r'"~\^(\S+)\\\." ', tools_map) == ["app1examplecom\\-8200", "app2examplecom\\-8200"]
    assert "map $http_mcp_session_id $mcpops_upstream {" not in conf
    # the locations: per server /<name>/mcp (instances serve /mcp) and its metadata
    for name, var in (("notes", "notes"), ("time", "time"), ("my-tools", "my_tools")):
        loc = _block(conf.replace("\n\t\t}", "\n\t}"), f"location ~ ^/{name}/mcp/?$")
        assert "limit_req zone=mcpops_req burst=200 nodelay;" in loc and "limit_conn mcpops_conn" in loc
        assert f"set $mcpops_route $mcpops_upstream_{var};" in loc
        assert f"proxy_pass https://$mcpops_upstream_{var}/mcp$is_args$args;" in loc
        meta = _block(
            conf.replace("\n\t\t}", "\n\t}"), f"location = /.well-known/oauth-protected-resource/{name}/mcp"
        )
        assert f"proxy_pass https://mcpops_{var}_all;" in meta
    # the default server (notes) also at /mcp and the root metadata
    assert "proxy_pass https://$mcpops_upstream_notes;" in _block(
        conf.replace("\n\t\t}", "\n\t}"), "location ~ ^/mcp/?$"
    )
    assert "proxy_pass https://mcpops_notes_all;" in _block(
        conf.replace("\n\t\t}", "\n\t}"), "location ^~ /.well-known/oauth-protected-resource"
    )
    for loc in ("location = /health", "location = /metrics"):
        assert "proxy_pass https://mcpops_all;" in _block(conf.replace("\n\t\t}", "\n\t}"), loc)
    # the access log's route is the upstream a location chose
    assert '"route":"$mcpops_route"' in conf and '"route":"$mcpops_upstream"' not in conf
    # zone: an upper bound of n * (n + 2) servers of about 512 bytes (6 instances: 1m + 1)
    assert "zone mcpops_upstreams 2m;" in conf


def test_without_a_default_server_mcp_is_not_routed(tmp_path):
    conf = _multi(tmp_path, default=False)["lb1.example.com/all.conf"]
    assert "location ~ ^/mcp/?$" not in conf
    assert "location ^~ /.well-known/oauth-protected-resource" not in conf
    assert "location ~ ^/notes/mcp/?$" in conf
    assert "location = /.well-known/oauth-protected-resource/notes/mcp" in conf


def _down(block: str) -> list[str]:
    """The servers of an upstream marked down (taking no requests), backups included."""
    return re.findall(r"server (\S+) [^;]*\bdown;", block)


def test_rotation_marks_the_host_down_where_its_server_lives_on_in_another_host(tmp_path):
    rendered = _multi(tmp_path, default=True)
    out1 = rendered["lb1.example.com/out-app1.example.com.conf"]
    app1 = ["10.0.0.11:8000", "10.0.0.11:8001", "10.0.0.11:8100", "10.0.0.11:8200"]
    # app1 out: down in mcpops_all and in the upstreams of notes and my-tools (app2 runs them too) ...
    assert _down(_block(out1, "upstream mcpops_all")) == app1
    assert _down(_block(out1, "upstream mcpops_notes_all")) == app1[:2]
    assert _down(_block(out1, "upstream mcpops_my_tools_all")) == app1[3:]
    # ... and as backups of app2's sessions
    assert _down(_block(out1, "upstream mcpops_app2examplecom_8000")) == app1[:2]
    # but time, which only app1 runs, keeps its instance (down would refuse every new session)
    assert _down(_block(out1, "upstream mcpops_time_all")) == []
    # the owner of a session still serves it: a route's own instance is never down (its backups on the
    # same host are)
    assert _down(_block(out1, "upstream mcpops_app1examplecom_8001")) == ["10.0.0.11:8000"]
    out2 = rendered["lb1.example.com/out-app2.example.com.conf"]
    assert _down(_block(out2, "upstream mcpops_my_tools_all")) == ["10.0.0.12:8200"]
    assert _down(_block(out2, "upstream mcpops_time_all")) == []
    assert _down(_block(rendered["lb1.example.com/all.conf"], "upstream mcpops_all")) == []


TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _nginx() -> str | None:
    return os.environ.get("MCPOPS_NGINX_BIN") or shutil.which("nginx")


@pytest.mark.skipif(_nginx() is None, reason="no nginx binary (PATH or MCPOPS_NGINX_BIN)")
@pytest.mark.parametrize("default", [True, False])
def test_several_servers_pass_nginx_t(tmp_path, default):
    """nginx -t on the renderings, with the paths outside /etc/nginx moved into tmp_path and a
    throw-away certificate: what is checked is the configuration's own syntax and references."""
    rendered = _multi(tmp_path / "render", default=default)
    etc = Path(_nginx()).resolve().parents[2] / "etc" / "nginx"
    if not (etc / "mime.types").exists():
        etc = Path("/etc/nginx")
    work = tmp_path / "nginx"
    (work / "conf.d").mkdir(parents=True)
    (work / "modules-enabled").mkdir()
    (work / "logs").mkdir()
    shutil.copy(etc / "mime.types", work / "mime.types")
    key, crt = work / "host.key", work / "host.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=mcp.example.com",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
    )
    for name, text in rendered.items():
        conf = (
            text.replace("/etc/mcpops/pki/host.crt", str(crt))
            .replace("/etc/mcpops/pki/host.key", str(key))
            .replace("/etc/mcpops/pki/ca.crt", str(crt))
            .replace("/etc/nginx/", f"{work}/")
            .replace("/var/log/nginx/", f"{work}/logs/")
            .replace("/run/nginx.pid", f"{work}/nginx.pid")
            .replace("user www-data;", "")
            # the binary's compiled-in temporary directories may not exist here
            .replace(
                "\nhttp {\n", "\nhttp {\n" + "".join(f"\t{t}_temp_path {work}/{t};\n" for t in TEMP_PATHS), 1
            )
        )
        path = work / (name.replace("/", "_"))
        path.write_text(conf)
        proc = subprocess.run(
            [_nginx(), "-t", "-q", "-p", str(work), "-e", str(work / "logs" / "error.log"), "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
