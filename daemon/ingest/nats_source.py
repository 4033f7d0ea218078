"""The NATS JetStream source (``ingest.source = "nats"``): the partitions this worker owns, read from
a JetStream stream into the same ingest queue, payload parser and counters as the MQTT path.

One thread runs an asyncio loop with a nats-py connection. Each owned partition is an ordered push
consumer (no acknowledgements, flow control, recreated by the client after a gap) filtered on
``<prefix>.<k>.>`` and starting right after the partition's saved position, so a restart replays
exactly what the restored checkpoint lacks (:mod:`~daemon.ingest.nats_positions`). A payload's
arrival time is the message's JetStream timestamp, so a sample without a timestamp of its own gets
the same one when it is read again. A full queue blocks this thread: the server holds the rest.
After a reconnect each partition is subscribed again right after the last message handled, and a
message seen twice is skipped by its sequence.
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

from daemon.ingest.inlet import BAD_NAME, INTERNAL
from daemon.ingest.nats_positions import Positions, ack_fields, topic_of
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.nats_settings import NatsSettings
from daemon.ratelog import RateLimitedLogger

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between connection attempts while the server is down at start
YIELD_EVERY = 256  # messages handled between two turns of the other tasks on the loop


class NatsSource:
    """Consumes partitions of a JetStream stream into ``queue``; ``on_enqueued()`` runs after each
    message (the service runs due micro-batches there); :meth:`consume`/:meth:`stop_consuming`
    change the set of partitions."""

    def __init__(
        self,
        settings: NatsSettings,
        parser: PayloadParser,
        queue: IngestQueue,
        positions: Positions,
        *,
        stats: LinkStats,
        rate_log: RateLimitedLogger,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
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
        self._subs: dict[int, Any] = {}
        self._wanted: set[int] = set()  # partitions whose messages are taken (set before subscribing)
        self._handled: dict[int, int] = {}  # partition -> stream sequence of the last message handled
        self._lock = asyncio.Lock()  # one change of the subscriptions at a time
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._initial: list[int] = []
        self.partition_of: dict[str, int] = {}  # stream -> the partition its samples came from
        self.ready = threading.Event()  # connected and the stream exists

    # ------------------------------------------------------------------ lifecycle (any thread)
    def start(self, partitions: list[int] | None = None) -> NatsSource:
        """Start the thread: connect (retrying), make sure the stream exists, consume ``partitions``."""
        self._initial = list(partitions or [])
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._thread.start()
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
        return self.ready.is_set() and self.nc is not None and self.nc.is_connected

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
                    self._handled[k] = after or 0
                    await self._subscribe(k, after)

    async def _subscribe(self, k: int, after: int | None) -> None:
        s = self.settings
        if after is not None:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
            )
        elif s.start == "new":
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        was_wanted = k in self._wanted
        self._wanted.add(k)  # the first messages may come before subscribe() returns
        try:
            self._subs[k] = await self.js.subscribe(
                f"{s.subject_prefix}.{k}.>",
                stream=s.stream,
                cb=self._handler(k),
                ordered_consumer=True,
                config=config,
                # no client-side limit: nats-py drops messages over it *after* advancing the ordered
                # consumer's sequence (a silent gap); the server's flow control bounds what is pending
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )
        except BaseException:
            if not was_wanted:
                self._wanted.discard(k)
            raise
        log.info("partition %d: consuming after sequence %s", k, after if after is not None else s.start)

    async def stop_consuming(self, partitions: list[int]) -> None:
        """Stop consuming ``partitions``: none of their messages is queued after this returns."""
        async with self._lock:
            for k in partitions:
                self._wanted.discard(k)
                sub = self._subs.pop(k, None)
                if sub is not None:
                    await sub.unsubscribe()
                    log.info("partition %d released", k)

    async def _resubscribe(self) -> None:
        """After a reconnect: new consumers right after the last message handled. The server may
        have lost the old ones (a restart), and the client would notice only after two missed
        heartbeats (10 s); messages still pending on an old one are skipped by sequence."""
        async with self._lock:
            partitions = list(self._subs)
            for k in partitions:
                with contextlib.suppress(Exception):
                    await self._subs.pop(k).unsubscribe()
        for k in partitions:
            while not self._stopping:
                async with self._lock:
                    if k not in self._wanted or k in self._subs:
                        break  # released meanwhile, or subscribed again by a later reconnect
                    handled = self._handled.get(k, 0)
                    try:
                        await self._subscribe(k, handled if handled else self.positions.start_after(k))
                        break
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
        log.info("reconnected to NATS")
        if not self._stopping:
            self.loop.create_task(self._resubscribe())

    async def _error(self, exc: Exception) -> None:
        self._rlog.log("nats_error", "NATS: %r", exc)

    # ------------------------------------------------------------------ hot path
    def _handler(self, partition: int) -> Callable[[Any], Any]:
        """The message callback of one partition: parse, queue, note the position."""
        stats, parse, put_many, note = self.stats, self.parser.parse, self.queue.put_many, self.positions.note
        partition_of, wanted, handled = self.partition_of, self._wanted, self._handled
        prefix_tokens = 2

        async def on_message(msg: Any) -> None:
            if self._stopping or partition not in wanted:  # released: not one more message
                return
            queued = 0
            try:
                sequence, arrival = ack_fields(msg.reply)
            except (ValueError, IndexError):  # not a JetStream delivery: no position to keep
                stats.received += 1
                stats.rejected[INTERNAL] += 1
                return
            if sequence <= handled.get(partition, 0):  # delivered again (a new consumer): had it
                return
            handled[partition] = sequence
            stats.received += 1
            try:
                topic = topic_of(msg.subject, prefix_tokens)
                result = parse(topic, msg.data, arrival)
                if type(result) is list:
                    if put_many(result):
                        self._rlog.log("queue_full", "ingest queue full: samples dropped")
                    queued = len(result)
                    for sample in result:
                        partition_of[sample[0]] = partition
                else:
                    reason = result.reason
                    stats.rejected[reason] = stats.rejected.get(reason, 0) + 1
                    self._rlog.log(reason, "rejected payload on %s: %s", msg.subject[:120], reason)
            except UnicodeDecodeError:
                stats.rejected[BAD_NAME] += 1
            except Exception as exc:  # noqa: BLE001 - never raise into the client's loop
                stats.rejected[INTERNAL] += 1
                self._rlog.log(INTERNAL, "error handling a message: %r", exc, level=logging.ERROR)
            note(queued, partition, sequence)
            if queued and self._on_enqueued is not None:
                self._on_enqueued()
            if not stats.received % YIELD_EVERY:  # a backlog is handled without a suspension point:
                await asyncio.sleep(0)  # let the socket reader and the lease renewals run

        return on_message
