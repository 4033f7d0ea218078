"""The scoring stage's rules on hand-made series, without a model (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_stream import scoring
from lstm_stream.config import ScoringConfig
from lstm_stream.state import SlotArrays


def _flags(
    values: np.ndarray,
    cfg: ScoringConfig,
    residuals: np.ndarray | None = None,
    spreads: np.ndarray | None = None,
) -> list[tuple[int, str]]:
    """Feed ``values`` to the scorer as one stream (by default a perfect forecast of spread 1);
    (row, reason) per flag."""
    cols = SlotArrays(scoring.COLUMNS, 1).data
    slot = np.array([0])
    residuals = np.zeros(len(values)) if residuals is None else residuals
    spreads = np.ones(len(values)) if spreads is None else spreads
    out = []
    for t, v in enumerate(values):
        r = scoring.score(
            cols, slot, np.array([v]), residuals[t : t + 1], spreads[t : t + 1], np.array([t]), cfg
        )
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


def _return_score(period: int, seed: int, cfg: ScoringConfig) -> float:
    """Errors ten times their usual size for 1,500 samples, usual for 1,000 (a quiet weekend), then large
    again; the stream's period is ``period`` (0: none). The highest score when the large errors return."""
    rng = np.random.default_rng(seed)
    scale = np.r_[np.full(1500, 10.0), np.full(1000, 1.0), np.full(600, 10.0)]
    residual = rng.standard_normal(len(scale)) * scale
    x = 100 + 0.01 * rng.standard_normal(len(scale))
    cols = SlotArrays(scoring.COLUMNS, 1).data
    cols["se_period"] = np.array([period])
    slot = np.array([0])
    scores = []
    for t in range(len(scale)):
        r = scoring.score(cols, slot, x[t : t + 1], residual[t : t + 1], np.ones(1), np.array([t]), cfg)
        scores.append(r.score[0])
    return float(np.max(scores[2500:2700]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_long_run_fit_of_a_periodic_stream_spans_long_periods_of_it(seed: int) -> None:
    """With a period of 300, ``long_periods`` 7 makes the long-run fit remember 2,100 samples: the busy
    days before a quiet stretch of 1,000 samples are still in it when they return (a lower score);
    without a period, or with the option off, the 1,000-sample memory has mostly forgotten them."""
    cfg = ScoringConfig()
    assert cfg.long_periods == 7
    plain = _return_score(0, seed, cfg)
    assert _return_score(300, seed, cfg.model_copy(update={"long_periods": None})) == plain
    assert _return_score(300, seed, cfg) < 0.85 * plain
    assert _return_score(100, seed, cfg) == plain  # 7 periods of 100 are less than long_memory


def _sparse_bursts(seed: int) -> np.ndarray:
    """A disk-write-like metric: 0 but for an ordinary burst (5-10) every 20-60 samples, then 400
    samples of silence and one more ordinary burst."""
    rng = np.random.default_rng(seed)
    x = np.zeros(2000)
    t = 0
    while t < 1500:
        t += int(rng.integers(20, 60))
        x[t] = rng.uniform(5.0, 10.0)
    x[1900] = 7.0
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_spread_that_shrank_between_bursts_does_not_make_the_next_one_a_surprise(seed: int) -> None:
    """Served persistence, whose spread (a running error) shrinks towards 0 between bursts: judged by
    it alone, ordinary bursts after a longer gap read as thousands of spreads (likelihood flags);
    with ``spread_floor`` the spread is at least a tenth of the stream's typical step and only the
    silence longer than any before is flagged (flat line)."""
    x = _sparse_bursts(seed)
    residuals = x - np.concatenate([[0.0], x[:-1]])
    spreads = np.empty(len(x))  # the running error before each sample, from 1
    spreads[0] = 1.0
    for t in range(1, len(x)):
        spreads[t] = spreads[t - 1] + 0.05 * (abs(residuals[t - 1]) - spreads[t - 1])

    cfg = ScoringConfig()
    assert cfg.spread_floor == 0.1
    off = cfg.model_copy(update={"spread_floor": None})
    with_floor, without = _flags(x, cfg, residuals, spreads), _flags(x, off, residuals, spreads)
    assert [why for _, why in with_floor] == ["flatline"], with_floor
    assert [f for f in without if f[1] == "likelihood"], without
