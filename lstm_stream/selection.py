"""Forecaster selection: per stream, serve whichever forecast has lately been the most accurate.

The network (with its seasonal blend) is not the best forecaster of every stream: on a random walk
the last value is, on a noisy level the EWMA is, on a stream whose day repeats exactly the value one
period ago is. So each stream also keeps simple candidates beside the model's forecast:

- ``model``: the engine's forecast (LSTM, blended with the value one period ago where there is one);
- ``persistence``: the last value;
- ``ewma``: the exponentially weighted mean of the values (weight ``ewma_alpha``);
- ``seasonal``: the value one detected period ago (only where the stream has a period);
- ``damped``: the last value plus ``k`` times the change the model predicts, ``k`` in [0, 1] the
  stream's running least-squares fit of the actual change on the predicted one (a model whose
  predicted changes are mostly noise is damped towards persistence);
- ``blend``: the others combined with weights inversely proportional to their squared running errors.

Every candidate's absolute error is folded into its own running mean (exponentially weighted, the
same ``memory`` for all, so they compare fairly), and the stream is served the candidate with the
lowest one. It changes only when another is better by more than ``margin`` (a fraction of the served
one's error), so it does not flap. A candidate is considered once it has ``MIN_ERRORS`` errors; until
one has, a new stream is served persistence (the network's first forecasts, before the scaler settles,
are its worst). The served candidate's forecast is what the engine publishes and scores against;
its spread is the network's where the model is served, else the served candidate's own running error
(as a sigma). Everything is vectorised over the slots of a batch.
"""

from __future__ import annotations

import numpy as np

from .config import SelectionConfig
from .state import Column

NAMES = ("model", "persistence", "ewma", "seasonal", "damped", "blend")
MODEL, PERSISTENCE, EWMA, SEASONAL, DAMPED, BLEND = range(len(NAMES))
K = len(NAMES)
MIN_ERRORS = 20  # errors a candidate needs before it can be served
MAD_TO_SIGMA = 1.2533  # mean absolute error of a Gaussian -> its standard deviation
SPREAD_FLOOR = 0.01  # a served spread is at least this fraction of the stream's robust scale


def columns(cfg: SelectionConfig) -> dict[str, Column]:
    """Per-stream arrays: each candidate's forecast of the next value and running error, the EWMA
    level, the damping fit, the model's spread and the served candidate."""
    if not cfg.enabled:
        return {}
    return {
        "sel_fc": Column((K,), np.float64, np.nan),
        "sel_mae": Column((K,), np.float64, np.nan),
        "sel_n": Column((K,), np.int64, 0),
        "sel_level": Column((), np.float64, np.nan),
        "sel_dxy": Column((), np.float64),  # running mean of actual x predicted change
        "sel_dxx": Column((), np.float64),  # running mean of squared predicted change
        "sel_dn": Column((), np.int64),
        "sel_spread": Column((), np.float64, np.nan),  # the model's spread of its next-value forecast
        "sel_choice": Column((), np.uint8, PERSISTENCE),
    }


def observe(cols: dict, s: np.ndarray, x: np.ndarray, cfg: SelectionConfig) -> np.ndarray:
    """Fold the value ``x`` into every candidate's running error, the EWMA level and the damping fit
    of slots ``s``; returns the model candidate's residual (NaN where it made no forecast)."""
    fc = cols["sel_fc"][s]
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(x[:, None] - fc)
    ok = np.isfinite(err)
    n = cols["sel_n"][s] + ok
    w = np.maximum(1.0 / np.maximum(n, 1), 1.0 / cfg.memory)  # exact mean while young
    cur = cols["sel_mae"][s]
    known = np.nan_to_num(cur)
    cols["sel_mae"][s] = np.where(ok, known + w * (np.where(ok, err, 0.0) - known), cur)
    cols["sel_n"][s] = n
    with np.errstate(invalid="ignore", over="ignore"):
        change, predicted = x - fc[:, PERSISTENCE], fc[:, MODEL] - fc[:, PERSISTENCE]
        xy, xx = change * predicted, predicted * predicted
    fit = np.isfinite(xy) & np.isfinite(xx)
    dn = cols["sel_dn"][s] + fit
    wd = np.where(fit, np.maximum(1.0 / np.maximum(dn, 1), 1.0 / cfg.memory), 0.0)
    cols["sel_dxy"][s] += wd * (np.where(fit, xy, 0.0) - cols["sel_dxy"][s])
    cols["sel_dxx"][s] += wd * (np.where(fit, xx, 0.0) - cols["sel_dxx"][s])
    cols["sel_dn"][s] = dn
    level = cols["sel_level"][s]
    cols["sel_level"][s] = np.where(np.isnan(level), x, level + cfg.ewma_alpha * (x - level))
    return x - fc[:, MODEL]


def serve(
    cols: dict,
    s: np.ndarray,
    last: np.ndarray,
    model_fc: np.ndarray,
    model_spread: np.ndarray,
    naive_fc: np.ndarray | None,
    scale: np.ndarray,
    cfg: SelectionConfig,
    choose: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record every candidate's forecast of the next value of slots ``s`` (``last`` is the latest
    value, ``naive_fc`` the value one period ago or NaN), pick the served one (unless ``choose`` is
    False: keep the current choice) and return the served forecast, its spread and the choice."""
    n = len(s)
    rows = np.arange(n)
    fc = np.empty((n, K))
    fc[:, MODEL] = model_fc
    fc[:, PERSISTENCE] = last
    fc[:, EWMA] = cols["sel_level"][s]
    fc[:, SEASONAL] = np.nan if naive_fc is None else naive_fc
    dxx = cols["sel_dxx"][s]
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(dxx > 0, np.clip(cols["sel_dxy"][s] / dxx, 0.0, 1.0), 0.0)
    fc[:, DAMPED] = last + k * (model_fc - last)
    mae, count = cols["sel_mae"][s], cols["sel_n"][s]
    ready = (count >= MIN_ERRORS) & np.isfinite(fc) & np.isfinite(mae)
    # the blend: inverse squared running errors (floored so an exact candidate does not divide by 0)
    floor = 1e-12 * (np.abs(last) + 1.0)
    parts = np.maximum(np.nan_to_num(mae[:, :BLEND]), floor[:, None])
    with np.errstate(over="ignore"):  # an error of 1e300 squares to inf: weight 0
        inv = np.where(ready[:, :BLEND], 1.0 / parts**2, 0.0)
    total = inv.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fc[:, BLEND] = np.where(total > 0, (inv * np.nan_to_num(fc[:, :BLEND])).sum(axis=1) / total, np.nan)
    ready[:, BLEND] &= np.isfinite(fc[:, BLEND])
    choice = cols["sel_choice"][s].astype(np.int64)
    if choose:
        err = np.where(ready, mae, np.inf)
        best = np.argmin(err, axis=1)
        current = err[rows, choice]
        switch = err[rows, best] < (1.0 - cfg.margin) * current
        choice = np.where(switch, best, choice)  # from an unready choice (inf) to any ready one
    # a choice whose forecast is gone (the period was lost) falls back to the model
    choice = np.where(np.isfinite(fc[rows, choice]), choice, MODEL)
    cols["sel_fc"][s] = fc
    cols["sel_spread"][s] = model_spread
    cols["sel_choice"][s] = choice
    own = mae[rows, choice]  # NaN before the candidate's first error: the network's spread stands in
    own = np.where(np.isfinite(own), np.maximum(MAD_TO_SIGMA * own, SPREAD_FLOOR * scale), model_spread)
    spread = np.where(choice == MODEL, model_spread, own)
    return fc[rows, choice], spread, choice.astype(np.uint8)
