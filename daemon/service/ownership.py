"""Lease ownership of NATS partitions (``nats.ownership = "lease"``): take a fair share, keep it
renewed, move partitions with their state, and never consume a partition without its lease.

Every ``lease_ttl_s / 3`` on the source's loop: announce this worker, renew each held lease (a
failed renewal, or one not renewed within the TTL, drops the partition at once and writes nothing),
count the live workers, then give back partitions beyond ``ceil(partitions / workers)`` (their
streams' checkpoint written first) or take free ones up to it (their checkpoint adopted, consumption
resumed right after its position). Every ``state.checkpoint_interval_s`` each held partition's
streams go to the object store, so a worker that dies is resumed by the others from there: what it
applied after that checkpoint is read again from JetStream and applied once in the new owner's state.

A hand-over is ordered: the giver writes its final checkpoint, then releases the lease; the taker
acquires, adopts the checkpoint, consumes, and only then may write one (:attr:`adopted`). A take cut
short (the store slow or failing, or shutdown in the middle) leaves the partition leased but not
adopted: it is adopted again next tick, or given back without a write, never saved empty over the
previous owner's state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from daemon.ingest.nats_leases import Leases, PartitionStore, lease_rounds
from daemon.ingest.nats_positions import Positions
from daemon.ingest.nats_source import NatsSource
from daemon.service.batches import Batches
from daemon.settings import Settings
from lstm_stream import handover
from lstm_stream.checkpoint import CheckpointError
from lstm_stream.engine import Engine

log = logging.getLogger("lstm_stream.service")

POSITION = "position"  # a partition checkpoint's info key: its last applied stream sequence


class LeaseOwnership:
    """Runs the lease loop on the source's event loop; :meth:`close` hands every partition back."""

    def __init__(
        self, settings: Settings, source: NatsSource, engine: Engine, batches: Batches, positions: Positions
    ) -> None:
        n = settings.nats
        self.count = n.partition_count
        self.source = source
        self.engine = engine
        self.batches = batches
        self.positions = positions
        self.tick_s = n.lease_ttl_s / 3
        self.checkpoint_s = settings.state.checkpoint_interval_s
        self.leases: Leases | None = None
        self.store: PartitionStore | None = None
        self._settings = n
        self._task: Any = None
        self._runner: asyncio.Task | None = None  # the lease loop's task, on the source's loop
        self.adopted: set[int] = set()  # held partitions whose state was adopted and which are consumed
        self._next_checkpoint = 0.0
        self.moves = 0  # partitions taken or given back (log and tests)

    def start(self) -> None:
        self._task = self.source.submit(self._run())

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop, write every held partition's checkpoint and give its lease back."""
        if self._task is None:
            return
        self._task.cancel()  # if the loop has not started yet
        self._task = None
        try:
            self.source.call(self._stop(), timeout)
        except Exception as exc:  # noqa: BLE001 - leases then expire by themselves
            log.error("handing partitions back at shutdown failed: %r", exc)

    @property
    def held(self) -> list[int]:
        return self.leases.held if self.leases is not None else []

    # ------------------------------------------------------------------ on the source's loop
    async def _run(self) -> None:
        self._runner = asyncio.current_task()
        await self.source.wait_ready()
        n = self._settings
        self.leases = Leases(self.source.js, n.lease_bucket, n.lease_ttl_s, n.holder())
        self.store = PartitionStore(self.source.js, n.checkpoint_bucket)
        await self.leases.open()
        await self.store.open()
        self._next_checkpoint = time.monotonic() + self.checkpoint_s
        log.info("lease ownership of %d partitions as %s", self.count, n.holder())
        await lease_rounds(self._tick, self.tick_s)

    async def _tick(self) -> None:
        leases = self.leases
        await leases.announce()
        for k in leases.held:
            if not (leases.fresh(k, self.tick_s / 2) and await leases.renew(k)):
                await self._drop(k)
        workers, taken = await leases.census()
        share = math.ceil(self.count / workers)
        held = leases.held
        for k in held[share:]:  # another worker came: give back the highest ones
            await self._hand_over(k)
        for k in leases.held:  # a take cut short last time: adopt its state now
            if k not in self.adopted:
                await self._take(k)
        for k in range(self.count):
            if len(leases.held) >= share:
                break
            if k not in taken and await leases.acquire(k):
                await self._take(k)
        if time.monotonic() >= self._next_checkpoint:
            self._next_checkpoint = time.monotonic() + self.checkpoint_s
            for k in leases.held:
                if k in self.adopted and leases.fresh(k, self.tick_s / 2):
                    await self.store.put(k, self._export(k))

    async def _take(self, k: int) -> None:
        """A lease was just taken: adopt the partition's last checkpoint, then consume after it; only
        then is the partition :attr:`adopted` (checkpointed from here). Raises if the store fails."""
        # bounded: a read racing another writer's purge of the old chunks never ends (nats-py)
        data = await asyncio.wait_for(self.store.get(k), self.leases.ttl_s)
        position = None
        with self.batches.lock:
            if data is not None:
                try:
                    names, info = handover.adopt_streams(self.engine, data, f"partition-{k}")
                    position = info.get(POSITION)
                    self.source.partition_of.update(dict.fromkeys(names, k))
                except CheckpointError as exc:
                    log.error("partition %d: checkpoint refused (%s): starting it afresh", k, exc)
            self.positions.adopt(k, position)
        await self.source.consume([k])
        self.adopted.add(k)
        self.moves += 1
        log.info("partition %d taken (resuming after sequence %s)", k, position)

    async def _hand_over(self, k: int) -> None:
        """Give a partition back: stop consuming, apply what is queued, save its streams (only if
        adopted here: else the store keeps the previous owner's), then release the lease."""
        await self.source.stop_consuming([k])
        self.batches.drain()
        if k in self.adopted:
            data = self._export(k)
            if self.leases.fresh(k, 0.0) and await self.leases.renew(k):  # still ours: state current
                await self.store.put(k, data)
        await self.leases.release(k)
        self._forget(k)
        self.moves += 1
        log.info("partition %d handed over", k)

    async def _drop(self, k: int) -> None:
        """The lease is gone (expired, or taken): stop at once and keep nothing of the partition."""
        self.leases.forget(k)
        await self.source.stop_consuming([k])
        self.batches.drain()
        with self.batches.lock:
            self.positions.applied(self.batches.applied)
        self._forget(k)
        log.warning("partition %d: lease lost; dropped its streams", k)

    async def _stop(self) -> None:
        """Stop the lease loop and wait until it has (a take or a write in progress is cut short
        first), then hand every partition back."""
        runner = self._runner
        while runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=self.tick_s)
        await self._leave()

    async def _leave(self) -> None:
        for k in self.held:
            await self._hand_over(k)
        if self.leases is not None:
            await self.leases.withdraw()

    # ------------------------------------------------------------------ engine side
    def _names(self, k: int) -> list[str]:
        return [name for name, p in self.source.partition_of.items() if p == k]

    def _export(self, k: int) -> bytes:
        """The partition's streams and position, copied under the engine lock, as checkpoint bytes."""
        with self.batches.lock:
            position = self.positions.applied(self.batches.applied).get(str(k))
            parts = handover.export_streams(self.engine, self._names(k), {POSITION: position})
        return handover.encode_streams(*parts)

    def _forget(self, k: int) -> None:
        self.adopted.discard(k)
        names = self._names(k)
        with self.batches.lock:
            self.engine.forget(names)
            self.positions.adopt(k, None)
        for name in names:
            self.source.partition_of.pop(name, None)
