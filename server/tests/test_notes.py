"""The notes store against a real Redis: layout, owners, bounds, search cost, migrations."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import anyio
import pytest
from mcpops_server.config import NotesSettings
from mcpops_server.notes import SCHEMA_VERSION, Busy, NotesError, NotesStore, owner_of
from mcpops_testlib import PYTHON, PYTHONPATH, RedisServer
from redis.asyncio import BlockingConnectionPool, Redis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A Redis of its own, so its command statistics count this module's commands only."""
    r = RedisServer(tmp_path_factory.mktemp("redis-notes"))
    r.start()
    yield r
    r.stop()


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


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
            assert [n.id for n in (await shared.search("sub:someone", "", None, 10)).notes] == [2, 1]
            assert [n.id for n in (await shared.search("sub:someone", "", "shop", 10)).notes] == [1]
            # Nobody recorded who wrote them, so they belong to no principal.
            private = NotesStore(r, prefix, NotesSettings(shared=False))
            assert await private.get("sub:anyone", 1) is None
            assert (await private.search("sub:anyone", "", None, 10)).notes == []
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
            assert [n.id for n in (await store.search(bob, "secret", None, 10)).notes] == [b.id]
            assert [n.id for n in (await store.search(alice, "", "x", 10)).notes] == [a.id]
            assert await store.delete(bob, a.id) is False
            assert (await store.get(alice, a.id)) is not None
            keys = [k.decode() async for k in r.scan_iter(match=prefix + "*")]
            assert keys and all(k.startswith(prefix + "notes:") or k == prefix + "notes:seq" for k in keys)
            assert not [k for k in keys if "alice" in k or "bob" in k], keys

            shared = NotesStore(r, prefix, NotesSettings(shared=True))
            c = await shared.add(alice, "for all", "", [])
            assert (await shared.get(bob, c.id)).title == "for all"
            assert [n.id for n in (await shared.search(bob, "", None, 10)).notes] == [c.id]
            assert await store.get(alice, c.id) is None  # the shared store is not alice's own
            assert await shared.delete(bob, c.id) is True

    anyio.run(go)


def test_inputs_over_a_bound_are_refused_and_nothing_is_stored(redis_srv):
    prefix = f"bound-{uuid.uuid4().hex[:6]}:"
    bounds = NotesSettings(
        max_bytes=100,
        max_title_length=10,
        max_tag_length=5,
        max_tags=2,
        max_query_length=8,
        max_per_principal=3,
    )
    over = [
        ({"title": "x" * 11}, "the title is 11 characters long; notes.max_title_length is 10"),
        ({"body": "x" * 101}, "the body is 101 bytes (UTF-8); notes.max_bytes is 100"),
        ({"body": "é" * 51}, "the body is 102 bytes (UTF-8); notes.max_bytes is 100"),  # 51 characters
        ({"tags": ["a", "b", "c"]}, "3 tags given; notes.max_tags is 2"),
        ({"tags": ["ok", " TooLong "]}, "tag 2 is 7 characters long; notes.max_tag_length is 5"),
    ]

    async def go():
        async with Redis.from_url(redis_srv.url) as r:
            store = NotesStore(r, prefix, bounds)
            for fields, message in over:
                with pytest.raises(NotesError) as refused:
                    await store.add("sub:a", **{"title": "t", "body": "", **fields})
                assert str(refused.value) == message
            assert [k async for k in r.scan_iter(match=prefix + "notes:*:*")] == []  # nothing stored
            with pytest.raises(NotesError, match=r"notes\.max_query_length is 8"):
                await store.search("sub:a", "q" * 9)
            with pytest.raises(NotesError, match=r"notes\.max_tag_length is 5"):
                await store.search("sub:a", "", "x" * 6)
            # exactly at every bound is fine
            at = await store.add("sub:a", "x" * 10, "é" * 50, ["Abcde", "fghij"])
            assert (await store.get("sub:a", at.id)).tags == ("abcde", "fghij")
            # concurrent adds cannot take a principal past notes.max_per_principal
            results = await asyncio.gather(
                *(store.add("sub:a", f"n{i}", "") for i in range(10)), return_exceptions=True
            )
            assert sum(not isinstance(x, BaseException) for x in results) == 2
            refusals = [x for x in results if isinstance(x, BaseException)]
            assert all(isinstance(x, NotesError) and "notes.max_per_principal" in str(x) for x in refusals)
            assert await r.zcard(f"{prefix}notes:{owner_of('sub:a')}:index") == 3
            assert (await store.add("sub:b", "another", "")).title == "another"

    anyio.run(go)


def test_search_walks_the_index_in_windows_and_fetches_only_what_it_needs(own_redis):
    prefix = f"scan-{uuid.uuid4().hex[:6]}:"
    body = "lorem ipsum " * 1300  # 15,600 bytes, near notes.max_bytes

    async def go():
        async with Redis.from_url(own_redis.url) as r, Redis.from_url(own_redis.url) as admin:
            store = NotesStore(r, prefix, NotesSettings())
            for i in range(250):
                await store.add("sub:a", f"note {i}", body, [f"t{i % 2}"])

            async def measured(*args):
                await admin.config_resetstat()
                found = await store.search("sub:a", *args)
                calls = {
                    k.removeprefix("cmdstat_"): v["calls"]
                    for k, v in (await admin.info("commandstats")).items()
                }
                sent = (await admin.info("stats"))["total_net_output_bytes"]
                return found, calls, sent

            # A tag nobody has: three windows of the index (100 + 100 + 50), one HMGET of the tags per
            # note, never a whole hash, and the bodies (3.9 MB in all) stay in Redis.
            found, calls, sent = await measured("", "no-such-tag", 100)
            assert found.notes == [] and "hgetall" not in calls
            assert calls["zrevrangebyscore"] == 3 and calls["hmget"] == 250
            assert sent < 100_000, sent
            # No filter: one window as large as the limit, and only those notes fetched.
            found, calls, _ = await measured("", None, 5)
            assert [n.title for n in found.notes] == [f"note {i}" for i in range(249, 244, -1)]
            assert calls["zrevrangebyscore"] == 1 and calls["hmget"] == 5
            # A text match stops at the limit: the first window holds enough matches.
            found, calls, _ = await measured("note 1", "t1", 3)
            assert [n.title for n in found.notes] == ["note 199", "note 197", "note 195"]
            assert calls["zrevrangebyscore"] == 1
            assert all(n.body == body for n in found.notes)

    anyio.run(go)


def test_search_answers_are_bounded_in_bytes(redis_srv):
    prefix = f"bytes-{uuid.uuid4().hex[:6]}:"

    async def go():
        async with Redis.from_url(redis_srv.url) as r:
            store = NotesStore(r, prefix, NotesSettings(max_result_bytes=40_000))
            for i in range(10):
                await store.add("sub:a", f"n{i}", "b" * 10_000)  # 10,002 bytes each
            found = await store.search("sub:a", "", None, 100)
            assert [n.title for n in found.notes] == ["n9", "n8", "n7"] and found.truncated
            assert sum(n.size for n in found.notes) <= 40_000
            small = await store.search("sub:a", "n1", None, 100)
            assert [n.title for n in small.notes] == ["n1"] and not small.truncated
            tiny = NotesStore(r, prefix, NotesSettings(max_result_bytes=1024))
            one = await tiny.search("sub:a", "", None, 100)  # a note larger than the bound still comes back
            assert [n.title for n in one.notes] == ["n9"] and one.truncated

    anyio.run(go)


def test_searches_beyond_the_limit_wait_then_get_busy(own_redis):
    prefix = f"busy-{uuid.uuid4().hex[:6]}:"

    async def go():
        pool = BlockingConnectionPool.from_url(own_redis.url, max_connections=1, timeout=20)
        async with Redis(connection_pool=pool) as r:
            store = NotesStore(r, prefix, NotesSettings(max_concurrent_searches=1, search_wait=0.5))
            await store.add("sub:a", "n", "some text")
            held = await pool.get_connection()  # the one connection: the search below stalls
            first = asyncio.create_task(store.search("sub:a", "text"))
            await _until(lambda: store.running_searches == 1, 5, "the first search to hold the slot")
            t0 = time.monotonic()
            with pytest.raises(
                Busy, match=r"1 searches are running in this instance \(notes.max_concurrent_searches\)"
            ):
                await store.search("sub:b", "")
            assert 0.45 <= time.monotonic() - t0 < 3  # it waited notes.search_wait, then gave up
            assert not first.done()
            # A search that is waiting gets the slot as soon as it frees up.
            second = asyncio.create_task(store.search("sub:a", ""))
            await pool.release(held)
            assert [n.title for n in (await first).notes] == ["n"]
            assert [n.title for n in (await second).notes] == ["n"]
            assert store.running_searches == 0
            assert [n.title for n in (await store.search("sub:a", "some")).notes] == ["n"]  # no slot leaked

    anyio.run(go)
