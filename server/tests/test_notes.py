"""The notes store against a real Redis: layout, migrations."""

from __future__ import annotations

import json
import subprocess
import uuid

import anyio
from mcpops_server.notes import SCHEMA_VERSION
from mcpops_testlib import PYTHON, PYTHONPATH
from redis.asyncio import Redis


def _migrate(redis_url: str, prefix: str, tmp_path) -> str:
    (tmp_path / "c.yaml").write_text("auth:\n  enabled: false\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": PYTHONPATH,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "MCPOPS_CONFIG": str(tmp_path / "c.yaml"),
    }
    r = subprocess.run(
        [PYTHON, "-m", "mcpops_server.cli", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_migration_turns_comma_joined_tags_into_lists(redis_srv, tmp_path):
    prefix = f"mig3-{uuid.uuid4().hex[:6]}:"

    async def seed():
        async with Redis.from_url(redis_srv.url, decode_responses=True) as r:
            # what schema 2 wrote
            await r.set(prefix + "schema_version", 2)
            await r.set(prefix + "notes:seq", 2)
            await r.hset(
                prefix + "notes:1",
                mapping={"id": 1, "title": "t1", "body": "b", "tags": "shop,grüße", "created_at": "1.5"},
            )
            await r.hset(
                prefix + "notes:2",
                mapping={"id": 2, "title": "t2", "body": "", "tags": "", "created_at": "2.5"},
            )
            await r.zadd(prefix + "notes:index", {"1": 1.5, "2": 2.5})

    async def tags_of(note_id: int):
        async with Redis.from_url(redis_srv.url, decode_responses=True) as r:
            return json.loads(await r.hget(prefix + f"notes:{note_id}", "tags"))

    anyio.run(seed)
    assert _migrate(redis_srv.url, prefix, tmp_path) == f"schema_version={SCHEMA_VERSION} changed=true"
    assert anyio.run(tags_of, 1) == ["shop", "grüße"]
    assert anyio.run(tags_of, 2) == []
    assert _migrate(redis_srv.url, prefix, tmp_path) == f"schema_version={SCHEMA_VERSION} changed=false"
