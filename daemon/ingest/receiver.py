"""The MQTT receive path in a child process, so paho's per-message Python work and the engine do
not share one GIL (``ingest.receiver = "process"``, the default).

The child runs a receive-only :class:`~daemon.ingest.link.MqttLink` (the persistent session, the
subscriptions, payload parsing) into its own bounded queue and sends the samples to the parent in
batches (a pickled ``(samples, stats)`` per send, at most every ``flush_s`` -- the service's
``ingest.batch_ms`` -- or ``SEND_MAX`` samples) over a pipe. So the child does the micro-batching:
a reader thread in the parent puts everything the pipe holds into the service's
:class:`~daemon.ingest.queue.IngestQueue` and has it processed at once, without a second wait.
Backpressure runs the whole way: a full parent queue stops the reader, the pipe fills, the child's
sends block, its queue fills and paho stops reading and acknowledging, so QoS 1 messages wait at
the broker.

The child ignores SIGTERM/SIGINT (systemd signals the whole cgroup): it stops when the parent
asks, after sending what it holds, or when the pipe closes (the parent died).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from daemon.heap import freeze_startup_objects
from daemon.ingest.link import MqttLink
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.ratelog import RateLimitedLogger
from daemon.settings import MqttSettings, PayloadSettings

log = logging.getLogger(__name__)

SEND_MAX = 4096  # samples per send
HEARTBEAT_S = 0.1  # stats reach the parent at least this often (connected, counters)
CHILD_QUEUE = 50_000  # samples the child holds while the parent is behind
STOP, BYE = "stop", "bye"


def _stats_tuple(s: LinkStats) -> tuple:
    return (s.received, dict(s.rejected), s.connected, s.connects, s.disconnects)


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
        self.conn.send_bytes(pickle.dumps((samples, _stats_tuple(self.stats)), pickle.HIGHEST_PROTOCOL))
        self.last_send = time.monotonic()


def _child_main(
    conn: Connection,
    mqtt: MqttSettings,
    payload: PayloadSettings,
    level: str,
    rate_limit_s: float,
    flush_s: float,
) -> None:
    """The receiver process: link -> queue -> pipe until the parent says stop or goes away."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s (receiver): %(message)s")
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
    try:
        while not conn.poll(max(flush_s, 0.001)):
            sender.send_idle()
        conn.recv()  # STOP
    except (EOFError, OSError):  # the parent is gone: nothing to send to
        link.close(timeout=0.5)
        return
    link.close()
    queue.close()
    try:
        sender.send_all(heartbeat=False)
        conn.send_bytes(pickle.dumps((BYE, _stats_tuple(stats))))
    except (BrokenPipeError, OSError):
        pass


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
    ) -> None:
        self.queue = queue
        self.batch_max = batch_max
        self.stats = stats
        self._on_enqueued = on_enqueued
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded, torch-loaded parent
        self._conn, child_conn = ctx.Pipe()
        self._child_conn = child_conn
        self.process = ctx.Process(
            target=_child_main,
            args=(child_conn, mqtt, payload, log_level, rate_limit_s, flush_s),
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
                    samples, stats = pickle.loads(conn.recv_bytes())
                    self._mirror(stats)
                    if isinstance(samples, str):  # BYE: everything the child received is queued
                        return
                    if samples:
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
        s = self.stats
        s.received, rejected, s.connected, s.connects, s.disconnects = stats
        s.rejected.update(rejected)

    def is_connected(self) -> bool:
        """The child's link is connected (as of its last message, at most ``HEARTBEAT_S`` ago)."""
        return self.stats.connected and not self.finished.is_set()

    def close(self, timeout: float = 30.0) -> None:
        """Ask the child to stop; wait until everything it received is in ``queue``."""
        if not self.finished.is_set():
            with contextlib.suppress(OSError):
                self._conn.send(STOP)
            self.finished.wait(timeout)
        self.process.join(5.0)
        if self.process.is_alive():
            log.warning("receiver process did not stop: killing it")
            self.process.kill()
            self.process.join(5.0)
        self._conn.close()
