"""One-step forecast quality of what the engine serves, over a folder of CSVs (a dev tool, not a test).

    python scripts/forecast_summary.py --data /work/shared/data/nab-dev --out /tmp/fc-summary.json
    python scripts/forecast_summary.py --data /work/shared/data/nab-dev --online --jobs 2

Runs ``python -m daemon evaluate --whole --json --quiet`` on every ``--data/*/*.csv`` (the
folders whose name starts with ``artificial`` are skipped unless ``--all``), one file at a time, and
prints per file the MASE of the served forecast (``model``) and of persistence, EWMA and seasonal
naive, then the median and mean MASE of the served forecast, the files above 1 and the files where
the served forecast is no worse than the best simple forecaster. For the multi-step path (issue 17
item 3) it prints per file the MASE at the last step H of the served path, of seasonal naive and of
persistence at H, and the share of values inside the interval at steps 1 and H; then the median
over files of each, the files where the path beats seasonal naive at H, and the median ratio of the
two. ``--out`` writes the same as JSON.
The code evaluated is the tree given by ``--root`` (default: the tree holding this script).
``--online`` runs ``evaluate --online`` instead (the daemon's loop with its fine-tuning schedule on
the data's clock) and adds per file the served MASE without fine-tuning and the change of the served
MAE fine-tuning makes, and in the summary the median change over the files of 5,000 rows or more.
``--jobs N`` evaluates N files at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SIMPLE = ("persistence", "ewma", "seasonal_naive")
HZ_KEYS = ("h_model", "h_snaive", "h_persistence", "cover_1", "h_cover")
HZ_HEAD = f"{'H:path':>8}{'snaive':>8}{'persist':>8}{'cov@1':>8}{'cov@H':>8}"


LARGE = 5000  # rows: the files the fine-tuning target is measured on


def evaluate(root: Path, model: Path, csv: Path, online: bool = False, config: Path | None = None) -> dict:
    """``evaluate --whole --json`` (or ``--online``) of one CSV, as a dict (rows kept in file order)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "daemon", "evaluate", "--model", str(model), "--csv", str(csv)]
    cmd += ["--online"] if online else ["--whole"]
    cmd += ["--config", str(config)] if config else []
    cmd += ["--json", "--quiet", "--duplicates", "keep", "--unsorted", "keep"]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{csv}: evaluate failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def summarise(rows: list[dict]) -> dict:
    """Median/mean served MASE, files above 1, files where served <= the best simple forecaster."""
    served = np.array([r["model"] for r in rows], dtype=float)
    out = {
        "files": len(rows),
        "median_mase": float(np.median(served)),
        "mean_mase": float(np.mean(served)),
        "above_1": int(np.sum(served > 1.0)),
        "served_le_best_simple": int(sum(r["model"] <= r["best_simple"] for r in rows)),
        "served_le_persistence": int(sum(r["model"] <= r["persistence"] for r in rows)),
        **summarise_horizon(rows),
    }
    if rows and "no_finetune" in rows[0]:
        large = [r["change"] for r in rows if r["rows"] >= LARGE]
        out["median_mase_no_finetune"] = float(np.median([r["no_finetune"] for r in rows]))
        out["median_change_large"] = float(np.median(large)) if large else None
        out["large_files_10pct_better"] = f"{sum(c <= -0.1 for c in large)} of {len(large)}"
    return out


def horizon_row(res: dict) -> dict:
    """The last step's MASE (served path, seasonal naive, persistence) and the coverage at 1 and H."""
    hz = res.get("horizons")
    if not hz:
        return {}
    h = max(hz, key=int)
    last, first = hz[h], hz["1"]
    return {
        "h": int(h),
        "h_model": last["model"]["mase"],
        "h_snaive": last["seasonal_naive"]["mase"],
        "h_persistence": last["persistence"]["mase"],
        "h_cover": last["coverage"],
        "cover_1": first["coverage"],
        "cover_mean": float(np.nanmean([v["coverage"] for v in hz.values()])),
    }


def summarise_horizon(rows: list[dict]) -> dict:
    """Medians over files of the H-step MASEs and of the coverages; files where the path beats
    seasonal naive at H; the median ratio served / seasonal naive at H."""
    rows = [r for r in rows if "h_model" in r]
    if not rows:
        return {}

    def med(key: str) -> float:
        return float(np.nanmedian([r[key] for r in rows]))

    ratio = [r["h_model"] / r["h_snaive"] for r in rows if r["h_snaive"] > 0]
    return {
        "horizon": rows[0]["h"],
        "median_h_mase_served": med("h_model"),
        "median_h_mase_seasonal_naive": med("h_snaive"),
        "median_h_mase_persistence": med("h_persistence"),
        "median_ratio_served_to_seasonal_naive_at_h": float(np.median(ratio)),
        "served_below_seasonal_naive_at_h": int(sum(r["h_model"] < r["h_snaive"] for r in rows)),
        "median_coverage_at_h": med("h_cover"),
        "median_coverage_at_1": med("cover_1"),
        "median_coverage_mean_over_steps": med("cover_mean"),
    }


def file_row(f: Path, res: dict) -> dict:
    """One file's line of the table from its evaluate report."""
    row = {
        "file": f"{f.parent.name}/{f.name}",
        "period": res["meta"]["period"],
        "rows": res["meta"]["rows"][1],
    }
    for name in ("model", *SIMPLE):
        row[name] = res[name]["mase"]
    row["best_simple"] = min(row[n] for n in SIMPLE)
    if "finetune" in res:
        row["no_finetune"] = res["without_finetune"]["model"]["mase"]
        row["change"] = res["finetune"]["change"]
        row["swaps"] = f"{res['finetune']['swaps']}/{res['finetune']['attempts']}"
    row.update(horizon_row(res))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = Path(__file__).resolve().parent.parent
    p.add_argument("--data", type=Path, required=True, help="folder of category folders of CSVs")
    p.add_argument("--model", type=Path, default=here / "lstm_stream/data/pretrained.safetensors")
    p.add_argument("--root", type=Path, default=here, help="source tree to evaluate (PYTHONPATH)")
    p.add_argument("--all", action="store_true", help="also the artificial* folders")
    p.add_argument("--out", type=Path, help="write the table and summary here as JSON")
    p.add_argument("--online", action="store_true", help="evaluate --online: with and without fine-tuning")
    p.add_argument("--config", type=Path, help="with --online: a daemon TOML ([engine], [finetune])")
    p.add_argument("--jobs", type=int, default=1, help="files evaluated at a time")
    args = p.parse_args()
    files = sorted(
        f for f in args.data.glob("*/*.csv") if args.all or not f.parent.name.startswith("artificial")
    )
    if not files:
        raise SystemExit(f"no CSV files under {args.data}")
    rows = []
    extra = f"{'no-ft':>8}{'change':>8}  swaps" if args.online else ""
    print(f"{'file':<44}{'served':>8}{'persist':>8}{'ewma':>8}{'snaive':>8}{'best':>8}  ok{extra}{HZ_HEAD}")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        reports = pool.map(lambda f: evaluate(args.root, args.model, f, args.online, args.config), files)
        for f, res in zip(files, reports, strict=True):
            row = file_row(f, res)
            rows.append(row)
            ok = "yes" if row["model"] <= row["best_simple"] else "NO "
            cells = "".join(f"{row[n]:>8.3f}" for n in ("model", *SIMPLE, "best_simple"))
            if args.online:
                cells += f"  {ok}{row['no_finetune']:>8.3f}{row['change']:>+8.1%}  {row['swaps']}"
            else:
                cells += f"  {ok}"
            cells += "".join(f"{row[k]:>8.3f}" for k in HZ_KEYS if k in row)
            print(f"{f.name[:43]:<44}{cells}", flush=True)
    summary = summarise(rows)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "files": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
