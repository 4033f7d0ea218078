"""``lstm-stream nab run`` and ``lstm-stream nab score``: the Numenta Anomaly Benchmark."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from daemon.settings import ConfigError, load_settings


def _cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lstm_stream import nab

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 78
    data = Path(args.data)
    if not data.is_dir():
        print(f"nab run: {data}: no such folder", file=sys.stderr)
        return 2
    keys = nab.find_files(data)
    if not keys:
        print(f"nab run: {data}: no <category>/<file>.csv files", file=sys.stderr)
        return 2
    rows = sum(sum(1 for _ in open(data / k, "rb")) - 1 for k in keys)
    ft = settings.finetune
    bar = tqdm(total=rows, unit="row", desc="nab run", disable=args.quiet, file=sys.stderr)
    t0 = time.perf_counter()
    summaries = nab.run(
        data,
        args.out,
        settings.engine,
        args.windows,
        args.workers,
        args.detector,
        finetune_every_s=ft.interval_s if ft.enabled else None,
        finetune_min_new=ft.min_new_samples,
        on_done=lambda s: bar.update(s["rows"]),
    )
    bar.close()
    out = {
        "files": len(summaries),
        "rows": sum(s["rows"] for s in summaries),
        "seconds": round(time.perf_counter() - t0, 1),
        "flags": sum(s["flags"] for s in summaries),
        "finetunes": sum(s["finetunes"] for s in summaries),
        "finetunes_accepted": sum(s["accepted"] for s in summaries),
        "out": str(args.out),
    }
    print(json.dumps(out) if args.json else "  ".join(f"{k} {v}" for k, v in out.items()))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from lstm_stream import nab_scoring as ns

    try:
        windows = ns.load_windows(args.windows)
        files = ns.load_results(Path(args.results), windows, args.detector)
    except (OSError, ValueError) as exc:
        print(f"nab score: {exc}", file=sys.stderr)
        return 2
    threshold = args.threshold
    if threshold is None:
        threshold = load_settings(args.config).engine.scoring.threshold
    result = ns.score_corpus(files, threshold)
    if args.by_category:
        result["by_category"] = ns.score_by_category(files, {p: r["threshold"] for p, r in result.items()})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'profile':22s} {'optimized':>10s} {'threshold':>10s} {'fixed@' + format(threshold, 'g'):>12s}")
    for profile in ns.PROFILES:
        r = result[profile]
        print(f"{profile:22s} {r['optimized']:10.2f} {r['threshold']:10.4f} {r['fixed']:12.2f}")
    for cat, scores in result.get("by_category", {}).items():
        cells = "  ".join("-" if v is None else f"{v:.2f}" for v in scores.values())
        print(f"  {cat:30s} {cells}")
    return 0


def add_nab_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``nab run`` and ``nab score`` on the main parser's subcommands."""
    nabp = sub.add_parser("nab", help="the Numenta Anomaly Benchmark: run the detector, score results")
    nsub = nabp.add_subparsers(dest="nab_command", required=True)
    run = nsub.add_parser("run", help="every CSV of a NAB-format folder through a fresh engine, row by row")
    run.add_argument("--data", required=True, help="NAB-format folder: <category>/<file>.csv")
    run.add_argument("--out", required=True, help="results folder: <category>/<detector>_<file>.csv")
    run.add_argument("--windows", help="combined_windows.json for the label column (default: in --data)")
    run.add_argument("--config", help="daemon TOML whose [engine] and [finetune] sections are used")
    run.add_argument("--workers", type=int, help="parallel files (default: the number of cores)")
    run.add_argument("--detector", default="lstmstream", help="detector name in result file names")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)
    score = nsub.add_parser("score", help="NAB scores (three profiles, optimised and fixed threshold)")
    score.add_argument("--results", required=True, help="results folder written by nab run (or NAB's)")
    score.add_argument("--windows", required=True, help="combined_windows.json")
    score.add_argument("--detector", help="detector name prefix of the files (detected when omitted)")
    score.add_argument("--threshold", type=float, help="fixed threshold (default: engine.scoring.threshold)")
    score.add_argument("--config", help="daemon TOML for the default threshold")
    score.add_argument("--by-category", action="store_true", help="also per category (own windows)")
    score.add_argument("--json", action="store_true", help="{profile: {optimized, threshold, fixed}}")
    score.set_defaults(func=_cmd_score)
