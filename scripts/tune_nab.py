"""Tuning harness for the scoring defaults on the NAB development subset (a dev tool, not a test).

    python scripts/tune_nab.py collect --data ../shared/data/nab-dev --cache /tmp/nabcache.npz
    python scripts/tune_nab.py sweep --cache /tmp/nabcache.npz threshold=0.4,0.5 short_window=3,5
    python scripts/tune_nab.py loco --cache /tmp/nabcache.npz short_window=3,5 suppress=50,100

``collect`` runs every file once through the shipped model (no fine-tuning) and keeps each row's
value, forecast and spread, and the seasonal-naive forecast and spread the scorer sees; these do
not depend on the scoring parameters, so ``sweep`` replays only the scoring stage (all files in
lockstep, vectorised) for every combination and prints NAB's three profiles (optimised threshold)
and the standard score at the configured threshold.

``loco`` guards against fitting the development files (issue 11): for each category that has
anomaly windows, it picks the best combination (and the threshold) on the other categories alone and
scores that choice on the left-out one; the mean of those left-out scores is what a change must
improve, not just the 40-file score. artificialNoAnomaly has no windows (its normalised score is
undefined), so it is never left out and always counts among the files a choice is made on.
The numbers to report come from ``lstm-stream nab run`` + ``nab score``; this only ranks settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lstm_stream import scoring
from lstm_stream.config import ScoringConfig
from lstm_stream.nab import find_files, read_nab_csv
from lstm_stream.nab_scoring import (
    PROFILES,
    FileScores,
    load_windows,
    map_windows,
    normalised,
    optimise,
    probation_length,
    score_at,
    score_by_category,
    score_corpus,
)
from lstm_stream.state import SlotArrays


def _collect_one(data: str, key: str, engine_json: str = "{}") -> tuple[str, np.ndarray]:
    """Run one file through the shipped model row by row (no fine-tuning), as ``detect_file`` does;
    per row: value, forecast, spread, and the seasonal-naive forecast and spread the scorer saw."""
    import torch

    from lstm_stream import seasonal
    from lstm_stream.config import EngineConfig
    from lstm_stream.pretrained import pretrained_engine

    torch.set_num_threads(1)
    nab = read_nab_csv(Path(data) / key, key)
    engine = pretrained_engine(EngineConfig.model_validate(json.loads(engine_json)))
    n = len(nab.values)
    out = np.full((6, n), np.nan)
    out[0] = nab.values
    for i in range(n):
        slot = engine.table.lookup([key])
        if i and slot[0] >= 0:
            naive = seasonal.expected(engine.arrays, slot, engine.config.seasonal)
            if naive is not None:
                out[3, i], out[4, i] = naive[0][0], naive[1][0]
            out[5, i] = engine.arrays["se_period"][slot[0]]  # the period the scorer sees (0: none)
        r = engine.process([key], (float(i),), nab.values[i : i + 1], now=float(nab.clock[i]), paths=False)
        out[1, i], out[2, i] = r.forecast[0], r.spread[0]
    return key, out


def collect(args: argparse.Namespace) -> None:
    keys = find_files(Path(args.data))
    out = {}
    t0 = time.time()
    with ProcessPoolExecutor(2) as pool:
        for key, rows in pool.map(_collect_one, [args.data] * len(keys), keys, [args.engine] * len(keys)):
            out[key] = rows
            print(f"{key} {time.time() - t0:.0f}s", file=sys.stderr)
    np.savez(args.cache, **{k.replace("/", "|"): v for k, v in out.items()})


def replay_scores(series: dict[str, np.ndarray], cfg: ScoringConfig) -> dict[str, dict[str, np.ndarray]]:
    """The engine's scoring stage over cached (value, forecast, spread), all files in lockstep."""
    keys = list(series)
    n = max(v.shape[1] for v in series.values())
    k = len(keys)
    cols = SlotArrays(scoring.COLUMNS, k).data
    lengths = np.array([series[key].shape[1] for key in keys])
    rows = np.full((6, k, n), np.nan)
    for i, key in enumerate(keys):
        rows[: series[key].shape[0], i, : lengths[i]] = series[key]
    x, f, s, nf, ns, per = rows
    per = np.nan_to_num(per).astype(np.int64)  # caches from before the period row: no period
    cols["se_period"] = np.zeros(k, dtype=np.int64)
    score = np.zeros((k, n))
    flag = np.zeros((k, n), dtype=bool)
    reason = np.zeros((k, n), dtype=np.uint8)
    for t in range(n):
        live = np.nonzero(t < lengths)[0]
        xt = x[live, t]
        count = np.full(len(live), t)
        naive = (xt - nf[live, t], ns[live, t])
        cols["se_period"][live] = per[live, t]
        r = scoring.score(cols, live, xt, xt - f[live, t], s[live, t], count, cfg, *naive)
        score[live, t] = r.score
        flag[live, t] = r.flag
        reason[live, t] = r.reason
    return {
        key: {
            "score": score[i, : lengths[i]],
            "flag": flag[i, : lengths[i]],
            "reason": reason[i, : lengths[i]],
        }
        for i, key in enumerate(keys)
    }


def nab_files(series, scored, windows, timestamps) -> list[FileScores]:
    out = []
    for key in series:
        alert = np.where(scored[key]["flag"], scored[key]["score"], 0.0)
        n = len(alert)
        out.append(
            FileScores(
                key,
                timestamps[key],
                alert,
                map_windows(timestamps[key], windows.get(key, []), key),
                probation_length(n),
            )
        )
    return out


SHORT = {"standard": "std", "reward_low_FP_rate": "lowFP", "reward_low_FN_rate": "lowFN"}


def details(files: list[FileScores], threshold: float, scored: dict) -> None:
    """Per file: windows detected (row offset of the first detection from the window start), FPs and
    their reasons."""
    for f in files:
        why = scored[f.key]["reason"]
        hit = f.scores >= threshold
        hit[: f.probation] = False
        inside = np.zeros(len(hit), dtype=bool)
        found = []
        for a, b in f.windows:
            inside[a : b + 1] = True
            rows = np.nonzero(hit[a : b + 1])[0]
            found.append(f"{rows[0]}/{b - a + 1}" if len(rows) else "MISS")
        fps = np.nonzero(hit & ~inside)[0]
        names, counts = np.unique([scoring.REASONS[r] for r in why[fps]], return_counts=True)
        kinds = {str(a): int(b) for a, b in zip(names, counts, strict=True)}
        print(f"  {f.key:60s} windows {found} fp {len(fps)} {kinds} {fps[:8].tolist()}")


def _load(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict, dict[str, list[str]]]:
    """The cached per-row forecasts, the label windows and each file's timestamps."""
    cache = np.load(args.cache)
    series = {k.replace("|", "/"): cache[k] for k in cache.files}
    windows = load_windows(Path(args.data) / "combined_windows.json")
    timestamps = {k: read_nab_csv(Path(args.data) / k, k).timestamps for k in series}
    return series, windows, timestamps


def _grid(params: list[str]) -> list[dict]:
    """``name=v1,v2`` arguments -> every combination as a dict (one empty dict without arguments)."""
    grid = [kv.split("=", 1) for kv in params]
    names = [g[0] for g in grid]
    values = [[json.loads(v) for v in g[1].split(",")] for g in grid]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def sweep(args: argparse.Namespace) -> None:
    series, windows, timestamps = _load(args)
    for combo in _grid(args.params):
        cfg = ScoringConfig(**combo)
        scored = replay_scores(series, cfg)
        files = nab_files(series, scored, windows, timestamps)
        res = score_corpus(files, cfg.threshold)
        flags = sum(int(v["flag"].sum()) for v in scored.values())
        if args.details:
            details(files, res["standard"]["threshold"], scored)
        if args.by_category:
            t = {p: r["threshold"] for p, r in res.items()}
            for cat, r in score_by_category(files, t).items():
                if r["standard"] is not None:
                    print(f"  {cat:24s} " + " / ".join(f"{v:.2f}" for v in r.values()))
        print(
            json.dumps(
                {
                    **combo,
                    "flags": flags,
                    **{SHORT[p]: round(r["optimized"], 2) for p, r in res.items()},
                    "fixed_std": round(res["standard"]["fixed"], 2),
                }
            ),
            flush=True,
        )


def leave_one_category_out(
    files_by_combo: list[list[FileScores]], profile: str = "standard"
) -> tuple[list[dict], float]:
    """Per category with windows: the combination and threshold best on the other categories, and
    that choice's normalised score on the left-out category; returns the folds and their mean."""
    cats = sorted({f.category for f in files_by_combo[0] if f.windows})
    folds = []
    for cat in cats:
        best = None
        for i, files in enumerate(files_by_combo):
            t, score = optimise([f for f in files if f.category != cat], profile)
            if best is None or score > best[2]:
                best = (i, t, score)
        i, t, train = best
        held = [f for f in files_by_combo[i] if f.category == cat]
        folds.append(
            {
                "left_out": cat,
                "combo": i,
                "threshold": round(t, 4),
                "train": round(train, 2),
                "left_out_score": round(normalised(held, score_at(held, t, profile), profile), 2),
            }
        )
    return folds, float(np.mean([f["left_out_score"] for f in folds]))


def loco(args: argparse.Namespace) -> None:
    series, windows, timestamps = _load(args)
    combos = _grid(args.params)
    files_by_combo = []
    for combo in combos:
        files = nab_files(series, replay_scores(series, ScoringConfig(**combo)), windows, timestamps)
        files_by_combo.append(files)
        whole = score_corpus(files)
        print(json.dumps({**combo, **{SHORT[p]: round(r["optimized"], 2) for p, r in whole.items()}}))
    for profile in PROFILES if args.all_profiles else ["standard"]:
        folds, mean = leave_one_category_out(files_by_combo, profile)
        for f in folds:
            f["combo"] = combos[f["combo"]]
            print(json.dumps({"profile": SHORT[profile], **f}))
        print(json.dumps({"profile": SHORT[profile], "left_out_mean": round(mean, 2)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--data", default="../shared/data/nab-dev")
    c.add_argument("--cache", default="/tmp/nabcache.npz")
    c.add_argument("--engine", default="{}", help="EngineConfig overrides as JSON (forecast-side settings)")
    s = sub.add_parser("sweep")
    s.add_argument("--data", default="../shared/data/nab-dev")
    s.add_argument("--cache", default="/tmp/nabcache.npz")
    s.add_argument("--details", action="store_true", help="per-file detections and false positives")
    s.add_argument(
        "--by-category", action="store_true", help="per-category scores at the optimised thresholds"
    )
    s.add_argument("params", nargs="*", help="name=v1,v2 (ScoringConfig fields, JSON values)")
    lo = sub.add_parser("loco", help="leave one category out: choose on the others, score the one left out")
    lo.add_argument("--data", default="../shared/data/nab-dev")
    lo.add_argument("--cache", default="/tmp/nabcache.npz")
    lo.add_argument("--all-profiles", action="store_true", help="low FP and low FN too (default standard)")
    lo.add_argument("params", nargs="*", help="name=v1,v2 (ScoringConfig fields, JSON values)")
    args = ap.parse_args()
    {"collect": collect, "sweep": sweep, "loco": loco}[args.cmd](args)


if __name__ == "__main__":
    main()
