"""glibc, for the two heap calls the long-running processes make (``mallopt``, ``malloc_trim``)."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def libc() -> ctypes.CDLL | None:
    """The C library, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def function(name: str) -> ctypes._CFuncPtr | None:
    """``name`` from the C library, or None where it has none (not glibc)."""
    return getattr(libc(), name, None)
