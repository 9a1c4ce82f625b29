from __future__ import annotations

import base64
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

# In-process tests import the server beside them, as the subprocesses do (mcpops_testlib.PYTHONPATH),
# not the checkout the venv was installed from (another worktree's, in an editable install).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcpops_testlib import Issuer, RedisServer, ServerProc, running

PUBLIC_HOST = "mcp.test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "published: installs a real published MCP server from a registry (network; -m published)"
    )


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("mcpops")


@pytest.fixture(scope="session")
def redis_srv(workdir) -> Iterator[RedisServer]:
    r = RedisServer(workdir / "redis-main")
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def redis_health(workdir) -> Iterator[RedisServer]:
    """A Redis of its own for the test that stops and starts it."""
    r = RedisServer(workdir / "redis-health")
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    i.start()
    yield i
    i.stop()


class Fleet:
    main: ServerProc
    ra: ServerProc
    rb: ServerProc
    app: ServerProc
    health: ServerProc


@pytest.fixture(scope="session")
def fleet(workdir, redis_srv, redis_health, issuer) -> Iterator[Fleet]:
    """The long-lived instances, started together (start-up is mostly imports; overlap it)."""
    f = Fleet()
    f.main = ServerProc("main", workdir / "main", {})
    f.main.env.update(
        {
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-main:",
            "AUTH_SERVER_URL": issuer.url,
            "RESOURCE_SERVER_URL": f"http://127.0.0.1:{f.main.port}/mcp",
            "REQUIRED_SCOPES": "mcp",
            "ALLOWED_ORIGINS": "https://app.example",
            "MCP_MAX_BODY_BYTES": "8192",
            "RATE_LIMIT_PER_MINUTE": "100000",
        }
    )
    pair_env = {
        "REDIS_URL": redis_srv.url,
        "REDIS_KEY_PREFIX": "t-pair:",
        "AUTH_ISSUER_URL": issuer.url,
        "AUTH_JWKS_URL": issuer.url + "/jwks.json",
        "RESOURCE_SERVER_URL": f"https://{PUBLIC_HOST}/mcp",
        "REQUIRED_SCOPES": "mcp",
        "MCP_PUBLIC_HOSTS": PUBLIC_HOST,
        "RATE_LIMIT_PER_MINUTE": "10",
    }
    ring = workdir / "request-state-keys"
    ring.write_text(
        base64.b64encode(os.urandom(32)).decode() + "\n" + base64.b64encode(os.urandom(48)).decode() + "\n"
    )
    pair_env["MCP_REQUEST_STATE_KEYS_FILE"] = str(ring)
    f.ra = ServerProc("ra", workdir / "ra", {**pair_env, "MCP_INSTANCE_ID": "ia"})
    f.rb = ServerProc("rb", workdir / "rb", {**pair_env, "MCP_INSTANCE_ID": "ib"})
    jwks = issuer.write_jwks(workdir / "pinned-jwks.json")
    f.app = ServerProc("app", workdir / "app", {})
    f.app.env.update(
        {
            "MCP_APP": "mcpops_example.app:mcp",
            "MCP_STATELESS": "true",
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-app:",
            "AUTH_ISSUER_URL": issuer.url,
            "AUTH_JWKS_FILE": str(jwks),
            "RESOURCE_SERVER_URL": f"http://127.0.0.1:{f.app.port}/mcp",
        }
    )
    f.health = ServerProc(
        "health",
        workdir / "health",
        {"REDIS_URL": redis_health.url, "AUTH_ENABLED": "false", "HEALTH_TIMEOUT": "1", "LOG_FORMAT": "text"},
    )
    with running(f.main, f.ra, f.rb, f.app, f.health):
        yield f


@contextlib.asynccontextmanager
async def mcp_session(
    url: str,
    token: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    transport: Any = None,
    verify: Any = True,
) -> AsyncIterator[ClientSession]:
    """The SDK's own streamable HTTP client, initialized."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"headers": h, "timeout": httpx2.Timeout(30, read=60)}
    if transport is not None:
        kwargs["transport"] = transport
    else:
        kwargs["verify"] = verify
    async with (
        httpx2.AsyncClient(**kwargs) as hc,
        streamable_http_client(url, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        yield s
