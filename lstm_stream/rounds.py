"""Rounds of a micro-batch: a stream with k samples in one batch is stepped in k rounds, and a bound on
the rounds after the first, so one long array cannot hold up the streams that share its batch.

The first round steps every stream present (one sample each) and always runs: it is what a batch of
live streams costs. Each later round steps only the streams with more samples. A round costs a fixed
overhead (about 0.9 ms of CPU here) plus a few microseconds a sample, so a wide later round (every
stream sent 20 samples at once) is as cheap per sample as the first, while a narrow one is nearly all
overhead: a stream's 1,000-sample array is 1,000 narrow rounds. :class:`RoundBudget` stops later
rounds after ``max_rounds``, and narrow ones (fewer than ``WIDE`` streams) once they have taken
``seconds`` in the call; the engine marks the rest ``deferred`` for the next batches.
"""

from __future__ import annotations

import time

import numpy as np

# a round at least this wide costs at most about twice the marginal cost per sample (its fixed overhead
# is about as much as this many samples: ~0.9 ms against ~7 us, scripts/bench_round.py)
WIDE = 128


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
    """Whether round ``r`` of a batch may run: at most ``max_rounds`` rounds; a later round narrower than
    ``WIDE`` only while the narrow rounds of the call have taken less than ``seconds`` (None: no time
    bound). Batched payloads (wide later rounds) run at full speed; one stream's long array gets
    ``seconds`` a call. Rounds only narrow as ``r`` grows (round ``r`` holds the streams with more than
    ``r`` samples), so the first refused round ends the call's rounds. Told each round's end (:meth:`ran`)."""

    __slots__ = ("_narrow_s", "_since", "max_rounds", "seconds")
    clock = staticmethod(time.perf_counter)  # (tests replace it)

    def __init__(self, max_rounds: int | None = None, seconds: float | None = None) -> None:
        self.max_rounds = max_rounds
        self.seconds = seconds
        self._narrow_s = 0.0  # time the call's narrow later rounds took
        self._since = self.clock()  # end of the last round (or the call's start)

    def allows(self, r: int, width: int) -> bool:
        """Round ``r`` (0-based) of ``width`` streams may run; round 0 always may."""
        if r == 0:
            return True
        if self.max_rounds is not None and r >= self.max_rounds:
            return False
        return width >= WIDE or self.seconds is None or self._narrow_s < self.seconds

    def ran(self, r: int, width: int) -> None:
        """Round ``r`` of ``width`` streams ended."""
        now = self.clock()
        if r and width < WIDE:
            self._narrow_s += now - self._since
        self._since = now
