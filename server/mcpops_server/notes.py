"""The notes store of the reference toolset, kept in Redis under the key prefix.

Layout (prefix ``mcpops:``)::

    mcpops:schema_version        integer, the applied migration level
    mcpops:notes:seq             integer, last note id handed out
    mcpops:notes:index           sorted set, note id scored by creation time
    mcpops:notes:<id>            hash: id, title, body, tags (a JSON list of strings), created_at

Migrations are idempotent and run by ``mcpops-server migrate`` once per deploy, before the
restart. Each one moves the schema from N-1 to N.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

SCHEMA_VERSION = 3
MAX_SEARCH_SCAN = 2000


@dataclass(frozen=True)
class Note:
    id: int
    title: str
    body: str
    tags: tuple[str, ...]
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "tags": list(self.tags),
            "created_at": self.created_at,
        }


def _encode_tags(tags: tuple[str, ...]) -> str:
    return json.dumps(list(tags), ensure_ascii=False)


def _decode_tags(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    tags = json.loads(raw)
    return tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()


class NotesStore:
    def __init__(self, redis: Redis, prefix: str):
        self.redis = redis
        self.p = prefix
        self.k_version = prefix + "schema_version"
        self.k_seq = prefix + "notes:seq"
        self.k_index = prefix + "notes:index"

    def _k(self, note_id: int) -> str:
        return f"{self.p}notes:{note_id}"

    async def add(self, title: str, body: str, tags: list[str] | tuple[str, ...] = ()) -> Note:
        note_id = int(await self.redis.incr(self.k_seq))
        now = time.time()
        clean_tags = tuple(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._k(note_id),
                mapping={
                    "id": note_id,
                    "title": title,
                    "body": body,
                    "tags": _encode_tags(clean_tags),
                    "created_at": repr(now),
                },
            )
            pipe.zadd(self.k_index, {str(note_id): now})
            await pipe.execute()
        return Note(note_id, title, body, clean_tags, now)

    @staticmethod
    def _decode(raw: dict[Any, Any]) -> Note | None:
        if not raw:
            return None
        d = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        return Note(
            id=int(d["id"]),
            title=d.get("title", ""),
            body=d.get("body", ""),
            tags=_decode_tags(d.get("tags")),
            created_at=float(d.get("created_at", 0) or 0),
        )

    async def get(self, note_id: int) -> Note | None:
        return self._decode(await self.redis.hgetall(self._k(note_id)))

    async def delete(self, note_id: int) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k(note_id))
            pipe.zrem(self.k_index, str(note_id))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def search(self, query: str = "", tag: str | None = None, limit: int = 20) -> list[Note]:
        """Newest first; case-insensitive substring match on title and body, optional tag filter."""
        ids = await self.redis.zrevrange(self.k_index, 0, MAX_SEARCH_SCAN - 1)
        q = query.strip().lower()
        t = tag.strip().lower() if tag else None
        out: list[Note] = []
        for start in range(0, len(ids), 200):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in ids[start : start + 200]:
                    pipe.hgetall(self._k(int(i)))
                rows = await pipe.execute()
            for raw in rows:
                note = self._decode(raw)
                if note is None:
                    continue
                if t and t not in note.tags:
                    continue
                if q and q not in note.title.lower() and q not in note.body.lower():
                    continue
                out.append(note)
                if len(out) >= limit:
                    return out
        return out

    # ------------------------------------------------------------------ migrations
    async def schema_version(self) -> int:
        v = await self.redis.get(self.k_version)
        return int(v) if v is not None else 0

    async def migrate(self) -> tuple[int, bool]:
        """Apply every pending migration. Returns (schema version, whether anything changed)."""
        changed = False
        current = await self.schema_version()
        for target, step in _MIGRATIONS:
            if current < target:
                await step(self)
                await self.redis.set(self.k_version, target)
                current = target
                changed = True
        return current, changed


async def _m1_initial(store: NotesStore) -> None:
    """v1: the keyspace exists; make sure the id sequence is present."""
    await store.redis.setnx(store.k_seq, 0)


async def _m2_index(store: NotesStore) -> None:
    """v2: notes are listed through a sorted-set index; rebuild it from the note hashes."""
    r = store.redis
    async for key in r.scan_iter(match=store.p + "notes:*", count=500):
        k = key.decode() if isinstance(key, bytes) else key
        tail = k[len(store.p + "notes:") :]
        if not tail.isdigit():
            continue
        created = await r.hget(k, "created_at")
        await r.zadd(store.k_index, {tail: float(created or 0)}, nx=True)
        seq = int(await r.get(store.k_seq) or 0)
        if int(tail) > seq:
            await r.set(store.k_seq, int(tail))


async def _m3_tags_json(store: NotesStore) -> None:
    """v3: tags are a JSON list (a comma inside a tag used to split it); convert the comma-joined ones.

    A tag holding a comma was already split when it was written, so the old value reads as several tags.
    """
    r = store.redis
    async for key in r.scan_iter(match=store.p + "notes:*", count=500):
        k = key.decode() if isinstance(key, bytes) else key
        if not k[len(store.p + "notes:") :].isdigit():
            continue
        raw = await r.hget(k, "tags")
        old = raw.decode() if isinstance(raw, bytes) else (raw or "")
        if _is_tag_list(old):
            continue
        await r.hset(k, "tags", _encode_tags(tuple(t for t in old.split(",") if t)))


def _is_tag_list(raw: str) -> bool:
    try:
        v = json.loads(raw)
    except ValueError:
        return False
    return isinstance(v, list) and all(isinstance(t, str) for t in v)


_MIGRATIONS: list[tuple[int, Callable[[NotesStore], Awaitable[None]]]] = [
    (1, _m1_initial),
    (2, _m2_index),
    (3, _m3_tags_json),
]
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION
