"""One-step forecast quality of what the engine serves, over a folder of CSVs (a dev tool, not a test).

    python scripts/forecast_summary.py --data /work/shared/data/nab-dev --out /tmp/fc-summary.json

Runs ``python -m daemon.offline evaluate --whole --json --quiet`` on every ``--data/*/*.csv`` (the
folders whose name starts with ``artificial`` are skipped unless ``--all``), one file at a time, and
prints per file the MASE of the served forecast (``model``) and of persistence, EWMA and seasonal
naive, then the median and mean MASE of the served forecast, the files above 1 and the files where
the served forecast is no worse than the best simple forecaster. ``--out`` writes the same as JSON.
The code evaluated is the tree given by ``--root`` (default: the tree holding this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SIMPLE = ("persistence", "ewma", "seasonal_naive")


def evaluate(root: Path, model: Path, csv: Path) -> dict:
    """``evaluate --whole --json`` of one CSV, as a dict (rows kept in file order, as NAB has them)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "daemon.offline", "evaluate", "--model", str(model), "--csv", str(csv)]
    cmd += ["--whole", "--json", "--quiet", "--duplicates", "keep", "--unsorted", "keep"]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{csv}: evaluate failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def summarise(rows: list[dict]) -> dict:
    """Median/mean served MASE, files above 1, files where served <= the best simple forecaster."""
    served = np.array([r["model"] for r in rows], dtype=float)
    return {
        "files": len(rows),
        "median_mase": float(np.median(served)),
        "mean_mase": float(np.mean(served)),
        "above_1": int(np.sum(served > 1.0)),
        "served_le_best_simple": int(sum(r["model"] <= r["best_simple"] for r in rows)),
        "served_le_persistence": int(sum(r["model"] <= r["persistence"] for r in rows)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = Path(__file__).resolve().parent.parent
    p.add_argument("--data", type=Path, required=True, help="folder of category folders of CSVs")
    p.add_argument("--model", type=Path, default=here / "lstm_stream/data/pretrained.safetensors")
    p.add_argument("--root", type=Path, default=here, help="source tree to evaluate (PYTHONPATH)")
    p.add_argument("--all", action="store_true", help="also the artificial* folders")
    p.add_argument("--out", type=Path, help="write the table and summary here as JSON")
    args = p.parse_args()
    files = sorted(
        f for f in args.data.glob("*/*.csv") if args.all or not f.parent.name.startswith("artificial")
    )
    if not files:
        raise SystemExit(f"no CSV files under {args.data}")
    rows = []
    print(f"{'file':<44}{'served':>8}{'persist':>8}{'ewma':>8}{'snaive':>8}{'best':>8}  ok")
    for f in files:
        res = evaluate(args.root, args.model, f)
        row = {"file": f"{f.parent.name}/{f.name}", "period": res["meta"]["period"]}
        for name in ("model", *SIMPLE):
            row[name] = res[name]["mase"]
        row["best_simple"] = min(row[n] for n in SIMPLE)
        rows.append(row)
        ok = "yes" if row["model"] <= row["best_simple"] else "NO"
        cells = "".join(f"{row[n]:>8.3f}" for n in ("model", *SIMPLE, "best_simple"))
        print(f"{f.name[:43]:<44}{cells}  {ok}", flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "files": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
