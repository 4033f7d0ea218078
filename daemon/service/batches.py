"""Micro-batches through the engine, and their results out: metrics, anomaly events, forecasts, discovery.

Two threads run batches, one at a time under :attr:`Batches.lock`: the thread that receives samples
runs the due ones (under load), the engine thread what light load leaves waiting.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from daemon.ingest.columns import EMPTY, ColumnQueue, Columns
from daemon.ingest.queue import IngestQueue
from daemon.outputs.events import EventPublisher
from daemon.outputs.metrics import Metrics, code_counts
from daemon.ratelog import RateLimitedLogger
from daemon.service.homeassistant import DiscoveryFeed
from daemon.service.tuning import Tuning
from daemon.settings import Settings
from lstm_stream import scoring
from lstm_stream.engine import DEFERRED, NEW_STREAM_RATE, OVER_CAPACITY, REJECTS, Engine, Results

LATENCY_SANE_S = 300.0  # sample timestamps further off than this are historic data, not latency
# carried samples handed to the engine per batch: it applies at most stream_batch_max of a stream anyway,
# and a long carry passed whole would cost every batch its bookkeeping (admission, result columns)
CARRY_HEAD = 1024

log = logging.getLogger(__name__)


class Batches:
    """Takes micro-batches off the queue, runs them through the engine and sends the results out.

    ``on_error(exc)`` is told when a batch run on the receiving thread fails (a bug): the service
    stops with exit status 1, as when the engine loop dies.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        queue: IngestQueue | ColumnQueue,
        metrics: Metrics,
        events: EventPublisher,
        tuning: Tuning,
        clock: Callable[[], float],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.metrics = metrics
        self.events = events
        self.tuning = tuning
        self.clock = clock
        self._on_error = on_error
        self.feed: DiscoveryFeed | None = None  # Home Assistant discovery, once the link exists
        self.batch_max = settings.ingest.batch_max
        self.period = settings.ingest.batch_ms / 1000.0
        # how old the oldest queued sample must be for an inline batch: the receiver process and the
        # NATS reader have waited batch_ms already, so what they queue is processed at once
        waited = settings.ingest.receiver == "process" or settings.ingest.source == "nats"
        self._inline_age = 0.0 if waited else self.period
        self._forecasts = bool(settings.mqtt.forecast_topic)
        # the engine is used by the MQTT thread (due batches, under load) and the engine thread
        # (batches left waiting under light load, housekeeping): one at a time
        self.lock = threading.Lock()
        # samples of one stream applied per batch (engine max_rounds); the rest are carried, in log order,
        # to the front of the next batch, so one long array cannot hold every other stream up
        self.max_rounds = settings.ingest.stream_batch_max
        ms = settings.ingest.stream_batch_ms  # and the time for rounds after the first (engine.rounds)
        self.round_budget_s = None if ms is None else ms / 1000.0
        self._carry: Columns = EMPTY  # samples deferred by the engine, oldest first
        self._carry_at = np.empty(0, dtype=np.int64)  # their log indices
        self._carry_next = 0.0  # monotonic time from which a batch may spend stream_batch_ms on narrow rounds
        self._taken = 0  # log index one past the last sample taken off the queue (it keeps log order)
        self.inline = True  # run batches on the receiving thread (off while shutting down)
        self._torch_threads = threading.local()  # .set once torch's thread count is set in a thread
        self._rlog = RateLimitedLogger(log, settings.log.rate_limit_s)  # new streams not admitted

    def process_inline(self) -> None:
        """On the receiving thread after each enqueue: run a due micro-batch (``batch_max`` queued, or
        the oldest sample ``batch_ms`` old; with the receiver process, whatever arrived) right here.
        Under load this keeps receiving and the engine in one thread, so they do not hand the GIL to
        each other thousands of times a second. Skipped while the engine thread holds the engine: it
        will take the batch."""
        if not self.inline or not self.queue.due(self.batch_max, self._inline_age):
            return
        if not self.lock.acquire(blocking=False):
            return
        try:
            self.process(self.queue.drain(self.batch_max))
        except Exception as exc:  # as loud as the engine loop dying: exit 1, systemd restarts
            self._on_error(exc)
        finally:
            self.lock.release()

    @property
    def applied(self) -> int:
        """Log index below which every sample was applied (what a checkpoint records): the first
        carried sample's (the carry is kept in log order), else one past the last taken."""
        return int(self._carry_at[0]) if len(self._carry_at) else self._taken

    @applied.setter
    def applied(self, index: int) -> None:
        self._taken = index  # at start: the log's next index, nothing carried yet

    @property
    def pending(self) -> int:
        """Samples taken off the queue but deferred, waiting for the next batch."""
        return len(self._carry)

    def process_waiting(self, stop: threading.Event) -> None:
        """Engine thread, once something is queued or carried: give the receiving thread its chance
        first (it runs due batches as messages arrive), then process samples older than 1.5
        ``batch_ms``. Carried samples alone get a batch every ``batch_ms`` (each spends at most
        ``stream_batch_ms`` on them): a long array is worked off in the background at that share of
        a core, not in one burst that takes the CPU the receiving side and the broker need. A carry
        longer than ``batch_max`` is worked back to back (input beyond what the engine can do)."""
        period, batch_max, queue = self.period, self.batch_max, self.queue
        if len(self._carry) and not len(queue):
            queue.wait(self._carry_wait())  # the carry's next slot, or new samples
        if len(queue):
            time.sleep(max(0.0, queue.since + 1.5 * period - time.monotonic()))
        with self.lock:
            while queue.due(batch_max, period) or (len(self._carry) and not self._carry_wait()):
                batch = queue.drain(batch_max)
                self.process(batch)
                if len(batch) < batch_max or stop.is_set():
                    break

    def _narrow_budget(self) -> float | None:
        """Time this batch may spend on narrow later rounds (one stream's array): ``stream_batch_ms`` once
        per ``batch_ms`` (whichever thread runs the batch; every batch while the carry is longer than
        ``batch_max``), else none: under load batches come faster than ``batch_ms``, and each one
        taking the full allowance would give an array most of the engine."""
        now = time.monotonic()
        if now < self._carry_next and len(self._carry) <= self.batch_max:
            return None if self.round_budget_s is None else 0.0
        self._carry_next = now + self.period
        return self.round_budget_s

    def _carry_wait(self) -> float:
        """Seconds until the carry alone may have a batch (0: now)."""
        if len(self._carry) > self.batch_max:
            return 0.0
        return max(0.0, self._carry_next - time.monotonic())

    def drain(self, deadline: float = float("inf")) -> int:
        """At shutdown: process what is queued until ``deadline`` (monotonic); returns what is left
        (with the log, it is replayed at the next start)."""
        with self.lock:
            while (len(self.queue) or len(self._carry)) and time.monotonic() < deadline:
                self.process(self.queue.drain(self.batch_max))
            return len(self.queue) + len(self._carry)

    def limit_torch_threads(self) -> None:
        """Once per thread that runs the engine, if torch is loaded (the engine serves on onnxruntime
        without it): OpenMP's thread count is per thread, and with every core a torch call stalls
        for tens of ms whenever another thread or process is busy. torch may be half imported by a
        fine-tune thread right now: then this waits for a later batch."""
        if getattr(self._torch_threads, "set", False):
            return
        set_threads = getattr(sys.modules.get("torch"), "set_num_threads", None)
        if set_threads is not None:
            set_threads(self.engine.config.torch_threads)
            self._torch_threads.set = True

    def process(self, samples: Columns | list) -> None:
        """One micro-batch (what was carried, then ``samples`` off the queue: columns, or
        ``(stream, ts, value)`` rows) through the engine (caller holds :attr:`lock`), then its results out."""
        if not isinstance(samples, Columns):
            samples = Columns.from_rows(samples)
        first = self._taken  # log index of samples[0]
        self._taken += len(samples)
        budget = self._narrow_budget()
        samples, carried_at, held, held_at = self._with_carry(samples, first)
        if not len(samples):
            return
        self.limit_torch_threads()
        reordered = self.engine.counters["reordered"]
        t0 = time.perf_counter()
        r = self.engine.process(
            samples.streams,
            samples.ts,
            samples.values,
            now=self.clock(),
            max_rounds=self.max_rounds,
            round_budget_s=budget,
            paths=self._forecasts,  # per-sample paths only for the forecast topic (the view has its own)
        )
        elapsed = time.perf_counter() - t0
        self._carry, self._carry_at = self._deferred(r, samples, carried_at)
        applied = len(samples) - len(self._carry)
        if len(held):
            self._carry, self._carry_at = _in_log_order(
                Columns.concat([self._carry, held]), np.concatenate([self._carry_at, held_at])
            )
        if self.engine.counters["reordered"] > reordered:
            self.metrics.samples_reordered.inc(self.engine.counters["reordered"] - reordered)
        done = self.clock()
        lat = done - r.ts[r.accepted]
        lat = lat[(lat >= 0) & (lat < LATENCY_SANE_S)]
        rejects = code_counts(r.reject, REJECTS)
        rejects.pop(REJECTS[DEFERRED], None)
        self.metrics.observe_batch(applied, elapsed, rejects, code_counts(r.reason, scoring.REASONS), lat)
        if r.evicted:
            self.metrics.observe_streams(len(self.engine.streams), evicted=len(r.evicted))
        if r.refused:
            self._log_refused(r)
        self.tuning.count(int(r.accepted.sum()))
        if r.is_anomaly.any():
            self.metrics.observe_publish(*self.events.publish_anomalies(r, self.engine.model_version))
        if self._forecasts:
            self.events.publish_forecasts(r, self.engine.step_seconds(r.stream))
        if self.feed is not None:
            self.feed.batch(r)

    def _with_carry(self, samples: Columns, first: int) -> tuple[Columns, np.ndarray, Columns, np.ndarray]:
        """This batch for the engine: the carried samples' head, in log order, and the new ones, with the
        log indices of every sample the engine gets (carried first, new ones from ``first``); and what is
        held back for later with its indices: the rest of the carry and the new samples of the streams
        that have some of it (a stream's samples are applied in log order). The head is at most
        ``stream_batch_max`` samples of each stream (the engine applies no more of one stream per batch:
        a long array's other samples would only be deferred again, at a cost to every batch) and at most
        ``CARRY_HEAD`` in all."""
        carried, at = self._carry, self._carry_at
        new_at = first + np.arange(len(samples), dtype=np.int64)
        if not len(carried):
            return samples, new_at, EMPTY, at
        go = _carry_head(carried.streams, self.max_rounds)
        if go.all():
            return Columns.concat([carried, samples]), np.concatenate([at, new_at]), EMPTY, at[:0]
        rest = carried.take(np.nonzero(~go)[0])
        waiting = set(rest.streams.tolist()).__contains__  # hashed: np.isin compares objects pair by pair
        wait = np.fromiter(map(waiting, samples.streams.tolist()), dtype=bool, count=len(samples))
        new_go = np.nonzero(~wait)[0]
        stay = np.nonzero(wait)[0]
        head = Columns.concat([carried.take(np.nonzero(go)[0]), samples.take(new_go)])
        held = Columns.concat([rest, samples.take(stay)])
        return (
            head,
            np.concatenate([at[go], new_at[new_go]]),
            held,
            np.concatenate([at[~go], new_at[stay]]),
        )

    @staticmethod
    def _deferred(r: Results, samples: Columns, at: np.ndarray) -> tuple[Columns, np.ndarray]:
        """The samples the engine deferred, in order, with their log indices."""
        later = np.nonzero(r.reject == DEFERRED)[0]
        if not len(later):
            return EMPTY, np.empty(0, dtype=np.int64)
        return samples.take(later), at[later]

    def _log_refused(self, r: Results) -> None:
        """One rate-limited line per reason naming a stream that was not admitted (and how many)."""
        for code, why in (
            (OVER_CAPACITY, "the stream table is full of recently seen streams"),
            (NEW_STREAM_RATE, "new streams arrive faster than engine.new_streams_per_s"),
        ):
            hit = r.reject == code
            if hit.any():
                name = r.stream[int(np.argmax(hit))]
                self._rlog.log(
                    REJECTS[code],
                    "new stream %r not admitted (%s): %s; %d new streams refused in this batch",
                    name[:120],
                    REJECTS[code],
                    why,
                    len(r.refused),
                )


def _carry_head(streams: np.ndarray, per_stream: int | None) -> np.ndarray:
    """Which carried samples (in log order) go into this batch: each stream's first ``per_stream``
    (None: all), and of those the first ``CARRY_HEAD``; for every stream a prefix of its samples."""
    n = len(streams)
    go = np.ones(n, dtype=bool)
    if per_stream is not None and n > per_stream:
        _, stream_of = np.unique(streams, return_inverse=True)
        order = np.argsort(stream_of, kind="stable")  # each stream's samples together, in log order
        group = stream_of[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        go = rank < per_stream
    if n > CARRY_HEAD:
        go &= np.cumsum(go) <= CARRY_HEAD
    return go


def _in_log_order(samples: Columns, at: np.ndarray) -> tuple[Columns, np.ndarray]:
    """Samples sorted by their log indices (each stream's are in that order already)."""
    order = np.argsort(at, kind="stable")
    return samples.take(order), at[order]
