"""numpy helpers for the per-sample path, where a round may hold a single stream.

``np.clip`` goes through a Python wrapper that checks its arguments: about 15-20 us a call on small
arrays, and one engine round called it 15 times (a 1,000-sample array of one stream is 1,000 rounds).
Two ufuncs do the same in about 2 us, with the same NaN propagation. ``np.errstate`` costs 2-3 us
a use and a round used it 15 times, inside the engine's own ``errstate(all="ignore")`` where each
was a no-op: :func:`errstate` skips it there (:func:`ignoring_errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

_IGNORING: ContextVar[bool] = ContextVar("lstm_stream_ignoring_errors", default=False)
_NOTHING = contextlib.nullcontext()


@contextlib.contextmanager
def ignoring_errors() -> Iterator[None]:
    """``np.errstate(all="ignore")``, under which :func:`errstate` does nothing (it would ignore less)."""
    with np.errstate(all="ignore"):
        token = _IGNORING.set(True)
        try:
            yield
        finally:
            _IGNORING.reset(token)


def errstate(**kwargs: str) -> contextlib.AbstractContextManager:
    """``np.errstate(**kwargs)`` to ignore floating-point errors; nothing inside :func:`ignoring_errors`."""
    return _NOTHING if _IGNORING.get() else np.errstate(**kwargs)


def any_true(mask: Any) -> bool:
    """``mask.any()`` for the hot path (``ndarray.any`` goes through a Python wrapper: 2-3x the cost)."""
    return np.count_nonzero(mask) > 0


def clip(x: Any, lo: Any, hi: Any) -> Any:
    """``np.clip(x, lo, hi)`` for the hot path: ``min(max(x, lo), hi)``, NaN stays NaN."""
    return np.minimum(np.maximum(x, lo), hi)
