"""What one long array costs the other streams: engine batch times with and without the per-stream bound.

    python scripts/bench_array_stall.py [--streams 9000] [--array 1000] [--cap 16] [--budget-ms 2] [--cpu]

9,000 warm streams get batches of 500 one-sample streams every 50 ms (of data time); at batch 5 one
stream brings an array of ``--array`` samples. Without a bound the engine steps it in one call (one
batched LSTM round per sample); with ``max_rounds = --cap`` (the daemon's ingest.stream_batch_max) the
rest is carried into the next batches, as the service does; with ``round_budget_s`` (ingest.stream_batch_ms)
the rounds after the first also stop after that long. Prints per mode the median and longest batch time
(the longest is what the other streams' samples in that batch waited extra) and the batches until the
array was applied. ``--cpu`` times each batch in CPU seconds of this process (the engine's own cost,
not the machine's other load; the budget still runs on wall time).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from lstm_stream.engine import DEFERRED, Engine
from lstm_stream.pretrained import load_pretrained


def run(
    streams: int,
    array: int,
    cap: int | None,
    budget_s: float | None = None,
    batches: int = 80,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[np.ndarray, int]:
    """Batch times (ms) of one run, and the batch in which the array's last sample was applied."""
    p = load_pretrained()
    e = Engine(p.config, p.model)
    names = [f"s{i}" for i in range(streams)]
    rng = np.random.default_rng(0)
    t = 1000.0
    for _ in range(5):
        e.process(names, np.full(streams, t), rng.normal(size=streams), now=t, limit_admission=False)
        t += 1
    carry: tuple[list[str], np.ndarray, np.ndarray] = ([], np.zeros(0), np.zeros(0))
    times, done_at = [], -1
    for b in range(batches):
        lo = (b * 500) % streams
        st, ts, v = names[lo : lo + 500], np.full(500, t), rng.normal(size=500)
        if b == 5:
            st = st + ["arr"] * array
            ts = np.concatenate([ts, t - 1 + np.arange(array) / array])
            v = np.concatenate([v, rng.normal(size=array)])
        st, ts, v = carry[0] + st, np.concatenate([carry[1], ts]), np.concatenate([carry[2], v])
        t0 = clock()
        r = e.process(st, ts, v, now=t, max_rounds=cap, limit_admission=False, round_budget_s=budget_s)
        times.append(clock() - t0)
        d = np.nonzero(r.reject == DEFERRED)[0]
        carry = ([st[i] for i in d], ts[d], v[d])
        if b >= 5 and done_at < 0 and not len(d):
            done_at = b
        t += 0.05
    return np.array(times) * 1000, done_at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=9000)
    ap.add_argument("--array", type=int, default=1000)
    ap.add_argument("--cap", type=int, default=16)
    ap.add_argument("--budget-ms", type=float, default=2.0)
    ap.add_argument("--cpu", action="store_true", help="time batches in CPU seconds (time.process_time)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    budget = args.budget_ms / 1000.0
    for cap, b in ((None, None), (args.cap, None), (args.cap, budget)):
        ms, done = run(
            args.streams, args.array, cap, b, clock=time.process_time if args.cpu else time.perf_counter
        )
        med, top = np.median(ms), ms.max()
        print(
            f"max_rounds {cap}, budget {b}: batch ms median {med:.1f}, longest {top:.1f}, "
            f"total {ms.sum():.0f}, array applied by batch {done} (it came in batch 5)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
