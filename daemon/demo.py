"""``lstm-stream demo``: a broker, simulated sensors and the real daemon on this machine, in one command.

What runs, all in this process except Mosquitto:

- a **broker** on 127.0.0.1: Mosquitto when it is installed (a child process with a throw-away
  config), else the embedded pure-Python ``amqtt`` broker (``pip install "lstm-stream[demo]"``) on
  its own asyncio loop in a thread. amqtt speaks MQTT 3.1.1 only, so the daemon then connects with
  ``mqtt.protocol = "3.1.1"``;
- **simulated plant sensors** (:class:`lstm_stream.synthetic.Simulator`: sines, noise, a trend, with
  injected spikes, dips and stuck values) publishing JSON ``{"value", "ts"}`` to ``demo/plant/...``;
- **the daemon** itself (:class:`daemon.service.Service`, as ``lstm-stream run`` starts it) with a short
  warm-up and a fine-tune every minute, serving ``/metrics`` and publishing anomaly events;
- a **watcher** subscribed to the anomaly topic that prints each event as it arrives, with what the
  simulator had injected there, plus a periodic line read from ``/metrics`` as Prometheus would.

Sample timestamps are wall-clock time (the step's scheduled time ``t0 + step / rate``), not a fake
clock running one second per step: the daemon's ingest-latency histogram, ``last_seen`` gauges and
idle expiry then show real values, and a Prometheus or Grafana pointed at the metrics URL lines up with
the terminal. The engine never looks at the spacing between samples, so compressing one "sample
interval" into 1/rate seconds changes no forecast; and the step of any event is recovered exactly from
its timestamp, which is how flags are matched to injections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOPIC_PREFIX = "demo"
SCORING_WARMUP = 200  # samples per stream before any flag (the product default is 300)
SIM_WARMUP = 300  # steps before the simulator injects anything: warm-up plus some settling
ANOMALY_EVERY = 300  # mean steps between injections, per sensor
GRACE_STEPS = 30  # a flag up to this many steps after an injection ended counts as catching it
FINETUNE_INTERVAL_S = 60.0
DEFAULT_MQTT_PORT = 1883
DEFAULT_HTTP_PORT = 9464
EX_UNAVAILABLE = 69  # sysexits.h: no broker could be started

log = logging.getLogger("lstm_stream.demo")


# --------------------------------------------------------------------------- output
class Console:
    """Whole lines to stdout from several threads, flushed at once (so ``| tee`` shows them live)."""

    def __init__(self, write: Callable[[str], Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._write = write

    def __call__(self, line: str = "") -> None:
        with self._lock:
            if self._write is not None:
                self._write(line)
                return
            try:
                print(line, flush=True)
            except BrokenPipeError:  # e.g. `| tee` or `| head` ended: carry on and shut down cleanly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console(self.format(record))
        except Exception:  # logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _demo_logging(console: Console):
    """The daemon's own INFO lines (checkpoints, fine-tunes) and everyone's warnings, prefixed."""
    handler = _ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("  daemon | %(message)s"))
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "lstm_stream.service", "daemon.finetuner")}
    quiet = {name: logging.getLogger(name).level for name in ("amqtt", "transitions")}
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("lstm_stream.service").setLevel(logging.INFO)
    logging.getLogger("daemon.finetuner").setLevel(logging.INFO)
    for name in quiet:  # amqtt logs every connect and disconnect; its errors still show
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in {**levels, **quiet}.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------- ports
def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind ``host:port`` right now (as brokers do: with SO_REUSEADDR,
    so the TIME_WAIT connections of a previous run do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _choose_port(requested: int | None, preferred: int, what: str) -> int:
    """``requested`` if given (it must be free); else ``preferred`` if free; else any free port."""
    if requested is not None:
        if requested and not port_free(requested):
            raise DemoError(f"{what} port {requested} is in use; pick another or leave it out")
        return requested or free_port()
    return preferred if port_free(preferred) else free_port()


def wait_port(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Wait until 127.0.0.1:port accepts connections (False on timeout or when ``alive()`` fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class DemoError(Exception):
    """Something the user can fix (a port in use, no broker available): one line, exit non-zero."""


# --------------------------------------------------------------------------- brokers
def find_mosquitto() -> str | None:
    """The ``mosquitto`` executable: on PATH, or Debian's /usr/sbin (not on a user's PATH)."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def amqtt_available() -> bool:
    """Whether the embedded broker can be used (the ``demo`` extra is installed)."""
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


class MosquittoBroker:
    """Mosquitto on 127.0.0.1:port with a throw-away config: anonymous, no persistence, no log file."""

    protocol = "5"

    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.executable = executable
        self.host = "127.0.0.1"
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        self.errors = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.description = f"Mosquitto ({executable}), MQTT 5 and 3.1.1"

    def start(self) -> MosquittoBroker:
        self.conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"  # no ~40 ms Nagle/delayed-ACK stalls towards subscribers
            "log_dest stderr\n"
            "log_type error\n"
        )
        with self.errors.open("wb") as err:
            self.proc = subprocess.Popen(
                [self.executable, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # the terminal's Ctrl-C is ours to handle: stop it in order
            )
        if not wait_port(self.port, 10.0, alive=lambda: self.proc.poll() is None):
            self.stop()
            detail = self.errors.read_text(errors="replace").strip().splitlines()
            raise DemoError(f"mosquitto did not start: {detail[-1] if detail else 'no output'}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class EmbeddedBroker:
    """amqtt's broker on its own asyncio loop in a daemon thread (MQTT 3.1.1 only)."""

    protocol = "3.1.1"

    def __init__(self, port: int) -> None:
        import importlib.metadata

        self.host = "127.0.0.1"
        self.port = port
        self.description = f"embedded amqtt {importlib.metadata.version('amqtt')} (Python), MQTT 3.1.1"
        self._loop = None
        self._thread: threading.Thread | None = None
        self._broker = None

    def start(self) -> EmbeddedBroker:
        import asyncio

        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
        self._thread.start()

        async def start() -> None:
            self._broker = Broker(config, loop=asyncio.get_running_loop())
            await self._broker.start()

        try:
            asyncio.run_coroutine_threadsafe(start(), loop).result(15)
        except Exception as exc:
            self.stop()
            raise DemoError(f"the embedded broker did not start: {exc}") from exc
        return self

    def stop(self) -> None:
        import asyncio

        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._broker is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if not loop.is_running():
            loop.close()


def start_broker(port: int, workdir: Path, embedded: bool = False) -> MosquittoBroker | EmbeddedBroker:
    """Mosquitto when installed (unless ``embedded``), else amqtt; raises :class:`DemoError`."""
    mosquitto = None if embedded else find_mosquitto()
    if mosquitto is not None:
        return MosquittoBroker(mosquitto, port, workdir).start()
    if not amqtt_available():
        why = "--embedded-broker needs amqtt" if embedded else "no MQTT broker: mosquitto is not installed"
        raise DemoError(f'{why}; install the embedded one with: pip install "lstm-stream[demo]"')
    return EmbeddedBroker(port).start()


# --------------------------------------------------------------------------- bookkeeping
@dataclass
class Injection:
    """An anomaly the simulator injected: steps ``start`` to ``end`` (inclusive) on one stream."""

    stream: str
    kind: str
    start: int
    end: int
    flags: int = 0


@dataclass
class Ledger:
    """What was injected and what was flagged; steps are recovered from timestamps (``t0 + step/rate``)."""

    t0: float
    rate: float
    injections: dict[str, list[Injection]] = field(default_factory=dict)
    flagged: int = 0
    matched: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step_of(self, ts: float) -> int:
        return round((ts - self.t0) * self.rate)

    def ts_of(self, step: int) -> float:
        return self.t0 + step / self.rate

    def inject(self, stream: str, kind: str, start: int, end: int) -> None:
        with self.lock:
            self.injections.setdefault(stream, []).append(Injection(stream, kind, start, end))

    def flag(self, stream: str, ts: float) -> Injection | None:
        """Count a flag; the injection it belongs to (the latest one it can explain), if any."""
        step = self.step_of(ts)
        with self.lock:
            self.flagged += 1
            for inj in reversed(self.injections.get(stream, [])):
                if inj.start - 1 <= step <= inj.end + GRACE_STEPS:
                    inj.flags += 1
                    self.matched += 1
                    return inj
        return None

    def missed(self, warmup: int, before: int) -> list[Injection]:
        """Injections after warm-up that nothing flagged and whose grace period ended before ``before``."""
        with self.lock:
            out = [
                i
                for lst in self.injections.values()
                for i in lst
                if i.start >= warmup and not i.flags and i.end + GRACE_STEPS < before
            ]
        return sorted(out, key=lambda i: i.start)

    def summary(self, warmup: int) -> dict[str, int]:
        with self.lock:
            after = [i for lst in self.injections.values() for i in lst if i.start >= warmup]
            return {
                "injected": len(after),
                "caught": sum(1 for i in after if i.flags),
                "flagged": self.flagged,
                "flags_at_injections": self.matched,
                "flags_elsewhere": self.flagged - self.matched,
            }


# --------------------------------------------------------------------------- sensors and watcher
def _mqtt_client(client_id: str):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(0)
    return client


class SensorFeed(threading.Thread):
    """The simulator stepped at ``rate`` steps per second, each sensor's value published as JSON."""

    def __init__(self, broker, ledger: Ledger, sensors: int, seed: int, stop: threading.Event) -> None:
        super().__init__(name="sensors", daemon=True)
        from lstm_stream.synthetic import Simulator

        self.sim = Simulator(sensors=sensors, seed=seed, anomaly_every=ANOMALY_EVERY, warmup=SIM_WARMUP)
        self.topics = [f"{TOPIC_PREFIX}/{s.name}" for s in self.sim.sensors]
        self.ledger = ledger
        self.stop_event = stop
        self.steps = 0
        self.published = 0
        self.client = _mqtt_client("lstm-stream-demo-sensors")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def run(self) -> None:
        ledger, sim = self.ledger, self.sim
        while not self.stop_event.is_set():
            ts = ledger.ts_of(self.steps)
            delay = ts - time.time()
            if delay > 0 and self.stop_event.wait(delay):
                break
            step = sim.t
            for i, (_, value, kind) in enumerate(sim.step()):
                self.client.publish(self.topics[i], json.dumps({"value": round(value, 4), "ts": ts}), qos=1)
                self.published += 1
                if kind:
                    active = sim.active.get(i)  # dips and stuck values last until a later step
                    end = active[1] - 1 if active and kind in ("dip", "stuck") else step
                    ledger.inject(self.topics[i], kind, step, end)
            self.steps += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AnomalyWatcher:
    """Subscribes to the anomaly topic and prints every event as it arrives."""

    def __init__(self, broker, topic: str, ledger: Ledger, console: Console, width: int) -> None:
        self.ledger = ledger
        self.console = console
        self.width = width
        self.subscribed = threading.Event()
        self.client = _mqtt_client("lstm-stream-demo-watcher")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            event = json.loads(msg.payload)
            stream, ts = str(event["stream"]), float(event["ts"])
        except (ValueError, KeyError, TypeError):
            self.console(f"(unreadable event on {msg.topic}: {msg.payload[:80]!r})")
            return
        inj = self.ledger.flag(stream, ts)
        at = ts - self.ledger.t0
        if inj is None:
            what = "nothing injected here"
        else:
            lag = at - (inj.start / self.ledger.rate)
            what = f"injected {inj.kind} at t={inj.start / self.ledger.rate:.1f}s"
            what += f" ({inj.end - inj.start + 1} steps)" if inj.end > inj.start else ""
            what += f", flagged {lag:.1f}s later" if lag >= 0.05 else ""
        self.console(
            f"ANOMALY t={at:6.1f}s {stream:<{self.width}} value {event.get('value', float('nan')):8.2f} "
            f"forecast {event.get('forecast', float('nan')):8.2f} score {event.get('score', 0.0):.2f} "
            f"{event.get('reason', '?'):<10} | {what}"
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- metrics
def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page as ``{(name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def _total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def status_line(samples: dict, elapsed: float, streams: list[str], shown: int = 3) -> str:
    """Counts and a few streams' latest value beside the forecast the model made for it."""
    from . import metrics as m

    processed = _total(samples, m.SAMPLES_PROCESSED)
    flagged = _total(samples, m.ANOMALIES_FLAGGED)
    finetunes = _total(samples, m.FINETUNE_RUNS)
    version = _total(samples, m.MODEL_VERSION)
    parts = []
    for stream in streams[:shown]:
        key = (("stream", stream),)
        value, forecast = samples.get((m.VALUE, key)), samples.get((m.FORECAST, key))
        if value is not None and forecast is not None:
            parts.append(f"{stream.removeprefix(TOPIC_PREFIX + '/plant/')} {value:.2f}/{forecast:.2f}")
    return (
        f"[t={elapsed:5.0f}s] {processed:,.0f} samples scored, {flagged:,.0f} flagged, "
        f"{finetunes:,.0f} fine-tunes, model v{version:.0f} | value/forecast " + ", ".join(parts)
    )


# --------------------------------------------------------------------------- the demo
def demo_overrides(broker, http_port: int, state_dir: Path) -> dict:
    """The daemon's settings for the demo (everything else at its default)."""
    return {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "protocol": broker.protocol,
            "topics": [f"{TOPIC_PREFIX}/#"],
            "client_id": "lstm-stream-demo",
            "clean_start": True,
        },
        "http": {"bind": "127.0.0.1", "port": http_port},
        "state": {"directory": str(state_dir)},
        "finetune": {"enabled": True, "interval_s": FINETUNE_INTERVAL_S, "min_new_samples": 2000},
        "engine": {"scoring": {"warmup": SCORING_WARMUP}},
    }


def run_demo(
    duration: float | None = None,
    sensors: int = 8,
    rate: float = 20.0,
    embedded_broker: bool = False,
    port: int | None = None,
    http_port: int | None = None,
    seed: int = 0,
    state_dir: str | Path | None = None,
    status_every: float = 5.0,
    write: Callable[[str], Any] | None = None,
) -> int:
    """Run everything until ``duration`` seconds pass or SIGINT/SIGTERM; print a summary. Exit status."""
    from .settings import ConfigError, load_settings

    out = Console(write)
    if sensors < 1 or rate <= 0:
        out("demo: --sensors must be >= 1 and --rate > 0")
        return 2
    stop = threading.Event()
    restore: list[tuple[int, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore.append((sig, signal.signal(sig, lambda *_: stop.set())))
    workdir = Path(tempfile.mkdtemp(prefix="lstm-stream-demo-"))
    keep_state = state_dir is not None
    state = Path(state_dir) if keep_state else workdir / "state"
    broker = service = feed = watcher = None
    metrics_url = ""
    status = 0
    with _demo_logging(out):
        try:
            broker = start_broker(_choose_port(port, DEFAULT_MQTT_PORT, "MQTT"), workdir, embedded_broker)
            http = _choose_port(http_port, DEFAULT_HTTP_PORT, "HTTP")
            # an empty config file: the demo never reads /etc/lstm-stream/config.toml
            empty = workdir / "demo.toml"
            empty.write_text("# lstm-stream demo: the settings are passed as overrides\n")
            try:
                settings = load_settings(empty, demo_overrides(broker, http, state))
            except ConfigError as exc:  # e.g. an LSTM_STREAM_* variable in the environment
                raise DemoError(str(exc)) from exc
            from .service import Service

            service = Service(settings)
            service_log = logging.getLogger("lstm_stream.service")
            service_log.setLevel(logging.WARNING)  # its start-up lines: the banner says it all
            try:
                service.start()
            except OSError as exc:
                raise DemoError(f"the daemon could not start: {exc}") from exc
            service_log.setLevel(logging.INFO)
            metrics_url = f"http://127.0.0.1:{service.http.port}/metrics"
            topic = settings.mqtt.anomaly_topic
            ledger = Ledger(t0=time.time() + 1.0, rate=rate)
            feed = SensorFeed(broker, ledger, sensors, seed, stop)
            width = max(len(t) for t in feed.topics)
            where = f"{state} (a temporary folder, removed at exit)"
            if keep_state:
                restored = len(service.engine.streams)
                where = f"{state} (kept"
                where += (
                    f"; restored model v{service.engine.model_version}, {restored} streams)"
                    if restored
                    else ")"
                )
            _banner(out, broker, settings, metrics_url, feed, rate, where, duration)
            watcher = AnomalyWatcher(broker, topic, ledger, out, width)
            if not (service.link.wait_connected(15) and watcher.subscribed.wait(15)):
                raise DemoError(f"could not connect to the broker at {broker.host}:{broker.port}")
            ledger.t0 = time.time() + 0.2
            feed.start()
            started = time.monotonic()
            deadline = started + duration if duration else float("inf")
            next_status = started + status_every
            while not stop.is_set() and time.monotonic() < deadline:
                stop.wait(max(0.0, min(deadline, next_status) - time.monotonic()))
                now = time.monotonic()
                if now >= next_status and not stop.is_set():
                    next_status += status_every
                    try:
                        out(status_line(scrape(metrics_url), now - started, feed.topics))
                    except OSError as exc:
                        out(f"[t={now - started:5.0f}s] could not read {metrics_url}: {exc}")
            out("")
            out("stopping: sensors, then the daemon (final checkpoint), then the broker ...")
        except DemoError as exc:
            out(f"demo: {exc}")
            status = EX_UNAVAILABLE
        finally:
            stop.set()
            if feed is not None:
                if feed.is_alive():
                    feed.join(5)
                    time.sleep(1.0)  # let the last events arrive
                feed.close()
            final = None
            if service is not None:
                with contextlib.suppress(OSError, ValueError):
                    final = scrape(metrics_url) if metrics_url else None
                service.shutdown()
            if watcher is not None:
                watcher.close()
            if broker is not None:
                broker.stop()
            for sig, handler in restore:
                signal.signal(sig, handler)
            shutil.rmtree(workdir, ignore_errors=True)  # with --state-dir the state is elsewhere
    if status == 0 and feed is not None:
        _summary(out, ledger, feed, final, rate, settings.engine.scoring.suppress)
    return status


def _banner(out, broker, settings, metrics_url, feed, rate, state: str, duration) -> None:
    topic = settings.mqtt.anomaly_topic
    sample = feed.topics[0]
    warm_s = SCORING_WARMUP / rate
    out(f"lstm-stream demo: {len(feed.topics)} simulated sensors -> MQTT -> the daemon -> Prometheus + MQTT")
    out("")
    out(f"  broker      mqtt://{broker.host}:{broker.port}   {broker.description}")
    out(f'  sensors     {len(feed.topics)} publish JSON {{"value", "ts"}} at {rate:g} steps/s, e.g. {sample}')
    out(f"  metrics     {metrics_url}   (forecasts: lstm_stream_forecast_next{{stream=...}})")
    out(f"  anomalies   MQTT topic {topic}")
    out(f"              watch it: mosquitto_sub -h {broker.host} -p {broker.port} -t '{topic}' -v")
    out(f"  state       {state}")
    out(
        f"  fine-tune   every {FINETUNE_INTERVAL_S:.0f} s in the background; a better model bumps the version"
    )
    out("")
    out(
        f"Each stream is learned for {SCORING_WARMUP} samples ({warm_s:.0f} s) before it can be flagged; "
        f"spikes, dips and stuck values are injected from t={SIM_WARMUP / rate:.0f}s."
    )
    until = f"for {duration:g} s or until Ctrl-C" if duration else "until Ctrl-C"
    out(f"Runs {until}. Anomalies are printed as they arrive on {topic}.")
    out("")


def _summary(out, ledger: Ledger, feed: SensorFeed, final: dict | None, rate: float, suppress: int) -> None:
    from . import metrics as m

    s = ledger.summary(SCORING_WARMUP)
    scored = f"{_total(final, m.SAMPLES_PROCESSED):,.0f}" if final else "?"
    out(
        f"summary: {feed.steps} steps ({feed.steps / rate:.0f} s), {feed.published:,} messages published, "
        f"{scored} samples scored by the daemon"
    )
    out(
        f"summary: after warm-up {s['injected']} anomalies injected, {s['caught']} of them caught; "
        f"{s['flagged']} flagged: {s['flags_at_injections']} at an injection, "
        f"{s['flags_elsewhere']} elsewhere"
    )
    missed = ledger.missed(SCORING_WARMUP, feed.steps)
    if missed:
        shown = ", ".join(
            f"{i.kind} on {i.stream.removeprefix(TOPIC_PREFIX + '/plant/')} at t={i.start / rate:.1f}s"
            for i in missed[:8]
        )
        out(f"summary: not flagged: {shown}{', ...' if len(missed) > 8 else ''}")
        out(
            f"         (a stream is not flagged again for {suppress} samples after a flag: "
            "engine.scoring.suppress)"
        )
    out(f"summary: {json.dumps(s)}")
