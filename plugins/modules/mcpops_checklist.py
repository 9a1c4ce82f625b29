#!/usr/bin/python
"""The seed's deployment checklist, probed read-only on live hosts (playbooks/verify.yml)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mcpops_checklist
short_description: Check a live host against the deployment checklist, or report the whole checklist
description:
  - Read-only; never changes a host. C(playbooks/verify.yml) runs it once per host (O(mode=probe)) and
    once on the controller (O(mode=report)).
  - The 18 items are the seed's "Deployment Checklist" (docs/checklist.md). Which items a host answers
    follows from its groups (C(mcp_servers), C(mcp_lb), C(redis), C(monitoring), C(log_collectors));
    the module holds that map, so the probe on a host and the report on the controller agree.
  - O(mode=probe) answers this host's items in one round trip (HTTP and TLS from the host itself,
    C(systemctl show), C(journalctl), C(nft -j), C(nginx -T), C(openssl), the release's own Python for
    the server's effective settings and the schema version in Redis) and returns RV(checklist).
  - O(mode=report) takes every host's RV(checklist), checks the backups on the controller and returns
    one row per item (RV(rows)) and the items that failed (RV(failed_items)). A host that should have
    answered an item and did not (unreachable, probe failed) fails that item.
version_added: 0.3.0
author: mcpops.deploy maintainers
options:
  mode:
    description: C(probe) on a deployment host, C(report) on the controller.
    type: str
    choices: [probe, report]
    default: probe
  host_groups:
    description: O(mode=probe). The host's groups (C(group_names)); they decide which items it answers.
    type: list
    elements: str
    default: []
  instances:
    description:
      - O(mode=probe). This host's instances as the filter C(mcpops.deploy.mcp_instances) gives them from
        the host itself (C(address), C(port), C(tls)); an instance with C(tls) is verified against O(ca_file).
    type: list
    elements: dict
    default: []
  unit_prefix:
    description: Unit name of an instance without the port and C(.service).
    type: str
    default: mcpops-server@
  venv:
    description: The virtualenv of the release in use.
    type: path
    default: /opt/mcpops/current/venv
  config:
    description: The server's configuration file.
    type: path
    default: /etc/mcpops/config.yaml
  secrets_env:
    description: The instances' environment file of secrets (read, never returned).
    type: path
    default: /etc/mcpops/secrets.env
  ca_file:
    description: The deployment CA.
    type: path
    default: /etc/mcpops/pki/ca.crt
  cert_file:
    description: This host's certificate.
    type: path
    default: /etc/mcpops/pki/host.crt
  key_file:
    description: This host's private key (only its public half is compared with the certificate).
    type: path
    default: /etc/mcpops/pki/host.key
  cert_min_days:
    description: A certificate that expires within this many days fails.
    type: int
    default: 14
  require_cors_origins:
    description: Fail item 08 when C(cors.allowed_origins) is empty (only same-origin clients).
    type: bool
    default: false
  require_cpu_quota:
    description: Fail item 17 when the instances' units set no CPU quota.
    type: bool
    default: false
  lb:
    description: O(mode=probe) on C(mcp_lb). C(https_port), C(http_port), C(server_name) and C(ca_file)
      (empty to verify against the system's CA store).
    type: dict
    default: {}
  expected_instances:
    description:
      - O(mode=probe) on C(mcp_lb) and C(monitoring). Every instance of C(mcp_servers) as the filter
        C(mcpops.deploy.mcp_instances) gives them from this host (C(host), C(address), C(port)).
      - nginx's upstreams must hold each C(address:port), Prometheus a target labelled C(host:port).
    type: list
    elements: dict
    default: []
  firewall_table:
    description: The nftables table of the firewall role (inet family); empty when the firewall is off.
    type: str
    default: mcpops
  firewall_expected:
    description: Firewall set key (C(instances), C(redis)) to the addresses that must be in its sources.
    type: dict
    default: {}
  prometheus_url:
    description: O(mode=probe) on C(monitoring). Prometheus' base URL.
    type: str
    default: http://127.0.0.1:9090
  alertmanager_url:
    description: O(mode=probe) on C(monitoring). Alertmanager's base URL.
    type: str
    default: http://127.0.0.1:9093
  collector_dir:
    description: O(mode=probe) on C(log_collectors). Where the collector writes one directory per host.
    type: path
    default: /var/log/mcpops
  timeout:
    description: Seconds for each network probe.
    type: float
    default: 5
  results:
    description: O(mode=report). Inventory name to the RV(checklist) its probe returned (missing when none).
    type: dict
    default: {}
  inventory_groups:
    description: O(mode=report). The C(groups) magic variable.
    type: dict
    default: {}
  backup_dir:
    description: O(mode=report). Controller directory holding one timestamped subdirectory per backup.
    type: path
  backup_max_age_hours:
    description: O(mode=report). The newest backup must be younger than this.
    type: float
    default: 26
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Probe this host's checklist items
  mcpops.deploy.mcpops_checklist:
    host_groups: "{{ group_names }}"
    instances: "{{ [inventory_hostname] | mcpops.deploy.mcp_instances(hostvars, inventory_hostname) }}"
  register: probe

- name: One row per item
  mcpops.deploy.mcpops_checklist:
    mode: report
    results: "{{ {'app1': probe.checklist} }}"
    inventory_groups: "{{ groups }}"
    backup_dir: /srv/backups/mcpops
  delegate_to: localhost
"""

RETURN = r"""
checklist:
  description: O(mode=probe). Item key to C(ok) (bool) and C(detail) (what was checked and found).
  type: dict
  returned: when mode is probe
rows:
  description: O(mode=report). One line per item, in the checklist's order.
  type: list
  elements: str
  returned: when mode is report
items:
  description: O(mode=report). Per item C(number), C(key), C(title), C(test), C(ok), C(hosts), C(detail).
  type: list
  elements: dict
  returned: when mode is report
failed_items:
  description: O(mode=report). The numbers and titles of the items that failed.
  type: list
  elements: str
  returned: when mode is report
"""

import http.client
import ipaddress
import json
import os
import pwd
import re
import socket
import ssl
import time

from ansible.module_utils.basic import AnsibleModule

CONTROLLER = "controller"
# The seed's 18 items in its order: key, title, test name suffix, the groups whose hosts answer it
# (CONTROLLER: answered by the report itself). Where the seed's words do not fit VMs the title says
# what replaces them.
ITEMS = [
    ("environment", "Environment variables configured", "environment_variables_configured", ["mcp_servers"]),
    ("tls", "TLS certificates installed and valid", "tls_certificates_installed_and_valid", ["*"]),
    ("migrations", "Database migrations applied", "database_migrations_applied", ["mcp_servers"]),
    (
        "redis",
        "Redis/cache configured and accessible",
        "redis_configured_and_accessible",
        ["mcp_servers", "redis"],
    ),
    (
        "health",
        "Health check endpoint responding",
        "health_check_endpoint_responding",
        ["mcp_servers", "mcp_lb"],
    ),
    ("metrics", "Metrics endpoint configured", "metrics_endpoint_configured", ["mcp_servers"]),
    (
        "logging",
        "Logging configured (structured JSON)",
        "logging_configured_structured_json",
        ["mcp_servers", "log_collectors"],
    ),
    ("cors", "CORS configured with allowed origins", "cors_configured_with_allowed_origins", ["mcp_servers"]),
    ("ratelimit", "Rate limiting enabled", "rate_limiting_enabled", ["mcp_servers", "mcp_lb"]),
    (
        "auth",
        "Authentication server connectivity verified",
        "authentication_server_connectivity_verified",
        ["mcp_servers"],
    ),
    ("firewall", "Firewall rules configured", "firewall_rules_configured", ["*"]),
    (
        "lb_health",
        "Load balancer health checks configured",
        "load_balancer_health_checks_configured",
        ["mcp_lb"],
    ),
    ("monitoring", "Monitoring and alerting set up", "monitoring_and_alerting_set_up", ["monitoring"]),
    (
        "backup",
        "Backup and disaster recovery plan in place",
        "backup_and_disaster_recovery_plan_in_place",
        [CONTROLLER],
    ),
    ("headers", "Security headers configured", "security_headers_configured", ["mcp_lb"]),
    (
        "nonroot",
        "Non-root system user (seed: container running as non-root user)",
        "non_root_system_user",
        ["mcp_servers"],
    ),
    ("limits", "Resource limits configured (CPU, memory)", "resource_limits_configured", ["mcp_servers"]),
    (
        "scaling",
        "Adding an app host (seed: auto-scaling policies)",
        "adding_an_app_host_wires_it_in",
        ["mcp_lb", "monitoring", "mcp_servers", "redis"],
    ),
]
DEPLOYMENT_GROUPS = ("mcp_servers", "mcp_lb", "redis", "monitoring", "log_collectors")
SECURITY_HEADERS = {
    "strict-transport-security": re.compile(r"max-age=(\d+)"),
    "x-content-type-options": re.compile(r"^nosniff$", re.I),
    "x-frame-options": re.compile(r"^(DENY|SAMEORIGIN)$", re.I),
    "content-security-policy": re.compile(r"\S"),
    "referrer-policy": re.compile(r"\S"),
}
HSTS_MIN_AGE = 15768000  # six months, Mozilla's minimum
FOREIGN_ORIGIN = "https://checklist-probe.invalid"

# Runs in the release's own Python: the instance's effective settings (file + environment) and the
# schema version in Redis; prints one JSON object. Nothing secret is printed.
SETTINGS_PY = r"""
import asyncio, json, sys
from mcpops_server.config import load_settings
from mcpops_server.notes import SCHEMA_VERSION, NotesStore
from mcpops_server.redisclient import redis_client
s = load_settings(sys.argv[1])
out = {"cors": list(s.cors.allowed_origins), "ratelimit": s.ratelimit.enabled,
       "rpm": s.ratelimit.requests_per_minute, "on_redis_error": s.ratelimit.on_redis_error,
       "log_format": s.logging.format, "auth": s.auth.enabled,
       "jwks": s.auth.jwks_file or s.auth.jwks_url or "discovered", "expected": SCHEMA_VERSION}
async def version():
    r = redis_client(s)
    try:
        return await NotesStore(r, s.redis.key_prefix, s.notes).schema_version()
    finally:
        await r.aclose()
try:
    out["schema_version"] = asyncio.run(version())
except Exception as exc:
    out["schema_error"] = exc.__class__.__name__ + ": " + str(exc)[:160]
print(json.dumps(out))
"""


# ----------------------------------------------------------------------------------------- helpers
def items_for(host_groups) -> list:
    """The keys of the items a host with these groups answers."""
    mine = set(host_groups)
    deployment = bool(mine & set(DEPLOYMENT_GROUPS))
    out = []
    for key, _title, _test, groups in ITEMS:
        if ("*" in groups and deployment) or mine & set(groups):
            out.append(key)
    return out


class Item:
    """The findings of one item on one host: ok while every finding is."""

    def __init__(self):
        self.ok = True
        self.notes = []

    def add(self, ok: bool, note: str) -> None:
        self.ok = self.ok and bool(ok)
        self.notes.append(note if ok else f"FAIL {note}")

    def result(self) -> dict:
        if not self.notes:
            return {"ok": False, "detail": "nothing was checked"}
        return {"ok": self.ok, "detail": "; ".join(self.notes)}


def hostport(address: str, port) -> str:
    """address:port as nginx writes it (IPv6 in brackets)."""
    return f"[{address}]:{int(port)}" if ":" in str(address) else f"{address}:{int(port)}"


def instance_url(inst: dict) -> str:
    return f"{'https' if inst.get('tls') else 'http'}://{hostport(inst['address'], inst['port'])}"


def cgroup_memory_limit(cgroup: str, root: str = "/sys/fs/cgroup") -> str:
    """The kernel's memory limit of a unit's cgroup (v2 memory.max, v1 memory.limit_in_bytes):
    a number of bytes, "max" when unlimited, "unknown" when the cgroup cannot be read."""
    if not cgroup:
        return "not running"
    for path in (f"{root}{cgroup}/memory.max", f"{root}/memory{cgroup}/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        return "max" if value == "max" or (value.isdigit() and int(value) >= 1 << 62) else value
    return "unknown"


def parse_env_file(text: str) -> dict:
    """KEY=VALUE lines of a systemd EnvironmentFile (comments and blank lines skipped)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def parse_show(text: str) -> dict:
    """`systemctl show -p A -p B` output as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def json_lines(lines) -> tuple:
    """(lines that are JSON objects, the first line that is not) of an iterable of log lines."""
    good, bad = 0, None
    for line in lines:
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if ok:
            good += 1
        elif bad is None:
            bad = line[:120]
    return good, bad


def nginx_upstreams(conf: str) -> dict:
    """upstream name -> list of (address, parameters) of its server lines, from `nginx -T`."""
    out = {}
    for m in re.finditer(r"^\s*upstream\s+(\S+)\s*\{(.*?)\}", conf, re.S | re.M):
        servers = re.findall(r"^\s*server\s+(\S+)([^;]*);", m.group(2), re.M)
        out[m.group(1)] = [(addr, params.split()) for addr, params in servers]
    return out


def upstream_findings(conf: str, item: Item, expected=None) -> list:
    """Passive health checks on every active upstream server and retries on another instance."""
    ups = nginx_upstreams(conf)
    mcp = {name: servers for name, servers in ups.items() if name.startswith("mcpops_")}
    if not mcp:
        item.add(False, "no mcpops_* upstream in nginx -T")
        return []
    missing = []
    for name, servers in sorted(mcp.items()):
        for addr, params in servers:
            if "backup" in params:
                continue
            fails = [p for p in params if p.startswith("max_fails=")]
            tmo = [p for p in params if p.startswith("fail_timeout=")]
            if not fails or fails[0] == "max_fails=0" or not tmo:
                missing.append(f"{name} {addr}")
    count = len(mcp.get("mcpops_all", []))
    item.add(
        not missing,
        f"{count} instances in upstream mcpops_all, max_fails/fail_timeout on every server"
        if not missing
        else f"no passive health check (max_fails/fail_timeout) on {', '.join(missing)}",
    )
    nxt = re.search(r"^\s*proxy_next_upstream\s+([^;]*);", conf, re.M)
    item.add(
        bool(nxt) and "error" in nxt.group(1).split(),
        f"proxy_next_upstream {nxt.group(1) if nxt else 'not set'}",
    )
    return [addr for addr, _params in mcp.get("mcpops_all", [])]


def nft_sets(doc: dict) -> tuple:
    """(chains: name -> {hook, policy}, sets: name -> [networks]) from `nft -j list table`."""
    chains, sets = {}, {}
    for entry in doc.get("nftables", []):
        if "chain" in entry:
            c = entry["chain"]
            chains[c.get("name")] = {"hook": c.get("hook"), "policy": c.get("policy")}
        elif "set" in entry:
            s = entry["set"]
            nets = []
            for e in s.get("elem", []) or []:
                if isinstance(e, dict) and "elem" in e:
                    e = e["elem"].get("val", e["elem"])
                if isinstance(e, dict) and "prefix" in e:
                    e = f"{e['prefix']['addr']}/{e['prefix']['len']}"
                if isinstance(e, dict) and "range" in e:
                    # An interval set with auto-merge joins neighbouring addresses into one range.
                    try:
                        low, high = (ipaddress.ip_address(str(a)) for a in e["range"])
                        nets.extend(ipaddress.summarize_address_range(low, high))
                    except (ValueError, TypeError):
                        pass
                    continue
                try:
                    nets.append(ipaddress.ip_network(str(e), strict=False))
                except ValueError:
                    continue
            sets[s.get("name")] = nets
    return chains, sets


def uncovered(addresses, networks) -> list:
    """The addresses that no network of the list contains."""
    out = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(str(a).split("/")[0])
        except ValueError:
            out.append(str(a))
            continue
        if not any(ip.version == n.version and ip in n for n in networks):
            out.append(str(a))
    return out


def newest_backup(backup_dir: str, now: float) -> tuple:
    """(path, age in hours) of the newest backup that playbooks/backup.yml stored under backup_dir
    (``<dir>/<host>/redis-<host>-<time>.rdb`` beside its ``.sha256``), or (None, reason)."""
    if not backup_dir:
        return None, "verify_backup_dir is empty"
    if not os.path.isdir(backup_dir):
        hint = "set verify_backup_dir to redis_backup_dir, where playbooks/backup.yml keeps the backups"
        return None, f"{backup_dir} does not exist on the controller ({hint})"
    found = []
    for host in os.listdir(backup_dir):
        folder = os.path.join(backup_dir, host)
        if not os.path.isdir(folder) or os.path.islink(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if (
                name.startswith("redis-")
                and name.endswith(".rdb")
                and os.path.getsize(path) > 0
                and os.path.isfile(path + ".sha256")
            ):
                found.append((os.path.getmtime(path), path))
    if not found:
        return (
            None,
            f"no backup (<host>/redis-*.rdb with its .sha256) in {backup_dir}: run playbooks/backup.yml",
        )
    mtime, path = max(found)
    return path, (now - mtime) / 3600.0


def report(results: dict, inventory_groups: dict, backup: tuple, backup_max_age: float) -> dict:
    """One row per item over every host's answers."""
    items, rows, failed = [], [], []
    for n, (key, title, test, groups) in enumerate(ITEMS, start=1):
        if groups == [CONTROLLER]:
            path, age = backup
            if path is None:
                ok, detail = False, age
            else:
                ok = age <= backup_max_age
                limit = f"verify_backup_max_age_hours={backup_max_age:g}"
                detail = f"newest backup {path} is {age:.1f} h old (limit {limit})"
            hosts = [CONTROLLER]
        else:
            every = sorted({h for g in DEPLOYMENT_GROUPS for h in inventory_groups.get(g, [])})
            hosts = [
                h
                for h in every
                if key in items_for(g for g in DEPLOYMENT_GROUPS if h in inventory_groups.get(g, []))
            ]
            notes, ok = [], bool(hosts)
            if not hosts:
                notes.append(f"no host in {', '.join(groups)}")
            for h in hosts:
                answer = (results.get(h) or {}).get(key)
                if answer is None:
                    ok = False
                    notes.append(f"{h}: FAIL no answer (unreachable, or the probe failed)")
                    continue
                ok = ok and bool(answer.get("ok"))
                notes.append(f"{h}: {answer.get('detail', '')}")
            detail = " | ".join(notes)
        entry = {
            "number": n,
            "key": key,
            "title": title,
            "test": f"test_checklist_{n:02d}_{test}",
            "ok": ok,
            "hosts": hosts,
            "detail": detail,
        }
        items.append(entry)
        rows.append(f"{'PASS' if ok else 'FAIL'} {n:02d} {title} [{', '.join(hosts) or '-'}]: {detail}")
        if not ok:
            failed.append(f"{n:02d} {title}")
    return {"items": items, "rows": rows, "failed_items": failed}


# ------------------------------------------------------------------------------------ the probes
class Probe:
    def __init__(self, module: AnsibleModule):
        self.m = module
        self.p = module.params
        self.timeout = float(self.p["timeout"])
        self._settings = None
        self._nginx = None
        self._nft = None
        self._health = {}

    # -- primitives
    def run(self, argv, env=None, data=None) -> tuple:
        rc, out, err = self.m.run_command(argv, environ_update=env or {}, data=data, check_rc=False)
        return rc, out, err

    def http(
        self,
        url: str,
        method: str = "GET",
        headers=None,
        sni: str | None = None,
        ca_file: str | None = None,
        path: str = "/",
    ) -> tuple:
        """(status, headers (lower-case), body, peer certificate or None) or raises OSError."""
        m = re.match(r"^(https?)://(\[[^\]]+\]|[^:/]+)(?::(\d+))?$", url.rstrip("/"))
        if not m:
            raise OSError(f"bad url {url}")
        scheme, host, port = m.group(1), m.group(2).strip("[]"), m.group(3)
        port = int(port or (443 if scheme == "https" else 80))
        sock = socket.create_connection((host, port), timeout=self.timeout)
        cert = None
        if scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file or None)
            sock = ctx.wrap_socket(sock, server_hostname=sni or host)
            cert = sock.getpeercert()
        conn = http.client.HTTPConnection(sni or host, port, timeout=self.timeout)
        conn.sock = sock
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read(1 << 20)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, cert
        finally:
            conn.close()

    def instance_http(self, inst: dict, path: str, **kw) -> tuple:
        ca = self.p["ca_file"] if inst.get("tls") else None
        return self.http(instance_url(inst), path=path, ca_file=ca, **kw)

    def show(self, unit: str, *props) -> dict:
        argv = ["systemctl", "show", unit] + [f"--property={p}" for p in props]
        return parse_show(self.run(argv)[1])

    def unit(self, inst: dict) -> str:
        return f"{self.p['unit_prefix']}{inst['port']}.service"

    def secrets(self) -> dict:
        try:
            with open(self.p["secrets_env"]) as f:
                return parse_env_file(f.read())
        except OSError:
            return {}

    def settings(self) -> dict:
        if self._settings is None:
            py = os.path.join(self.p["venv"], "bin", "python")
            env = dict(self.secrets(), MCPOPS_CONFIG=self.p["config"])
            if self.p["instances"]:
                env["MCP_SERVER_PORT"] = str(self.p["instances"][0]["port"])
            rc, out, err = self.run([py, "-c", SETTINGS_PY, self.p["config"]], env=env)
            try:
                self._settings = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                self._settings = {"error": f"rc={rc}: {(err or out).strip()[-200:]}"}
        return self._settings

    def health(self, inst: dict) -> dict:
        if inst["port"] not in self._health:
            try:
                status, _h, body, _c = self.instance_http(inst, "/health")
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {}
                self._health[inst["port"]] = {"status": status, "doc": doc}
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                self._health[inst["port"]] = {"status": None, "error": f"{exc.__class__.__name__}: {exc}"}
        return self._health[inst["port"]]

    def nginx_conf(self) -> str:
        if self._nginx is None:
            rc, out, err = self.run(["nginx", "-T", "-q"])
            self._nginx = out if rc == 0 else ""
            if rc != 0:
                self._nginx_err = (err or out).strip()[-200:]
        return self._nginx

    def nft(self) -> tuple:
        if self._nft is None:
            rc, out, err = self.run(["nft", "-j", "list", "table", "inet", self.p["firewall_table"]])
            if rc != 0:
                self._nft = (None, (err or out).strip()[-200:])
            else:
                try:
                    self._nft = (nft_sets(json.loads(out)), "")
                except ValueError as exc:
                    self._nft = (None, str(exc))
        return self._nft

    def lb_get(self, path: str, method: str = "GET") -> tuple:
        lb = self.p["lb"]
        url = f"https://127.0.0.1:{int(lb.get('https_port', 443))}"
        return self.http(
            url,
            method=method,
            path=path,
            sni=lb.get("server_name"),
            headers={"Host": lb.get("server_name", "localhost")},
            ca_file=lb.get("ca_file") or None,
        )

    def per_instance(self, item: Item, fn) -> None:
        if not self.p["instances"]:
            item.add(False, "no instance configured on this host")
        for inst in self.p["instances"]:
            try:
                fn(inst)
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                item.add(False, f"{inst['port']}: {exc.__class__.__name__}: {exc}")

    # -- the items
    def environment(self, item: Item) -> None:
        for path, private in ((self.p["config"], False), (self.p["secrets_env"], True)):
            try:
                st = os.stat(path)
            except OSError:
                item.add(False, f"{path} missing")
                continue
            mode = st.st_mode & 0o777
            item.add(not (mode & 0o007), f"{path} mode {mode:04o}" + (" (secrets)" if private else ""))
        mcps = os.path.join(self.p["venv"], "bin", "mcpops-server")
        rc, _out, err = self.run([mcps, "check-config", "--config", self.p["config"]], env=self.secrets())
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        problems = [line for line in err.splitlines() if line.startswith("config:")]
        item.add(
            rc == 0,
            f"check-config rc={rc}"
            + (f", {len(warnings)} warnings" if warnings else "")
            + (f": {'; '.join(problems)[:300]}" if problems else ""),
        )
        for inst in self.p["instances"]:
            env = self.show(self.unit(inst), "Environment", "EnvironmentFiles")
            has = f"MCPOPS_CONFIG={self.p['config']}" in env.get("Environment", "").split()
            has_file = self.p["secrets_env"] in env.get("EnvironmentFiles", "")
            item.add(has and has_file, f"{self.unit(inst)}: MCPOPS_CONFIG and EnvironmentFile set")

    def tls(self, item: Item) -> None:
        ca, crt, key = self.p["ca_file"], self.p["cert_file"], self.p["key_file"]
        rc, out, err = self.run(["openssl", "verify", "-CAfile", ca, crt])
        item.add(
            rc == 0,
            f"{crt} verifies against {ca}" if rc == 0 else f"openssl verify: {(err or out).strip()[-160:]}",
        )
        secs = int(self.p["cert_min_days"]) * 86400
        rc, out, _e = self.run(["openssl", "x509", "-noout", "-enddate", "-checkend", str(secs), "-in", crt])
        end = out.splitlines()[0].replace("notAfter=", "") if out else "?"
        item.add(
            rc == 0,
            f"expires {end} (> {self.p['cert_min_days']} days)"
            if rc == 0
            else f"{crt} expires {end}, within {self.p['cert_min_days']} days",
        )
        rc1, pub_crt, _e = self.run(["openssl", "x509", "-noout", "-pubkey", "-in", crt])
        rc2, pub_key, _e = self.run(["openssl", "pkey", "-pubout", "-in", key])
        item.add(
            rc1 == 0 and rc2 == 0 and pub_crt.strip() == pub_key.strip(), f"{key} matches the certificate"
        )
        if "mcp_lb" in self.p["host_groups"] and self.p["lb"]:
            lb = self.p["lb"]
            try:
                _s, _h, _b, cert = self.lb_get("/health")
                left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
                item.add(
                    left > int(self.p["cert_min_days"]),
                    f"nginx serves a certificate for {lb.get('server_name')} that verifies against "
                    f"{lb.get('ca_file') or 'the system CA store'}, {left:.0f} days left",
                )
            except (OSError, ssl.SSLError, http.client.HTTPException, KeyError) as exc:
                item.add(False, f"nginx's certificate: {exc.__class__.__name__}: {exc}")
        for inst in self.p["instances"]:
            if inst.get("tls"):
                h = self.health(inst)
                item.add(
                    h["status"] is not None,
                    f"instance {inst['port']} serves TLS verified against the CA"
                    if h["status"] is not None
                    else f"instance {inst['port']} TLS: {h.get('error')}",
                )

    def migrations(self, item: Item) -> None:
        s = self.settings()
        if "error" in s:
            item.add(False, f"settings: {s['error']}")
        elif "schema_error" in s:
            item.add(False, f"schema version unreadable: {s['schema_error']}")
        else:
            item.add(
                s["schema_version"] == s["expected"],
                f"schema_version={s['schema_version']} in Redis, release expects {s['expected']}",
            )

    def redis(self, item: Item) -> None:
        if "redis" in self.p["host_groups"]:
            st = self.show("redis-server.service", "ActiveState", "UnitFileState")
            item.add(
                st.get("ActiveState") == "active" and st.get("UnitFileState") == "enabled",
                f"redis-server {st.get('ActiveState')}, {st.get('UnitFileState')}",
            )
        for inst in self.p["instances"]:
            h = self.health(inst)
            check = (h.get("doc") or {}).get("checks", {}).get("redis", h.get("error", "no answer"))
            item.add(check == "ok", f"instance {inst['port']} /health checks.redis={check}")

    def health_item(self, item: Item) -> None:
        for inst in self.p["instances"]:
            h = self.health(inst)
            status = (h.get("doc") or {}).get("status", h.get("error"))
            item.add(h["status"] == 200, f"instance {inst['port']} /health {h['status']} {status}")
        if "mcp_lb" in self.p["host_groups"] and self.p["lb"]:
            try:
                status, _h, _body, _c = self.lb_get("/health")
                item.add(
                    status == 200, f"through nginx https://{self.p['lb'].get('server_name')}/health {status}"
                )
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                item.add(False, f"through nginx: {exc.__class__.__name__}: {exc}")

    def metrics(self, item: Item) -> None:
        def one(inst):
            status, headers, body, _c = self.instance_http(inst, "/metrics")
            ctype = headers.get("content-type", "")
            ok = (
                status == 200 and ctype.startswith("text/plain") and b"# TYPE mcp_http_requests_total" in body
            )
            item.add(ok, f"instance {inst['port']} /metrics {status} {ctype.split(';')[0]}, mcp_* series")

        self.per_instance(item, one)

    def logging(self, item: Item) -> None:
        for inst in self.p["instances"]:
            unit = self.unit(inst)
            _rc, out, _e = self.run(
                ["journalctl", f"_SYSTEMD_UNIT={unit}", "-o", "cat", "-n", "50", "--no-pager"]
            )
            good, bad = json_lines(out.splitlines())
            item.add(
                good > 0 and bad is None,
                f"{unit}: {good} of the last journal lines are JSON objects"
                + (f", not JSON: {bad!r}" if bad else ""),
            )
        if self.p["instances"]:
            fmt = self.settings().get("log_format")
            item.add(fmt == "json", f"logging.format={fmt}")
        if "log_collectors" in self.p["host_groups"]:
            base = self.p["collector_dir"]
            files = []
            if os.path.isdir(base):
                for host in os.listdir(base):
                    path = os.path.join(base, host, "mcpops-server.json")
                    if os.path.isfile(path):
                        files.append(path)
            if not files:
                item.add(False, f"no {base}/<host>/mcpops-server.json on the collector")
            for path in sorted(files):
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - 16384))
                    last = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()][-1:]
                good, bad = json_lines(last)
                item.add(
                    good == 1,
                    f"collector {path}: last line is JSON" if good else f"collector {path}: {bad!r}",
                )

    def cors(self, item: Item) -> None:
        s = self.settings()
        if "error" in s:
            item.add(False, f"settings: {s['error']}")
            return
        origins = s.get("cors", [])
        need = bool(self.p["require_cors_origins"])
        item.add(
            "*" not in origins and (origins or not need),
            f"cors.allowed_origins={origins}" + ("" if origins else " (only the server's own origins)"),
        )

        def one(inst):
            hdrs = {"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": "POST"}
            status, headers, _b, _c = self.instance_http(inst, "/mcp", method="OPTIONS", headers=hdrs)
            item.add(
                status == 403 and "access-control-allow-origin" not in headers,
                f"instance {inst['port']} refuses a foreign origin's preflight ({status})",
            )
            for origin in origins[:1]:
                hdrs = {"Origin": origin, "Access-Control-Request-Method": "POST"}
                status, headers, _b, _c = self.instance_http(inst, "/mcp", method="OPTIONS", headers=hdrs)
                got = headers.get("access-control-allow-origin")
                item.add(
                    status in (200, 204) and got == origin,
                    f"instance {inst['port']} allows {origin} ({status})",
                )

        self.per_instance(item, one)

    def ratelimit(self, item: Item) -> None:
        if self.p["instances"]:
            s = self.settings()
            if "error" in s:
                item.add(False, f"settings: {s['error']}")
            else:
                item.add(
                    bool(s.get("ratelimit")),
                    f"ratelimit.enabled={s.get('ratelimit')}, "
                    f"{s.get('rpm')}/min per principal, on_redis_error={s.get('on_redis_error')}",
                )

            def one(inst):
                _st, _h, body, _c = self.instance_http(inst, "/metrics")
                m = re.search(rb"^mcp_ratelimit_breaker_open(?:\{[^}]*\})? (\S+)$", body, re.M)
                val = float(m.group(1)) if m else None
                item.add(val == 0, f"instance {inst['port']} mcp_ratelimit_breaker_open={val}")

            self.per_instance(item, one)
        if "mcp_lb" in self.p["host_groups"]:
            conf = self.nginx_conf()
            zone = re.search(r"^\s*limit_req_zone\s+[^;]*rate=(\S+?);", conf, re.M)
            used = re.search(r"^\s*limit_req\s+zone=", conf, re.M)
            item.add(
                bool(zone and used),
                f"nginx limit_req {zone.group(1) if zone else 'missing'} per address on /mcp",
            )

    def auth(self, item: Item) -> None:
        s = self.settings()
        if "error" not in s:
            item.add(bool(s.get("auth")), f"auth.enabled={s.get('auth')}, keys: {s.get('jwks')}")
        for inst in self.p["instances"]:
            h = self.health(inst)
            check = (h.get("doc") or {}).get("checks", {}).get("auth_server", h.get("error", "no answer"))
            item.add(check == "ok", f"instance {inst['port']} /health checks.auth_server={check}")

    def firewall(self, item: Item) -> None:
        if not self.p["firewall_table"]:
            item.add(False, "firewall_enabled is false on this host")
            return
        parsed, err = self.nft()
        if parsed is None:
            item.add(False, f"table inet {self.p['firewall_table']}: {err}")
            return
        chains, _sets = parsed
        inp = [c for c in chains.values() if c.get("hook") == "input"]
        item.add(
            bool(inp) and all(c.get("policy") == "drop" for c in inp),
            f"table inet {self.p['firewall_table']} loaded, input policy "
            f"{','.join(str(c.get('policy')) for c in inp) or 'no input chain'}",
        )
        st = self.show("nftables.service", "UnitFileState")
        item.add(
            st.get("UnitFileState") == "enabled",
            f"nftables.service {st.get('UnitFileState')} (loaded at boot)",
        )

    def lb_health(self, item: Item) -> None:
        conf = self.nginx_conf()
        if not conf:
            item.add(False, f"nginx -T failed: {getattr(self, '_nginx_err', '')}")
            return
        upstream_findings(conf, item)

    def monitoring(self, item: Item) -> None:
        prom, am = self.p["prometheus_url"], self.p["alertmanager_url"]
        try:
            _s, _h, body, _c = self.http(prom, path="/api/v1/targets?state=active")
            targets = json.loads(body)["data"]["activeTargets"]
            down = [
                f"{t['labels'].get('job')}/{t['labels'].get('instance')}"
                for t in targets
                if t.get("health") != "up"
            ]
            item.add(
                bool(targets) and not down,
                f"{len(targets) - len(down)}/{len(targets)} Prometheus targets up"
                + (f", down: {', '.join(down)}" if down else ""),
            )
            _s, _h, body, _c = self.http(prom, path="/api/v1/rules")
            rules = [r for g in json.loads(body)["data"]["groups"] for r in g.get("rules", [])]
            bad = [r.get("name") for r in rules if r.get("health") != "ok"]
            alerting = [r for r in rules if r.get("type") == "alerting"]
            item.add(
                bool(alerting) and not bad,
                f"{len(alerting)} alert rules loaded" + (f", unhealthy: {', '.join(bad)}" if bad else ""),
            )
            _s, _h, body, _c = self.http(prom, path="/api/v1/alertmanagers")
            ams = json.loads(body)["data"].get("activeAlertmanagers", [])
            item.add(bool(ams), f"Prometheus sends alerts to {len(ams)} Alertmanager(s)")
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
            item.add(False, f"Prometheus {prom}: {exc.__class__.__name__}: {exc}")
        try:
            status, _h, _b, _c = self.http(am, path="/-/ready")
            item.add(status == 200, f"Alertmanager ready ({status})")
        except (OSError, http.client.HTTPException) as exc:
            item.add(False, f"Alertmanager {am}: {exc.__class__.__name__}: {exc}")

    def headers(self, item: Item) -> None:
        for path, what in (("/health", "an answer"), ("/checklist-probe-missing", "an error page")):
            try:
                status, headers, _b, _c = self.lb_get(path)
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                item.add(False, f"{path}: {exc.__class__.__name__}: {exc}")
                continue
            missing = []
            for name, rx in SECURITY_HEADERS.items():
                m = rx.search(headers.get(name, ""))
                if not m or (name == "strict-transport-security" and int(m.group(1)) < HSTS_MIN_AGE):
                    missing.append(name)
            item.add(
                not missing,
                f"{len(SECURITY_HEADERS)} security headers on {what} ({path} {status})"
                if not missing
                else f"{path} {status} lacks {', '.join(missing)}",
            )
        try:
            port = int(self.p["lb"].get("http_port", 80))
            status, headers, _b, _c = self.http(
                f"http://127.0.0.1:{port}",
                path="/health",
                headers={"Host": self.p["lb"].get("server_name", "localhost")},
            )
            item.add(
                status == 301 and headers.get("location", "").startswith("https://"),
                f"plain http answers {status} to https",
            )
        except (OSError, http.client.HTTPException) as exc:
            item.add(False, f"http: {exc.__class__.__name__}: {exc}")

    def nonroot(self, item: Item) -> None:
        for inst in self.p["instances"]:
            unit = self.unit(inst)
            st = self.show(unit, "MainPID", "User")
            pid = int(st.get("MainPID") or 0)
            if pid <= 0:
                item.add(False, f"{unit} is not running")
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    uids = next(line.split()[1:] for line in f if line.startswith("Uid:"))
                user = pwd.getpwuid(int(uids[1]))
            except (OSError, StopIteration, KeyError, IndexError) as exc:
                item.add(False, f"{unit} pid {pid}: {exc}")
                continue
            nologin = user.pw_shell.endswith(("nologin", "/false"))
            item.add(
                all(int(u) != 0 for u in uids) and user.pw_uid < 1000 and nologin,
                f"{unit} runs as {user.pw_name} (uid {user.pw_uid}, shell {user.pw_shell})",
            )

    def limits(self, item: Item) -> None:
        for inst in self.p["instances"]:
            unit = self.unit(inst)
            st = self.show(
                unit,
                "MemoryMax",
                "CPUQuotaPerSecUSec",
                "CPUWeight",
                "LimitNOFILE",
                "TasksMax",
                "ControlGroup",
            )
            mem = st.get("MemoryMax", "infinity")
            live = cgroup_memory_limit(st.get("ControlGroup", ""))
            item.add(
                mem not in ("infinity", "") and live != "max",
                f"{unit} MemoryMax={mem} (enforced by the kernel: {live})",
            )
            cpu = st.get("CPUQuotaPerSecUSec", "infinity")
            need_cpu = bool(self.p["require_cpu_quota"])
            item.add(
                cpu != "infinity" or not need_cpu,
                f"CPUQuota {cpu if cpu != 'infinity' else 'not set'}, CPUWeight={st.get('CPUWeight')}, "
                f"LimitNOFILE={st.get('LimitNOFILE')}, TasksMax={st.get('TasksMax')}",
            )

    def scaling(self, item: Item) -> None:
        groups = self.p["host_groups"]
        if "mcp_lb" in groups:
            conf = self.nginx_conf()
            have = {a for _n, servers in nginx_upstreams(conf).items() for a, _p in servers}
            want = [hostport(i["address"], i["port"]) for i in self.p["expected_instances"]]
            miss = [u for u in want if u not in have]
            item.add(
                bool(want) and not miss,
                f"nginx upstreams hold all {len(want)} instances of mcp_servers"
                if not miss
                else f"nginx upstreams lack {', '.join(miss)}",
            )
        if "monitoring" in groups:
            want = [f"{i['host']}:{i['port']}" for i in self.p["expected_instances"]]
            try:
                _s, _h, body, _c = self.http(self.p["prometheus_url"], path="/api/v1/targets?state=active")
                have = {
                    t["labels"].get("instance")
                    for t in json.loads(body)["data"]["activeTargets"]
                    if t["labels"].get("job") == "mcp"
                }
                miss = [t for t in want if t not in have]
                item.add(
                    bool(want) and not miss,
                    f"Prometheus scrapes all {len(want)} instances"
                    if not miss
                    else f"Prometheus lacks targets {', '.join(miss)}",
                )
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                item.add(False, f"Prometheus: {exc.__class__.__name__}: {exc}")
        expected = self.p["firewall_expected"] or {}
        if expected and not self.p["firewall_table"]:
            item.add(True, "firewall off: no source list to extend")
        elif expected:
            parsed, err = self.nft()
            if parsed is None:
                item.add(False, f"firewall: {err}")
                return
            _chains, sets = parsed
            for key, addrs in sorted(expected.items()):
                nets = sets.get(f"{key}_sources_v4", []) + sets.get(f"{key}_sources_v6", [])
                miss = uncovered(addrs, nets)
                item.add(
                    not miss,
                    f"firewall {key} sources admit all {len(addrs)} addresses"
                    if not miss
                    else f"firewall {key} sources lack {', '.join(miss)}",
                )

    def run_all(self) -> dict:
        out = {}
        handlers = {"health": self.health_item}
        for key in items_for(self.p["host_groups"]):
            item = Item()
            fn = handlers.get(key) or getattr(self, key)
            try:
                fn(item)
            except Exception as exc:  # one broken probe fails its item, not the whole host
                item.add(False, f"probe error {exc.__class__.__name__}: {exc}")
            out[key] = item.result()
        return out


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "choices": ["probe", "report"], "default": "probe"},
            "host_groups": {"type": "list", "elements": "str", "default": []},
            "instances": {"type": "list", "elements": "dict", "default": []},
            "unit_prefix": {"type": "str", "default": "mcpops-server@"},
            "venv": {"type": "path", "default": "/opt/mcpops/current/venv"},
            "config": {"type": "path", "default": "/etc/mcpops/config.yaml"},
            "secrets_env": {"type": "path", "default": "/etc/mcpops/secrets.env"},
            "ca_file": {"type": "path", "default": "/etc/mcpops/pki/ca.crt"},
            "cert_file": {"type": "path", "default": "/etc/mcpops/pki/host.crt"},
            "key_file": {"type": "path", "default": "/etc/mcpops/pki/host.key"},
            "cert_min_days": {"type": "int", "default": 14},
            "require_cors_origins": {"type": "bool", "default": False},
            "require_cpu_quota": {"type": "bool", "default": False},
            "lb": {"type": "dict", "default": {}},
            "expected_instances": {"type": "list", "elements": "dict", "default": []},
            "firewall_table": {"type": "str", "default": "mcpops"},
            "firewall_expected": {"type": "dict", "default": {}},
            "prometheus_url": {"type": "str", "default": "http://127.0.0.1:9090"},
            "alertmanager_url": {"type": "str", "default": "http://127.0.0.1:9093"},
            "collector_dir": {"type": "path", "default": "/var/log/mcpops"},
            "timeout": {"type": "float", "default": 5},
            "results": {"type": "dict", "default": {}},
            "inventory_groups": {"type": "dict", "default": {}},
            "backup_dir": {"type": "path"},
            "backup_max_age_hours": {"type": "float", "default": 26},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["mode"] == "report":
        backup = newest_backup(p["backup_dir"] or "", time.time())
        module.exit_json(
            changed=False,
            **report(p["results"], p["inventory_groups"], backup, float(p["backup_max_age_hours"])),
        )
    module.exit_json(changed=False, checklist=Probe(module).run_all())


if __name__ == "__main__":
    main()
