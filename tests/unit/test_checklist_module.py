"""The pure parts of plugins/modules/mcpops_checklist.py: the item map, the parsers of what hosts
print (nginx -T, nft -j, the journal, EnvironmentFile) and the report over every host's answers."""

from __future__ import annotations

import ast
import os
import re
import time
from pathlib import Path

from ansible_collections.mcpops.deploy.plugins.modules import mcpops_checklist as m

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = {
    "mcp_servers": ["app1", "app2"],
    "mcp_lb": ["lb"],
    "redis": ["data"],
    "monitoring": ["ops"],
    "log_collectors": ["ops"],
}


def test_eighteen_items_in_the_seeds_order():
    seed_titles = [
        "Environment variables", "TLS certificates", "Database migrations", "Redis/cache", "Health check",
        "Metrics endpoint", "Logging configured", "CORS configured", "Rate limiting", "Authentication server",
        "Firewall rules", "Load balancer health", "Monitoring and alerting", "Backup and disaster",
        "Security headers", "Non-root", "Resource limits", "Adding an app host",
    ]  # fmt: skip
    assert len(m.ITEMS) == 18
    for (_key, title, _test, _groups), start in zip(m.ITEMS, seed_titles, strict=True):
        assert title.startswith(start), title


def test_every_item_has_its_test_and_its_docs_row():
    tests = {
        node.name
        for node in ast.parse((ROOT / "molecule/cluster/tests/test_checklist.py").read_text()).body
        if isinstance(node, ast.FunctionDef)
    }
    docs = (ROOT / "docs/checklist.md").read_text()
    for n, (_key, _title, test, _groups) in enumerate(m.ITEMS, start=1):
        name = f"test_checklist_{n:02d}_{test}"
        assert name in tests, name
        assert re.search(rf"^\| {n} \|.*`{name}`", docs, re.M), f"docs/checklist.md lacks row {n} {name}"


def test_items_follow_the_groups():
    assert m.items_for(["mcp_lb"]) == [
        "tls",
        "health",
        "ratelimit",
        "firewall",
        "lb_health",
        "headers",
        "scaling",
    ]
    assert "backup" not in m.items_for(list(CLUSTER))
    assert m.items_for([]) == []
    assert m.items_for(["redis"]) == ["tls", "redis", "firewall", "scaling"]


NGINX = """
upstream mcpops_all {
    server 10.0.0.2:8000 max_fails=1 fail_timeout=10s;
    server [fd00::3]:8000 max_fails=1 fail_timeout=10s;
    keepalive 32;
}
upstream mcpops_app1_8000 {
    server 10.0.0.2:8000 max_fails=1 fail_timeout=10s;
    server [fd00::3]:8000 backup;
}
proxy_next_upstream error timeout;
"""


def test_nginx_upstreams_need_passive_checks_on_every_active_server():
    item = m.Item()
    assert m.upstream_findings(NGINX, item) == ["10.0.0.2:8000", "[fd00::3]:8000"]
    assert item.ok, item.notes
    item = m.Item()
    m.upstream_findings(
        NGINX.replace("max_fails=1 fail_timeout=10s;\n    server [fd00", "max_fails=0;\n    server [fd00"),
        item,
    )
    assert not item.ok and "10.0.0.2:8000" in item.result()["detail"]
    item = m.Item()
    m.upstream_findings(NGINX.replace("proxy_next_upstream error timeout;", ""), item)
    assert not item.ok
    assert m.hostport("fd00::3", 8000) == "[fd00::3]:8000"


def test_nft_sets_and_uncovered_addresses():
    doc = {"nftables": [
        {"chain": {"name": "input", "hook": "input", "policy": "drop"}},
        {"set": {"name": "redis_sources_v4", "elem": [
            "10.0.0.2", {"prefix": {"addr": "10.1.0.0", "len": 16}},
            {"range": ["192.168.48.3", "192.168.48.4"]}]}},
        {"set": {"name": "redis_sources_v6", "elem": [{"elem": {"val": "fd00::3", "timeout": 0}}]}},
    ]}  # fmt: skip
    chains, sets = m.nft_sets(doc)
    assert chains["input"]["policy"] == "drop"
    nets = sets["redis_sources_v4"] + sets["redis_sources_v6"]
    # auto-merge joins neighbouring addresses into a range (two app hosts on one docker network)
    assert m.uncovered(["10.0.0.2", "10.1.9.9", "fd00::3", "192.168.48.3", "192.168.48.4"], nets) == []
    assert m.uncovered(["192.168.48.5"], nets) == ["192.168.48.5"]
    assert m.uncovered(["10.0.0.3", "fd00::4"], nets) == ["10.0.0.3", "fd00::4"]


def test_log_lines_and_environment_files():
    assert m.json_lines(['{"a": 1}', "", '{"b": 2}']) == (2, None)
    assert m.json_lines(['{"a": 1}', "Traceback (most recent call last):", "[1]"]) == (
        1,
        "Traceback (most recent call last):",
    )
    env = m.parse_env_file('# c\nREDIS_PASSWORD=s3cr=t\nA="quoted value"\n\nnot a pair\n')
    assert env == {"REDIS_PASSWORD": "s3cr=t", "A": "quoted value"}
    assert m.parse_show("MemoryMax=536870912\nUser=mcpuser\n") == {
        "MemoryMax": "536870912",
        "User": "mcpuser",
    }


def test_cgroup_memory_limit_v1_and_v2(tmp_path):
    (tmp_path / "a.service").mkdir()
    (tmp_path / "a.service" / "memory.max").write_text("536870912\n")
    assert m.cgroup_memory_limit("/a.service", str(tmp_path)) == "536870912"
    (tmp_path / "memory" / "b.service").mkdir(parents=True)
    (tmp_path / "memory" / "b.service" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert m.cgroup_memory_limit("/b.service", str(tmp_path)) == "max"
    assert m.cgroup_memory_limit("", str(tmp_path)) == "not running"
    assert m.cgroup_memory_limit("/c.service", str(tmp_path)) == "unknown"


def test_newest_backup(tmp_path):
    now = time.time()
    assert m.newest_backup(str(tmp_path / "none"), now)[0] is None
    assert "no backup" in m.newest_backup(str(tmp_path), now)[1]
    folder = tmp_path / "data1"
    folder.mkdir()
    (folder / "redis-data1-20260101T000000Z.rdb").write_text("x")  # no .sha256: not a backup
    (folder / "notes.txt").write_text("x")
    assert m.newest_backup(str(tmp_path), now)[0] is None
    for stamp, age_h in (("20260101T000000Z", 50), ("20260102T000000Z", 3)):
        rdb = folder / f"redis-data1-{stamp}.rdb"
        rdb.write_text("REDIS0010")
        (folder / f"{rdb.name}.sha256").write_text("0" * 64 + f"  {rdb.name}\n")
        os.utime(rdb, (now - age_h * 3600, now - age_h * 3600))
    path, age = m.newest_backup(str(tmp_path), now)
    assert path.endswith("redis-data1-20260102T000000Z.rdb") and round(age) == 3


def test_report_fails_an_item_a_host_did_not_answer():
    answers = {key: {"ok": True, "detail": "fine"} for key, *_ in m.ITEMS}
    results = {h: answers for h in ("app1", "lb", "data", "ops")}  # app2 unreachable
    out = m.report(results, CLUSTER, ("/b/20260102", 1.0), 26)
    by_key = {i["key"]: i for i in out["items"]}
    assert by_key["lb_health"]["ok"] and by_key["lb_health"]["hosts"] == ["lb"]
    assert not by_key["health"]["ok"] and "app2: FAIL no answer" in by_key["health"]["detail"]
    assert by_key["firewall"]["hosts"] == ["app1", "app2", "data", "lb", "ops"]
    assert by_key["backup"]["ok"] and by_key["backup"]["hosts"] == ["controller"]
    assert len(out["rows"]) == 18 and out["rows"][0].startswith(
        "FAIL 01 Environment variables configured [app1, app2]"
    )


def test_report_backup_row_says_why():
    out = m.report({}, {}, (None, "no backup in /b: run playbooks/backup.yml"), 26)
    backup = next(i for i in out["items"] if i["key"] == "backup")
    assert not backup["ok"] and "run playbooks/backup.yml" in backup["detail"]
    assert not next(i for i in out["items"] if i["key"] == "monitoring")["ok"]  # no host: fails
    old = m.report({}, {}, ("/b/x", 30.0), 26)
    assert "14 Backup and disaster recovery plan in place" in old["failed_items"]
