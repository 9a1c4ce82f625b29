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

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from .config import NotesSettings

SCHEMA_VERSION = 4
SHARED_OWNER = "shared"
ANONYMOUS = "anonymous"
SEARCH_BATCH = 100  # note ids read from the index, and hashes fetched, per round trip of a search
MAX_RESULTS = 100  # notes one search returns at most (also bounded by notes.max_result_bytes)
_FIELDS = ("id", "title", "body", "tags", "created_at")
_ADD_ATTEMPTS = 20  # optimistic transactions tried when other adds of the same owner interleave


class NotesError(Exception):
    """A request the store refuses; the message names the bound and is meant for the caller."""


class Busy(NotesError):
    """Every search slot of this instance stayed taken for ``notes.search_wait``."""


@dataclass(frozen=True)
class Note:
    id: int
    title: str
    body: str
    tags: tuple[str, ...]
    created_at: float

    @property
    def size(self) -> int:
        """UTF-8 bytes of what the note holds (title, body, tags): what it costs to return it."""
        return len(self.title.encode()) + len(self.body.encode()) + sum(len(t.encode()) for t in self.tags)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "tags": list(self.tags),
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class SearchResult:
    notes: list[Note]
    truncated: bool  # stopped at notes.max_result_bytes; more notes may match


def _encode_tags(tags: tuple[str, ...]) -> str:
    return json.dumps(list(tags), ensure_ascii=False)


def _decode_tags(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    tags = json.loads(raw)
    return tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()


def _text(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _norm_tag(tag: str) -> str:
    return tag.strip().lower()


def owner_of(principal: str | None, shared: bool = False) -> str:
    """The key part naming whose notes these are: a digest of the principal, or ``shared``."""
    if shared:
        return SHARED_OWNER
    return hashlib.blake2b((principal or ANONYMOUS).encode(), digest_size=12).hexdigest()


class NotesStore:
    """Notes in Redis, with every input and every search bounded by ``notes.*`` settings.

    What one request can make the instance hold is bounded: inputs by the size settings, a search
    by ``SEARCH_BATCH`` hashes at a time (and only the fields it matches on, until a note matches),
    its answer by ``MAX_RESULTS`` and ``notes.max_result_bytes``, and the searches running at once
    by ``notes.max_concurrent_searches``.
    """

    def __init__(self, redis: Redis, prefix: str, settings: NotesSettings | None = None):
        self.redis = redis
        self.prefix = prefix
        self.settings = settings or NotesSettings()
        self.k_version = prefix + "schema_version"
        self.k_seq = prefix + "notes:seq"
        self._search_slots = asyncio.Semaphore(self.settings.max_concurrent_searches)
        self.running_searches = 0

    def _owner(self, principal: str | None) -> str:
        return owner_of(principal, self.settings.shared)

    def _k_index(self, owner: str) -> str:
        return f"{self.prefix}notes:{owner}:index"

    def _k(self, owner: str, note_id: int) -> str:
        return f"{self.prefix}notes:{owner}:{note_id}"

    # ------------------------------------------------------------------ bounds
    def _checked(self, title: str, body: str, tags: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """Refuse an input over its bound (NotesError naming the setting); return the clean tags."""
        bounds = self.settings
        if len(title) > bounds.max_title_length:
            raise NotesError(
                f"the title is {len(title)} characters long; "
                f"notes.max_title_length is {bounds.max_title_length}"
            )
        body_bytes = len(body.encode())
        if body_bytes > bounds.max_bytes:
            raise NotesError(f"the body is {body_bytes} bytes (UTF-8); notes.max_bytes is {bounds.max_bytes}")
        if len(tags) > bounds.max_tags:
            raise NotesError(f"{len(tags)} tags given; notes.max_tags is {bounds.max_tags}")
        clean: list[str] = []
        for i, raw in enumerate(tags, 1):
            tag = _norm_tag(raw)
            if len(tag) > bounds.max_tag_length:
                raise NotesError(
                    f"tag {i} is {len(tag)} characters long; notes.max_tag_length is {bounds.max_tag_length}"
                )
            if tag:
                clean.append(tag)
        return tuple(dict.fromkeys(clean))

    # ------------------------------------------------------------------ notes
    async def add(
        self, principal: str | None, title: str, body: str, tags: list[str] | tuple[str, ...] = ()
    ) -> Note:
        """Store a note for the principal; NotesError when an input or the count is over its bound."""
        clean_tags = self._checked(title, body, tags)
        owner = self._owner(principal)
        index = self._k_index(owner)
        note_id = int(await self.redis.incr(self.k_seq))
        note = Note(note_id, title, body, clean_tags, time.time())
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_ADD_ATTEMPTS):
                try:
                    # The count and the write are one optimistic transaction: concurrent adds of one
                    # principal cannot take it past the bound.
                    await pipe.watch(index)
                    if await pipe.zcard(index) >= self.settings.max_per_principal:
                        raise NotesError(
                            f"{self.settings.max_per_principal} notes are stored already "
                            f"(notes.max_per_principal); delete some first"
                        )
                    pipe.multi()
                    pipe.hset(
                        self._k(owner, note_id),
                        mapping={
                            "id": note_id,
                            "title": title,
                            "body": body,
                            "tags": _encode_tags(clean_tags),
                            "created_at": repr(note.created_at),
                        },
                    )
                    pipe.zadd(index, {str(note_id): note_id})
                    await pipe.execute()
                    return note
                except WatchError:
                    continue
        raise Busy("too many notes are being added at once; retry in a moment")

    @staticmethod
    def _note(fields: dict[str, Any]) -> Note | None:
        if fields.get("id") is None:  # no such hash (never written, or deleted)
            return None
        return Note(
            id=int(fields["id"]),
            title=fields.get("title") or "",
            body=fields.get("body") or "",
            tags=_decode_tags(fields.get("tags")),
            created_at=float(fields.get("created_at") or 0),
        )

    async def _hmget(self, owner: str, ids: list[int], fields: tuple[str, ...]) -> list[dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hmget(self._k(owner, i), fields)
            rows = await pipe.execute()
        return [dict(zip(fields, (_text(v) for v in row), strict=True)) for row in rows]

    async def get(self, principal: str | None, note_id: int) -> Note | None:
        (fields,) = await self._hmget(self._owner(principal), [note_id], _FIELDS)
        return self._note(fields)

    async def delete(self, principal: str | None, note_id: int) -> bool:
        owner = self._owner(principal)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k(owner, note_id))
            pipe.zrem(self._k_index(owner), str(note_id))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    # ------------------------------------------------------------------ search
    async def search(
        self, principal: str | None, query: str = "", tag: str | None = None, limit: int = 20
    ) -> SearchResult:
        """Newest first; case-insensitive substring match on title and body, optional tag filter.

        Raises NotesError for a query or tag over its bound, Busy when no search slot frees up.
        """
        s = self.settings
        if len(query) > s.max_query_length:
            raise NotesError(
                f"the query is {len(query)} characters long; notes.max_query_length is {s.max_query_length}"
            )
        t = _norm_tag(tag or "") or None
        if t is not None and len(t) > s.max_tag_length:
            raise NotesError(
                f"the tag is {len(t)} characters long; notes.max_tag_length is {s.max_tag_length}"
            )
        try:
            async with asyncio.timeout(s.search_wait):
                await self._search_slots.acquire()
        except TimeoutError:
            raise Busy(
                f"busy: {s.max_concurrent_searches} searches are running in this instance "
                f"(notes.max_concurrent_searches); retry in a moment"
            ) from None
        self.running_searches += 1
        try:
            return await self._scan(
                self._owner(principal), query.strip().lower(), t, max(1, min(limit, MAX_RESULTS))
            )
        finally:
            self.running_searches -= 1
            self._search_slots.release()

    async def _scan(self, owner: str, q: str, t: str | None, limit: int) -> SearchResult:
        # Walk the owner's index newest first, SEARCH_BATCH ids per step. The window is taken by score
        # (the id) below the last one seen, so adds and deletes meanwhile neither repeat nor skip notes.
        match_fields = (("title", "body") if q else ()) + (("tags",) if t else ())
        rest = tuple(f for f in _FIELDS if f not in match_fields)
        out: list[Note] = []
        used = 0
        below: str = "+inf"
        while len(out) < limit:
            want = SEARCH_BATCH if match_fields else min(SEARCH_BATCH, limit - len(out))
            raw_ids = await self.redis.zrevrangebyscore(
                self._k_index(owner), below, "-inf", start=0, num=want
            )
            if not raw_ids:
                break
            ids = [int(i) for i in raw_ids]
            below = f"({ids[-1]}"
            if match_fields:
                rows = await self._hmget(owner, ids, match_fields)
                hits = [(i, row) for i, row in zip(ids, rows, strict=True) if _matches(row, q, t)]
            else:
                hits = [(i, {}) for i in ids]
            hits = hits[: limit - len(out)]
            if hits:
                rows = await self._hmget(owner, [i for i, _ in hits], rest)
                for (_, seen), row in zip(hits, rows, strict=True):
                    note = self._note({**seen, **row})
                    if note is None:
                        continue
                    if out and used + note.size > self.settings.max_result_bytes:
                        return SearchResult(out, truncated=True)
                    out.append(note)
                    used += note.size
            if len(ids) < want:
                break
        return SearchResult(out, truncated=False)

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


def _matches(fields: dict[str, Any], q: str, t: str | None) -> bool:
    if t is not None and t not in _decode_tags(fields.get("tags")):
        return False
    return not q or q in (fields.get("title") or "").lower() or q in (fields.get("body") or "").lower()


async def _m1_initial(store: NotesStore) -> None:
    """v1: the keyspace exists; make sure the id sequence is present."""
    await store.redis.setnx(store.k_seq, 0)


async def _unowned_notes(store: NotesStore) -> AsyncIterator[tuple[str, int]]:
    """The note hashes of schemas 1 to 3 (``<prefix>notes:<id>``): (key, id)."""
    head = store.prefix + "notes:"
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
        await r.zadd(store.prefix + _OLD_INDEX, {str(note_id): float(created or 0)}, nx=True)
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
    await r.delete(store.prefix + _OLD_INDEX)


_MIGRATIONS: list[tuple[int, Callable[[NotesStore], Awaitable[None]]]] = [
    (1, _m1_initial),
    (2, _m2_index),
    (3, _m3_tags_json),
    (4, _m4_owners),
]
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION
