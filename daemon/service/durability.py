"""The write-ahead log seen from the service: replay at start, the cut after checkpoints, the tail.

The receiver process writes the log (:mod:`lstm_stream.wal` segments in ``<state>/wal``) and acks
only what is fsynced there; the service applies samples in log order, so "applied up to index N"
is one number, saved with every checkpoint as ``info["wal_applied"]``. At start the newest good
checkpoint is restored and every logged sample from its index on is applied again; after a
checkpoint is durable the log is cut below the *previous* checkpoint's index, so a newest
checkpoint that cannot be loaded later still has its log to replay from the one before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from daemon.ingest.queue import IngestQueue
from lstm_stream import wal
from lstm_stream.engine import Engine

log = logging.getLogger("lstm_stream.service")

KEY = "wal_applied"  # the checkpoint info key: log index one past the last applied sample


class Durability:
    """Log position bookkeeping for one service run (the folder, the cut, reading back the tail)."""

    def __init__(self, directory: Path, batch_max: int) -> None:
        self.directory = directory
        self.batch_max = batch_max
        self.cut_below = 0  # the previous checkpoint's index: the log below it is no longer needed
        self._lock = threading.Lock()

    def replay(self, engine: Engine, checkpoint_info: dict[str, Any], now: float) -> int:
        """Apply every logged sample the restored checkpoint lacks (no outputs: they went out before
        the crash, if at all), seen at ``now`` as live samples are (idle expiry goes by it); returns
        the index the next logged sample gets."""
        after = int(checkpoint_info.get(KEY, 0))
        self.cut_below = after
        r = wal.replay(self.directory, after)
        for line in r.problems:
            log.warning("write-ahead log: %s (never acknowledged)", line)
        applied = 0
        for rec in r.records:
            for i in range(0, len(rec.samples), self.batch_max):
                chunk = rec.samples[i : i + self.batch_max]
                streams, ts, values = zip(*chunk, strict=True)
                res = engine.process(
                    list(streams),
                    np.asarray(ts, np.float64),
                    list(values),
                    now=now,
                    limit_admission=False,  # taken in once already: the rate guards live arrivals
                )
                applied += int(res.accepted.sum())
        if r.records:
            log.info(
                "write-ahead log: replayed %d samples after index %d (%d applied, the rest duplicates)",
                r.samples,
                after,
                applied,
            )
        return r.next_index

    def tail(self, queue: IngestQueue, after: int) -> int:
        """Queue what a receiver logged (and acked) past ``after`` but never sent (it was killed or
        stopped); returns the index the next logged sample gets."""
        r = wal.replay(self.directory, after)
        for rec in r.records:
            queue.put_many(rec.samples)
        if r.records:
            log.info("write-ahead log: %d logged samples read back from the log", r.samples)
        return r.next_index

    def saved(self, info: dict[str, Any], rotate: Callable[[], None] | None) -> None:
        """A checkpoint holding everything below ``info[KEY]`` is durable: cut below the previous
        one, and ask the receiver for a new segment (so this one can be cut next time)."""
        if KEY not in info:
            return
        with self._lock:
            gone = wal.cut(self.directory, self.cut_below)
            self.cut_below = max(self.cut_below, int(info[KEY]))
        if gone:
            log.debug("write-ahead log: %d segments cut", len(gone))
        if rotate is not None:
            rotate()
