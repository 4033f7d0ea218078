"""Per-stream adaptation: the served forecast corrected by a linear fit on the stream's own past."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_stream import adaptation, checkpoint, scaling, selection
from lstm_stream.config import AdaptationConfig, EngineConfig, ModelConfig
from lstm_stream.engine import Engine


@pytest.fixture
def cfg() -> EngineConfig:
    """A tiny untrained network that forecasts values, not changes: a poor forecaster, so what is
    served comes from the simple candidates, which get a trend or a momentum wrong."""
    model = ModelConfig(hidden=16, layers=1, predict_delta=False)
    return EngineConfig(model=model, look_back=8, history_len=0, max_streams=16, horizon=None)


def _drift(n: int, seed: int = 0) -> np.ndarray:
    """A level rising by 0.5 a step under noise of 1: persistence lags, the EWMA more."""
    return 100.0 + 0.5 * np.arange(n) + np.random.default_rng(seed).standard_normal(n)


def _momentum(n: int, seed: int = 0) -> np.ndarray:
    """Changes that carry on (AR(1) with 0.7): persistence misses what the last change says."""
    rng = np.random.default_rng(seed)
    d = np.zeros(n)
    for t in range(1, n):
        d[t] = 0.7 * d[t - 1] + rng.standard_normal()
    return 50.0 + np.cumsum(d)


def _run(cfg: EngineConfig, y: np.ndarray, enabled: bool):
    on = cfg.model_copy(update={"adaptation": AdaptationConfig(enabled=enabled)})
    engine = Engine(on)
    return engine, engine.process(["a"] * len(y), np.arange(len(y), dtype=float), y)


@pytest.mark.parametrize("make", [_drift, _momentum])
def test_correction_lowers_the_error_on_values_not_yet_seen(cfg: EngineConfig, make) -> None:
    y = make(800)
    _, off = _run(cfg, y, False)
    _, on = _run(cfg, y, True)
    late = slice(300, None)  # each forecast was made before its value was seen
    mae_on, mae_off = np.mean(np.abs(on.residual[late])), np.mean(np.abs(off.residual[late]))
    assert mae_on < 0.85 * mae_off, (mae_on, mae_off)
    assert np.mean(on.served[late] == selection.ADAPTED) > 0.9
    assert on.served_of(799) == "adapted"
    assert not (off.served == selection.ADAPTED).any()


def test_served_spread_is_the_corrections_own_error(cfg: EngineConfig) -> None:
    y = _drift(400, seed=1)
    engine, _ = _run(cfg, y, True)
    a = engine.arrays
    r = engine.process(["a"], [400.0], [y[-1] + 0.5])
    assert r.next_served[0] == selection.ADAPTED
    assert r.next_forecast[0] == a["ad_fc"][0]
    _, sc = scaling.stats(a, np.array([0]), cfg.scaling)
    own = max(selection.MAD_TO_SIGMA * a["ad_mae"][0, 1], selection.SPREAD_FLOOR * sc[0])
    assert r.next_spread[0] == pytest.approx(own, rel=1e-12)
    assert engine.view().served.tolist() == [selection.ADAPTED]


def test_state_round_trips_through_a_checkpoint(cfg: EngineConfig) -> None:
    y, w = _drift(600), _momentum(600)
    names = ["d", "m"] * 400
    ts = np.repeat(np.arange(400, dtype=float), 2)
    engine = Engine(cfg)
    engine.process(names, ts, np.ravel(np.column_stack([y[:400], w[:400]])))
    copy = checkpoint.restore(checkpoint.snapshot(engine))
    cols = [k for k in engine.arrays if k.startswith("ad_")]
    assert len(cols) == len(adaptation.columns(cfg.adaptation, cfg.selection))
    for col in cols:
        np.testing.assert_array_equal(copy.arrays[col], engine.arrays[col], err_msg=col)
    assert engine.arrays["ad_on"][:2].all()
    names, ts = ["d", "m"] * 200, np.repeat(np.arange(400, 600, dtype=float), 2)
    vals = np.ravel(np.column_stack([y[400:], w[400:]]))
    a, b = engine.process(names, ts, vals), copy.process(names, ts, vals)
    for f in ("forecast", "spread", "residual", "score", "next_forecast", "served", "next_served"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_a_model_swap_redoes_the_correction_on_the_new_forecast(cfg: EngineConfig) -> None:
    y = _momentum(500, seed=2)
    engine, _ = _run(cfg, y, True)
    before = engine.arrays["ad_w"][0].copy()
    engine.swap_model(Engine(cfg).copy_model())
    a = engine.arrays
    np.testing.assert_array_equal(a["ad_w"][0], before)  # the fit is the stream's, not the model's
    f = a["ad_f"][0]
    expect = a["ad_base"][0] + a["ad_scale"][0] * float(f @ a["ad_w"][0])
    assert a["ad_fc"][0] == pytest.approx(expect, rel=1e-12)
    assert a["fc_mean"][0] == (a["ad_fc"][0] if a["ad_on"][0] else a["ad_base"][0])


def test_the_correction_is_served_only_while_it_gains(cfg: EngineConfig) -> None:
    """A drift (the correction pays) that stops, then a flat level with spikes: wherever the correction
    is served, its running paired gain over the uncorrected forecast was positive when it was chosen."""
    rng = np.random.default_rng(2)
    y = 100.0 + np.cumsum(np.r_[np.full(400, 0.5), np.zeros(600)]) + rng.standard_normal(1000)
    y[rng.choice(np.arange(450, 1000), 12, replace=False)] += 25.0 * rng.choice([-1.0, 1.0], 12)
    engine = Engine(cfg.model_copy(update={"adaptation": AdaptationConfig(enabled=True)}))
    gains, chosen = [], []
    for t, v in enumerate(y):
        r = engine.process(["a"], [float(t)], [v])
        gains.append(engine.arrays["ad_gain"][0, 0])
        chosen.append(r.next_served[0] == selection.ADAPTED)
    chosen, gains = np.array(chosen), np.array(gains)
    assert chosen[200:400].mean() > 0.9  # the drift is corrected
    assert not (chosen & (gains <= 0.0)).any()
