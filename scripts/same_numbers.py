"""Whether a change to the engine keeps its numbers bit for bit: a refactor's check, on one machine.

    PYTHONPATH=<tree before> python scripts/same_numbers.py --write /tmp/before.json
    PYTHONPATH=<tree after>  python scripts/same_numbers.py --check /tmp/before.json

Runs a mixed batch sequence (wide rounds, a long one-stream array, late, duplicate and bad samples,
new streams mid-way, deferral, a model swap, extreme values, flags of several reasons) and records a
digest of every Results column and every state array of the end (NaN made one NaN: equal values, NaN
in the same places, the same sign of zero); ``--check`` names what differs. Not a test: onnxruntime's
and numpy's kernels round differently on other CPU families (AVX2, AVX-512), so the digests hold
only between two trees on the same machine (the engine's behaviour is tested by tests/).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from lstm_stream.config import EngineConfig, ScoringConfig, SeasonalConfig
from lstm_stream.engine import DEFERRED, Engine
from lstm_stream.pretrained import load_pretrained

COLUMNS = (
    "value", "forecast", "spread", "residual", "score", "is_anomaly", "reason", "next_forecast",
    "next_spread", "reject", "served", "next_served", "path", "halfwidth",
)  # fmt: skip


def _engine() -> Engine:
    """The shipped weights with every stage on and short warm-ups, so a short run reaches them all."""
    loaded = load_pretrained()
    cfg = EngineConfig(
        model=loaded.config.model,
        scaling=loaded.config.scaling,
        history_len=64,
        max_streams=64,
        seasonal=SeasonalConfig(learn=32, window=128, redetect=200),
        scoring=ScoringConfig(warmup=20, range_warmup=30, suppress=10, mid_window=30, regime_after=40),
    )
    return Engine(cfg, loaded.weights)


def _value(name: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-stream series: periodic, noisy, with spikes, a level shift, a flat spell and extremes."""
    k = int(name[1:]) if name[1:].isdigit() else 99
    v = (
        5.0
        + k % 5
        + 2.0 * np.sin(2 * np.pi * t / (12 + k % 3))
        + rng.normal(0.0, 0.2 + 0.1 * (k % 2), len(t))
    )
    v = np.where((t.astype(int) + k) % 97 == 0, v + 15.0, v)
    v = np.where(t > 150 + k, v + 4.0 * (k % 3 == 0), v)
    v = np.where((k % 4 == 1) & (t > 100) & (t < 260), 7.0, v)
    if k == 7:
        v = np.where(t.astype(int) % 53 == 0, 1e308 * (-1) ** t.astype(int), v)
    return v


def _batches() -> list[tuple[list[str], np.ndarray, list[object], dict]]:
    """The batch sequence: (streams, ts, values, process keyword arguments)."""
    rng = np.random.default_rng(1)
    out = []
    live = [f"s{i}" for i in range(24)]
    t = 0
    for b in range(60):
        if b == 20:
            live += [f"s{i}" for i in range(24, 32)]  # new streams mid-way
        names, ts = [], []
        for name in live:
            k = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)  # one to three samples each
            names += [name] * k
            ts += [t + j for j in range(k)]
        if b == 30:  # a long one-stream array beside the others
            names += ["s3"] * 300
            ts += [t + 3 + j for j in range(300)]
        t_arr = np.array(ts, dtype=np.float64)
        values: list[object] = list(
            np.concatenate([_value(n, t_arr[i : i + 1], rng) for i, n in enumerate(names)])
        )
        if b % 7 == 3:  # duplicates, a late sample within the reorder window and one beyond it, bad values
            names += ["s1", "s2", "s5", "s6", "s8"]
            t_arr = np.concatenate([t_arr, [t - 3.0, t - 0.6, t - 5.5, t + 0.5, t + 0.25]])
            values += [1.0, 2.0, 3.0, float("nan"), "x"]
        kw = {"now": float(t + 3), "paths": b % 2 == 0, "reorder": 1.0}
        if b in (30, 31, 32):
            kw["max_rounds"] = 120
        out.append((names, t_arr, values, kw))
        t += 3 if b != 30 else 310
    return out


def run() -> dict[str, list[np.ndarray]]:
    """Every Results column (one array per batch) and every state array of the end, by name."""
    engine = _engine()
    got: dict[str, list[np.ndarray]] = {col: [] for col in COLUMNS}
    carry: tuple[list[str], np.ndarray, list[object]] = ([], np.zeros(0), [])
    for b, (names, ts, values, kw) in enumerate(_batches()):
        engine.reorder_window_s = kw.pop("reorder")
        names, ts, values = carry[0] + names, np.concatenate([carry[1], ts]), carry[2] + values
        r = engine.process(names, ts, values, limit_admission=False, **kw)
        for col in COLUMNS:
            got[col].append(np.asarray(getattr(r, col)))
        d = np.nonzero(r.reject == DEFERRED)[0]
        carry = ([names[i] for i in d], ts[d], [values[i] for i in d])
        if b == 45:
            engine.swap_model(engine.weights, version=2)
    slots = engine.table.active_slots()
    got["names"] = [np.array([engine.table.names[i] for i in slots.tolist()])]
    for name, arr in engine.arrays.items():
        got[f"state_{name}"] = [arr[slots]]
    got["counters"] = [np.array([engine.counters[k] for k in sorted(engine.counters)])]
    return got


def digest(arrays: list[np.ndarray]) -> str:
    """sha256 of the arrays' dtypes, shapes and bytes, with every NaN the same NaN."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.kind == "f":
            a = np.where(np.isnan(a), np.array(np.nan, a.dtype), a)
        elif a.dtype.kind == "U":
            a = np.frombuffer("\n".join(a.tolist()).encode(), np.uint8)
        h.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", type=Path, help="record this tree's digests here")
    what.add_argument("--check", type=Path, help="compare this tree's digests with a recorded file")
    what.add_argument("--dump", type=Path, help="save the arrays themselves (.npz), to look at a difference")
    args = ap.parse_args()
    if args.dump:
        np.savez_compressed(args.dump, **{f"{k}_{i}": a for k, v in run().items() for i, a in enumerate(v)})
        return 0
    have = {name: digest(a) for name, a in run().items()}
    if args.write:
        args.write.write_text(json.dumps(have, indent=0) + "\n")
        print(f"wrote {args.write}: {len(have)} digests")
        return 0
    want = json.loads(args.check.read_text())
    differ = sorted(set(have) ^ set(want)) + [k for k in want if k in have and have[k] != want[k]]
    print("same numbers" if not differ else f"different: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
