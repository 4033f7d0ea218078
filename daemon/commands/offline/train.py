"""``train``: fit a model on CSV history, score its test part, write checkpoint and summary."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from lstm_stream.csvdata import CsvData, load_csvs

from .common import (
    UserError,
    _add_csv_options,
    _bar,
    _clean,
    _csv_kwargs,
    _dumps,
    _fraction,
    _guard,
    _note,
    _positive_float,
    _positive_int,
    _set_threads,
    _show_progress,
    _split_rows,
    _unit_interval,
)
from .scoring import _mean_metrics, _period, _table, compare


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
