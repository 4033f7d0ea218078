"""The stream table: one slot per stream in preallocated arrays that grow by doubling.

Every per-stream quantity (LSTM state, windows, scaler and scoring statistics, ...) is a column in a
:class:`SlotArrays`; a stream's name maps to its slot. New streams take a free slot (amortised O(1));
``max_streams`` is enforced by evicting the least recently seen streams (only those idle long enough,
when the caller gives a bound, so live streams are never pushed out); idle streams expire.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from . import libc


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system. After a growth the old arrays (each under
    glibc's 32 MB mmap threshold, so on the heap) stay resident as free heap otherwise: 16 MB of
    the engine's steady RSS at 10k streams (262.6 vs 246.8 MB, default engine, batches of 4096)."""
    trim = libc.function("malloc_trim")
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class Column:
    """Declaration of one per-slot array: its trailing shape, dtype and initial value. Scalar
    columns of one dtype may share a ``block``: one (columns, slots) array whose rows they are, so
    a round gathers and scatters them together (``Columns.blocks``) and computes on them as one."""

    shape: tuple[int, ...]
    dtype: type | np.dtype
    fill: float = 0.0
    is_history: bool = False
    block: str | None = None


class Columns(dict):
    """The per-slot arrays by column name; ``blocks`` holds the shared arrays of block columns,
    whose named arrays are views of their rows."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: dict[str, np.ndarray] = {}


def block_rows(columns: dict[str, Column], block: str) -> list[str]:
    """Names of the columns of ``block``, in row order."""
    return [name for name, col in columns.items() if col.block == block]


class SlotArrays:
    """Named per-slot arrays sharing one capacity; row ``i`` of every array belongs to slot ``i``
    (a block column's array is row ``j`` of its block: the block's column ``i`` belongs to slot ``i``)."""

    def __init__(self, columns: dict[str, Column], capacity: int = 64) -> None:
        self.columns = columns
        self.capacity = max(1, capacity)
        self.data = Columns()
        self._allocate(self.capacity, None)

    def _allocate(self, rows: int, old: Columns | None) -> None:
        """Arrays of ``rows`` slots (initial values), or, growing, the first slots copied from ``old``
        and the rest zero: untouched zero pages are not resident, so memory follows the streams
        held rather than the doubled capacity (``StreamTable.add`` gives each new slot its initial
        values, as it does a freed one). ``old`` is updated in place one array at a time (the peak
        is one array more, not twice the state)."""
        data, done = (Columns() if old is None else old), set()
        for name, col in self.columns.items():
            if col.block is None:
                if old is None:
                    arr = np.full((rows, *col.shape), col.fill, dtype=col.dtype)
                else:
                    arr = np.zeros((rows, *col.shape), dtype=col.dtype)
                    arr[: self.capacity] = old[name]
                data[name] = arr
            elif col.block not in done:
                done.add(col.block)
                names = block_rows(self.columns, col.block)
                if any(self.columns[n].shape or self.columns[n].dtype != col.dtype for n in names):
                    raise ValueError(f"block {col.block!r}: columns of one dtype and no trailing shape")
                if old is None:
                    fills = np.array([self.columns[n].fill for n in names], dtype=col.dtype)
                    block = np.repeat(fills[:, None], rows, axis=1)
                else:
                    block = np.zeros((len(names), rows), dtype=col.dtype)
                    block[:, : self.capacity] = old.blocks[col.block]
                data.blocks[col.block] = block
                data.update(zip(names, block, strict=True))
        self.data = data

    def block(self, name: str) -> np.ndarray:
        """The (columns, slots) array of block ``name``."""
        return self.data.blocks[name]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def grow(self, needed: int, limit: int | None = None) -> None:
        """Ensure room for ``needed`` slots, doubling (amortised O(1)) but never past ``limit``; the
        slots added are zero until :meth:`reset` gives them their initial values."""
        if needed <= self.capacity:
            return
        cap = self.capacity
        while cap < needed:
            cap *= 2
        if limit is not None:
            cap = max(needed, min(cap, limit))
        self._allocate(cap, self.data)
        self.capacity = cap
        release_freed_memory()  # a handful of times in a table's life (doubling)

    def reset(self, slots: np.ndarray) -> None:
        """Return ``slots`` to their initial values (a new stream starts from nothing)."""
        for name, col in self.columns.items():
            self.data[name][slots] = col.fill

    def nbytes(self, history: bool | None = None, rows: int | None = None) -> int:
        """Bytes of the first ``rows`` slots (default: the whole capacity); ``history`` selects
        history or state columns."""
        return sum(
            a[:rows].nbytes
            for n, a in self.data.items()
            if history is None or self.columns[n].is_history == history
        )


class StreamTable:
    """Maps stream names to slots; allocates, evicts (least recently seen) and expires them."""

    def __init__(self, columns: dict[str, Column], max_streams: int, capacity: int = 64) -> None:
        self.max_streams = max_streams
        self.arrays = SlotArrays(
            {
                **columns,
                "seen_seq": Column((), np.int64, -1),
                "last_seen": Column((), np.float64, -np.inf),
            },
            min(capacity, max_streams),
        )
        self.ids: dict[str, int] = {}
        self.names: list[str | None] = []
        self.free: list[int] = []
        self.seq = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, name: str) -> bool:
        return name in self.ids

    def lookup(self, names: Sequence[str]) -> np.ndarray:
        """Slots of ``names`` (-1 where unknown)."""
        return np.fromiter(map(self.ids.get, names, repeat(-1)), dtype=np.int64, count=len(names))

    def touch(self, slots: np.ndarray, now: np.ndarray | float) -> None:
        """Mark slots as seen now (LRU order and idle expiry)."""
        a = self.arrays
        a["seen_seq"][slots] = self.seq + np.arange(len(slots))
        self.seq += len(slots)
        a["last_seen"][slots] = now

    def add(
        self, names: Iterable[str], protect: np.ndarray, idle_before: float | None = None
    ) -> tuple[list[int], list[str]]:
        """Create slots for new ``names``; evict the least recently seen streams not in ``protect``
        (and, with ``idle_before``, only those last seen before it: a live stream is never evicted).

        Returns the new slots (-1 for a name that found no room) and the evicted names.
        """
        names = list(names)
        room = self.max_streams - len(self.ids)
        evicted: list[str] = []
        if len(names) > room:
            evicted = self._evict_lru(len(names) - room, protect, idle_before)
        slots: list[int] = []
        for name in names:
            if len(self.ids) >= self.max_streams:
                slots.append(-1)
                continue
            slot = self.free.pop() if self.free else self._append_slot()
            self.ids[name] = slot
            self.names[slot] = name
            slots.append(slot)
        new = np.array([s for s in slots if s >= 0], dtype=np.int64)
        self.arrays.reset(new)
        return slots, evicted

    def _append_slot(self) -> int:
        slot = len(self.names)
        self.arrays.grow(slot + 1, self.max_streams)
        self.names.append(None)
        return slot

    def _evict_lru(self, count: int, protect: np.ndarray, idle_before: float | None = None) -> list[str]:
        active = self.active_slots()
        if len(protect):
            active = active[~np.isin(active, protect)]
        if idle_before is not None:
            active = active[self.arrays["last_seen"][active] < idle_before]
        count = min(count, len(active))
        if count <= 0:
            return []
        seq = self.arrays["seen_seq"][active]
        victims = active[np.argpartition(seq, count - 1)[:count]] if count < len(active) else active
        return self.remove(victims)

    def expire(self, now: float, idle_s: float) -> list[str]:
        """Drop streams not seen for ``idle_s`` (time base of ``touch``); returns their names."""
        active = self.active_slots()
        idle = active[self.arrays["last_seen"][active] < now - idle_s]
        return self.remove(idle)

    def remove(self, slots: np.ndarray) -> list[str]:
        """Free ``slots``; returns the names they held."""
        out = []
        for slot in np.asarray(slots, dtype=np.int64).tolist():
            name = self.names[slot]
            if name is None:
                continue
            del self.ids[name]
            self.names[slot] = None
            self.free.append(slot)
            out.append(name)
        return out

    def active_slots(self) -> np.ndarray:
        """Slots currently holding a stream, in ascending order."""
        return np.array(sorted(self.ids.values()), dtype=np.int64)
