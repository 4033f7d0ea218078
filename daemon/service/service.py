"""The service: MQTT in -> engine loop -> metrics, MQTT events, checkpoints, background fine-tuning.

``Service(settings).run()`` owns the lifecycle: restore state, serve HTTP, connect to the broker in
the background (a broker that is down only shows in STATUS and /healthz), run the engine loop until
SIGTERM/SIGINT, then stop taking messages, drain the queue, write a final checkpoint and exit 0.
Samples arrive from the receiver process (or paho's thread with ``ingest.receiver = "thread"``); the
thread that receives them runs the due micro-batches, the engine thread runs what light load leaves,
housekeeping and the watchdog, under one engine lock; HTTP scrapes are served from a cache.

The jobs live beside this module: :mod:`~daemon.service.restore` (which engine), :mod:`.batches`,
:mod:`.housekeeping`, :mod:`.checkpoints`, :mod:`.tuning` and :mod:`.homeassistant`; this class
builds them, wires ingest to outputs, and starts and stops everything in order.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.heap import freeze_startup_objects
from daemon.ingest.link import MqttLink
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.ingest.receiver import ReceiverProcess
from daemon.outputs.discovery import HomeAssistantDiscovery
from daemon.outputs.events import EventPublisher
from daemon.outputs.exposition import StreamExporter
from daemon.outputs.metrics import Metrics
from daemon.outputs.server import MetricsServer
from daemon.ratelog import RateLimitedLogger
from daemon.service import notify
from daemon.service.batches import Batches
from daemon.service.checkpoints import Checkpoints
from daemon.service.finetuner import Finetuner
from daemon.service.homeassistant import DiscoveryFeed, make_discovery
from daemon.service.housekeeping import Housekeeping, LinkCounters
from daemon.service.restore import build_engine
from daemon.service.tuning import Tuning
from daemon.settings import MqttSettings, Settings
from lstm_stream.checkpoint import CheckpointStore
from lstm_stream.engine import Engine

log = logging.getLogger("lstm_stream.service")


def publishing_settings(mqtt: MqttSettings) -> MqttSettings:
    """The daemon's own connection when a receiver process holds the subscriptions: no topics, a
    client id of its own (``<client_id>-out``) and no session to keep."""
    return mqtt.model_copy(
        update={
            "topics": [],
            "client_id": f"{mqtt.client_id}-out",
            "clean_start": True,
            "session_expiry_s": 0,
        }
    )


class Service:
    """Wires ingest -> engine -> outputs and owns start, readiness, the engine loop, drain and shutdown."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.stop_event = threading.Event()
        self.state_dir = Path(settings.state.directory)
        self.store = CheckpointStore(self.state_dir, settings.state.keep)
        self.registry = CollectorRegistry()
        self.queue = IngestQueue(settings.ingest.queue_size, settings.ingest.block_s)
        self.stats = LinkStats()
        self.rlog = RateLimitedLogger(log, settings.log.rate_limit_s)
        self.exporter = StreamExporter(settings.http.per_stream)
        self.finetuner = Finetuner(
            self.state_dir / "finetune", settings.finetune.mode, settings.finetune.nice
        )
        self.engine: Engine | None = None
        self.metrics: Metrics | None = None
        self.link: MqttLink | None = None  # events, availability; also receives with receiver = "thread"
        self.receiver: ReceiverProcess | None = None  # receives, with receiver = "process"
        self.http: MetricsServer | None = None
        self.discovery: HomeAssistantDiscovery | None = None  # Home Assistant discovery, if enabled
        # the jobs, built at start once the engine exists
        self.batches: Batches | None = None
        self.chores: Housekeeping | None = None
        self.checkpoints: Checkpoints | None = None
        self.tuning: Tuning | None = None
        self._loop_thread: threading.Thread | None = None
        self._period = settings.ingest.batch_ms / 1000.0
        self._loop_error: str = ""
        self._watchdog_s = notify.watchdog_interval_s()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Restore state, start HTTP, the engine loop and the MQTT link (which may keep retrying)."""
        s = self.settings
        self.engine, origin = build_engine(s, self.store)
        m = self.engine.config.model
        self.metrics = Metrics(self.registry, model_arch=m.arch, hidden=m.hidden, layers=m.layers)
        self.metrics.set_model(self.engine.model_version, swapped=False)
        self.metrics.observe_queue(0, s.ingest.queue_size)
        self.exporter.update(self.engine.view())
        log.info("engine: %s", origin)
        self._build_jobs()
        self.http = MetricsServer(self.registry, self.exporter, self.health, s.http.bind, s.http.port).start()
        log.info("serving /metrics and /healthz on http://%s:%d", s.http.bind, self.http.port)
        now = time.monotonic()
        self.checkpoints.schedule(now)
        self.tuning.schedule(now)
        self.chores.last_progress = now
        self._loop_thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        self._loop_thread.start()
        discovery = make_discovery(s, self.engine, self._publish, self.rlog)
        in_thread = s.ingest.receiver == "thread"
        self.link = MqttLink(
            s.mqtt if in_thread else publishing_settings(s.mqtt),
            PayloadParser(s.payload),
            self.queue,
            stats=self.stats if in_thread else LinkStats(),
            rate_log=self.rlog,
            status_topic=discovery.status_topic if discovery else None,
            on_status=discovery.on_status if discovery else None,
            on_enqueued=self.batches.process_inline if in_thread else None,
        )
        if discovery is not None:  # the engine thread starts using it from here
            self.discovery = discovery
            self.batches.feed = self.chores.feed = DiscoveryFeed(discovery, self.engine, self.link)
        self.metrics.mqtt_connected.set_function(lambda: float(self.mqtt_connected()))  # live at scrape
        self.link.start()
        if not in_thread:
            self.receiver = ReceiverProcess(
                s.mqtt,
                s.payload,
                self.queue,
                self.stats,
                on_enqueued=self.batches.process_inline,
                log_level=s.log.level,
                rate_limit_s=s.log.rate_limit_s,
                flush_s=self._period,
                batch_max=s.ingest.batch_max,
            )
            self.receiver.start()
        log.info("connecting to mqtt://%s:%d, topics %s", s.mqtt.host, s.mqtt.port, ", ".join(s.mqtt.topics))

    def _build_jobs(self) -> None:
        """Checkpoints, fine-tune glue, batches and housekeeping around the engine (no threads yet)."""
        s = self.settings
        self.checkpoints = Checkpoints(
            self.store, self.engine, self.metrics, self.rlog, s.state.checkpoint_interval_s
        )
        self.tuning = Tuning(s.finetune, self.finetuner, self.engine, self.metrics)
        mqtt = s.mqtt
        events = EventPublisher(self._publish, mqtt.anomaly_topic, mqtt.forecast_topic, rate_log=self.rlog)
        self.batches = Batches(
            s, self.engine, self.queue, self.metrics, events, self.tuning, self.clock, self._fail
        )
        counters = LinkCounters(self.stats, self.queue, self.metrics, s.ingest.queue_size)
        self.chores = Housekeeping(
            self.engine,
            self.metrics,
            self.exporter,
            counters,
            self.checkpoints,
            self.tuning,
            self.clock,
            self._watchdog_s,
        )

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Events and discovery go out through the daemon's link (raw bytes; False if not sent)."""
        return self.link.publish(topic, payload, qos, retain)

    def run(self) -> int:
        """Start, signal readiness, serve until SIGTERM/SIGINT, then shut down cleanly. Exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.start()
        freeze_startup_objects()  # the process lives on: keep full GC passes from walking start-up's heap
        notify.ready(self._status_line())
        last_status = ""
        while not self.stop_event.wait(1.0):
            line = self._status_line()
            if line != last_status:
                notify.status(line)
                last_status = line
            if self._loop_thread is not None and not self._loop_thread.is_alive():
                log.error("engine loop died: %s", self._loop_error)
                self.stop_event.set()
            if self.receiver is not None and self.receiver.finished.is_set() and not self.stop_event.is_set():
                self._loop_error = self.receiver.error or "receiver process ended"
                log.error("%s", self._loop_error)
                self.stop_event.set()
        self.shutdown()
        return 1 if self._loop_error else 0

    def shutdown(self) -> None:
        """Stop taking messages, drain what was acknowledged, write a final checkpoint."""
        notify.stopping()
        log.info("stopping: closing MQTT, draining %d queued samples", len(self.queue))
        self.stop_event.set()
        self.queue.close()  # a network thread waiting for room goes on; the drain below takes it all
        if self.receiver is not None:
            self.receiver.close()  # returns when all it received is queued here
        if self.link is not None:
            self.link.close()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=120)
        if self.engine is not None and self.batches is not None:
            self.batches.drain()
            self.checkpoints.join()
            self.checkpoints.write()
        if self.http is not None:
            self.http.stop()
        log.info("stopped")

    def _status_line(self) -> str:
        s = self.settings.mqtt
        streams = len(self.engine.streams) if self.engine else 0
        if self.mqtt_connected():
            return f"connected to {s.host}:{s.port}; {streams} streams; model v{self.engine.model_version}"
        return f"waiting for broker {s.host}:{s.port} (retrying); {streams} streams"

    def mqtt_connected(self) -> bool:
        """Connected to the broker: the daemon's link and, if there is one, the receiver's."""
        if self.link is None or not self.link.is_connected():
            return False
        return self.receiver is None or self.receiver.is_connected()

    def health(self) -> tuple[bool, str]:
        """/healthz: healthy when connected to the broker and the engine loop makes progress."""
        connected = self.mqtt_connected()
        age = time.monotonic() - (self.chores.last_progress if self.chores is not None else 0.0)
        alive = self._loop_thread is not None and self._loop_thread.is_alive() and age < 10.0
        if connected and alive:
            return True, "ok"
        why = [] if connected else ["mqtt disconnected"]
        if not alive:
            why.append(f"engine loop stalled ({age:.0f}s)")
        return False, "; ".join(why)

    # ------------------------------------------------------------- engine loop
    def _engine_loop(self) -> None:
        """Housekeeping, watchdog and the batches the MQTT thread leaves: under light load no next
        message comes to run them, so samples older than 1.5 ``batch_ms`` are processed here."""
        batches, chores = self.batches, self.chores
        batches.limit_torch_threads()
        try:
            while not self.stop_event.is_set():
                if self.queue.wait(self._period):
                    batches.process_waiting(self.stop_event)
                with batches.lock:
                    chores.run()
        except Exception as exc:  # the loop dying must be loud: the watchdog and /healthz see it too
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        """The engine failed (a bug): log it and stop the service with exit status 1."""
        self._loop_error = f"{type(exc).__name__}: {exc}"
        log.exception("engine loop crashed")
        self.stop_event.set()

    # -------------------------------------------------------------- test hooks
    def force_finetune(self) -> None:
        """Schedule a fine-tune at the next housekeeping pass (tests, and an admin command later)."""
        self.tuning.force()
