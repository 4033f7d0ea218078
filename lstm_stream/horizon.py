"""Multi-step forecasts: per stream, a path of forecasts for steps 1..H with a central interval per step.

The network forecasts one step; running it H times per sample would cost H LSTM steps. So the path
is built from cheap candidates, each a function of the stream's state at the origin (the last value,
the EWMA levels, the served one-step forecast, the ring of raw values), chosen per stream and per
horizon by their running h-step errors, as :mod:`lstm_stream.selection` does for step 1:

- ``flat``: the served one-step forecast, held (step 1 of the path is always this: the served forecast);
- ``persistence``: the last value;
- ``ewma``: the exponentially weighted level (weight ``ewma_alpha``), ``slow``: a slower one (``SLOW_ALPHA``);
- ``damped``: the last value plus the served one-step change, continued with damping ``PHI``;
- ``seasonal``: the value one (or more) detected periods before the target (streams with a period).

Realised h-step errors need the forecasts made h steps ago: each stream keeps a ring of its last H
origins (last value, levels, one-step forecast, the candidate chosen at each horizon) and rebuilds
every candidate's forecast of the new value from them; the seasonal candidate reads the seasonal
ring (:mod:`lstm_stream.seasonal`). The interval half-width ``q[h]`` is an online conformal quantile
of the served path's absolute h-step error: ``q += ETA * mae * (miss - (1 - coverage))``, so about
``coverage`` of values fall inside on each stream's own data; until ``MIN_ERRORS`` errors it is the
Gaussian width of the running error. Everything is vectorised over the slots of a batch.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from .state import Column

CANDIDATES = ("flat", "persistence", "ewma", "slow", "damped", "seasonal")
FLAT, PERSISTENCE, EWMA, SLOW, DAMPED, SEASONAL = range(len(CANDIDATES))
C = len(CANDIDATES)
PHI = 0.8  # damping of the continued one-step change
SLOW_ALPHA = 0.05  # weight of the newest value in the slow level
ETA = 0.05  # conformal step, in units of the running absolute error
MIN_ERRORS = 20  # h-step errors before a candidate may be chosen and the conformal update starts
MARGIN = 0.05  # switch only to a candidate with this fraction less running error
MAD_TO_SIGMA = 1.2533


def columns(horizon: int | None) -> dict[str, Column]:
    """Per-stream arrays: the ring of H origins, running errors per candidate and horizon, the
    choice, the interval half-widths and the current path (about 1.5 kB per stream at H = 12)."""
    if not horizon:
        return {}
    h = horizon
    return {
        "hz_last": Column((h,), np.float64, np.nan),  # ring of origins, indexed by sample % H
        "hz_ewma": Column((h,), np.float64, np.nan),
        "hz_slow": Column((h,), np.float64, np.nan),
        "hz_fc1": Column((h,), np.float64, np.nan),
        "hz_pick": Column((h, h), np.uint8, FLAT),  # the candidate served at each horizon, per origin
        "hz_level": Column((2,), np.float64, np.nan),  # the fast and slow EWMA levels now
        "hz_mae": Column((C, h), np.float64, 0.0),  # running h-step absolute errors
        "hz_n": Column((C, h), np.int32, 0),
        "hz_choice": Column((h,), np.uint8, FLAT),
        "hz_smae": Column((h,), np.float64, np.nan),  # running error of the served path
        "hz_q": Column((h,), np.float64, np.nan),  # interval half-width per horizon
        "hz_path": Column((h,), np.float64, np.nan),  # the path made after the last sample
    }


def z_of(coverage: float) -> float:
    """Half-width of a central ``coverage`` interval of a standard normal (1.28 for 80 %)."""
    return NormalDist().inv_cdf(0.5 + coverage / 2.0)


def _damping(h: int) -> np.ndarray:
    """1, 1 + PHI, 1 + PHI + PHI^2, ...: how far the one-step change is continued at each step."""
    return np.cumsum(PHI ** np.arange(h))


def candidates(
    last: np.ndarray, ewma: np.ndarray, slow: np.ndarray, fc1: np.ndarray, seas: np.ndarray
) -> np.ndarray:
    """Every candidate's forecast, shape (n, C, H), from origin values broadcastable to (n, H)."""
    h = seas.shape[1]
    out = np.empty((seas.shape[0], C, h))
    out[:, FLAT] = fc1
    out[:, PERSISTENCE] = last
    out[:, EWMA] = ewma
    out[:, SLOW] = slow
    out[:, DAMPED] = last + (fc1 - last) * _damping(h)
    out[:, SEASONAL] = seas
    return out


def _seasonal(cols: dict, s: np.ndarray, target: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The value one or more periods before each target sample index (n, H); NaN without a period
    or where that value is not in the seasonal ring."""
    target = target + np.zeros_like(steps)  # (n, 1) -> (n, H)
    n, h = target.shape
    if "se_period" not in cols:
        return np.full((n, h), np.nan)
    period = cols["se_period"][s]
    if not (period > 1).any():
        return np.full((n, h), np.nan)
    ring = cols["se_ring"]
    window = ring.shape[1]
    p = np.maximum(period, 1)[:, None]
    back = p * -(-steps // p)  # P * ceil(h / P): the nearest whole periods reaching the past
    src = target - back
    ok = (period[:, None] > 1) & (src >= 0) & (back < window)
    vals = ring[s[:, None], np.where(ok, src, 0) % window].astype(np.float64)
    return np.where(ok, vals, np.nan)


def update(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    count: np.ndarray,
    fc1: np.ndarray,
    spread: np.ndarray,
    alpha: float,
    memory: int,
    coverage: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One sample ``x`` per slot (``count`` samples before it): fold the realised h-step errors of
    every forecast made for it, then make the path after it from ``fc1`` (the served one-step
    forecast, with its ``spread``). Returns the path and the interval half-widths, (n, H) each."""
    h = cols["hz_q"].shape[1]
    steps = np.arange(1, h + 1)
    _realise(cols, s, x, count, steps, memory, coverage)
    levels = cols["hz_level"][s]
    levels = np.where(np.isnan(levels), x[:, None], levels + np.array([alpha, SLOW_ALPHA]) * (x[:, None] - levels))
    cols["hz_level"][s] = levels
    choice = _choose(cols, s)
    at = count % h
    cols["hz_last"][s, at] = x
    cols["hz_ewma"][s, at] = levels[:, 0]
    cols["hz_slow"][s, at] = levels[:, 1]
    cols["hz_fc1"][s, at] = fc1
    cols["hz_pick"][s, at] = choice
    cand = candidates(
        x[:, None], levels[:, :1], levels[:, 1:], fc1[:, None], _seasonal(cols, s, count[:, None] + steps, steps)
    )
    path = np.take_along_axis(cand, choice[:, None, :].astype(np.intp), axis=1)[:, 0]
    path = np.where(np.isfinite(path), path, fc1[:, None])  # a lost period falls back to flat
    cols["hz_path"][s] = path
    q = cols["hz_q"][s]
    guess = z_of(coverage) * spread[:, None] * np.sqrt(steps)  # before any h-step error
    return path, np.where(np.isnan(q), guess, q)


def _realise(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    count: np.ndarray,
    steps: np.ndarray,
    memory: int,
    coverage: float,
) -> None:
    """Fold every candidate's h-step error of ``x`` into its running error, and the served path's
    into the interval half-width, for each horizon h whose origin (h samples ago) exists."""
    h = len(steps)
    origin = count[:, None] - steps  # sample index each forecast of x was made after
    valid = origin >= 0
    if not valid.any():
        return
    ring = origin % h
    rows = s[:, None]
    cand = candidates(
        cols["hz_last"][rows, ring],
        cols["hz_ewma"][rows, ring],
        cols["hz_slow"][rows, ring],
        cols["hz_fc1"][rows, ring],
        _seasonal(cols, s, count[:, None], steps),
    )
    err = np.abs(x[:, None, None] - cand)
    ok = np.isfinite(err) & valid[:, None, :]
    n = cols["hz_n"][s] + ok
    w = 1.0 / np.clip(n, 1, memory)
    mae = cols["hz_mae"][s]
    cols["hz_mae"][s] = np.where(ok, mae + w * (err - mae), mae)
    cols["hz_n"][s] = n
    pick = cols["hz_pick"][rows, ring, steps - 1].astype(np.intp)
    served = np.take_along_axis(err, pick[:, None, :], axis=1)[:, 0]
    served = np.where(np.isfinite(served), served, err[:, FLAT])  # as the path fell back
    _interval(cols, s, served, valid & np.isfinite(served), n[:, FLAT], memory, coverage)


def _interval(
    cols: dict,
    s: np.ndarray,
    err: np.ndarray,
    ok: np.ndarray,
    n: np.ndarray,
    memory: int,
    coverage: float,
) -> None:
    """The served path's running error and the conformal half-width, per horizon."""
    smae = cols["hz_smae"][s]
    w = 1.0 / np.clip(n, 1, memory)
    smae = np.where(ok, np.where(np.isnan(smae), err, smae + w * (err - smae)), smae)
    q = cols["hz_q"][s]
    gauss = z_of(coverage) * MAD_TO_SIGMA * smae
    miss = (err > q).astype(np.float64)
    stepped = np.maximum(q + ETA * smae * (miss - (1.0 - coverage)), 0.0)
    q = np.where(ok, np.where((n < MIN_ERRORS) | np.isnan(q), gauss, stepped), q)
    cols["hz_smae"][s] = smae
    cols["hz_q"][s] = q


def _choose(cols: dict, s: np.ndarray) -> np.ndarray:
    """Per horizon, the candidate with the lowest running error (once it has ``MIN_ERRORS``),
    kept unless another is better by ``MARGIN``; step 1 is always the served one-step forecast."""
    mae = np.where(cols["hz_n"][s] >= MIN_ERRORS, cols["hz_mae"][s], np.inf)
    best = np.argmin(mae, axis=1)
    choice = cols["hz_choice"][s].astype(np.intp)
    lowest = np.take_along_axis(mae, best[:, None, :], axis=1)[:, 0]
    current = np.take_along_axis(mae, choice[:, None, :], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):
        choice = np.where(lowest < (1.0 - MARGIN) * current, best, choice)
    choice[:, 0] = FLAT
    out = choice.astype(np.uint8)
    cols["hz_choice"][s] = out
    return out


def after_swap(cols: dict, s: np.ndarray, count: np.ndarray, fc1: np.ndarray) -> None:
    """A new model made a new one-step forecast after the last sample: the latest origin and the
    path's flat parts follow it."""
    if "hz_fc1" not in cols:
        return
    seen = count > 0
    s, count, fc1 = s[seen], count[seen], fc1[seen]
    h = cols["hz_fc1"].shape[1]
    cols["hz_fc1"][s, (count - 1) % h] = fc1
    path = cols["hz_path"][s]
    flat = cols["hz_choice"][s] == FLAT
    cols["hz_path"][s] = np.where(flat, fc1[:, None], path)


def view(cols: dict, slots: np.ndarray) -> dict[str, np.ndarray]:
    """The current path and its interval for ``slots`` (NaN bounds before a horizon's first error);
    empty when the horizon is off."""
    if "hz_path" not in cols:
        return {}
    path, q = cols["hz_path"][slots], cols["hz_q"][slots]
    return {"path": path, "lower": path - q, "upper": path + q}
