"""``lstm-stream bench engine``: samples per second of Engine.process, stateful vs window mode.

Both modes run through the same ``Engine.process`` on the same synthetic streams in the same run, so
the ratio is meaningful on a noisy shared machine; memory is the exact size of the per-stream arrays
(history buffers reported separately) plus the process's resident-set growth.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable

import numpy as np
import torch

from .config import EngineConfig, ModelConfig
from .engine import Engine


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _batches(n_streams: int, rng: np.random.Generator):
    names = [f"plant/line{i // 100}/sensor{i}" for i in range(n_streams)]
    phase = rng.uniform(0, 2 * np.pi, n_streams)
    t = 0

    def next_batch() -> tuple[list[str], np.ndarray, np.ndarray]:
        nonlocal t
        t += 1
        values = np.sin(0.1 * t + phase) + 0.05 * rng.standard_normal(n_streams)
        return names, np.full(n_streams, float(t)), values

    return next_batch


def measure(cfg: EngineConfig, n_streams: int, seconds: float, max_batches: int | None = None) -> dict:
    """Steady-state samples/s of ``Engine.process`` with one sample per stream per batch."""
    gc.collect()
    rss0 = _rss_mb()
    engine = Engine(cfg)
    make = _batches(n_streams, np.random.default_rng(0))
    engine.process(*make())  # creates every stream
    engine.process(*make())
    rss1 = _rss_mb()
    samples, batches, start = 0, 0, time.perf_counter()
    while True:
        engine.process(*make())
        samples += n_streams
        batches += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or (max_batches and batches >= max_batches):
            break
    mem = engine.memory()
    per_stream = mem["state_bytes"] / mem["slots"]
    return {
        "samples_per_s": samples / elapsed,
        "batches": batches,
        "state_mb_per_10k_streams": per_stream * 10_000 / 2**20,
        "history_mb_per_10k_streams": mem["history_bytes"] / mem["slots"] * 10_000 / 2**20,
        "rss_growth_mb": rss1 - rss0,
        "runtime": "torch" if engine._runner.stepper is None else "onnxruntime",
    }


def run(seconds: float = 3.0, streams: tuple[int, ...] = (1000, 10_000), look_back: int = 32) -> dict:
    """The benchmark: stateful vs window mode at each stream count (hidden 64, 2 layers, 1 thread);
    the stateful mode on its configured runtime and on torch.

    ``window_samples_per_s`` is the seed's way through ``Engine.process``: every sample re-runs its
    stream's whole window from zero state, one sample per call as it arrives. The same window mode
    batched across streams (a better window mode than the seed's) is reported beside it.
    """
    torch.set_num_threads(1)
    model = ModelConfig(hidden=64, layers=2)
    base = EngineConfig(  # every stream is created in the first batch: no admission rate
        model=model, look_back=look_back, max_streams=max(streams), torch_threads=1, new_streams_per_s=None
    )
    window = base.model_copy(update={"mode": "window"})
    on_torch = base.model_copy(update={"runtime": "torch"})  # the same, stepped by torch: a same-run baseline
    out: dict = {"hidden": 64, "layers": 2, "look_back": look_back, "torch_threads": 1, "by_streams": {}}
    for n in streams:
        st = measure(base, n, seconds)
        st_torch = measure(on_torch, n, seconds)
        seed = seed_window_rate(window, n, seconds=min(seconds, 2.0))
        batched = measure(window, n, seconds, max_batches=3)
        out["by_streams"][str(n)] = {
            "stateful_samples_per_s": round(st["samples_per_s"]),
            "runtime": st["runtime"],
            "stateful_torch_samples_per_s": round(st_torch["samples_per_s"]),
            "runtime_vs_torch": round(st["samples_per_s"] / st_torch["samples_per_s"], 2),
            "window_samples_per_s": round(seed),
            "ratio": round(st["samples_per_s"] / seed, 1),
            "batched_window_samples_per_s": round(batched["samples_per_s"]),
            "ratio_vs_batched_window": round(st["samples_per_s"] / batched["samples_per_s"], 1),
            "state_mb_per_10k_streams": round(st["state_mb_per_10k_streams"], 2),
            "history_mb_per_10k_streams": round(st["history_mb_per_10k_streams"], 2),
            "rss_growth_mb": round(st["rss_growth_mb"], 1),
        }
    top = out["by_streams"][str(max(streams))]
    out.update(top)
    return out


def seed_window_rate(cfg: EngineConfig, n_streams: int, seconds: float = 2.0) -> float:
    """The seed's way: each sample, as it arrives, re-runs its stream's window from zero state."""
    engine = Engine(cfg.model_copy(update={"max_streams": n_streams}))
    make = _batches(n_streams, np.random.default_rng(1))
    names, ts, values = make()
    engine.process(names, ts, values)  # create the streams and fill their first window slot
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        names, ts, values = make()
        for i in range(0, n_streams, max(1, n_streams // 200)):
            engine.process(names[i : i + 1], ts[i : i + 1], values[i : i + 1])
            n += 1
    return n / (time.perf_counter() - start)


class _Workload:
    """Sine streams with random period, phase and level, fed as micro-batches of distinct streams."""

    def __init__(self, n_streams: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.names = [f"plant/line{i // 100}/sensor{i}" for i in range(n_streams)]
        self.period = rng.choice([24, 48, 96], n_streams)
        self.phase = rng.uniform(0, 2 * np.pi, n_streams)
        self.level = rng.uniform(-5, 50, n_streams)
        self.rng = rng
        self.t = 0

    def batch(
        self, size: int | None = None, first: int | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The next batch: ``size`` random distinct streams, or the ``first`` ones, or all of them."""
        n = len(self.names)
        if size is not None and size < n:
            idx = self.rng.choice(n, size, replace=False)
        else:
            idx = np.arange(first if first is not None else n)
        self.t += 1
        t = self.t
        noise = 0.05 * self.rng.standard_normal(len(idx))
        values = self.level[idx] + np.sin(2 * np.pi * t / self.period[idx] + self.phase[idx]) + noise
        return [self.names[i] for i in idx.tolist()], np.full(len(idx), float(t)), values


def warmed_engines(
    factories: dict[str, Callable[[], Engine]], n_streams: int, long_streams: int, long_steps: int
) -> tuple[dict[str, Engine], _Workload]:
    """Engines fed the same warm-up: 30 samples on every stream, ``long_steps`` more on the first ones."""
    engines = {name: make() for name, make in factories.items()}
    work = _Workload(n_streams)
    for k in range(30 + long_steps):
        batch = work.batch(first=None if k < 30 else long_streams)
        for engine in engines.values():
            engine.process(*batch, now=float(work.t))
    return engines, work


def per_call(
    batches: tuple[int, ...] = (1, 50, 500, 5000),
    n_streams: int = 10_000,
    reps: int = 9,
    factories: dict[str, Callable[[], Engine]] | None = None,
    long_streams: int = 1000,
    long_steps: int = 1100,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Microseconds per sample of ``Engine.process`` at each batch size (median of ``reps``).

    Default: the shipped model with the default config, on ``n_streams`` streams warmed past the
    seasonal period detection on ``long_streams`` of them. With several ``factories`` every engine
    gets the same batches, alternating within each repetition, so their figures compare in one run.
    ``clock=time.thread_time`` counts only this thread's CPU time (steadier on a loaded machine).
    """
    from .pretrained import pretrained_engine

    torch.set_num_threads(1)
    factories = factories or {"engine": pretrained_engine}
    engines, work = warmed_engines(factories, n_streams, long_streams, long_steps)
    out: dict = {"n_streams": n_streams, "reps": reps, "clock": clock.__name__, "us_per_sample": {}}
    first = next(iter(engines))
    for size in batches:
        calls = max(3, 8000 // (size + 100))
        times: dict[str, list[float]] = {name: [] for name in engines}
        for rep in range(reps):
            feed = [(*work.batch(size), float(work.t)) for _ in range(calls)]
            order = list(engines.items())
            for name, engine in order if rep % 2 == 0 else order[::-1]:
                start = clock()
                for streams, ts, values, now in feed:
                    engine.process(streams, ts, values, now=now)
                times[name].append((clock() - start) / (calls * size) * 1e6)
        row = {name: round(float(np.median(t)), 2) for name, t in times.items()}
        for name in list(times)[1:]:  # paired per repetition: robust to load that changes between them
            row[f"{first}/{name}"] = round(float(np.median(np.divide(times[first], times[name]))), 2)
        out["us_per_sample"][str(size)] = row
    return out
