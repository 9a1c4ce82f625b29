"""Redis as the redis role leaves it: loopback only, ACL auth, AOF, durable across a restart."""

from __future__ import annotations

import time

import pytest
from conftest import (
    assert_active,
    instances,
    journal,
    lab_secret,
    probe,
    redis_cli,
    wait_healthy,
    wait_until,
)

APP_USER = "mcpops"
ADMIN_USER = "admin"


@pytest.fixture(scope="module")
def admin_password() -> str:
    return lab_secret("redis_admin")


@pytest.fixture(scope="module")
def app_password() -> str:
    return lab_secret("redis_app")


def admin(host, password, *args):
    res = redis_cli(host, *args, user=ADMIN_USER, password=password)
    assert res.rc == 0, f"redis-cli {args} as admin failed: {res.stdout} {res.stderr}"
    return res.stdout.strip()


def test_redis_is_running(host):
    assert_active(host, "redis-server")


def test_redis_listens_on_loopback_only(host):
    out = host.check_output("ss -H -ltn")
    addrs = [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(":6379")]
    assert addrs, f"nothing listens on port 6379:\n{out}\n{journal(host, 'redis-server')}"
    not_loopback = [a for a in addrs if not (a.startswith("127.") or a.startswith("[::1]"))]
    assert not not_loopback, f"Redis listens beyond loopback: {not_loopback}"
    assert "127.0.0.1:6379" in addrs


def test_redis_refuses_commands_without_auth(host, app_password):
    anon = redis_cli(host, "PING")
    assert "NOAUTH" in anon.stdout + anon.stderr, f"unauthenticated PING was not refused: {anon.stdout!r}"
    anon_get = redis_cli(host, "GET", "mcpops:schema_version")
    assert "NOAUTH" in anon_get.stdout + anon_get.stderr
    wrong = redis_cli(host, "PING", user=APP_USER, password=app_password + "x")
    assert "WRONGPASS" in wrong.stdout + wrong.stderr, f"a wrong password was accepted: {wrong.stdout!r}"
    ok = redis_cli(host, "PING", user=APP_USER, password=app_password)
    assert ok.stdout.strip() == "PONG", f"the app user cannot PING: {ok.stdout!r} {ok.stderr!r}"


def test_app_user_is_limited_to_its_prefix_and_not_dangerous(host, app_password):
    def app(*args):
        return redis_cli(host, *args, user=APP_USER, password=app_password)

    assert app("SET", "mcpops:test:acl", "1").stdout.strip() == "OK"
    assert app("DEL", "mcpops:test:acl").stdout.strip() == "1"
    for cmd in (["SET", "other:key", "1"], ["FLUSHALL"], ["CONFIG", "GET", "maxmemory"], ["KEYS", "*"]):
        res = app(*cmd)
        assert "NOPERM" in res.stdout + res.stderr, f"app user ran {cmd}: {res.stdout!r}"


def test_persistence_settings(host, admin_password):
    assert admin(host, admin_password, "CONFIG", "GET", "appendonly").splitlines() == ["appendonly", "yes"]
    assert admin(host, admin_password, "CONFIG", "GET", "appendfsync").splitlines()[1] == "everysec"
    assert admin(host, admin_password, "CONFIG", "GET", "maxmemory-policy").splitlines()[1] == "noeviction"
    assert admin(host, admin_password, "CONFIG", "GET", "protected-mode").splitlines()[1] == "yes"
    assert host.file("/var/lib/redis/appendonlydir").is_directory


def test_packaged_unit_untouched_and_container_dropin(host):
    dropin = host.file("/etc/systemd/system/redis-server.service.d/mcpops.conf")
    assert dropin.exists
    verify = host.run("dpkg --verify redis-server")
    assert "redis-server.service" not in verify.stdout, f"the packaged unit was edited: {verify.stdout}"
    virt = host.run("systemd-detect-virt --container").stdout.strip()
    private_users = host.check_output("systemctl show -p PrivateUsers --value redis-server")
    protect_proc = host.check_output("systemctl show -p ProtectProc --value redis-server")
    assert protect_proc == "invisible"
    if virt and virt != "none":
        assert private_users == "no", "the container drop-in did not reset PrivateUsers"
        assert "217/USER" in dropin.content_string, "the drop-in does not say why it exists"
    else:
        assert private_users == "yes"


def test_notes_survive_a_redis_restart(host, token):
    port = instances(host)[0]
    url = f"http://127.0.0.1:{port}/mcp"
    body = f"durable-{time.time_ns()}"
    added = probe(host, url, token=token, calls=[("notes_add", {"title": "durability", "body": body})])
    assert added["ok"], added
    note_id = added["calls"][0]["structured"]["id"]

    host.run_expect([0], "systemctl restart redis-server")
    assert_active(host, "redis-server")
    for p in instances(host):
        wait_healthy(host, p, timeout=30)

    def fetch():
        got = probe(host, url, token=token, calls=[("notes_get", {"note_id": note_id})])
        return got if got["ok"] and not got["calls"][0]["is_error"] else None

    got = wait_until(fetch, timeout=30, what=f"note {note_id} readable after the Redis restart")
    assert got["calls"][0]["structured"]["body"] == body
