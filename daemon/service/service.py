"""The service: MQTT in -> engine loop -> metrics, MQTT events, checkpoints, background fine-tuning.

``Service(settings).run()`` owns the lifecycle: restore state, serve HTTP, connect to the broker in
the background (a broker that is down only shows in STATUS and /healthz), run the engine loop until
SIGTERM/SIGINT, then stop taking messages, drain the queue, write a final checkpoint and exit 0.
Samples arrive from the receiver process (or paho's thread with ``ingest.receiver = "thread"``); the
thread that receives them runs the due micro-batches, the engine thread runs what light load leaves,
housekeeping and the watchdog, under one engine lock; HTTP is served by the exposition process
(:mod:`daemon.outputs.expo_process`), which renders per-stream series from a shared-memory snapshot.

The jobs live beside this module: :mod:`~daemon.service.restore` (which engine), :mod:`.batches`,
:mod:`.housekeeping`, :mod:`.checkpoints`, :mod:`.tuning` and :mod:`.homeassistant`; this class
builds them, wires ingest to outputs, and starts and stops everything in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest

from daemon.heap import freeze_startup_objects
from daemon.ingest.columns import ColumnQueue
from daemon.ingest.link import MqttLink
from daemon.ingest.nats_positions import KEY as NATS_KEY
from daemon.ingest.nats_positions import Positions
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.ingest.receiver import ReceiverProcess
from daemon.outputs.discovery import HomeAssistantDiscovery
from daemon.outputs.events import EventPublisher
from daemon.outputs.expo_process import ExpositionProcess
from daemon.outputs.exposition import StreamExporter
from daemon.outputs.metrics import Metrics
from daemon.outputs.server import MetricsServer
from daemon.outputs.snapshot import SnapshotWriter
from daemon.ratelog import RateLimitedLogger
from daemon.service import notify
from daemon.service.batches import Batches
from daemon.service.checkpoints import Checkpoints
from daemon.service.durability import KEY as WAL_KEY
from daemon.service.durability import Durability, StartProgress
from daemon.service.finetuner import Finetuner
from daemon.service.homeassistant import DiscoveryFeed, make_discovery
from daemon.service.housekeeping import Housekeeping, LinkCounters
from daemon.service.restore import build_engine
from daemon.service.stop_signals import StopSignals
from daemon.service.tuning import Tuning
from daemon.service.worker_outputs import worker_availability_topic
from daemon.settings import MqttSettings, NatsSettings, Settings
from lstm_stream.checkpoint import CheckpointStore
from lstm_stream.engine import Engine

if TYPE_CHECKING:
    from daemon.ingest.nats_source import NatsSource
    from daemon.service.ownership import LeaseOwnership
    from daemon.service.static_ownership import StaticOwnership
    from daemon.service.worker_outputs import WorkerOutputs

log = logging.getLogger("lstm_stream.service")

STALL_S = 5.0  # a receiver process silent this long (it sends every 0.1 s) is replaced
# at shutdown with the log: the receiver gets this long to hand over, and samples still queued this
# long after SIGTERM stay in the log for the next start (systemd waits 90 s; the tests ask for < 10 s)
HANDOVER_S, DRAIN_S = 3.0, 6.0
# the engine loop's wait while nothing is queued or carried: a put ends it at once (the batch then goes
# when due), so this only paces housekeeping while idle (a 10 ms tick cost 18 ms of CPU a second)
IDLE_WAIT_S = 0.1


def publishing_settings(mqtt: MqttSettings, nats: NatsSettings | None = None) -> MqttSettings:
    """The daemon's own connection when a receiver process (or NATS) brings the samples: no topics,
    a client id of its own (``<client_id>-out``) and no session to keep; a NATS worker's availability
    is its own (``<availability_topic>/<worker_id>``)."""
    update: dict = {
        "topics": [],
        "client_id": f"{mqtt.client_id}-out",
        "clean_start": True,
        "session_expiry_s": 0,
    }
    if nats is not None:
        update["availability_topic"] = worker_availability_topic(mqtt.availability_topic, nats)
    return mqtt.model_copy(update=update)


class Service:
    """Wires ingest -> engine -> outputs and owns start, readiness, the engine loop, drain and shutdown."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.stop_event = threading.Event()
        self._signals: StopSignals | None = None  # SIGTERM/SIGINT set stop_event while run() serves
        self.state_dir = Path(settings.state.directory)
        self.store = CheckpointStore(self.state_dir, settings.state.keep)
        self.registry = CollectorRegistry()
        self.nats_on = settings.ingest.source == "nats"
        wal_on = settings.state.wal and settings.ingest.receiver == "process" and not self.nats_on
        # with the log, queued samples are acknowledged already (with NATS, the server holds the
        # rest): wait for room, never drop them. The receiver process and the NATS reader hand samples
        # over in columns, and they stay columns up to the engine
        in_columns = settings.ingest.receiver == "process" or self.nats_on
        queue_type = ColumnQueue if in_columns else IngestQueue
        self.queue = queue_type(
            settings.ingest.queue_size, float("inf") if wal_on or self.nats_on else settings.ingest.block_s
        )
        self.stats = LinkStats()
        self.rlog = RateLimitedLogger(log, settings.log.rate_limit_s)
        # per-stream series rendered by a child process from a shared-memory snapshot, or here; the
        # forecast path's configured steps that the engine's horizon has
        h = settings.http
        steps = tuple(k for k in h.horizons if k <= (settings.engine.horizon or 0))
        in_child = h.exposition == "process" and h.per_stream != "none"
        self.exporter: SnapshotWriter | StreamExporter = (
            SnapshotWriter(horizons=steps) if in_child else StreamExporter(h.per_stream, steps)
        )
        self.finetuner = Finetuner(
            self.state_dir / "finetune", settings.finetune.mode, settings.finetune.nice
        )
        self.engine: Engine | None = None
        self.metrics: Metrics | None = None
        self.link: MqttLink | None = None  # events, availability; also receives with receiver = "thread"
        self.receiver: ReceiverProcess | None = None  # receives, with receiver = "process"
        self.source: NatsSource | None = None  # receives, with ingest.source = "nats"
        self.positions: Positions | None = None  # the NATS partitions' applied sequences
        self.ownership: LeaseOwnership | StaticOwnership | None = None  # NATS partitions' leases
        self.worker: WorkerOutputs | None = None  # a NATS worker's outlet, availability and fence
        self.http: MetricsServer | ExpositionProcess | None = None
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
        self.wal: Durability | None = None
        if wal_on:
            self.wal = Durability(self.state_dir / "wal")
        self.receiver_restarts = 0
        self._receiver_why = ""  # why the receiver was last found dead or stalled

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Restore state, start HTTP, the engine loop and the MQTT link (which may keep retrying)."""
        s = self.settings
        if s.state.wal and s.ingest.receiver == "thread" and not self.nats_on:
            log.warning("state.wal needs ingest.receiver = process: acknowledging on receipt")
        for stale in self.store.remove_stale():
            log.info("removed %s (a checkpoint write that was interrupted)", stale.name)
        self.engine, origin = build_engine(s, self.store)
        next_index = 0
        if self.wal is not None:
            info = self.store.loaded_info if origin.startswith("restored") else {}
            next_index = self.wal.replay(self.engine, info, self.clock(), progress=StartProgress())
        if self.nats_on:
            info = self.store.loaded_info if origin.startswith("restored") else {}
            self.positions = Positions(info.get(NATS_KEY))
            if s.nats.ownership == "lease":  # partitions come with their state from the object store
                self.engine.forget(self.engine.streams)
                self.positions = Positions()
        m = self.engine.config.model
        self.metrics = Metrics(self.registry, model_arch=m.arch, hidden=m.hidden, layers=m.layers)
        self.metrics.set_model(self.engine.model_version, swapped=False)
        self.metrics.observe_queue(0, s.ingest.queue_size)
        self.exporter.update(self.engine.view())
        log.info("engine: %s", origin)
        self._build_jobs()
        self.batches.applied = next_index
        self.http = self._make_http().start()
        log.info("serving /metrics and /healthz on http://%s:%d", s.http.bind, self.http.port)
        now = time.monotonic()
        self.checkpoints.schedule(now)
        self.tuning.schedule(now)
        self.chores.last_progress = now
        self._loop_thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        self._loop_thread.start()
        discovery = make_discovery(s, self.engine, self._publish, self.rlog)
        in_thread = s.ingest.receiver == "thread" and not self.nats_on
        self.link = MqttLink(
            s.mqtt if in_thread else publishing_settings(s.mqtt, s.nats if self.nats_on else None),
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
        self.metrics.queue_depth.set_function(lambda: float(len(self.queue)))
        self.link.start()
        if self.nats_on:
            self.source = self._make_source()
            return
        if not in_thread:
            self.receiver = self._make_receiver(next_index)
            self.receiver.start()
        log.info("connecting to mqtt://%s:%d, topics %s", s.mqtt.host, s.mqtt.port, ", ".join(s.mqtt.topics))

    def _make_source(self) -> NatsSource:
        """The NATS JetStream source, started on the partitions this worker owns."""
        from daemon.ingest.nats_source import NatsSource  # nats-py is loaded on this path only

        s = self.settings
        source = NatsSource(
            s.nats,
            PayloadParser(s.payload),
            self.queue,
            self.positions,
            stats=self.stats,
            rate_log=self.rlog,
            on_enqueued=self.batches.process_inline,
            flush_s=s.ingest.batch_ms / 1000.0,
            flush_max=s.ingest.batch_max,
        )
        log.info("consuming NATS %s stream %s", ", ".join(s.nats.servers), s.nats.stream)
        from daemon.service.worker_outputs import WorkerOutputs

        self.worker = WorkerOutputs(s.nats, self.registry, lambda: len(source.owned), source.reader)
        source.start([])  # partitions are consumed once their leases are held
        if s.nats.ownership == "static":
            from daemon.service.static_ownership import StaticOwnership

            self.ownership = StaticOwnership(s.nats, source, self.batches, self.positions)
        else:
            from daemon.service.ownership import LeaseOwnership

            self.ownership = LeaseOwnership(s, source, self.engine, self.batches, self.positions)
        self.worker.attach(source, self.ownership)
        self.ownership.start()
        return source

    def _make_http(self) -> MetricsServer | ExpositionProcess:
        """The /metrics and /healthz server (not started): the exposition process, or a thread here."""
        h, observe = self.settings.http, self.metrics.observe_exposition
        if isinstance(self.exporter, SnapshotWriter):
            return ExpositionProcess(
                lambda: generate_latest(self.registry),
                self.exporter,
                self.health,
                h.bind,
                h.port,
                h.per_stream,
                observe=observe,
            )
        return MetricsServer(self.registry, self.exporter, self.health, h.bind, h.port, observe=observe)

    def _check_exposition(self) -> None:
        """Main thread, every second: an exposition process that died is restarted (and counted)."""
        if isinstance(self.http, ExpositionProcess) and not self.stop_event.is_set() and self.http.check():
            self.metrics.exposition_restarted()

    def _make_receiver(self, next_index: int) -> ReceiverProcess:
        """A receiver process (not started) that logs from ``next_index`` on, if the log is on."""
        s = self.settings
        sync_ms = s.state.wal_sync_ms or s.ingest.batch_ms
        return ReceiverProcess(
            s.mqtt,
            s.payload,
            self.queue,
            self.stats,
            on_enqueued=self.batches.process_inline,
            log_level=s.log.level,
            rate_limit_s=s.log.rate_limit_s,
            flush_s=self._period,
            batch_max=s.ingest.batch_max,
            wal_dir=self.wal.directory if self.wal is not None else None,
            next_index=next_index,
            sync_s=sync_ms / 1000.0,
            on_stats=self.chores.counters.sync,
        )

    def _check_receiver(self) -> None:
        """Main thread, every second: a receiver that died or went silent (stopped, hung) is
        replaced; what it logged but never sent is read back from the log first."""
        r = self.receiver
        if r is None or self.stop_event.is_set():
            return
        if r.finished.is_set():
            why = r.error or "receiver process ended"
        elif r.silent_s() > STALL_S:
            why = f"receiver process silent for {r.silent_s():.0f}s"
        else:
            return
        self._receiver_why = why
        log.error("%s: restarting it", why)
        r.kill()
        next_index = r.expected
        if self.wal is not None:
            next_index = self.wal.tail(self.queue, r.expected)
        self.receiver_restarts += 1
        self.metrics.receiver_restarted()
        self.receiver = self._make_receiver(next_index)
        self.receiver.start()

    def _build_jobs(self) -> None:
        """Checkpoints, fine-tune glue, batches and housekeeping around the engine (no threads yet)."""
        s = self.settings
        wal = self.wal
        self.checkpoints = Checkpoints(
            self.store,
            self.engine,
            self.metrics,
            self.rlog,
            s.state.checkpoint_interval_s,
            info=self._checkpoint_info if wal or self.positions is not None else None,
            on_saved=(lambda info: wal.saved(info, self.receiver.rotate if self.receiver else None))
            if wal
            else None,
        )
        self.tuning = Tuning(s.finetune, self.finetuner, self.engine, self.metrics)
        mqtt = s.mqtt
        fence = self._fence if self.nats_on else None
        events = EventPublisher(
            self._emit, mqtt.anomaly_topic, mqtt.forecast_topic, rate_log=self.rlog, fence=fence
        )
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

    def _checkpoint_info(self) -> dict:
        """Saved with each snapshot, under the engine lock: the log index or the NATS positions it covers."""
        if self.positions is not None:
            return {NATS_KEY: self.positions.applied(self.batches.applied)}
        return {WAL_KEY: self.batches.applied}

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Discovery (and events, on MQTT) go out through the daemon's link (raw bytes; False if not sent)."""
        return self.link.publish(topic, payload, qos, retain)

    def _emit(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Events and forecasts: on NATS subjects with ``nats.outputs = "nats"``, else on MQTT."""
        outlet = self.worker.outlet if self.worker is not None else None
        return (outlet or self.link).publish(topic, payload, qos, retain)

    def _fence(self) -> Callable[[str], bool] | None:
        """Which streams this worker may publish for now (EventPublisher.fence; None: all)."""
        return self.worker.allowed() if self.worker is not None else None

    def run(self) -> int:
        """Start, signal readiness, serve until SIGTERM/SIGINT, then shut down cleanly. Exit status."""
        self._signals = StopSignals(self.stop_event)  # kept for the process's life: no lock in a handler
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
            self._check_receiver()
            self._check_exposition()
        ok = self.shutdown()
        return 1 if self._loop_error or not ok else 0

    def shutdown(self) -> bool:
        """Stop receiving, drain what is queued (its events and forecasts published), write the final
        checkpoint, then announce ``offline`` and disconnect. False when the final checkpoint failed."""
        notify.stopping()
        started = time.monotonic()
        log.info("stopping: receiving no more, draining %d queued samples", len(self.queue))
        self.stop_event.set()
        self.queue.close()  # a network thread waiting for room goes on; the drain below takes it all
        if self.batches is not None:
            self.batches.inline = False  # the receiving thread only queues from here on
        if self.receiver is not None:
            self.receiver.close(timeout=HANDOVER_S)  # returns when all it sent is queued here
            if self.wal is not None:  # what it logged but could not send (killed, or too slow)
                self.wal.tail(self.queue, self.receiver.expected)
        if self.ownership is not None:
            self.ownership.close()  # queue applied (lease: checkpoints written), leases given back
        if self.worker is not None and self.source is not None:
            self.worker.close(self.source, self.batches.drain)  # events out, then offline
        if self.source is not None:
            self.source.close(timeout=HANDOVER_S)  # nothing is queued after this
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=120)
        ok = True
        if self.engine is not None and self.batches is not None:
            deadline = started + DRAIN_S if self.wal is not None else float("inf")
            try:
                left = self.batches.drain(deadline)
                if left:
                    log.warning(
                        "%d samples not drained in time: they stay in the log for the next start", left
                    )
            except Exception:  # noqa: BLE001 - the final checkpoint still goes to disk
                log.exception("draining the queue failed")
                self._loop_error = self._loop_error or "drain failed"
            self.checkpoints.join()
            ok = self.checkpoints.write()
            if not ok:
                log.error("the final checkpoint failed: exit status 1")
        if self.link is not None:
            self.link.close()  # publishes offline, then disconnects
        if self.http is not None:
            self.http.stop()
        log.info("stopped in %.1fs", time.monotonic() - started)
        return ok

    def _status_line(self) -> str:
        s = self.settings.mqtt
        streams = len(self.engine.streams) if self.engine else 0
        if self.source is not None:
            where = f"NATS stream {self.settings.nats.stream}, partitions {self.source.owned}"
            state = "consuming" if self.source.is_connected() else "waiting for NATS (retrying)"
            return f"{state}: {where}; {streams} streams"
        if self.mqtt_connected():
            return f"connected to {s.host}:{s.port}; {streams} streams; model v{self.engine.model_version}"
        return f"waiting for broker {s.host}:{s.port} (retrying); {streams} streams"

    def mqtt_connected(self) -> bool:
        """Connected to the broker: the daemon's link and, if there is one, the receiver's (which
        must also have been heard from lately: a stopped child keeps its last word)."""
        if self.source is not None:  # events on MQTT are best effort then: samples come from NATS
            return self.source.is_connected()
        if self.link is None or not self.link.is_connected():
            return False
        r = self.receiver
        return r is None or (r.is_connected() and r.silent_s() < STALL_S / 2)

    def health(self) -> tuple[bool, str]:
        """/healthz: healthy when connected to the broker, the engine loop makes progress and the
        log takes writes."""
        connected = self.mqtt_connected()
        age = time.monotonic() - (self.chores.last_progress if self.chores is not None else 0.0)
        alive = self._loop_thread is not None and self._loop_thread.is_alive() and age < 10.0
        r = self.receiver
        wal_error = r.wal.error if r is not None else ""
        stuck = self._stuck_partitions()
        if connected and alive and not wal_error and not stuck:
            return True, "ok"
        why = [] if connected else ["nats disconnected" if self.source is not None else "mqtt disconnected"]
        if stuck and connected:
            parts = ", ".join(str(k) for k in sorted(stuck))
            why.append(f"NATS partitions {parts} waiting on the server for {max(stuck.values()):.0f}s")
        if r is not None and r.silent_s() >= STALL_S / 2:
            why.append(f"receiver process silent for {r.silent_s():.0f}s")
        if not alive:
            why.append(f"engine loop stalled ({age:.0f}s)")
        if wal_error:
            why.append(f"{wal_error} (not acknowledging)")
        return False, "; ".join(why)

    def _stuck_partitions(self) -> dict[int, float]:
        """Owned NATS partitions that have waited on the server longer than ``STUCK_S`` (their
        consumer was renewed and still nothing came): partition -> seconds."""
        if self.source is None:
            return {}
        from daemon.ingest.nats_pull import STUCK_S

        return {k: w for k, w in self.source.reader.waits().items() if w > STUCK_S}

    # ------------------------------------------------------------- engine loop
    def _engine_loop(self) -> None:
        """Housekeeping, watchdog and the batches the MQTT thread leaves: under light load no next
        message comes to run them, so samples older than 1.5 ``batch_ms`` are processed here."""
        batches, chores = self.batches, self.chores
        batches.limit_torch_threads()
        try:
            while not self.stop_event.is_set():
                if batches.pending or self.queue.wait(IDLE_WAIT_S):
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
