"""``evaluate``: serve a CSV through the engine with a checkpoint and score it against baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lstm_stream.csvdata import CsvData, load_csv

from .common import (
    UserError,
    _add_csv_options,
    _bar,
    _check_writable,
    _csv_kwargs,
    _dumps,
    _fraction,
    _guard,
    _load_checkpoint,
    _note,
    _one_column,
    _positive_int,
    _set_threads,
    _test_start,
)
from .labels import _flag_report, _flag_table, load_labels
from .plot import plot_evaluation
from .scoring import FORECASTERS, _horizon_table, _period, _table, compare


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
    p.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="checkpoint from train (required, except with --online: default the shipped model)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="replay the CSV through the daemon's whole loop (fresh engine, the service's fine-tuning "
        "schedule, validation and swap on the data's own clock, the fine-tune run inline) and report "
        "the errors with fine-tuning (as the daemon runs) and without it; implies --whole",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="with --online: daemon config whose [engine] (but its model) and [finetune] sections are used",
    )
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
    p.add_argument("--plot-rows", type=_positive_int, metavar="N", help="draw only the last N rows")
    p.add_argument("--period", type=_positive_int, metavar="N", help="seasonal period (default: detected)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="torch threads (default 1, as served)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar or remarks on stderr")
    p.set_defaults(func=_guard("evaluate", cmd_evaluate))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: serve, score against baselines, optional labels and plot."""
    if args.value_col and len(args.value_col) > 1:
        raise UserError("evaluate scores one value column: give --value-col once")
    if args.online:
        from .online import cmd_online

        return cmd_online(args)
    if args.model is None:
        raise UserError("evaluate needs --model (only --online defaults to the shipped model)")
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
    if served.path is not None:
        from lstm_stream.evaluation import horizon_metrics

        out["horizons"] = horizon_metrics(y, served.path, served.lower, served.upper, a, period)
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
        "horizon": cfg.horizon or 0,
        "interval": cfg.interval,
    }
    out["meta"] = meta
    if args.plot is not None:
        first = a if args.plot_rows is None else max(a, len(y) - args.plot_rows)
        plot_evaluation(args.plot, data, served, first, windows, results, f"{data.path.name}: {part}", cfg)
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
    if "horizons" in out:
        print(_horizon_table(out["horizons"], cfg.interval))
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
