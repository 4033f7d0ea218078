"""``evaluate --online``: a CSV replayed through the daemon's whole loop, with and without fine-tuning.

One stream, one row at a time, through a fresh engine serving the given model; after every row the
service's own :class:`~daemon.service.tuning.Tuning` runs with the data's timestamps as its clock
(the fine-tuning schedule in the stream's own time), its :class:`~daemon.service.finetuner.Finetuner`
in ``inline`` mode (the job runs to the end before the next row, so a replay is deterministic), and
an accepted candidate is swapped in by the engine as in the daemon. The same replay with fine-tuning
off is the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.service import tuning as tuning_module
from daemon.service.finetuner import Finetuner
from daemon.service.tuning import Tuning
from daemon.settings import FinetuneSettings
from lstm_stream.config import EngineConfig
from lstm_stream.csvdata import load_csv
from lstm_stream.engine import Engine
from lstm_stream.models import Forecaster

from .common import (
    UserError,
    _bar,
    _check_writable,
    _csv_kwargs,
    _dumps,
    _load_checkpoint,
    _note,
    _one_column,
    _set_threads,
)
from .plot import plot_evaluation
from .scoring import FORECASTERS, _horizon_table, _period, _table, compare

STREAM = "csv"


@dataclass
class Tally:
    """Fine-tune outcomes of one replay (Tuning reports to it as it reports to the service's metrics)."""

    outcomes: list[str] = field(default_factory=list)
    swaps: int = 0

    def observe_finetune(self, outcome: str, seconds: float, candidate_loss: float, live_loss: float) -> None:
        """One finished run."""
        self.outcomes.append(outcome)

    def set_model(self, version: int, swapped_at: float | None = None, *, swapped: bool = True) -> None:
        """A candidate was swapped in."""
        self.swaps += 1


@dataclass
class Replay:
    """What one replay served, row by row (NaN where nothing was forecast), and the fine-tune tally."""

    forecast: np.ndarray
    tally: Tally
    served: np.ndarray  # index into selection.NAMES of the forecaster that made each forecast
    spread: np.ndarray
    is_anomaly: np.ndarray
    path: np.ndarray | None  # (rows, H): the path made after each row; None when the horizon is off
    lower: np.ndarray | None
    upper: np.ndarray | None


def replay(
    y: np.ndarray,
    clock: np.ndarray,
    cfg: EngineConfig,
    model: Forecaster,
    finetune: FinetuneSettings,
    workdir: Path,
    progress=None,
) -> Replay:
    """Serve ``y`` row by row (``clock``: each row's time in seconds) as the daemon would."""
    import copy

    engine = Engine(cfg, copy.deepcopy(model))
    tally = Tally()
    tuning = Tuning(finetune, Finetuner(workdir, mode="inline"), engine, tally)
    clock = np.maximum.accumulate(np.nan_to_num(np.asarray(clock, dtype=np.float64), nan=-np.inf))
    forecast, spread = np.full(len(y), np.nan), np.full(len(y), np.nan)
    served = np.zeros(len(y), dtype=np.uint8)
    flags = np.zeros(len(y), dtype=bool)
    h = cfg.horizon
    path, lower, upper = (np.full((len(y), h), np.nan) for _ in range(3)) if h > 1 else (None, None, None)
    name = [STREAM]
    for i in range(len(y)):
        now = float(clock[i]) if math.isfinite(clock[i]) else 0.0
        if i == 0:
            tuning.schedule(now)
        r = engine.process(name, (float(i),), y[i : i + 1], now=now, paths=path is not None)
        forecast[i], spread[i], flags[i] = r.forecast[0], r.spread[0], r.is_anomaly[0]
        served[i] = r.served[0] if len(r.served) else 0
        if path is not None and r.path.shape[1] == h:
            path[i], lower[i], upper[i] = r.path[0], r.lower[0], r.upper[0]
        tuning.count(int(r.accepted.sum()))
        tuning.step(now)
        if progress is not None and i % 256 == 255:
            progress(256)
    return Replay(forecast, tally, served, spread, flags, path, lower, upper)


def finetune_summary(with_ft: Replay, without: Replay, mae_with: float, mae_without: float) -> dict:
    """The ``finetune`` block of the report: runs, swaps, and the served MAE with and without."""
    change = (mae_with - mae_without) / mae_without if mae_without > 0 else math.nan
    return {
        "attempts": len(with_ft.tally.outcomes),
        "swaps": with_ft.tally.swaps,
        "outcomes": {o: with_ft.tally.outcomes.count(o) for o in sorted(set(with_ft.tally.outcomes))},
        "mae_with": mae_with,
        "mae_without": mae_without,
        "change": change,
    }


def engine_setup(args: argparse.Namespace) -> tuple[EngineConfig, Forecaster, FinetuneSettings, str]:
    """The engine configuration, model and fine-tuning settings a replay runs with, and the model's path.

    The daemon's defaults (or ``--config``'s ``[engine]`` and ``[finetune]``), with the checkpoint's
    ``model`` and ``scaling`` sections (the weights depend on them)."""
    from daemon.settings import ConfigError, load_settings
    from lstm_stream.pretrained import PRETRAINED_PATH

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    path = args.model or PRETRAINED_PATH
    loaded = _load_checkpoint(Path(path))
    cfg = settings.engine.model_copy(
        update={"model": loaded.config.model, "scaling": loaded.config.scaling, "max_streams": 1}
    )
    if cfg.history_len < cfg.train.seq_len + 1 and settings.finetune.enabled:
        _note(args, f"note: engine.history_len {cfg.history_len} is too short to fine-tune on")
    return cfg, loaded.model, settings.finetune, str(path)


def cmd_online(args: argparse.Namespace) -> int:
    """``evaluate --online``: two replays (fine-tuning on, off), scored on the same rows."""
    import tempfile

    for flag in ("labels", "test_fraction"):
        if getattr(args, flag, None) is not None:
            raise UserError(f"--{flag.replace('_', '-')} is not supported with --online (yet)")
    if args.plot is not None:
        _check_writable(args.plot)
    cfg, model, ft, path = engine_setup(args)
    data = load_csv(args.csv, **_csv_kwargs(args), min_rows=cfg.look_back + 3, min_rows_reason="look-back")
    _one_column(args, data.columns, args.csv)
    for note in data.notes:
        _note(args, f"{args.csv}: {note}")
    _set_threads(args)
    y = data.series(0)
    period = _period(y, 0, args.period)
    runs = {}
    # the service warns on each rejected fine-tune; here every outcome is counted in the report instead
    tuning_log = tuning_module.log
    level = tuning_log.level
    tuning_log.setLevel(logging.ERROR)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lstm-stream-online-") as tmp:
        stack.callback(tuning_log.setLevel, level)
        for label, on in (("with", True), ("without", False)):
            settings = ft.model_copy(update={"enabled": on and ft.enabled})
            with _bar(args, len(y), f"replay ({label} fine-tuning)", "row") as bar:
                runs[label] = replay(y, data.time, cfg, model, settings, Path(tmp), bar.update)
    results, a = compare(y, runs["with"].forecast, 0, period)
    without, _ = compare(y, runs["without"].forecast, 0, period)
    out: dict[str, Any] = {name: results[name] for name in FORECASTERS}
    out["without_finetune"] = {"model": without["model"]}
    out["finetune"] = finetune_summary(
        runs["with"], runs["without"], results["model"]["mae"], without["model"]["mae"]
    )
    out["finetune"]["settings"] = {"interval_s": ft.interval_s, "min_new_samples": ft.min_new_samples}
    served = runs["with"]
    if served.path is not None:
        from lstm_stream.evaluation import horizon_metrics

        out["horizons"] = horizon_metrics(y, served.path, served.lower, served.upper, a, period)
    out["meta"] = {
        "file": str(args.csv),
        "column": data.columns[0],
        "part": "whole file, online",
        "rows": [a, len(y)],
        "points": len(y) - a,
        "first": data.time_text[a],
        "last": data.time_text[-1],
        "period": period,
        "model": {"arch": cfg.model.arch, "mode": cfg.mode, "path": path},
        "mase": "MAE / MAE of persistence on the same rows",
    }
    if args.plot is not None:
        first = a if args.plot_rows is None else max(a, len(y) - args.plot_rows)
        title = f"{data.path.name}: online, fine-tuning on"
        plot_evaluation(args.plot, data, served, first, [], results, title, cfg)
        out["meta"]["plot"] = str(args.plot)
    if args.json:
        print(_dumps(out))
        return 0
    f = out["finetune"]
    print(
        f"{data.path.name} [{data.columns[0]}], whole file online: rows {a}-{len(y) - 1}; period {period}; "
        f"fine-tunes {f['attempts']} ({f['swaps']} swapped in)"
    )
    print(_table(results))
    print(_table({"model, no fine-tuning": without["model"]}, ["model, no fine-tuning"]))
    if "horizons" in out:
        print(_horizon_table(out["horizons"], cfg.interval))
    print(
        f"served MAE: with fine-tuning {f['mae_with']:.6g}, without "
        f"{f['mae_without']:.6g} ({f['change']:+.1%})"
    )
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0
