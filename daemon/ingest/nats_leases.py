"""Partition leases and per-partition checkpoints in JetStream (coroutines for the source's loop).

A lease is the key ``p.<k>`` in a key-value bucket whose entries expire ``ttl`` after their last
write: taken with ``create`` (only if absent), renewed with ``update`` on the revision last written
(compare-and-set: fails once the key expired or another worker took it), given back with a
``delete`` on that revision. Each live worker also writes ``w.<holder>`` every tick, so every worker
can count the others and take its share. Checkpoints of a partition's streams are the object
``partition-<k>`` in an object store, so whoever takes the partition next can resume it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import (
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
    ObjectNotFoundError,
)

log = logging.getLogger(__name__)


class Leases:
    """This worker's leases in the bucket: which it holds (and their revisions), and the others'."""

    def __init__(self, js: Any, bucket: str, ttl_s: float, holder: str) -> None:
        self.js = js
        self.bucket = bucket
        self.ttl_s = ttl_s
        self.holder = holder
        self.kv: Any = None
        self.revisions: dict[int, int] = {}  # held partition -> revision last written
        self.renewed: dict[int, float] = {}  # held partition -> time.monotonic() of the last write

    async def open(self) -> None:
        """Bind to the bucket, creating it (entries expire ``ttl_s`` after their last write)."""
        try:
            self.kv = await self.js.key_value(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            self.kv = await self.js.create_key_value(bucket=self.bucket, ttl=self.ttl_s, history=1)

    @property
    def held(self) -> list[int]:
        return sorted(self.revisions)

    async def announce(self) -> None:
        """Say this worker is alive (its presence key expires like a lease)."""
        await self.kv.put(f"w.{self.holder}", self.holder.encode())

    async def withdraw(self) -> None:
        """Leave: the others share the partitions without waiting for the presence key to expire."""
        await self.kv.delete(f"w.{self.holder}")

    async def census(self) -> tuple[int, set[int]]:
        """(live workers, partitions leased by anyone) as the bucket says now."""
        try:
            keys = set(await self.kv.keys())  # a key written while listed can be listed twice
        except NoKeysError:
            keys = set()
        workers = sum(1 for k in keys if k.startswith("w."))
        taken = {int(k[2:]) for k in keys if k.startswith("p.")}
        return max(1, workers), taken

    async def acquire(self, k: int) -> bool:
        """Take the lease of partition ``k`` if nobody holds it."""
        try:
            rev = await self.kv.create(f"p.{k}", self.holder.encode())
        except KeyWrongLastSequenceError:
            return False
        self.revisions[k], self.renewed[k] = rev, time.monotonic()
        return True

    async def renew(self, k: int) -> bool:
        """Extend a held lease; False (and no longer held) if it expired or was taken meanwhile."""
        try:
            rev = await self.kv.update(f"p.{k}", self.holder.encode(), last=self.revisions[k])
        except KeyWrongLastSequenceError:
            self.forget(k)
            return False
        self.revisions[k], self.renewed[k] = rev, time.monotonic()
        return True

    async def release(self, k: int) -> None:
        """Give a held lease back (only if still ours: the delete names our revision)."""
        rev = self.revisions.get(k)
        self.forget(k)
        if rev is not None:
            try:
                await self.kv.delete(f"p.{k}", last=rev)
            except KeyWrongLastSequenceError:
                pass

    def forget(self, k: int) -> None:
        self.revisions.pop(k, None)
        self.renewed.pop(k, None)

    def fresh(self, k: int, margin: float) -> bool:
        """Held and renewed within ``margin`` of the TTL (a worker that was paused stops by itself)."""
        at = self.renewed.get(k)
        return at is not None and time.monotonic() - at < self.ttl_s - margin


class PartitionStore:
    """Per-partition checkpoints in a JetStream object store."""

    def __init__(self, js: Any, bucket: str) -> None:
        self.js = js
        self.bucket = bucket
        self.obj: Any = None

    async def open(self) -> None:
        try:
            self.obj = await self.js.object_store(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            self.obj = await self.js.create_object_store(self.bucket)

    async def put(self, k: int, data: bytes) -> None:
        await self.obj.put(f"partition-{k}", data)

    async def get(self, k: int) -> bytes | None:
        """The partition's last checkpoint, or None if it never had one."""
        try:
            return (await self.obj.get(f"partition-{k}")).data
        except (ObjectNotFoundError, NotFoundError):
            return None


async def lease_rounds(tick: Callable[[], Awaitable[None]], tick_s: float) -> None:
    """Run one lease round every ``tick_s`` s until cancelled; a failed round (a server hiccup) is
    logged and the next one tries again: held leases are checked then."""
    while True:
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("lease round failed: %r", exc)
        await asyncio.sleep(tick_s)
