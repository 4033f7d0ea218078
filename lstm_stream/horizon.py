"""Multi-step forecasts: per stream, a path of forecasts for steps 1..H with a central interval per step.

The network forecasts one step; running it H times per sample would cost H LSTM steps. So the path
is built from cheap candidates, each a function of the stream's state at the origin (the last value,
the EWMA levels, the served one-step forecast, the deviation from one period before), chosen per
stream and per horizon by their running h-step errors, as :mod:`lstm_stream.selection` does for step 1:

- ``flat``: the served one-step forecast, held (step 1 of the path is always this: the served forecast);
- ``persistence``: the last value;
- ``ewma``: the exponentially weighted level (weight ``ewma_alpha``), ``slow``: a slower one (``SLOW_ALPHA``);
- ``damped``: the last value plus the served one-step change, continued with damping ``PHI``;
- ``seasonal``: the value one (or more) detected periods before the target (streams with a period);
  ``seasonal_adj``: that plus the origin's deviation from its own value one period before, damped
  by ``PHI_SEASONAL`` per step (a day running 10 % high goes on running high for a while).

Realised h-step errors need the forecasts made h steps ago: each stream keeps a ring of its last H
origins (last value, levels, one-step forecast, the candidate chosen at each horizon) and rebuilds
every candidate's forecast of the new value from them; the seasonal candidate reads the seasonal
ring (:mod:`lstm_stream.seasonal`). The interval half-width ``q[h]`` is an online conformal quantile
of the served path's absolute h-step error: ``q += ETA * mae * (miss - (1 - coverage))``, so about
``coverage`` of values fall inside on each stream's own data; until ``MIN_ERRORS`` errors it is the
Gaussian width of the running error. Everything is vectorised over the slots of a batch.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from . import fastnp
from .state import Column

CANDIDATES = ("flat", "persistence", "ewma", "slow", "damped", "seasonal", "seasonal_adj")
FLAT, PERSISTENCE, EWMA, SLOW, DAMPED, SEASONAL, SEASONAL_ADJ = range(len(CANDIDATES))
C = len(CANDIDATES)
PHI = 0.8  # damping of the continued one-step change
PHI_SEASONAL = 0.9  # damping of the last deviation from the value one period before
SLOW_ALPHA = 0.05  # weight of the newest value in the slow level
ETA = 0.05  # conformal step, in units of the running absolute error
MIN_ERRORS = 20  # h-step errors before a candidate may be chosen and the conformal update starts
MARGIN = 0.05  # switch only to a candidate with this fraction less running error
MAD_TO_SIGMA = 1.2533
BIG = 1e300  # errors are capped here, so running means stay finite
ONE = np.ones(1, dtype=np.int64)
STRIDE = 2  # errors are realised at every STRIDE-th sample of a stream (staggered across streams)
ANCHORS = 5  # steps whose errors are tracked, step 1 included (the others follow the next anchor)


@lru_cache(maxsize=16)
def anchors(horizon: int) -> np.ndarray:
    """The steps whose errors are tracked: 1, then about log-spaced up to H (1, 2, 4, 7, 12 at H = 12).
    Step h >= 2 is served the candidate chosen at the first anchor at or after it; interval widths
    between anchors are interpolated."""
    inner = np.geomspace(2, horizon, min(ANCHORS - 1, horizon - 1)) if horizon > 1 else []
    return np.unique(np.concatenate(([1], np.round(inner)))).astype(np.int64)


@lru_cache(maxsize=16)
def groups(horizon: int) -> np.ndarray:
    """For each step 1..H, the index of its anchor (the first anchor at or after it)."""
    return np.searchsorted(anchors(horizon), np.arange(1, horizon + 1))


@lru_cache(maxsize=16)
def spreading(horizon: int) -> np.ndarray:
    """(anchors, H) weights that interpolate per-anchor values linearly to every step."""
    a = anchors(horizon)
    eye = np.eye(len(a))
    return np.stack([np.interp(np.arange(1, horizon + 1), a, eye[i]) for i in range(len(a))])


def columns(horizon: int | None) -> dict[str, Column]:
    """Per-stream arrays: the ring of the last H origins, the candidates' running errors at the
    anchor steps, the choice and the interval half-widths (under 1 kB at H = 12)."""
    if not horizon:
        return {}
    h, na = horizon, len(anchors(horizon))
    return {
        # ring of origins, indexed by sample % H: last value, fast and slow level, one-step forecast,
        # deviation from the value one period before
        "hz_origin": Column((h, 5), np.float64, np.nan),
        "hz_pick": Column((h, na), np.uint8, FLAT),  # the candidate served at each anchor, per origin
        "hz_level": Column((2,), np.float64, np.nan),  # the fast and slow EWMA levels now
        "hz_mae": Column((na, C), np.float64, 0.0),  # running absolute errors at the anchor steps
        "hz_n": Column((na, C), np.int32, 0),
        "hz_choice": Column((na,), np.uint8, FLAT),
        "hz_smae": Column((na,), np.float64, 0.0),  # running error of the served path
        "hz_n_served": Column((na,), np.int32, 0),
        "hz_q": Column((na,), np.float64, np.nan),  # interval half-width at the anchor steps
    }


@lru_cache(maxsize=16)
def _alphas(alpha: float) -> np.ndarray:
    """The weights of the newest value in the fast and slow levels."""
    return np.array([alpha, SLOW_ALPHA])


@lru_cache(maxsize=16)
def z_of(coverage: float) -> float:
    """Half-width of a central ``coverage`` interval of a standard normal (1.28 for 80 %)."""
    return NormalDist().inv_cdf(0.5 + coverage / 2.0)


def _damping(steps: np.ndarray) -> np.ndarray:
    """1, 1 + PHI, 1 + PHI + PHI^2, ... at each step: how far the one-step change is continued."""
    return (1.0 - PHI**steps) / (1.0 - PHI)


@lru_cache(maxsize=16)
def _at_anchors(horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At the anchor steps of ``horizon``: the damping, the seasonal deviation's decay and zeros (to
    widen an (n, 1) index to the anchors); each round that realises errors needs them."""
    marks = anchors(horizon)
    out = _damping(marks), PHI_SEASONAL**marks, np.zeros_like(marks)
    for arr in out:
        arr.flags.writeable = False  # shared by every call
    return out


def candidates(
    origin: np.ndarray, seas: np.ndarray, steps: np.ndarray, horizon: int | None = None
) -> np.ndarray:
    """Every candidate's forecast (n, len(steps), C) from the origins (n, len(steps), 5) and the
    seasonal values (n, len(steps)) (``horizon``: the steps are its anchors)."""
    last, ewma, slow, fc1, dev = (origin[..., i] for i in range(5))
    damping, decay, _ = _at_anchors(horizon) if horizon else (_damping(steps), PHI_SEASONAL**steps, None)
    out = np.empty((*seas.shape, C))
    out[..., FLAT] = fc1
    out[..., PERSISTENCE] = last
    out[..., EWMA] = ewma
    out[..., SLOW] = slow
    out[..., DAMPED] = last + (fc1 - last) * damping
    out[..., SEASONAL] = seas
    out[..., SEASONAL_ADJ] = seas + dev * decay
    return out


def make_path(choice: np.ndarray, origin: np.ndarray, seas: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The path (n, H): at each step the chosen candidate's forecast from one origin per row (n, 5),
    computed only for the candidates some row chose; the flat forecast where that has none."""
    last, ewma, slow, fc1, dev = (origin[:, i : i + 1] for i in range(5))
    path = np.repeat(fc1, len(steps), axis=1)
    used = np.flatnonzero(np.bincount(choice.ravel(), minlength=C)).tolist()
    for c in used:
        if c == FLAT:
            continue
        if c == PERSISTENCE:
            value = last
        elif c == EWMA:
            value = ewma
        elif c == SLOW:
            value = slow
        elif c == DAMPED:
            value = last + (fc1 - last) * _damping(steps)
        elif c == SEASONAL:
            value = seas
        else:
            value = seas + dev * PHI_SEASONAL**steps
        np.copyto(path, np.broadcast_to(value, path.shape), where=choice == c)
    if SEASONAL in used or SEASONAL_ADJ in used:
        path = np.where(np.isfinite(path), path, fc1)  # a lost period: the flat forecast
    return path


def _seasonal(
    cols: dict, s: np.ndarray, target: np.ndarray, steps: np.ndarray, horizon: int | None = None
) -> np.ndarray:
    """The value one or more periods before each target sample index (n, len(steps)); NaN without a
    period or where that value is not in the seasonal ring (``horizon``: the steps are its anchors)."""
    if target.shape[1] != len(steps):  # (n, 1) -> (n, len(steps))
        target = target + (_at_anchors(horizon)[2] if horizon else np.zeros_like(steps))
    if "se_period" not in cols:
        return np.full(target.shape, np.nan)
    period = cols["se_period"][s]
    has = period > 1
    if not fastnp.any_true(has):
        return np.full(target.shape, np.nan)
    ring = cols["se_ring"]
    window = ring.shape[1]
    p = np.where(has, period, steps[-1])[:, None]
    if not fastnp.any_true(p < steps[-1]):  # every step within one period (the usual case): back = P
        back = p
    else:
        back = p * -(-steps // p)  # P * ceil(h / P): the nearest whole periods reaching the past
    src = target - back
    ok = has[:, None] & (src >= 0) & (back < window)
    vals = ring.reshape(-1)[s[:, None] * window + src % window]  # flat: cheaper than 2-D
    return np.where(ok, vals, np.nan)


def update(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    count: np.ndarray,
    fc1: np.ndarray,
    alpha: float,
    memory: int,
    coverage: float,
    seasonal_now: np.ndarray | None = None,
) -> None:
    """One sample ``x`` per slot (``count`` samples before it): fold the realised errors of the
    forecasts made for it (at every ``STRIDE``-th sample of a stream), then record this sample as
    the origin of the next path, with ``fc1`` (the served one-step forecast). ``seasonal_now``: the
    value one period before this sample (NaN without one), when the caller has it (the seasonal
    blend's naive forecast of it), else it is read from the seasonal ring."""
    h = cols["hz_origin"].shape[1]
    due = ((count + s) % STRIDE == 0).nonzero()[0]  # staggered: a share of the streams per batch
    if len(due) == len(s):
        _realise(cols, s, x, count, anchors(h), memory, coverage)
        _choose(cols, s)
    elif len(due):
        _realise(cols, s[due], x[due], count[due], anchors(h), memory, coverage)
        _choose(cols, s[due])
    levels = cols["hz_level"][s]
    levels = np.where(np.isnan(levels), x[:, None], levels + _alphas(alpha) * (x[:, None] - levels))
    cols["hz_level"][s] = levels
    dev = x - (_seasonal(cols, s, count[:, None], ONE)[:, 0] if seasonal_now is None else seasonal_now)
    at = count % h
    origin = np.empty((len(s), 5))  # last value, fast and slow level, one-step forecast, deviation
    origin[:, 0], origin[:, 1:3], origin[:, 3], origin[:, 4] = x, levels, fc1, dev
    cols["hz_origin"][s, at] = origin
    cols["hz_pick"][s, at] = cols["hz_choice"][s]


def current(
    cols: dict, s: np.ndarray, latest: np.ndarray, spread: np.ndarray, coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """The path made after sample ``latest`` (the newest origin of each slot) and the half-widths
    of its interval, (n, H) each; ``spread``: the served one-step spread, which sizes the interval
    of a step before its first errors."""
    h = cols["hz_origin"].shape[1]
    steps, marks = np.arange(1, h + 1), anchors(h)
    row = s * h + latest % h
    origin = cols["hz_origin"].reshape(-1, 5)[row]
    choice = cols["hz_pick"].reshape(-1, len(marks))[row]
    path = make_path(choice[:, groups(h)], origin, _seasonal(cols, s, latest[:, None] + steps, steps), steps)
    q = cols["hz_q"][s]
    guess = z_of(coverage) * spread[:, None] * np.sqrt(marks)  # before any error at that step
    return path, np.where(np.isnan(q), guess, q) @ spreading(h)


def _realise(
    cols: dict,
    s: np.ndarray,
    x: np.ndarray,
    count: np.ndarray,
    marks: np.ndarray,
    memory: int,
    coverage: float,
) -> None:
    """Fold every candidate's error of ``x`` at the anchor steps into its running error, and the
    served path's into the interval, where the origin (that many samples ago) exists."""
    h = cols["hz_origin"].shape[1]
    origin = count[:, None] - marks  # sample index each forecast of x was made after
    valid = origin >= 0
    if not fastnp.any_true(valid):
        return
    ring = origin % h
    rows = s[:, None]
    past = cols["hz_origin"].reshape(-1, 5)[rows * h + ring]  # (n, anchors, 5)
    cand = candidates(past, _seasonal(cols, s, count[:, None], marks, h), marks, h)
    err = np.subtract(x[:, None, None], cand, out=cand)
    np.minimum(np.abs(err, out=err), BIG, out=err)  # 1e308 - -1e308 must not poison a mean
    pick = cols["hz_pick"].reshape(-1)[(rows * h + ring) * len(marks) + np.arange(len(marks))]
    served = _pick(err, pick)
    served = np.where(np.isfinite(served), served, err[:, :, FLAT])  # as the path fell back
    _interval(cols, s, served, valid & np.isfinite(served), memory, coverage)
    ok = np.isfinite(err)
    ok &= valid[:, :, None]
    n = cols["hz_n"][s]
    n += ok
    mae = cols["hz_mae"][s]
    step = np.subtract(err, mae, out=err)
    step /= fastnp.clip(n, 1, memory)  # the exact mean while young, then 1 / memory
    np.add(mae, step, out=mae, where=ok)
    cols["hz_mae"][s] = mae
    cols["hz_n"][s] = n


def _interval(
    cols: dict, s: np.ndarray, err: np.ndarray, ok: np.ndarray, memory: int, coverage: float
) -> None:
    """The served path's running error and the conformal half-width at each anchor step."""
    n = cols["hz_n_served"][s] + ok
    err = np.where(ok, err, 0.0)
    smae = cols["hz_smae"][s]
    smae += np.where(ok, 1.0 / fastnp.clip(n, 1, memory), 0.0) * (err - smae)
    q = cols["hz_q"][s]
    stepped = np.maximum(q + ETA * smae * ((err > q) - (1.0 - coverage)), 0.0)
    fresh = (n < MIN_ERRORS) | np.isnan(q)
    q = np.where(ok, np.where(fresh, z_of(coverage) * MAD_TO_SIGMA * smae, stepped), q)
    cols["hz_n_served"][s] = n
    cols["hz_smae"][s] = smae
    cols["hz_q"][s] = q


def _choose(cols: dict, s: np.ndarray) -> None:
    """Per anchor step, the candidate with the lowest running error (once it has ``MIN_ERRORS``),
    kept unless another is better by ``MARGIN``; step 1 is always the served one-step forecast."""
    mae = np.where(cols["hz_n"][s] >= MIN_ERRORS, cols["hz_mae"][s], np.inf)
    best = mae.argmin(axis=2)
    choice = cols["hz_choice"][s].astype(np.intp)
    lowest, current = _pick(mae, best), _pick(mae, choice)
    with fastnp.errstate(invalid="ignore"):
        choice = np.where(lowest < (1.0 - MARGIN) * current, best, choice)
    choice[:, 0] = FLAT
    cols["hz_choice"][s] = choice


def after_swap(cols: dict, s: np.ndarray, count: np.ndarray, fc1: np.ndarray) -> None:
    """A new model made a new one-step forecast after the last sample: the newest origin's too."""
    if "hz_origin" not in cols:
        return
    seen = count > 0
    h = cols["hz_origin"].shape[1]
    cols["hz_origin"][s[seen], (count[seen] - 1) % h, 3] = fc1[seen]


def view(cols: dict, slots: np.ndarray, coverage: float) -> dict[str, np.ndarray]:
    """The current path and its interval for ``slots`` (NaN before a stream's first sample); empty
    when the horizon is off."""
    if "hz_origin" not in cols:
        return {}
    with np.errstate(all="ignore"):  # finite extremes (1e308) overflow on the way, as in Engine.process
        path, q = current(cols, slots, cols["count"][slots] - 1, cols["fc_spread"][slots], coverage)
        path[cols["count"][slots] == 0] = np.nan
        return {"path": path, "lower": path - q, "upper": path + q}


def spacing(ts_ring: np.ndarray) -> np.ndarray:
    """Median spacing of each row's recent timestamps (a ring, NaN where unused); NaN below two."""
    gaps = np.diff(np.sort(ts_ring, axis=1), axis=1)  # NaN sort last: their gaps are NaN
    gaps[~(gaps > 0)] = np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, as documented
        return np.nanmedian(gaps, axis=1)


def _pick(table: np.ndarray, which: np.ndarray) -> np.ndarray:
    """``table[i, j, which[i, j]]`` for every ``i, j`` (as ``take_along_axis`` on the last axis, which
    costs several times as much on the few rows of a round)."""
    n, m = which.shape
    return table[np.arange(n)[:, None], np.arange(m), which.astype(np.intp, copy=False)]
