"""Prometheus metrics: the names every series is exported under, and the process instruments.

:class:`Metrics` holds the aggregate instruments in a registry the caller owns, updated once per
micro-batch (never per sample) through a few small methods, grouped by what they observe: ingest
traffic, engine batches, the model's life (fine-tunes, swaps, checkpoints). The per-stream families
are rendered by :mod:`daemon.outputs.exposition`, served by :mod:`daemon.outputs.server`.

Metric names are the module constants below; dashboards and alert rules rely on them.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from daemon.outputs.families import (  # noqa: F401 - re-exported: dashboards and tests use m.VALUE
    ANOMALIES_TOTAL,
    ANOMALY,
    ANOMALY_SCORE,
    FORECAST,
    FORECAST_AHEAD,
    FORECAST_LOWER,
    FORECAST_NEXT,
    FORECAST_UPPER,
    LAST_SEEN,
    VALUE,
)
from daemon.outputs.histogram import BulkHistogram
from daemon.rejects import REASONS as PAYLOAD_REJECT_REASONS
from lstm_stream import scoring
from lstm_stream.engine import REJECTS

PREFIX = "lstm_stream_"

# --- per stream (label ``stream``): VALUE, FORECAST, ... come from daemon.outputs.families ---------

# --- process -------------------------------------------------------------------------------------
MESSAGES_RECEIVED = "lstm_stream_messages_received_total"
MESSAGES_REJECTED = "lstm_stream_messages_rejected_total"
SAMPLES_PROCESSED = "lstm_stream_samples_processed_total"
SAMPLES_REORDERED = "lstm_stream_samples_reordered_total"
SAMPLES_REJECTED = "lstm_stream_samples_rejected_total"
ANOMALIES_FLAGGED = "lstm_stream_anomalies_flagged_total"
EVENTS_PUBLISHED = "lstm_stream_events_published_total"
PUBLISH_FAILURES = "lstm_stream_publish_failures_total"
QUEUE_DEPTH = "lstm_stream_queue_depth"
QUEUE_CAPACITY = "lstm_stream_queue_capacity"
QUEUE_DROPPED = "lstm_stream_queue_dropped_total"
QUEUE_BLOCKED = "lstm_stream_queue_blocked_seconds_total"
BATCH_SIZE = "lstm_stream_batch_size"
PROCESSING_LATENCY = "lstm_stream_processing_latency_seconds"
INGEST_LATENCY = "lstm_stream_ingest_latency_seconds"
STREAMS = "lstm_stream_streams"
STREAMS_EVICTED = "lstm_stream_streams_evicted_total"
FINETUNE_RUNS = "lstm_stream_finetune_runs_total"
FINETUNE_DURATION = "lstm_stream_finetune_duration_seconds"
FINETUNE_VALIDATION_LOSS = "lstm_stream_finetune_validation_loss"
MODEL_VERSION = "lstm_stream_model_version"
MODEL_SWAP_TIMESTAMP = "lstm_stream_model_swap_timestamp_seconds"
CHECKPOINT_LAST_SUCCESS = "lstm_stream_checkpoint_last_success_timestamp_seconds"
CHECKPOINT_FAILURES = "lstm_stream_checkpoint_failures_total"
CHECKPOINT_DURATION = "lstm_stream_checkpoint_duration_seconds"
MQTT_CONNECTED = "lstm_stream_mqtt_connected"
MQTT_RECONNECTS = "lstm_stream_mqtt_reconnects_total"
ENGINE_PROGRESS = "lstm_stream_engine_loop_last_progress_timestamp_seconds"
RECEIVER_RESTARTS = "lstm_stream_receiver_restarts_total"
WAL_BYTES = "lstm_stream_wal_written_bytes_total"
WAL_SYNCS = "lstm_stream_wal_syncs_total"
WAL_FAILURES = "lstm_stream_wal_failures_total"
BUILD_INFO = "lstm_stream_build_info"
EXPOSITION_CPU = "lstm_stream_exposition_engine_cpu_seconds_total"
EXPOSITION_REQUESTS = "lstm_stream_exposition_requests_total"
EXPOSITION_RESTARTS = "lstm_stream_exposition_restarts_total"
MEMORY = "lstm_stream_memory_bytes"
# NATS workers only (daemon.service.worker_outputs): partitions consumed, configured, and who it is
NATS_PARTITIONS_OWNED, NATS_PARTITIONS = "lstm_stream_nats_partitions_owned", "lstm_stream_nats_partitions"
WORKER_INFO = "lstm_stream_worker_info"
NATS_PARTITION_WAIT = "lstm_stream_nats_partition_wait_seconds"  # per partition (daemon.ingest.nats_pull)
NATS_STALE_RENEWALS = "lstm_stream_nats_stale_renewals_total"

# --- label values known in advance (pre-created so every series exists, at 0, from the start) ---
MESSAGE_REJECT_REASONS: tuple[str, ...] = PAYLOAD_REJECT_REASONS
SAMPLE_REJECT_REASONS: tuple[str, ...] = tuple(r for r in REJECTS if r and r != "deferred")  # not a reject
FLAG_REASONS: tuple[str, ...] = tuple(r for r in scoring.REASONS if r)
EVICTION_CAUSES = ("capacity", "idle")
FINETUNE_OUTCOMES = ("accepted", "rejected", "diverged", "failed", "insufficient_data")
VALIDATION_MODELS = ("candidate", "live")
MEMORY_PARTS = ("state", "history", "exposition")  # what the engine's process accounts for itself
EXPOSITION_WORK = ("scrape", "health", "publish")  # what the engine's process does for /metrics


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split())


BATCH_SIZE_BUCKETS = tuple(float(2**k) for k in range(15))  # 1 .. 16384
PROCESSING_LATENCY_BUCKETS = _floats(
    "0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.015 0.02 0.025 0.03 0.04 0.05 0.075 0.1 0.25 0.5 1"
)
# fine between 10 and 100 ms, where the 50 ms p99 target sits
INGEST_LATENCY_BUCKETS = _floats(
    "0.0005 0.001 0.0025 0.005 0.01 0.015 0.02 0.025 0.03 0.04 0.05 0.075 0.1 0.15 0.25 0.5 1 2.5 5 10"
)
FINETUNE_DURATION_BUCKETS = _floats("1 5 15 30 60 120 300 600 1200 1800 3600 7200 14400")  # 1 s .. 4 h


def code_counts(codes: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Non-zero counts of the coded reasons in ``codes`` (index into ``names``; code 0 = none).

    Turns an engine result column (``Results.reject``, ``Results.reason``) into the dict that
    :meth:`Metrics.observe_batch` takes, in one ``bincount``.
    """
    counts = np.bincount(np.asarray(codes, dtype=np.intp), minlength=len(names)).tolist()
    return {names[i]: c for i, c in enumerate(counts) if i and c}


# --- process instruments --------------------------------------------------------------------------
def package_version() -> str:
    """The installed lstm-stream version (build info, Home Assistant's device), else ``unknown``."""
    try:
        return importlib.metadata.version("lstm-stream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Observer:
    """What the observation groups below share: counting by reason, and the clock."""

    _clock: Callable[[], float]

    @staticmethod
    def _add(children: dict[str, Counter], counter: Counter, counts: Mapping[str, int]) -> None:
        for reason, n in counts.items():
            if n and reason:
                child = children.get(reason)
                if child is None:  # a reason added after this module was written: still counted
                    child = children[reason] = counter.labels(reason)
                child.inc(n)

    def _now(self, at: float | None) -> float:
        return self._clock() if at is None else at


class IngestObservations(_Observer):
    """Ingest traffic: MQTT messages and rejects, the queue, the connection, what was published."""

    def observe_messages(self, received: int, rejects: Mapping[str, int] | None = None) -> None:
        """Messages taken off MQTT since the last call, and those dropped by payload reason."""
        if received:
            self.messages_received.inc(received)
        if rejects:
            self._add(self._msg_rejects, self.messages_rejected, rejects)

    def observe_queue(self, depth: int, capacity: int, dropped: int = 0, blocked_s: float = 0.0) -> None:
        """Queue depth and capacity now; ``dropped`` samples and ``blocked_s`` seconds waited for
        room since the last call."""
        self.queue_depth.set(depth)
        self.queue_capacity.set(capacity)
        if dropped:
            self.queue_dropped.inc(dropped)
        if blocked_s > 0:
            self.queue_blocked.inc(blocked_s)

    def observe_publish(self, published: int = 0, failures: int = 0) -> None:
        """Events published and publishes failed since the last call."""
        if published:
            self.events_published.inc(published)
        if failures:
            self.publish_failures.inc(failures)

    def set_mqtt_connected(self, connected: bool) -> None:
        self.mqtt_connected.set(1 if connected else 0)

    def mqtt_reconnected(self) -> None:
        self.mqtt_reconnects.inc()

    def receiver_restarted(self) -> None:
        self.receiver_restarts.inc()

    def observe_exposition(self, work: str, cpu_s: float) -> None:
        """The engine's process spent ``cpu_s`` of its interpreter's CPU on ``work`` for /metrics:
        answering a scrape or a health check, or publishing the per-stream snapshot."""
        self._add(self._expo_requests, self.exposition_requests, {work: 1})
        self._expo_cpu[work].inc(max(0.0, cpu_s))

    def exposition_restarted(self) -> None:
        self.exposition_restarts.inc()

    def observe_wal(self, written: int, syncs: int, failures: int) -> None:
        """Log bytes written, fsyncs and failed writes or fsyncs since the last call."""
        if written:
            self.wal_bytes.inc(written)
        if syncs:
            self.wal_syncs.inc(syncs)
        if failures:
            self.wal_failures.inc(failures)


class EngineObservations(_Observer):
    """Engine work: micro-batches (sizes, time, rejects, flags, latency), streams, loop progress."""

    def observe_batch(
        self,
        size: int,
        seconds: float,
        rejects: Mapping[str, int] | None = None,
        flags: Mapping[str, int] | None = None,
        latencies: np.ndarray | None = None,
    ) -> None:
        """One engine micro-batch: ``size`` samples in ``seconds``.

        ``rejects``/``flags`` count samples by reason (see :func:`code_counts`); samples processed
        are ``size`` minus the rejects. ``latencies`` (seconds, one per scored sample) go into the
        ingest-latency histogram in one call.
        """
        rejects = rejects or {}
        self.batch_size.observe(size)
        self.processing_latency.observe(seconds)
        self._add(self._sample_rejects, self.samples_rejected, rejects)
        processed = size - sum(n for r, n in rejects.items() if r)
        if processed > 0:
            self.samples_processed.inc(processed)
        if flags:
            self._add(self._flags, self.anomalies_flagged, flags)
        if latencies is not None:
            self.ingest_latency.observe_many(latencies)

    def observe_memory(self, parts: Mapping[str, int]) -> None:
        """Bytes held by the engine's per-stream state, history buffers and the exposition's cache."""
        for part, n in parts.items():
            self.memory.labels(part).set(n)

    def observe_streams(self, tracked: int, evicted: int = 0, expired: int = 0) -> None:
        """Streams tracked now; evicted for capacity and expired as idle since the last call."""
        self.streams.set(tracked)
        if evicted:
            self._evicted["capacity"].inc(evicted)
        if expired:
            self._evicted["idle"].inc(expired)

    def engine_progress(self, at: float | None = None) -> None:
        """The engine loop completed an iteration (what the watchdog and a stall alert watch)."""
        self.engine_progress_timestamp.set(self._now(at))


class ModelObservations(_Observer):
    """The model's life: fine-tune runs, swaps, checkpoints, and the build it runs in."""

    def observe_finetune(
        self,
        outcome: str,
        seconds: float,
        candidate_loss: float | None = None,
        live_loss: float | None = None,
    ) -> None:
        """A fine-tuning run ended with ``outcome`` after ``seconds``; losses when it got that far."""
        self._add(self._finetunes, self.finetune_runs, {outcome: 1})
        self.finetune_duration.observe(seconds)
        if candidate_loss is not None:
            self.finetune_validation_loss.labels("candidate").set(candidate_loss)
        if live_loss is not None:
            self.finetune_validation_loss.labels("live").set(live_loss)

    def set_model(self, version: int, swapped_at: float | None = None, *, swapped: bool = True) -> None:
        """The live model is ``version``; ``swapped`` stamps the swap time (not for a restore)."""
        self.model_version.set(version)
        if swapped:
            self.model_swap_timestamp.set(self._now(swapped_at))

    def observe_checkpoint(self, ok: bool, seconds: float, at: float | None = None) -> None:
        """A checkpoint attempt took ``seconds`` and succeeded or not."""
        self.checkpoint_duration.set(seconds)
        if ok:
            self.checkpoint_last_success.set(self._now(at))
        else:
            self.checkpoint_failures.inc()

    def set_build_info(
        self, *, version: str | None = None, model_arch: str = "unknown", hidden: int = 0, layers: int = 0
    ) -> None:
        self.build_info.info(
            {
                "version": version or package_version(),
                "model_arch": str(model_arch),
                "hidden": str(hidden),
                "layers": str(layers),
            }
        )


class Metrics(IngestObservations, EngineObservations, ModelObservations):
    """The service's aggregate instruments, in ``registry``; call the methods once per batch or event.

    The instruments are declared here, in the order they are exported; the methods that update them
    come from the observation groups above. ``clock`` (default ``time.time``) stamps the
    ``*_timestamp_seconds`` gauges when no time is given.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str | None = None,
        model_arch: str = "unknown",
        hidden: int = 0,
        layers: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        disable_created_metrics()  # a process-wide switch in prometheus_client; no *_created series
        self.registry = registry
        self._clock = clock
        r = registry
        self.messages_received = Counter(MESSAGES_RECEIVED, "MQTT messages received.", registry=r)
        self.messages_rejected = Counter(
            MESSAGES_REJECTED, "MQTT messages dropped before the engine, by reason.", ["reason"], registry=r
        )
        self.samples_processed = Counter(SAMPLES_PROCESSED, "Samples applied by the engine.", registry=r)
        self.samples_reordered = Counter(
            SAMPLES_REORDERED, "Late samples put in order (ingest.reorder_window_ms).", registry=r
        )
        self.samples_rejected = Counter(
            SAMPLES_REJECTED, "Samples the engine refused, by reason.", ["reason"], registry=r
        )
        self.anomalies_flagged = Counter(
            ANOMALIES_FLAGGED, "Anomaly flags raised over all streams, by reason.", ["reason"], registry=r
        )
        self.events_published = Counter(EVENTS_PUBLISHED, "Anomaly events published to MQTT.", registry=r)
        self.publish_failures = Counter(PUBLISH_FAILURES, "MQTT publishes that failed.", registry=r)
        self.queue_depth = Gauge(QUEUE_DEPTH, "Samples waiting in the ingest queue.", registry=r)
        self.queue_capacity = Gauge(QUEUE_CAPACITY, "Capacity of the ingest queue, in samples.", registry=r)
        self.queue_dropped = Counter(
            QUEUE_DROPPED, "Samples dropped because the ingest queue was full.", registry=r
        )
        self.queue_blocked = Counter(
            QUEUE_BLOCKED, "Seconds the MQTT thread waited for room in a full ingest queue.", registry=r
        )
        self.batch_size = Histogram(
            BATCH_SIZE, "Samples per engine micro-batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.processing_latency = Histogram(
            PROCESSING_LATENCY, "Engine time per micro-batch.", buckets=PROCESSING_LATENCY_BUCKETS, registry=r
        )
        self.ingest_latency = BulkHistogram(
            INGEST_LATENCY,
            "Time from a sample's timestamp (or arrival) to its scored result.",
            INGEST_LATENCY_BUCKETS,
            r,
        )
        self.streams = Gauge(STREAMS, "Streams tracked by the engine.", registry=r)
        self.streams_evicted = Counter(
            STREAMS_EVICTED,
            "Streams dropped from the engine, by cause (capacity or idle).",
            ["cause"],
            registry=r,
        )
        self.finetune_runs = Counter(FINETUNE_RUNS, "Fine-tuning runs, by outcome.", ["outcome"], registry=r)
        self.finetune_duration = Histogram(
            FINETUNE_DURATION, "Wall time of fine-tuning runs.", buckets=FINETUNE_DURATION_BUCKETS, registry=r
        )
        self.finetune_validation_loss = Gauge(
            FINETUNE_VALIDATION_LOSS,
            "Validation loss of the last fine-tune's candidate and of the live model.",
            ["model"],
            registry=r,
        )
        self.model_version = Gauge(
            MODEL_VERSION, "Version of the live model (bumped on every swap).", registry=r
        )
        self.model_swap_timestamp = Gauge(
            MODEL_SWAP_TIMESTAMP, "When the live model was last swapped (0 = never).", registry=r
        )
        self.checkpoint_last_success = Gauge(
            CHECKPOINT_LAST_SUCCESS, "When the last checkpoint was written (0 = never).", registry=r
        )
        self.checkpoint_failures = Counter(CHECKPOINT_FAILURES, "Checkpoints that failed.", registry=r)
        self.checkpoint_duration = Gauge(
            CHECKPOINT_DURATION, "Wall time of the last checkpoint attempt.", registry=r
        )
        self.mqtt_connected = Gauge(
            MQTT_CONNECTED, "1 while connected to the MQTT broker, else 0.", registry=r
        )
        self.mqtt_reconnects = Counter(
            MQTT_RECONNECTS, "Connections to the broker after the first.", registry=r
        )
        self.receiver_restarts = Counter(
            RECEIVER_RESTARTS, "Receiver processes replaced after dying or going silent.", registry=r
        )
        self.wal_bytes = Counter(WAL_BYTES, "Bytes appended to the write-ahead log.", registry=r)
        self.wal_syncs = Counter(WAL_SYNCS, "fsyncs of the write-ahead log (group commits).", registry=r)
        self.wal_failures = Counter(
            WAL_FAILURES,
            "Write-ahead log writes or fsyncs that failed (nothing acked meanwhile).",
            registry=r,
        )
        self.exposition_cpu = Counter(
            EXPOSITION_CPU,
            "CPU seconds the engine's process spent on /metrics, by work (scrape, health, publish).",
            ["work"],
            registry=r,
        )
        self.exposition_requests = Counter(
            EXPOSITION_REQUESTS,
            "Scrapes, health checks and snapshot publications, by work.",
            ["work"],
            registry=r,
        )
        self.exposition_restarts = Counter(
            EXPOSITION_RESTARTS, "Exposition processes restarted after dying.", registry=r
        )
        self.memory = Gauge(
            MEMORY,
            "Bytes held by the engine's per-stream state and history arrays and the exposition cache.",
            ["part"],
            registry=r,
        )
        self.engine_progress_timestamp = Gauge(
            ENGINE_PROGRESS, "When the engine loop last completed an iteration.", registry=r
        )
        self.build_info = Info(
            BUILD_INFO.removesuffix("_info"), "Version and model architecture.", registry=r
        )

        # Children cached by label value (a labels() lookup costs microseconds), all pre-created.
        self._msg_rejects = {k: self.messages_rejected.labels(k) for k in MESSAGE_REJECT_REASONS}
        self._sample_rejects = {k: self.samples_rejected.labels(k) for k in SAMPLE_REJECT_REASONS}
        self._flags = {k: self.anomalies_flagged.labels(k) for k in FLAG_REASONS}
        self._evicted = {k: self.streams_evicted.labels(k) for k in EVICTION_CAUSES}
        self._finetunes = {k: self.finetune_runs.labels(k) for k in FINETUNE_OUTCOMES}
        for part in MEMORY_PARTS:
            self.memory.labels(part)
        self._expo_cpu = {k: self.exposition_cpu.labels(k) for k in EXPOSITION_WORK}
        self._expo_requests = {k: self.exposition_requests.labels(k) for k in EXPOSITION_WORK}
        for model in VALIDATION_MODELS:
            self.finetune_validation_loss.labels(model).set(math.nan)  # no fine-tune yet
        self.set_build_info(version=version, model_arch=model_arch, hidden=hidden, layers=layers)
