"""Samples as columns on the service side: the receiver process's blocks (:mod:`.wire`) decoded with
``numpy.frombuffer`` and queued as they came, so nothing on the way to ``Engine.process`` runs Python
per sample.

:class:`ColumnQueue` has :class:`~daemon.ingest.queue.IngestQueue`'s interface (bounded, backpressure,
one producer and one consumer) but holds blocks of columns; ``drain`` returns one :class:`Columns`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from daemon.ingest.wire import HEAD, SEP

_CODE = np.dtype(np.uintc)  # array("I") on the other end


@dataclass(slots=True)
class Columns:
    """A run of samples: stream names (object array of str), timestamps and values (float64)."""

    streams: np.ndarray
    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_rows(cls, rows: list) -> Columns:
        """From ``[(stream, ts, value), ...]`` (the thread receiver, the log's replay, tests)."""
        if not rows:
            return EMPTY
        streams, ts, values = zip(*rows, strict=True)
        names = np.empty(len(streams), dtype=object)
        names[:] = streams
        return cls(names, np.array(ts, dtype=np.float64), np.array(values, dtype=np.float64))

    def take(self, index: np.ndarray | slice) -> Columns:
        return Columns(self.streams[index], self.ts[index], self.values[index])

    @staticmethod
    def concat(parts: list[Columns]) -> Columns:
        """One run of ``parts`` in order."""
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else EMPTY
        return Columns(
            np.concatenate([p.streams for p in parts]),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.values for p in parts]),
        )

    def rows(self) -> list[tuple[str, float, float]]:
        """As ``[(stream, ts, value), ...]`` (for callers that want samples one by one)."""
        return list(zip(self.streams.tolist(), self.ts.tolist(), self.values.tolist(), strict=True))


EMPTY = Columns(np.empty(0, dtype=object), np.empty(0), np.empty(0))


def decode_columns(data: bytes | memoryview, offset: int = 0) -> Columns:
    """A block of :func:`daemon.ingest.wire.encode_columns` starting at ``offset`` of ``data``."""
    n, size = HEAD.unpack_from(data, offset)
    if not n:
        return EMPTY
    pos = offset + HEAD.size
    names = np.array(bytes(data[pos : pos + size]).decode("utf-8", "surrogatepass").split(SEP), dtype=object)
    pos += size
    codes = np.frombuffer(data, _CODE, n, pos)
    pos += n * _CODE.itemsize
    ts = np.frombuffer(data, np.float64, n, pos).copy()
    values = np.frombuffer(data, np.float64, n, pos + 8 * n).copy()
    return Columns(names[codes], ts, values)


class ColumnQueue:
    """Bounded FIFO of column blocks from the receiver's reader thread to the engine; the
    interface of :class:`~daemon.ingest.queue.IngestQueue` (``len`` counts samples).

    The producer only appends and only adds to ``_in``; the consumer only pops from the left
    (putting back the rest of a block it split) and only adds to ``_out``: no lock needed.
    """

    def __init__(self, maxsize: int, block_s: float = 0.0) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.block_s = block_s
        self.dropped = 0
        self.blocked_s = 0.0
        self._q: deque[Columns] = deque()
        self._in = 0  # samples ever put (producer)
        self._out = 0  # samples ever drained (consumer)
        self._event = threading.Event()
        self._space = threading.Event()
        self._space.set()
        self._closed = False
        self.since = 0.0

    def __len__(self) -> int:
        return self._in - self._out

    def put_many(self, samples: Columns | list) -> int:
        """Append a block (or rows), waiting for room when full; return how many were dropped."""
        block = samples if isinstance(samples, Columns) else Columns.from_rows(samples)
        n = len(block)
        if not n:
            return 0
        if self._closed or n <= self.maxsize - len(self):
            self._append(block)
            return 0
        return self._put_waiting(block)

    def _put_waiting(self, block: Columns) -> int:
        """Put what fits, wait for room (at most ``block_s`` in all), repeat; drop what is left."""
        started = time.monotonic()
        deadline = started + self.block_s
        done, n = 0, len(block)
        while done < n:
            free = n - done if self._closed else min(n - done, self.maxsize - len(self))
            if free > 0:
                self._append(block.take(slice(done, done + free)))
                done += free
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._space.clear()
            if len(self) < self.maxsize:
                continue
            self._wake()
            self._space.wait(min(left, 0.1))
        self.blocked_s += time.monotonic() - started
        self.dropped += n - done
        return n - done

    def _append(self, block: Columns) -> None:
        if not len(self):
            self.since = time.monotonic()
        self._q.append(block)
        self._in += len(block)
        self._wake()

    def _wake(self) -> None:
        if not self._event.is_set():
            self._event.set()

    def due(self, max_items: int, age_s: float) -> bool:
        """A batch should go now: ``max_items`` are queued, or the oldest has waited ``age_s``."""
        n = len(self)
        return n >= max_items or (n > 0 and time.monotonic() - self.since >= age_s)

    def drain(self, max_items: int) -> Columns:
        """Up to ``max_items`` samples, oldest first, as one :class:`Columns`."""
        q, parts, want = self._q, [], max_items
        while want > 0 and q:
            block = q.popleft()
            if len(block) > want:  # the rest goes back to the front
                q.appendleft(block.take(slice(want, None)))
                block = block.take(slice(0, want))
            parts.append(block)
            want -= len(block)
        got = max_items - want
        self._out += got
        if got and not self._space.is_set():
            self._space.set()
        return Columns.concat(parts)

    def close(self) -> None:
        """Stop bounding the queue: release a waiting producer and accept everything from now on."""
        self._closed = True
        self._space.set()

    def wait(self, timeout: float) -> bool:
        """Block until something is queued or ``timeout`` seconds pass; True if not empty."""
        if len(self):
            return True
        self._event.clear()
        if len(self):
            return True
        self._event.wait(timeout)
        return bool(len(self))
