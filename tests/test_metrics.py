"""Metrics: aggregate instruments, the per-stream exporter, and the HTTP endpoint."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from daemon.outputs import metrics as m
from daemon.outputs.exposition import StreamExporter, format_values
from daemon.outputs.histogram import BulkHistogram
from daemon.outputs.metrics import Metrics, code_counts
from daemon.outputs.server import MetricsServer
from lstm_stream.engine import REJECTS, StreamView

AWKWARD = [
    "plain/topic",
    'quo"te',
    "back\\slash",
    "trailing\\",
    "new\nline",
    "ünïcödé/датчик/温度",
    "hash #tag",
    "spa ce",
    '\\"mixed\n"\\',
    "",
]


def make_view(names: list[str], seed: int = 0) -> StreamView:
    """A StreamView with varied values; the first stream has seen one sample (NaN forecast)."""
    n = len(names)
    rng = np.random.default_rng(seed)
    forecast = rng.normal(20, 5, n)
    if n:
        forecast[0] = np.nan
    return StreamView(
        names=list(names),
        value=rng.normal(20, 5, n),
        forecast=forecast,
        next_forecast=rng.normal(20, 5, n),
        score=rng.random(n),
        in_anomaly=rng.random(n) < 0.2,
        anomalies=rng.integers(0, 4, n),
        last_seen=1.7327e9 + rng.random(n) * 100,
        samples=rng.integers(1, 1000, n),
    )


FAMILY_ATTRS = {
    m.VALUE: "value",
    m.FORECAST: "forecast",
    m.FORECAST_NEXT: "next_forecast",
    m.ANOMALY_SCORE: "score",
    m.ANOMALY: "in_anomaly",
    m.ANOMALIES_TOTAL: "anomalies",
    m.LAST_SEEN: "last_seen",
}


def parse_streams(text: str) -> dict[str, dict[str, float]]:
    """Per-stream samples of a scrape: {sample name: {stream: value}}."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "stream" in s.labels:
                assert set(s.labels) == {"stream"}
                by_stream = out.setdefault(s.name, {})
                assert s.labels["stream"] not in by_stream, "duplicate series"
                by_stream[s.labels["stream"]] = s.value
    return out


def assert_matches(parsed: dict[str, dict[str, float]], view: StreamView, rows: list[int]) -> None:
    for name, attr in FAMILY_ATTRS.items():
        expected = {view.names[i]: float(np.asarray(getattr(view, attr))[i]) for i in rows}
        got = parsed.get(name, {})
        assert set(got) == set(expected), name
        for stream, value in expected.items():
            if math.isnan(value):
                assert math.isnan(got[stream]), (name, stream)
            else:
                assert got[stream] == value, (name, stream)  # exact round trip


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode("utf-8")


# --- Metrics --------------------------------------------------------------------------------------
def test_label_values_known_in_advance_exist_at_zero() -> None:
    reg = CollectorRegistry()
    Metrics(reg)
    get = reg.get_sample_value
    assert set(m.SAMPLE_REJECT_REASONS) == set(REJECTS[1:]) - {"deferred"}  # deferred: applied later
    for reason in m.SAMPLE_REJECT_REASONS:
        assert get(m.SAMPLES_REJECTED, {"reason": reason}) == 0
    for reason in m.MESSAGE_REJECT_REASONS:
        assert get(m.MESSAGES_REJECTED, {"reason": reason}) == 0
    for reason in ("likelihood", "range", "flatline", "regime_change"):
        assert get(m.ANOMALIES_FLAGGED, {"reason": reason}) == 0
    for cause in ("capacity", "idle"):
        assert get(m.STREAMS_EVICTED, {"cause": cause}) == 0
    for outcome in ("accepted", "rejected", "diverged", "failed", "insufficient_data"):
        assert get(m.FINETUNE_RUNS, {"outcome": outcome}) == 0
    for model in ("candidate", "live"):
        assert math.isnan(get(m.FINETUNE_VALIDATION_LOSS, {"model": model}))
    for name in (
        m.MESSAGES_RECEIVED,
        m.SAMPLES_PROCESSED,
        m.QUEUE_DROPPED,
        m.MQTT_RECONNECTS,
        m.CHECKPOINT_FAILURES,
        m.EVENTS_PUBLISHED,
        m.PUBLISH_FAILURES,
    ):
        assert get(name) == 0, name
    assert get(m.INGEST_LATENCY + "_count") == 0
    assert get(m.BATCH_SIZE + "_bucket", {"le": "16384.0"}) == 0
    assert get(m.MESSAGES_RECEIVED.removesuffix("_total") + "_created") is None  # disabled
    assert get(m.BATCH_SIZE + "_created") is None


def test_observe_batch_counts_everything_once() -> None:
    reg = CollectorRegistry()
    met = Metrics(reg)
    met.observe_batch(
        100,
        0.003,
        rejects={"duplicate": 2, "out_of_order": 1, "": 97},
        flags={"likelihood": 2, "range": 0},
        latencies=np.full(97, 0.02),
    )
    met.observe_batch(10, 0.0004, rejects={}, flags=None, latencies=None)
    get = reg.get_sample_value
    assert get(m.SAMPLES_PROCESSED) == 97 + 10
    assert get(m.SAMPLES_REJECTED, {"reason": "duplicate"}) == 2
    assert get(m.SAMPLES_REJECTED, {"reason": "out_of_order"}) == 1
    assert get(m.SAMPLES_REJECTED, {"reason": "not_finite"}) == 0
    assert get(m.ANOMALIES_FLAGGED, {"reason": "likelihood"}) == 2
    assert get(m.BATCH_SIZE + "_count") == 2
    assert get(m.BATCH_SIZE + "_sum") == 110
    assert get(m.BATCH_SIZE + "_bucket", {"le": "8.0"}) == 0
    assert get(m.BATCH_SIZE + "_bucket", {"le": "16.0"}) == 1
    assert get(m.PROCESSING_LATENCY + "_bucket", {"le": "0.0005"}) == 1
    assert get(m.PROCESSING_LATENCY + "_count") == 2
    assert get(m.INGEST_LATENCY + "_count") == 97
    assert get(m.INGEST_LATENCY + "_bucket", {"le": "0.01"}) == 0
    assert get(m.INGEST_LATENCY + "_bucket", {"le": "0.025"}) == 97
    assert get(m.INGEST_LATENCY + "_sum") == pytest.approx(97 * 0.02)


def test_bulk_histogram_matches_prometheus_client_histogram() -> None:
    """Bucketing a whole array gives exactly what observe() per value gives (bounds inclusive)."""
    buckets = m.INGEST_LATENCY_BUCKETS
    rng = np.random.default_rng(1)
    x = np.concatenate([10 ** rng.uniform(-5, 1.5, 5000), np.array(buckets), [0.0, 99.0]])
    bulk_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("h_seconds", "test", buckets, bulk_reg)
    ref = Histogram("h_seconds", "test", buckets=buckets, registry=ref_reg)
    bulk.observe_many(x[:1000])
    bulk.observe_many(x[1000:])
    bulk.observe_many(np.array([np.nan, np.inf]))  # dropped
    for v in x.tolist():
        ref.observe(v)
    for le in [str(b) for b in buckets] + ["+Inf"]:
        got = bulk_reg.get_sample_value("h_seconds_bucket", {"le": le})
        assert got == ref_reg.get_sample_value("h_seconds_bucket", {"le": le}), le
    assert bulk_reg.get_sample_value("h_seconds_count") == len(x)
    assert bulk_reg.get_sample_value("h_seconds_sum") == pytest.approx(x.sum())
    bulk.observe(-0.5)  # a sensor clock ahead of ours: counted as 0
    assert bulk_reg.get_sample_value("h_seconds_bucket", {"le": "0.0005"}) == (
        ref_reg.get_sample_value("h_seconds_bucket", {"le": "0.0005"}) + 1
    )


def test_code_counts() -> None:
    codes = np.array([0, 0, 4, 3, 4, 1], dtype=np.uint8)
    assert code_counts(codes, REJECTS) == {"duplicate": 2, "out_of_order": 1, "not_finite": 1}
    assert code_counts(np.zeros(0, dtype=np.uint8), REJECTS) == {}


def test_event_methods() -> None:
    reg = CollectorRegistry()
    met = Metrics(reg, version="1.2.3", model_arch="lstm", hidden=64, layers=2, clock=lambda: 1000.0)
    get = reg.get_sample_value
    assert get(m.BUILD_INFO, {"version": "1.2.3", "model_arch": "lstm", "hidden": "64", "layers": "2"}) == 1

    met.observe_messages(50, {"bad_json": 2, "too_large": 1})
    assert get(m.MESSAGES_RECEIVED) == 50
    assert get(m.MESSAGES_REJECTED, {"reason": "bad_json"}) == 2
    met.observe_queue(7, 100, dropped=3)
    met.observe_queue(5, 100)
    assert (get(m.QUEUE_DEPTH), get(m.QUEUE_CAPACITY), get(m.QUEUE_DROPPED)) == (5, 100, 3)
    met.observe_streams(42, evicted=2, expired=5)
    assert get(m.STREAMS) == 42
    assert get(m.STREAMS_EVICTED, {"cause": "capacity"}) == 2
    assert get(m.STREAMS_EVICTED, {"cause": "idle"}) == 5
    met.observe_publish(published=4, failures=1)
    assert (get(m.EVENTS_PUBLISHED), get(m.PUBLISH_FAILURES)) == (4, 1)

    met.observe_finetune("accepted", 95.0, candidate_loss=0.8, live_loss=0.9)
    met.observe_finetune("insufficient_data", 0.2)
    assert get(m.FINETUNE_RUNS, {"outcome": "accepted"}) == 1
    assert get(m.FINETUNE_RUNS, {"outcome": "insufficient_data"}) == 1
    assert get(m.FINETUNE_DURATION + "_bucket", {"le": "60.0"}) == 1
    assert get(m.FINETUNE_DURATION + "_bucket", {"le": "120.0"}) == 2
    assert get(m.FINETUNE_VALIDATION_LOSS, {"model": "candidate"}) == 0.8
    assert get(m.FINETUNE_VALIDATION_LOSS, {"model": "live"}) == 0.9
    met.set_model(3)
    assert (get(m.MODEL_VERSION), get(m.MODEL_SWAP_TIMESTAMP)) == (3, 1000.0)
    met.set_model(4, swapped=False)
    assert (get(m.MODEL_VERSION), get(m.MODEL_SWAP_TIMESTAMP)) == (4, 1000.0)

    assert get(m.CHECKPOINT_LAST_SUCCESS) == 0
    met.observe_checkpoint(True, 1.5, at=2000.0)
    met.observe_checkpoint(False, 0.25)
    assert get(m.CHECKPOINT_LAST_SUCCESS) == 2000.0
    assert get(m.CHECKPOINT_FAILURES) == 1
    assert get(m.CHECKPOINT_DURATION) == 0.25

    met.set_mqtt_connected(True)
    met.mqtt_reconnected()
    assert (get(m.MQTT_CONNECTED), get(m.MQTT_RECONNECTS)) == (1, 1)
    met.set_mqtt_connected(False)
    assert get(m.MQTT_CONNECTED) == 0
    met.engine_progress()
    assert get(m.ENGINE_PROGRESS) == 1000.0


# --- StreamExporter -------------------------------------------------------------------------------
def test_awkward_stream_names_round_trip_exactly() -> None:
    view = make_view(AWKWARD)
    view.value[1] = 1e300
    view.value[2] = -0.0
    view.next_forecast[3] = 5e-324
    ex = StreamExporter("all")
    ex.update(view)
    text = ex.render().decode("utf-8")
    assert f'{m.FORECAST}{{stream="plain/topic"}} NaN\n' in text
    assert '{stream="new\\nline"}' in text and '{stream="quo\\"te"}' in text
    assert_matches(parse_streams(text), view, list(range(len(AWKWARD))))


def test_value_formatting() -> None:
    a = np.array([np.nan, np.inf, -np.inf, 0.1, -2.0, 1e22, 123456789.125])
    assert format_values(a) == ["NaN", "+Inf", "-Inf", "0.1", "-2.0", "1e+22", "123456789.125"]
    assert format_values(np.array([True, False])) == ["1", "0"]
    assert format_values(np.array([0, 7], dtype=np.int64)) == ["0", "7"]


def test_modes() -> None:
    names = [f"s{i}" for i in range(6)]
    view = make_view(names)
    view.in_anomaly[:] = [True, False, False, False, False, False]
    view.anomalies[:] = [0, 2, 0, 0, 0, 0]
    view.score[:] = [0.1, 0.1, 0.5, 0.49, np.nan, 0.0]
    shown = {}
    for mode in ("all", "anomalous", "none"):
        ex = StreamExporter(mode)
        ex.update(view)
        text = ex.render().decode("utf-8")
        shown[mode] = text
        rows = {"all": list(range(6)), "anomalous": [0, 1, 2], "none": []}[mode]
        assert_matches(parse_streams(text), view, rows)
    assert shown["none"] == ""
    with pytest.raises(ValueError):
        StreamExporter("some")


def test_render_is_cached_per_view_and_follows_removals() -> None:
    ex = StreamExporter()
    assert ex.render() == b""
    first = make_view(["a", "b", "c"])
    ex.update(first)
    data = ex.render()
    assert ex.render() is data  # same view: rendered once
    assert set(parse_streams(data.decode())[m.VALUE]) == {"a", "b", "c"}
    second = make_view(["a", "c"], seed=1)  # "b" evicted or expired
    ex.update(second)
    parsed = parse_streams(ex.render().decode())
    assert_matches(parsed, second, [0, 1])
    assert "b" not in parsed[m.LAST_SEEN]
    ex.update(make_view([]))
    assert ex.render() == b""


def test_label_cache_forgets_departed_streams() -> None:
    ex = StreamExporter()
    for k in range(5):
        ex.update(make_view([f"gen{k}/s{i}" for i in range(1000)]))
        ex.render()
    assert ex.cached_labels <= 2 * 1000 + 1024


def test_render_time_10k_streams() -> None:
    n = 10_000
    ex = StreamExporter("all")
    times = []
    for seed in range(5):
        ex.update(make_view([f"zigbee2mqtt/sensor_{i}/temperature" for i in range(n)], seed=seed))
        t0 = time.perf_counter()
        data = ex.render()
        times.append(time.perf_counter() - t0)
    lines = data.count(b"\n")
    print(
        f"\nrender 10k streams x 7 families: first {times[0] * 1e3:.1f} ms (label cache cold), "
        f"median {sorted(times)[2] * 1e3:.1f} ms, {len(data) / 1e6:.1f} MB, {lines} lines"
    )
    assert lines == 7 * (n + 2)  # the time is printed, not asserted: `bench e2e` measures scrapes


def test_engine_view_feeds_the_exporter() -> None:
    from lstm_stream.config import EngineConfig, ModelConfig
    from lstm_stream.engine import Engine

    engine = Engine(EngineConfig(model=ModelConfig(hidden=8, layers=1), look_back=4, history_len=0))
    engine.process(["room/t", 'odd "name"'], [1.0, 1.0], [20.0, 5.0], now=100.0)
    engine.process(["room/t"], [2.0], [20.5], now=101.0)
    view = engine.view()
    ex = StreamExporter()
    ex.update(view)
    parsed = parse_streams(ex.render().decode())
    assert_matches(parsed, view, list(range(len(view.names))))
    assert parsed[m.VALUE] == {"room/t": 20.5, 'odd "name"': 5.0}
    assert math.isnan(parsed[m.FORECAST]['odd "name"'])  # first sample: nothing was forecast
    assert not math.isnan(parsed[m.FORECAST]["room/t"])
    assert parsed[m.LAST_SEEN] == {"room/t": 101.0, 'odd "name"': 100.0}


# --- MetricsServer --------------------------------------------------------------------------------
@pytest.fixture
def served():
    reg = CollectorRegistry()
    met = Metrics(reg, version="0.1.0", model_arch="lstm", hidden=64, layers=2)
    met.observe_batch(3, 0.001, {"duplicate": 1}, {"likelihood": 1}, np.array([0.01, 0.2]))
    ex = StreamExporter()
    ex.update(make_view(AWKWARD))
    state = {"ok": True, "detail": ""}
    server = MetricsServer(reg, ex, health=lambda: (state["ok"], state["detail"]), port=0).start()
    try:
        yield f"http://127.0.0.1:{server.port}", state, ex
    finally:
        server.stop()


def test_scrape_passes_promtool(served) -> None:
    url, _, _ = served
    status, ctype, text = fetch(url + "/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert m.SAMPLES_REJECTED in text and m.ANOMALY_SCORE in text
    assert "_created" not in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode("utf-8"), capture_output=True, timeout=60
    )
    findings = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode == 0 and findings == "", findings


def test_scrape_drops_removed_streams(served) -> None:
    url, _, ex = served
    assert 'stream="spa ce"' in fetch(url + "/metrics")[2]
    ex.update(make_view(["plain/topic"]))
    text = fetch(url + "/metrics")[2]
    assert 'stream="spa ce"' not in text
    assert set(parse_streams(text)[m.VALUE]) == {"plain/topic"}


def test_healthz_follows_the_callback_and_unknown_paths_404(served) -> None:
    url, state, _ = served
    assert fetch(url + "/healthz")[:1] == (200,)
    assert fetch(url + "/healthz")[2].strip() == "ok"
    state.update(ok=False, detail="engine loop stalled for 42 s")
    status, _, body = fetch(url + "/healthz")
    assert (status, body.strip()) == (503, "engine loop stalled for 42 s")
    state.update(ok=True)
    assert fetch(url + "/healthz")[0] == 200
    assert fetch(url + "/")[0] == 404
    assert fetch(url + "/metricsx")[0] == 404


def test_healthz_with_a_failing_check_is_503() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    with MetricsServer(CollectorRegistry(), health=broken) as server:
        status, _, body = fetch(f"http://127.0.0.1:{server.port}/healthz")
    assert status == 503 and "boom" in body
