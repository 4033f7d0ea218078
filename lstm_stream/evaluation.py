"""Offline evaluation: forecast metrics, causal baseline forecasters and anomaly-flag scores.

Pure numpy, so it runs anywhere the daemon's logs can be loaded. A forecast array ``yhat`` is
aligned with the truth ``y``: ``yhat[t]`` is the forecast of ``y[t]`` made from ``y[:t]``.
Positions where either is NaN (no forecast yet, missing sample) are ignored by every metric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

# --- forecast metrics -------------------------------------------------------------------------


def _pair(y: ArrayLike, yhat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Float copies of ``y`` and ``yhat`` restricted to positions where both are finite."""
    y, yhat = np.asarray(y, dtype=float), np.asarray(yhat, dtype=float)
    if y.shape != yhat.shape:
        raise ValueError(f"y and yhat differ in shape: {y.shape} vs {yhat.shape}")
    ok = np.isfinite(y) & np.isfinite(yhat)
    return y[ok], yhat[ok]


def mae(y: ArrayLike, yhat: ArrayLike) -> float:
    """Mean absolute error over the positions where both arrays are finite (nan if none)."""
    y, yhat = _pair(y, yhat)
    return float(np.mean(np.abs(y - yhat))) if y.size else float("nan")


def rmse(y: ArrayLike, yhat: ArrayLike) -> float:
    """Root mean squared error over the finite positions; penalises large misses more than MAE."""
    y, yhat = _pair(y, yhat)
    return float(np.sqrt(np.mean((y - yhat) ** 2))) if y.size else float("nan")


def r2(y: ArrayLike, yhat: ArrayLike) -> float:
    """1 - SSres/SStot over the finite positions. Constant truth (SStot == 0): 1.0 if the forecast
    is exact, else nan (undefined ratio; nan stays out of averages rather than faking 0 or -inf)."""
    y, yhat = _pair(y, yhat)
    if not y.size:
        return float("nan")
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else float("nan")
    return 1.0 - ss_res / ss_tot


def mase(y: ArrayLike, yhat: ArrayLike, y_train: ArrayLike | None = None, period: int = 1) -> float:
    """MAE over the in-sample MAE of the naive forecast y[t-period] on ``y_train`` (default ``y``).
    Below 1 beats (seasonal) persistence; nan when that naive MAE is 0 or undefined."""
    ref = np.asarray(y if y_train is None else y_train, dtype=float)
    scale = mae(ref[period:], ref[:-period]) if 1 <= period < ref.size else float("nan")
    return mae(y, yhat) / scale if scale > 0.0 else float("nan")  # nan > 0 is False


def direction_accuracy(y: ArrayLike, yhat: ArrayLike) -> float:
    """DA: share of steps t >= 1 (y[t-1:t+1], yhat[t-1:t+1] finite) where the forecast path's own
    move sign(yhat[t] - yhat[t-1]) equals sign(y[t] - y[t-1]); flat matches only flat."""
    y, yhat = np.asarray(y, dtype=float), np.asarray(yhat, dtype=float)
    dy, dyhat = np.diff(y), np.diff(yhat)
    ok = np.isfinite(dy) & np.isfinite(dyhat)
    return float(np.mean(np.sign(dy[ok]) == np.sign(dyhat[ok]))) if ok.any() else float("nan")


def mean_directional_accuracy(y: ArrayLike, yhat: ArrayLike) -> float:
    """MDA (usual definition): share of t >= 1 (y[t-1], y[t], yhat[t] finite) where the forecast
    made at t-1 calls the next move: sign(yhat[t] - y[t-1]) == sign(y[t] - y[t-1])."""
    y, yhat = np.asarray(y, dtype=float), np.asarray(yhat, dtype=float)
    move, called = y[1:] - y[:-1], yhat[1:] - y[:-1]
    ok = np.isfinite(move) & np.isfinite(called)
    return float(np.mean(np.sign(move[ok]) == np.sign(called[ok]))) if ok.any() else float("nan")


def forecast_metrics(
    y: ArrayLike, yhat: ArrayLike, y_train: ArrayLike | None = None, period: int = 1
) -> dict[str, float]:
    """All forecast metrics in one dict (keys mae, rmse, r2, mase, da, mda) for report tables."""
    return {
        "mae": mae(y, yhat),
        "rmse": rmse(y, yhat),
        "r2": r2(y, yhat),
        "mase": mase(y, yhat, y_train, period),
        "da": direction_accuracy(y, yhat),
        "mda": mean_directional_accuracy(y, yhat),
    }


# --- causal baselines: yhat[t] uses y[:t] only; nan where the history is too short ------------


def seasonal_naive(y: ArrayLike, period: int) -> np.ndarray:
    """Forecast y[t] by y[t-period], the standard bar for seasonal data (nan for t < period)."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    y = np.asarray(y, dtype=float)
    yhat = np.full(y.shape, np.nan)
    yhat[period:] = y[:-period]
    return yhat


def persistence(y: ArrayLike) -> np.ndarray:
    """Forecast y[t] by y[t-1] (random-walk forecast): the bar any forecaster must beat."""
    return seasonal_naive(y, 1)


def holt(y: ArrayLike, alpha: float = 0.3, beta: float = 0.1) -> np.ndarray:
    """Holt's linear method (level + trend), one step ahead; trend starts as the first difference.
    NaN samples are skipped (the forecast carries on), so a gap never poisons the state."""
    y = np.asarray(y, dtype=float)
    yhat = np.full(y.shape, np.nan)
    level, trend, seen = 0.0, 0.0, 0
    for t, value in enumerate(y):
        if seen:
            yhat[t] = level + trend
        if not np.isfinite(value):
            continue
        if seen == 0:
            level, trend = value, 0.0
        elif seen == 1 and beta > 0.0:
            level, trend = value, value - level
        else:
            new_level = alpha * value + (1.0 - alpha) * (level + trend)
            trend = beta * (new_level - level) + (1.0 - beta) * trend
            level = new_level
        seen += 1
    return yhat


def ewma(y: ArrayLike, alpha: float = 0.3) -> np.ndarray:
    """Simple exponential smoothing: forecast y[t] by the EWMA level of y[:t] (weight ``alpha``)."""
    return holt(y, alpha, 0.0)


def _autocov(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Raw autocovariance sums of ``x`` at lags 0..max_lag, by FFT (zero-padded, no wrap-around)."""
    spec = np.fft.rfft(x, 2 * x.size)
    return np.fft.irfft(spec * np.conj(spec))[: max_lag + 1]


def detect_period(y: ArrayLike, max_period: int | None = None) -> int:
    """Seasonal period: first major ACF peak after the first zero crossing of the detrended series
    (lags <= n // 3 by default, never > n // 2); 1 when no peak is clearly significant."""
    y = np.asarray(y, dtype=float)
    idx = np.flatnonzero(np.isfinite(y))
    if idx.size < 8:
        return 1
    x = np.interp(np.arange(idx[0], idx[-1] + 1), idx, y[idx])  # fill interior gaps
    n, t = x.size, np.arange(x.size)
    max_period = min(n // 2, n // 3 if max_period is None else max_period)
    x = x - np.polyval(np.polyfit(t, x, 1), t)
    if max_period < 3 or not np.any(np.abs(x) > 1e-12 * (1.0 + np.abs(y[idx]).max())):
        return 1
    # Significance on the plain (biased) ACF, whose noise level is ~1/sqrt(n) at every lag.
    biased = _autocov(x, max_period) / np.sum(x * x)
    # Location on a tapered ACF over the taper's own ACF: no lag damping, no phase edge ripple.
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n // 4) / max(n // 4, 1))
    taper = np.ones(n)
    taper[: ramp.size], taper[n - ramp.size :] = ramp, ramp[::-1]
    acf = _autocov(x * taper, max_period) / _autocov(taper, max_period)
    acf /= acf[0]
    zero = int(np.argmax(acf <= 0.0))  # first zero crossing; 0 means the ACF never crosses
    if zero == 0:
        return 1
    width = max(1, zero // 2) | 1  # odd smoothing window scaled by the ACF's own width
    smooth = np.convolve(acf, np.ones(width) / width, mode="same")
    lags = np.arange(zero, max_period)
    peaks = lags[(smooth[lags] >= smooth[lags - 1]) & (smooth[lags] >= smooth[lags + 1])]
    peaks = peaks[biased[peaks] > max(0.2, 4.0 / np.sqrt(n))]
    if not peaks.size:
        return 1
    lag = int(peaks[np.argmax(smooth[peaks] >= 0.8 * smooth[peaks].max())])  # first major one
    half = min(max(1, zero // 2), lag - 1, max_period - lag)
    if half >= 2:  # vertex of a least-squares parabola over the symmetric neighbourhood
        window = np.arange(lag - half, lag + half + 1)
        a, b, _ = np.polyfit(window - lag, acf[window], 2)
        if a < 0.0:
            lag += int(round(float(np.clip(-b / (2.0 * a), -half, half))))
    return lag


BASELINES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "persistence": lambda y, period: persistence(y),
    "ewma": lambda y, period: ewma(y),
    "seasonal_naive": seasonal_naive,
}
"""Baseline forecasters under a common ``(y, period) -> yhat`` signature, to loop over."""


# --- multi-step paths --------------------------------------------------------------------------


def at_horizon(path: np.ndarray, h: int) -> np.ndarray:
    """Step ``h`` of a path table (row i: forecasts of rows i+1..i+H) aligned with the truth:
    ``out[t]`` is the forecast of ``y[t]`` made ``h`` rows before (nan for t < h)."""
    n = path.shape[0]
    out = np.full(n, np.nan)
    out[h:] = path[: n - h, h - 1]
    return out


def horizon_metrics(
    y: ArrayLike, path: np.ndarray, lower: np.ndarray, upper: np.ndarray, start: int, period: int = 1
) -> dict[str, dict]:
    """Per step h of the path: MAE and MASE of the path, of persistence at h (``y[t-h]``) and of
    seasonal naive at h (``y[t - P*ceil(h/P)]``) on the same rows ``t >= start``, and the share of
    values inside the interval made h rows before. MASE divides by the one-step persistence MAE over
    all rows from ``start``, the same for every h (as the one-step table)."""
    y = np.asarray(y, dtype=float)
    n, steps = path.shape
    start = max(start, 1)
    scale = mae(y[start:], y[start - 1 : -1])
    out: dict[str, dict] = {}
    for h in range(1, steps + 1):
        back = period * -(-h // period)
        fc = {"model": at_horizon(path, h), "persistence": seasonal_naive(y, h)}
        fc["seasonal_naive"] = seasonal_naive(y, back)
        rows = np.zeros(n, dtype=bool)
        rows[start:] = True
        for f in fc.values():
            rows &= np.isfinite(f)
        rows &= np.isfinite(y)
        entry: dict = {"rows": int(rows.sum())}
        for name, f in fc.items():
            err = mae(y[rows], f[rows])
            entry[name] = {"mae": err, "mase": err / scale if scale > 0.0 else float("nan")}
        lo, up = at_horizon(lower, h)[rows], at_horizon(upper, h)[rows]
        inside = (lo <= y[rows]) & (y[rows] <= up)
        known = np.isfinite(lo) & np.isfinite(up)
        entry["coverage"] = float(inside[known].mean()) if known.any() else float("nan")
        entry["width"] = float(np.mean(up[known] - lo[known])) if known.any() else float("nan")
        out[str(h)] = entry
    return out


# --- anomaly flags ------------------------------------------------------------------------------


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean; an undefined side (nan) counts as 0, so nan only when both are undefined."""
    if np.isnan(precision) and np.isnan(recall):
        return float("nan")
    p, r = np.nan_to_num(precision), np.nan_to_num(recall)
    return 0.0 if p + r == 0.0 else float(2.0 * p * r / (p + r))


def _ratio(num: int, den: int) -> float:
    """num / den, nan when the denominator is 0 (the quantity is undefined, not zero)."""
    return num / den if den else float("nan")


def flag_metrics(flags: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """Point-wise precision, recall, F1 (and tp/fp/fn) of boolean flags against boolean labels.
    Precision is nan with no flags, recall nan with no positive labels."""
    flags, truth = np.asarray(flags, dtype=bool), np.asarray(truth, dtype=bool)
    tp = int(np.sum(flags & truth))
    fp, fn = int(np.sum(flags & ~truth)), int(np.sum(~flags & truth))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _f1(precision, recall)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def event_metrics(flags: ArrayLike, windows: list[tuple[int, int]]) -> dict[str, float]:
    """Event scores; a window (inclusive start, end rows) is detected if any flag falls in it.
    precision = flags inside some window / all flags, recall = detected windows / windows."""
    flags = np.asarray(flags, dtype=bool)
    inside = np.zeros(flags.shape, dtype=bool)
    detected = 0
    for start, end in windows:
        if start > end:
            raise ValueError(f"window start {start} is after its end {end}")
        lo, hi = max(int(start), 0), min(int(end), flags.size - 1) + 1
        inside[lo:hi] = True
        detected += bool(flags[lo:hi].any())
    n_flags, n_inside = int(flags.sum()), int(np.sum(flags & inside))
    precision, recall = _ratio(n_inside, n_flags), _ratio(detected, len(windows))
    counts = {"detected": detected, "windows": len(windows), "flags": n_flags, "inside": n_inside}
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)} | counts


def auc(scores: ArrayLike, truth: ArrayLike) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties share their mean rank), NaN scores ignored.
    nan when only one class is present."""
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool)
    scores, truth = scores[~np.isnan(scores)], truth[~np.isnan(scores)]
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each value
    rank_sum = float(mean_rank[inverse][truth].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
