"""``evaluate --online``: the daemon's loop (Tuning, Finetuner, swap) replayed on a CSV's own clock.

A small synthetic drift: the online scaler lags behind a steady trend, so the shipped model (trained
on synthetic series without one) forecasts about persistence; fine-tuning on the stream's buffered
history learns the drift. Fails when fine-tuning does nothing (or is not run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.commands.offline import main
from lstm_stream.training import history_is_fresh


def drift_csv(path: Path, n: int = 1200, seed: int = 0) -> Path:
    """A level rising 0.5 a row under unit noise, one row every 5 minutes."""
    rng = np.random.default_rng(seed)
    y = 100 + 0.5 * np.arange(n) + rng.normal(0, 1.0, n)
    start = np.datetime64("2024-01-01T00:00:00")
    rows = [f"{start + np.timedelta64(5 * i, 'm')},{v:.4f}" for i, v in enumerate(y)]
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_evaluate_online_reports_both_runs_and_finetuning_pays_on_a_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, png = drift_csv(tmp_path / "drift.csv"), tmp_path / "online.png"
    # the per-stream correction off: it corrects a drift too, in both runs (with it, fine-tuning's own
    # gain here is about 1 %: docs/tuning.md)
    config = tmp_path / "config.toml"
    config.write_text("[engine.adaptation]\nenabled = false\n")
    args = ["evaluate", "--online", "--csv", str(csv), "--config", str(config), "--json", "--quiet"]
    assert main([*args, "--plot", str(png), "--plot-rows", "300"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["meta"]["plot"] == str(png)
    h = res["horizons"]["12"]  # the paths as served online, with the interval's coverage
    assert h["rows"] > 1000 and 0 < h["coverage"] <= 1 and h["model"]["mae"] > 0
    for name in ("model", "persistence", "ewma", "seasonal_naive"):
        assert {"mae", "rmse", "mase"} <= set(res[name])
    assert {"mae", "rmse", "mase"} <= set(res["without_finetune"]["model"])
    ft = res["finetune"]
    # the schedule on the data's clock: hourly, once ~20 % of the 512-sample history is new
    assert 8 <= ft["attempts"] <= 14 and ft["swaps"] >= 1
    assert ft["mae_with"] == pytest.approx(res["model"]["mae"])
    assert ft["mae_without"] == pytest.approx(res["without_finetune"]["model"]["mae"])
    assert ft["mae_with"] < 0.9 * ft["mae_without"]  # fine-tuning pays by more than 10 %
    assert ft["change"] == pytest.approx(ft["mae_with"] / ft["mae_without"] - 1)


def test_a_run_waits_until_the_held_out_share_is_new() -> None:
    from lstm_stream.config import TrainConfig

    history = [(np.zeros(500), np.zeros(500), np.zeros(500, bool))] * 2  # 1000 points buffered
    cfg = TrainConfig(val_fraction=0.2)
    assert not history_is_fresh(199, history, cfg)
    assert history_is_fresh(200, history, cfg)
    assert not history_is_fresh(10**6, [], cfg)  # nothing long enough to train on
