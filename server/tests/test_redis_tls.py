"""Redis over verified, mutual TLS (rediss://) against a real TLS-only redis-server.

The Redis here listens on a TLS port only (``--port 0``) and requires a client certificate
(``tls-auth-clients yes``); its certificate (SAN localhost, 127.0.0.1) and the clients' come from a
throwaway CA made for the module. Each instance differs from the good one in one thing only: no TLS,
another CA, no client certificate, a host name the certificate does not name.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import mcp_session
from mcpops_server.config import ConfigError, load_settings
from mcpops_server.notes import SCHEMA_VERSION
from mcpops_server.redisclient import redis_client, tls_context
from mcpops_testlib import (
    ACCEPT_BOTH,
    INIT_REQUEST,
    PYTHON,
    PYTHONPATH,
    RedisServer,
    RedisTLS,
    ServerProc,
    ThrowawayCA,
    running,
    wait_for,
)

SOCKET_TIMEOUT = 1.0


@dataclass
class Pki:
    ca: ThrowawayCA
    rogue: ThrowawayCA  # another CA: the good certificates do not chain to it
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    rogue_client: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    workdir = tmp_path_factory.mktemp("redis-pki")
    ca = ThrowawayCA(workdir, "mcpops-test-ca")
    rogue = ThrowawayCA(workdir, "rogue-ca")
    return Pki(
        ca=ca,
        rogue=rogue,
        server=ca.issue("redis", "localhost", "127.0.0.1"),
        client=ca.issue("app", "app.test"),
        rogue_client=rogue.issue("rogue-app", "app.test"),
    )


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """TLS only, client certificates required; also on 127.0.0.2, a name its certificate lacks."""
    tls = RedisTLS(*pki.server, pki.ca.cert_file, *pki.client)
    r = RedisServer(tmp_path_factory.mktemp("redis-tls"), tls=tls, bind=("127.0.0.1", "127.0.0.2"))
    r.start()
    yield r
    r.stop()


def _tls_env(redis: RedisServer, pki: Pki, **over: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis.url,
        "REDIS_TLS_CA_FILE": str(pki.ca.cert_file),
        "REDIS_TLS_CERT_FILE": str(pki.client[0]),
        "REDIS_TLS_KEY_FILE": str(pki.client[1]),
        "REDIS_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT),
        "AUTH_ENABLED": "false",
        "LOG_FORMAT": "text",
    }
    env.update(over)
    return {key: value for key, value in env.items() if value}


class Instances:
    good: ServerProc
    limited: ServerProc
    plain: ServerProc
    rogue_ca: ServerProc
    no_client_cert: ServerProc
    wrong_name: ServerProc


@pytest.fixture(scope="module")
def inst(workdir: Path, tls_redis: RedisServer, pki: Pki) -> Iterator[Instances]:
    i = Instances()
    # A Redis failure in the limiter answers 503 here, so every 200 is a check done in Redis over TLS.
    deny = {"RATE_LIMIT_ON_REDIS_ERROR": "deny"}
    # The failing ones: /health's own deadline far above the socket timeout, so only the latter bounds it.
    failing = {"HEALTH_TIMEOUT": "10", "HEALTH_CACHE_TTL": "0"}
    i.good = ServerProc(
        "tls-good", workdir / "tls-good", _tls_env(tls_redis, pki, REDIS_KEY_PREFIX="t-tls:", **deny)
    )
    i.limited = ServerProc(
        "tls-limited",
        workdir / "tls-limited",
        # below 40: every request is counted in Redis (chunk of 1)
        _tls_env(tls_redis, pki, REDIS_KEY_PREFIX="t-tlsrl:", RATE_LIMIT_PER_MINUTE="3", **deny),
    )
    plain_url = tls_redis.url.replace("rediss://", "redis://")
    i.plain = ServerProc(
        "tls-plain",
        workdir / "tls-plain",
        _tls_env(
            tls_redis,
            pki,
            REDIS_URL=plain_url,
            REDIS_TLS_CA_FILE="",
            REDIS_TLS_CERT_FILE="",
            REDIS_TLS_KEY_FILE="",
            **failing,
        ),
    )
    i.rogue_ca = ServerProc(
        "tls-rogue-ca",
        workdir / "tls-rogue-ca",
        _tls_env(
            tls_redis,
            pki,
            REDIS_TLS_CA_FILE=str(pki.rogue.cert_file),
            REDIS_TLS_CERT_FILE=str(pki.rogue_client[0]),
            REDIS_TLS_KEY_FILE=str(pki.rogue_client[1]),
            **failing,
        ),
    )
    i.no_client_cert = ServerProc(
        "tls-no-client-cert",
        workdir / "tls-no-client-cert",
        _tls_env(tls_redis, pki, REDIS_TLS_CERT_FILE="", REDIS_TLS_KEY_FILE="", **failing),
    )
    i.wrong_name = ServerProc(
        "tls-wrong-name",
        workdir / "tls-wrong-name",
        _tls_env(tls_redis, pki, REDIS_URL=tls_redis.url.replace("127.0.0.1", "127.0.0.2"), **failing),
    )
    with running(i.good, i.limited, i.plain, i.rogue_ca, i.no_client_cert, i.wrong_name):
        yield i


def _health(s: ServerProc) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    r = httpx2.get(s.base + "/health", timeout=30)
    return r.status_code, r.json(), time.monotonic() - t0


def _metric(s: ServerProc, name: str, **labels: str) -> float:
    return s.metric(httpx2.get(s.base + "/metrics").text, name, **labels)


# ---------------------------------------------------------------------------------- it works


def test_notes_and_health_over_mutual_tls(inst: Instances, tls_redis: RedisServer, pki: Pki):
    s = inst.good

    # Polled: six instances start at once against one TLS Redis, four of them failing their
    # handshakes, and on a loaded 2-core machine the first check of the good one once came back
    # "unreachable" (fresh-clone CI); what must hold is that it is healthy, not on the first probe.
    def healthy() -> bool:
        code, body, _ = _health(s)
        return (code, body["status"], body["checks"]["redis"]) == (200, "healthy", "ok")

    try:
        wait_for(healthy, timeout=15, what="/health healthy over mutual TLS", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- instance log ---\n{s.log_text()[-4000:]}") from None
    title = "tls-" + uuid.uuid4().hex

    async def go():
        async with mcp_session(s.mcp_url) as c:
            added = (await c.call_tool("notes_add", {"title": title, "tags": ["tls"]})).structured_content
            got = await c.call_tool("notes_get", {"note_id": added["id"]})
            assert not got.is_error and got.structured_content["title"] == title
        return added["id"]

    anyio.run(go)

    # The note is in the TLS Redis, under the instance's prefix (read with the server's own client).
    async def stored() -> list[bytes]:
        settings = load_settings(None, {**_tls_env(tls_redis, pki), "MCPOPS_CONFIG": ""})
        r = redis_client(settings)
        try:
            return [key async for key in r.scan_iter(match="t-tls:notes:*", count=500)]
        finally:
            await r.aclose()

    assert anyio.run(stored)


def test_the_rate_limiters_pool_also_speaks_tls(inst: Instances):
    """3 a minute, counted in Redis one by one: 200s until a 429, never a 503 (deny on a Redis error)."""
    s = inst.limited
    statuses = []
    for _ in range(7):  # 3 + 3 if a minute window turns over in between, then the limit
        r = httpx2.post(
            s.mcp_url, json=INIT_REQUEST, headers={"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses
    assert _metric(s, "mcp_ratelimit_redis_errors_total", action="deny") == 0


def test_migrate_over_mutual_tls(tls_redis: RedisServer, pki: Pki, tmp_path: Path):
    (tmp_path / "c.yaml").write_text("{}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": PYTHONPATH,
        "MCPOPS_CONFIG": str(tmp_path / "c.yaml"),
        **_tls_env(tls_redis, pki, REDIS_KEY_PREFIX=f"mig-{uuid.uuid4().hex[:6]}:"),
    }
    cmd = [PYTHON, "-m", "mcpops_server.cli", "migrate"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"schema_version={SCHEMA_VERSION} changed=true"
    no_cert = {**env, "REDIS_TLS_CERT_FILE": "", "REDIS_TLS_KEY_FILE": ""}
    refused = subprocess.run(cmd, env=no_cert, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("migrate: failed: "), refused.stderr


# ---------------------------------------------------------------------------------- it refuses


# What the log says for each; the instances differ from the good one only in the setting named.
REFUSALS: dict[str, tuple[str, ...]] = {
    # Redis drops a client that does not start TLS: a reset, or a close
    "plain": ("Error while reading from 127.0.0.1", "Connection closed by server"),
    "rogue_ca": ("CERTIFICATE_VERIFY_FAILED",),
    # Redis' alert, read after the TLS 1.3 handshake, or the reset that follows it when read later
    "no_client_cert": ("CERTIFICATE_REQUIRED", "Connection reset by peer", "Connection closed by server"),
    "wrong_name": ("IP address mismatch, certificate is not valid for '127.0.0.2'",),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_health_is_unhealthy_and_quick_when_tls_does_not_hold(inst: Instances, name: str):
    """A plain client at the TLS port, a server certificate from another CA, no client certificate,
    a host name the certificate does not name: no command reaches Redis, /health says so at once and
    the log says why."""
    s = getattr(inst, name)
    code, body, took = _health(s)
    assert code == 503 and body["status"] == "unhealthy", body
    assert body["checks"]["redis"] in ("unreachable", "error"), body
    # one connect and one reconnect, each bounded by redis.socket_timeout; /health's own deadline is 10 s
    assert took < 2 * SOCKET_TIMEOUT + 3, took
    wait_for(lambda: "health check redis failed" in s.log_text(), 5, f"{name}: the failure in the log")
    failure = next(line for line in s.log_text().splitlines() if "health check redis failed" in line)
    assert any(cause in failure for cause in REFUSALS[name]), failure


def test_the_good_instance_never_failed_to_reach_redis(inst: Instances):
    _health(inst.good)
    assert "not reachable" not in inst.good.log_text() and "failed" not in inst.good.log_text()


# ---------------------------------------------------------------------------------- check-config


def _problems(env: dict[str, str]) -> list[str]:
    try:
        load_settings(None, {"AUTH_ENABLED": "false", **env, "MCPOPS_CONFIG": ""})
    except ConfigError as exc:
        return exc.lines()
    return []


def test_check_config_accepts_rediss_with_or_without_files(pki: Pki):
    url = "rediss://redis.example:6379/0"
    ca, (cert, key) = str(pki.ca.cert_file), (str(p) for p in pki.client)
    assert _problems({"REDIS_URL": url}) == []  # the system's CA store
    assert _problems({"REDIS_URL": url, "REDIS_TLS_CA_FILE": ca}) == []
    settings = load_settings(
        None,
        {
            "AUTH_ENABLED": "false",
            "MCPOPS_CONFIG": "",
            "REDIS_URL": url,
            "REDIS_TLS_CA_FILE": ca,
            "REDIS_TLS_CERT_FILE": cert,
            "REDIS_TLS_KEY_FILE": key,
        },
    )
    assert settings.redis.tls and settings.redis.tls_key_file == key


def test_check_config_refuses_what_cannot_work(pki: Pki, tmp_path: Path):
    rediss = {"REDIS_URL": "rediss://127.0.0.1:6380/0"}
    ca, cert, key = str(pki.ca.cert_file), str(pki.client[0]), str(pki.client[1])
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases = [
        (
            {**rediss, "REDIS_TLS_CA_FILE": "/nonexistent/ca.crt"},
            "config: REDIS_TLS_CA_FILE = /nonexistent/ca.crt: the path of an existing, readable file",
        ),
        (
            {**rediss, "REDIS_TLS_CERT_FILE": cert},
            'config: redis.tls_key_file = "": set together with REDIS_TLS_CERT_FILE',
        ),
        (
            {**rediss, "REDIS_TLS_KEY_FILE": key},
            'config: redis.tls_cert_file = "": set together with REDIS_TLS_KEY_FILE',
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_TLS_CA_FILE": ca},
            f"config: REDIS_TLS_CA_FILE = {ca}: only with a rediss:// URL in REDIS_URL "
            "(it is redis://127.0.0.1:6379/0)",
        ),
        (
            {
                "REDIS_URL": "unix:///run/redis/redis.sock",
                "REDIS_TLS_CERT_FILE": cert,
                "REDIS_TLS_KEY_FILE": key,
            },
            f"config: REDIS_TLS_CERT_FILE = {cert}: only with a rediss:// URL in REDIS_URL",
        ),
        (
            {**rediss, "REDIS_TLS_CERT_FILE": cert, "REDIS_TLS_KEY_FILE": str(pki.rogue_client[1])},
            f"config: REDIS_TLS_KEY_FILE = {pki.rogue_client[1]}: an unencrypted PEM private key matching "
            "the certificate in REDIS_TLS_CERT_FILE",
        ),
        (
            {**rediss, "REDIS_TLS_CA_FILE": str(not_pem)},
            f"config: REDIS_TLS_CA_FILE = {not_pem}: a file of PEM CA certificates",
        ),
    ]
    for env, expected in cases:
        lines = _problems(env)
        assert any(line.startswith(expected) for line in lines), (env, lines)


def test_check_config_cli_lists_every_tls_problem_at_once(pki: Pki, tmp_path: Path):
    (tmp_path / "c.yaml").write_text(
        "redis:\n  url: redis://127.0.0.1:6379/0\n"
        f"  tls_cert_file: {pki.client[0]}\n  tls_key_file: {tmp_path / 'missing.key'}\n"
        "auth:\n  enabled: false\n"
    )
    r = subprocess.run(
        [PYTHON, "-m", "mcpops_server.cli", "check-config"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHONPATH, "MCPOPS_CONFIG": str(tmp_path / "c.yaml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines() == [
        f"config: redis.tls_key_file = {tmp_path / 'missing.key'}: the path of an existing, readable file",
        f"config: redis.tls_cert_file = {pki.client[0]}: only with a rediss:// URL in redis.url "
        "(it is redis://127.0.0.1:6379/0)",
    ], r.stderr


def test_the_tls_context_verifies_and_pins_the_ca(pki: Pki):
    """Whatever the URL says, the context checks the certificate and the name, TLS 1.2 or later, and
    trusts the given CA only (not the system's besides)."""
    env = {"REDIS_URL": "rediss://127.0.0.1:1/0", "REDIS_TLS_CA_FILE": str(pki.ca.cert_file)}
    settings = load_settings(None, {"AUTH_ENABLED": "false", "MCPOPS_CONFIG": "", **env})
    context = tls_context(settings.redis)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "mcpops-test-ca"),),)]
    asyncio.run(redis_client(settings).aclose())
