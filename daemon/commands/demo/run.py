"""``lstm-stream demo``: a broker, simulated sensors and the real daemon on this machine, in one command.

What runs, all in this process except Mosquitto:

- a **broker** on 127.0.0.1: Mosquitto when it is installed (a child process with a throw-away
  config), else the embedded pure-Python ``amqtt`` broker (``pip install "lstm-stream[demo]"``) on
  its own asyncio loop in a thread. amqtt speaks MQTT 3.1.1 only, so the daemon then connects with
  ``mqtt.protocol = "3.1.1"``;
- **simulated plant sensors** (:class:`lstm_stream.synthetic.Simulator`: sines, noise, a trend, with
  injected spikes, dips and stuck values) publishing JSON ``{"value", "ts"}`` to ``demo/plant/...``;
- **the daemon** itself (:class:`daemon.service.service.Service`, as ``lstm-stream run`` starts it)
  with a short warm-up and a fine-tune every minute, serving ``/metrics`` and publishing anomaly events;
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
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.commands.demo.brokers import DemoError, choose_port, start_broker
from daemon.commands.demo.console import Console, demo_logging
from daemon.commands.demo.sensors import SIM_WARMUP, TOPIC_PREFIX, AnomalyWatcher, Ledger, SensorFeed
from daemon.service.stop_signals import StopSignals

SCORING_WARMUP = 200  # samples per stream before any flag (the product default is 300)

FINETUNE_INTERVAL_S = 60.0

DEFAULT_MQTT_PORT = 1883

DEFAULT_HTTP_PORT = 9464

EX_UNAVAILABLE = 69  # sysexits.h: no broker could be started

log = logging.getLogger("lstm_stream.demo")


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
    from daemon.outputs import metrics as m

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
    from daemon.settings import ConfigError, load_settings

    out = Console(write)
    if sensors < 1 or rate <= 0:
        out("demo: --sensors must be >= 1 and --rate > 0")
        return 2
    stop = threading.Event()
    signals = StopSignals(stop) if threading.current_thread() is threading.main_thread() else None
    workdir = Path(tempfile.mkdtemp(prefix="lstm-stream-demo-"))
    keep_state = state_dir is not None
    state = Path(state_dir) if keep_state else workdir / "state"
    broker = service = feed = watcher = None
    metrics_url = ""
    status = 0
    with demo_logging(out):
        try:
            broker = start_broker(choose_port(port, DEFAULT_MQTT_PORT, "MQTT"), workdir, embedded_broker)
            http = choose_port(http_port, DEFAULT_HTTP_PORT, "HTTP")
            # an empty config file: the demo never reads /etc/lstm-stream/config.toml
            empty = workdir / "demo.toml"
            empty.write_text("# lstm-stream demo: the settings are passed as overrides\n")
            try:
                settings = load_settings(empty, demo_overrides(broker, http, state))
            except ConfigError as exc:  # e.g. an LSTM_STREAM_* variable in the environment
                raise DemoError(str(exc)) from exc
            from daemon.service.service import Service

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
            if signals is not None:
                signals.close()
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
    from daemon.outputs import metrics as m

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
