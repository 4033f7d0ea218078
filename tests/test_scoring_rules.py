"""The scoring stage's rules on hand-made series, without a model (fast)."""

from __future__ import annotations

import numpy as np

from lstm_stream import scoring
from lstm_stream.config import ScoringConfig
from lstm_stream.state import SlotArrays


def _flags(values: np.ndarray, cfg: ScoringConfig) -> list[tuple[int, str]]:
    """Feed ``values`` to the scorer as one stream with a perfect forecast; (row, reason) per flag."""
    cols = SlotArrays(scoring.COLUMNS, 1).data
    slot = np.array([0])
    out = []
    for t, v in enumerate(values):
        r = scoring.score(cols, slot, np.array([v]), np.zeros(1), np.ones(1), np.array([t]), cfg)
        if r.flag[0]:
            out.append((t, scoring.REASONS[r.reason[0]]))
    return out


def test_a_chance_record_smaller_than_half_a_step_is_not_a_range_anomaly() -> None:
    rng = np.random.default_rng(1)
    y = rng.uniform(0.0, 1.0, 1200)  # typical step |dy| ~ 1/3
    y[800] = y[:800].max() + 0.05  # a new record by 5 % of the range: a chance record of noise
    y[1000] = y[:1000].max() + 0.5  # by half the range: a break
    with_floor = _flags(y, ScoringConfig())
    without = _flags(y, ScoringConfig(range_steps=0))
    assert (800, "range") in without and (1000, "range") in without
    assert (800, "range") not in with_floor and (1000, "range") in with_floor
