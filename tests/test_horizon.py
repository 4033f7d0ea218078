"""Multi-step forecasts (issue 17 item 3): the path of the next H values, its interval, its outputs."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from daemon.outputs.events import EventPublisher
from daemon.outputs.exposition import StreamExporter
from daemon.settings import Settings
from lstm_stream import checkpoint, horizon
from lstm_stream.config import EngineConfig, ModelConfig
from lstm_stream.engine import Engine
from lstm_stream.evaluation import at_horizon, horizon_metrics
from tests.daemon_proc import Collector, Daemon, Publisher


@pytest.fixture
def cfg() -> EngineConfig:
    """A tiny untrained network; the path's candidates do the multi-step work."""
    return EngineConfig(model=ModelConfig(hidden=16, layers=1), look_back=8, history_len=0, max_streams=8)


def _noisy_sine(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / 50) + np.random.default_rng(seed).standard_normal(n)


def _serve(cfg: EngineConfig, y: np.ndarray):
    engine = Engine(cfg)
    return engine, engine.process(["a"] * len(y), np.arange(len(y), dtype=float), y)


def test_path_shape_and_step_one_is_the_served_forecast(cfg: EngineConfig) -> None:
    y = _noisy_sine(400)
    engine, r = _serve(cfg, y)
    assert r.path.shape == r.lower.shape == r.upper.shape == (400, 12)
    np.testing.assert_array_equal(r.path[:, 0], r.next_forecast)
    np.testing.assert_array_equal(r.path[:-1, 0], r.forecast[1:])  # what the next sample is scored against
    late = r.path[100:]
    assert np.isfinite(late).all() and (r.lower[100:] <= late).all() and (late <= r.upper[100:]).all()
    view = engine.view()
    np.testing.assert_array_equal(view.path[0], r.path[-1])
    np.testing.assert_allclose(view.upper[0] - view.lower[0], r.upper[-1] - r.lower[-1])
    # a checkpoint carries the paths' state: the restored engine goes on exactly as the original
    again = checkpoint.restore(checkpoint.snapshot(engine))
    more = _noisy_sine(460)[400:]
    a = engine.process(["a"] * 60, np.arange(400, 460, dtype=float), more)
    b = again.process(["a"] * 60, np.arange(400, 460, dtype=float), more)
    np.testing.assert_array_equal(a.path, b.path)
    np.testing.assert_array_equal(a.upper, b.upper)


def test_interval_coverage_calibrates_on_a_noisy_series(cfg: EngineConfig) -> None:
    y = _noisy_sine(1500, seed=3)
    _, r = _serve(cfg, y)
    for h in (1, 3, 7, 12):
        lo, up = at_horizon(r.lower, h)[400:], at_horizon(r.upper, h)[400:]
        inside = np.mean((lo <= y[400:]) & (y[400:] <= up))
        assert 0.7 <= inside <= 0.9, (h, inside)
    # the sine's period is found and the path follows it: at 12 steps far better than persistence
    err = np.abs(at_horizon(r.path, 12)[400:] - y[400:])
    persistence = np.abs(y[400 - 12 : -12] - y[400:])
    assert err.mean() < 0.7 * persistence.mean(), (err.mean(), persistence.mean())


def test_coverage_is_the_configured_one(cfg: EngineConfig) -> None:
    y = _noisy_sine(1000, seed=5)
    _, r = _serve(cfg.model_copy(update={"interval": 0.5}), y)
    lo, up = at_horizon(r.lower, 12)[300:], at_horizon(r.upper, 12)[300:]
    inside = np.mean((lo <= y[300:]) & (y[300:] <= up))
    assert 0.4 <= inside <= 0.6, inside


@pytest.mark.parametrize("off", [0, False, "false"])
def test_horizon_zero_or_false_switches_it_off(cfg: EngineConfig, off) -> None:
    off_cfg = EngineConfig.model_validate({**cfg.model_dump(), "horizon": off})
    assert off_cfg.horizon is None
    engine, r = _serve(off_cfg, _noisy_sine(50))
    assert r.path.shape == (0, 0)
    assert not any(k.startswith("hz_") for k in engine.arrays)
    assert engine.view().path is None
    on = Engine(cfg)
    assert on.memory()["state_bytes"] > engine.memory()["state_bytes"]


def test_horizon_metrics_score_each_step() -> None:
    y = np.arange(100.0)  # a line: the perfect path is known
    path = y[:, None] + np.arange(1, 13)
    lower, upper = path - 0.5, path + 0.5
    upper[:, 11] = path[:, 11] - 0.1  # the last step's interval misses every value
    out = horizon_metrics(y, path, lower, upper, start=20, period=1)
    assert set(out) == {str(h) for h in range(1, 13)}
    assert out["1"]["model"]["mae"] == 0.0 and out["12"]["model"]["mae"] == 0.0
    assert out["12"]["persistence"]["mae"] == 12.0 and out["12"]["persistence"]["mase"] == 12.0
    assert out["5"]["coverage"] == 1.0 and out["12"]["coverage"] == 0.0


def test_exporter_renders_only_the_configured_steps(cfg: EngineConfig) -> None:
    engine, r = _serve(cfg, _noisy_sine(300))
    text = StreamExporter("all", horizons=(1, 12, 99)).render_view(engine.view())
    ahead = [line for line in text.splitlines() if line.startswith("lstm_stream_forecast_ahead")]
    assert len(ahead) == 6  # path, lower, upper at steps 1 and 12; 99 is past the horizon
    assert f'lstm_stream_forecast_ahead{{stream="a",horizon="12"}} {float(r.path[-1, 11])!r}' in ahead
    assert f'lstm_stream_forecast_ahead_upper{{stream="a",horizon="1"}} {float(r.upper[-1, 0])!r}' in ahead
    assert "forecast_ahead" not in StreamExporter("all").render_view(engine.view())
    assert Settings().http.horizons == [12]


def test_forecast_payload_carries_the_path(cfg: EngineConfig) -> None:
    engine, r = _serve(cfg, _noisy_sine(60))
    sent: list[tuple[str, bytes]] = []
    events = EventPublisher(lambda t, p, q, retain: sent.append((t, p)) or True, "an", "fc/{stream}")
    events.publish_forecasts(r, np.full(len(r), 60.0))
    topic, payload = sent[-1]
    body = json.loads(payload)
    assert topic == "fc/a" and body["step_s"] == 60.0
    assert body["path"] == r.path[-1].tolist() and len(body["lower"]) == len(body["upper"]) == 12
    assert body["path"][0] == body["forecast"]


def test_spacing_is_the_median_gap() -> None:
    ring = np.array([[5.0, 0.0, 10.0, 15.0, 20.0, np.nan], [1.0, np.nan, np.nan, np.nan, np.nan, np.nan]])
    out = horizon.spacing(ring)
    assert out[0] == 5.0 and math.isnan(out[1])


@pytest.mark.integration
@pytest.mark.slow
def test_daemon_publishes_paths_on_the_forecast_topic(tmp_path, broker) -> None:
    cfg = {"mqtt": {"forecast_topic": "lstm-stream/forecast/{stream}"}, "ingest": {"batch_ms": 10}}
    d = Daemon(tmp_path, broker, cfg, name="paths").start()
    got = Collector(broker, "lstm-stream/forecast/#")
    pub = Publisher(broker)
    try:
        t0 = 1.7e9
        y = _noisy_sine(80)
        pub.publish_many((("sensors/p", {"value": float(v), "ts": t0 + 30.0 * i}) for i, v in enumerate(y)))
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= len(y))
        deadline = time.monotonic() + 20
        while not any(b["ts"] == t0 + 30.0 * 79 for b in got.json()) and time.monotonic() < deadline:
            time.sleep(0.05)
        last = max(got.json(), key=lambda b: b["ts"])
        # the exported step 12 is the last path's (once the metrics view caught up)
        d.wait_metric(
            "lstm_stream_forecast_ahead", lambda v: v == last["path"][11], stream="sensors/p", horizon="12"
        )
    finally:
        pub.close()
        got.close()
        d.close()
    assert last["ts"] == t0 + 30.0 * 79 and last["step_s"] == 30.0
    assert len(last["path"]) == len(last["lower"]) == len(last["upper"]) == 12
    assert last["path"][0] == last["forecast"]
    assert all(lo <= p <= up for lo, p, up in zip(last["lower"], last["path"], last["upper"], strict=True))


def test_the_path_changes_nothing_of_the_one_step_outputs(cfg: EngineConfig) -> None:
    y = _noisy_sine(700, seed=2)
    y[500] += 15.0  # a spike, so scores and flags are exercised
    _, on = _serve(cfg, y)
    _, off = _serve(cfg.model_copy(update={"horizon": None}), y)
    for name in ("forecast", "spread", "residual", "score", "is_anomaly", "next_forecast", "served"):
        np.testing.assert_array_equal(getattr(on, name), getattr(off, name), err_msg=name)
