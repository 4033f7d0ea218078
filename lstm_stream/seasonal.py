"""Seasonal blend: where a stream shows a clear period, its forecast leans on the values of past periods.

The LSTM sees a short window and a carried state; a daily pattern of 288 five-minute samples is past
what it learns online. So each stream keeps a ring of its recent raw values; once it has ``learn``
samples, its dominant period is guessed from the autocorrelation (or a multiple of it that repeats
better: a week of days), and detected again at each doubling while the ring fills, once it is full,
and then every ``redetect`` samples. Where there is one, the seasonal-naive value ``n[t+1]`` is the
median of ``x[t+1-kP]`` for k = 1..``periods`` (those the ring holds), and the published forecast is
``(1 - w) * lstm + w * n[t+1]``, with ``w`` from the running errors
of both forecasts (inverse-variance, capped at ``blend``); its spread is the stream's own running
absolute error of the blended forecast (the network's spread only knows the LSTM part). On the NAB
development subset this took the standard score from 55.3 to 57.5 (docs/tuning.md); streams without
a period are untouched. ``expected`` hands the scorer the seasonal-naive forecast itself, so a
period that breaks is seen even where each step of it is easy to forecast, with a robust running error
as its spread (an anomaly's own errors widen it only slowly).
"""

from __future__ import annotations

import math

import numpy as np

from . import fastnp
from .config import SeasonalConfig
from .evaluation import detect_period
from .state import Column

MAD_TO_SIGMA = 1.2533
ERRORS, FORECASTS = "se_errors", "se_forecasts"  # blocks of columns (state.Column)
MAD_ALPHA = 0.01
ROBUST_K = 3.0  # the scorer's seasonal spread takes an error at most this many times its level
REPEAT_MARGIN = 0.2  # a multiple of the period must forecast this much better to replace it
F32_MAX = float(np.finfo(np.float32).max)  # memory of the blended forecast's error: about 100 samples


def columns(cfg: SeasonalConfig) -> dict[str, Column]:
    """Per-stream arrays: the raw-value ring (a history buffer), the period and the error MAD."""
    if not cfg.blend:
        return {}
    return {
        "se_ring": Column((cfg.window,), np.float32, np.nan, True),
        "se_period": Column((), np.int64, 0),
        # the running absolute errors of the blended forecast and of the two it blends (one block: a
        # round updates them as one), and those two forecasts made for the next value
        "se_mad": Column((), np.float64, np.nan, block=ERRORS),
        "se_mae_lstm": Column((), np.float64, np.nan, block=ERRORS),
        "se_mae_naive": Column((), np.float64, np.nan, block=ERRORS),
        # the same error level, robust (ROBUST_K): the spread the scorer judges the seasonal error by
        "se_scale_naive": Column((), np.float64, np.nan, block=ERRORS),
        "se_fc_lstm": Column((), np.float64, np.nan, block=FORECASTS),
        "se_fc_naive": Column((), np.float64, np.nan, block=FORECASTS),
    }


def observe(
    cols: dict, slots: np.ndarray, x: np.ndarray, residual: np.ndarray, count: np.ndarray, cfg: SeasonalConfig
) -> bool:
    """Record this sample (``count`` samples came before it); learn the period when it is due.
    Returns whether a stream's period changed (its ``expected`` value is then one of the old period)."""
    if not cfg.blend:
        return False
    seasonal = cols["se_period"][slots] > 1
    if fastnp.any_true(seasonal):
        s = slots[seasonal]
        err = np.empty((4, len(s)))  # vs the blended, the LSTM's and the seasonal-naive forecast (twice)
        err[0] = residual[seasonal]
        np.subtract(x[seasonal], cols.blocks[FORECASTS].take(s, axis=1), out=err[1:3])
        err[3] = err[2]
        _ew_abs(cols.blocks[ERRORS], s, err)
    cols["se_ring"][slots, count % cfg.window] = fastnp.clip(x, -F32_MAX, F32_MAX)  # 1e300 stays finite
    seen = count + 1
    if not fastnp.any_true(seen % _every(cfg) == 0):  # a multiple of this is due first
        return False
    due = detection_due(seen, cfg)
    changed = False
    for i in np.nonzero(due)[0].tolist():
        changed |= _detect(cols, int(slots[i]), int(seen[i]), cfg)
    return changed


def _every(cfg: SeasonalConfig) -> int:
    """A step every sample count at which a detection is due is a multiple of."""
    return math.gcd(cfg.learn, cfg.redetect, cfg.window)


def detection_due(seen: np.ndarray, cfg: SeasonalConfig) -> np.ndarray:
    """True where a stream with ``seen`` samples (re-)detects its period: a first guess at ``learn``
    samples, again at each doubling of that while the ring fills and once it is full (longer
    periods become visible), then every ``redetect`` samples."""
    ratio = seen // cfg.learn
    doubling = (seen < cfg.window) & (seen % cfg.learn == 0) & (ratio > 0) & ((ratio & (ratio - 1)) == 0)
    return doubling | (seen == cfg.window) | ((seen > cfg.window) & (seen % cfg.redetect == 0))


def _ew_abs(block: np.ndarray, s: np.ndarray, err: np.ndarray) -> None:
    """Fold |err| (one row per row of ``block``) into the running mean absolute errors of ``s``
    (NaN errors are skipped). The last row is robust: an error counts at most ``ROBUST_K`` times the
    level it joins (all of it while the level is 0), so an anomaly's own errors do not widen the
    spread that judges them: a day that departs from the pattern little by little (a holiday) stays
    a departure instead of becoming the new spread."""
    r = np.abs(err)
    cur = block.take(s, axis=1)
    with fastnp.errstate(invalid="ignore"):  # a NaN level (no error yet) takes the error whole
        r[-1] = np.where(cur[-1] > 0, np.minimum(r[-1], ROBUST_K * cur[-1]), r[-1])
    block[:, s] = np.where(np.isfinite(r), np.where(np.isnan(cur), r, cur + MAD_ALPHA * (r - cur)), cur)


def _detect(cols: dict, slot: int, seen: int, cfg: SeasonalConfig) -> bool:
    """Detect the period of ``slot`` from its ring; returns whether it changed."""
    n = min(seen, cfg.window)
    values = cols["se_ring"][slot, (seen - n + np.arange(n)) % cfg.window].astype(np.float64)
    period = _repeat(values, max(1, detect_period(values, max_period=min(n // 3, cfg.window))), n // 3)
    if period > 1 and period != cols["se_period"][slot]:
        # start the error level from how far the seasonal-naive value was off over the ring:
        # a cautious (wide) spread while the blended forecast's own error is being learnt
        naive = _reference_mae(values, period, cfg.periods)
        cols["se_mad"][slot] = cols["se_mae_naive"][slot] = cols["se_scale_naive"][slot] = naive
        cols["se_mae_lstm"][slot] = np.nan
    changed = period != cols["se_period"][slot]
    cols["se_period"][slot] = period
    return bool(changed)


def _repeat(values: np.ndarray, period: int, longest: int) -> int:
    """The shortest multiple of ``period`` (up to ``longest``) whose value one multiple ago predicts the
    ring ``REPEAT_MARGIN`` better than the value one period ago, else ``period``: a daily stream whose
    weekdays and weekends differ repeats by the week. The autocorrelation names the first strong
    repeat, not the one that forecasts best."""
    if period <= 1:
        return period

    bar = (1.0 - REPEAT_MARGIN) * _mean_abs(values[period:] - values[:-period])
    for lag in range(2 * period, longest + 1, period):
        if _mean_abs(values[lag:] - values[:-lag]) < bar:  # NaN (no finite error) never passes
            return lag
    return period


def _reference(
    ring: np.ndarray, slots: np.ndarray, seen: np.ndarray, period: np.ndarray, k: int
) -> np.ndarray:
    """The seasonal-naive value of each slot's next sample: the median of the values 1..``k`` periods
    before it that the ring holds (NaN where none; ``period`` 0: no period, the result is unused).
    A median of three past days is not moved by one odd day among them, which a single lag echoes."""
    window = ring.shape[1]
    if k <= 1:
        return ring[slots, (seen - period) % window].astype(np.float64)
    lags = period * np.arange(1, k + 1)[:, None]  # (k, n)
    flat = ring.reshape(-1)  # one flat gather: cheaper than a 2-D one
    vals = flat[slots * window + (seen - lags) % window].astype(np.float64)
    vals[(lags > window) | (lags > seen)] = np.nan
    return _median(vals)


def _reference_mae(values: np.ndarray, period: int, k: int) -> float:
    """Mean absolute error over ``values`` of the seasonal-naive value as ``_reference`` gives it once
    the ring holds all the periods it can (from ``kk`` periods in: the error level it will settle at)."""
    n = len(values)
    kk = max(1, min(k, (n - 1) // period))
    start = kk * period
    past = np.stack([values[start - j * period : n - j * period] for j in range(1, kk + 1)])
    return _mean_abs(values[start:] - _median(past))


def _mean_abs(err: np.ndarray) -> float:
    """Mean absolute value of the finite entries of ``err`` (NaN where there are none)."""
    err = np.abs(err[np.isfinite(err)])
    return float(err.mean()) if err.size else math.nan


def _median(vals: np.ndarray) -> np.ndarray:
    """Median over axis 0 of the finite values of each column (NaN where none); may overwrite ``vals``."""
    if vals.shape[0] == 3:  # the default: a closed form where all three are known, a sort elsewhere
        a, b, c = vals
        med = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
        gaps = np.isnan(med)  # NaN propagates: a value missing (or the ring not yet that long)
        if fastnp.any_true(gaps):
            med[gaps] = _sorted_median(vals[:, gaps])
        return med
    return _sorted_median(vals)


def _sorted_median(vals: np.ndarray) -> np.ndarray:
    """Median over axis 0 of the finite values of each column (NaN where none); overwrites ``vals``."""
    vals.sort(axis=0)  # NaN last
    m = np.isfinite(vals).sum(axis=0)
    cols = np.arange(vals.shape[1])
    lo, hi = vals[np.maximum(m - 1, 0) // 2, cols], vals[m // 2 - (m == 0), cols]
    return np.where(m > 0, 0.5 * (lo + hi), np.nan)


def expected(cols: dict, slots: np.ndarray, cfg: SeasonalConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Seasonal-naive forecast of each slot's current sample (the median of its values 1..``periods``
    periods ago; NaN where the stream has no period) and that forecast's spread; None when the blend
    is off. The spread is the robust error level (``_ew_abs``)."""
    if not cfg.blend:
        return None
    return cols["se_fc_naive"][slots], MAD_TO_SIGMA * cols["se_scale_naive"][slots]


def blend(
    cols: dict, slots: np.ndarray, seen: np.ndarray, mean: np.ndarray, spread: np.ndarray, cfg: SeasonalConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the next-value forecast (raw units) of seasonal streams; ``seen`` counts this sample."""
    if not cfg.blend:
        return mean, spread
    period = cols["se_period"][slots]
    use = (period > 1) & (seen >= period)
    if not fastnp.any_true(use):
        cols["se_fc_lstm"][slots] = cols["se_fc_naive"][slots] = np.nan
        return mean, spread
    past = np.full(len(slots), np.nan)
    past[use] = _reference(cols["se_ring"], slots[use], seen[use], period[use], cfg.periods)
    use &= np.isfinite(past)
    cols["se_fc_lstm"][slots] = np.where(use, mean, np.nan)
    cols["se_fc_naive"][slots] = np.where(use, past, np.nan)
    errors = cols.blocks[ERRORS].take(slots, axis=1)  # (4, n): blended, LSTM, seasonal-naive, robust
    w = np.where(use, weight(errors[1:3], cfg.blend), 0.0)
    mad = errors[0]
    mean = np.where(use, (1.0 - w) * mean + w * past, mean)
    spread = np.where(use & np.isfinite(mad) & (mad > 0), MAD_TO_SIGMA * mad, spread)
    return mean, spread


def weight(maes: np.ndarray, cap: float) -> np.ndarray:
    """Weight of the seasonal-naive value: inverse-variance weighting of the two forecasts by their
    running errors ``maes`` (2, n: the LSTM's, the seasonal-naive's), capped at ``cap`` (0 until both
    errors are known). A stream whose day repeats exactly leans on it; one where last period's value
    is a poor guess (weekly patterns, drift) keeps the LSTM."""
    with fastnp.errstate(invalid="ignore", divide="ignore"):
        squares = maes**2
        w = squares[0] / (squares[0] + squares[1])
    return fastnp.clip(np.where(np.isnan(w), 0.0, w), 0.0, cap)  # as nan_to_num: +-inf clip to cap / 0
