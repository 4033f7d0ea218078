"""A logger that says each kind of trouble at most once per interval: a shared leaf, so that ingest,
outputs and the service can all rate-limit their warnings without importing one another."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLogger:
    """Log each reason at most once per ``interval_s``; the next line counts what was suppressed.

    ``reason`` keys should come from a small fixed set (reject reasons, conditions), not from
    stream names. Thread-safe; the clock is injectable so tests never sleep.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._level = level
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, reason: str, msg: str, *args: object, level: int | None = None) -> bool:
        """Log ``msg % args`` unless ``reason`` was logged within the interval; True if logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return False
            self._last[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        text = msg % args if args else msg
        if suppressed:
            text += f" (+{suppressed} similar suppressed in the last {now - last:.0f}s)"
        self._logger.log(self._level if level is None else level, "%s", text)
        return True

    def suppressed(self, reason: str) -> int:
        """Lines of ``reason`` suppressed since it was last logged."""
        with self._lock:
            return self._suppressed.get(reason, 0)

    def flush(self) -> None:
        """Log the counts still pending (at shutdown), so no suppressed line goes unmentioned."""
        with self._lock:
            pending, self._suppressed = self._suppressed, {}
        for reason, count in sorted(pending.items()):
            self._logger.log(self._level, "%s: %d similar lines suppressed", reason, count)
