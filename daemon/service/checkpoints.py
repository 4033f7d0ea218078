"""Checkpoints of the running engine: on a schedule without stalling ingestion, and a final one at exit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.outputs.metrics import Metrics
from daemon.ratelog import RateLimitedLogger
from lstm_stream import checkpoint
from lstm_stream.checkpoint import CheckpointStore
from lstm_stream.engine import Engine

log = logging.getLogger("lstm_stream.service")


class Checkpoints:
    """Writes the engine's state to ``store`` every ``interval_s`` (in the background) and on demand.

    Outcomes go to the metrics; a failure (a full disk) is counted and logged, never raised: the
    service goes on.
    """

    def __init__(
        self,
        store: CheckpointStore,
        engine: Engine,
        metrics: Metrics,
        rate_log: RateLimitedLogger,
        interval_s: float,
        info: Callable[[], dict[str, Any]] | None = None,
        on_saved: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``info()`` is saved with each snapshot (taken with it, under the engine lock: the log
        position it covers); ``on_saved(info)`` runs once that checkpoint is durable (the log cut)."""
        self.store = store
        self._info = info
        self._on_saved = on_saved
        self.failed = False  # the last write failed
        self.engine = engine
        self.metrics = metrics
        self._rlog = rate_log
        self.interval_s = interval_s
        self.next_at = 0.0
        self._thread: threading.Thread | None = None

    def schedule(self, now: float) -> None:
        """The first periodic checkpoint is due ``interval_s`` after ``now`` (monotonic seconds)."""
        self.next_at = now + self.interval_s

    def tick(self, now: float) -> None:
        """Engine thread, at housekeeping: start a background checkpoint when one is due."""
        if now >= self.next_at:
            self.next_at = now + self.interval_s
            self.write(background=True)

    def join(self) -> None:
        """Wait for a background checkpoint still being written."""
        if self._thread is not None:
            self._thread.join()

    def write(self, background: bool = False) -> bool:
        """Checkpoint now. ``background``: copy the arrays here (tens of ms for 10k streams) and
        leave the encoding, checksum and fsync to a thread, so ingestion does not wait for the disk."""
        if background and self._thread is not None and self._thread.is_alive():
            return True  # the previous one is still being written: skip this turn
        t0 = time.monotonic()
        try:
            parts = checkpoint.snapshot_parts(self.engine, self._info() if self._info else None)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the service goes on
            self._done(None, exc, t0)
            return False
        if not background:
            self._write(parts, t0)
            return not self.failed
        self._thread = threading.Thread(target=self._write, args=(parts, t0), name="checkpoint", daemon=True)
        self._thread.start()
        return True

    def _write(self, parts: tuple, t0: float) -> None:
        try:
            path = self.store.save_parts(*parts)
        except Exception as exc:  # a full disk must not stop the service; it is counted and logged
            self._done(None, exc, t0)
            return
        self._done(path, None, t0)
        if self._on_saved is not None:
            try:
                self._on_saved(parts[1].get("info", {}))
            except Exception as exc:  # noqa: BLE001 - the log is cut at the next checkpoint instead
                self._rlog.log("wal_cut", "cutting the write-ahead log failed: %s", exc)

    def _done(self, path: Path | None, exc: Exception | None, t0: float) -> None:
        seconds = time.monotonic() - t0
        self.metrics.observe_checkpoint(path is not None, seconds)
        self.failed = path is None
        if path is None:
            self._rlog.log("checkpoint", "checkpoint failed: %s", exc)
            return
        log.info("checkpoint %s (%d streams, %.2fs)", path.name, len(self.engine.streams), seconds)
