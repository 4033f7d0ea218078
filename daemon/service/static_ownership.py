"""Static ownership, coordinated: a worker consumes its configured partitions only while it holds their
leases, so two workers given overlapping ``nats.partitions`` never both process one.

The leases are those of :mod:`~daemon.ingest.nats_leases` (key ``p.<k>``, TTL ``nats.lease_ttl_s``,
compare-and-set renewals every third of it), but nothing moves: a partition held by another worker is
waited for, with one warning line naming the key and its holder, and taken once that worker releases it
(a clean stop) or its lease expires (it died). The state stays this worker's own, as without leases:
local checkpoints and partition positions. A lease lost (this worker paused past the TTL) stops the
partition at once; it is consumed again, right after its last applied message, if the lease comes back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from daemon.ingest.nats_leases import Leases, lease_rounds
from daemon.ingest.nats_positions import Positions
from daemon.ingest.nats_source import NatsSource
from daemon.nats_settings import NatsSettings
from daemon.service.batches import Batches

log = logging.getLogger("lstm_stream.service")


class StaticOwnership:
    """The lease loop of a static worker, on the source's event loop; :meth:`close` gives leases back."""

    def __init__(
        self, settings: NatsSettings, source: NatsSource, batches: Batches, positions: Positions
    ) -> None:
        self.settings = settings
        self.wanted = settings.static_partitions()
        self.source = source
        self.batches = batches
        self.positions = positions
        self.tick_s = settings.lease_ttl_s / 3
        self.leases: Leases | None = None
        self._told: set[int] = set()  # partitions whose wait was logged (one line each)
        self._task: Any = None
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._task = self.source.submit(self._run())

    @property
    def held(self) -> list[int]:
        return self.leases.held if self.leases is not None else []

    def close(self, timeout: float = 10.0) -> None:
        """Stop consuming, apply what is queued (its events go out under the lease), give leases back."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        try:
            self.source.call(self._stop(), timeout)
        except Exception as exc:  # noqa: BLE001 - the leases then expire by themselves
            log.error("giving the static partitions' leases back failed: %r", exc)

    async def _run(self) -> None:
        self._runner = asyncio.current_task()
        await self.source.wait_ready()
        s = self.settings
        self.leases = Leases(self.source.js, s.lease_bucket, s.lease_ttl_s, s.holder())
        await self.leases.open()
        log.info("static ownership of partitions %s as %s, coordinated by leases", self.wanted, s.holder())
        await lease_rounds(self._tick, self.tick_s)

    async def _tick(self) -> None:
        leases = self.leases
        for k in leases.held:
            if not (leases.fresh(k, self.tick_s / 2) and await leases.renew(k)):
                await self._lose(k)
        for k in self.wanted:
            if k in leases.revisions:
                continue
            if await leases.acquire(k):
                self._told.discard(k)
                await self.source.consume([k])
                log.info("partition %d: lease taken, consuming", k)
            elif k not in self._told:
                self._told.add(k)
                log.warning(
                    "partition %d: key p.%d of bucket %s is held by %s: waiting for it (do two workers' "
                    "static partitions overlap?)",
                    k,
                    k,
                    leases.bucket,
                    await self._holder(k),
                )

    async def _holder(self, k: int) -> str:
        try:
            return (await self.leases.kv.get(f"p.{k}")).value.decode()
        except Exception:  # noqa: BLE001 - released or expired meanwhile: taken next round
            return "another worker"

    async def _lose(self, k: int) -> None:
        """The lease is gone (this worker was paused past the TTL): stop the partition at once; what
        was queued is applied (its events fenced), and it resumes after it if the lease comes back."""
        self.leases.forget(k)
        await self.source.stop_consuming([k])
        self.batches.drain()
        with self.batches.lock:
            self.positions.applied(self.batches.applied)
        log.warning("partition %d: lease lost; stopped consuming it until the lease is free again", k)

    async def _stop(self) -> None:
        runner = self._runner
        while runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=self.tick_s)
        await self.source.stop_consuming(self.held)
        self.batches.drain()
        for k in self.held:
            await self.leases.release(k)
