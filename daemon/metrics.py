"""Prometheus metrics: process instruments, a fast per-stream exporter, and the HTTP endpoint.

Three parts, kept apart as in client_python:

- :class:`Metrics`: aggregate instruments in a registry the caller owns, updated once per micro-batch
  (never per sample) through a few small methods;
- :class:`StreamExporter`: the per-stream families (label ``stream``), rendered straight from a
  :class:`~lstm_stream.engine.StreamView`'s arrays into text format 0.0.4. 10k streams as
  prometheus_client children would hold the GIL for over half a second per scrape; this renders
  them in tens of milliseconds, once per view however many scrapes come;
- :class:`MetricsServer`: ``GET /metrics`` and ``GET /healthz`` on a threading HTTP server.

Metric names are the module constants below; dashboards and alert rules rely on them.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import logging
import math
import operator
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from daemon import payload
from lstm_stream import scoring
from lstm_stream.engine import REJECTS

if TYPE_CHECKING:
    from lstm_stream.engine import StreamView

log = logging.getLogger(__name__)

PREFIX = "lstm_stream_"

# --- per stream (label ``stream``), rendered by StreamExporter -----------------------------------
VALUE = "lstm_stream_value"
FORECAST = "lstm_stream_forecast"
FORECAST_NEXT = "lstm_stream_forecast_next"
ANOMALY_SCORE = "lstm_stream_anomaly_score"
ANOMALY = "lstm_stream_anomaly"
ANOMALIES_TOTAL = "lstm_stream_anomalies_total"
LAST_SEEN = "lstm_stream_last_seen_timestamp_seconds"

# --- process -------------------------------------------------------------------------------------
MESSAGES_RECEIVED = "lstm_stream_messages_received_total"
MESSAGES_REJECTED = "lstm_stream_messages_rejected_total"
SAMPLES_PROCESSED = "lstm_stream_samples_processed_total"
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
BUILD_INFO = "lstm_stream_build_info"

# --- label values known in advance (pre-created so every series exists, at 0, from the start) ---
MESSAGE_REJECT_REASONS: tuple[str, ...] = payload.REASONS
SAMPLE_REJECT_REASONS: tuple[str, ...] = tuple(r for r in REJECTS if r)
FLAG_REASONS: tuple[str, ...] = tuple(r for r in scoring.REASONS if r)
EVICTION_CAUSES = ("capacity", "idle")
FINETUNE_OUTCOMES = ("accepted", "rejected", "diverged", "failed", "insufficient_data")
VALIDATION_MODELS = ("candidate", "live")


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

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PER_STREAM_MODES = ("all", "anomalous", "none")
ANOMALOUS_SCORE = 0.5  # mode "anomalous" also exports streams scoring at least this


def code_counts(codes: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Non-zero counts of the coded reasons in ``codes`` (index into ``names``; code 0 = none).

    Turns an engine result column (``Results.reject``, ``Results.reason``) into the dict that
    :meth:`Metrics.observe_batch` takes, in one ``bincount``.
    """
    counts = np.bincount(np.asarray(codes, dtype=np.intp), minlength=len(names)).tolist()
    return {names[i]: c for i, c in enumerate(counts) if i and c}


# --- a histogram fed whole arrays -----------------------------------------------------------------
class BulkHistogram:
    """A label-less histogram that takes a whole array per call (one ``searchsorted``, exact counts).

    prometheus_client's ``Histogram.observe`` costs a lock and a bucket scan per value, too slow
    for thousands of latencies per micro-batch; this owns its counts and registers as a collector.
    Non-finite values are dropped; negative ones (a sensor clock ahead of ours) count as 0.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if bounds and math.isinf(bounds[-1]):
            bounds.pop()
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        """Add one value."""
        self.observe_many(np.array([value], dtype=np.float64))

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        """Add every value of ``values``."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = np.maximum(x[np.isfinite(x)], 0.0)
        if not len(x):
            return
        counts = np.bincount(np.searchsorted(self._bounds, x, side="left"), minlength=len(self._counts))
        total = float(x.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(le, float(c)) for le, c in zip(self._les, cumulative, strict=True)]
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)]


# --- process instruments --------------------------------------------------------------------------
def _package_version() -> str:
    try:
        return importlib.metadata.version("lstm-stream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The service's aggregate instruments, in ``registry``; call the methods once per batch or event.

    ``clock`` (default ``time.time``) stamps the ``*_timestamp_seconds`` gauges when no time is given.
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
        for model in VALIDATION_MODELS:
            self.finetune_validation_loss.labels(model).set(math.nan)  # no fine-tune yet
        self.set_build_info(version=version, model_arch=model_arch, hidden=hidden, layers=layers)

    # -- helpers
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

    # -- once per micro-batch
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

    def observe_streams(self, tracked: int, evicted: int = 0, expired: int = 0) -> None:
        """Streams tracked now; evicted for capacity and expired as idle since the last call."""
        self.streams.set(tracked)
        if evicted:
            self._evicted["capacity"].inc(evicted)
        if expired:
            self._evicted["idle"].inc(expired)

    def observe_publish(self, published: int = 0, failures: int = 0) -> None:
        """Events published and publishes failed since the last call."""
        if published:
            self.events_published.inc(published)
        if failures:
            self.publish_failures.inc(failures)

    def engine_progress(self, at: float | None = None) -> None:
        """The engine loop completed an iteration (what the watchdog and a stall alert watch)."""
        self.engine_progress_timestamp.set(self._now(at))

    # -- events
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

    def set_mqtt_connected(self, connected: bool) -> None:
        self.mqtt_connected.set(1 if connected else 0)

    def mqtt_reconnected(self) -> None:
        self.mqtt_reconnects.inc()

    def set_build_info(
        self, *, version: str | None = None, model_arch: str = "unknown", hidden: int = 0, layers: int = 0
    ) -> None:
        self.build_info.info(
            {
                "version": version or _package_version(),
                "model_arch": str(model_arch),
                "hidden": str(hidden),
                "layers": str(layers),
            }
        )


# --- per-stream exporter --------------------------------------------------------------------------
_FAMILIES = (
    # (name, type, help, StreamView attribute)
    (VALUE, "gauge", "Last accepted value of the stream.", "value"),
    (FORECAST, "gauge", "What was forecast for the last value (NaN before the second sample).", "forecast"),
    (FORECAST_NEXT, "gauge", "Forecast of the stream's next value.", "next_forecast"),
    (ANOMALY_SCORE, "gauge", "Last anomaly score of the stream, 0-1.", "score"),
    (ANOMALY, "gauge", "1 while the stream is inside an anomalous condition, else 0.", "in_anomaly"),
    (ANOMALIES_TOTAL, "counter", "Anomaly flags raised for the stream.", "anomalies"),
    (LAST_SEEN, "gauge", "When the stream was last seen, in Unix seconds.", "last_seen"),
)


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


RENDER_CHUNK = 512  # streams formatted per GIL hold while rendering /metrics (about 0.5 ms)
# pause between chunks: a render of 10k streams then takes at most a third of the GIL, spread over
# ~0.2 s, instead of half of it in a burst that stalls the batches running meanwhile
RENDER_PAUSE_S = 0.001


def format_values(a: np.ndarray) -> list[str]:
    """Sample values as text: shortest round-trip floats, integers as such, NaN / +Inf / -Inf."""
    if a.dtype.kind == "b":
        return list(map(str, a.view(np.uint8).tolist()))
    if a.dtype.kind in "iu":
        return list(map(str, a.tolist()))
    values = a.astype(np.float64, copy=False).tolist()
    out = list(map(repr, values))
    bad = ~np.isfinite(a)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            v = values[i]
            out[i] = "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")
    return out


class StreamExporter:
    """Renders the per-stream families of the latest :class:`StreamView` as text format 0.0.4.

    ``update`` (engine thread) only stores the view; ``render`` (HTTP threads) formats it once and
    reuses the bytes until the next view. Modes: ``all`` streams, only ``anomalous`` ones (in an
    anomaly, flagged before, or scoring >= 0.5), or ``none``. A stream missing from the view (evicted
    or expired) is simply not rendered, so its series end with the next scrape.
    """

    def __init__(self, mode: str = "all") -> None:
        if mode not in PER_STREAM_MODES:
            raise ValueError(f"per-stream mode {mode!r} is not one of {PER_STREAM_MODES}")
        self.mode = mode
        self._view: StreamView | None = None
        self._labels: dict[str, str] = {}  # stream name -> '{stream="..."} '
        self._cache: tuple[StreamView | None, str, bytes] = (None, "", b"")
        self._lock = threading.Lock()
        self.last_render_seconds = 0.0

    @property
    def cached_labels(self) -> int:
        """Label strings held in the per-name cache (bounded by about twice the streams shown)."""
        return len(self._labels)

    def update(self, view: StreamView) -> None:
        """Make ``view`` the one to export (cheap: keeps the reference; the view must not change)."""
        self._view = view

    def render(self) -> bytes:
        """The exposition text of the current view, UTF-8 (empty before the first view)."""
        view = self._view
        with self._lock:  # concurrent scrapes of one view render it once
            cached_view, cached_mode, data = self._cache
            if view is cached_view and self.mode == cached_mode:
                return data
            t0 = time.perf_counter()
            data = self.render_view(view).encode("utf-8", "replace") if view is not None else b""
            self.last_render_seconds = time.perf_counter() - t0
            self._cache = (view, self.mode, data)
            return data

    def _select(self, view: StreamView) -> tuple[list[str], np.ndarray | None]:
        if self.mode == "none" or not view.names:
            return [], None
        if self.mode == "all":
            return view.names, None
        with np.errstate(invalid="ignore"):
            keep = (
                np.asarray(view.in_anomaly, dtype=bool)
                | (np.asarray(view.anomalies) > 0)
                | (np.asarray(view.score) >= ANOMALOUS_SCORE)
            )
        idx = np.flatnonzero(keep)
        names = view.names
        return [names[i] for i in idx.tolist()], idx

    def _label_strings(self, names: list[str]) -> list[str]:
        cache = self._labels
        get = cache.get
        labels = [get(n) or self._new_label(n) for n in names]
        if len(cache) > 2 * len(names) + 1024:  # streams come and go: forget the departed
            self._labels = dict(zip(names, labels, strict=True))
        return labels

    def _new_label(self, name: str) -> str:
        label = self._labels[name] = '{stream="' + escape_label_value(name) + '"} '
        return label

    def render_view(self, view: StreamView) -> str:
        """The per-stream families of ``view`` as text (no caching)."""
        names, idx = self._select(view)
        if not names:
            return ""
        labels = self._label_strings(names)
        parts: list[str] = []
        add = operator.add
        for name, typ, help_text, attr in _FAMILIES:
            a = np.asarray(getattr(view, attr))
            if idx is not None:
                a = a[idx]
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {typ}\n")
            sep = "\n" + name
            for lo in range(0, len(labels), RENDER_CHUNK):
                hi = lo + RENDER_CHUNK
                parts.append(name + sep.join(map(add, labels[lo:hi], format_values(a[lo:hi]))) + "\n")
                time.sleep(RENDER_PAUSE_S)  # each map/join above is one C call holding the GIL
        return "".join(parts)


# --- HTTP -----------------------------------------------------------------------------------------
HealthCheck = Callable[[], tuple[bool, str]]  # (ok, detail shown on failure)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "lstm-stream"

    def do_GET(self) -> None:  # http.server's naming
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        if path == "/metrics":
            status, body = 200, owner.scrape()
        elif path == "/healthz":
            status, body = owner.health()
        else:
            status, body = 404, b"not found\n"
        try:
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the scraper gave up; nothing to tell it

    def log_message(self, format: str, *args: object) -> None:  # the base class's signature
        log.debug("%s " + format, self.address_string(), *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: MetricsServer


class MetricsServer:
    """``GET /metrics`` (registry + per-stream text) and ``GET /healthz`` on a daemon thread.

    ``health`` returns ``(ok, detail)``: 200 ``ok`` or 503 ``detail``. Binding happens here (so a
    port in use fails at start-up); ``port=0`` picks a free port, see :attr:`port`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        exporter: StreamExporter | None = None,
        health: HealthCheck | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.registry = registry
        self.exporter = exporter
        self._health = health
        server_class = _Server
        if ":" in bind:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self._server = server_class((bind, port), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="metrics-http",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scrape(self) -> bytes:
        """The full /metrics body."""
        body = generate_latest(self.registry)
        if self.exporter is not None:
            body += self.exporter.render()
        return body

    def health(self) -> tuple[int, bytes]:
        """Status and body of /healthz."""
        if self._health is None:
            return 200, b"ok\n"
        try:
            ok, detail = self._health()
        except Exception as exc:  # a broken check is an unhealthy service, not a crashed server
            ok, detail = False, f"health check failed: {exc!r}"
        if ok:
            return 200, b"ok\n"
        return 503, (detail.rstrip("\n") + "\n").encode("utf-8", "replace")
