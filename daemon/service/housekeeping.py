"""The engine thread's chores between batches: progress and the watchdog, the exported view, the
receive side's counters, idle expiry, discovery, the fine-tune and checkpoint schedules, and
giving freed heap pages back to the system."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from daemon.heap import HeapTrimmer
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.outputs.exposition import StreamExporter
from daemon.outputs.metrics import Metrics
from daemon.outputs.snapshot import SnapshotWriter
from daemon.service import notify
from daemon.service.checkpoints import Checkpoints
from daemon.service.homeassistant import DiscoveryFeed
from daemon.service.tuning import Tuning
from lstm_stream.engine import Engine

VIEW_EVERY_S = 0.5  # how often the engine thread hands a fresh per-stream view to the exporter
HOUSEKEEPING_EVERY_S = 1.0


class LinkCounters:
    """Copies the receive side's plain counters (:class:`LinkStats`, the queue's) into Prometheus.

    The network thread only bumps integers; this turns them into counter increments (deltas since
    the last copy) on the engine thread.
    """

    def __init__(self, stats: LinkStats, queue: IngestQueue, metrics: Metrics, queue_size: int) -> None:
        self.stats = stats
        self.queue = queue
        self.metrics = metrics
        self.queue_size = queue_size
        self._seen = {
            "received": 0,
            "rejected": dict.fromkeys(stats.rejected, 0),
            "dropped": 0,
            "blocked": 0.0,
            "connects": 0,
            "wal": (0, 0, 0),
        }
        self._lock = threading.Lock()  # the engine thread and the receiving thread both sync

    def sync(self) -> None:
        """Copy the network thread's plain counters into Prometheus (deltas since the last copy)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        st, seen = self.stats, self._seen
        rejected = {k: v - seen["rejected"].get(k, 0) for k, v in list(st.rejected.items())}
        self.metrics.observe_messages(st.received - seen["received"], rejected)
        seen["received"] = st.received
        seen["rejected"].update(st.rejected)
        dropped, blocked = self.queue.dropped, self.queue.blocked_s
        self.metrics.observe_queue(
            len(self.queue),
            self.queue_size,
            dropped - seen["dropped"],
            blocked - seen["blocked"],
        )
        seen["dropped"], seen["blocked"] = dropped, blocked
        if st.connects > 1 and st.connects > seen["connects"]:
            for _ in range(st.connects - max(seen["connects"], 1)):
                self.metrics.mqtt_reconnected()
        seen["connects"] = st.connects
        wal = (st.wal_bytes, st.wal_syncs, st.wal_failures)
        self.metrics.observe_wal(*(now - before for now, before in zip(wal, seen["wal"], strict=True)))
        seen["wal"] = wal


class Housekeeping:
    """Runs on the engine thread after each wait or batch (under the engine lock): what is due, when.

    :attr:`last_progress` is when it last ran, which /healthz and the watchdog go by.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        exporter: StreamExporter | SnapshotWriter,
        counters: LinkCounters,
        checkpoints: Checkpoints,
        tuning: Tuning,
        clock: Callable[[], float],
        watchdog_s: float | None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.exporter = exporter
        self.counters = counters
        self.checkpoints = checkpoints
        self.tuning = tuning
        self.clock = clock
        self.feed: DiscoveryFeed | None = None  # Home Assistant discovery, once the link exists
        self.last_progress = 0.0
        self._watchdog_s = watchdog_s
        self._last_watchdog = 0.0
        self._next_view = 0.0
        self._next_run = 0.0
        self.trimmer = HeapTrimmer()

    def run(self) -> None:
        """Progress and watchdog every time; the view twice a second; the rest once a second."""
        now = time.monotonic()
        self.last_progress = now
        self._watchdog(now)
        if now >= self._next_view:
            self._next_view = now + VIEW_EVERY_S
            t0 = time.thread_time()
            self.exporter.update(self.engine.view())  # CPU counted: what per-stream export costs here
            self.metrics.observe_exposition("publish", time.thread_time() - t0)
            self.counters.sync()
        if now < self._next_run:
            return
        self._next_run = now + HOUSEKEEPING_EVERY_S
        self.metrics.engine_progress()
        expired = self.engine.expire(self.clock())
        self.metrics.observe_streams(len(self.engine.streams), expired=len(expired))
        mem = self.engine.memory()
        self.metrics.observe_memory(
            {"state": mem["state_bytes"], "history": mem["history_bytes"], "exposition": self.exporter.nbytes}
        )
        if self.feed is not None:
            self.feed.housekeeping(expired)
        self.tuning.step(now)
        self.checkpoints.tick(now)
        self.trimmer.maybe_trim(now)

    def _watchdog(self, now: float) -> None:
        if self._watchdog_s and now - self._last_watchdog >= self._watchdog_s:
            notify.watchdog()
            self._last_watchdog = now
