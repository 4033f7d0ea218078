"""Integration: the real daemon process against a real Mosquitto (and Prometheus where metrics matter)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lstm_stream.selection import NAMES
from tests.broker import Broker
from tests.daemon_proc import Collector, Daemon, Publisher

pytestmark = pytest.mark.integration

FAST = {"engine": {"scoring": {"warmup": 150}}, "ingest": {"batch_ms": 10}}
AMPLITUDE = 10.0


def sine_value(stream: int, i: int) -> float:
    return 20.0 + AMPLITUDE * math.sin(2 * math.pi * i / 50 + stream) + 0.1 * math.sin(7.3 * i)


def sine_messages(streams: int, start: int, stop: int, t0: float, spikes: dict | None = None):
    """(topic, payload) for every stream at every step in [start, stop), timestamps t0 + step."""
    spikes = spikes or {}
    for i in range(start, stop):
        for s in range(streams):
            v = sine_value(s, i) + spikes.get((s, i), 0.0)
            yield f"sensors/machine{s}/temp", {"value": v, "ts": t0 + i}


@pytest.fixture
def daemon_factory(tmp_path, broker):
    made: list[Daemon] = []

    def make(config: dict | None = None, name: str = "d", **kw) -> Daemon:
        d = Daemon(tmp_path, broker, {**FAST, **(config or {})}, name=name, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.mark.slow
def test_spikes_become_events_and_forecasts_follow_the_sine(broker, daemon_factory) -> None:
    d = daemon_factory().start()
    events = Collector(broker, "lstm-stream/anomalies")
    pub = Publisher(broker)
    t0 = 1.7e9
    spikes = {(0, 300): 60.0, (2, 350): -60.0}
    pub.publish_many(sine_messages(3, 0, 420, t0, spikes))
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 3 * 420)
    time.sleep(1.0)
    got = {(e["stream"], int(e["ts"] - t0)) for e in events.json()}
    assert ("sensors/machine0/temp", 300) in got and ("sensors/machine2/temp", 350) in got, got
    stray = {g for g in got if g[1] not in range(300, 306) and g[1] not in range(350, 356)}
    assert not stray, f"events away from the spikes: {stray}"
    for e in events.json():
        assert {"stream", "ts", "value", "forecast", "forecaster", "score", "reason"} <= e.keys()
        assert e["forecaster"] in NAMES  # which forecaster the scored residual came from
    for s in range(3):
        fc = d.metric("lstm_stream_forecast_next", stream=f"sensors/machine{s}/temp")
        assert abs(fc - sine_value(s, 420)) < 0.15 * AMPLITUDE, (s, fc, sine_value(s, 420))
    events.close()
    pub.close()


@pytest.mark.slow
def test_malformed_payloads_are_counted_and_neighbours_unaffected(broker, daemon_factory) -> None:
    d = daemon_factory({"payload": {"max_bytes": 1024}}).start()
    pub = Publisher(broker)
    bad = [
        ("sensors/bad/binary", b"\x00\xff\xfe\x80"),
        ("sensors/bad/huge", b"1" * 5000),
        ("sensors/bad/nan", b"NaN"),
        ("sensors/bad/junk", b'{"value": {"deep": [1, {"x": "y"}]}}'),
        ("sensors/bad/type", b'{"value": "hot"}'),
        ("sensors/bad/json", b'{"value": 1'),
        ("sensors/bad/text", b"warm"),
    ]
    good = list(sine_messages(2, 0, 50, 1.7e9))
    mixed = []
    for i, item in enumerate(good):
        mixed.append(item)
        if i % 7 == 0:
            mixed.append(bad[(i // 7) % len(bad)])
    pub.publish_many(mixed)
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 100)
    d.wait_metric("lstm_stream_messages_received_total", lambda v: v >= len(mixed))
    time.sleep(1.0)  # the network thread's counters reach Prometheus twice a second
    m = d.metrics()
    rejected = {
        dict(k[1])["reason"]: v for k, v in m.items() if k[0] == "lstm_stream_messages_rejected_total"
    }
    for reason in ("not_utf8", "too_large", "not_finite", "not_a_number", "bad_json"):
        assert rejected.get(reason, 0) >= 1, rejected
    assert m[("lstm_stream_samples_processed_total", ())] == 100
    assert m[("lstm_stream_streams", ())] == 2  # no stream was created by a bad payload
    pub.close()


@pytest.mark.slow
def test_sigterm_checkpoints_and_restart_loses_and_doubles_nothing(broker, daemon_factory) -> None:
    d = daemon_factory().start()
    pub = Publisher(broker)
    t0 = 1.7e9
    pub.publish_many(sine_messages(3, 0, 100, t0))
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 300)
    assert d.stop(signal.SIGTERM) == 0
    assert "checkpoint checkpoint-" in d.log()
    assert list(d.state.glob("checkpoint-*.safetensors"))
    # while the daemon is down: a redelivery-like duplicate of the last processed sample, then new
    # samples; the broker queues them all for the daemon's persistent session
    pub.publish_many([("sensors/machine0/temp", {"value": 1.0, "ts": t0 + 99})])
    pub.publish_many(sine_messages(3, 100, 160, t0))
    d.start()
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 180)
    time.sleep(1.0)
    m = d.metrics()
    assert m[("lstm_stream_samples_processed_total", ())] == 180  # counted since restart: all new ones
    assert m[("lstm_stream_samples_rejected_total", (("reason", "duplicate"),))] == 1
    assert m[("lstm_stream_streams", ())] == 3
    assert m[("lstm_stream_model_version", ())] == 0
    assert "restored checkpoint-" in d.log()
    pub.close()


@pytest.mark.slow
def test_a_backlog_larger_than_the_queue_waits_for_room_and_loses_nothing(broker, daemon_factory) -> None:
    """QoS 1 is acknowledged when a message's samples are queued, so a full queue must hold paho
    back (backpressure) rather than drop acknowledged samples."""
    d = daemon_factory({"ingest": {"queue_size": 20, "batch_max": 4, "batch_ms": 10}}).start()
    assert d.stop(signal.SIGTERM) == 0  # the persistent session now exists at the broker
    pub = Publisher(broker)
    pub.publish_many(sine_messages(3, 0, 400, 1.7e9))  # queued by the broker while the daemon is down
    d.start()
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 1200, timeout=120)
    time.sleep(0.5)
    m = d.metrics()
    assert m[("lstm_stream_samples_processed_total", ())] == 1200
    assert m[("lstm_stream_queue_dropped_total", ())] == 0
    assert m[("lstm_stream_queue_blocked_seconds_total", ())] > 0  # the queue did fill: the test bites
    pub.close()


def _children(pid: int, marker: str = "spawn_main", exposition: bool = False) -> list[int]:
    """Child processes of ``pid`` whose command line contains ``marker`` (default: multiprocessing
    children, i.e. the receiver, not multiprocessing's resource tracker); the exposition process
    (named ``lstm-stream-exp``) only with ``exposition``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if marker not in Path(f"/proc/{child}/cmdline").read_text():
                continue
            is_expo = Path(f"/proc/{child}/comm").read_text().strip() == "lstm-stream-exp"
            if is_expo == exposition:
                found.append(int(child))
    return found


def test_sigterm_to_the_whole_group_as_systemd_sends_it_still_drains(broker, daemon_factory) -> None:
    """systemd signals every process of the unit: the receiver ignores it and hands over all it has."""
    d = daemon_factory().start()
    pub = Publisher(broker)
    pub.publish_many(sine_messages(2, 0, 200, 1.7e9))
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 1)
    receivers = _children(d.proc.pid)
    assert receivers, "the receiver process is a child of the daemon"
    # nor is there a resource tracker (a whole interpreter, 15 MB, for resources the daemon has not)
    assert _children(d.proc.pid, "resource_tracker") == []
    # and the receiver reads plain settings: pydantic (18 MB there) is not loaded; nor numpy (14 MB)
    # where the exposition process reads the snapshot
    assert "pydantic_core" not in Path(f"/proc/{receivers[0]}/maps").read_text()
    (exposition,) = _children(d.proc.pid, exposition=True)
    assert "_multiarray_umath" not in Path(f"/proc/{exposition}/maps").read_text()
    for pid in [d.proc.pid, *receivers, *_children(d.proc.pid, exposition=True)]:
        os.kill(pid, signal.SIGTERM)
    assert d.stop(timeout=60) == 0
    log = d.log()
    assert "checkpoint checkpoint-" in log
    assert "Traceback" not in log
    pub.close()


def test_a_dead_or_stopped_receiver_is_seen_and_replaced(broker, daemon_factory) -> None:
    d = daemon_factory().start()
    (receiver,) = _children(d.proc.pid)
    os.kill(receiver, signal.SIGKILL)
    d.wait_metric("lstm_stream_receiver_restarts_total", lambda v: v == 1, timeout=30)
    assert "receiver process ended unexpectedly" in d.log()
    d._wait_healthy(30)
    (receiver,) = _children(d.proc.pid)
    os.kill(receiver, signal.SIGSTOP)  # alive, silent: its last word said "connected"
    t0 = time.monotonic()
    while d.get("/healthz")[0] != 503:
        assert time.monotonic() - t0 < 10, "a stopped receiver still looks healthy"
        time.sleep(0.1)
    assert "receiver" in d.get("/healthz")[1] and d.metric("lstm_stream_mqtt_connected") == 0
    d.wait_metric("lstm_stream_receiver_restarts_total", lambda v: v == 2, timeout=30)
    d._wait_healthy(30)
    pub = Publisher(broker)
    pub.publish_many(sine_messages(1, 0, 30, 1.7e9))
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 30)
    pub.close()
    assert d.stop() == 0


@pytest.mark.slow
def test_broker_outage_is_survived_and_seen_in_healthz(tmp_path, daemon_factory) -> None:
    broker = Broker(tmp_path / "b").start()
    d = Daemon(tmp_path, broker, FAST, name="outage").start()
    try:
        d.wait_metric("lstm_stream_mqtt_connected", lambda v: v == 1)
        assert d.get("/healthz")[0] == 200
        broker.stop()
        deadline = time.monotonic() + 30
        while d.get("/healthz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = d.get("/healthz")
        assert status == 503 and "mqtt" in body
        assert d.metric("lstm_stream_mqtt_connected") == 0
        broker.start()
        d.wait_metric("lstm_stream_mqtt_connected", lambda v: v == 1, timeout=90)
        pub = Publisher(broker)
        pub.publish_many(sine_messages(1, 0, 30, 1.7e9))
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 30)
        assert d.get("/healthz")[0] == 200
        pub.close()
    finally:
        d.close()
        broker.stop()


@pytest.mark.slow
def test_daemon_starts_while_the_broker_is_down(tmp_path) -> None:
    broker = Broker(tmp_path / "b")  # configured, not started
    d = Daemon(tmp_path, broker, FAST, name="early").start()  # READY=1 without a broker
    try:
        assert "waiting for broker" in d.notify.wait_for("STATUS=")
        assert d.get("/healthz")[0] == 503
        broker.start()
        d.wait_metric("lstm_stream_mqtt_connected", lambda v: v == 1, timeout=90)
    finally:
        d.close()
        broker.stop()


@pytest.mark.slow
def test_forced_diverging_finetune_keeps_the_live_model(broker, daemon_factory) -> None:
    cfg = {
        "finetune": {"enabled": True, "interval_s": 1, "min_new_samples": 100, "mode": "process"},
        # a learning rate this large overflows the weights to inf within two steps: the loss turns NaN
        "engine": {"train": {"lr": 1e37, "epochs": 2}, "scoring": {"warmup": 150}},
    }
    d = daemon_factory(cfg).start()
    pub = Publisher(broker)
    pub.publish_many(sine_messages(4, 0, 200, 1.7e9))
    d.wait_metric("lstm_stream_finetune_runs_total", lambda v: v >= 1, timeout=120, outcome="diverged")
    assert d.metric("lstm_stream_model_version") == 0
    assert d.metric("lstm_stream_finetune_runs_total", outcome="accepted") == 0
    pub.publish_many(sine_messages(4, 200, 210, 1.7e9))
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 840)  # still serving
    pub.close()


@pytest.mark.slow
def test_finetune_is_swapped_in_when_it_beats_the_live_model(broker, daemon_factory) -> None:
    cfg = {
        "finetune": {"enabled": True, "interval_s": 1, "min_new_samples": 1000, "mode": "thread"},
        # a model unlike the shipped one starts from random weights: any training beats it
        "engine": {
            "model": {"hidden": 24, "layers": 1},
            "train": {"epochs": 3, "lr": 0.005},
            "history_len": 256,
        },
    }
    d = daemon_factory(cfg).start()
    pub = Publisher(broker)
    pub.publish_many(sine_messages(6, 0, 256, 1.7e9))
    d.wait_metric("lstm_stream_finetune_runs_total", lambda v: v >= 1, timeout=180, outcome="accepted")
    d.wait_metric("lstm_stream_model_version", lambda v: v == 1)
    live = d.metric("lstm_stream_finetune_validation_loss", model="live")
    cand = d.metric("lstm_stream_finetune_validation_loss", model="candidate")
    assert cand < live
    pub.close()


@pytest.mark.slow
def test_ready_status_and_watchdog_reach_the_notify_socket(daemon_factory) -> None:
    d = daemon_factory(env={"WATCHDOG_USEC": "1000000"}).start()
    d.notify.wait_for("WATCHDOG=1", timeout=10)
    d.stop()
    assert any("STOPPING=1" in m for m in d.notify.poll())


def test_invalid_config_exits_78_with_one_line(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[engine.scoring]\nthreshold = 3\n")
    r = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "engine.scoring.threshold" in lines[0]


@pytest.mark.slow
def test_forecasts_are_close_in_prometheus(broker, daemon_factory, prometheus) -> None:
    d = daemon_factory().start()
    prom = prometheus([f"127.0.0.1:{d.http_port}"])
    pub = Publisher(broker)
    pub.publish_many(sine_messages(4, 0, 100, 1.7e9))
    d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 400)
    result = prom.wait_query("lstm_stream_forecast", lambda r: len(r) >= 4)
    streams = {r["metric"]["stream"] for r in result}
    assert streams == {f"sensors/machine{s}/temp" for s in range(4)}
    values = np.array([float(r["value"][1]) for r in result])
    assert np.isfinite(values).all()
    pub.close()
