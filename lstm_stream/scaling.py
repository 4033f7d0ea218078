"""Online robust per-stream scaling, vectorised over slots.

Location and spread are exponentially weighted means of the value and of its absolute deviation,
with weight ``1/n`` while a stream is young (an exact running mean) and ``1/memory`` once warm.
Updates use deviations winsorised at ``winsor`` spreads, so a spike barely moves the scale while a
lasting level shift is followed. Only past and present values are used: nothing leaks from the
future, which is the seed's MinMaxScaler-on-all-data bug fixed for streams.
"""

from __future__ import annotations

import numpy as np

from . import fastnp
from .config import ScalerConfig
from .state import Column

MAX_ABS = 1e100  # values are clipped here for arithmetic: 1e300 never turns state into inf/NaN
MAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation for a Gaussian
WINSOR_AFTER = 8  # samples before winsorising starts (the spread is unknown before)

COLUMNS = {
    "sc_center": Column((), np.float64),
    "sc_mad": Column((), np.float64),
    "sc_n": Column((), np.int64),
}


def stats(cols: dict[str, np.ndarray], slots: np.ndarray, cfg: ScalerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Current (center, scale) of ``slots``; the scale is floored so it is never zero."""
    center = cols["sc_center"][slots]
    floor = cfg.min_scale * (np.abs(center) + 1.0)
    return center, np.maximum(cols["sc_mad"][slots] * MAD_TO_SIGMA, floor)


def update(
    cols: dict[str, np.ndarray],
    slots: np.ndarray,
    x: np.ndarray,
    cfg: ScalerConfig,
    scale_now: np.ndarray | None = None,
    bounded: bool = False,
) -> None:
    """Fold values ``x`` (one per slot, slots unique) into the scalers of ``slots``; ``scale_now``:
    their current scale (``stats``), when the caller has it; ``bounded``: ``x`` is within +-MAX_ABS."""
    if not bounded:
        x = fastnp.clip(x, -MAX_ABS, MAX_ABS)
    n = cols["sc_n"][slots] + 1
    center = np.where(n == 1, x, cols["sc_center"][slots])
    mad = cols["sc_mad"][slots]
    alpha = np.maximum(1.0 / n, 1.0 / cfg.memory)
    dev = x - center
    bound = cfg.winsor * (stats(cols, slots, cfg)[1] if scale_now is None else scale_now)
    dev = np.where(n > WINSOR_AFTER, fastnp.clip(dev, -bound, bound), dev)
    center = center + alpha * dev
    # the spread follows the deviation from the *updated* center (0 for the first sample)
    mad = np.where(n == 1, 0.0, mad + alpha * (np.abs(dev) * (1.0 - alpha) - mad))
    cols["sc_center"][slots] = center
    cols["sc_mad"][slots] = mad
    cols["sc_n"][slots] = n


def scale(x: np.ndarray, center: np.ndarray, sc: np.ndarray) -> np.ndarray:
    """Scaled values, finite whatever ``x`` is (clipped to +-MAX_ABS first)."""
    return (fastnp.clip(x, -MAX_ABS, MAX_ABS) - center) / sc


def observe(
    cols: dict[str, np.ndarray], slots: np.ndarray, x: np.ndarray, cfg: ScalerConfig, clip: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold values ``x`` into the scalers of ``slots`` (as :func:`update`). Returns the (center,
    scale) after, and ``x`` scaled with the stats before and after it, clipped at ``clip``, as one
    (2, n) float32 array: the previous step's training target and the model's input."""
    x = fastnp.clip(x, -MAX_ABS, MAX_ABS)
    center, sc = np.empty((2, len(slots))), np.empty((2, len(slots)))
    center[0], sc[0] = stats(cols, slots, cfg)
    update(cols, slots, x, cfg, sc[0], bounded=True)
    center[1], sc[1] = stats(cols, slots, cfg)
    return center[1], sc[1], fastnp.clip((x - center) / sc, -clip, clip).astype(np.float32)


class SeriesScaler:
    """The same online scaler run over whole series (one per row), for training data."""

    def __init__(self, cfg: ScalerConfig) -> None:
        self.cfg = cfg

    def transform(self, series: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each series: inputs z_t (scaled with stats including x_t) and targets y_t.

        y_t is x_{t+1} scaled with the stats of step t, exactly what the engine compares the
        forecast made at step t with; the last y is NaN (no next value).
        """
        k = len(series)
        lengths = np.array([len(s) for s in series])
        T = int(lengths.max()) if k else 0
        cols = {name: np.full(k, col.fill, dtype=col.dtype) for name, col in COLUMNS.items()}
        z = np.full((k, T), np.nan)
        y = np.full((k, T), np.nan)
        padded = np.full((k, T), np.nan)
        for i, s in enumerate(series):
            padded[i, : len(s)] = s
        prev_c = np.zeros(k)
        prev_s = np.ones(k)
        for t in range(T):
            live = np.nonzero(t < lengths)[0]
            xt = padded[live, t]
            if t > 0:
                y[live, t - 1] = scale(xt, prev_c[live], prev_s[live])
            update(cols, live, xt, self.cfg)
            c, sc = stats(cols, live, self.cfg)
            z[live, t] = scale(xt, c, sc)
            prev_c[live], prev_s[live] = c, sc
        clip = self.cfg.clip
        return [
            (
                fastnp.clip(z[i, :n], -clip, clip).astype(np.float32),
                fastnp.clip(y[i, :n], -clip, clip).astype(np.float32),
            )
            for i, n in enumerate(lengths)
        ]
