"""numpy helpers for the per-sample path, where a round may hold a single stream.

``np.clip`` goes through a Python wrapper that checks its arguments: about 15-20 us a call on small
arrays, and one engine round called it 15 times (a 1,000-sample array of one stream is 1,000 rounds).
Two ufuncs do the same in about 2 us, with the same NaN propagation. ``np.errstate`` costs 2-3 us
a use and a round used it 15 times, inside the engine's own ``errstate(all="ignore")`` where each
was a no-op: :func:`errstate` skips it there (:func:`ignoring_errors`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any

import numpy as np

_IGNORING: ContextVar[bool] = ContextVar("lstm_stream_ignoring_errors", default=False)
_NOTHING = contextlib.nullcontext()


try:  # the C functions behind ``np.count_nonzero`` (whose Python wrapper costs 8x the count on a
    # round) and ``np.einsum`` (which calls it as it is when not asked to optimize: half the cost)
    from numpy._core.multiarray import c_einsum as _einsum
    from numpy._core.multiarray import count_nonzero as _count_nonzero
except ImportError:  # pragma: no cover (another numpy layout)
    _count_nonzero, _einsum = np.count_nonzero, np.einsum


class ignoring_errors:  # noqa: N801 (used as the function it replaced: ``with ignoring_errors():``)
    """``np.errstate(all="ignore")``, under which :func:`errstate` does nothing (it would ignore less);
    a class, not a generator: a third of the cost per use."""

    __slots__ = ("_errstate", "_token")

    def __enter__(self) -> None:
        self._errstate = np.errstate(all="ignore")
        self._errstate.__enter__()
        self._token = _IGNORING.set(True)

    def __exit__(self, *exc: object) -> None:
        _IGNORING.reset(self._token)
        self._errstate.__exit__(*exc)


def errstate(**kwargs: str) -> contextlib.AbstractContextManager:
    """``np.errstate(**kwargs)`` to ignore floating-point errors; nothing inside :func:`ignoring_errors`."""
    return _NOTHING if _IGNORING.get() else np.errstate(**kwargs)


def any_true(mask: Any) -> bool:
    """``mask.any()`` for the hot path (``ndarray.any`` goes through a Python wrapper: 2-3x the cost)."""
    return _count_nonzero(mask) > 0


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row's dot product, ``np.einsum("nd,nd->n", a, b)`` (the same C call)."""
    return _einsum("nd,nd->n", a, b)


def count(mask: Any) -> int:
    """``np.count_nonzero(mask)`` without its Python wrapper."""
    return int(_count_nonzero(mask))


def clip(x: Any, lo: Any, hi: Any) -> Any:
    """``np.clip(x, lo, hi)`` for the hot path: ``min(max(x, lo), hi)``, NaN stays NaN."""
    return np.minimum(np.maximum(x, lo), hi)
