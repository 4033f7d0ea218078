"""Offline commands: ``train``, ``evaluate``, ``export`` and ``replay`` on CSV history.

The seed's walk-through (train an LSTM on a series, compare it with the truth, export it, serve it)
as commands that hold data out honestly: every split is chronological, the test part is never
seen in training, the scaler is the engine's causal one, and the model is evaluated by serving the
series through the real :class:`~lstm_stream.engine.Engine`, sample by sample, exactly as the
daemon would. ``add_offline_commands(subparsers)`` registers them on ``lstm-stream``'s parser;
``python -m daemon.offline`` runs them on their own.

A user error (bad CSV, missing file, bad option) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.csvdata import CsvData, DataError, load_csv, load_csvs, parse_datetime, parse_epoch

EX_USAGE = 2  # user errors: bad CSV, missing file, bad option
EX_FAILURE = 1  # the command ran but failed a check (ONNX mismatch, unacknowledged messages)
EX_INTERRUPTED = 130

FORECASTERS = ("model", "persistence", "ewma", "seasonal_naive")
METRICS = ("mae", "rmse", "r2", "mase", "da", "mda")


class UserError(Exception):
    """Something the user must fix; printed as one line, exit status 2."""


# ------------------------------------------------------------------ small helpers
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _fraction(text: str) -> float:
    v = _positive_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def _unit_interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars plain numbers, paths text."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, allow_nan=False)


def _show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _bar(args: argparse.Namespace, total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=not _show_progress(args), leave=False
    )


def _note(args: argparse.Namespace, text: str) -> None:
    """A remark on stderr (not with --quiet)."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _guard(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; user errors become one line on stderr and exit status 2, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from lstm_stream.checkpoint import CheckpointError

        try:
            return fn(args)
        except (UserError, DataError, CheckpointError) as exc:
            print(f"lstm-stream {name}: {exc}", file=sys.stderr)
            return EX_USAGE
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            print(f"lstm-stream {name}: invalid option ({loc}): {err['msg']}", file=sys.stderr)
            return EX_USAGE
        except BrokenPipeError:  # output piped into head & co.: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EX_FAILURE
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"lstm-stream {name}: {where}{exc.strerror or exc}", file=sys.stderr)
            return EX_USAGE
        except KeyboardInterrupt:
            print(f"lstm-stream {name}: interrupted", file=sys.stderr)
            return EX_INTERRUPTED

    return run


# ------------------------------------------------------------------ CSV options and loading
def _add_csv_options(p: argparse.ArgumentParser, *, several: bool, required: bool, what: str) -> None:
    g = p.add_argument_group("CSV input")
    if several:
        g.add_argument(
            "--csv",
            action="append",
            type=Path,
            metavar="FILE",
            required=required,
            help=f"{what}; repeat for several files (one global model over every series)",
        )
    else:
        g.add_argument("--csv", type=Path, metavar="FILE", required=required, help=what)
    g.add_argument(
        "--time-col",
        metavar="C",
        help="the time column (default: the column named timestamp, time, date, ts, ...); ISO 8601 "
        "text (no offset = UTC) or epoch seconds/ms/us/ns",
    )
    g.add_argument(
        "--value-col",
        action="append",
        metavar="C",
        help="a value column; repeat for several (default: every numeric column)",
    )
    g.add_argument(
        "--missing",
        choices=("error", "drop", "interpolate"),
        default="error",
        help="empty/NaN cells: stop with an error naming the row (default), drop those rows, or "
        "interpolate linearly in time",
    )
    g.add_argument(
        "--duplicates",
        choices=("error", "keep"),
        default="error",
        help="repeated timestamps: error (default) or keep the rows (some NAB files repeat a few)",
    )
    g.add_argument(
        "--unsorted",
        choices=("error", "sort", "keep"),
        default="error",
        help="a timestamp earlier than the row before: error (default), sort the rows by time, or "
        "keep the file's row order (NAB's machine_temperature file needs keep + --duplicates keep)",
    )


def _csv_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "time_col": args.time_col,
        "value_cols": args.value_col,
        "missing": args.missing,
        "duplicates": args.duplicates,
        "unsorted": args.unsorted,
    }


# ------------------------------------------------------------------ metrics
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


def _split_rows(n: int, test_fraction: float) -> int:
    """First row of the test part: the last ``test_fraction`` of ``n`` rows (at least 2 rows)."""
    n_test = max(2, int(round(n * test_fraction)))
    return max(0, n - n_test)


# ------------------------------------------------------------------ train
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a forecaster on CSV history (chronological train/validation/test split)",
        description="Train a model on CSV history and write a checkpoint the daemon can start from "
        "(settings key model_path). Each value column of each file is one series; each series is "
        "split in time: the oldest part trains, the next part validates (learning-rate reduction "
        "and early stopping), the most recent part is the test part, never seen in training. "
        "Values are scaled by the engine's own causal per-stream scaler, so nothing leaks from "
        "later data. Prints the test-part metrics of the model and of persistence.",
    )
    _add_csv_options(p, several=True, required=True, what="CSV file of history to train on")
    p.add_argument(
        "--out", type=Path, required=True, metavar="PATH", help="checkpoint to write (.safetensors)"
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--arch",
        choices=("lstm", "bilstm", "attention"),
        help="lstm: stacked stateful LSTM, one step per sample (default); bilstm / attention: "
        "window-only models that re-run the whole look-back window per sample",
    )
    m.add_argument(
        "--look-back", type=_positive_int, metavar="N", help="window length in samples (default 32)"
    )
    m.add_argument(
        "--hidden", type=_positive_int, metavar="N", help="LSTM units per layer, 8-512 (default 64)"
    )
    m.add_argument("--layers", type=_positive_int, metavar="N", help="stacked LSTM layers, 1-4 (default 2)")
    m.add_argument("--dropout", type=_unit_interval, metavar="F", help="dropout between layers (default 0.1)")
    m.add_argument(
        "--from-pretrained",
        action="store_true",
        help="start from the shipped synthetic-only model (its architecture: lstm, hidden 64, 2 layers) "
        "instead of random weights",
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--epochs", type=_positive_int, default=30, metavar="N", help="maximum epochs (default 30)"
    )
    t.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N", help="sequences per batch (default 32)"
    )
    t.add_argument(
        "--lr", type=_positive_float, default=2e-3, metavar="F", help="Adam learning rate (default 2e-3)"
    )
    t.add_argument(
        "--seq-len",
        type=_positive_int,
        default=64,
        metavar="N",
        help="stateful lstm: training sequence length (truncated BPTT, default 64)",
    )
    t.add_argument(
        "--stride",
        type=_positive_int,
        default=16,
        metavar="N",
        help="step between training sequences (default 16; window models use a quarter of it)",
    )
    t.add_argument(
        "--patience",
        type=_positive_int,
        default=5,
        metavar="N",
        help="stop after N epochs without a better validation loss (default 5)",
    )
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.15,
        metavar="F",
        help="share of each series, just before the test part, used for validation (default 0.15)",
    )
    t.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="most recent share of each series held out for testing (default 0.2)",
    )
    t.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    t.add_argument(
        "--threads", type=_positive_int, metavar="N", help="torch threads (default: torch's choice)"
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--summary", type=Path, metavar="PATH", help="JSON summary to write (default: --out with .json)"
    )
    o.add_argument("--period", type=_positive_int, metavar="N", help="seasonal period (default: detected)")
    o.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    o.add_argument("--quiet", action="store_true", help="no progress bar or remarks on stderr")
    p.set_defaults(func=_guard("train", cmd_train))


def _train_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """(EngineConfig, initial model) from the options; --from-pretrained fixes the architecture."""
    from lstm_stream.config import EngineConfig, ModelConfig, TrainConfig
    from lstm_stream.models import build_model

    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seq_len=args.seq_len,
        stride=args.stride,
        patience=args.patience,
        seed=args.seed,
    )
    if args.from_pretrained:
        from lstm_stream.pretrained import load_pretrained

        loaded = load_pretrained()
        mc = loaded.config.model
        for opt, have in (
            ("arch", mc.arch),
            ("hidden", mc.hidden),
            ("layers", mc.layers),
            ("dropout", mc.dropout),
        ):
            given = getattr(args, opt)
            if given is not None and given != have:
                raise UserError(
                    f"--from-pretrained fixes the architecture ({mc.arch}, hidden {mc.hidden}, "
                    f"{mc.layers} layers, dropout {mc.dropout}): drop --{opt} {given}"
                )
        cfg = loaded.config.model_copy(
            update={"train": train, "look_back": args.look_back or loaded.config.look_back}
        )
        return EngineConfig.model_validate(cfg.model_dump()), loaded.model
    arch = args.arch or "lstm"
    model_kw = {
        k: v
        for k, v in (("hidden", args.hidden), ("layers", args.layers), ("dropout", args.dropout))
        if v is not None
    }
    cfg = EngineConfig(
        model=ModelConfig(arch=arch, **model_kw),
        look_back=args.look_back or 32,
        mode="stateful" if arch == "lstm" else "window",
        train=train,
    )
    return cfg, build_model(cfg.model, seed=args.seed)


def _min_rows(cfg: Any, val_fraction: float, test_fraction: float) -> tuple[int, str]:
    """Rows a series needs so that its training part holds at least one full training sequence."""
    stateful = cfg.model.arch == "lstm"
    seq = cfg.train.seq_len if stateful else cfg.look_back
    train_share = 1.0 - val_fraction - test_fraction
    need = int(math.ceil((seq + 2) / train_share)) + 2
    what = f"--seq-len {seq}" if stateful else f"--look-back {seq}"
    return need, f"a training part of {seq + 2} rows for {what} after the validation and test parts"


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: fit, serve the series through the engine, score the test part, write outputs."""
    if args.val_fraction + args.test_fraction > 0.8:
        raise UserError("--val-fraction + --test-fraction leave less than 20% of the data for training")
    _set_threads(args)
    cfg, model = _train_config(args)
    need, why = _min_rows(cfg, args.val_fraction, args.test_fraction)
    files = load_csvs(args.csv, **_csv_kwargs(args), min_rows=need, min_rows_reason=why)
    for f in files:
        for n in f.notes:
            _note(args, f"{f.path}: {n}")
    series, names = [], []
    for f in files:
        for j, name in enumerate(f.stream_names()):
            series.append(f.values[:, j].copy())
            names.append(name)
    starts = [_split_rows(len(s), args.test_fraction) for s in series]
    val_share = args.val_fraction / (1.0 - args.test_fraction)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"val_fraction": val_share})})

    from lstm_stream.checkpoint import save_model
    from lstm_stream.export import engine_forecasts
    from lstm_stream.training import TrainingDiverged, fit

    bar = _bar(args, cfg.train.epochs, "train", "epoch")
    log_epochs = not _show_progress(args) and not args.quiet

    def progress(info: Any) -> None:
        bar.set_postfix(train=f"{info.train_loss:.4f}", val=f"{info.val_loss:.4f}", lr=f"{info.lr:.2g}")
        bar.update(1)
        if log_epochs:
            print(
                f"epoch {info.epoch}/{info.epochs}: train loss {info.train_loss:.4f}, "
                f"validation loss {info.val_loss:.4f}, lr {info.lr:.2g}, {info.seconds:.1f}s",
                file=sys.stderr,
            )

    try:
        report = fit(model, [s[:a] for s, a in zip(series, starts, strict=True)], cfg, progress)
    except TrainingDiverged as exc:
        raise UserError(f"training diverged ({exc}); try a smaller --lr") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()

    total = sum(len(s) for s in series)
    with _bar(args, total, "test", "sample") as sbar:
        served = engine_forecasts(cfg, model, series, progress=sbar.update)
    per_series: dict[str, dict[str, Any]] = {}
    split_info = []
    for name, s, a, f in zip(names, series, starts, served, strict=True):
        period = _period(s, a, args.period)
        res, first = compare(s, f.forecast, a, period)
        per_series[name] = res
        cut = int(a * (1.0 - val_share))
        split_info.append(
            {
                "series": name,
                "rows": len(s),
                "train": [0, cut],
                "validation": [cut, a],
                "test": [first, len(s)],
            }
        )
        split_info[-1]["period"] = period
    test = _mean_metrics(list(per_series.values()))
    summary = {
        "checkpoint": str(args.out),
        "config": {
            "arch": cfg.model.arch,
            "mode": cfg.mode,
            "look_back": cfg.look_back,
            "hidden": cfg.model.hidden,
            "layers": cfg.model.layers,
            "dropout": cfg.model.dropout,
            "from_pretrained": bool(args.from_pretrained),
            "train": cfg.train.model_dump(mode="json"),
        },
        "data": [_file_info(f) for f in files],
        "split": {
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
            "rows_are": "half-open row ranges [start, end) of each series",
            "series": split_info,
        },
        "fit": {
            "epochs_run": report.epochs_run,
            "best_epoch": report.best_epoch,
            "train_loss": report.train_loss,
            "val_loss": report.val_loss,
            "train_points": report.train_points,
            "val_points": report.val_points,
            "seconds": round(report.seconds, 2),
            "history": [
                {"epoch": h.epoch, "train_loss": h.train_loss, "val_loss": h.val_loss, "lr": h.lr}
                for h in report.history
            ],
        },
        "test": test,
    }
    if len(per_series) > 1:
        summary["test_mean_over"] = len(per_series)
        summary["test_per_series"] = per_series
    info = _clean({k: v for k, v in summary.items() if k != "checkpoint"})
    save_model(args.out, model, cfg, info)
    summary_path = args.summary or args.out.with_suffix(".json")
    summary["summary"] = str(summary_path)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(_dumps(summary) + "\n", encoding="utf-8")
    if args.json:
        print(_dumps(summary))
    else:
        over = f" (mean over {len(per_series)} series)" if len(per_series) > 1 else ""
        print(
            f"trained {cfg.model.arch} ({cfg.model.layers}x{cfg.model.hidden}, {cfg.mode}) on "
            f"{len(series)} series: {report.epochs_run} epochs, best {report.best_epoch}, "
            f"validation loss {report.val_loss:.4f}, {report.seconds:.1f}s"
        )
        print(f"test part{over}: MASE < 1 beats persistence")
        print(_table(test, ("model", "persistence")))
        print(f"checkpoint: {args.out}\nsummary:    {summary_path}")
    return 0


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


def _file_info(f: CsvData) -> dict[str, Any]:
    return {
        "path": str(f.path),
        "key": f.key,
        "time_col": f.time_col,
        "columns": f.columns,
        "rows": len(f),
        "first": f.time_text[0],
        "last": f.time_text[-1],
        "notes": f.notes,
    }


# ------------------------------------------------------------------ evaluate
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint on a CSV against persistence, EWMA and seasonal naive",
        description="Serve a CSV through the engine with a trained checkpoint (stateful or window, "
        "as the checkpoint says), sample by sample as the daemon would, and report MAE, RMSE, R2, "
        "MASE, direction accuracy (DA) and mean directional accuracy (MDA) of the one-step forecast "
        "for the model and for persistence, EWMA (alpha 0.3) and seasonal naive, on the same rows. "
        "MASE is MAE over persistence's MAE on those rows (below 1 beats persistence). By default "
        "only the test part counts (the same most recent share as held out in training); the "
        "engine still warms up on the rows before it.",
    )
    p.add_argument("--model", type=Path, required=True, metavar="PATH", help="checkpoint from train")
    _add_csv_options(p, several=False, required=True, what="CSV file to evaluate on")
    p.add_argument(
        "--whole",
        action="store_true",
        help="score every row (from max(period, 1)), not just the test part; in-sample if this is "
        "the training file",
    )
    p.add_argument(
        "--test-fraction",
        type=_fraction,
        metavar="F",
        help="size of the test part (default: the one recorded in the checkpoint)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="anomaly labels: NAB combined_windows.json (the entry whose key ends with this CSV's "
        "<folder>/<name>.csv), combined_labels.json, or a text file of timestamps (one per line; "
        "'start,end' for a window); adds precision/recall/F1 of the anomaly flags",
    )
    p.add_argument("--plot", type=Path, metavar="PNG", help="draw truth vs forecast, flags and label windows")
    p.add_argument("--period", type=_positive_int, metavar="N", help="seasonal period (default: detected)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="torch threads (default 1, as served)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar or remarks on stderr")
    p.set_defaults(func=_guard("evaluate", cmd_evaluate))


def _load_checkpoint(path: Path) -> Any:
    from lstm_stream.checkpoint import load_model

    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    return load_model(path)


def _one_column(args: argparse.Namespace, data_cols: Sequence[str], path: Path) -> None:
    if len(data_cols) > 1:
        raise UserError(
            f"{path}: {len(data_cols)} value columns ({', '.join(data_cols)}): choose one with --value-col"
        )


def _test_start(args: argparse.Namespace, info: dict[str, Any], n: int) -> tuple[int, str]:
    if args.whole:
        return 0, "whole file"
    tf = args.test_fraction or info.get("split", {}).get("test_fraction")
    if not tf:
        raise UserError(
            "the checkpoint records no train/test split (not made by train): give --test-fraction or --whole"
        )
    return _split_rows(n, tf), f"test part (last {tf:g})"


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: serve, score against baselines, optional labels and plot."""
    if args.value_col and len(args.value_col) > 1:
        raise UserError("evaluate scores one value column: give --value-col once")
    loaded = _load_checkpoint(args.model)
    cfg = loaded.config
    if args.plot is not None:
        _check_writable(args.plot)
    data = load_csv(
        args.csv,
        **_csv_kwargs(args),
        min_rows=cfg.look_back + 3,
        min_rows_reason=f"look-back {cfg.look_back} plus a few rows to score",
    )
    _one_column(args, data.columns, args.csv)
    for note in data.notes:
        _note(args, f"{args.csv}: {note}")
    _set_threads(args)
    y = data.series(0)
    start, part = _test_start(args, loaded.info, len(y))
    if args.whole and _same_file(loaded.info, data):
        _note(args, f"note: {args.csv} is the training file: whole-file figures include in-sample rows")
    period = _period(y, start, args.period)

    from lstm_stream.export import engine_forecasts

    with _bar(args, len(y), "serve", "sample") as bar:
        served = engine_forecasts(cfg, loaded.model, [y], progress=bar.update)[0]
    results, a = compare(y, served.forecast, start, period)
    out: dict[str, Any] = {name: results[name] for name in FORECASTERS}
    flags = None
    windows: list[tuple[int, int]] = []
    if args.labels is not None:
        truth, windows, label_note = load_labels(args.labels, data)
        flags = _flag_report(served.is_anomaly, truth, windows, a)
        flags["labels"] = f"{args.labels} ({label_note})"
        out["flags"] = flags
    meta = {
        "file": str(args.csv),
        "column": data.columns[0],
        "part": part,
        "rows": [a, len(y)],
        "points": len(y) - a,
        "first": data.time_text[a],
        "last": data.time_text[-1],
        "period": period,
        "model": {"arch": cfg.model.arch, "mode": cfg.mode, "path": str(args.model)},
        "mase": "MAE / MAE of persistence on the same rows",
    }
    out["meta"] = meta
    if args.plot is not None:
        plot_evaluation(args.plot, data, served, a, windows, results, f"{data.path.name}: {part}", cfg)
        meta["plot"] = str(args.plot)
    if args.json:
        print(_dumps(out))
        return 0
    print(
        f"{data.path.name} [{data.columns[0]}], {part}: rows {a}-{len(y) - 1} ({len(y) - a} points, "
        f"{data.time_text[a]} .. {data.time_text[-1]}); period {period}; model {cfg.model.arch} "
        f"{cfg.mode}"
    )
    print(_table(results))
    print("MASE = MAE / MAE of persistence on the same rows (below 1 beats persistence)")
    if flags is not None:
        print(_flag_table(flags))
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0


def _same_file(info: dict[str, Any], data: CsvData) -> bool:
    for d in info.get("data", []):
        try:
            if Path(d.get("path", "")).resolve() == data.path.resolve():
                return True
        except OSError:
            continue
    return False


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: folder {parent} does not exist")


def _flag_report(
    is_anomaly: np.ndarray, truth: np.ndarray, windows: list[tuple[int, int]], a: int
) -> dict[str, Any]:
    """Point-wise and event-wise precision/recall/F1 of the flags on rows ``[a, n)``."""
    from lstm_stream.evaluation import event_metrics, flag_metrics

    flags = is_anomaly[a:]
    inside = [(max(s, a) - a, e - a) for s, e in windows if e >= a]
    return {
        "pointwise": flag_metrics(flags, truth[a:]),
        "events": event_metrics(flags, inside),
        "flags": int(flags.sum()),
        "windows_in_part": len(inside),
    }


def _flag_table(f: dict[str, Any]) -> str:
    def cell(v: float) -> str:
        return f"{v:>11.3f}" if isinstance(v, float) and math.isfinite(v) else f"{'n/a':>11}"

    p, e = f["pointwise"], f["events"]
    return "\n".join(
        [
            f"anomaly flags vs labels {f['labels']}: {f['flags']} flag(s), {f['windows_in_part']} label "
            "window(s) in this part",
            f"{'':<16}{'PRECISION':>11}{'RECALL':>11}{'F1':>11}",
            f"{'point-wise':<16}{cell(p['precision'])}{cell(p['recall'])}{cell(p['f1'])}"
            f"   tp {p['tp']}, fp {p['fp']}, fn {p['fn']}",
            f"{'event-wise':<16}{cell(e['precision'])}{cell(e['recall'])}{cell(e['f1'])}"
            f"   {e['detected']}/{e['windows']} windows detected, "
            f"{e['inside']}/{e['flags']} flags inside one",
        ]
    )


def _label_time(text: str) -> float:
    t = text.strip()
    try:
        return parse_epoch(float(t))
    except ValueError:
        return parse_datetime(t)


def load_labels(path: Path, data: CsvData) -> tuple[np.ndarray, list[tuple[int, int]], str]:
    """Labels as a per-row truth mask and row windows (inclusive).

    NAB ``combined_windows.json`` (key -> [[start, end], ...]), ``combined_labels.json`` (key ->
    [timestamp, ...]), a JSON list of either, or a text file with one timestamp (or ``start,end``)
    per line. A window covers the rows whose time lies in it; a point label marks the nearest row.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read labels: {exc}") from None
    entries: list[Any]
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in "[{":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(raw, dict):
            key = _label_key(raw, data)
            if key is None:
                raise UserError(
                    f"{path}: no entry for {data.key} (keys end with <folder>/<name>.csv, e.g. "
                    f"{next(iter(raw), '?')})"
                )
            entries, note = raw[key], f"entry {key}"
        elif isinstance(raw, list):
            entries, note = raw, "list"
        else:
            raise UserError(f"{path}: expected a JSON object or list of labels")
        lines = [0] * len(entries)
    else:
        entries, lines = [], []
        for i, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = [p for p in s.split(",") if p.strip()]
            entries.append(parts if len(parts) == 2 else s)
            lines.append(i)
        note = "timestamps"
    n = len(data)
    truth = np.zeros(n, dtype=bool)
    windows: list[tuple[int, int]] = []
    step = float(np.median(np.abs(np.diff(data.time)))) if n > 1 else 0.0
    for entry, line in zip(entries, lines, strict=True):
        where = f"{path}:{line}" if line else str(path)
        try:
            if isinstance(entry, list | tuple) and len(entry) == 2:
                t0, t1 = _label_time(str(entry[0])), _label_time(str(entry[1]))
                rows = np.flatnonzero((data.time >= t0) & (data.time <= t1))
                if not rows.size:
                    continue  # a window outside this file's time range
                windows.append((int(rows.min()), int(rows.max())))
                truth[rows.min() : rows.max() + 1] = True
            elif isinstance(entry, str | int | float):
                t = _label_time(str(entry))
                i = int(np.argmin(np.abs(data.time - t)))
                if abs(data.time[i] - t) > max(step, 1e-9) * 1.5:
                    raise UserError(f"{where}: label {entry!r} is not near any row of {data.path.name}")
                windows.append((i, i))
                truth[i] = True
            else:
                raise UserError(f"{where}: a label is a timestamp or [start, end], got {entry!r}")
        except ValueError:
            raise UserError(f"{where}: unparsable label timestamp in {entry!r}") from None
    windows.sort()
    return truth, windows, note


def _label_key(raw: dict[str, Any], data: CsvData) -> str | None:
    """The labels entry for this CSV: exact ``<folder>/<name>.csv``, else one ending with its name."""
    if data.key in raw:
        return data.key
    for key in raw:
        if key.endswith("/" + data.key) or key.endswith("/" + data.path.name) or key == data.path.name:
            return key
    return None


def plot_evaluation(
    path: Path,
    data: CsvData,
    served: Any,
    a: int,
    windows: list[tuple[int, int]],
    results: dict[str, dict[str, float]],
    title: str,
    cfg: Any,
) -> None:
    """Truth vs one-step forecast (with a +-2 spread band), flagged anomalies and label windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    y = data.series(0)[a:]
    fc = served.forecast[a:]
    sp = served.spread[a:]
    flags = served.is_anomaly[a:]
    dated = bool(data.time.min() > 1e8)  # epoch numbers before 1973 are counters, not dates
    if dated:
        x = (data.time[a:] * 1e6).astype("datetime64[us]")
    else:
        x = data.time[a:]
    fig, ax = plt.subplots(figsize=(14, 5), dpi=110)
    labelled = False
    for s, e in windows:
        if e < a:
            continue
        lo, hi = x[max(s, a) - a], x[e - a]
        ax.axvspan(
            lo,
            hi,
            color="tab:orange",
            alpha=0.18,
            lw=0,
            label=None if labelled else "labelled anomaly window",
        )
        labelled = True
    band = np.isfinite(sp)
    ax.fill_between(
        x,
        fc - 2 * sp,
        fc + 2 * sp,
        where=band,
        color="tab:blue",
        alpha=0.15,
        lw=0,
        label="forecast ± 2 spread",
    )
    ax.plot(x, y, color="0.15", lw=0.9, label="truth")
    mm = results["model"]
    pm = results["persistence"]
    ax.plot(
        x,
        fc,
        color="tab:blue",
        lw=0.9,
        alpha=0.85,
        label=f"one-step forecast (MAE {mm['mae']:.3g}, MASE {mm['mase']:.3f}; "
        f"persistence MAE {pm['mae']:.3g})",
    )
    if not flags.any():  # say so in the legend: no flag is a result too
        ax.scatter([], [], s=46, facecolors="none", edgecolors="red", label="flagged anomaly (none)")
    else:
        ax.scatter(
            x[flags],
            y[flags],
            s=46,
            facecolors="none",
            edgecolors="red",
            linewidths=1.4,
            zorder=5,
            label=f"flagged anomaly ({int(flags.sum())})",
        )
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(x[0], x[-1])
    if dated:
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("time (UTC)")
    else:
        ax.set_xlabel(f"time ({data.time_col})")
    ax.set_ylabel(data.columns[0])
    ax.set_title(f"{title} — {cfg.model.arch} ({cfg.mode}): truth vs one-step-ahead forecast", fontsize=12)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ export
def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (checked against onnxruntime) and/or quantize it to int8",
        description="--onnx writes the window model (window (batch, steps) -> mean, spread) and, for "
        "the stacked lstm, the single-step stateful model (value (batch,), h, c -> mean, spread, "
        "h_out, c_out); inputs and outputs are in the engine's scaled units (see the graph metadata). "
        "Each graph is run through onnxruntime on random inputs and compared with torch; the "
        "command fails if the max abs difference exceeds --tolerance. --quantize writes an int8 "
        "ONNX graph (onnxruntime dynamic quantization of the LSTM and MatMul weights) of the graph "
        "the engine runs, and reports sizes and test-part MAE before/after, measured by serving the "
        "CSV through the engine; torch's dynamic int8 quantization is measured alongside (in "
        "memory: it can only be saved with pickle, which this project never loads).",
    )
    p.add_argument("--model", type=Path, required=True, metavar="PATH", help="checkpoint from train")
    p.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="window model (every architecture)")
    p.add_argument(
        "--stateful-onnx",
        type=Path,
        metavar="OUT.onnx",
        help="single-step model (lstm only; default with --onnx: OUT_step.onnx beside it)",
    )
    p.add_argument(
        "--quantize", type=Path, metavar="OUT.onnx", help="int8 ONNX graph to write; needs --csv to measure"
    )
    p.add_argument(
        "--tolerance",
        type=_positive_float,
        default=1e-4,
        metavar="F",
        help="max abs difference onnxruntime vs torch accepted (default 1e-4)",
    )
    p.add_argument(
        "--test-fraction",
        type=_fraction,
        metavar="F",
        help="--quantize: size of the test part (default: the one recorded in the checkpoint)",
    )
    _add_csv_options(p, several=False, required=False, what="--quantize: CSV whose test part measures MAE")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bar or remarks on stderr")
    p.set_defaults(func=_guard("export", cmd_export), whole=False)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} kB"


def cmd_export(args: argparse.Namespace) -> int:
    """``export``: ONNX graphs verified against onnxruntime; measured int8 quantization."""
    if not (args.onnx or args.stateful_onnx or args.quantize):
        raise UserError("nothing to do: give --onnx, --stateful-onnx and/or --quantize")
    if args.quantize and args.csv is None:
        raise UserError("--quantize needs --csv: the test MAE before and after is measured on it")
    if args.quantize and args.quantize.suffix.lower() != ".onnx":
        raise UserError(
            f"--quantize {args.quantize}: the int8 model is written as ONNX (a .onnx path); torch's int8 "
            "modules can only be saved with pickle, which this project never loads"
        )
    for out in (args.onnx, args.stateful_onnx, args.quantize):
        if out is not None:
            _check_writable(out)
    loaded = _load_checkpoint(args.model)
    cfg, model = loaded.config, loaded.model
    stateful_arch = bool(getattr(model, "stateful", False))
    step_path = args.stateful_onnx
    if step_path is not None and not stateful_arch:
        raise UserError(
            f"--stateful-onnx: a {cfg.model.arch} model is window-only; it has no single-step form"
        )
    if step_path is None and args.onnx is not None and stateful_arch:
        step_path = args.onnx.with_name(args.onnx.stem + "_step.onnx")

    from lstm_stream.export import export_step_onnx, export_window_onnx, quantize_and_measure

    report: dict[str, Any] = {"model": str(args.model), "tolerance": args.tolerance}
    failed = False
    exports = []
    if args.onnx is not None:
        exports.append(export_window_onnx(model, args.onnx, cfg))
    if step_path is not None:
        exports.append(export_step_onnx(model, step_path, cfg))
    if exports:
        report["onnx"] = [e.as_dict() | {"ok": e.max_abs_diff <= args.tolerance} for e in exports]
        failed = any(e.max_abs_diff > args.tolerance for e in exports)
    if args.quantize is not None:
        data = load_csv(
            args.csv,
            **_csv_kwargs(args),
            min_rows=cfg.look_back + 3,
            min_rows_reason=f"look-back {cfg.look_back} plus a few rows to score",
        )
        _one_column(args, data.columns, args.csv)
        y = data.series(0)
        start, part = _test_start(args, loaded.info, len(y))
        with _bar(args, 3 * len(y), "quantize", "sample") as bar:
            q = quantize_and_measure(model, cfg, args.quantize, [y], [start], progress=bar.update)
        report["quantize"] = q.as_dict() | {"csv": str(args.csv), "part": part}
    if args.json:
        print(_dumps(report))
    else:
        for e in report.get("onnx", []):
            verdict = "ok" if e["ok"] else "FAILED"
            print(
                f"{e['kind']:<6} model -> {e['path']}  {_kb(e['bytes'])}  max |onnxruntime - torch| = "
                f"{e['max_abs_diff']:.3g}  {verdict} (tolerance {args.tolerance:g})"
            )
        if "quantize" in report:
            print(_quant_table(report["quantize"]))
    if failed:
        print("lstm-stream export: an ONNX graph differs from torch beyond the tolerance", file=sys.stderr)
        return EX_FAILURE
    return 0


def _quant_table(q: dict[str, Any]) -> str:
    s, t = q["stored"], q["torch_dynamic"]

    def row(name: str, d: dict[str, Any]) -> str:
        return (
            f"{name:<34}{_kb(d['bytes_before']):>11}{_kb(d['bytes_after']):>11}{d['size_ratio']:>8.2f}"
            f"{d['test_mae']:>12.5g}{100 * d['mae_rel_change']:>+9.2f}%"
        )

    return "\n".join(
        [
            f"int8 dynamic quantization, test MAE on {q['csv']} ({q['part']}, {q['test_points']} points); "
            f"float model MAE {q['test_mae_float']:.5g}",
            f"{'':<34}{'BEFORE':>11}{'AFTER':>11}{'RATIO':>8}{'TEST MAE':>12}{'CHANGE':>10}",
            row("onnxruntime int8 (written)", s),
            row("torch int8 (in memory only)", t),
            f"written: {s['path']} ({s['format']})",
        ]
    )


# ------------------------------------------------------------------ replay
def _add_replay(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="publish a CSV to MQTT in the payload format the daemon reads",
        description="Publish the rows of a CSV, in order, to an MQTT broker: the way to feed the "
        'daemon history for demos and tests. JSON payloads {"value": v, "ts": epoch_seconds} by '
        "default, so the daemon uses the file's timestamps; --format plain sends bare numbers "
        "(the daemon then stamps them on arrival). With QoS 1 the command waits until the broker "
        "has acknowledged every message. The daemon drops a JSON sample whose timestamp is not after its "
        "stream's last one (a file kept unsorted, or with repeated timestamps): use --format plain there.",
    )
    _add_csv_options(p, several=False, required=True, what="CSV file to publish")
    dest = p.add_argument_group("destination").add_mutually_exclusive_group(required=True)
    dest.add_argument(
        "--topic",
        metavar="T",
        help="one topic for every row; with several value columns the JSON payload holds one field "
        "per column (the daemon makes a stream <topic>/<column> of each)",
    )
    dest.add_argument(
        "--topic-per-column", metavar="PREFIX", help="one topic per value column: PREFIX/<column>"
    )
    b = p.add_argument_group("broker")
    b.add_argument("--host", default="localhost", metavar="H", help="MQTT broker host (default localhost)")
    b.add_argument(
        "--port", type=_positive_int, default=1883, metavar="N", help="MQTT broker port (default 1883)"
    )
    b.add_argument("--username", metavar="NAME", help="MQTT user name")
    b.add_argument("--password-file", type=Path, metavar="FILE", help="file holding the MQTT password")
    b.add_argument("--client-id", metavar="ID", help="MQTT client id (default lstm-stream-replay-<pid>)")
    b.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of the messages (default 1)")
    b.add_argument("--retain", action="store_true", help="publish with the retain flag")
    b.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds to wait for connect/acks (30)",
    )
    pace = p.add_argument_group("pace").add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=_positive_float,
        metavar="MSGS_PER_S",
        help="fixed message rate (default, without --speedup: as fast as the broker takes them)",
    )
    pace.add_argument(
        "--speedup",
        type=_positive_float,
        metavar="X",
        help="follow the file's own timestamps X times faster (e.g. 300: 5-minute rows every second)",
    )
    p.add_argument(
        "--format", choices=("json", "plain"), default="json", help="payload format (default json)"
    )
    p.add_argument("--limit", type=_positive_int, metavar="N", help="publish only the first N rows")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_guard("replay", cmd_replay))


def _number(v: float) -> str:
    return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(float(v))


def replay_messages(data: CsvData, args: argparse.Namespace) -> list[tuple[float, str, bytes]]:
    """(row time, topic, payload) of every message, in publishing order."""
    cols = data.columns
    if args.topic_per_column is not None:
        prefix = args.topic_per_column.rstrip("/")
        topics = [f"{prefix}/{c}" for c in cols]
    else:
        topics = [args.topic]
        if len(cols) > 1:
            if args.format == "plain":
                raise UserError(
                    f"{data.path}: {len(cols)} value columns do not fit one plain payload: use "
                    "--topic-per-column, --format json or one --value-col"
                )
            clash = [c for c in cols if c in ("value", "ts")]
            if clash:
                raise UserError(
                    f"column {clash[0]!r} collides with the daemon's payload keys: use --topic-per-column"
                )
    for t in topics:
        if not t or "+" in t or "#" in t or "\0" in t:
            raise UserError(f"{t!r}: a publish topic must be non-empty, without '+' or '#'")
    n = len(data) if args.limit is None else min(args.limit, len(data))
    msgs: list[tuple[float, str, bytes]] = []
    for i in range(n):
        ts = float(data.time[i])
        row = data.values[i]
        if args.topic_per_column is not None:
            for t, v in zip(topics, row, strict=True):
                msgs.append((ts, t, _payload(args.format, float(v), ts)))
        elif len(cols) == 1:
            msgs.append((ts, topics[0], _payload(args.format, float(row[0]), ts)))
        else:
            body = ", ".join(f"{json.dumps(c)}: {_number(float(v))}" for c, v in zip(cols, row, strict=True))
            msgs.append((ts, topics[0], f'{{{body}, "ts": {ts!r}}}'.encode()))
    return msgs


def _payload(fmt: str, v: float, ts: float) -> bytes:
    if fmt == "plain":
        return _number(v).encode()
    return f'{{"value": {_number(v)}, "ts": {ts!r}}}'.encode()


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay``: publish rows in order, paced, and wait for every acknowledgement."""
    import paho.mqtt.client as mqtt

    data = load_csv(args.csv, **_csv_kwargs(args), min_rows=1)
    for note in data.notes:
        _note(args, f"{args.csv}: {note}")
    msgs = replay_messages(data, args)
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"{args.password_file}: cannot read the password: {exc.strerror}") from None
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id or f"lstm-stream-replay-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    if args.username:
        client.username_pw_set(args.username, password)
    connected = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        result["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(args.host, args.port, keepalive=60)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot connect to mqtt://{args.host}:{args.port}: {exc}") from None
    client.loop_start()
    sent = 0
    t_start = time.monotonic()
    try:
        if not connected.wait(args.timeout):
            raise UserError(f"mqtt://{args.host}:{args.port}: no answer to CONNECT in {args.timeout:g}s")
        reason = result["reason"]
        if getattr(reason, "is_failure", False):
            raise UserError(f"mqtt://{args.host}:{args.port} refused the connection: {reason}")
        infos = []
        t0_row = msgs[0][0] if msgs else 0.0
        with _bar(args, len(msgs), "replay", "msg") as bar:
            for k, (ts, topic, payload) in enumerate(msgs):
                if args.rate:
                    due = t_start + k / args.rate
                elif args.speedup:
                    due = t_start + max(0.0, ts - t0_row) / args.speedup
                else:
                    due = 0.0
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                info = client.publish(topic, payload, qos=args.qos, retain=args.retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                    raise UserError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
                infos.append(info)
                sent += 1
                bar.update(1)
        deadline = time.monotonic() + args.timeout
        for info in infos:
            left = deadline - time.monotonic()
            if left <= 0 or not _wait_published(info, left):
                break
        acked = sum(1 for i in infos if i.is_published())
    finally:
        client.disconnect()
        client.loop_stop()
    seconds = time.monotonic() - t_start
    topics = sorted({t for _, t, _ in msgs})
    summary = {
        "messages": sent,
        "completed": acked,
        "rows": min(len(data), args.limit or len(data)),
        "topics": topics,
        "qos": args.qos,
        "format": args.format,
        "seconds": round(seconds, 3),
        "rate": round(sent / seconds, 1) if seconds > 0 else None,
    }
    if args.json:
        print(_dumps(summary))
    else:
        where = topics[0] if len(topics) == 1 else f"{len(topics)} topics"
        word = "acknowledged" if args.qos else "written"
        print(
            f"replay: {sent} {args.format} messages ({summary['rows']} rows) to {where} on "
            f"{args.host}:{args.port} in {seconds:.2f}s ({summary['rate']} msg/s), qos {args.qos}, "
            f"{acked}/{sent} {word}"
        )
    if acked < sent:
        print(
            f"lstm-stream replay: {sent - acked} message(s) not {'acknowledged' if args.qos else 'sent'} "
            f"within {args.timeout:g}s",
            file=sys.stderr,
        )
        return EX_FAILURE
    return 0


def _wait_published(info: Any, timeout: float) -> bool:
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):
        return False
    return info.is_published()


# ------------------------------------------------------------------ registration
def add_offline_commands(subparsers: Any) -> None:
    """Register train, evaluate, export and replay on ``lstm-stream``'s subparsers."""
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_export(subparsers)
    _add_replay(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the offline commands (``python -m daemon.offline``)."""
    p = argparse.ArgumentParser(prog="lstm-stream", description=__doc__)
    add_offline_commands(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one offline command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
