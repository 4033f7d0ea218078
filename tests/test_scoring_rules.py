"""The scoring stage's rules on hand-made series, without a model (fast)."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_tail_score_equals_scipys_log_ndtr() -> None:
    """``tail_score`` (``math.erfc``, no scipy in the daemon) gives scipy's ``log_ndtr`` scores to the
    last bit or two, across the whole range, with the same NaN and infinities."""
    log_ndtr = pytest.importorskip("scipy.special").log_ndtr
    rng = np.random.default_rng(7)
    z = np.concatenate(
        [rng.standard_normal(20_000) * 4, np.linspace(-60, 60, 24_001), [np.inf, -np.inf, np.nan, 0.0]]
    )
    want = np.clip(-log_ndtr(-z) / scoring.LOG_1E10, 0.0, 1.0)
    got = scoring.tail_score(z)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert scoring.tail_score(z[:44_000].reshape(4, -1)).shape == (4, 11_000)
