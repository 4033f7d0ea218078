"""The hand-over from the MQTT network thread to the engine: a bounded sample queue with backpressure,
and the plain counters the receive path keeps (read by the service's metrics sync)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from daemon.ingest.payload import Sample
from daemon.rejects import REASONS

INTERNAL = "internal"  # reject reason: an exception in the receive path (a bug, never a payload)
REJECT_REASONS = (*REASONS, INTERNAL)


class IngestQueue:
    """Bounded FIFO of samples from the MQTT network thread (producer) to the engine (consumer).

    One producer and one consumer: ``deque.extend``/``popleft`` are atomic under the GIL, and the
    consumer only shrinks the queue while the producer only grows it, so the length checks need
    no lock. When full, the producer waits up to ``block_s`` for the engine to make room
    (backpressure: paho reads and acknowledges nothing meanwhile, so QoS 1 messages stay with the
    broker); only what still does not fit is dropped and counted in :attr:`dropped`. After
    :meth:`close` the producer never waits and nothing is dropped (the final drain takes it all).
    """

    __slots__ = ("_closed", "_event", "_q", "_space", "block_s", "blocked_s", "dropped", "maxsize", "since")

    def __init__(self, maxsize: int, block_s: float = 0.0) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.block_s = block_s
        self.dropped = 0  # samples refused because the queue was full (total); producer writes
        self.blocked_s = 0.0  # seconds the producer waited for room (total); producer writes
        self._q: deque[Sample] = deque()
        self._event = threading.Event()  # set by the producer: something to drain
        self._space = threading.Event()  # set by the consumer: room was made
        self._space.set()
        self._closed = False
        self.since = 0.0  # time.monotonic() when a sample last went into an empty queue

    def __len__(self) -> int:
        return len(self._q)

    def put_many(self, samples: list[Sample]) -> int:
        """Append ``samples`` in order, waiting for room when full; return how many were dropped."""
        if self._closed or len(samples) <= self.maxsize - len(self):  # the common case
            self._append(samples)
            return 0
        return self._put_waiting(samples)

    def _put_waiting(self, samples: list[Sample]) -> int:
        """Put what fits, wait for room (at most ``block_s`` in all), repeat; drop what is left."""
        started = time.monotonic()
        deadline = started + self.block_s
        done, n = 0, len(samples)
        while done < n:
            free = n - done if self._closed else min(n - done, self.maxsize - len(self))
            if free > 0:
                self._append(samples[done : done + free])
                done += free
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._space.clear()
            if len(self) < self.maxsize:  # clear-then-check, as in wait()
                continue
            self.wake()
            self._space.wait(min(left, 0.1))
        self.blocked_s += time.monotonic() - started
        self.dropped += n - done
        return n - done

    def _append(self, samples: list[Sample]) -> None:
        """Extend the queue (noting when an empty one got its oldest sample) and wake the consumer."""
        q = self._q
        if not q:
            self.since = time.monotonic()
        q.extend(samples)
        self.wake()

    def wake(self) -> None:
        """Wake a consumer in :meth:`wait` (the producer calls it after a put; also for news that is
        not a sample, e.g. an acknowledgement due). An attribute read in the common case; set() (a
        lock) only when the consumer cleared it."""
        if not self._event.is_set():
            self._event.set()

    def due(self, max_items: int, age_s: float) -> bool:
        """A batch should go now: ``max_items`` are queued, or the oldest has waited ``age_s``."""
        n = len(self)
        return n >= max_items or (n > 0 and time.monotonic() - self.since >= age_s)

    def drain(self, max_items: int) -> list[Sample]:
        """Pop up to ``max_items`` samples, oldest first, and wake a producer waiting for room."""
        q = self._q
        popleft = q.popleft
        out = [popleft() for _ in range(min(max_items, len(q)))]
        if out and not self._space.is_set():
            self._space.set()
        return out

    def close(self) -> None:
        """Stop bounding the queue: release a waiting producer and accept everything from now on."""
        self._closed = True
        self._space.set()

    def wait(self, timeout: float) -> bool:
        """Block until something is queued or ``timeout`` seconds pass; True if not empty.

        Clear-then-check: a producer that appends after the check sees the flag cleared and sets it.
        """
        if self._q:
            return True
        self._event.clear()
        if self._q:
            return True
        self._event.wait(timeout)
        return bool(self._q)


@dataclass(slots=True)
class LinkStats:
    """Counters the metrics code reads as plain attributes (each has one writer thread).

    ``rejected`` holds every reason from the start, so readers may copy it while the network
    thread counts (its size never changes). Queue overflow is ``IngestQueue.dropped``.
    """

    received: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    publish_failures: int = 0
    wal_bytes: int = 0  # write-ahead log: bytes written, fsyncs, failed writes or fsyncs
    wal_syncs: int = 0
    wal_failures: int = 0
