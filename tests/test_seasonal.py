"""The seasonal blend: periods are found online, forecasts improve, and it stays causal."""

from __future__ import annotations

import numpy as np

from lstm_stream.config import SeasonalConfig
from lstm_stream.engine import Engine
from lstm_stream.evaluation import forecast_metrics


def _daily(n: int, period: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    shape = np.where((t % period) < period // 3, 10.0, 2.0) + np.sin(2 * np.pi * t / period)
    return 20 + shape + 0.1 * rng.standard_normal(n)


def test_period_is_learnt_after_the_learning_samples(pretrained) -> None:
    cfg = pretrained.config.model_copy(update={"seasonal": SeasonalConfig(learn=500, window=512)})
    e = Engine(cfg, pretrained.model)
    y = _daily(800)
    e.process(["s"] * 499, np.arange(499.0), y[:499])
    slot = e.table.ids["s"]
    assert e.arrays["se_period"][slot] == 0  # not yet: nothing from the future is used
    e.process(["s"] * 301, np.arange(499.0, 800.0), y[499:])
    assert e.arrays["se_period"][slot] == 96


def test_blend_beats_the_lstm_alone_on_a_daily_pattern(pretrained) -> None:
    y = _daily(3000, seed=1)
    maes = {}
    for blend in (0.0, 0.3):
        cfg = pretrained.config.model_copy(update={"seasonal": SeasonalConfig(blend=blend)})
        r = Engine(cfg, pretrained.model).process(["s"] * 3000, np.arange(3000.0), y)
        maes[blend] = forecast_metrics(y[1500:], r.forecast[1500:])["mae"]
    assert maes[0.3] < maes[0.0], maes


def test_a_day_that_breaks_the_pattern_is_flagged(pretrained) -> None:
    y = _daily(3000, seed=2)
    y[2400:2496] = y[2304:2400][::-1]  # one day runs backwards: every value stays in range
    r = Engine(pretrained.config, pretrained.model).process(["s"] * 3000, np.arange(3000.0), y)
    flagged = np.nonzero(r.is_anomaly)[0]
    assert ((flagged >= 2400) & (flagged < 2496)).any(), flagged


def test_blend_does_not_hurt_where_last_periods_value_is_a_poor_guess(pretrained) -> None:
    from lstm_stream.nab import read_nab_csv
    from tests.conftest import nab_file

    # nyc_taxi: a daily period is detected, but weekdays differ from weekends, so the value one day
    # ago is a poor forecast (seasonal naive MASE ~2.9): the weight must stay on the LSTM
    y = read_nab_csv(nab_file("realKnownCause/nyc_taxi.csv"), "nyc").values
    maes = {}
    for blend in (0.0, 0.3):
        cfg = pretrained.config.model_copy(update={"seasonal": SeasonalConfig(blend=blend)})
        r = Engine(cfg, pretrained.model).process(["s"] * len(y), np.arange(float(len(y))), y)
        maes[blend] = forecast_metrics(y[3000:], r.forecast[3000:])["mae"]
    assert maes[0.3] <= 1.05 * maes[0.0], maes
