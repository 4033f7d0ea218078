"""Per-file NAB account against a reference detector (a dev tool, not a test).

    python scripts/nab_account.py --cache /tmp/nabcache.npz [--category realTraffic] [name=value ...]
    python scripts/nab_account.py --results R [--category realKnownCause]

Replays the scoring stage over a ``tune_nab.py collect`` cache (ScoringConfig overrides as
``name=value``), takes each detector's 40-file optimised standard threshold, and prints per file the
reward of each window (-1 = missed), the false positives and their cost, the total, and the gap to the
reference (default numenta HTM from ``reference-results/``). With ``--results`` it accounts a product-path
results folder (``lstm-stream nab run --out R``) instead of replaying the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tune_nab import _load, nab_files, replay_scores  # noqa: E402

from lstm_stream.config import ScoringConfig  # noqa: E402
from lstm_stream.nab_scoring import PROFILES, FileScores, load_results, load_windows, optimise  # noqa: E402


def account(f: FileScores, threshold: float) -> tuple[list[float], int, float]:
    """Standard-profile reward per window (-1 missed), false-positive count and their cost."""
    _, fp_weight, _ = PROFILES["standard"]
    win, u = f.sweep()
    hit = ~np.isnan(u) & (f.scores >= threshold)
    rewards = []
    for k in range(len(f.windows)):
        rows = np.flatnonzero(hit & (win == k))
        rewards.append(round(float(u[rows[0]]), 2) if rows.size else -1.0)
    fp = hit & (win < 0)
    return rewards, int(fp.sum()), round(fp_weight * float(u[fp].sum()), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/nab-dev")
    ap.add_argument("--cache", default="/tmp/nabcache.npz")
    ap.add_argument("--results", help="a `nab run` results folder to account instead of the cache")
    ap.add_argument("--reference", default="numenta", help="folder under reference-results/")
    ap.add_argument("--category", action="append", help="only these categories (repeatable)")
    ap.add_argument("params", nargs="*", help="name=value (ScoringConfig fields, JSON values)")
    args = ap.parse_args()
    windows = load_windows(Path(args.data) / "combined_windows.json")
    if args.results:
        ours = load_results(args.results, windows)
    else:
        series, windows, timestamps = _load(args)
        cfg = ScoringConfig(**{k: json.loads(v) for k, v in (p.split("=", 1) for p in args.params)})
        ours = nab_files(series, replay_scores(series, cfg), windows, timestamps)
    ref_files = load_results(Path(args.data) / "reference-results" / args.reference, windows)
    ref = {f.key: f for f in ref_files}
    t_ours, t_ref = optimise(ours)[0], optimise(ref_files)[0]
    print(f"thresholds: ours {t_ours:.4f}, {args.reference} {t_ref:.4f}")
    for f in ours:
        if args.category and f.category not in args.category:
            continue
        w, n, c = account(f, t_ours)
        wr, nr, cr = account(ref[f.key], t_ref)
        mine, theirs = sum(w) + c, sum(wr) + cr
        print(
            f"{f.key:50s} ours {w} fp {n} ({c:+.2f}) = {mine:+.2f} | "
            f"{args.reference} {wr} fp {nr} ({cr:+.2f}) = {theirs:+.2f} | gap {mine - theirs:+.2f}"
        )


if __name__ == "__main__":
    main()
