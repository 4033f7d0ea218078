"""The forecaster networks: shapes, stateful == window, and every architecture trains and forecasts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstm_stream.config import EngineConfig, ModelConfig, TrainConfig
from lstm_stream.engine import Engine
from lstm_stream.evaluation import forecast_metrics
from lstm_stream.models import AttentionLSTM, build_model
from lstm_stream.synthetic import sine
from lstm_stream.training import fit


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_stepping_equals_running_the_window(layers: int) -> None:
    model = build_model(ModelConfig(hidden=16, layers=layers, dropout=0.2))
    x = torch.randn(5, 12)
    mean_w, spread_w = model(x)
    state = model.zero_state(5)
    with torch.no_grad():
        for t in range(12):
            mean_s, spread_s, state = model.step(x[:, t], state)
    torch.testing.assert_close(mean_w, mean_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spread_w, spread_s, rtol=1e-5, atol=1e-5)


def test_deep_stacks_use_residual_connections() -> None:
    assert build_model(ModelConfig(layers=4)).residual
    assert not build_model(ModelConfig(layers=3)).residual
    assert build_model(ModelConfig(layers=2, residual=True)).residual


@pytest.mark.parametrize("arch", ["lstm", "bilstm", "attention"])
@pytest.mark.parametrize("head", ["gaussian", "mse"])
def test_window_models_output_mean_and_positive_spread(arch: str, head: str) -> None:
    model = build_model(ModelConfig(arch=arch, hidden=16, layers=2, head=head))
    mean, spread = model(torch.randn(7, 10))
    assert mean.shape == (7,) and spread.shape == (7,)
    assert (spread > 0).all()


def test_attention_weights_are_a_distribution_over_the_window() -> None:
    model = build_model(ModelConfig(arch="attention", hidden=16))
    assert isinstance(model, AttentionLSTM)
    _, weights = model.attention(torch.randn(4, 9))
    assert weights.shape == (4, 9)
    torch.testing.assert_close(weights.sum(1), torch.ones(4))


def test_stateful_mode_refuses_window_only_models() -> None:
    with pytest.raises(ValueError, match="mode='window'"):
        EngineConfig(model=ModelConfig(arch="bilstm"))


@pytest.mark.parametrize("arch", ["lstm", "bilstm", "attention"])
def test_every_architecture_trains_and_forecasts_a_sine(arch: str) -> None:
    mode = "stateful" if arch == "lstm" else "window"
    cfg = EngineConfig(
        model=ModelConfig(arch=arch, hidden=32, layers=1),
        mode=mode,
        look_back=24,
        train=TrainConfig(epochs=25, lr=5e-3, stride=4, seq_len=48, patience=6),
    )
    y = sine(2000, period=40, noise=0.02, rng=np.random.default_rng(0))
    model = build_model(cfg.model)
    report = fit(model, y[:1500], cfg)
    assert report.val_loss < report.history[0].val_loss  # it learned something
    r = Engine(cfg, model).process(["s"] * 2000, np.arange(2000.0), y)
    m = forecast_metrics(y[1500:], r.forecast[1500:], y_train=y[:1500])
    assert m["mase"] < 1.0, m  # better than persistence on held-out data
