"""The notes store against a real Redis: layout, migrations."""

from __future__ import annotations

import subprocess
import uuid

import anyio
from mcpops_server.config import NotesSettings
from mcpops_server.notes import SCHEMA_VERSION, NotesStore
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


def _seed_schema_2(redis_url: str, prefix: str) -> None:
    """Two notes the way schema 2 wrote them: no owner, tags comma-joined, an index by time."""

    async def seed():
        async with Redis.from_url(redis_url, decode_responses=True) as r:
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

    anyio.run(seed)


def test_migration_keeps_old_notes_shared_with_tags_as_lists(redis_srv, tmp_path):
    prefix = f"mig-{uuid.uuid4().hex[:6]}:"
    _seed_schema_2(redis_srv.url, prefix)
    assert _migrate(redis_srv.url, prefix, tmp_path) == f"schema_version={SCHEMA_VERSION} changed=true"

    async def check():
        async with Redis.from_url(redis_srv.url) as r:
            shared = NotesStore(r, prefix, NotesSettings(shared=True))
            one = await shared.get("sub:anyone", 1)
            assert one is not None and (one.title, one.tags) == ("t1", ("shop", "grüße"))
            assert (await shared.get("sub:anyone", 2)).tags == ()
            assert [n.id for n in await shared.search("sub:someone", "", None, 10)] == [2, 1]
            assert [n.id for n in await shared.search("sub:someone", "", "shop", 10)] == [1]
            # Nobody recorded who wrote them, so they belong to no principal.
            private = NotesStore(r, prefix, NotesSettings(shared=False))
            assert await private.get("sub:anyone", 1) is None
            assert await private.search("sub:anyone", "", None, 10) == []
            # Nothing is left in the old layout, and new ids do not reuse old ones.
            assert await r.exists(prefix + "notes:1", prefix + "notes:2", prefix + "notes:index") == 0
            assert (await private.add("sub:anyone", "new", "")).id == 3

    anyio.run(check)
    assert _migrate(redis_srv.url, prefix, tmp_path) == f"schema_version={SCHEMA_VERSION} changed=false"


def test_each_principal_has_its_own_notes_unless_shared(redis_srv):
    prefix = f"own-{uuid.uuid4().hex[:6]}:"
    alice, bob = "sub:alice", "sub:bob@example.com/*{x}"

    async def go():
        async with Redis.from_url(redis_srv.url) as r:
            store = NotesStore(r, prefix, NotesSettings())
            a = await store.add(alice, "alice's", "secret plans", ["x"])
            b = await store.add(bob, "bob's", "secret plans", ["x"])
            assert (await store.get(alice, a.id)).title == "alice's"
            assert await store.get(bob, a.id) is None
            assert [n.id for n in await store.search(bob, "secret", None, 10)] == [b.id]
            assert [n.id for n in await store.search(alice, "", "x", 10)] == [a.id]
            assert await store.delete(bob, a.id) is False
            assert (await store.get(alice, a.id)) is not None
            keys = [k.decode() async for k in r.scan_iter(match=prefix + "*")]
            assert keys and all(k.startswith(prefix + "notes:") or k == prefix + "notes:seq" for k in keys)
            assert not [k for k in keys if "alice" in k or "bob" in k], keys

            shared = NotesStore(r, prefix, NotesSettings(shared=True))
            c = await shared.add(alice, "for all", "", [])
            assert (await shared.get(bob, c.id)).title == "for all"
            assert [n.id for n in await shared.search(bob, "", None, 10)] == [c.id]
            assert await store.get(alice, c.id) is None  # the shared store is not alice's own
            assert await shared.delete(bob, c.id) is True

    anyio.run(go)
