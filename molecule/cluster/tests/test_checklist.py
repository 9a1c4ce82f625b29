"""The seed's deployment checklist (18 items), one test per item (docs/checklist.md).

Each test checks its item on the hosts directly (testinfra), and also that playbooks/verify.yml,
run once in check mode against the same inventory, reported the item as it should. The hosts are the
cluster scenario's; other topologies (a one-host lab) are reached with:
  MCPOPS_CHECKLIST_HOSTS      JSON, group -> container names (default: the cluster's layout)
  MCPOPS_CHECKLIST_INVENTORY  the inventory verify.yml runs on (default: MOLECULE_INVENTORY_FILE)
  MCPOPS_CHECKLIST_BACKUP_DIR the controller's backup directory (verify_backup_dir)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import testinfra
import yaml
from conftest import LAB_DIR, REPO, journal, wait_until

GROUPS = json.loads(
    os.environ.get(
        "MCPOPS_CHECKLIST_HOSTS",
        json.dumps(
            {
                "mcp_servers": ["mcpops-app1", "mcpops-app2"],
                "mcp_lb": ["mcpops-lb"],
                "redis": ["mcpops-data"],
                "monitoring": ["mcpops-ops"],
                "log_collectors": ["mcpops-ops"],
            }
        ),
    )
)
ALL = sorted({h for hosts in GROUPS.values() for h in hosts})
APPS, LBS, REDIS = GROUPS["mcp_servers"], GROUPS["mcp_lb"], GROUPS["redis"]
MONITORING, COLLECTORS = GROUPS["monitoring"], GROUPS["log_collectors"]
INVENTORY = os.environ.get("MCPOPS_CHECKLIST_INVENTORY") or os.environ.get("MOLECULE_INVENTORY_FILE")
BACKUP_DIR = os.environ.get("MCPOPS_CHECKLIST_BACKUP_DIR", str(LAB_DIR / "backups" / "redis"))
PKI = "/etc/mcpops/pki"
SERVER_NAME = "mcp.mcpops.test"
VENV = "/opt/mcpops/current/venv"
BACKUP_ARG = ("-e", f"verify_backup_dir={BACKUP_DIR}")

_HTTP_PY = r"""
import http.client, json, socket, ssl, sys
url_host, port, scheme, method, path, headers, sni = sys.argv[1:8]
sock = socket.create_connection((url_host, int(port)), timeout=5)
if scheme == "https":
    ctx = ssl.create_default_context(cafile="/etc/mcpops/pki/ca.crt")
    sock = ctx.wrap_socket(sock, server_hostname=sni or url_host)
conn = http.client.HTTPConnection(sni or url_host, int(port), timeout=5)
conn.sock = sock
conn.request(method, path, headers=json.loads(headers))
r = conn.getresponse()
print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                  "body": r.read(1 << 20).decode("utf-8", "replace")}))
"""


@cache
def host(name: str):
    return testinfra.get_host(f"docker://{name}")


def http(name, address, port, scheme="http", path="/", method="GET", headers=None, sni="") -> dict:
    """An HTTP request made from inside host `name`; TLS is verified against the deployment CA."""
    argv = [
        "python3",
        "-c",
        _HTTP_PY,
        address,
        str(port),
        scheme,
        method,
        path,
        json.dumps(headers or {}),
        sni,
    ]
    res = host(name).run(shlex.join(argv))
    assert res.rc == 0, f"{method} {scheme}://{address}:{port}{path} from {name} failed: {res.stderr[-600:]}"
    return json.loads(res.stdout)


def ihttp(name, port, scheme, address, path, method="GET", headers=None) -> dict:
    """http() to an instance; when it does not answer, the failure carries the unit's journal."""
    try:
        return http(name, address, port, scheme, path, method, headers)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{journal(host(name), f'mcpops-server@{port}')}") from None


def main_pid(name: str, port: int) -> str:
    """The running instance's pid; a stopped instance fails with its journal."""
    pid = show(name, f"mcpops-server@{port}", "MainPID")["MainPID"]
    assert pid != "0", (
        f"{name}: mcpops-server@{port} is not running\n{journal(host(name), f'mcpops-server@{port}')}"
    )
    return pid


def config(name: str) -> dict:
    return yaml.safe_load(host(name).file("/etc/mcpops/config.yaml").content_string)


def instances(name: str) -> list:
    """(port, scheme, address) of each instance of an app host, as its own config says."""
    cfg = config(name)
    scheme = "https" if cfg.get("tls", {}).get("cert_file") else "http"
    address = cfg["server"]["host"]
    address = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    units = host(name).run("systemctl list-units --all --plain --no-legend 'mcpops-server@*.service'").stdout
    ports = sorted(int(p) for p in re.findall(r"mcpops-server@(\d+)\.service", units))
    assert ports, f"{name}: no mcpops-server@ unit"
    return [(port, scheme, address) for port in ports]


def show(name: str, unit: str, *props: str) -> dict:
    out = host(name).check_output(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def health(name: str, port: int, scheme: str, address: str) -> dict:
    r = ihttp(name, port, scheme, address, "/health")
    assert r["status"] == 200, f"{name}:{port} /health {r['status']} {r['body'][:300]}\n" + journal(
        host(name), f"mcpops-server@{port}"
    )
    return json.loads(r["body"])


def nft(name: str) -> dict:
    return json.loads(host(name).check_output("nft -j list table inet mcpops"))


def nft_sets(doc: dict) -> dict:
    out = {}
    for e in doc["nftables"]:
        if "set" in e:
            out[e["set"]["name"]] = json.dumps(e["set"].get("elem", []))
    return out


def addresses(name: str) -> list:
    return host(name).check_output("hostname -I").split()


def route(name: str, port: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", name) + f"-{port}"


@pytest.fixture(scope="session")
def verify_report() -> dict:
    """playbooks/verify.yml in check mode: item key -> the report's entry (also proves it changes nothing)."""
    assert INVENTORY, "no inventory for verify.yml (MCPOPS_CHECKLIST_INVENTORY or MOLECULE_INVENTORY_FILE)"
    # The lab's secrets (password lookups) live in MCPOPS_LAB_DIR, as in the converge.
    lab = {
        "MCPOPS_LAB_DIR": os.environ.get("MCPOPS_LAB_DIR", str(LAB_DIR)),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    }
    env = dict(os.environ, **lab, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    exe = Path(sys.executable).with_name("ansible-playbook")
    # The operator's order: back up, then check the deployment (item 14 wants a recent backup).
    backup = subprocess.run(
        [
            str(exe),
            "-i",
            INVENTORY,
            str(REPO / "playbooks" / "backup.yml"),
            "-e",
            f"redis_backup_dir={BACKUP_DIR}",
        ],
        cwd=REPO,
        env=dict(os.environ, **lab),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert backup.returncode == 0, f"backup.yml failed: {backup.stdout[-2000:]}{backup.stderr[-1000:]}"
    res = subprocess.run(
        [str(exe), "-i", INVENTORY, str(REPO / "playbooks" / "verify.yml"), "--check", *BACKUP_ARG],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        raise AssertionError(
            f"verify.yml printed no JSON (rc={res.returncode}): {res.stdout[-2000:]}"
        ) from None
    for stats in doc["stats"].values():
        assert stats["changed"] == 0, f"verify.yml changed something: {doc['stats']}"
    report = None
    for play in doc["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].startswith("Gather every host's answers"):
                report = task["hosts"]["localhost"]
    assert report, f"verify.yml did not report (rc={res.returncode}): {res.stderr[-2000:]}"
    failed = [i for i in report["items"] if not i["ok"]]
    assert (res.returncode != 0) == bool(failed), f"exit code {res.returncode} with failed items {failed}"
    return {i["test"]: i for i in report["items"]}


def verify_says(report: dict, test: str, ok: bool = True) -> None:
    entry = report[test]
    assert entry["ok"] is ok, f"verify.yml row {entry['number']:02d} {entry['title']}: {entry['detail']}"


# ----------------------------------------------------------------------------------------------


def test_checklist_01_environment_variables_configured(verify_report):
    for name in APPS:
        h = host(name)
        for path in ("/etc/mcpops/config.yaml", "/etc/mcpops/secrets.env"):
            f = h.file(path)
            assert (f.user, f.group, f.mode) == ("root", "mcpuser", 0o640), f"{name}:{path}"
        check = h.run(
            "set -a; . /etc/mcpops/secrets.env; set +a; "
            f"{VENV}/bin/mcpops-server check-config --config /etc/mcpops/config.yaml"
        )
        assert check.rc == 0, f"{name}: check-config: {check.stderr}"
        for port, _s, _a in instances(name):
            pid = main_pid(name, port)
            environ = h.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
            for var in (
                "MCPOPS_CONFIG=/etc/mcpops/config.yaml",
                f"MCP_SERVER_PORT={port}",
                "REDIS_PASSWORD=",
            ):
                assert var in environ, f"{name}:{port} lacks {var.split('=')[0]} in its environment"
    verify_says(verify_report, "test_checklist_01_environment_variables_configured")


def test_checklist_02_tls_certificates_installed_and_valid(verify_report):
    for name in ALL:
        h = host(name)
        assert h.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/host.crt").rc == 0, name
        assert h.run(f"openssl x509 -noout -checkend {14 * 86400} -in {PKI}/host.crt").rc == 0, name
    for name in LBS:
        r = http(name, "127.0.0.1", 443, "https", "/health", headers={"Host": SERVER_NAME}, sni=SERVER_NAME)
        assert r["status"] == 200, f"{name}: nginx over verified TLS: {r['status']}"
    for name in APPS:
        for port, scheme, address in instances(name):
            if scheme == "https":
                health(name, port, scheme, address)  # verified against the CA for the address
    verify_says(verify_report, "test_checklist_02_tls_certificates_installed_and_valid")


def test_checklist_03_database_migrations_applied(verify_report):
    name = APPS[0]
    expected = host(name).check_output(
        f"{VENV}/bin/python -c 'from mcpops_server.notes import SCHEMA_VERSION as v; print(v)'"
    )
    ssl_group = "--property=SupplementaryGroups=ssl-cert " if host(name).group("ssl-cert").exists else ""
    out = host(name).check_output(
        "systemd-run --quiet --wait --pipe --collect --property=User=mcpuser --property=Group=mcpuser "
        f"--property=EnvironmentFile=/etc/mcpops/secrets.env {ssl_group}"
        f"{VENV}/bin/mcpops-server migrate --config /etc/mcpops/config.yaml"
    )
    assert out.strip() == f"schema_version={expected.strip()} changed=false", out
    verify_says(verify_report, "test_checklist_03_database_migrations_applied")


def test_checklist_04_redis_configured_and_accessible(verify_report):
    for name in REDIS:
        svc = host(name).service("redis-server")
        assert svc.is_running and svc.is_enabled, journal(host(name), "redis-server")
    for name in APPS:
        url = config(name)["redis"]["url"]
        if name not in REDIS:
            assert url.startswith("rediss://"), f"{name}: Redis on another host without TLS: {url}"
        for port, scheme, address in instances(name):
            assert health(name, port, scheme, address)["checks"]["redis"] == "ok", f"{name}:{port}"
    verify_says(verify_report, "test_checklist_04_redis_configured_and_accessible")


def test_checklist_05_health_check_endpoint_responding(verify_report):
    for name in APPS:
        for port, scheme, address in instances(name):
            doc = health(name, port, scheme, address)
            assert doc["status"] == "healthy" and doc["instance_id"].endswith(f"-{port}"), doc
    for name in LBS:
        r = http(name, "127.0.0.1", 443, "https", "/health", headers={"Host": SERVER_NAME}, sni=SERVER_NAME)
        assert r["status"] == 200 and json.loads(r["body"])["status"] == "healthy", r
    verify_says(verify_report, "test_checklist_05_health_check_endpoint_responding")


def test_checklist_06_metrics_endpoint_configured(verify_report):
    for name in APPS:
        for port, scheme, address in instances(name):
            r = ihttp(name, port, scheme, address, "/metrics")
            assert r["status"] == 200 and r["headers"]["content-type"].startswith("text/plain"), r["status"]
            for series in ("mcp_http_requests_total", "mcp_tool_calls_total", "mcp_health_check_ok"):
                assert f"# TYPE {series}" in r["body"], f"{name}:{port} lacks {series}"
    verify_says(verify_report, "test_checklist_06_metrics_endpoint_configured")


def test_checklist_07_logging_configured_structured_json(verify_report):
    for name in APPS:
        for port, _s, _a in instances(name):
            lines = host(name).check_output(
                f"journalctl _SYSTEMD_UNIT=mcpops-server@{port}.service -o cat -n 20 --no-pager"
            )
            records = [json.loads(line) for line in lines.splitlines() if line.strip()]
            assert records, f"{name}:{port}: no journal line"
            for rec in records:
                assert {"timestamp", "level", "logger", "message", "instance_id"} <= rec.keys(), rec
    for name in COLLECTORS:
        files = host(name).check_output("ls /var/log/mcpops/*/mcpops-server.json").split()
        assert {f.split("/")[4] for f in files} >= set(APPS), f"{name}: collected from {files}"
        last = json.loads(host(name).check_output(f"tail -n 1 {shlex.quote(files[0])}"))
        assert {"time", "host", "service", "message"} <= last.keys(), last
    verify_says(verify_report, "test_checklist_07_logging_configured_structured_json")


def test_checklist_08_cors_configured_with_allowed_origins(verify_report):
    for name in APPS:
        origins = config(name).get("cors", {}).get("allowed_origins", [])
        assert "*" not in origins
        for port, scheme, address in instances(name):
            pre = {"Origin": "https://elsewhere.invalid", "Access-Control-Request-Method": "POST"}
            r = ihttp(name, port, scheme, address, "/mcp", "OPTIONS", pre)
            assert r["status"] == 403 and "access-control-allow-origin" not in r["headers"], r
            for origin in origins[:1]:
                r = ihttp(name, port, scheme, address, "/mcp", "OPTIONS", dict(pre, Origin=origin))
                assert r["headers"].get("access-control-allow-origin") == origin, r
    verify_says(verify_report, "test_checklist_08_cors_configured_with_allowed_origins")


def test_checklist_09_rate_limiting_enabled(verify_report):
    for name in APPS:
        rl = config(name)["ratelimit"]
        assert rl["enabled"] is True and rl["requests_per_minute"] > 0, rl
        for port, scheme, address in instances(name):
            body = ihttp(name, port, scheme, address, "/metrics")["body"]
            assert re.search(r"^mcp_ratelimit_breaker_open 0\.0$", body, re.M), f"{name}:{port} breaker open"
    for name in LBS:
        conf = host(name).check_output("nginx -T -q")
        assert re.search(r"limit_req_zone \S+ zone=mcpops_req:\S+ rate=\S+;", conf)
        assert re.search(r"location ~ \^/mcp/\?\$ \{\s*limit_req zone=mcpops_req", conf)
    verify_says(verify_report, "test_checklist_09_rate_limiting_enabled")


def test_checklist_10_authentication_server_connectivity_verified(verify_report):
    for name in APPS:
        for port, scheme, address in instances(name):
            assert health(name, port, scheme, address)["checks"]["auth_server"] == "ok", f"{name}:{port}"
            r = ihttp(name, port, scheme, address, "/mcp", "POST", {"Content-Type": "application/json"})
            assert r["status"] == 401 and "resource_metadata=" in r["headers"].get("www-authenticate", ""), r
    verify_says(verify_report, "test_checklist_10_authentication_server_connectivity_verified")


def test_checklist_11_firewall_rules_configured(verify_report):
    for name in ALL:
        chains = [e["chain"] for e in nft(name)["nftables"] if "chain" in e]
        inp = [c for c in chains if c.get("hook") == "input"]
        assert inp and all(c["policy"] == "drop" for c in inp), f"{name}: {chains}"
        assert host(name).service("nftables").is_enabled, name
    # Behaviour, where the topology has a host outside Redis' sources: it cannot reach Redis.
    outsiders = [h for h in LBS if h not in APPS and h not in REDIS]
    if outsiders and REDIS:
        from conftest import connect

        assert connect(host(outsiders[0]), REDIS[0], 6379).startswith("closed"), "Redis reachable from the lb"
    verify_says(verify_report, "test_checklist_11_firewall_rules_configured")


def test_checklist_12_load_balancer_health_checks_configured(verify_report):
    for name in LBS:
        conf = host(name).check_output("nginx -T -q")
        block = re.search(r"upstream mcpops_all \{(.*?)\}", conf, re.S).group(1)
        servers = re.findall(r"server (\S+) ([^;]*);", block)
        assert servers and all("max_fails=" in p and "fail_timeout=" in p for _a, p in servers), servers
        assert re.search(r"proxy_next_upstream error timeout;", conf)
    verify_says(verify_report, "test_checklist_12_load_balancer_health_checks_configured")


def test_checklist_13_monitoring_and_alerting_set_up(verify_report):
    for name in MONITORING:

        def all_up(name=name):
            r = http(name, "127.0.0.1", 9090, "http", "/api/v1/targets?state=active")
            targets = json.loads(r["body"])["data"]["activeTargets"]
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        wait_until(all_up, timeout=60, interval=2, what=f"{name}: every Prometheus target up")
        rules = json.loads(http(name, "127.0.0.1", 9090, "http", "/api/v1/rules")["body"])["data"]["groups"]
        alerting = [r for g in rules for r in g["rules"] if r["type"] == "alerting"]
        assert alerting and all(r["health"] == "ok" for r in alerting), alerting
        assert http(name, "127.0.0.1", 9093, "http", "/-/ready")["status"] == 200
    verify_says(verify_report, "test_checklist_13_monitoring_and_alerting_set_up")


def test_checklist_14_backup_and_disaster_recovery_plan_in_place(verify_report):
    entry = verify_report["test_checklist_14_backup_and_disaster_recovery_plan_in_place"]
    # What backup.yml stores: <dir>/<host>/redis-<host>-<time>.rdb beside its .sha256, one per Redis host.
    backups = [p for p in Path(BACKUP_DIR).glob("*/redis-*.rdb") if p.with_name(p.name + ".sha256").exists()]
    if not backups:
        # verify.yml must say so, naming the directory; the item itself is not in place.
        assert not entry["ok"] and BACKUP_DIR in entry["detail"], entry
        pytest.fail(
            f"no backup in {BACKUP_DIR}: run playbooks/backup.yml (verify.yml says: {entry['detail']})"
        )
    for name in REDIS:
        assert any(p.parent.name == name for p in backups), f"no backup of {name} in {BACKUP_DIR}"
    verify_says(verify_report, "test_checklist_14_backup_and_disaster_recovery_plan_in_place")


def test_checklist_15_security_headers_configured(verify_report):
    for name in LBS:
        for path in ("/health", "/no-such-page"):
            r = http(name, "127.0.0.1", 443, "https", path, headers={"Host": SERVER_NAME}, sni=SERVER_NAME)
            hdr = r["headers"]
            assert int(re.search(r"max-age=(\d+)", hdr["strict-transport-security"]).group(1)) >= 15768000
            assert hdr["x-content-type-options"] == "nosniff" and hdr["x-frame-options"] == "DENY", path
            assert "content-security-policy" in hdr and "referrer-policy" in hdr, (path, hdr)
        r = http(name, "127.0.0.1", 80, "http", "/health", headers={"Host": SERVER_NAME})
        assert r["status"] == 301 and r["headers"]["location"].startswith("https://"), r
    verify_says(verify_report, "test_checklist_15_security_headers_configured")


def test_checklist_16_non_root_system_user(verify_report):
    for name in APPS:
        h = host(name)
        for port, _s, _a in instances(name):
            pid = main_pid(name, port)
            uids = h.check_output(f"awk '/^Uid:/ {{print $2, $3, $4, $5}}' /proc/{pid}/status").split()
            assert uids and "0" not in uids, f"{name}:{port} uids {uids}"
        user = h.user("mcpuser")
        assert user.uid < 1000 and user.shell.endswith("nologin"), (user.uid, user.shell)
        assert h.file("/opt/mcpops/current/venv").user == "root"
    for name in REDIS:
        assert "root" not in host(name).check_output("ps -o user= -C redis-server").split()
    for name in LBS:
        workers = host(name).check_output("ps -o user=,args= -C nginx")
        assert all(line.split()[0] == "www-data" for line in workers.splitlines() if "worker" in line)
    verify_says(verify_report, "test_checklist_16_non_root_system_user")


def test_checklist_17_resource_limits_configured(verify_report):
    for name in APPS:
        for port, _s, _a in instances(name):
            main_pid(name, port)
            props = show(name, f"mcpops-server@{port}", "MemoryMax", "LimitNOFILE", "ControlGroup")
            assert props["MemoryMax"] != "infinity" and int(props["LimitNOFILE"]) >= 1024, props
            cg = props["ControlGroup"]
            v2, v1 = shlex.quote(f"/sys/fs/cgroup{cg}/memory.max"), shlex.quote(f"/sys/fs/cgroup/memory{cg}")
            live = host(name).run(f"cat {v2} 2>/dev/null || cat {v1}/memory.limit_in_bytes")
            assert live.stdout.strip() == props["MemoryMax"], f"{name}:{port} kernel limit {live.stdout!r}"
    verify_says(verify_report, "test_checklist_17_resource_limits_configured")


def test_checklist_18_adding_an_app_host_wires_it_in(verify_report):
    """What follows an app host added to mcp_servers and a site.yml run (docs/checklist.md)."""
    for name in LBS:
        conf = host(name).check_output("nginx -T -q")
        # Session affinity: the map sends "<route id>.<hex>" session ids to the owning instance.
        routes = {r.replace("\\", "") for r in re.findall(r'"~\^([A-Za-z0-9\\-]+)\\\." mcpops_', conf)}
        for app in APPS:
            for port, _s, _a in instances(app):
                assert route(app, port) in routes, f"nginx has no route for {app}:{port}: {routes}"
        block = re.search(r"upstream mcpops_all \{(.*?)\}", conf, re.S).group(1)
        assert len(re.findall(r"server \S+ max_fails", block)) == sum(len(instances(a)) for a in APPS)
    for name in MONITORING:
        r = http(name, "127.0.0.1", 9090, "http", "/api/v1/targets?state=active")
        have = {t["labels"]["instance"] for t in json.loads(r["body"])["data"]["activeTargets"]}
        want = {f"{a}:{p}" for a in APPS for p, _s, _x in instances(a)}
        assert want <= have, f"Prometheus lacks {want - have}"
    for name in REDIS:
        sets = nft_sets(nft(name))
        for app in APPS:
            for address in addresses(app):
                if ":" not in address:
                    assert address in sets.get("redis_sources_v4", ""), (
                        f"{name}: Redis closed to {app} {address}"
                    )
    for name in APPS:
        sets = nft_sets(nft(name))
        for peer in set(LBS + MONITORING):
            for address in addresses(peer):
                if ":" not in address:
                    assert address in sets.get("instances_sources_v4", ""), (
                        f"{name}: instances closed to {peer}"
                    )
    verify_says(verify_report, "test_checklist_18_adding_an_app_host_wires_it_in")
