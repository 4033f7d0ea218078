"""CPU per engine round at several widths, on a warm shipped engine; and numpy calls per round.

    python scripts/bench_round.py [--widths 1,16,500,10000] [--warm 300] [--trees /tmp/base,.]

A round steps each stream of a batch one sample (lstm_stream/rounds.py); its fixed cost is what a
stream with many samples in one batch pays per sample. For each width W this warms W streams (a
noisy daily-like sine, ``--warm`` samples each, so scoring, selection, adaptation and the seasonal
blend are all active), then times ``process`` calls of one sample per stream (one round each) in
CPU seconds (``time.process_time``) and prints us per round and per sample, the median of
``--repeat`` runs. With ``--calls`` it also counts the C-level calls one width-1 round makes
(``sys.setprofile`` c_call events: numpy functions and methods, not operators or indexing).
``--trees A,B`` runs this script once per tree (``PYTHONPATH``) in alternation, ``--repeat`` times,
and prints each tree's medians and B/A: a same-run comparison on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np


def series(width: int, start: int, length: int) -> np.ndarray:
    """(length, width) values: a period-24 sine per stream (own phase and level) plus noise."""
    rng = np.random.default_rng(start * 7919 + width)
    t = np.arange(start, start + length)[:, None]
    phase = np.arange(width)[None, :] * 0.37
    return (
        10.0
        + np.arange(width)[None, :] % 7
        + 3.0 * np.sin(2 * np.pi * t / 24 + phase)
        + rng.normal(0.0, 0.3, (length, width))
    )


def make_engine():  # noqa: ANN201 (the engine type of whichever tree runs this)
    """A shipped engine (onnxruntime, default configuration)."""
    from lstm_stream.pretrained import pretrained_engine

    return pretrained_engine()


def warm(engine, names: list[str], samples: int) -> int:  # noqa: ANN001
    """``samples`` rounds of one sample per stream; returns the next time index."""
    vals = series(len(names), 0, samples)
    for t in range(samples):
        engine.process(names, np.full(len(names), float(t)), vals[t], now=float(t), limit_admission=False)
    return samples


def time_rounds(engine, names: list[str], t0: int, rounds: int) -> float:  # noqa: ANN001
    """CPU seconds per round over ``rounds`` one-round calls from time index ``t0``."""
    vals = series(len(names), t0, rounds)
    ts = [np.full(len(names), float(t0 + t)) for t in range(rounds)]
    start = time.process_time()
    for t in range(rounds):
        engine.process(names, ts[t], vals[t], now=float(t0 + t), limit_admission=False, paths=False)
    return (time.process_time() - start) / rounds


def time_array(engine, name: str, t0: int, length: int) -> float:  # noqa: ANN001
    """CPU seconds per sample of one call that brings ``length`` samples of one stream."""
    vals = series(1, t0, length)[:, 0]
    ts = np.arange(t0, t0 + length, dtype=np.float64)
    start = time.process_time()
    engine.process([name] * length, ts, vals, now=float(t0 + length), limit_admission=False, paths=False)
    return (time.process_time() - start) / length


class _Counted:
    """A numpy function or ufunc that counts its calls (attributes such as ``.reduce`` pass through)."""

    def __init__(self, fn, name: str, seen: Counter) -> None:  # noqa: ANN001
        self._fn, self._name, self._seen = fn, name, seen

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        self._seen[self._name] += 1
        return self._fn(*args, **kwargs)

    def __getattr__(self, attr: str):  # noqa: ANN204
        return getattr(self._fn, attr)


def count_numpy(engine, name: str, t0: int, rounds: int = 20) -> dict[str, float]:  # noqa: ANN001
    """Calls of functions and ufuncs of the ``numpy`` namespace per width-1 round (operators such as
    ``a + b`` and indexing are not counted), by wrapping them for the duration."""
    seen: Counter[str] = Counter()
    saved = {
        k: v
        for k, v in vars(np).items()
        if isinstance(v, np.ufunc) or (callable(v) and not isinstance(v, type) and not k.startswith("_"))
    }
    vals = series(1, t0, rounds)
    for k, v in saved.items():
        setattr(np, k, _Counted(v, k, seen))
    try:
        for t in range(rounds):
            engine.process(
                [name], [float(t0 + t)], vals[t], now=float(t0 + t), limit_admission=False, paths=False
            )
    finally:
        for k, v in saved.items():
            setattr(np, k, v)
    return {
        "numpy_namespace_calls_per_round": sum(seen.values()) / rounds,
        "top": {k: v / rounds for k, v in seen.most_common(12)},
    }


def count_calls(engine, name: str, t0: int, rounds: int = 20) -> dict[str, float]:  # noqa: ANN001
    """C-level calls per width-1 round (sys.setprofile c_call), in total and the most frequent."""
    seen: Counter[str] = Counter()

    def prof(frame, event, arg) -> None:  # noqa: ANN001
        if event == "c_call":
            seen[f"{getattr(arg, '__module__', None) or ''}.{getattr(arg, '__qualname__', arg)}"] += 1

    vals = series(1, t0, rounds)
    sys.setprofile(prof)
    try:
        for t in range(rounds):
            engine.process(
                [name], [float(t0 + t)], vals[t], now=float(t0 + t), limit_admission=False, paths=False
            )
    finally:
        sys.setprofile(None)
    numpy_calls = sum(v for k, v in seen.items() if k.startswith("numpy") or ".ndarray." in k or "ufunc" in k)
    return {
        "c_calls_per_round": sum(seen.values()) / rounds,
        "numpy_calls_per_round": numpy_calls / rounds,
        "top": {k: v / rounds for k, v in seen.most_common(12)},
    }


def measure(widths: list[int], warm_samples: int, calls: bool) -> dict:
    """Every width's CPU per round (us) on one engine; optionally the call count at width 1."""
    engine = make_engine()
    out: dict = {"us_per_round": {}, "us_per_sample": {}}
    for w in widths:
        names = [f"w{w}-{i}" for i in range(w)]
        samples = warm_samples if w <= 500 else max(8, warm_samples // 20)
        t0 = warm(engine, names, samples)
        rounds = max(3, min(1000, 200_000 // (w * 40)))
        time_rounds(engine, names, t0, 3)  # the first rounds after warming build nothing new
        sec = time_rounds(engine, names, t0 + 3, rounds)
        out["us_per_round"][w] = round(sec * 1e6, 1)
        out["us_per_sample"][w] = round(sec * 1e6 / w, 2)
        if w == 1:  # the same rounds inside one call: a stream's array (no per-call work)
            out["us_per_array_sample"] = round(time_array(engine, names[0], t0 + 3 + rounds, 1000) * 1e6, 1)
        if calls and w == 1:
            out["calls_width_1"] = count_calls(engine, names[0], t0 + 2000)
            out["calls_width_1"]["numpy"] = count_numpy(engine, names[0], t0 + 2100)
    return out


def compare(trees: list[str], args: argparse.Namespace) -> None:
    """Run this script in each tree alternately; print medians per tree and the ratio to the first."""
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    for _ in range(args.repeat):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            cmd = [sys.executable, __file__, "--widths", args.widths, "--warm", str(args.warm), "--json"]
            if args.calls:
                cmd.append("--calls")
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[tree].append(json.loads(res.stdout))
    widths = [int(w) for w in args.widths.split(",")]
    base = trees[0]
    med = {
        t: {w: float(np.median([r["us_per_round"][str(w)] for r in runs[t]])) for w in widths} for t in trees
    }
    for t in trees:
        cells = ", ".join(
            f"w{w}: {med[t][w]:.0f} us/round ({med[t][w] / w:.2f} us/sample)"
            + ("" if t == base else f" x{med[t][w] / med[base][w]:.2f}")
            for w in widths
        )
        if 1 not in widths:
            print(f"{t}: {cells}")
            continue
        arr = float(np.median([r["us_per_array_sample"] for r in runs[t]]))
        ratio = (
            "" if t == base else f" x{arr / np.median([r['us_per_array_sample'] for r in runs[base]]):.2f}"
        )
        print(f"{t}: {cells}; 1,000-sample array of one stream: {arr:.0f} us/sample{ratio}")
        if args.calls:
            c = [r["calls_width_1"] for r in runs[t]]
            calls, numpy_calls = c[0]["c_calls_per_round"], c[0]["numpy_calls_per_round"]
            namespace = c[0]["numpy"]["numpy_namespace_calls_per_round"]
            print(
                f"  width-1 round: {calls:.0f} C calls ({numpy_calls:.0f} numpy methods and functions); "
                f"{namespace:.0f} calls of numpy-namespace functions and ufuncs"
            )
    print(json.dumps({t: runs[t] for t in trees}), file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="1,16,500,10000")
    ap.add_argument("--warm", type=int, default=300, help="samples per stream before timing")
    ap.add_argument("--calls", action="store_true", help="count C calls of a width-1 round")
    ap.add_argument("--trees", help="comma-separated source trees to compare (PYTHONPATH), first = baseline")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tree with --trees")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.trees:
        compare(args.trees.split(","), args)
        return 0
    res = measure([int(w) for w in args.widths.split(",")], args.warm, args.calls)
    if args.json:
        print(json.dumps(res))
    else:
        for w, us in res["us_per_round"].items():
            print(f"width {w}: {us:.0f} us CPU per round, {res['us_per_sample'][w]:.2f} us per sample")
        if "us_per_array_sample" in res:
            print(f"1,000-sample array of one stream: {res['us_per_array_sample']:.0f} us CPU per sample")
        if "calls_width_1" in res:
            print(json.dumps(res["calls_width_1"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
