"""The service: MQTT in -> engine loop -> metrics, MQTT events, checkpoints, background fine-tuning.

``Service(settings).run()`` owns the lifecycle: restore state, serve HTTP, connect to the broker in
the background (a broker that is down only shows in STATUS and /healthz), run the engine loop until
SIGTERM/SIGINT, then stop taking messages, drain the queue, write a final checkpoint and exit 0.
Samples arrive from the receiver process (or paho's thread with ``ingest.receiver = "thread"``); the
thread that receives them runs the due micro-batches, the engine thread runs what light load leaves,
housekeeping and the watchdog, under one engine lock; HTTP scrapes are served from a cache.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from lstm_stream import checkpoint, scoring
from lstm_stream.checkpoint import CheckpointStore
from lstm_stream.engine import REJECTS, Engine, Results
from lstm_stream.pretrained import load_pretrained

from . import notify
from .discovery import HomeAssistantDiscovery
from .finetuner import Finetuner, Outcome
from .heap import freeze_startup_objects
from .metrics import Metrics, MetricsServer, StreamExporter, code_counts
from .mqtt import IngestQueue, LinkStats, MqttLink
from .payload import PayloadParser, RateLimitedLogger
from .receiver import ReceiverProcess
from .settings import MqttSettings, Settings

log = logging.getLogger("lstm_stream.service")
VIEW_EVERY_S = 0.5  # how often the engine thread hands a fresh per-stream view to the exporter
HOUSEKEEPING_EVERY_S = 1.0
LATENCY_SANE_S = 300.0  # sample timestamps further off than this are historic data, not latency


def build_engine(settings: Settings, store: CheckpointStore) -> tuple[Engine, str]:
    """The engine to serve with: the newest good checkpoint, else the configured model, else the
    shipped pretrained one. Returns it and a one-line description of where it came from."""
    engine, path, errors = store.load_latest()
    for err in errors:
        log.error("refused checkpoint: %s", err)
    cfg = settings.engine
    if not settings.finetune.enabled:  # nothing reads the training history: do not hold it
        cfg = cfg.model_copy(update={"history_len": 0})
    if engine is not None:
        engine.config = _adopt_tunables(engine.config, cfg)
        return (
            engine,
            f"restored {path.name} (model version {engine.model_version}, {len(engine.streams)} streams)",
        )
    if settings.model_path is not None:
        loaded = checkpoint.load_model(settings.model_path)
        cfg = cfg.model_copy(update={"model": loaded.config.model, "scaling": loaded.config.scaling})
        if loaded.config.mode == "window" or loaded.config.model.arch != "lstm":
            cfg = cfg.model_copy(update={"mode": "window", "look_back": loaded.config.look_back})
        return Engine(cfg, loaded.model, loaded.version), f"model {settings.model_path}"
    loaded = load_pretrained()
    if cfg.model != loaded.config.model:
        log.warning("engine.model differs from the shipped model: starting from random weights")
        return Engine(cfg), "untrained model (engine.model differs from the shipped one)"
    return Engine(cfg.model_copy(update={"scaling": loaded.config.scaling}), loaded.model), "pretrained model"


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


def _adopt_tunables(restored, configured):
    """Settings that can change across a restart (scoring, training, limits) come from the config;
    those the saved arrays depend on (model, look_back, history_len, mode) stay as saved."""
    fixed = ("model", "look_back", "history_len", "mode", "scaling")
    changed = [k for k in fixed if getattr(restored, k) != getattr(configured, k)]
    if changed:
        log.warning("keeping the checkpoint's %s (the saved state depends on them)", ", ".join(changed))
    return configured.model_copy(update={k: getattr(restored, k) for k in fixed})


class Service:
    """Wires ingest -> engine -> outputs and owns start, readiness, watchdog, drain and shutdown."""

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
        self._discovery_connects = 0
        self._loop_thread: threading.Thread | None = None
        # the engine is used by the MQTT thread (due batches, under load) and the engine thread
        # (batches left waiting under light load, housekeeping): one at a time
        self._engine_lock = threading.Lock()
        self._torch_threads = threading.local()  # .set once torch's thread count is set in a thread
        self._period = settings.ingest.batch_ms / 1000.0
        # how old the oldest queued sample must be for an inline batch: the receiver process has
        # waited batch_ms already, so what it sends is processed at once
        self._inline_age = 0.0 if settings.ingest.receiver == "process" else self._period
        self._ckpt_thread: threading.Thread | None = None
        self._last_progress = 0.0
        self._loop_error: str = ""
        self._seen = {
            "received": 0,
            "rejected": dict.fromkeys(self.stats.rejected, 0),
            "dropped": 0,
            "blocked": 0.0,
            "connects": 0,
        }
        self._samples_since_finetune = 0
        self._next = {"checkpoint": 0.0, "finetune": 0.0, "view": 0.0, "housekeeping": 0.0}
        self._watchdog_s = notify.watchdog_interval_s()
        self._last_watchdog = 0.0

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
        self.http = MetricsServer(self.registry, self.exporter, self.health, s.http.bind, s.http.port).start()
        log.info("serving /metrics and /healthz on http://%s:%d", s.http.bind, self.http.port)
        now = time.monotonic()
        self._next.update(
            checkpoint=now + s.state.checkpoint_interval_s,
            finetune=now + s.finetune.interval_s,
        )
        self._last_progress = now
        self._loop_thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        self._loop_thread.start()
        discovery = self._make_discovery()
        in_thread = s.ingest.receiver == "thread"
        self.link = MqttLink(
            s.mqtt if in_thread else publishing_settings(s.mqtt),
            PayloadParser(s.payload),
            self.queue,
            stats=self.stats if in_thread else LinkStats(),
            rate_log=self.rlog,
            status_topic=discovery.status_topic if discovery else None,
            on_status=discovery.on_status if discovery else None,
            on_enqueued=self._process_inline if in_thread else None,
        )
        self.discovery = discovery  # the engine thread starts using it from here
        self.metrics.mqtt_connected.set_function(lambda: float(self.mqtt_connected()))  # live at scrape
        self.link.start()
        if not in_thread:
            self.receiver = ReceiverProcess(
                s.mqtt,
                s.payload,
                self.queue,
                self.stats,
                on_enqueued=self._process_inline,
                log_level=s.log.level,
                rate_limit_s=s.log.rate_limit_s,
                flush_s=self._period,
                batch_max=s.ingest.batch_max,
            )
            self.receiver.start()
        log.info("connecting to mqtt://%s:%d, topics %s", s.mqtt.host, s.mqtt.port, ", ".join(s.mqtt.topics))

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
        if self.engine is not None:
            self._drain()
            if self._ckpt_thread is not None:
                self._ckpt_thread.join()
            self._checkpoint()
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
        age = time.monotonic() - self._last_progress
        alive = self._loop_thread is not None and self._loop_thread.is_alive() and age < 10.0
        if connected and alive:
            return True, "ok"
        why = [] if connected else ["mqtt disconnected"]
        if not alive:
            why.append(f"engine loop stalled ({age:.0f}s)")
        return False, "; ".join(why)

    # ------------------------------------------------------------- engine loop
    def _process_inline(self) -> None:
        """On the receiving thread after each enqueue: run a due micro-batch (``batch_max`` queued, or
        the oldest sample ``batch_ms`` old; with the receiver process, whatever arrived) right here.
        Under load this keeps receiving and the engine in one thread, so they do not hand the GIL to
        each other thousands of times a second. Skipped while the engine thread holds the engine: it
        will take the batch."""
        batch_max = self.settings.ingest.batch_max
        if not self.queue.due(batch_max, self._inline_age) or not self._engine_lock.acquire(blocking=False):
            return
        try:
            self._process(self.queue.drain(batch_max))
        except Exception as exc:  # as loud as the engine loop dying: exit 1, systemd restarts
            self._fail(exc)
        finally:
            self._engine_lock.release()

    def _engine_loop(self) -> None:
        """Housekeeping, watchdog and the batches the MQTT thread leaves: under light load no next
        message comes to run them, so samples older than 1.5 ``batch_ms`` are processed here."""
        ingest = self.settings.ingest
        period = self._period
        self._limit_torch_threads()
        try:
            while not self.stop_event.is_set():
                if self.queue.wait(period):
                    # give the MQTT thread its chance first; it runs due batches as messages arrive
                    time.sleep(max(0.0, self.queue.since + 1.5 * period - time.monotonic()))
                    with self._engine_lock:
                        while self.queue.due(ingest.batch_max, period):
                            batch = self.queue.drain(ingest.batch_max)
                            self._process(batch)
                            if len(batch) < ingest.batch_max or self.stop_event.is_set():
                                break
                with self._engine_lock:
                    self._housekeeping()
        except Exception as exc:  # the loop dying must be loud: the watchdog and /healthz see it too
            self._fail(exc)

    def _limit_torch_threads(self) -> None:
        """Once per thread that runs the engine: OpenMP's thread count is per thread, and with every
        core a torch call stalls for tens of ms whenever another thread or process is busy."""
        if not getattr(self._torch_threads, "set", False):
            torch.set_num_threads(self.engine.config.torch_threads)
            self._torch_threads.set = True

    def _fail(self, exc: Exception) -> None:
        """The engine failed (a bug): log it and stop the service with exit status 1."""
        self._loop_error = f"{type(exc).__name__}: {exc}"
        log.exception("engine loop crashed")
        self.stop_event.set()

    def _drain(self) -> None:
        with self._engine_lock:
            while len(self.queue):
                self._process(self.queue.drain(self.settings.ingest.batch_max))

    def _process(self, samples: list) -> None:
        if not samples:
            return
        self._limit_torch_threads()
        streams, ts, values = zip(*samples, strict=True)
        t0 = time.perf_counter()
        r = self.engine.process(
            streams,
            np.fromiter(ts, np.float64, len(ts)),
            np.fromiter(values, np.float64, len(values)),
            now=self.clock(),
        )
        elapsed = time.perf_counter() - t0
        done = self.clock()
        lat = done - r.ts[r.accepted]
        lat = lat[(lat >= 0) & (lat < LATENCY_SANE_S)]
        self.metrics.observe_batch(
            len(samples), elapsed, code_counts(r.reject, REJECTS), code_counts(r.reason, scoring.REASONS), lat
        )
        if r.evicted:
            self.metrics.observe_streams(len(self.engine.streams), evicted=len(r.evicted))
        self._samples_since_finetune += int(r.accepted.sum())
        if r.is_anomaly.any():
            self._publish_events(r)
        if self.settings.mqtt.forecast_topic:
            self._publish_forecasts(r)
        if self.discovery is not None:
            self._discovery_batch(r)

    def _publish_events(self, r: Results) -> None:
        ok = failed = 0
        for i in np.nonzero(r.is_anomaly)[0].tolist():
            event = {
                "stream": r.stream[i],
                "ts": float(r.ts[i]),
                "value": float(r.value[i]),
                "forecast": float(r.forecast[i]),
                "spread": float(r.spread[i]),
                "score": round(float(r.score[i]), 6),
                "reason": r.reason_of(i),
                "model_version": self.engine.model_version,
                "schema": 1,
            }
            if self.link.publish_event(event):
                ok += 1
            else:
                failed += 1
        self.metrics.observe_publish(ok, failed)

    def _publish_forecasts(self, r: Results) -> None:
        for i in np.nonzero(r.accepted)[0].tolist():
            self.link.publish_forecast(r.stream[i], float(r.ts[i]), float(r.next_forecast[i]))

    # ------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        now = time.monotonic()
        self._last_progress = now
        self._watchdog(now)
        if now >= self._next["view"]:
            self._next["view"] = now + VIEW_EVERY_S
            self.exporter.update(self.engine.view())
            self._sync_link_metrics()
        if now < self._next["housekeeping"]:
            return
        self._next["housekeeping"] = now + HOUSEKEEPING_EVERY_S
        self.metrics.engine_progress()
        expired = self.engine.expire(self.clock())
        self.metrics.observe_streams(len(self.engine.streams), expired=len(expired))
        if self.discovery is not None:
            self._discovery_housekeeping(expired)
        self._finetune_step(now)
        if now >= self._next["checkpoint"]:
            self._next["checkpoint"] = now + self.settings.state.checkpoint_interval_s
            self._checkpoint(background=True)

    def _watchdog(self, now: float) -> None:
        if self._watchdog_s and now - self._last_watchdog >= self._watchdog_s:
            notify.watchdog()
            self._last_watchdog = now

    def _sync_link_metrics(self) -> None:
        """Copy the network thread's plain counters into Prometheus (deltas since the last copy)."""
        st, seen = self.stats, self._seen
        rejected = {k: v - seen["rejected"].get(k, 0) for k, v in list(st.rejected.items())}
        self.metrics.observe_messages(st.received - seen["received"], rejected)
        seen["received"] = st.received
        seen["rejected"].update(st.rejected)
        dropped, blocked = self.queue.dropped, self.queue.blocked_s
        self.metrics.observe_queue(
            len(self.queue),
            self.settings.ingest.queue_size,
            dropped - seen["dropped"],
            blocked - seen["blocked"],
        )
        seen["dropped"], seen["blocked"] = dropped, blocked
        if st.connects > 1 and st.connects > seen["connects"]:
            for _ in range(st.connects - max(seen["connects"], 1)):
                self.metrics.mqtt_reconnected()
        seen["connects"] = st.connects

    def _checkpoint(self, background: bool = False) -> None:
        """Checkpoint now. ``background``: copy the arrays here (tens of ms for 10k streams) and
        leave the encoding, checksum and fsync to a thread, so ingestion does not wait for the disk."""
        if background and self._ckpt_thread is not None and self._ckpt_thread.is_alive():
            return  # the previous one is still being written: skip this turn
        t0 = time.monotonic()
        try:
            parts = checkpoint.snapshot_parts(self.engine)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the service goes on
            self._checkpoint_done(None, exc, t0)
            return
        if not background:
            self._write_checkpoint(parts, t0)
            return
        self._ckpt_thread = threading.Thread(
            target=self._write_checkpoint, args=(parts, t0), name="checkpoint", daemon=True
        )
        self._ckpt_thread.start()

    def _write_checkpoint(self, parts: tuple, t0: float) -> None:
        try:
            path = self.store.save_parts(*parts)
        except Exception as exc:  # a full disk must not stop the service; it is counted and logged
            self._checkpoint_done(None, exc, t0)
            return
        self._checkpoint_done(path, None, t0)

    def _checkpoint_done(self, path: Path | None, exc: Exception | None, t0: float) -> None:
        seconds = time.monotonic() - t0
        self.metrics.observe_checkpoint(path is not None, seconds)
        if path is None:
            self.rlog.log("checkpoint", "checkpoint failed: %s", exc)
            return
        log.info("checkpoint %s (%d streams, %.2fs)", path.name, len(self.engine.streams), seconds)

    # ------------------------------------------------ Home Assistant discovery
    def _make_discovery(self) -> HomeAssistantDiscovery | None:
        """The discovery publisher when ``homeassistant.enabled`` (publishing through the link)."""
        s = self.settings
        if not s.homeassistant.enabled:
            return None
        m = self.engine.config.model
        return HomeAssistantDiscovery(
            s.homeassistant,
            lambda topic, payload, qos, retain: self.link.publish(topic, payload, qos, retain),
            availability_topic=s.mqtt.availability_topic,
            model=f"{m.arch.upper()} forecaster ({m.layers}x{m.hidden})",
            rate_log=self.rlog,
        )

    def _discovery_batch(self, r: Results) -> None:
        """Announce the batch's new streams, remove evicted ones, publish announced streams' states."""
        d = self.discovery
        if r.evicted:
            d.remove(r.evicted)
        if r.created:
            d.add(r.created)
        if not d.announced:
            return
        names = list(d.announced.keys() & set(r.stream))
        if names:
            slots = self.engine.table.lookup(names)
            known = slots >= 0
            if not known.all():
                names, slots = [n for n, k in zip(names, known.tolist(), strict=True) if k], slots[known]
            a = self.engine.arrays
            d.update(names, a["in_anomaly"][slots].tolist(), a["fc_mean"][slots].tolist())

    def _discovery_housekeeping(self, expired: list[str]) -> None:
        """Remove expired streams; after each (re)connect announce every tracked stream again
        (restored from a checkpoint, or lost by the broker); republish when Home Assistant asks."""
        d = self.discovery
        if expired:
            d.remove(expired)
        connects = self.link.stats.connects  # the link discovery publishes through
        if connects != self._discovery_connects and self.link.is_connected():
            self._discovery_connects = connects
            d.add(self.engine.streams, publish=False)
            d.request_republish()
        d.tick()

    # -------------------------------------------------------------- fine-tuning
    def _finetune_step(self, now: float) -> None:
        outcome = self.finetuner.result()
        if outcome is not None:
            self._apply_finetune(outcome)
        ft = self.settings.finetune
        if not ft.enabled or self.finetuner.busy or now < self._next["finetune"]:
            return
        self._next["finetune"] = now + ft.interval_s
        if self._samples_since_finetune < ft.min_new_samples:
            return
        self._samples_since_finetune = 0
        history = self.engine.history(min_len=self.engine.config.train.seq_len + 1)
        if self.finetuner.start(self.engine.copy_model(), history, self.engine.config):
            log.info("fine-tune started on %d streams' history (%s)", len(history), ft.mode)

    def _apply_finetune(self, o: Outcome) -> None:
        self.metrics.observe_finetune(o.outcome, o.seconds, o.candidate_loss, o.live_loss)
        if o.outcome == "accepted" and o.candidate is not None:
            t0 = time.monotonic()
            self.engine.swap_model(o.candidate)
            self.metrics.set_model(self.engine.model_version)
            log.info(
                "fine-tune accepted: validation loss %.4f < live %.4f; model v%d swapped in (%.2fs)",
                o.candidate_loss,
                o.live_loss,
                self.engine.model_version,
                time.monotonic() - t0,
            )
        else:
            detail = o.error or f"candidate loss {o.candidate_loss:.4f}, live {o.live_loss:.4f}"
            log.warning("fine-tune %s: %s; live model kept", o.outcome, detail)

    # -------------------------------------------------------------- test hooks
    def force_finetune(self) -> None:
        """Schedule a fine-tune at the next housekeeping pass (tests, and an admin command later)."""
        self._samples_since_finetune = max(
            self._samples_since_finetune, self.settings.finetune.min_new_samples
        )
        self._next["finetune"] = 0.0
