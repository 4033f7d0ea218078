"""The per-stream columns in shared memory: the engine publishes, the exposition process reads.

One anonymous ``memfd`` (freed with the last process holding it, never left behind in /dev/shm),
laid out as a 4 KiB header, the families' columns as float64 (one row per tracked stream, in
:func:`~daemon.outputs.families.series` order), then the stream names as a JSON array, rewritten
only when they change. A sequence number makes it a seqlock: odd while the writer is at work, so a
reader that saw it move copies again. The writer never waits for a reader.

The reader side (the exposition process) imports no numpy, 14 MB of that process: it reads the
header with ``struct`` and the columns as ``memoryview`` casts; the writer imports it where it works.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.outputs.families import series

if TYPE_CHECKING:
    from lstm_stream.engine import StreamView

HEADER = 4096
# header words (uint64): sequence, rows, families, names generation, names offset, names length,
# columns offset; then the publication time (float64) and one kind byte per family at KINDS_AT
SEQ, ROWS, NFAM, GEN, NAMES_OFF, NAMES_LEN, COLS_OFF = range(7)
PUBLISHED_AT = 7  # float64 word
KINDS_AT = 128
FLOAT, INT = 0, 1
READ_TRIES = 200  # a reader retries this often (0.5 ms apart) while the writer is mid-update


def _align(n: int) -> int:
    return (n + 4095) & ~4095


def _word(mm: mmap.mmap, index: int) -> int:
    """Header word ``index`` (uint64, native order, as the writer's numpy view stores it)."""
    return struct.unpack_from("=Q", mm, index * 8)[0]


@dataclass(frozen=True)
class Snapshot:
    """One consistent copy of the published columns (``cols[k]`` is family ``k``, one row per name)."""

    seq: int
    names: list[str]
    cols: Sequence  # per family, ``rows`` float64 values (``tolist()`` and ``tobytes()``)
    kinds: bytes  # per family: FLOAT or INT (booleans and counters print as integers)
    published_at: float


class SnapshotWriter:
    """Engine side: :meth:`update` copies a :class:`StreamView`'s columns into shared memory.

    A drop-in for :class:`~daemon.outputs.exposition.StreamExporter` in the housekeeping's hands.
    """

    def __init__(self, size: int = 1 << 20, horizons: tuple[int, ...] = ()) -> None:
        self.horizons = tuple(horizons)
        self.series = series(horizons)  # the columns, in the order the reader's SnapshotText expects
        self.fd = os.memfd_create("lstm-stream-metrics", os.MFD_CLOEXEC)
        self.size = _align(max(size, 2 * HEADER))
        os.ftruncate(self.fd, self.size)
        self._mm = mmap.mmap(self.fd, self.size)
        self._names: list[str] | None = None
        self._gen = 0
        self._names_len = 0

    def update(self, view: StreamView) -> None:
        """Publish ``view`` (names only when they differ from the last ones)."""
        import numpy as np  # here: the reader's process does without it

        names = view.names
        rows, nfam = len(names), len(self.series)
        blob = b""
        if names != self._names:
            blob = json.dumps(names, ensure_ascii=False).encode("utf-8", "surrogatepass")
        cols_off = HEADER
        names_off = _align(cols_off + nfam * rows * 8)
        names_len = len(blob) if blob else self._names_len
        self._reserve(names_off + names_len)
        mm = self._mm
        hdr = np.frombuffer(mm, np.uint64, 16)
        hdr[SEQ] += 1  # odd: readers wait
        try:
            cols = np.frombuffer(mm, np.float64, nfam * rows, cols_off).reshape(nfam, rows)
            kinds = bytearray(nfam)
            for k, one in enumerate(self.series):
                a = one.column(view)
                kinds[k] = FLOAT if a.dtype.kind == "f" else INT
                cols[k] = a
            del cols
            mm[KINDS_AT : KINDS_AT + nfam] = bytes(kinds)
            if blob:
                mm[names_off : names_off + names_len] = blob
                self._gen += 1
                self._names, self._names_len = list(names), names_len
            hdr[ROWS], hdr[NFAM], hdr[GEN] = rows, nfam, self._gen
            hdr[NAMES_OFF], hdr[NAMES_LEN], hdr[COLS_OFF] = names_off, names_len, cols_off
            np.frombuffer(mm, np.float64, 16)[PUBLISHED_AT] = time.time()
        finally:
            hdr[SEQ] += 1  # even: consistent
            del hdr

    @property
    def nbytes(self) -> int:
        """Size of the shared snapshot (pages are only resident once written)."""
        return self.size

    def _reserve(self, need: int) -> None:
        """Grow the file (never shrink: a reader may still map the old length)."""
        if need <= self.size:
            return
        size = _align(max(need, 2 * self.size))
        os.ftruncate(self.fd, size)
        self._mm.close()
        self._mm = mmap.mmap(self.fd, size)
        self.size = size

    def close(self) -> None:
        self._mm.close()
        os.close(self.fd)


class SnapshotReader:
    """Exposition side: :meth:`read` returns the latest consistent :class:`Snapshot` (None before one)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
        self._last: Snapshot | None = None
        self._gen = -1
        self._names: list[str] = []

    def read(self) -> Snapshot | None:
        """The newest snapshot; the previous one if the writer kept moving for ``READ_TRIES`` tries."""
        for _ in range(READ_TRIES):
            snap = self._try()
            if snap is not None:
                return snap
            time.sleep(0.0005)
        return self._last

    def _try(self) -> Snapshot | None:
        mm = self._mm
        seq = _word(mm, SEQ)
        if seq & 1:
            return None
        if seq == 0 or (self._last is not None and seq == self._last.seq):
            return self._last if seq else None
        rows, nfam, gen, names_off, names_len, cols_off = struct.unpack_from("=6Q", mm, ROWS * 8)
        if names_off + names_len > len(mm) or cols_off + nfam * rows * 8 > len(mm):
            self._remap()
            return None
        flat = memoryview(mm[cols_off : cols_off + nfam * rows * 8]).cast("d")  # a copy
        cols = [flat[k * rows : (k + 1) * rows] for k in range(nfam)]
        kinds = bytes(mm[KINDS_AT : KINDS_AT + nfam])
        (published_at,) = struct.unpack_from("=d", mm, PUBLISHED_AT * 8)
        blob = bytes(mm[names_off : names_off + names_len]) if gen != self._gen else b""
        if _word(mm, SEQ) != seq:
            return None  # the writer moved on meanwhile: copy again
        if gen != self._gen:
            self._names = json.loads(blob.decode("utf-8", "surrogatepass"))
            self._gen = gen
        self._last = Snapshot(seq, self._names, cols, kinds, published_at)
        return self._last

    def _remap(self) -> None:
        self._mm.close()
        self._mm = mmap.mmap(self.fd, os.fstat(self.fd).st_size, prot=mmap.PROT_READ)

    def close(self) -> None:
        self._mm.close()
