"""Per-stream adaptation: a small linear correction of the served forecast, fitted online on the stream.

The network is shared by every stream and :mod:`lstm_stream.selection` only chooses among fixed
forecasts; neither learns what a given stream keeps getting wrong. So each stream also fits, by
exponentially weighted least squares (memory ``memory`` samples, ridge ``ridge`` towards no
correction, Huber-weighted so a spike barely moves it), the error of the served forecast ``b`` on:

- the other candidates' departures from it: ``model - b``, ``persistence - b``, ``ewma - b``,
  ``seasonal - b`` (each 0 where the candidate has no forecast);
- ``sdiff``: the change one period ago, ``x[t+1-P] - x[t-P]`` (streams with a period);
- ``momentum``: the last change, ``x[t] - x[t-1]``; and a constant (a level bias).

Features and target are in units ``u`` of the served forecast's running absolute error (a typical
miss: the robust scale of a trending level is far larger) and clipped at ``clip``. The corrected
forecast ``b + u * w . f`` keeps its own running absolute error (the same memory as selection's),
and the stream is served it once it has ``MIN_ERRORS`` errors and is better than the running error
of the candidate serving ``b`` by selection's ``margin`` and its paired gain over ``b`` passes
selection's test (``selection.paired_gain``); it is then named ``adapted`` (``selection.NAMES``) and its
spread is its own running error as a sigma. It is taken off as soon as its running paired gain is
no longer positive (or ``b`` is better by the margin): a spell of luck ends there. Every value is scored
against the forecast made before it and only then folded into the fit: the correction only ever
sees the past. The weights are solved every ``STRIDE`` samples of a stream (the normal equations
are updated at every one). Everything is vectorised over the slots of a batch.
"""

from __future__ import annotations

import numpy as np

from . import fastnp
from .config import AdaptationConfig, EngineConfig, SelectionConfig
from .selection import (
    ADAPTED,
    EWMA,
    MAD_TO_SIGMA,
    MIN_ERRORS,
    MODEL,
    PERSISTENCE,
    SEASONAL,
    SPREAD_FLOOR,
    paired_gain,
)
from .state import Column

FEATURES = ("model", "persistence", "ewma", "seasonal", "sdiff", "momentum", "bias")
D = len(FEATURES)
CANDIDATES = np.array([MODEL, PERSISTENCE, EWMA, SEASONAL])  # the first four features' candidates
NC = len(CANDIDATES)
assert (CANDIDATES == np.arange(NC)).all()  # the first NC of selection's: a slice, not a gather
SDIFF, MOMENTUM, BIAS = 4, 5, 6
STRIDE = 8  # samples of a stream between two solves of its weights
WARMUP = 2 * STRIDE  # fitted samples before the correction forecasts (weights solved at least once)
PENDING = "ad_pending"  # block of columns (state.Column)
SKIP = 10  # a stream's first values are not fitted (its scale is not settled: targets would be huge)
HUBER_ALPHA = 0.01  # memory of the running absolute fit residual that sets the Huber bound


def columns(cfg: AdaptationConfig, selection: SelectionConfig) -> dict[str, Column]:
    """Per-stream arrays: the normal equations and weights, the pending forecast's features, base,
    scale and forecast, the running errors of the base and of the correction, and the served flag."""
    if not (cfg.enabled and selection.enabled):
        return {}
    return {
        "ad_xx": Column((D, D), np.float64),  # exponentially weighted sum of f f^T
        "ad_xy": Column((D,), np.float64),  # and of f * target
        "ad_w": Column((D,), np.float64),
        "ad_n": Column((), np.int64),  # samples fitted
        "ad_res": Column((), np.float64, np.nan),  # running |fit residual|, scaled
        "ad_f": Column((D,), np.float64),  # features of the pending forecast
        # the uncorrected served forecast of the next value and the corrected one (NaN while warming
        # up): one block, gathered as one to be scored
        "ad_base": Column((), np.float64, np.nan, block=PENDING),
        "ad_fc": Column((), np.float64, np.nan, block=PENDING),
        "ad_scale": Column((), np.float64, np.nan),  # the unit they were made in (see ``unit``)
        "ad_mae": Column((2,), np.float64),  # running |error| of base, corrected
        "ad_ne": Column((2,), np.int64),  # errors counted in them
        "ad_gain": Column((2,), np.float64),  # running mean of |base err| - |corrected err|, and its square
        "ad_on": Column((), np.bool_),  # the corrected forecast is served
        "ad_of": Column((), np.uint8, ADAPTED),  # the candidate serving the base (ADAPTED: none yet)
    }


def enabled(cols: dict) -> bool:
    """Whether the engine keeps the adaptation's columns."""
    return "ad_w" in cols


def observe(cols: dict, s: np.ndarray, x: np.ndarray, cfg: AdaptationConfig, memory: int) -> None:
    """Score the pending forecasts of ``s`` on the new values ``x`` (running errors), then fold the
    values into the fit and solve the weights where due."""
    pending, sc = cols.blocks[PENDING].take(s, axis=1), cols["ad_scale"][s]
    base, fc = pending[0], pending.T  # (n, 2): base, corrected
    with fastnp.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.abs(x[:, None] - fc)
        ok = np.isfinite(err)
        ne = cols["ad_ne"][s] + ok
        mae = cols["ad_mae"][s]
        w = 1.0 / fastnp.clip(ne, 1, memory)
        cols["ad_mae"][s] = np.where(ok, mae + w * (err - mae), mae)  # (what a missing error gives: unused)
        cols["ad_ne"][s] = ne
        gain = err[:, 0] - err[:, 1]
        paired = np.isfinite(gain)
        g = cols["ad_gain"][s]
        moments = np.empty((len(s), 2))  # the gain and its square
        moments[:, 0] = gain
        np.multiply(gain, gain, out=moments[:, 1])
        step = np.where(paired, w[:, 1], 0.0)[:, None] * (moments - g)
        cols["ad_gain"][s] = np.where(paired[:, None], g + step, g)
        fit = np.isfinite(base) & np.isfinite(sc) & (sc > 0) & np.isfinite(x) & (cols["count"][s] > SKIP)
        fitted = fastnp.count(fit)
        if not fitted:
            return
        if fitted < len(s):
            s, x, base, sc = s[fit], x[fit], base[fit], sc[fit]
        target = fastnp.clip((x - base) / sc, -cfg.clip, cfg.clip)
        f = cols["ad_f"][s]
        resid = np.abs(target - fastnp.rowdot(f, cols["ad_w"][s]))
        res = cols["ad_res"][s]
        bound = cfg.huber * res
        weight = np.where(np.isfinite(res) & (resid > bound), bound / np.maximum(resid, 1e-300), 1.0)
        cols["ad_res"][s] = np.where(np.isnan(res), resid, res + HUBER_ALPHA * (resid - res))
    lam = 1.0 - 1.0 / cfg.memory
    wf = weight[:, None] * f
    xx = cols["ad_xx"][s]
    xx *= lam
    xx += wf[:, :, None] * f[:, None, :]
    cols["ad_xx"][s] = xx
    xy = cols["ad_xy"][s]
    xy *= lam
    xy += wf * target[:, None]
    cols["ad_xy"][s] = xy
    n = cols["ad_n"][s] + 1
    cols["ad_n"][s] = n
    due = n % STRIDE == 0
    if fastnp.any_true(due):
        solve(cols, s[due], cfg.ridge)


def solve(cols: dict, s: np.ndarray, ridge: float) -> None:
    """Weights of ``s`` from their normal equations, with ``ridge`` towards no correction."""
    xx = cols["ad_xx"][s] + ridge * np.eye(D)
    w = np.linalg.solve(xx, cols["ad_xy"][s][:, :, None])[:, :, 0]
    cols["ad_w"][s] = np.where(np.isfinite(w), w, 0.0)


def forecast(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    prev: np.ndarray,
    naive_now: np.ndarray | None,
    base: np.ndarray,
    base_spread: np.ndarray,
    choice: np.ndarray,
    scale: np.ndarray,
    cfg: EngineConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After value ``x`` (``prev``: the value before it; ``naive_now``: the value one period before
    ``x``, NaN or None without a period) and the served forecast ``base`` of the next value (made by
    candidate ``choice``): the features of the next value, the corrected forecast, and what to
    serve. Returns the served forecast, its spread and a mask of the slots served the corrected one."""
    f = np.empty((len(s), D))
    u = unit(cols, s, scale)
    with fastnp.errstate(invalid="ignore", over="ignore", divide="ignore"):
        f[:, SDIFF] = (cols["sel_fc"][s, SEASONAL] - (np.nan if naive_now is None else naive_now)) / u
        f[:, MOMENTUM] = (x - prev) / u
    f[:, BIAS] = 1.0
    # another candidate serves the base now: the correction (fitted to the old one) earns its place
    # again, from a fresh running error, before it is served (else it double-counts a lag, say)
    moved = cols["ad_of"][s] != choice
    if fastnp.any_true(moved):
        m = s[moved]
        cols["ad_on"][m] = False
        cols["ad_mae"][m, 1] = 0.0
        cols["ad_ne"][m, 1] = 0
        cols["ad_gain"][m] = 0.0
        cols["ad_of"][m] = choice[moved]
    own = cols["sel_mae"][s, choice]
    return serve(cols, s, base, base_spread, scale, cfg.adaptation, cfg.selection, base_mae=own, made=(f, u))


def serve(
    cols: dict,
    s: np.ndarray,
    base: np.ndarray,
    base_spread: np.ndarray,
    scale: np.ndarray,
    cfg: AdaptationConfig,
    selection: SelectionConfig,
    choose: bool = True,
    base_mae: np.ndarray | None = None,
    made: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corrected forecast from the stored features (the candidates' part refreshed from
    ``sel_fc``: after a model swap, only that part changes) and the choice between it and ``base``
    (kept as it was unless ``choose``; ``base_mae``: the running error of the candidate serving
    ``base``, what the correction must beat, as it is after a change of candidate; default: the
    running error of every served base; ``made``: the features and unit :func:`forecast` just made,
    instead of the stored ones). Returns the served forecast, spread and corrected mask."""
    f, u = made if made is not None else (cols["ad_f"][s], unit(cols, s, scale))
    with fastnp.errstate(invalid="ignore", over="ignore", divide="ignore"):
        f[:, :NC] = (cols["sel_fc"][s][:, :NC] - base[:, None]) / u[:, None]
        f = fastnp.clip(np.where(np.isfinite(f), f, 0.0), -cfg.clip, cfg.clip)
        fc = base + u * fastnp.rowdot(f, cols["ad_w"][s])
    ready = (cols["ad_n"][s] >= WARMUP) & np.isfinite(fc) & np.isfinite(base)
    fc = np.where(ready, fc, np.nan)
    cols["ad_f"][s] = f
    cols["ad_base"][s] = base
    cols["ad_scale"][s] = u
    cols["ad_fc"][s] = fc
    mae, ne = cols["ad_mae"][s], cols["ad_ne"][s]
    on = cols["ad_on"][s]
    if choose:
        counted = np.logical_and.reduce(ne >= MIN_ERRORS, axis=1)
        # better by the margin and by more than a negligible amount (an exact candidate stays served)
        now = mae[:, 0] if base_mae is None else base_mae
        better = mae[:, 1] < (1.0 - selection.margin) * now - SPREAD_FLOOR * scale
        # and the paired gain over the uncorrected forecast is significant (selection.significant)
        gain = cols["ad_gain"][s]
        better &= paired_gain(gain[:, 0], gain[:, 1], ne[:, 1], selection)
        # off as soon as it has not gained over the uncorrected forecast lately (a spell of luck ends)
        worse = (now < (1.0 - selection.margin) * mae[:, 1]) | (gain[:, 0] <= 0.0)
        on = counted & np.where(on, ~worse, better)
    on &= ready
    cols["ad_on"][s] = on
    spread = np.maximum(MAD_TO_SIGMA * mae[:, 1], SPREAD_FLOOR * scale)
    return np.where(on, fc, base), np.where(on, spread, base_spread), on


def step(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    naive_now: np.ndarray | None,
    base: np.ndarray,
    base_spread: np.ndarray,
    choice: np.ndarray,
    scale: np.ndarray,
    cfg: EngineConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The engine's hook after selection: fold ``x`` into the fit, then correct the next value's
    served forecast where that pays. Returns the served forecast, its spread and the choice
    (``ADAPTED`` where corrected). Without the adaptation's columns, the inputs unchanged."""
    if not enabled(cols):
        return base, base_spread, choice
    observe(cols, s, x, cfg.adaptation, cfg.selection.memory)
    prev = cols["last_value"][s]  # the engine writes x there after this call
    fc, spread, on = forecast(cols, s, x, prev, naive_now, base, base_spread, choice, scale, cfg)
    return fc, spread, np.where(on, ADAPTED, choice).astype(np.uint8)


def after_swap(
    cols: dict, s: np.ndarray, base: np.ndarray, base_spread: np.ndarray, scale: np.ndarray, cfg: EngineConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The served forecast once a new model has made ``base``: the correction redone on it, the
    choice kept."""
    if not enabled(cols):
        return base, base_spread
    fc, spread, _ = serve(cols, s, base, base_spread, scale, cfg.adaptation, cfg.selection, choose=False)
    return fc, spread


def unit(cols: dict, s: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The unit of the features and targets: the served forecast's running absolute error (the
    size of a typical miss, where the robust scale of a trending level is far larger), floored at
    ``SPREAD_FLOOR`` of the robust ``scale``, which stands in before the first error."""
    mae, ne = cols["ad_mae"][s, 0], cols["ad_ne"][s, 0]
    return np.where(ne > 0, np.maximum(mae, SPREAD_FLOOR * scale), scale)


def served(cols: dict, s: np.ndarray) -> np.ndarray:
    """The forecaster serving each of ``s`` (index into ``selection.NAMES``)."""
    choice = cols["sel_choice"][s]
    return np.where(cols["ad_on"][s], ADAPTED, choice).astype(np.uint8) if enabled(cols) else choice
