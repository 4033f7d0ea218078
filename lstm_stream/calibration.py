"""Per-stream tail calibration of the likelihood stage's deviation ``z`` (peaks over a threshold).

The likelihood stage standardises the recent error against a Gaussian fit of its own history, so a
score means "this rare under a Gaussian". Streams whose errors are heavy-tailed (bursty counts,
cloud metrics) reach 4-5 sigma every few days, and a Gaussian tail calls each of those a 1e-5 event.
Here each stream learns how often its ``z`` passes ``U0`` and the mean excess beyond it (an
exponential tail, the peaks-over-threshold model of SPOT, Siffer et al. KDD 2017); the score is
-log10 of that tail's probability / 10, as before. Both start at the Gaussian's values, so a stream
whose errors are Gaussian keeps (almost) the Gaussian's scores, and one that often goes far out gets
a heavier tail: the same score then means the same rarity on every stream.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from .state import Column

U0 = 2.0  # deviations beyond this feed the tail fit (2.3 % of a Gaussian's samples)
GAUSS_RATE = float(np.exp(log_ndtr(-U0)))  # P(z > U0) under a Gaussian: the rate's prior
GAUSS_EXCESS = float(np.exp(-U0 * U0 / 2) / np.sqrt(2 * np.pi) / GAUSS_RATE - U0)  # E[z - U0 | z > U0]
LOG_1E10 = np.log(1e10)

COLUMNS = {
    "tl_rate": Column((), np.float64, GAUSS_RATE),
    "tl_excess": Column((), np.float64, GAUSS_EXCESS),
}


def calibrated_score(
    cols: dict, slots: np.ndarray, z: np.ndarray, valid: np.ndarray, memory: int
) -> np.ndarray:
    """Score in [0, 1] of ``z`` under each stream's learnt tail; updates the tail with ``z``.

    Below ``U0`` the Gaussian tail (scaled to the learnt rate at ``U0``); beyond it
    rate * exp(-(z - U0) / mean excess). ``memory`` is in samples; the excess learns at the pace of
    the exceedances (one in ``1 / rate``), so both forget over the same stretch of the stream.
    """
    rate, excess = cols["tl_rate"][slots], cols["tl_excess"][slots]
    finite = valid & np.isfinite(z)
    zc = np.where(finite, z, -10.0)
    log_tail = np.where(
        zc > U0,
        np.log(rate) - (zc - U0) / excess,
        log_ndtr(-zc) + np.log(rate / GAUSS_RATE),
    )
    score = np.clip(-np.minimum(log_tail, 0.0) / LOG_1E10, 0.0, 1.0)
    a = 1.0 / memory
    over = finite & (zc > U0)
    cols["tl_rate"][slots] = np.where(finite, rate + a * (over - rate), rate)
    b = np.minimum(a / GAUSS_RATE, 1.0)
    cols["tl_excess"][slots] = np.where(over, excess + b * (np.minimum(zc - U0, 50.0) - excess), excess)
    return np.where(finite, score, 0.0)
