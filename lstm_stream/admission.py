"""Admission of new streams: at most ``new_streams_per_s`` (a token bucket of ``new_streams_burst``), and
into a full table only by evicting a stream idle over ``evict_idle_s``, so a flood of new names cannot
churn the streams that are live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import EngineConfig
from .state import StreamTable


@dataclass
class TokenBucket:
    """New streams admissible now: refilled at ``rate`` per second of the callers' clock up to ``burst``."""

    tokens: float
    at: float | None = None  # when it was last refilled (the ``now`` base)

    def budget(self, t: float, rate: float | None, burst: int) -> int:
        """Streams that may be created at time ``t`` (refilled up to ``t``); any number without a rate."""
        if rate is None:
            return 1 << 62
        if self.at is None or t < self.at:  # first call, or the clock went back
            self.at = t if self.at is None else self.at
        else:
            self.tokens = min(float(burst), self.tokens + (t - self.at) * rate)
            self.at = t
        return max(0, int(self.tokens))


@dataclass
class Admitted:
    """Slots of a batch's samples (-1: not admitted) and what admission did to the table."""

    slots: np.ndarray
    evicted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    limited: set[str] = field(default_factory=set)  # refused by the rate (the rest: a full table)


def admit(
    table: StreamTable,
    streams: Sequence[str],
    valid: np.ndarray,
    ts: np.ndarray,
    now: float | None,
    bucket: TokenBucket | None,
    cfg: EngineConfig,
) -> Admitted:
    """Slots for ``streams``, creating the valid unknown ones the bucket allows (all without a bucket,
    spending none), each into a free slot or one idle since before ``t - evict_idle_s`` (``t``:
    ``now``, else the newest new sample's ``ts``)."""
    slots = table.lookup(streams)
    new = np.nonzero((slots < 0) & valid)[0]
    if not len(new):
        return Admitted(slots)
    names = list(dict.fromkeys(streams[i] for i in new.tolist()))
    t = float(now) if now is not None else float(np.max(ts[new]))
    budget = len(names) if bucket is None else bucket.budget(t, cfg.new_streams_per_s, cfg.new_streams_burst)
    chosen = names[: min(budget, len(names))]
    idle_s = cfg.evict_idle_s
    added, evicted = table.add(
        chosen, protect=np.unique(slots[slots >= 0]), idle_before=None if idle_s is None else t - idle_s
    )
    created = [n for n, slot in zip(chosen, added, strict=True) if slot >= 0]
    if bucket is not None:
        bucket.tokens -= len(created)
    return Admitted(table.lookup(streams), evicted, created, set(names[len(chosen) :]))
