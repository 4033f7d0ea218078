"""Rounds of a micro-batch: a stream with k samples in one batch is stepped in k rounds, and a bound on
the rounds after the first, so one long array cannot hold up the streams that share its batch.

The first round steps every stream present (one sample each) and always runs: it is what a batch of
live streams costs. Each later round steps only the streams with more samples, and costs about as much
as a round of one stream (most of a round is per-call overhead), so a stream's 1,000-sample array is
1,000 narrow rounds. :class:`RoundBudget` stops them after ``max_rounds`` rounds, or once they have
taken ``seconds`` more than their samples earn at the first round's cost per sample; the engine marks
the rest ``deferred`` for the next batches. Wide later rounds (every stream sent 20 samples at once)
earn their own time and run; narrow ones (one stream's long array) get ``seconds`` a call.
"""

from __future__ import annotations

import time

import numpy as np

EARN = 2.0  # a later round may cost this many times the first round's cost per sample, sample for sample


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
    """Whether round ``r`` of a batch may run: at most ``max_rounds`` rounds, and later rounds only while
    their time since the first ended stays within ``seconds`` plus what their samples earn: ``EARN``
    times the call's cost per sample up to then (None: no time bound). Made when the call starts; told each round's width
    (:meth:`ran`). Earning keeps batched payloads (wide later rounds, as cheap per sample as the first)
    at full speed, while a narrow round, which costs a first round's fixed overhead for one sample,
    earns almost nothing: a long array gets ``seconds`` a call, however slow the first round was."""

    __slots__ = ("_earned", "_first_end", "_per_sample", "_started", "max_rounds", "seconds")
    clock = staticmethod(time.perf_counter)  # (tests replace it)

    def __init__(self, max_rounds: int | None = None, seconds: float | None = None) -> None:
        self.max_rounds = max_rounds
        self.seconds = seconds
        self._started = self.clock()
        self._first_end = float("inf")
        self._per_sample = 0.0
        self._earned = 0.0

    def ran(self, r: int, width: int) -> None:
        """Round ``r`` of ``width`` samples ended: the first sets the cost per sample, later ones earn it."""
        if self.seconds is None:
            return
        if r == 0:
            self._first_end = self.clock()
            self._per_sample = (self._first_end - self._started) / max(width, 1)
        else:
            self._earned += EARN * width * self._per_sample

    def allows(self, r: int) -> bool:
        """Round ``r`` (0-based) may run; round 0 always may."""
        if r == 0:
            return True
        if self.max_rounds is not None and r >= self.max_rounds:
            return False
        if self.seconds is None:
            return True
        return self.clock() - self._first_end < self.seconds + self._earned
