"""Forecast metrics of the model against the baselines, as numbers and as a table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .common import UserError

FORECASTERS = ("model", "persistence", "ewma", "seasonal_naive")
METRICS = ("mae", "rmse", "r2", "mase", "da", "mda")


def compare(
    y: np.ndarray, forecast: np.ndarray, start: int, period: int
) -> tuple[dict[str, dict[str, float]], int]:
    """Model vs persistence, EWMA and seasonal naive on rows ``[a, n)``, ``a = max(start, period, 1)``.

    Every forecaster is scored on the same rows (all have a forecast there). MASE divides by the
    MAE of persistence on those rows, so persistence scores exactly 1 and below 1 beats it.
    Returns the metrics and ``a``.
    """
    from lstm_stream.evaluation import BASELINES, forecast_metrics

    a = max(start, period, 1)
    if a >= len(y) - 1:
        raise UserError(f"nothing to score: the seasonal period {period} leaves no rows after row {start}")
    ref = y[a - 1 :]  # naive in-sample scale over exactly the evaluated steps
    out = {"model": forecast_metrics(y[a:], forecast[a:], ref, 1)}
    for name, fn in BASELINES.items():
        out[name] = forecast_metrics(y[a:], fn(y, period)[a:], ref, 1)
    return out, a


def _period(y: np.ndarray, start: int, given: int | None) -> int:
    """--period, else the period detected on the history before ``start`` (whole series if short)."""
    from lstm_stream.evaluation import detect_period

    if given:
        return given
    hist = y[:start] if start >= 64 else y
    return detect_period(hist)


def _table(results: dict[str, dict[str, float]], names: Sequence[str] = FORECASTERS) -> str:
    head = f"{'forecaster':<16}" + "".join(f"{m.upper():>11}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for name in names:
        row = results[name]
        cells = "".join(f"{row[m]:>11.4g}" if math.isfinite(row[m]) else f"{'n/a':>11}" for m in METRICS)
        lines.append(f"{name:<16}{cells}")
    return "\n".join(lines)


def _horizon_table(horizons: dict[str, dict], coverage: float) -> str:
    """Per step of the path: MASE of the served path, persistence and seasonal naive at that step,
    and how many values fell inside the interval."""
    head = f"{'step':>5}{'served':>9}{'persist':>9}{'snaive':>9}{'covered':>9}"
    lines = [head, "-" * len(head)]
    for h, row in horizons.items():
        cells = [row[k]["mase"] for k in ("model", "persistence", "seasonal_naive")] + [row["coverage"]]
        lines.append(f"{h:>5}" + "".join(f"{c:>9.3f}" if math.isfinite(c) else f"{'n/a':>9}" for c in cells))
    lines.append(f"MASE per step on the same rows; covered: share inside the {coverage:.0%} interval")
    return "\n".join(lines)


def _mean_metrics(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each metric averaged over series (NaN ignored); the only result when there is one series."""
    if len(results) == 1:
        return results[0]
    out: dict[str, dict[str, float]] = {}
    for name in FORECASTERS:
        out[name] = {}
        for m in METRICS:
            vals = np.array([r[name][m] for r in results], dtype=float)
            vals = vals[np.isfinite(vals)]
            out[name][m] = float(vals.mean()) if vals.size else float("nan")
    return out
