"""Waiting in integration tests: poll a condition until it holds or a generous deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], what: str = "condition", timeout: float = 30.0, poll: float = 0.1
) -> T:
    """The first truthy value of ``predicate()``; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(poll)
