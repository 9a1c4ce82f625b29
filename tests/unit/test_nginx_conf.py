"""nginx.conf as Ansible renders it from the role's template, defaults and vars for whole inventories.

The legacy single-server deployments (the lab inventory, the example inventory) must render exactly
the files in tests/unit/data/nginx/, which were rendered by the template before several servers per
endpoint (issue 12) existed: byte for byte, the rolling upgrade's out-of-rotation variants included.
Inventories with mcp_server_servers get a route per server, and a stdio server with per-principal
children an upstream hashed by principal (njs); when an nginx binary is found (on PATH or in
MCPOPS_NGINX_BIN) those renderings must also pass `nginx -t`, with Debian's njs module loaded.
tests/unit/test_nginx_affinity.py runs such a configuration.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from role_render import COLLECTIONS, render_role

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
# servers. app2 runs no "time": its instances must not appear in time's upstreams. my-tools keeps a
# child per principal (the default isolation), time one shared child.
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
            - {name: time, kind: stdio, pypi: mcp-server-time==2025.9.25, ports: [8100], isolation: shared}
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


def _multi(tmp_path: Path, default: bool, all_vars: str = "") -> dict[str, str]:
    """MULTI rendered; all_vars: more lines of all.vars (YAML, indented by four)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    inventory = tmp_path / "inventory.yml"
    text = MULTI % {"default": "true" if default else "false"}
    inventory.write_text(text.replace("  vars:\n", "  vars:\n" + all_vars, 1))
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
    # (my-tools keeps a child per principal: without a session id, the upstream hashed by principal)
    tools_map = _block(conf, "map $http_mcp_session_id $mcpops_upstream_my_tools")
    assert "default mcpops_my_tools_principal;" in tools_map
    assert "default mcpops_notes_all;" in _block(conf, "map $http_mcp_session_id $mcpops_upstream_notes")
    assert "default mcpops_time_all;" in _block(conf, "map $http_mcp_session_id $mcpops_upstream_time")
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
    # zone: an upper bound of n * (n + 2) servers, plus the principal upstreams', of about 512 bytes
    # (6 instances, 2 of them hashed: 1m + 1)
    assert "zone mcpops_upstreams 2m;" in conf


def test_a_server_with_children_per_principal_gets_an_upstream_hashed_by_principal(tmp_path):
    conf = _multi(tmp_path, default=True)["lb1.example.com/all.conf"]
    # only my-tools (stdio, isolation per_principal by default); not python notes, not shared time
    assert re.findall(r"upstream (mcpops_\w+_principal) \{", conf) == ["mcpops_my_tools_principal"]
    hashed = _block(conf, "upstream mcpops_my_tools_principal")
    lines = [line.strip() for line in hashed.splitlines()[1:]]
    # consistent hashing by the principal, declared before keepalive (nginx requires the balancing
    # method first), in the shared zone, of the server's instances on every app host, no backups
    assert lines == [
        "zone mcpops_upstreams;",
        "hash $mcpops_principal consistent;",
        "server 10.0.0.11:8200 max_fails=1 fail_timeout=10s;",
        "server 10.0.0.12:8200 max_fails=1 fail_timeout=10s;",
        "keepalive 32;",
        "keepalive_timeout 5s;",
    ]
    # the principal comes from the role's njs script, imported once, before any upstream hashes it
    assert conf.count("js_import mcpops_principal from /etc/nginx/mcpops_principal.js;") == 1
    assert conf.count("js_set $mcpops_principal mcpops_principal.principal;") == 1
    assert conf.index("js_set $mcpops_principal") < conf.index("upstream mcpops_all {")
    # requests with a session id still go to its owner: the session routes are the same as ever
    assert re.findall(
        r'"~\^(\S+)\\\." (\S+);', _block(conf, "map $http_mcp_session_id $mcpops_upstream_my_tools")
    ) == [
        ("app1examplecom\\-8200", "mcpops_app1examplecom_8200"),
        ("app2examplecom\\-8200", "mcpops_app2examplecom_8200"),
    ]


def test_principal_affinity_off_spreads_every_server_as_before(tmp_path):
    conf = _multi(tmp_path, default=True, all_vars="    nginx_principal_affinity_enabled: false\n")[
        "lb1.example.com/all.conf"
    ]
    assert "_principal" not in conf.replace("$mcpops_principal", "")
    assert "js_" not in conf
    assert "default mcpops_my_tools_all;" in _block(
        conf, "map $http_mcp_session_id $mcpops_upstream_my_tools"
    )


def test_an_endpoint_without_children_per_principal_loads_no_njs(tmp_path):
    inventory = tmp_path / "inventory.yml"
    text = (MULTI % {"default": "true"}).replace("/tools, ports", "/tools, isolation: shared, ports")
    assert text.count("isolation: shared") == 3
    inventory.write_text(text)
    conf = render(tmp_path, inventory)["lb1.example.com/all.conf"]
    assert "js_" not in conf and "$mcpops_principal" not in conf
    assert "default mcpops_my_tools_all;" in _block(
        conf, "map $http_mcp_session_id $mcpops_upstream_my_tools"
    )


def test_without_a_default_server_mcp_is_not_routed(tmp_path):
    conf = _multi(tmp_path, default=False)["lb1.example.com/all.conf"]
    assert "location ~ ^/mcp/?$" not in conf
    assert "location ^~ /.well-known/oauth-protected-resource" not in conf
    assert "location ~ ^/notes/mcp/?$" in conf
    assert "location = /.well-known/oauth-protected-resource/notes/mcp" in conf


PREFLIGHT_PLAY = """---
- name: The nginx role's preflight on a load balancer
  hosts: mcp_lb
  gather_facts: false
  tasks:
    - name: Run it
      ansible.builtin.include_role:
        name: mcpops.deploy.nginx
        tasks_from: preflight.yml
"""


def _preflight(tmp_path: Path, inventory_text: str) -> subprocess.CompletedProcess:
    """The role's real preflight.yml for lb1.example.com of the inventory (this machine, connection local)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "inventory.yml").write_text(inventory_text)
    (tmp_path / "play.yml").write_text(PREFLIGHT_PLAY)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            *("-i", "inventory.yml", "play.yml", "-e", "ansible_connection=local"),
            *("-e", "ansible_python_interpreter={{ ansible_playbook_python }}"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


def test_preflight_refuses_a_server_with_and_without_children_per_principal(tmp_path):
    """One upstream serves a server on every app host, hashed by principal or not: an isolation that
    differs between two app hosts is refused before anything changes, naming the instances."""
    # my-tools on app2 (the last server before the monitoring group) with one shared child
    mixed = (MULTI % {"default": "true"}).replace(
        "/tools, ports: [8200]}\n    monitoring:",
        "/tools, ports: [8200], isolation: shared}\n    monitoring:",
    )
    assert mixed.count("isolation: shared") == 2
    proc = _preflight(tmp_path / "mixed", mixed)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "nginx: isolation of the MCP servers of the group mcp_servers" in out, out
    assert (
        "app1examplecom-8200 my-tools principal" in out and "app2examplecom-8200 my-tools session" in out
    ), out
    assert "the same kind and isolation for a server on every app host" in out, out
    # the same inventory with my-tools alike on both hosts passes that check
    proc = _preflight(tmp_path / "alike", MULTI % {"default": "true"})
    assert "nginx: isolation of the MCP servers" not in proc.stdout + proc.stderr


def test_preflight_refuses_a_principal_affinity_switch_that_is_no_boolean(tmp_path):
    bad = (MULTI % {"default": "true"}).replace(
        "  vars:\n", "  vars:\n    nginx_principal_affinity_enabled: maybe\n", 1
    )
    proc = _preflight(tmp_path, bad)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'nginx: nginx_principal_affinity_enabled = "maybe": true (route' in out, out


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
    # ... and as backups of app2's sessions, and in my-tools' upstream hashed by principal (its principals
    # move to app2 meanwhile; hash allows no backups)
    assert _down(_block(out1, "upstream mcpops_app2examplecom_8000")) == app1[:2]
    assert _down(_block(out1, "upstream mcpops_my_tools_principal")) == app1[3:]
    # but time, which only app1 runs, keeps its instance (down would refuse every new session)
    assert _down(_block(out1, "upstream mcpops_time_all")) == []
    # the owner of a session still serves it: a route's own instance is never down (its backups on the
    # same host are)
    assert _down(_block(out1, "upstream mcpops_app1examplecom_8001")) == ["10.0.0.11:8000"]
    out2 = rendered["lb1.example.com/out-app2.example.com.conf"]
    assert _down(_block(out2, "upstream mcpops_my_tools_all")) == ["10.0.0.12:8200"]
    assert _down(_block(out2, "upstream mcpops_my_tools_principal")) == ["10.0.0.12:8200"]
    assert _down(_block(out2, "upstream mcpops_time_all")) == []
    assert _down(_block(rendered["lb1.example.com/all.conf"], "upstream mcpops_all")) == []


TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
NJS_SCRIPT = NGINX_ROLE / "files" / "mcpops_principal.js"


def _nginx() -> str | None:
    return os.environ.get("MCPOPS_NGINX_BIN") or shutil.which("nginx")


def njs_module() -> Path | None:
    """Debian's njs module (libnginx-mod-http-js) beside the nginx binary, or MCPOPS_NGINX_JS_MODULE."""
    if os.environ.get("MCPOPS_NGINX_JS_MODULE"):
        return Path(os.environ["MCPOPS_NGINX_JS_MODULE"])
    binary = _nginx()
    for lib in ([Path(binary).resolve().parents[1] / "lib"] if binary else []) + [Path("/usr/lib")]:
        module = lib / "nginx" / "modules" / "ngx_http_js_module.so"
        if module.exists():
            return module
    return None


def nginx_workdir(work: Path) -> tuple[Path, Path]:
    """A prefix for nginx outside /etc/nginx: mime.types, conf.d, modules-enabled (loading njs when
    found, as the package's modules-enabled/50-mod-http-js.conf does), the role's njs script, logs
    and a throw-away certificate. Returns the certificate and its key."""
    etc = Path(_nginx()).resolve().parents[2] / "etc" / "nginx"
    if not (etc / "mime.types").exists():
        etc = Path("/etc/nginx")
    (work / "conf.d").mkdir(parents=True)
    (work / "modules-enabled").mkdir()
    (work / "logs").mkdir()
    shutil.copy(etc / "mime.types", work / "mime.types")
    shutil.copy(NJS_SCRIPT, work / NJS_SCRIPT.name)
    if njs_module() is not None:
        (work / "modules-enabled" / "50-mod-http-js.conf").write_text(f"load_module {njs_module()};\n")
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
    return crt, key


def localize(text: str, work: Path, crt: Path, key: Path, user: str = "") -> str:
    """A rendering with its paths moved into the prefix of nginx_workdir (and `user <user>;`, or none)."""
    return (
        text.replace("/etc/mcpops/pki/host.crt", str(crt))
        .replace("/etc/mcpops/pki/host.key", str(key))
        .replace("/etc/mcpops/pki/ca.crt", str(crt))
        .replace("/etc/nginx/", f"{work}/")
        .replace("/var/log/nginx/", f"{work}/logs/")
        .replace("/run/nginx.pid", f"{work}/nginx.pid")
        .replace("user www-data;", f"user {user};" if user else "")
        # the binary's compiled-in temporary directories may not exist here
        .replace(
            "\nhttp {\n", "\nhttp {\n" + "".join(f"\t{t}_temp_path {work}/{t};\n" for t in TEMP_PATHS), 1
        )
    )


@pytest.mark.skipif(_nginx() is None, reason="no nginx binary (PATH or MCPOPS_NGINX_BIN)")
@pytest.mark.parametrize("default", [True, False])
def test_several_servers_pass_nginx_t(tmp_path, default):
    """nginx -t on the renderings, with the paths outside /etc/nginx moved into tmp_path and a
    throw-away certificate: what is checked is the configuration's own syntax and references (the
    njs script included: nginx compiles it while it reads the configuration)."""
    rendered = _multi(tmp_path / "render", default=default)
    if njs_module() is None:
        pytest.skip("no njs module (apt-get install libnginx-mod-http-js, or MCPOPS_NGINX_JS_MODULE)")
    work = tmp_path / "nginx"
    crt, key = nginx_workdir(work)
    for name, text in rendered.items():
        path = work / (name.replace("/", "_"))
        path.write_text(localize(text, work, crt, key))
        proc = subprocess.run(
            [_nginx(), "-t", "-q", "-p", str(work), "-e", str(work / "logs" / "error.log"), "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
