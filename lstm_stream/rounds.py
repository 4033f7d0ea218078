"""Rounds of a micro-batch: a stream with k samples in one batch is stepped in k rounds, and a bound on
the rounds after the first, so one long array cannot hold up the streams that share its batch.

The first round steps every stream present (one sample each) and always runs: it is what a batch of
live streams costs. Each later round steps only the streams with more samples, and costs about as much
as a round of one stream (most of a round is per-call overhead), so a stream's 1,000-sample array is
1,000 narrow rounds. :class:`RoundBudget` stops them after ``max_rounds`` rounds, or once they have
taken ``seconds`` or as long as the call took up to the end of the first round, whichever is longer; the
engine marks the rest ``deferred`` for the next batches. The second bound keeps a large carried-over
remainder (whose bookkeeping every call repeats) from being worked off a few samples per call.
"""

from __future__ import annotations

import time

import numpy as np


def occurrence_rank(slots: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same slot (0 for the first)."""
    if len(slots) < 2:
        return np.zeros(len(slots), dtype=np.int64)
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    pos = np.arange(len(slots))
    starts = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    if starts.all():
        return np.zeros(len(slots), dtype=np.int64)
    first = np.maximum.accumulate(np.where(starts, pos, 0))
    rank = np.empty_like(pos)
    rank[order] = pos - first
    return rank


def by_round(rank: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Positions ordered by round (in their order within one), and where each round starts in that
    order (one more entry: the end): round ``r`` is ``order[starts[r]:starts[r + 1]]``. One sort per
    batch instead of a comparison over the whole batch per round."""
    order = np.argsort(rank, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(rank)))).tolist()
    return order, starts


class RoundBudget:
    """Whether round ``r`` of a batch may run: at most ``max_rounds`` rounds, and later rounds only
    within ``seconds`` of wall time after the first ended, or as long as the call had taken by then if
    that is longer (None: no time bound). Made when the call starts."""

    __slots__ = ("_deadline", "_started", "max_rounds", "seconds")
    clock = staticmethod(time.perf_counter)  # (tests replace it)

    def __init__(self, max_rounds: int | None = None, seconds: float | None = None) -> None:
        self.max_rounds = max_rounds
        self.seconds = seconds
        self._started = self.clock()
        self._deadline = float("inf")

    def first_done(self) -> None:
        """The first round ended: the time bound starts now."""
        if self.seconds is not None:
            now = self.clock()
            self._deadline = now + max(self.seconds, now - self._started)

    def allows(self, r: int) -> bool:
        """Round ``r`` (0-based) may run; round 0 always may."""
        if r == 0:
            return True
        if self.max_rounds is not None and r >= self.max_rounds:
            return False
        return self.clock() < self._deadline
