"""The NATS JetStream source (``ingest.source = "nats"``): the partitions this worker owns, read from
a JetStream stream into the same ingest queue, payload parser and counters as the MQTT path.

One thread runs an asyncio loop with a nats-py connection (the stream, consumers, and the leases, the
object store and the outlet built on it). Each owned partition is a pull consumer without
acknowledgements filtered on ``<prefix>.<k>.>`` and starting right after the partition's saved
position, so a restart replays exactly what the restored checkpoint lacks
(:mod:`~daemon.ingest.nats_positions`); the messages are read on a raw connection of their own, in
bulk (:mod:`~daemon.ingest.nats_pull`). A payload's arrival time is the message's JetStream
timestamp, so a sample without a timestamp of its own gets the same one when it is read again. A
full queue stops the reader: the server holds the rest. After a reconnect (or a gap) a partition
gets a new consumer right after the last message handled, and a message seen twice is skipped by
its sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import nats
from nats.js import api

from daemon.ingest.columns import ColumnQueue
from daemon.ingest.nats_positions import Positions
from daemon.ingest.nats_pull import PullReader
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import LinkStats
from daemon.nats_settings import NatsSettings
from daemon.ratelog import RateLimitedLogger

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between connection attempts while the server is down at start
CONSUMER_IDLE_S = 60.0  # a consumer nobody pulls from (its worker died) is removed by the server


class NatsSource:
    """Consumes partitions of a JetStream stream into ``queue``; ``on_enqueued()`` runs after each
    read buffer's samples are queued (the service runs due micro-batches there);
    :meth:`consume`/:meth:`stop_consuming` change the set of partitions."""

    def __init__(
        self,
        settings: NatsSettings,
        parser: PayloadParser,
        queue: ColumnQueue,
        positions: Positions,
        *,
        stats: LinkStats,
        rate_log: RateLimitedLogger,
        on_enqueued: Callable[[], None] | None = None,
        flush_s: float = 0.01,
        flush_max: int = 4096,
    ) -> None:
        """``flush_s``/``flush_max``: how often read samples are queued as one block, and at most
        how many (``ingest.batch_ms``/``batch_max``); ``settings.batch_min``/``batch_wait_ms``: how
        many a block waits for, and how long at most."""
        self.settings = settings
        self.parser = parser
        self.queue = queue
        self.positions = positions
        self.stats = stats
        self._rlog = rate_log
        self._on_enqueued = on_enqueued
        self.loop = asyncio.new_event_loop()
        self.nc: Any = None  # nats.aio.client.Client once connected
        self.js: Any = None
        self._subs: dict[int, str] = {}  # partition -> its pull consumer's name
        self._wanted: set[int] = set()  # partitions consumed (a new consumer is made after a loss)
        self._generation = 0
        self._base = "".join(c if c.isalnum() or c in "-_" else "_" for c in settings.holder())
        self._lock = asyncio.Lock()  # one change of the subscriptions at a time
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._initial: list[int] = []
        self.partition_of: dict[str, int] = {}  # stream -> the partition its samples came from
        self.ready = threading.Event()  # connected and the stream exists
        self.reader = PullReader(
            settings.servers,
            settings.stream,
            parser,
            queue,
            positions,
            stats=stats,
            rate_log=rate_log,
            partition_of=self.partition_of,
            on_lost=self._lost,
            on_enqueued=on_enqueued,
            flush_s=flush_s,
            flush_max=flush_max,
            flush_min=settings.batch_min,
            wait_s=settings.batch_wait_ms / 1000.0,
        )

    # ------------------------------------------------------------------ lifecycle (any thread)
    def start(self, partitions: list[int] | None = None) -> NatsSource:
        """Start the thread: connect (retrying), make sure the stream exists, consume ``partitions``."""
        self._initial = list(partitions or [])
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._thread.start()
        self.reader.start()
        return self

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the source's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> Any:
        """Schedule a coroutine on the source's loop; returns its concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def owned(self) -> list[int]:
        return sorted(self._subs)

    def is_connected(self) -> bool:
        return (
            self.ready.is_set()
            and self.nc is not None
            and self.nc.is_connected
            and self.reader.connected.is_set()
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop consuming and disconnect; nothing is queued after this returns."""
        if self._thread is None:
            return
        self._stopping = True
        if self.loop.is_running():
            try:
                self.call(self._close(), timeout)
            except Exception as exc:  # noqa: BLE001 - the thread is stopped anyway
                log.warning("closing the NATS connection: %r", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self.reader.close(timeout)
        self.stats.connected = False

    # ------------------------------------------------------------------ on the loop
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._connect())
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _connect(self) -> None:
        s = self.settings
        while not self._stopping:
            try:
                self.nc = await nats.connect(
                    servers=s.servers,
                    name=f"lstm-stream {s.holder()}",
                    connect_timeout=s.connect_timeout_s,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RETRY_S,
                    allow_reconnect=True,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
                self.js = self.nc.jetstream()
                await self._ensure_stream()
                break
            except Exception as exc:  # noqa: BLE001 - down at start: retry, as the MQTT link does
                self._rlog.log("nats_connect", "cannot reach NATS %s (%r), retrying", s.servers, exc)
                if self.nc is not None:
                    await self.nc.close()
                    self.nc = None
                await asyncio.sleep(RETRY_S)
        if self.nc is not None:
            self.stats.connected = True
            self.stats.connects += 1
            self.ready.set()
            log.info("connected to NATS %s, stream %s", self.nc.connected_url.netloc, s.stream)
            try:
                await self.consume(self._initial)
            except Exception:  # noqa: BLE001 - e.g. a consumer the server refused: loud, not silent
                log.exception("cannot consume partitions %s", self._initial)

    async def _ensure_stream(self) -> None:
        s = self.settings
        try:
            await self.js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            if not s.create_stream:
                raise
            await self.js.add_stream(
                name=s.stream,
                subjects=[f"{s.subject_prefix}.>"],
                max_age=s.max_age_s or None,
                max_bytes=s.max_bytes,
            )
            log.info("created JetStream stream %s on %s.>", s.stream, s.subject_prefix)

    async def wait_ready(self) -> None:
        while not self.ready.is_set():
            await asyncio.sleep(0.05)

    async def consume(self, partitions: list[int]) -> None:
        """Start consuming ``partitions``, each right after its saved position."""
        await self.wait_ready()
        async with self._lock:
            for k in partitions:
                if k not in self._subs:
                    after = self.positions.start_after(k)
                    await self._subscribe(k, after, after or 0)

    async def _subscribe(self, k: int, after: int | None, handled: int) -> None:
        """A new pull consumer of partition ``k`` starting after ``after`` (None: ``nats.start``),
        handed to the reader, which skips what it has handled up to ``handled``."""
        s = self.settings
        if after:
            after, handled = await self._within_stream(k, after, handled)
        if after is not None:
            policy = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
        elif s.start == "new":
            policy = {"deliver_policy": api.DeliverPolicy.NEW}
        else:
            policy = {"deliver_policy": api.DeliverPolicy.ALL}
        self._generation += 1
        name = f"{self._base}-p{k}-g{self._generation}"
        config = api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,  # positions live in the checkpoints, not on the server
            filter_subject=f"{s.subject_prefix}.{k}.>",
            inactive_threshold=CONSUMER_IDLE_S,
            mem_storage=True,
            num_replicas=1,
            **policy,
        )
        await self.js.add_consumer(s.stream, config)
        old = self._subs.get(k)
        self._subs[k] = name
        self._wanted.add(k)
        self.reader.start_partition(k, name, handled)
        if old is not None:
            await self._delete(old)
        log.info("partition %d: consuming after sequence %s", k, after if after is not None else s.start)

    async def _within_stream(self, k: int, after: int, handled: int) -> tuple[int, int]:
        """``(after, handled)``, or ``(0, 0)`` when ``after`` lies beyond the stream's last sequence:
        sequences never go back, so the stream was deleted and made again (its sequences restarted) and
        the position belongs to the old one; skipping up to it would drop the new stream's messages."""
        last = (await self.js.stream_info(self.settings.stream)).state.last_seq
        if after <= last:
            return after, handled
        log.warning(
            "partition %d: position %d is beyond stream %s's last sequence %d: the stream was made "
            "again; reading it from its start",
            k,
            after,
            self.settings.stream,
            last,
        )
        return 0, 0

    async def _delete(self, consumer: str) -> None:
        with contextlib.suppress(Exception):  # it expires on its own when idle
            await self.js.delete_consumer(self.settings.stream, consumer)

    async def stop_consuming(self, partitions: list[int]) -> None:
        """Stop consuming ``partitions``: none of their messages is queued after this returns."""
        async with self._lock:
            for k in partitions:
                self._wanted.discard(k)
                name = self._subs.pop(k, None)
                if name is not None:
                    # the reader may be waiting for room in the queue while holding its lock
                    await self.loop.run_in_executor(None, self.reader.release, k)
                    await self._delete(name)
                    log.info("partition %d released", k)

    def _lost(self, k: int) -> None:
        """Reader thread: partition ``k`` needs a new consumer (reconnect, a gap, a deleted consumer)."""
        if not self._stopping:
            asyncio.run_coroutine_threadsafe(self._renew(k), self.loop)

    async def _renew(self, k: int) -> None:
        """A new consumer right after the last message handled (the server may have lost the old one,
        e.g. a restart); retried while the server is not back."""
        while not self._stopping:
            async with self._lock:
                if k not in self._wanted:
                    return  # released meanwhile
                handled = self.reader.handled.get(k, 0)
                try:
                    after = handled if handled else self.positions.start_after(k)
                    await self._subscribe(k, after, handled)
                    return
                except Exception as exc:  # noqa: BLE001 - the server is not back yet: retry
                    self._rlog.log("nats_resubscribe", "partition %d: cannot resubscribe: %r", k, exc)
            await asyncio.sleep(RETRY_S)

    async def _close(self) -> None:
        await self.stop_consuming(list(self._subs))
        if self.nc is not None:
            await self.nc.close()

    async def _disconnected(self) -> None:
        self.stats.connected = False
        self.stats.disconnects += 1
        if not self._stopping:
            self._rlog.log("nats_disconnected", "disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        log.info("reconnected to NATS")  # the reader's own connection renews the consumers

    async def _error(self, exc: Exception) -> None:
        self._rlog.log("nats_error", "NATS: %r", exc)
