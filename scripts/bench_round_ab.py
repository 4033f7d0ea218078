"""CPU per engine round of two source trees in one process, alternating chunk by chunk: a ratio that
holds on a machine whose other load moves by 2x between runs (``bench_round.py --trees`` runs the
trees one after the other, minutes apart).

    PYTHONPATH=<tree B> python scripts/bench_round_ab.py <tree A> [--widths 1,16,500,10000] [--chunks 40]

Tree A's ``lstm_stream`` is loaded under another name (``lstm_base``; its modules import each other
relatively), tree B's is the one on ``PYTHONPATH``. Both get a shipped engine warmed as in
bench_round.py; then chunks of one-round calls (and, at width 1, one call of a ``--array``-sample
array of one stream) alternate A, B, B, A, ... Prints per width the lowest and median chunk (CPU us
per round, ``time.thread_time``) of each tree, B/A of the lowest, and the median of the paired ratios.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_round import series  # noqa: E402


def load_engine(tree: str | None):  # noqa: ANN201 (the engine type of whichever tree)
    """A shipped engine from ``tree``'s lstm_stream loaded as ``lstm_base`` (None: the importable one)."""
    if tree is None:
        from lstm_stream.pretrained import pretrained_engine

        return pretrained_engine()
    pkg = Path(tree) / "lstm_stream"
    spec = importlib.util.spec_from_file_location(
        "lstm_base", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["lstm_base"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("lstm_base.pretrained").pretrained_engine()


def alternate(jobs: tuple[Callable[[int], float], Callable[[int], float]], chunks: int) -> dict:
    """Run each job ``chunks`` times, alternating A B, B A, ...; job(k) returns CPU us for chunk k."""
    got: tuple[list[float], list[float]] = ([], [])
    for k in range(chunks):
        for j in (0, 1) if k % 2 == 0 else (1, 0):
            got[j].append(jobs[j](k))
    a, b = np.array(got[0]), np.array(got[1])
    return {
        "a_min": round(float(a.min()), 1),
        "b_min": round(float(b.min()), 1),
        "a_median": round(float(np.median(a)), 1),
        "b_median": round(float(np.median(b)), 1),
        "ratio_min": round(float(b.min() / a.min()), 3),
        "ratio_paired_median": round(float(np.median(b / a)), 3),
    }


def rounds_job(engine, names: list[str], t0: int, per_chunk: int) -> Callable[[int], float]:  # noqa: ANN001
    """CPU us per one-round call, over ``per_chunk`` calls from time index ``t0 + k * per_chunk``."""
    w = len(names)

    def job(k: int) -> float:
        start_t = t0 + k * per_chunk
        vals = series(w, start_t, per_chunk)
        start = time.thread_time()
        for i in range(per_chunk):
            t = float(start_t + i)
            engine.process(names, np.full(w, t), vals[i], now=t, limit_admission=False, paths=False)
        return (time.thread_time() - start) / per_chunk * 1e6

    return job


def array_job(engine, name: str, t0: int, length: int) -> Callable[[int], float]:  # noqa: ANN001
    """CPU us per sample of one call bringing ``length`` samples of one stream."""

    def job(k: int) -> float:
        start_t = t0 + k * length
        vals = series(1, start_t, length)[:, 0]
        ts = np.arange(start_t, start_t + length, dtype=np.float64)
        start = time.thread_time()
        engine.process(
            [name] * length, ts, vals, now=float(start_t + length), limit_admission=False, paths=False
        )
        return (time.thread_time() - start) / length * 1e6

    return job


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="source tree A (the baseline)")
    ap.add_argument("--widths", default="1,16,500,10000")
    ap.add_argument("--chunks", type=int, default=40, help="chunks per tree and width")
    ap.add_argument("--array", type=int, default=100, help="samples of the one-stream array (width 1)")
    args = ap.parse_args()
    engines = (load_engine(args.base), load_engine(None))
    out: dict = {}
    for w in (int(v) for v in args.widths.split(",")):
        names = [f"w{w}-{i}" for i in range(w)]
        warm = 300 if w <= 500 else 15
        vals = series(w, 0, warm)
        for e in engines:
            for t in range(warm):
                e.process(names, np.full(w, float(t)), vals[t], now=float(t), limit_admission=False)
        per_chunk = 10 if w < 100 else (3 if w <= 500 else 1)
        out[w] = alternate(tuple(rounds_job(e, names, warm, per_chunk) for e in engines), args.chunks)
        print(f"width {w}: {json.dumps(out[w])}", flush=True)
        if w == 1:
            t0 = warm + args.chunks * per_chunk
            jobs = tuple(array_job(e, names[0], t0, args.array) for e in engines)
            out["array"] = alternate(jobs, args.chunks)
            print(
                f"{args.array}-sample array of one stream, per sample: {json.dumps(out['array'])}", flush=True
            )
    print(json.dumps(out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
