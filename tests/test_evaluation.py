"""Tests for lstm_stream.evaluation: hand-worked metric values, baselines, periods, flag scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_stream.evaluation import (
    BASELINES,
    auc,
    detect_period,
    direction_accuracy,
    event_metrics,
    ewma,
    flag_metrics,
    forecast_metrics,
    holt,
    mae,
    mase,
    mean_directional_accuracy,
    persistence,
    r2,
    rmse,
    seasonal_naive,
)

NAN = float("nan")
# A small case worked by hand: errors y - yhat at t = 1..4 are 0.5, 1, -1, 1.
Y = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
YHAT = np.array([NAN, 1.5, 3.0, 4.0, 4.0])


# --- forecast metrics ---------------------------------------------------------------------------


def test_hand_computed_values() -> None:
    assert mae(Y, YHAT) == pytest.approx(3.5 / 4)
    assert rmse(Y, YHAT) == pytest.approx(math.sqrt(3.25 / 4))
    # y[1:] = 2, 4, 3, 5: mean 3.5, SStot = 5, SSres = 3.25.
    assert r2(Y, YHAT) == pytest.approx(1 - 3.25 / 5)
    # Naive one-step MAE on Y: |1| + |2| + |-1| + |2| over 4 = 1.5.
    assert mase(Y, YHAT) == pytest.approx(0.875 / 1.5)
    # DA, t = 2..4: truth moves +, -, +; forecast moves +1.5, +1, 0 -> only t = 2 matches.
    assert direction_accuracy(Y, YHAT) == pytest.approx(1 / 3)
    # MDA, t = 1..4: truth moves +, +, -, +; called moves yhat[t] - y[t-1] = +.5, +1, 0, +1.
    assert mean_directional_accuracy(Y, YHAT) == pytest.approx(3 / 4)


def test_forecast_metrics_dict() -> None:
    metrics = forecast_metrics(Y, YHAT)
    assert list(metrics) == ["mae", "rmse", "r2", "mase", "da", "mda"]
    assert metrics["mae"] == mae(Y, YHAT)
    assert metrics["mda"] == mean_directional_accuracy(Y, YHAT)
    assert all(isinstance(v, float) for v in metrics.values())


def test_mase_with_training_series_and_period() -> None:
    train = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 4.0])  # period-3 naive errors 0, 0, 1 -> scale 1/3
    assert mase(Y, YHAT, y_train=train, period=3) == pytest.approx(0.875 * 3)
    assert math.isnan(mase(Y, YHAT, y_train=[5.0, 5.0, 5.0]))  # a flat train series has no scale
    assert math.isnan(mase(Y, YHAT, period=len(Y)))


def test_persistence_mase_is_one_on_its_own_series() -> None:
    y = np.cumsum(np.random.default_rng(0).standard_normal(500))
    assert mase(y, persistence(y)) == pytest.approx(1.0)
    assert mase(y, seasonal_naive(y, 7), period=7) == pytest.approx(1.0)


def test_perfect_forecast() -> None:
    y = np.sin(np.arange(50) / 3.0)
    m = forecast_metrics(y, y.copy())
    assert m["mae"] == 0.0 and m["rmse"] == 0.0 and m["mase"] == 0.0
    assert m["r2"] == 1.0 and m["da"] == 1.0 and m["mda"] == 1.0


def test_r2_on_constant_truth() -> None:
    y = np.full(5, 2.0)
    assert r2(y, y) == 1.0
    assert math.isnan(r2(y, y + 0.1))


def test_metrics_ignore_nan_positions() -> None:
    y = np.array([1.0, 2.0, NAN, 4.0, 7.0, 6.0])
    yhat = np.array([NAN, 1.0, 3.0, NAN, 5.0, 6.5])
    keep = np.isfinite(y) & np.isfinite(yhat)
    assert mae(y, yhat) == pytest.approx(mae(y[keep], yhat[keep])) == pytest.approx(3.5 / 3)
    assert rmse(y, yhat) == pytest.approx(rmse(y[keep], yhat[keep]))
    assert r2(y, yhat) == pytest.approx(r2(y[keep], yhat[keep]))
    assert math.isnan(mae([NAN, 1.0], [2.0, NAN]))
    assert math.isnan(direction_accuracy([1.0, 2.0], [NAN, 1.0]))
    assert all(math.isfinite(v) for v in forecast_metrics(y, yhat).values())


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        mae([1.0, 2.0], [1.0])


# --- baselines ----------------------------------------------------------------------------------


def test_persistence_and_seasonal_naive_values() -> None:
    np.testing.assert_array_equal(persistence([3.0, 1.0, 2.0]), [NAN, 3.0, 1.0])
    y = np.tile([3.0, 1.0, 4.0, 1.0, 5.0], 10)  # a pure period-5 series
    yhat = seasonal_naive(y, 5)
    assert np.isnan(yhat[:5]).all()
    np.testing.assert_array_equal(yhat[5:], y[5:])
    assert mae(y, yhat) == 0.0
    with pytest.raises(ValueError):
        seasonal_naive(y, 0)


def test_ewma_and_holt_values() -> None:
    np.testing.assert_allclose(ewma([2.0, 4.0, 8.0], alpha=0.5), [NAN, 2.0, 3.0])
    np.testing.assert_allclose(ewma([2.0, NAN, 4.0], alpha=0.5), [NAN, 2.0, 2.0])  # skips gaps
    np.testing.assert_allclose(ewma([NAN, 2.0, 4.0], alpha=0.5), [NAN, NAN, 2.0])
    # Holt is exact on a straight line once the trend is initialised from the first difference.
    line = 1.0 + 2.0 * np.arange(20)
    yhat = holt(line, alpha=0.5, beta=0.5)
    assert np.isnan(yhat[0]) and yhat[1] == 1.0
    np.testing.assert_allclose(yhat[2:], line[2:])


def test_baseline_registry() -> None:
    assert set(BASELINES) == {"persistence", "ewma", "seasonal_naive"}
    y = np.sin(np.arange(60) * 2 * np.pi / 12)
    for name, forecaster in BASELINES.items():
        yhat = forecaster(y, 12)
        assert yhat.shape == y.shape and np.isnan(yhat[0]), name
        assert math.isfinite(forecast_metrics(y, yhat, period=12)["mae"]), name
    np.testing.assert_array_equal(BASELINES["seasonal_naive"](y, 12), seasonal_naive(y, 12))


values = st.one_of(st.floats(-1e6, 1e6), st.just(NAN))


@settings(max_examples=60, deadline=None)
@given(
    y=st.lists(values, min_size=1, max_size=40),
    tail=st.lists(values, min_size=40, max_size=40),
    cut=st.integers(0, 39),
    period=st.integers(1, 6),
)
def test_baselines_are_causal(y: list[float], tail: list[float], cut: int, period: int) -> None:
    """Rewriting y[t:] never changes yhat[:t + 1]: the forecast of y[t] only sees y[:t]."""
    t = cut % len(y)
    changed = y[:t] + tail[: len(y) - t]
    forecasters = dict(BASELINES, holt=lambda v, _p: holt(v, 0.4, 0.2))
    for name, forecaster in forecasters.items():
        before, after = forecaster(np.array(y), period), forecaster(np.array(changed), period)
        np.testing.assert_array_equal(before[: t + 1], after[: t + 1], err_msg=name)


# --- period detection ---------------------------------------------------------------------------


def test_detect_period_five_minute_daily() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(4000)
    y = np.sin(2 * np.pi * t / 288) + 0.3 * rng.standard_normal(t.size)
    assert detect_period(y) == 288
    y_trend_gaps = y + 0.002 * t
    y_trend_gaps[[10, 500, 501, 2222]] = NAN
    assert detect_period(y_trend_gaps) == 288


def test_detect_period_hourly_daily_pattern() -> None:
    rng = np.random.default_rng(2)
    h = np.arange(24 * 30)
    evening = 1.5 * np.exp(-0.5 * ((h % 24 - 18) / 2.0) ** 2)
    y = 10 + 3 * np.sin(2 * np.pi * (h - 8) / 24) + evening + 0.8 * rng.standard_normal(h.size)
    assert detect_period(y) == 24


def test_detect_period_without_seasonality() -> None:
    rng = np.random.default_rng(3)
    assert detect_period(rng.standard_normal(4000)) == 1
    assert detect_period(rng.standard_normal(100)) == 1
    assert detect_period(np.full(500, 3.0)) == 1
    assert detect_period(np.arange(500.0)) == 1
    assert detect_period([1.0, 2.0, 1.0]) == 1


# --- anomaly flags ------------------------------------------------------------------------------


def test_flag_metrics_hand_case() -> None:
    m = flag_metrics([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])  # tp 2, fp 1, fn 1
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    silent = flag_metrics([0, 0, 0], [0, 1, 0])
    assert math.isnan(silent["precision"]) and silent["recall"] == 0.0 and silent["f1"] == 0.0
    assert math.isnan(flag_metrics([0, 0], [0, 0])["f1"])


def test_event_metrics_hand_case() -> None:
    flags = np.zeros(20, dtype=bool)
    flags[[2, 3, 10, 17]] = True
    m = event_metrics(flags, [(1, 4), (8, 9), (15, 18)])
    assert m["precision"] == pytest.approx(3 / 4)  # flag 10 is outside every window
    assert m["recall"] == pytest.approx(2 / 3)  # window (8, 9) is missed
    assert m["f1"] == pytest.approx(12 / 17)
    assert (m["detected"], m["windows"], m["flags"], m["inside"]) == (2, 3, 4, 3)


def test_event_windows_are_inclusive() -> None:
    flags = np.zeros(10, dtype=bool)
    flags[4] = True
    assert event_metrics(flags, [(1, 4)])["recall"] == 1.0
    assert event_metrics(flags, [(4, 4)])["recall"] == 1.0
    assert event_metrics(flags, [(5, 8)])["recall"] == 0.0
    assert math.isnan(event_metrics(np.zeros(10, dtype=bool), [(1, 2)])["precision"])
    with pytest.raises(ValueError):
        event_metrics(flags, [(5, 4)])


def test_auc_values() -> None:
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]) == 1.0
    assert auc([4.0, 3.0, 2.0, 1.0], [0, 0, 1, 1]) == 0.0
    assert auc([1.0, 1.0], [0, 1]) == 0.5  # a tie counts half
    assert auc([NAN, 1.0, 2.0], [1, 0, 1]) == 1.0  # NaN scores are dropped
    assert math.isnan(auc([1.0, 2.0], [1, 1]))
    rng = np.random.default_rng(4)
    assert auc(rng.random(20000), rng.random(20000) < 0.3) == pytest.approx(0.5, abs=0.03)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5).map(float), min_size=2, max_size=30),
    truth=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_auc_is_a_probability_and_antisymmetric(scores: list[float], truth: list[bool]) -> None:
    labels = truth[: len(scores)]
    value = auc(scores, labels)
    if len(set(labels)) < 2:
        assert math.isnan(value)
    else:
        assert 0.0 <= value <= 1.0
        assert value + auc([-s for s in scores], labels) == pytest.approx(1.0)
