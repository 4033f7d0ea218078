"""``export``: ONNX graphs checked against onnxruntime, and measured int8 quantization."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lstm_stream.config import MAX_MAE_INCREASE
from lstm_stream.csvdata import load_csv

from .common import (
    EX_FAILURE,
    UserError,
    _add_csv_options,
    _bar,
    _check_writable,
    _csv_kwargs,
    _dumps,
    _fraction,
    _guard,
    _load_checkpoint,
    _one_column,
    _positive_float,
    _test_start,
)


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
        "the engine runs, with 7-bit weights so that CPUs without VNNI (AVX2 only) compute it "
        "without saturation, and reports sizes and test-part MAE before/after, measured by serving "
        "the CSV through the engine; the graph is written only if its test MAE grows by at most "
        "--max-mae-increase, and the command fails otherwise. torch's dynamic int8 quantization is "
        "measured alongside (in memory: it can only be saved with pickle, which this project never "
        "loads).",
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
        "--max-mae-increase",
        type=_positive_float,
        default=MAX_MAE_INCREASE,
        metavar="F",
        help="--quantize: refuse (write nothing, exit 1) an int8 graph whose test MAE grows by more "
        f"than this fraction of the float model's (default {MAX_MAE_INCREASE:g})",
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

    from lstm_stream.export import (
        QuantizationRejected,
        export_step_onnx,
        export_window_onnx,
        quantize_and_measure,
    )

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
            try:
                q = quantize_and_measure(
                    model, cfg, args.quantize, [y], [start], bar.update, args.max_mae_increase
                )
            except QuantizationRejected as rejected:
                q = rejected.args[0]
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
    stored = report.get("quantize", {}).get("stored")
    if stored is not None and not stored["accepted"]:
        print(
            f"lstm-stream export: refused to write {args.quantize}: the int8 graph's test MAE "
            f"{stored['test_mae']:.5g} is {100 * stored['mae_rel_change']:+.1f}% against the float model's "
            f"{report['quantize']['test_mae_float']:.5g}, beyond --max-mae-increase "
            f"{args.max_mae_increase:g}; keep serving the float model",
            file=sys.stderr,
        )
        failed = True
    return EX_FAILURE if failed else 0


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
            row("onnxruntime int8 (stored graph)", s),
            row("torch int8 (in memory only)", t),
            f"written: {s['path']} ({s['format']})"
            if s["accepted"]
            else f"not written: test MAE beyond the bound (+{100 * s['max_mae_increase']:g}%)",
        ]
    )
