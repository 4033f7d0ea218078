"""Forecaster selection: per stream, serve whichever forecast has lately been the most accurate.

The network (with its seasonal blend) is not the best forecaster of every stream: on a random walk
the last value is, on a noisy level the EWMA is, on a stream whose day repeats exactly the value one
period ago is. So each stream also keeps simple candidates beside the model's forecast:

- ``model``: the engine's forecast (LSTM, blended with the seasonal-naive value where there is a period);
- ``persistence``: the last value;
- ``ewma``: the exponentially weighted mean of the values (weight ``ewma_alpha``);
- ``seasonal``: the seasonal-naive value, the median of the last ``periods`` periods' (only with a period);
- ``damped``: the last value plus ``k`` times the change the model predicts, ``k`` in [0, 1] the
  stream's running least-squares fit of the actual change on the predicted one (a model whose
  predicted changes are mostly noise is damped towards persistence);
- ``blend``: the others combined with weights inversely proportional to their squared running errors.

Every candidate's absolute error is folded into its own running mean (exponentially weighted, the
same ``memory`` for all, so they compare fairly), and the stream is served the candidate with the
lowest one. It changes only when another is better by more than ``margin`` (a fraction of the served
one's error), so it does not flap, and when that gain is significant (:func:`significant`: the paired
difference of the two absolute errors, ``confidence`` standard errors above zero): on a spiky stream
one spike can make a candidate look better over ``memory`` samples by luck, and every spell of a
wrong candidate costs. Persistence, the fallback, needs only the margin to be served again. A
candidate is considered once it has ``MIN_ERRORS`` errors; until
one has, a new stream is served persistence (the network's first forecasts, before the scaler settles,
are its worst). (Winsorising the errors at 5x the running error kept a spike from moving the choice,
but cost forecast accuracy on spiky streams: MASE is a mean, so the big misses must count.)

The served candidate's forecast is what the engine publishes and scores against; its spread is the
served candidate's own running error as a sigma, the model included (the network's spread only stands
in before the first error): the standardised error the scorer fits then keeps one calibration when
the served candidate changes (with the network's spread for the model, a switch from it to seasonal
naive shifted the error distribution under the scorer's long-run fit and hid a spike right after).
Everything is vectorised over the slots of a batch.
"""

from __future__ import annotations

import numpy as np

from . import fastnp
from .config import SelectionConfig
from .state import Column

NAMES = ("model", "persistence", "ewma", "seasonal", "damped", "blend", "adapted")
MODEL, PERSISTENCE, EWMA, SEASONAL, DAMPED, BLEND, ADAPTED = range(len(NAMES))
K = ADAPTED  # candidates kept here; ``adapted`` is the served one corrected per stream (adaptation.py)
MIN_ERRORS = 20  # errors a candidate needs before it can be served
MAD_TO_SIGMA = 1.2533  # mean absolute error of a Gaussian -> its standard deviation
SPREAD_FLOOR = 0.001  # a served spread is at least this fraction of the stream's robust scale
DAMPING = "sel_damping"  # block of columns (state.Column)


def columns(cfg: SelectionConfig) -> dict[str, Column]:
    """Per-stream arrays: each candidate's forecast of the next value, running error and error count,
    the EWMA level, the damping fit, the model's spread and the served candidate."""
    if not cfg.enabled:
        return {}
    return {
        "sel_fc": Column((K,), np.float64, np.nan),
        "sel_mae": Column((K,), np.float64, 0.0),  # meaningful where sel_n > 0
        "sel_n": Column((K,), np.int64, 0),
        "sel_ee": Column((K, K), np.float64, 0.0),  # running mean of |error_i| x |error_j| (paired test)
        "sel_level": Column((), np.float64, np.nan),
        # running means of actual x predicted change and of squared predicted change (one block)
        "sel_dxy": Column((), np.float64, block=DAMPING),
        "sel_dxx": Column((), np.float64, block=DAMPING),
        "sel_dn": Column((), np.int64),
        "sel_spread": Column((), np.float64, np.nan),  # the model's spread of its next-value forecast
        "sel_choice": Column((), np.uint8, PERSISTENCE),
    }


def model_residual(cols: dict, s: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` minus the model candidate's forecast of it (NaN where it made none)."""
    return x - cols["sel_fc"][s, MODEL]


def update(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    model_fc: np.ndarray,
    model_spread: np.ndarray,
    naive_fc: np.ndarray | None,
    scale: np.ndarray,
    cfg: SelectionConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample ``x`` per slot of ``s``: fold every candidate's error into its running error, the
    value into the EWMA level and the damping fit; then :func:`serve` the next value (``model_fc``,
    ``model_spread``: the model's forecast of it; ``naive_fc``: the value one period ago or NaN;
    ``scale``: the stream's robust scale). Returns the served forecast, its spread and the choice."""
    fc = cols["sel_fc"][s]
    n = len(s)
    with fastnp.errstate(invalid="ignore", over="ignore"):
        err = np.abs(x[:, None] - fc)
        ok = np.isfinite(err)  # False where a candidate made no forecast
        # the damping fit's sample: actual x predicted change, and squared predicted change
        predicted = fc[:, MODEL] - fc[:, PERSISTENCE]
        moments = np.empty((2, n))
        np.subtract(x, fc[:, PERSISTENCE], out=moments[0])
        moments[1] = predicted
        moments *= predicted
        fit = np.logical_and.reduce(np.isfinite(moments), axis=0)
        # every running mean's count (the candidates' errors, then the fit's), weighted as one
        counts = np.empty((n, K + 1), dtype=np.int64)
        np.add(cols["sel_n"][s], ok, out=counts[:, :K])
        np.add(cols["sel_dn"][s], fit, out=counts[:, K])
        weights = 1.0 / fastnp.clip(counts, 1, cfg.memory)  # exact mean while young, then 1 / memory
        count, w, dn = counts[:, :K], weights[:, :K], counts[:, K]
        mae = cols["sel_mae"][s]
        mae = np.where(ok, mae + w * (err - mae), mae)
        cols["sel_ee"][s] = pair_moments(cols["sel_ee"][s], err, ok, w)
        wd = np.where(fit, weights[:, K], 0.0)
        damping = cols.blocks[DAMPING].take(s, axis=1)  # (2, n): dxy, dxx
        damping += wd * (np.where(fit, moments, 0.0) - damping)
    cols["sel_mae"][s] = mae
    cols["sel_n"][s] = count
    cols.blocks[DAMPING][:, s] = damping
    cols["sel_dn"][s] = dn
    dxy, dxx = damping
    level = cols["sel_level"][s]
    level = np.where(np.isnan(level), x, level + cfg.ewma_alpha * (x - level))
    cols["sel_level"][s] = level
    return _serve(cols, s, x, model_fc, model_spread, naive_fc, scale, cfg, mae, count, level, dxy, dxx)


def serve(
    cols: dict,
    s: np.ndarray,
    last: np.ndarray,
    model_fc: np.ndarray,
    model_spread: np.ndarray,
    naive_fc: np.ndarray | None,
    scale: np.ndarray,
    cfg: SelectionConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates' forecasts of the next value after a new model forecast (a model swap), with
    the current choice kept; returns the served forecast, its spread and the choice."""
    return _serve(
        cols, s, last, model_fc, model_spread, naive_fc, scale, cfg,
        cols["sel_mae"][s], cols["sel_n"][s], cols["sel_level"][s], cols["sel_dxy"][s],
        cols["sel_dxx"][s], choose=False,
    )  # fmt: skip


def _serve(
    cols: dict,
    s: np.ndarray,
    last: np.ndarray,
    model_fc: np.ndarray,
    model_spread: np.ndarray,
    naive_fc: np.ndarray | None,
    scale: np.ndarray,
    cfg: SelectionConfig,
    mae: np.ndarray,
    count: np.ndarray,
    level: np.ndarray,
    dxy: np.ndarray,
    dxx: np.ndarray,
    choose: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record every candidate's forecast of the next value, pick the served one (unless ``choose``
    is False) and return the served forecast, its spread and the choice."""
    n = len(s)
    fc = np.empty((n, K))
    fc[:, MODEL] = model_fc
    fc[:, PERSISTENCE] = last
    fc[:, EWMA] = level
    fc[:, SEASONAL] = np.nan if naive_fc is None else naive_fc
    with fastnp.errstate(invalid="ignore", divide="ignore", over="ignore"):
        k = np.where(dxx > 0, fastnp.clip(dxy / dxx, 0.0, 1.0), 0.0)
        fc[:, DAMPED] = last + k * (model_fc - last)
        ready = (count >= MIN_ERRORS) & np.isfinite(fc)
        # the blend: inverse squared running errors (floored: an exact candidate does not divide by 0;
        # an error of 1e300 squares to inf: weight 0)
        parts = np.maximum(mae[:, :BLEND], 1e-12 * (np.abs(last) + 1.0)[:, None])
        inv = np.where(ready[:, :BLEND], 1.0 / parts**2, 0.0)
        total = np.add.reduce(inv, axis=1)  # ndarray.sum without its Python wrapper
        blend = np.add.reduce(inv * np.where(ready[:, :BLEND], fc[:, :BLEND], 0.0), axis=1) / total
    fc[:, BLEND] = np.where(total > 0, blend, np.nan)
    ready[:, BLEND] &= total > 0
    choice = cols["sel_choice"][s].astype(np.intp)
    rows = np.arange(n)
    if choose:
        err = np.where(ready, mae, np.inf)
        best = err.argmin(axis=1)
        lowest = err[rows, best]
        current = err[rows, choice]
        with fastnp.errstate(invalid="ignore"):
            switch = lowest < (1.0 - cfg.margin) * current  # from an unready choice (inf) to a ready one
        if fastnp.any_true(switch):
            sure = significant(cols["sel_ee"][s], mae, count, choice, best, cfg)
            switch &= sure | (best == PERSISTENCE) | ~np.isfinite(current)
        choice = np.where(switch, best, choice)
    served = fc[rows, choice]
    # a choice whose forecast is gone (the period was lost) falls back to the model
    lost = ~np.isfinite(served)
    if fastnp.any_true(lost):
        choice = np.where(lost, MODEL, choice)
        served = np.where(lost, model_fc, served)
    cols["sel_fc"][s] = fc
    cols["sel_spread"][s] = model_spread
    cols["sel_choice"][s] = choice
    own = mae[rows, choice]
    known = count[rows, choice] > 0
    # the served candidate's own running error, the model's too (one calibration for the scorer);
    # before the candidate's first error the network's spread stands in
    own = np.where(known, np.maximum(MAD_TO_SIGMA * own, SPREAD_FLOOR * scale), model_spread)
    return served, own, choice.astype(np.uint8)


PAIR_CAP = 1e150  # absolute errors are capped here in the paired test's moments: their products stay finite


def pair_moments(ee: np.ndarray, err: np.ndarray, ok: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fold one row of absolute errors ``err`` (``ok``: made) into the running means ``ee`` of their
    pairwise products, each pair weighted as the younger of its two running errors (``weight``: each
    error's, ``1 / clip(count, 1, memory)``; the younger's is the larger) (what the paired test
    needs: the variance of a difference of two errors)."""
    both = ok[:, :, None] & ok[:, None, :]
    w = np.maximum(weight[:, :, None], weight[:, None, :])
    e = np.minimum(np.where(ok, err, 0.0), PAIR_CAP)  # products of errors of 1e300 must stay finite
    return np.where(both, ee + w * (e[:, :, None] * e[:, None, :] - ee), ee)


def significant(
    ee: np.ndarray, mae: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: SelectionConfig
) -> np.ndarray:
    """Whether candidate ``b``'s running absolute error is below ``a``'s by more than ``cfg.confidence``
    standard errors of their paired difference (a Diebold-Mariano test on the running means; the
    sample counts as ``2 x memory - 1`` once the means forget, an exponential mean's effective size).
    The errors of two forecasts of one value move together (a spike hits both), so the difference is
    far less noisy than either: a spell of luck on a spiky stream does not pass, a steady gain does."""
    rows = np.arange(len(a))
    mean = mae[rows, a] - mae[rows, b]
    square = ee[rows, a, a] - 2.0 * ee[rows, a, b] + ee[rows, b, b]
    return paired_gain(mean, square, np.minimum(count[rows, a], count[rows, b]), cfg)


def paired_gain(mean: np.ndarray, square: np.ndarray, n: np.ndarray, cfg: SelectionConfig) -> np.ndarray:
    """Whether a running mean gain ``mean`` (mean square ``square``, over ``n`` samples) is above zero by
    ``cfg.confidence`` standard errors."""
    size = fastnp.clip(n, 1, 2 * cfg.memory - 1)
    with fastnp.errstate(invalid="ignore", divide="ignore"):
        return mean > cfg.confidence * np.sqrt(np.maximum(square - mean * mean, 0.0) / size)
