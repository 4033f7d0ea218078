"""The MQTT receive path in a child process, so paho's per-message Python work and the engine do
not share one GIL (``ingest.receiver = "process"``, the default).

The child runs a receive-only :class:`~daemon.ingest.link.MqttLink` (the persistent session, the
subscriptions, payload parsing) into its own bounded queue and sends the samples to the parent in
batches (one JSON ``[samples, stats, first log index]`` per send, no pickle, at most every
``flush_s`` -- the service's ``ingest.batch_ms`` -- or ``SEND_MAX`` samples) over a pipe. So the
child does the micro-batching: a reader thread in the parent puts everything the pipe holds into the service's
:class:`~daemon.ingest.queue.IngestQueue` and has it processed at once, without a second wait.
Backpressure runs the whole way: a full parent queue stops the reader, the pipe fills, the child's
sends block, its queue fills and paho stops reading and acknowledging, so QoS 1 messages wait at
the broker.

With the write-ahead log (``wal_dir``), acknowledgements are manual: every ``sync_s`` the child
takes what is queued, appends it to the log as one record, fsyncs (one fsync per group), only then
acks those messages to the broker, and sends the samples with the log index of the first one. A
failed write or fsync (disk full, read-only) acks nothing and is retried; the queue then fills and
paho stops reading, so the broker keeps the messages. See the README's durability section.

Every send also carries the child's counters; the parent notes when it last heard from the child
(:meth:`ReceiverProcess.silent_s`), so a stopped or hung child is seen and replaced.

The child ignores SIGTERM/SIGINT (systemd signals the whole cgroup): it stops when the parent
asks, after sending what it holds, or when the pipe closes (the parent died).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import spawn
from daemon.heap import freeze_startup_objects
from daemon.ingest.link import MqttLink
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.ingest.wire import encode_columns
from daemon.plain import Plain, PlainMqtt
from daemon.ratelog import RateLimitedLogger
from lstm_stream.wal import SegmentWriter, encode_samples

if TYPE_CHECKING:  # the child gets their values as daemon.plain objects: pydantic is not imported there
    from daemon.settings import MqttSettings, PayloadSettings

log = logging.getLogger(__name__)

SEND_MAX = 4096  # samples per send
HEARTBEAT_S = 0.1  # stats reach the parent at least this often (connected, counters)
CHILD_QUEUE = 50_000  # samples the child holds while the parent is behind
STOP, BYE, ROTATE = "stop", "bye", "rotate"
STATS_S = 0.25  # the parent copies the child's counters into the metrics this often
RETRY_S = 0.5  # after a failed log write, wait this long before the next try


@dataclass(slots=True)
class WalStats:
    """The child's log counters, carried to the parent with every send."""

    error: str = ""  # why the last write or fsync failed; "" once one succeeds
    bytes: int = 0
    syncs: int = 0
    failures: int = 0


def _encode(samples: list | str, stats: tuple, first: int) -> bytes:
    """One message to the parent: JSON (floats round-trip exactly; NaN as JSON's extension)."""
    return json.dumps([samples, stats, first], separators=(",", ":")).encode()


def _decode(data: bytes) -> tuple[Any, list, int]:
    """A message from :func:`_encode` or :meth:`_Committer._send_columns`: (samples, stats, first);
    samples in columns (:class:`~daemon.ingest.columns.Columns`) for the ``C`` form."""
    if data[:1] == b"C":  # C[[stats...], first]\n<column block>
        from daemon.ingest.columns import decode_columns  # numpy: the parent only

        cut = data.index(b"\n")
        stats, first = json.loads(data[1:cut])
        return decode_columns(data, cut + 1), stats, first
    return json.loads(data)


def _stats_tuple(s: LinkStats, w: WalStats | None = None) -> tuple:
    w = w or WalStats()
    return (
        s.received,
        dict(s.rejected),
        s.connected,
        s.connects,
        s.disconnects,
        w.error,
        w.bytes,
        w.syncs,
        w.failures,
    )


class _Sender:
    """Child side: ships queued samples (and the link's counters) to the parent, one send at a time."""

    def __init__(self, conn: Connection, queue: IngestQueue, stats: LinkStats, flush_s: float) -> None:
        self.conn = conn
        self.queue = queue
        self.stats = stats
        self.flush_s = flush_s
        self.lock = threading.Lock()
        self.last_send = 0.0

    def maybe_send(self) -> None:
        """Network thread, after each enqueue: send when a batch is full or its oldest is due."""
        if not self.queue.due(SEND_MAX, self.flush_s):
            return
        if self.lock.acquire(blocking=False):  # the main thread is sending: it takes these too
            try:
                self._send(self.queue.drain(SEND_MAX))
            finally:
                self.lock.release()

    def send_idle(self) -> None:
        """Main thread, every ``flush_s``: send what the network thread left (no message came to
        send it) and an empty send when due, to carry the counters. Under load the network thread
        sends everything itself and this costs one check, not a GIL hand-off with work on both sides."""
        since_send = time.monotonic() - self.last_send
        flush_s = self.flush_s
        if (since_send >= flush_s and self.queue.due(SEND_MAX, flush_s)) or since_send >= HEARTBEAT_S:
            self.send_all()

    def send_all(self, heartbeat: bool = True) -> None:
        """Send everything queued; an empty send when due, to carry the counters."""
        with self.lock:
            while len(self.queue):
                self._send(self.queue.drain(SEND_MAX))
            if heartbeat and time.monotonic() - self.last_send >= HEARTBEAT_S:
                self._send([])

    def _send(self, samples: list) -> None:
        self.conn.send_bytes(_columns_message(samples, _stats_tuple(self.stats), -1))
        self.last_send = time.monotonic()


def _columns_message(samples: list, stats: tuple, first: int) -> bytes:
    """``C``, ``[stats, first]`` as JSON, a newline, the samples as a column block (:mod:`.wire`)."""
    head = json.dumps([stats, first], separators=(",", ":")).encode()
    return b"C" + head + b"\n" + encode_columns(samples)


class _Committer:
    """Child side with the log: queued samples -> one record -> fsync -> PUBACKs -> the parent.

    Runs on the child's main thread only. The network thread queues a message's samples and then
    notes its mid (:meth:`delivered`), so every noted mid's samples are queued before the mid is
    taken: a commit that takes ``n`` mids and then drains the queue acks only logged samples.
    """

    def __init__(self, conn: Connection, queue: IngestQueue, stats: LinkStats, writer: SegmentWriter) -> None:
        self.conn = conn
        self.queue = queue
        self.stats = stats
        self.writer = writer
        self.wal = WalStats()
        self.client = None  # the paho client, for acks (set once the link exists)
        self._acks: deque[tuple[int, int, int]] = deque()  # (mid, qos, connection number)
        self._pending: list = []  # samples taken off the queue, not yet durable
        self._pending_acks: list[tuple[int, int, int]] = []
        self.last_send = 0.0
        self.retry_at = 0.0

    def delivered(self, mid: int, qos: int) -> None:
        """Network thread, after the inlet queued the message's samples: ack it once they are logged."""
        if qos:
            self._acks.append((mid, qos, self.stats.connects))
            self.queue.wake()  # a rejected payload queued nothing: its ack still ends an idle wait

    def idle(self) -> bool:
        """Nothing to log, acknowledge or retry: the last commit took everything."""
        return not (len(self.queue) or self._acks or self._pending)

    def commit(self, heartbeat: bool = True) -> bool:
        """Log, fsync, ack and send what is queued; an empty send when due (counters, liveness).
        False when the log could not be written (nothing acked; retried after ``RETRY_S``)."""
        now = time.monotonic()
        if now < self.retry_at:
            self._heartbeat(heartbeat)
            return False
        n = len(self._acks)  # first the mids, then the queue: their samples are queued already
        queued = len(self.queue)
        room = CHILD_QUEUE - len(self._pending)  # while the log fails, the queue holds the rest
        if queued <= room:
            self._pending_acks.extend(self._acks.popleft() for _ in range(n))
            self._pending.extend(self.queue.drain(queued))
        elif room > 0:  # not all of it: ack none of it yet
            self._pending.extend(self.queue.drain(room))
        samples = self._pending
        first = self.writer.next_index
        payload = b""
        try:
            if samples:
                payload = encode_samples(samples)
                first = self.writer.append_encoded(payload, len(samples))
            self.writer.sync()
        except OSError as exc:
            self._failed(exc)
            self._heartbeat(heartbeat)
            return False
        if self.wal.error:
            log.warning("write-ahead log writable again")
        self.wal.error = ""
        self.wal.bytes, self.wal.syncs = self.writer.bytes_written, self.writer.syncs
        self._ack()
        self._pending = []
        if samples:
            self.conn.send_bytes(_columns_message(samples, _stats_tuple(self.stats, self.wal), first))
            self.last_send = time.monotonic()
        self._heartbeat(heartbeat)
        return True

    def _failed(self, exc: OSError) -> None:
        if not self.wal.error:
            log.error("cannot write the write-ahead log (not acknowledging until it works): %s", exc)
        self.wal.error = f"write-ahead log: {exc.strerror or exc}"
        self.wal.failures += 1
        self.retry_at = time.monotonic() + RETRY_S

    def _ack(self) -> None:
        acks, self._pending_acks = self._pending_acks, []
        client, connection = self.client, self.stats.connects
        if client is None:
            return
        # a mid from an earlier connection may name another message now: the broker redelivers it
        current = [a for a in acks if a[2] == connection]
        if hasattr(client, "ack_many") and all(qos == 1 for _, qos, _ in current):
            client.ack_many([mid for mid, _, _ in current])  # one write for all of them
            return
        for mid, qos, _ in current:
            client.ack(mid, qos)

    def _heartbeat(self, heartbeat: bool) -> None:
        if heartbeat and time.monotonic() - self.last_send >= HEARTBEAT_S:
            self._send([], self.writer.next_index)

    def _send(self, samples: list, first: int) -> None:
        self.conn.send_bytes(_encode(samples, _stats_tuple(self.stats, self.wal), first))
        self.last_send = time.monotonic()

    def rotate(self) -> None:
        """Parent's request after a checkpoint: new segment, so that the old one can be cut."""
        self.writer.rotate()


def _child_main(
    conn: Connection,
    mqtt: PlainMqtt,
    payload: Plain,
    level: str,
    rate_limit_s: float,
    flush_s: float,
    wal_dir: str | None = None,
    next_index: int = 0,
    sync_s: float = 0.01,
) -> None:
    """The receiver process: link -> queue -> (log ->) pipe until the parent says stop or goes away."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s (receiver): %(message)s")
    if wal_dir is not None:
        _child_wal(conn, mqtt, payload, rate_limit_s, Path(wal_dir), next_index, sync_s)
        return
    queue = IngestQueue(CHILD_QUEUE, block_s=float("inf"))
    stats = LinkStats()
    sender = _Sender(conn, queue, stats, flush_s)
    link = MqttLink(
        mqtt,
        PayloadParser(payload),
        queue,
        stats=stats,
        rate_log=RateLimitedLogger(log, rate_limit_s),
        on_enqueued=sender.maybe_send,
        availability=False,
    )
    link.start()
    freeze_startup_objects()
    parent_spoke = _poller(conn)
    try:
        while not parent_spoke(max(flush_s, 0.001)):
            sender.send_idle()
        conn.recv_bytes()  # STOP
    except (EOFError, OSError):  # the parent is gone: nothing to send to
        link.close(timeout=0.5)
        return
    link.close()
    queue.close()
    try:
        sender.send_all(heartbeat=False)
        conn.send_bytes(_encode(BYE, _stats_tuple(stats), -1))
    except (BrokenPipeError, OSError):
        pass


def _poller(conn: Connection) -> Callable[[float], bool]:
    """``conn.poll(timeout)`` without a new selector per call, as multiprocessing's builds (a tenth of
    a millisecond of this slow interpreter's time, a hundred times a second in an idle child)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return lambda timeout_s: bool(poller.poll(math.ceil(timeout_s * 1000.0)))


def _child_wal(
    conn: Connection,
    mqtt: PlainMqtt,
    payload: Plain,
    rate_limit_s: float,
    wal_dir: Path,
    next_index: int,
    sync_s: float,
) -> None:
    """The receiver with the log: one group commit every ``sync_s``; at stop, a last commit, then
    disconnect (what arrives after it is not acknowledged: the broker delivers it again)."""
    queue = IngestQueue(CHILD_QUEUE, block_s=float("inf"))
    stats = LinkStats()
    committer = _Committer(conn, queue, stats, SegmentWriter(wal_dir, next_index))
    link = MqttLink(
        mqtt,
        PayloadParser(payload),
        queue,
        stats=stats,
        rate_log=RateLimitedLogger(log, rate_limit_s),
        availability=False,
        on_delivered=committer.delivered,
    )
    committer.client = link.client
    link.start()
    freeze_startup_objects()
    window = max(sync_s, 0.001)
    parent_spoke = _poller(conn)
    try:
        while True:
            started = time.monotonic()
            committer.commit()
            if committer.idle():
                # nothing arrived: sleep until something does (the network thread wakes the queue) or
                # the heartbeat is due, not a commit every window; then keep the window's cadence
                # (what arrives within a window of the last commit is one commit, as under load)
                queue.wait(HEARTBEAT_S)
            if parent_spoke(max(0.0, started + window - time.monotonic())):
                if conn.recv_bytes().decode() != ROTATE:
                    break  # STOP
                committer.rotate()
        committer.commit(heartbeat=False)
    except (EOFError, OSError):  # the parent is gone: what is logged is replayed by the next start
        link.close(timeout=0.5)
        return
    link.close()
    committer.writer.close()
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send_bytes(_encode(BYE, _stats_tuple(stats, committer.wal), committer.writer.next_index))


class ReceiverProcess:
    """Parent side: starts the child, feeds its samples into ``queue``, mirrors its counters in
    ``stats`` and calls ``on_enqueued()`` once the pipe is empty or ``batch_max`` samples are queued
    (the service processes them there). ``flush_s``: how long a sample may wait in the child."""

    def __init__(
        self,
        mqtt: MqttSettings,
        payload: PayloadSettings,
        queue: IngestQueue,
        stats: LinkStats,
        *,
        on_enqueued: Callable[[], None] | None = None,
        log_level: str = "INFO",
        rate_limit_s: float = 10.0,
        flush_s: float = 0.01,
        batch_max: int = 4096,
        wal_dir: Path | None = None,
        next_index: int = 0,
        sync_s: float = 0.01,
        on_stats: Callable[[], None] | None = None,
    ) -> None:
        """``wal_dir``: log what is received there, from index ``next_index``, one fsync per ``sync_s``
        (None: acknowledge on receipt, as without the log). ``on_stats()`` runs on the reader thread
        at most every ``STATS_S`` after the child's counters were mirrored (metrics stay current
        while the engine is busy)."""
        self.queue = queue
        self.batch_max = batch_max
        self.stats = stats
        self.wal = WalStats()
        self.expected = next_index  # log index of the next sample the child sends
        self.last_heard = time.monotonic()
        self._waiting = False  # the reader is waiting for the child (not busy queueing)
        self._seen = LinkStats()  # the child's counters as last mirrored (they start at 0 in each child)
        self._send_lock = threading.Lock()
        self._on_stats = on_stats
        self._next_stats = 0.0
        self._on_enqueued = on_enqueued
        ctx = spawn.context()  # no fork of a threaded parent; no resource tracker process
        self._conn, child_conn = ctx.Pipe()
        self._child_conn = child_conn
        self.process = ctx.Process(
            target=_child_main,
            args=(
                child_conn,
                PlainMqtt.of(mqtt),
                Plain.of(payload),
                log_level,
                rate_limit_s,
                flush_s,
                None if wal_dir is None else str(wal_dir),
                next_index,
                sync_s,
            ),
            name="lstm-stream-receiver",
            daemon=True,
        )
        self._reader = threading.Thread(target=self._read, name="receiver", daemon=True)
        self.finished = threading.Event()  # set when the child said bye or the pipe closed
        self.error: str = ""

    def start(self) -> None:
        """Start the child (it connects with backoff on its own) and the reader thread."""
        self.process.start()
        self._child_conn.close()
        self._reader.start()

    def _read(self) -> None:
        conn, queue = self._conn, self.queue
        try:
            while True:
                # what the pipe holds now goes in together: while a batch was processed, the child
                # may have sent several, and one call for all of them costs less than one each
                while True:
                    self.last_heard = time.monotonic()  # silence counts from here
                    self._waiting = True
                    data = conn.recv_bytes()
                    self._waiting = False
                    samples, stats, first = _decode(data)
                    self.last_heard = now = time.monotonic()
                    self._mirror(stats)
                    if self._on_stats is not None and now >= self._next_stats:
                        self._next_stats = now + STATS_S
                        self._on_stats()
                    if isinstance(samples, str):  # BYE: everything the child received is queued
                        return
                    if samples:
                        if first >= 0:
                            if first != self.expected:
                                raise RuntimeError(
                                    f"log index {first} from the receiver, {self.expected} expected"
                                )
                            self.expected = first + len(samples)
                        queue.put_many(samples)
                    if len(queue) >= self.batch_max or not conn.poll(0):
                        break
                if len(queue) and self._on_enqueued is not None:
                    self._on_enqueued()
        except (EOFError, OSError) as exc:
            self.error = f"receiver process ended unexpectedly ({type(exc).__name__})"
        except Exception as exc:  # noqa: BLE001 - reported through ``error``; the service fails loudly
            self.error = f"receiver thread failed: {exc!r}"
            log.exception("receiver thread failed")
        finally:
            self.stats.connected = False
            self.finished.set()

    def _mirror(self, stats: tuple) -> None:
        """Add the child's counters (since the last send) to ``stats``; copy its state."""
        s, seen, w = self.stats, self._seen, self.wal
        received, rejected, s.connected, connects, disconnects, w.error, w.bytes, w.syncs, w.failures = stats
        s.received += received - seen.received
        s.connects += connects - seen.connects
        s.disconnects += disconnects - seen.disconnects
        for k, v in rejected.items():
            s.rejected[k] = s.rejected.get(k, 0) + v - seen.rejected.get(k, 0)
        seen.received, seen.connects, seen.disconnects = received, connects, disconnects
        seen.rejected.update(rejected)
        s.wal_bytes += w.bytes - seen.wal_bytes
        s.wal_syncs += w.syncs - seen.wal_syncs
        s.wal_failures += w.failures - seen.wal_failures
        seen.wal_bytes, seen.wal_syncs, seen.wal_failures = w.bytes, w.syncs, w.failures

    def silent_s(self) -> float:
        """Seconds the child has kept the reader waiting (it sends at least every ``HEARTBEAT_S``);
        0 while the reader is busy queueing (a full queue holds the child back, not a stall)."""
        if not self._waiting:
            return 0.0
        return time.monotonic() - self.last_heard

    def rotate(self) -> None:
        """Ask the child to start a new log segment (after a checkpoint: the old one can be cut)."""
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            if not self.finished.is_set():
                self._conn.send_bytes(ROTATE.encode())

    def kill(self) -> None:
        """Stop a stalled child at once (what it logged is read back from the log by the caller)."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(5.0)
        self._reader.join(5.0)
        with contextlib.suppress(OSError):
            self._conn.close()

    def is_connected(self) -> bool:
        """The child's link is connected (as of its last message, at most ``HEARTBEAT_S`` ago)."""
        return self.stats.connected and not self.finished.is_set()

    def close(self, timeout: float = 30.0) -> None:
        """Ask the child to stop; wait until everything it received is in ``queue``."""
        if not self.finished.is_set():
            with self._send_lock, contextlib.suppress(OSError):
                self._conn.send_bytes(STOP.encode())
            self.finished.wait(timeout)
        self.process.join(2.0)
        if self.process.is_alive():
            log.warning("receiver process did not stop: killing it")
            self.process.kill()
            self.process.join(5.0)
        self._reader.join(5.0)
        self._conn.close()
