"""Forecaster selection: each stream is served the candidate with the lowest running error."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_stream import checkpoint, scaling, selection
from lstm_stream.config import AdaptationConfig, EngineConfig, ModelConfig, SelectionConfig
from lstm_stream.engine import Engine


@pytest.fixture
def cfg() -> EngineConfig:
    """A tiny untrained network that forecasts values, not changes: a poor forecaster. The per-stream
    correction of the served forecast is off: these tests are about the choice itself
    (tests/test_adaptation.py has it on)."""
    model = ModelConfig(hidden=16, layers=1, predict_delta=False)
    off = AdaptationConfig(enabled=False)
    return EngineConfig(model=model, look_back=8, history_len=0, max_streams=16, adaptation=off)


def _random_walk(n: int, seed: int = 0) -> np.ndarray:
    return 100.0 + np.cumsum(np.random.default_rng(seed).standard_normal(n))


def _sine(n: int, period: int = 24, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return 10.0 + 5.0 * np.sin(2 * np.pi * t / period) + 0.01 * np.random.default_rng(seed).standard_normal(n)


def test_random_walk_is_served_persistence(cfg: EngineConfig) -> None:
    y = _random_walk(600)
    r = Engine(cfg).process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    tail = r.next_served[-300:]
    assert np.mean(tail == selection.PERSISTENCE) > 0.9, np.bincount(tail, minlength=selection.K)
    # what is served is the last value, and the published forecast is what was served
    late = np.arange(400, 600)
    persisted = late[r.served[late] == selection.PERSISTENCE]
    np.testing.assert_array_equal(r.forecast[persisted], y[persisted - 1])
    assert r.served_of(int(persisted[0])) == "persistence"


def test_clean_period_is_served_seasonal_naive(cfg: EngineConfig) -> None:
    y = _sine(1500)
    engine = Engine(cfg)
    r = engine.process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    assert engine.arrays["se_period"][0] == 24
    tail = r.next_served[-500:]
    assert np.all(tail == selection.SEASONAL), np.bincount(tail, minlength=selection.K)
    late = np.arange(1000, 1500)
    past = np.median(y[late - 24 * np.arange(1, 4)[:, None]].astype(np.float32), axis=0)  # the ring is f32
    np.testing.assert_allclose(r.forecast[late], past, rtol=1e-6)  # the median of three periods back
    assert engine.view().served.tolist() == [selection.SEASONAL]
    # far better than the network alone
    model_only = cfg.model_copy(update={"selection": SelectionConfig(enabled=False)})
    m = Engine(model_only).process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    assert np.mean(np.abs(r.residual[late])) < 0.2 * np.mean(np.abs(m.residual[late]))


def test_served_residual_and_spread_are_the_served_candidates(cfg: EngineConfig) -> None:
    y = _sine(700, seed=1)
    engine = Engine(cfg)
    a = engine.arrays
    prev = None
    seen = set()
    for t, v in enumerate(y):
        r = engine.process(["a"], [float(t)], [v])
        if prev is not None:  # this sample is scored against what was served one step earlier
            assert r.served[0] == prev[2]
            np.testing.assert_array_equal(r.forecast, prev[0])
            np.testing.assert_array_equal(r.spread, prev[1])
            np.testing.assert_array_equal(r.residual, v - prev[0])
        choice = int(r.next_served[0])
        seen.add(choice)
        assert r.next_forecast[0] == a["sel_fc"][0, choice]
        if a["sel_n"][0, choice] == 0:  # before the first error, the network's spread stands in
            assert r.next_spread[0] == a["sel_spread"][0]
        else:
            _, sc = scaling.stats(a, np.array([0]), cfg.scaling)
            own = max(selection.MAD_TO_SIGMA * a["sel_mae"][0, choice], selection.SPREAD_FLOOR * sc[0])
            assert r.next_spread[0] == pytest.approx(own, rel=1e-12)
        prev = (r.next_forecast.copy(), r.next_spread.copy(), choice)
    assert selection.SEASONAL in seen and len(seen) > 1


def test_margin_keeps_the_choice_steady(cfg: EngineConfig) -> None:
    y = _random_walk(800, seed=3)
    steady = Engine(cfg).process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    loose_cfg = cfg.model_copy(update={"selection": SelectionConfig(margin=0.0)})
    loose = Engine(loose_cfg).process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    switches = [int(np.count_nonzero(np.diff(r.next_served.astype(int)))) for r in (steady, loose)]
    assert switches[0] <= switches[1]


def test_snapshot_restore_keeps_the_selection(cfg: EngineConfig) -> None:
    y = _sine(900)
    w = _random_walk(900)
    names = ["s", "w"] * 600
    ts = np.repeat(np.arange(600, dtype=float), 2)
    vals = np.ravel(np.column_stack([y[:600], w[:600]]))
    engine = Engine(cfg)
    engine.process(names, ts, vals)
    copy = checkpoint.restore(checkpoint.snapshot(engine))
    for col in ("sel_fc", "sel_mae", "sel_n", "sel_level", "sel_spread", "sel_choice"):
        np.testing.assert_array_equal(copy.arrays[col], engine.arrays[col], err_msg=col)
    assert set(engine.arrays["sel_choice"][:2].tolist()) == {selection.SEASONAL, selection.PERSISTENCE}
    names, ts = ["s", "w"] * 300, np.repeat(np.arange(600, 900, dtype=float), 2)
    vals = np.ravel(np.column_stack([y[600:], w[600:]]))
    a, b = engine.process(names, ts, vals), copy.process(names, ts, vals)
    for f in ("forecast", "spread", "residual", "score", "next_forecast", "served", "next_served"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_batched_equals_one_sample_at_a_time(cfg: EngineConfig) -> None:
    level = 5.0 + np.random.default_rng(2).standard_normal(700)
    data = {"s": _sine(700), "w": _random_walk(700), "n": level}
    names, ts, vals = [], [], []
    for t in range(700):
        for name, v in data.items():
            names.append(name)
            ts.append(float(t))
            vals.append(v[t])
    batched = Engine(cfg).process(names, np.array(ts), np.array(vals))
    single = Engine(cfg)
    parts = [single.process(names[i : i + 1], ts[i : i + 1], vals[i : i + 1]) for i in range(len(names))]
    for f in ("served", "next_served"):
        np.testing.assert_array_equal(getattr(batched, f), np.concatenate([getattr(p, f) for p in parts]))
    for f in ("forecast", "spread", "next_forecast", "next_spread"):
        got = np.concatenate([getattr(p, f) for p in parts])
        np.testing.assert_allclose(getattr(batched, f), got, rtol=1e-5, atol=1e-5, err_msg=f)
    assert len(set(batched.next_served[-30:].tolist())) > 1


def test_off_serves_the_model_and_keeps_no_columns(cfg: EngineConfig) -> None:
    off = cfg.model_copy(update={"selection": SelectionConfig(enabled=False)})
    engine = Engine(off)
    y = _random_walk(300)
    r = engine.process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    assert not any(k.startswith("sel_") for k in engine.arrays)
    assert not r.served.any() and not r.next_served.any()
    assert engine.view().served.tolist() == [selection.MODEL]


def test_swap_model_keeps_serving_the_choice(cfg: EngineConfig) -> None:
    engine = Engine(cfg)
    y = _random_walk(400)
    engine.process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    choice = int(engine.arrays["sel_choice"][0])
    assert choice == selection.PERSISTENCE
    engine.swap_model(engine.copy_model())
    assert engine.arrays["fc_mean"][0] == y[-1]
    assert int(engine.arrays["sel_choice"][0]) == choice


def test_a_spike_on_a_clean_period_is_flagged(pretrained) -> None:
    """Served seasonal naive, with its own small running error as the spread: the spike is an alert."""
    t = np.arange(400)
    y = 20 + 5 * np.sin(2 * np.pi * t / 50)
    y[300] += 40
    r = Engine(pretrained.config, pretrained.model).process(["a"] * 400, t.astype(float), y)
    assert r.served_of(300) == "seasonal"
    assert r.is_anomaly[300]


def _spike_on_random_walk(n: int = 400, seed: int = 1) -> np.ndarray:
    """A random walk (persistence is the best forecaster) with one large spike at row 100: after it
    the EWMA's error is lower for a while (it recovers faster than persistence), by luck only."""
    y = _random_walk(n, seed)
    y[100] += 60.0
    return y


@pytest.mark.parametrize("seed", [1, 3])
def test_one_spike_does_not_move_the_choice(cfg: EngineConfig, seed: int) -> None:
    y = _spike_on_random_walk(seed=seed)
    after = slice(101, 300)  # while the spike is in the running errors' memory
    r = Engine(cfg).process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    served = r.served[after]
    assert np.all(served == selection.PERSISTENCE), np.bincount(served, minlength=selection.K)
    # the margin alone (no paired test) switches on the spike's luck, and serves worse than persistence
    loose_cfg = cfg.model_copy(update={"selection": SelectionConfig(confidence=0.0)})
    loose = Engine(loose_cfg).process(["a"] * len(y), np.arange(len(y), dtype=float), y)
    assert np.any(loose.served[after] != selection.PERSISTENCE)
    mae = [np.mean(np.abs(res.residual[after])) for res in (r, loose)]
    assert mae[0] < mae[1]


def test_paired_test_passes_a_steady_gain_and_not_one_outlier() -> None:
    cfg = SelectionConfig()
    n = np.array([100, 100])
    # gains of 0.2 +- 1: mean 0.2, mean square 1.04, over 100 samples: t = 2
    # one gain of 20 among 99 of 0: mean 0.2, mean square 4: t = 1 whatever its size
    passed = selection.paired_gain(np.array([0.2, 0.2]), np.array([1.04, 4.0]), n, cfg)
    assert passed.tolist() == [True, False]
