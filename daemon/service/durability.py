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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from daemon.ingest.queue import IngestQueue
from daemon.service import notify
from lstm_stream import wal
from lstm_stream.engine import Engine

log = logging.getLogger("lstm_stream.service")

KEY = "wal_applied"  # the checkpoint info key: log index one past the last applied sample
REPLAY_CHUNK = 16_384  # samples a replay call applies at most (a few MB of columns)


class Durability:
    """Log position bookkeeping for one service run (the folder, the cut, reading back the tail)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cut_below = 0  # the previous checkpoint's index: the log below it is no longer needed
        self._lock = threading.Lock()

    def replay(
        self,
        engine: Engine,
        checkpoint_info: dict[str, Any],
        now: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Apply every logged sample the restored checkpoint lacks (no outputs: they went out before
        the crash, if at all), seen at ``now`` as live samples are (idle expiry goes by it); returns
        the index the next logged sample gets. ``progress(done, total)`` precedes each chunk (the
        service keeps systemd's start timeout extended with it).

        Records (one per message) are joined into chunks of up to :data:`REPLAY_CHUNK` samples: the
        engine steps a stream's k samples in k rounds of fixed cost, so four streams' 100-sample
        arrays are 100 rounds of width four joined, against 400 rounds of width one apart."""
        after = int(checkpoint_info.get(KEY, 0))
        self.cut_below = after
        r = wal.replay(self.directory, after)
        for line in r.problems:
            log.warning("write-ahead log: %s (never acknowledged)", line)
        applied = done = 0
        total = r.samples
        for chunk in chunks(r.records, REPLAY_CHUNK):
            if progress is not None:
                progress(done, total)
            streams, ts, values = zip(*chunk, strict=True)
            res = engine.process(
                list(streams),
                np.asarray(ts, np.float64),
                list(values),
                now=now,
                limit_admission=False,  # taken in once already: the rate guards live arrivals
                paths=False,  # no outputs: the forecast paths would be dropped
            )
            applied += int(res.accepted.sum())
            done += len(chunk)
        if r.records:
            log.info(
                "write-ahead log: replayed %d samples after index %d (%d applied, the rest duplicates)",
                total,
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


class StartProgress:
    """A replay's progress before ``READY=1``: every ``every_s`` it asks systemd for ``extend_s`` more
    start time (``EXTEND_TIMEOUT_USEC``, so a long log cannot run out ``TimeoutStartSec`` and loop the
    unit through restarts) with a status line, and logs how far it got."""

    clock = staticmethod(time.monotonic)

    def __init__(self, every_s: float = 5.0, extend_s: float = 90.0) -> None:
        self.every_s = every_s
        self.extend_s = extend_s
        self._next = self.clock()  # the first chunk reports at once

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` samples applied."""
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.every_s
        line = f"replaying the write-ahead log: {done} of {total} samples"
        notify.extend_timeout(self.extend_s, line)
        log.info("%s", line)


def chunks(records: list[wal.Record], size: int) -> Iterator[list[wal.Sample]]:
    """The records' samples in log order, in lists of at most ``size`` (``size`` >= 1)."""
    chunk: list[wal.Sample] = []
    for rec in records:
        samples, at = rec.samples, 0
        while at < len(samples):
            room = size - len(chunk)
            chunk.extend(samples[at : at + room])
            at += room
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
