"""Anomaly scoring, vectorised over streams: residual -> likelihood score -> flag, plus rules.

The likelihood stage follows Numenta's anomaly likelihood (see ``docs/detection.md`` in shared):
a short exponentially weighted mean of the standardised error is compared with a Gaussian fitted to
its own long-run history; the one-sided tail probability ``q`` becomes ``-log10(q) / 10`` clipped to
[0, 1] (a tail of 1e-5 reads 0.5). Where the stream has a period, the error against the value one
period ago gets the same treatment (reason ``seasonal``: a day whose shape changes, though each step
of it is easy to forecast). Three rules add their own reasons: a value beyond the range seen so far,
a flat line far longer than any the stream showed before, and a level shift of a noisy metric (the
value's recent level far from its own history, though no single step is). Flags are suppressed
during warm-up, within one event, and for a while after a flag (longer for the likelihood, whose
statistics settle slowly after an event, than for the rules), unless a new record far from the
forecast (a surprise of its own, not an echo of the flagged event) comes within that while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import fastnp
from .config import ScoringConfig
from .state import Column

REASONS = ("", "likelihood", "range", "flatline", "regime_change", "seasonal", "level")
NONE, LIKELIHOOD, RANGE, FLATLINE, REGIME, SEASONAL, LEVEL = range(len(REASONS))
LOG_1E10 = np.log(1e10)
Z_SURE = 10.0  # a deviation this large scores 1 anyway (tail 8e-24): erfc of more would underflow to 0
MAX_ERR = 1e6  # standardised errors are clipped here: one wild value cannot poison the statistics
SCORE_AFTER = 8  # errors of a stream's first samples (scaler not yet settled) are not scored
MIN_LONG_N = 10  # long-run samples before the likelihood says anything
REL_STD_FLOOR = 0.1  # the long-run spread is at least this fraction of its mean (no 0-width fits)
WHITE_STEP = (
    np.sqrt(np.pi) / 2
)  # white noise's spread per mean absolute step: E|x1 - x0| = 2 sigma / sqrt(pi)

# the three EW horizons of the error (short, mid, seasonal: HORIZONS) are rows of two blocks, so a round
# gathers, updates and scatters them as one (3, n) array per quantity
HORIZONS = ("", "mid_", "sr_")
EW_F, EW_N = "ew_f", "ew_n"  # blocks: short average, long-run mean and variance; error and long-run counts

COLUMNS = {
    **{p + "err_short": Column((), np.float64, block=EW_F) for p in HORIZONS},
    **{p + "lr_mean": Column((), np.float64, block=EW_F) for p in HORIZONS},
    **{p + "lr_var": Column((), np.float64, block=EW_F) for p in HORIZONS},
    **{p + "err_n": Column((), np.int64, block=EW_N) for p in HORIZONS},
    **{p + "lr_n": Column((), np.int64, block=EW_N) for p in HORIZONS},
    "lv_level": Column((), np.float64),
    "lv_n": Column((), np.int64),
    "lv_mean": Column((), np.float64),
    "lv_var": Column((), np.float64),
    "cond_prev": Column((), np.bool_),
    "rule_prev": Column((), np.bool_),
    "since_flag": Column((), np.int64, 1 << 40),
    "run_len": Column((), np.int64),
    "rng_min": Column((), np.float64, np.inf),
    "rng_max": Column((), np.float64, -np.inf),
    "prev_x": Column((), np.float64, np.nan),
    "prev_fc": Column((), np.float64, np.nan),
    "step_mad": Column((), np.float64),
    "step_n": Column((), np.int64),
    "flat_run": Column((), np.int64),
    "flat_longest": Column((), np.int64),
}


@dataclass
class Scored:
    """Per-sample scoring output, aligned with the slots passed in."""

    score: np.ndarray  # float64 in [0, 1]
    condition: np.ndarray  # bool: anomalous now (flagged or not); such points are kept out of training
    flag: np.ndarray  # bool: a new alert
    reason: np.ndarray  # uint8 index into REASONS (0 where not flagged)


def likelihood(short: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Score in [0, 1] from the one-sided Gaussian tail of ``short`` under (mean, var)."""
    return tail_score((short - mean) / _std(mean, var))


def tail_score(z: np.ndarray) -> np.ndarray:
    """Score in [0, 1] of a standardised deviation: -log10(one-sided tail) / 10.

    The tail is ``erfc(z / sqrt 2) / 2`` by ``math.erfc`` per value (scores within 6e-16 of scipy's
    ``log_ndtr``, whose import cost the daemon 26 MB)."""
    x = np.minimum(np.asarray(z, dtype=np.float64), Z_SURE).ravel() * math.sqrt(0.5)
    tail = np.fromiter(map(math.erfc, x.tolist()), np.float64, x.size).reshape(np.shape(z))
    return fastnp.clip(np.log(0.5 * tail) / -LOG_1E10, 0.0, 1.0)  # -(a / b) is a / -b, bit for bit


def _std(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Long-run spread, at least ``REL_STD_FLOOR`` of the mean (no 0-width fits)."""
    return np.maximum(np.sqrt(np.maximum(var, 0.0)), REL_STD_FLOOR * np.abs(mean) + 1e-6)


def _ew(n: np.ndarray, memory: int | np.ndarray, counted: bool = False) -> np.ndarray:
    """Weight of the newest sample: exact mean while young, 1/memory once warm (``counted``: every
    ``n`` is at least 1 already)."""
    return np.maximum(1.0 / (n if counted else np.maximum(n, 1)), 1.0 / memory)


def _long_memory(cols: dict, slots: np.ndarray, cfg: ScoringConfig) -> int | np.ndarray:
    """The long-run fit's memory: ``long_memory``, or per stream at least ``long_periods`` of its period."""
    if not cfg.long_periods or "se_period" not in cols:
        return cfg.long_memory
    return np.maximum(cfg.long_memory, cfg.long_periods * cols["se_period"][slots])


@lru_cache(maxsize=8)
def _alphas(*spans: int) -> np.ndarray:
    """The EW weight of the newest error at each horizon, a column: ``2 / (span + 1)``."""
    return np.array([[2.0 / (span + 1.0)] for span in spans])


def _horizons(
    cols: dict, slots: np.ndarray, err: np.ndarray, valid: np.ndarray, cfg: ScoringConfig
) -> np.ndarray:
    """Every horizon at once: EW average of ``err`` (rows: short, mid, seasonal) over its span vs a
    Gaussian of its own long-run history, updated where ``valid`` (a row that is off: nowhere).

    Returns the standardised deviations (3, n), -inf where there is nothing to score yet; the score is
    monotonic in them, so horizons are combined by their largest deviation and the tail computed once.
    """
    alpha_s = _alphas(cfg.short_window, cfg.mid_window or 1, cfg.seasonal_window or 1)
    f = cols.blocks[EW_F].take(slots, axis=1)  # (9, n): short averages, means, variances
    c = cols.blocks[EW_N].take(slots, axis=1)  # (6, n): error counts, long-run counts
    prev, mean, var, n_err, lr_n = f[0:3], f[3:6], f[6:9], c[0:3], c[3:6]
    short = np.where(n_err == 0, err, prev + alpha_s * (err - prev))
    std = _std(mean, var)
    delta = short - mean
    fitted = lr_n >= MIN_LONG_N
    z = np.where(valid & fitted, delta / std, -np.inf)
    n1 = lr_n + 1
    a = _ew(n1, _long_memory(cols, slots, cfg), counted=True)
    if cfg.long_winsor is not None:  # an anomaly moves the long-run fit by at most k spreads
        bound = cfg.long_winsor * std
        delta = np.where(fitted, fastnp.clip(delta, -bound, bound), delta)
    new_mean = mean + a * delta
    new_var = np.where(n1 == 1, 0.0, (1.0 - a) * (var + a * delta * delta))
    np.copyto(prev, short, where=valid)
    np.copyto(mean, new_mean, where=valid)
    np.copyto(var, new_var, where=valid)
    c.reshape(2, 3, len(slots))[:] += valid  # both counts of each horizon
    cols.blocks[EW_F][:, slots] = f
    cols.blocks[EW_N][:, slots] = c
    return z


def _level_deviation(
    cols: dict, slots: np.ndarray, x: np.ndarray, valid: np.ndarray, cfg: ScoringConfig
) -> tuple[np.ndarray, tuple]:
    """How far the value's recent level (EW span ``level_window``) has left a Gaussian of its own
    long-run history, two-sided (-inf before warm-up), and what :func:`_level_update` needs: where
    its score passes the likelihood threshold, the rule sees a level shift of a noisy metric.

    The spread is at least ``level_floor`` times what white noise alone gives such an average (from
    the stream's typical step). The scorer computes this tail score with the likelihood's, in one call.
    """
    alpha = 2.0 / (cfg.level_window + 1.0)
    n = cols["lv_n"][slots]
    prev = cols["lv_level"][slots]
    level = np.where(n == 0, x, prev + alpha * (x - prev))
    mean, var = cols["lv_mean"][slots], cols["lv_var"][slots]
    noise = WHITE_STEP * np.sqrt(alpha / (2.0 - alpha)) * cols["step_mad"][slots]
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), cfg.level_floor * noise + 1e-12)
    delta = level - mean
    ok = valid & np.isfinite(x)
    with fastnp.errstate(invalid="ignore"):
        z = np.where(ok & (n >= max(cfg.warmup, MIN_LONG_N)), np.abs(delta) / std, -np.inf)
    return z, (n, prev, level, mean, var, delta, ok)


def _level_update(
    cols: dict, slots: np.ndarray, parts: tuple, shift: np.ndarray, cfg: ScoringConfig
) -> np.ndarray:
    """Fold the level into its long-run history; where the rule fired (``shift``) the long-run mean
    jumps to the new level, so a shift is reported once and the new level is normal from then on.
    Returns where the rule fires."""
    n, prev, level, mean, var, delta, ok = parts
    a = _ew(n + 1, cfg.long_memory, counted=True)
    new_mean = np.where((n == 0) | shift, level, mean + a * delta)
    new_var = np.where((n == 0) | shift, var, (1.0 - a) * (var + a * delta * delta))
    cols["lv_level"][slots] = np.where(ok, level, prev)
    cols["lv_n"][slots] = n + ok
    cols["lv_mean"][slots] = np.where(ok, new_mean, mean)
    cols["lv_var"][slots] = np.where(ok, new_var, var)
    return shift & ok


def _range_rule(cols: dict, slots: np.ndarray, x: np.ndarray, cfg: ScoringConfig) -> np.ndarray:
    """True where ``x`` leaves the range seen so far by more than ``range_margin`` of it."""
    lo, hi = cols["rng_min"][slots], cols["rng_max"][slots]
    cols["rng_min"][slots] = np.minimum(lo, x)
    cols["rng_max"][slots] = np.maximum(hi, x)
    if cfg.range_margin is None:
        return np.zeros(len(slots), dtype=bool)
    span = hi - lo
    margin = cfg.range_margin * span
    if cfg.range_steps:  # a record must also beat the old one by more than the stream's typical step
        margin = np.maximum(margin, cfg.range_steps * cols["step_mad"][slots])
    with fastnp.errstate(invalid="ignore"):
        return (span > 0) & ((x > hi + margin) | (x < lo - margin))


def _flatline_rule(cols: dict, slots: np.ndarray, x: np.ndarray, cfg: ScoringConfig) -> np.ndarray:
    """True while the value has been stuck longer than ever before (and at least the window)."""
    prev = cols["prev_x"][slots]
    step = np.abs(x - prev)
    has_prev = ~np.isnan(prev)
    mad = cols["step_mad"][slots]
    ratio = cfg.flatline_ratio if cfg.flatline_ratio is not None else -1.0
    stuck = has_prev & (mad > 0) & (step <= ratio * mad)
    flat_run = cols["flat_run"][slots]
    run = np.where(stuck, flat_run + 1, 0)
    longest = cols["flat_longest"][slots]
    ended = ~stuck & (flat_run > 0)
    if fastnp.any_true(ended):  # a stuck run ended (rare): the longest one may grow
        cols["flat_longest"][slots] = np.where(ended, np.maximum(longest, flat_run), longest)
    cols["flat_run"][slots] = run
    moving = has_prev & ~stuck
    n = cols["step_n"][slots] + moving
    a = _ew(n, 1000)
    cols["step_mad"][slots] = np.where(moving, mad + a * (np.minimum(step, 1e100) - mad), mad)
    cols["step_n"][slots] = n
    cols["prev_x"][slots] = x
    if cfg.flatline_ratio is None:
        return np.zeros(len(slots), dtype=bool)
    return run >= np.maximum(cfg.flatline_window, 2 * longest + 1)


def standardised_error(residual: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """log(1 + |residual| / spread): heavy tails tamed so a Gaussian fits its short averages."""
    with fastnp.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.log1p(np.abs(residual) / spread)
    return fastnp.clip(np.where(np.isnan(err), 0.0, err), 0.0, MAX_ERR)  # +inf -> MAX_ERR, -inf -> 0


def score(
    cols: dict,
    slots: np.ndarray,
    x: np.ndarray,
    residual: np.ndarray,
    spread: np.ndarray,
    count: np.ndarray,
    cfg: ScoringConfig,
    seasonal_residual: np.ndarray | None = None,
    seasonal_spread: np.ndarray | None = None,
) -> Scored:
    """Score one sample per slot (slots unique): update statistics and decide flags.

    ``residual``/``spread`` compare the value with the forecast made one step earlier (NaN for a
    stream's first sample); ``count`` is how many samples each stream had before this one.
    ``seasonal_residual``/``seasonal_spread`` compare it with the value one period earlier (NaN where
    the stream has no period): a day whose shape changes shows there even when each step is easy.
    """
    has_forecast = count >= SCORE_AFTER
    n = len(slots)
    seasonal = bool(cfg.seasonal_window) and seasonal_residual is not None and seasonal_spread is not None
    # the errors against this forecast, the one before (spike_once) and the value one period ago, as one
    residuals, spreads = np.empty((3, n)), np.empty((3, n))
    residuals[0], spreads[0:2] = residual, spread
    if cfg.spread_floor:  # a spread that shrank in a silence is no narrower than the stream's steps
        np.maximum(spreads[0:2], cfg.spread_floor * cols["step_mad"][slots], out=spreads[0:2])
    if cfg.spike_once:
        prev = cols["prev_fc"][slots]
        residuals[1] = x - prev
    else:
        residuals[1] = np.nan
    residuals[2], spreads[2] = (seasonal_residual, seasonal_spread) if seasonal else (np.nan, 1.0)
    errs = standardised_error(residuals, spreads)
    err = errs[0]
    if cfg.spike_once:  # a forecast that copied a lone outlier: its return is no second surprise
        fc = x - residual
        cols["prev_fc"][slots] = fc
        err = np.where(np.isfinite(prev) & np.isfinite(fc), np.minimum(err, errs[1]), err)
    valid = np.zeros((3, n), dtype=bool)
    valid[0] = has_forecast
    if cfg.mid_window:  # a second, longer average: a sustained drift of the error
        valid[1] = has_forecast
    if seasonal:
        with fastnp.errstate(invalid="ignore"):
            valid[2] = has_forecast & np.isfinite(seasonal_residual) & (seasonal_spread > 0)
    errs[0:2] = err  # the short and mid horizons average the same error
    z_all = _horizons(cols, slots, errs, valid, cfg)
    z = np.maximum(z_all[0], z_all[1])  # -inf where a horizon is off
    by_season = z_all[2] > z
    # the likelihood's deviation and the level rule's (before the flat-line rule updates the typical
    # step with this sample): one tail score
    zs = np.empty((2, n))
    np.maximum(z, z_all[2], out=zs[0])
    if cfg.level_window:
        zs[1], level_parts = _level_deviation(cols, slots, x, has_forecast, cfg)
    tails = tail_score(zs if cfg.level_window else zs[:1])
    lik = tails[0]
    # a young stream is still exploring its range: its new records say little
    out_of_range = _range_rule(cols, slots, x, cfg) & (count >= cfg.range_warmup)
    level = np.zeros(n, dtype=bool)
    if cfg.level_window:
        level = _level_update(cols, slots, level_parts, tails[1] >= cfg.threshold, cfg)
    flat = _flatline_rule(cols, slots, x, cfg)
    by_rule = out_of_range | flat | level
    cond = (lik >= cfg.threshold) | by_rule
    value = np.where(by_rule, 1.0, lik)
    eligible = count >= cfg.warmup
    since = cols["since_flag"][slots]
    onset = _rule_onset(cols, slots, by_rule) if cfg.rule_onset else None  # keeps rule_prev every round
    if fastnp.any_true(cond):
        new_event = cond & ~cols["cond_prev"][slots]
        if onset is not None:
            new_event |= onset
        quiet = since >= cfg.suppress
        if cfg.record_pass and fastnp.any_true(out_of_range):
            # a record the forecast did not expect either is news, not an echo of the last flag
            with fastnp.errstate(invalid="ignore"):
                quiet |= out_of_range & (np.abs(residual) > cfg.record_pass * spread)
        if cfg.likelihood_suppress:
            quiet &= _aftermath_passed(since, by_rule, cfg.likelihood_suppress)
        flag = eligible & new_event & quiet
        run = np.where(cond, cols["run_len"][slots] + 1, 0)
    else:  # nothing anomalous in this round (most rounds): no flag, and every run of conditions ends
        flag = np.zeros(n, dtype=bool)
        run = np.zeros(n, dtype=np.int64)
    regime = None
    if cfg.regime_after is not None:
        regime = eligible & (run == cfg.regime_after)
        if fastnp.any_true(regime):
            _reset_long_run(cols, slots[regime], x[regime])
        flag |= regime
    reason = np.zeros(len(slots), dtype=np.uint8)  # NONE where not flagged (most rounds: everywhere)
    if fastnp.any_true(flag):
        reason = np.where(
            out_of_range,
            RANGE,
            np.where(flat, FLATLINE, np.where(by_season, SEASONAL, np.where(level, LEVEL, LIKELIHOOD))),
        ).astype(np.uint8)
        if regime is not None:
            reason = np.where(regime, REGIME, reason).astype(np.uint8)
        reason = np.where(flag, reason, NONE).astype(np.uint8)
    cols["run_len"][slots] = run
    cols["cond_prev"][slots] = cond
    cols["since_flag"][slots] = np.where(flag, 0, since + 1)
    return Scored(value, cond, flag, reason)


def _rule_onset(cols: dict, slots: np.ndarray, by_rule: np.ndarray) -> np.ndarray:
    """True where a rule starts to hold: news of its own even while a likelihood condition that began
    earlier goes on (one held back by ``likelihood_suppress`` would otherwise hide it)."""
    onset = by_rule & ~cols["rule_prev"][slots]
    cols["rule_prev"][slots] = by_rule
    return onset


def _aftermath_passed(since: np.ndarray, by_rule: np.ndarray, wait: int) -> np.ndarray:
    """False for a likelihood or seasonal surprise within ``wait`` samples of the last flag: the error
    statistics and the forecast's spread are still settling after that event, so it is its aftermath;
    a rule (range, level, flat line) compares the value with its history directly and is news of its own."""
    return by_rule | (since >= wait)


def _reset_long_run(cols: dict, slots: np.ndarray, x: np.ndarray) -> None:
    """A lasting new regime: forget the long-run error statistics and the seen range."""
    cols["lr_n"][slots] = 0
    cols["lr_mean"][slots] = 0.0
    cols["lr_var"][slots] = 0.0
    cols["rng_min"][slots] = x
    cols["rng_max"][slots] = x
