"""Samples as columns on the service side: the receiver process's blocks (:mod:`.wire`) decoded with
``numpy.frombuffer`` and queued as they came, so nothing on the way to ``Engine.process`` runs Python
per sample.

:class:`ColumnQueue` has :class:`~daemon.ingest.queue.IngestQueue`'s interface (bounded, backpressure,
one producer and one consumer) but holds blocks of columns; ``drain`` returns one :class:`Columns`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from daemon.ingest.queue import IngestQueue
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

    def __getitem__(self, index: slice) -> Columns:
        """A slice of the samples (as the queue's back-pressure loop cuts what fits)."""
        return self.take(index)

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


class ColumnQueue(IngestQueue):
    """Bounded FIFO of column blocks from the receiver's reader thread to the engine: an
    :class:`~daemon.ingest.queue.IngestQueue` (its back-pressure and waiting) whose items are blocks
    (``len`` counts samples).

    The producer only appends and only adds to ``_in``; the consumer only pops from the left
    (putting back the rest of a block it split) and only adds to ``_out``: no lock needed.
    """

    __slots__ = ("_in", "_out")

    def __init__(self, maxsize: int, block_s: float = 0.0) -> None:
        super().__init__(maxsize, block_s)
        self._in = 0  # samples ever put (producer)
        self._out = 0  # samples ever drained (consumer)

    def __len__(self) -> int:
        return self._in - self._out

    def put_many(self, samples: Columns | list) -> int:
        """Append a block (or rows), waiting for room when full; return how many were dropped."""
        block = samples if isinstance(samples, Columns) else Columns.from_rows(samples)
        return super().put_many(block) if len(block) else 0

    def _append(self, block: Columns) -> None:
        if not len(self):
            self.since = time.monotonic()
        self._q.append(block)
        self._in += len(block)
        self.wake()

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
