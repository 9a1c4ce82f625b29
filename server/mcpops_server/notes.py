"""The notes store of the reference toolset, kept in Redis under the key prefix.

Layout (prefix ``mcpops:``)::

    mcpops:schema_version             integer, the applied migration level
    mcpops:notes:seq                  integer, last note id handed out (ids are unique across owners)
    mcpops:notes:<owner>:index        sorted set, the owner's note ids scored by the id (newest highest)
    mcpops:notes:<owner>:<id>         hash: id, title, body, tags (a JSON list of strings), created_at

A note belongs to the principal that wrote it (the token's ``sub``, else its client id; the caller
is ``anonymous`` while auth is disabled), and only that principal gets, finds or deletes it.
``<owner>`` is a digest of the principal, never the subject itself (subjects can be long or
carry any byte), or ``shared`` when ``notes.shared`` is true: then every caller uses one store.

Migrations are idempotent and run by ``mcpops-server migrate`` once per deploy, before the
restart. Each one moves the schema from N-1 to N. Notes written before schema 4 did not record
who wrote them; migration 4 moves them to the ``shared`` owner, so they stay visible to everyone
where ``notes.shared`` is true (which is how they were written) and to no one otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .config import NotesSettings

SCHEMA_VERSION = 4
MAX_SEARCH_SCAN = 2000
SHARED_OWNER = "shared"
ANONYMOUS = "anonymous"


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


def owner_of(principal: str | None, shared: bool = False) -> str:
    """The key part naming whose notes these are: a digest of the principal, or ``shared``."""
    if shared:
        return SHARED_OWNER
    return hashlib.blake2b((principal or ANONYMOUS).encode(), digest_size=12).hexdigest()


class NotesStore:
    def __init__(self, redis: Redis, prefix: str, settings: NotesSettings | None = None):
        self.redis = redis
        self.p = prefix
        self.settings = settings or NotesSettings()
        self.k_version = prefix + "schema_version"
        self.k_seq = prefix + "notes:seq"

    def _owner(self, principal: str | None) -> str:
        return owner_of(principal, self.settings.shared)

    def _k_index(self, owner: str) -> str:
        return f"{self.p}notes:{owner}:index"

    def _k(self, owner: str, note_id: int) -> str:
        return f"{self.p}notes:{owner}:{note_id}"

    async def add(
        self, principal: str | None, title: str, body: str, tags: list[str] | tuple[str, ...] = ()
    ) -> Note:
        owner = self._owner(principal)
        note_id = int(await self.redis.incr(self.k_seq))
        now = time.time()
        clean_tags = tuple(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._k(owner, note_id),
                mapping={
                    "id": note_id,
                    "title": title,
                    "body": body,
                    "tags": _encode_tags(clean_tags),
                    "created_at": repr(now),
                },
            )
            pipe.zadd(self._k_index(owner), {str(note_id): note_id})
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

    async def get(self, principal: str | None, note_id: int) -> Note | None:
        return self._decode(await self.redis.hgetall(self._k(self._owner(principal), note_id)))

    async def delete(self, principal: str | None, note_id: int) -> bool:
        owner = self._owner(principal)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k(owner, note_id))
            pipe.zrem(self._k_index(owner), str(note_id))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def search(
        self, principal: str | None, query: str = "", tag: str | None = None, limit: int = 20
    ) -> list[Note]:
        """Newest first; case-insensitive substring match on title and body, optional tag filter."""
        owner = self._owner(principal)
        ids = await self.redis.zrevrange(self._k_index(owner), 0, MAX_SEARCH_SCAN - 1)
        q = query.strip().lower()
        t = tag.strip().lower() if tag else None
        out: list[Note] = []
        for start in range(0, len(ids), 200):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in ids[start : start + 200]:
                    pipe.hgetall(self._k(owner, int(i)))
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


async def _unowned_notes(store: NotesStore) -> AsyncIterator[tuple[str, int]]:
    """The note hashes of schemas 1 to 3 (``<prefix>notes:<id>``): (key, id)."""
    head = store.p + "notes:"
    async for key in store.redis.scan_iter(match=head + "*", count=500):
        k = key.decode() if isinstance(key, bytes) else key
        tail = k[len(head) :]
        if tail.isdigit():
            yield k, int(tail)


_OLD_INDEX = "notes:index"  # schemas 2 and 3: every note id, scored by creation time


async def _m2_index(store: NotesStore) -> None:
    """v2: notes are listed through a sorted-set index; rebuild it from the note hashes."""
    r = store.redis
    async for k, note_id in _unowned_notes(store):
        created = await r.hget(k, "created_at")
        await r.zadd(store.p + _OLD_INDEX, {str(note_id): float(created or 0)}, nx=True)
        seq = int(await r.get(store.k_seq) or 0)
        if note_id > seq:
            await r.set(store.k_seq, note_id)


async def _m3_tags_json(store: NotesStore) -> None:
    """v3: tags are a JSON list (a comma inside a tag used to split it); convert the comma-joined ones.

    A tag holding a comma was already split when it was written, so the old value reads as several tags.
    """
    r = store.redis
    async for k, _ in _unowned_notes(store):
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


async def _m4_owners(store: NotesStore) -> None:
    """v4: notes belong to their writer. Earlier notes have no recorded writer: they become ``shared``."""
    r = store.redis
    index = store._k_index(SHARED_OWNER)
    async for k, note_id in _unowned_notes(store):
        async with r.pipeline(transaction=True) as pipe:
            pipe.rename(k, store._k(SHARED_OWNER, note_id))
            pipe.zadd(index, {str(note_id): note_id})
            await pipe.execute()
    await r.delete(store.p + _OLD_INDEX)


_MIGRATIONS: list[tuple[int, Callable[[NotesStore], Awaitable[None]]]] = [
    (1, _m1_initial),
    (2, _m2_index),
    (3, _m3_tags_json),
    (4, _m4_owners),
]
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION
