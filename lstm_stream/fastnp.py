"""numpy helpers for the per-sample path, where a round may hold a single stream.

``np.clip`` goes through a Python wrapper that checks its arguments: about 15-20 us a call on small
arrays, and one engine round called it 15 times (a 1,000-sample array of one stream is 1,000 rounds).
Two ufuncs do the same in about 2 us, with the same NaN propagation.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def any_true(mask: Any) -> bool:
    """``mask.any()`` for the hot path (``ndarray.any`` goes through a Python wrapper: 2-3x the cost)."""
    return np.count_nonzero(mask) > 0


def clip(x: Any, lo: Any, hi: Any) -> Any:
    """``np.clip(x, lo, hi)`` for the hot path: ``min(max(x, lo), hi)``, NaN stays NaN."""
    return np.minimum(np.maximum(x, lo), hi)
