"""NAB runner: every CSV of a NAB-format folder through a fresh engine, one row at a time.

Each file is one stream fed to ``Engine.process`` row by row, exactly as the daemon feeds it (same
configuration, scaling, scoring, warm-up and fine-tuning schedule), starting from the shipped
synthetic-only model so nothing learned on one file reaches another. The engine's ordering key is
the row number (NAB scores by position; its files repeat timestamps and step back in time once),
while the fine-tuning schedule follows the data's own clock. Output per file:
``<out>/<category>/<detector>_<file>.csv`` with ``timestamp,value,anomaly_score,label``.

The anomaly score written is the product's alert: the score on rows the engine flags, 0 elsewhere.
A row is a detection exactly when the product would raise an alert, so the benchmark measures what
a user gets (one alert per event, warm-up and suppression included).
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .config import EngineConfig
from .engine import Engine
from .nab_scoring import load_windows, map_windows
from .training import finetune, history_is_fresh

DETECTOR = "lstmstream"


@dataclass
class NabFile:
    """One NAB data file: raw timestamp text, values and its data clock (epoch seconds)."""

    key: str  # "<category>/<file>.csv"
    timestamps: list[str]
    values: np.ndarray
    clock: np.ndarray


def read_nab_csv(path: Path, key: str) -> NabFile:
    """Read a NAB CSV (header ``timestamp,value``; CRLF tolerated); every row is kept, in order."""
    stamps: list[str] = []
    values: list[float] = []
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or len(header) < 2:
            raise ValueError(f"{path}: expected a header 'timestamp,value'")
        for line, row in enumerate(rows, start=2):
            if len(row) < 2:
                raise ValueError(f"{path}:{line}: expected 'timestamp,value', got {row!r}")
            stamps.append(row[0].strip())
            try:
                values.append(float(row[1]))
            except ValueError:
                raise ValueError(f"{path}:{line}: value {row[1]!r} is not a number") from None
    clock = np.array([_epoch(t) for t in stamps], dtype=np.float64)
    clock = np.maximum.accumulate(np.nan_to_num(clock, nan=-np.inf))  # a step back never rewinds it
    return NabFile(key, stamps, np.array(values, dtype=np.float64), clock)


def _epoch(text: str) -> float:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return math.nan


@dataclass
class FinetuneSchedule:
    """The daemon's schedule on a given clock: every ``interval_s`` once ``min_new`` samples are new
    (the caller then checks :func:`history_is_fresh`, as the service does, and resets ``new``)."""

    interval_s: float
    min_new: int
    enabled: bool = True

    def __post_init__(self) -> None:
        self.next_at = -math.inf
        self.new = 0

    def due(self, now: float, new_samples: int) -> bool:
        """Count new samples; True when a fine-tune may start now."""
        self.new += new_samples
        if not self.enabled or now < self.next_at:
            return False
        if self.next_at == -math.inf:
            self.next_at = now + self.interval_s
            return False
        self.next_at = now + self.interval_s
        return self.new >= self.min_new


def detect_file(
    nab: NabFile, engine: Engine, schedule: FinetuneSchedule | None = None
) -> dict[str, np.ndarray]:
    """Run one file through ``engine`` row by row; per-row score, flag, forecast, reason."""
    n = len(nab.values)
    out = {k: np.zeros(n) for k in ("score", "forecast", "spread")}
    out["flag"] = np.zeros(n, dtype=bool)
    out["reason"] = np.zeros(n, dtype=np.uint8)
    out["finetunes"] = np.zeros(0)
    tunes = []
    name = [nab.key]
    for i in range(n):
        r = engine.process(name, (float(i),), nab.values[i : i + 1], now=float(nab.clock[i]), paths=False)
        out["score"][i] = r.score[0]
        out["forecast"][i] = r.forecast[0]
        out["spread"][i] = r.spread[0]
        out["flag"][i] = r.is_anomaly[0]
        out["reason"][i] = r.reason[0]
        if schedule is not None and schedule.due(float(nab.clock[i]), 1):
            history = engine.history(min_len=engine.config.train.seq_len + 1)
            if not history_is_fresh(schedule.new, history, engine.config.train):
                continue
            schedule.new = 0
            res = finetune(engine.model, history, engine.config)
            tunes.append(1.0 if res.accepted else 0.0)
            if res.accepted:
                engine.swap_model(res.candidate)
    out["finetunes"] = np.array(tunes)
    return out


def alert_scores(result: dict[str, np.ndarray]) -> np.ndarray:
    """The NAB anomaly_score column: the score where the product alerts, else 0."""
    return np.where(result["flag"], np.clip(result["score"], 0.0, 1.0), 0.0)


def _labels(nab: NabFile, windows: dict[str, list] | None) -> np.ndarray:
    label = np.zeros(len(nab.values), dtype=np.int8)
    for a, b in map_windows(nab.timestamps, (windows or {}).get(nab.key, []), nab.key):
        label[a : b + 1] = 1
    return label


def write_results(path: Path, nab: NabFile, scores: np.ndarray, labels: np.ndarray) -> None:
    """One NAB results file: timestamp,value,anomaly_score,label per input row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, v, s, lab in zip(
            nab.timestamps, nab.values.tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            w.writerow([t, repr(v), f"{s:.6f}", lab])


def run_one(
    data_dir: str,
    key: str,
    out_dir: str,
    cfg_json: dict,
    windows_path: str | None,
    detector: str,
    finetune_every_s: float | None,
    finetune_min_new: int,
) -> dict:
    """Worker: one file, fresh engine from the shipped model; writes its results file."""
    import torch

    from .pretrained import pretrained_engine

    torch.set_num_threads(1)
    cfg = EngineConfig.model_validate(cfg_json)
    engine = pretrained_engine(cfg)
    nab = read_nab_csv(Path(data_dir) / key, key)
    schedule = None
    if finetune_every_s:
        schedule = FinetuneSchedule(finetune_every_s, finetune_min_new)
    t0 = time.perf_counter()
    result = detect_file(nab, engine, schedule)
    windows = load_windows(windows_path) if windows_path else None
    category, name = key.split("/", 1)
    write_results(
        Path(out_dir) / category / f"{detector}_{name}", nab, alert_scores(result), _labels(nab, windows)
    )
    return {
        "key": key,
        "rows": len(nab.values),
        "seconds": time.perf_counter() - t0,
        "flags": int(result["flag"].sum()),
        "finetunes": len(result["finetunes"]),
        "accepted": int(result["finetunes"].sum()),
    }


def find_files(data_dir: Path) -> list[str]:
    """Keys ``<category>/<file>.csv`` of every CSV one level below ``data_dir``, sorted."""
    return sorted(
        f"{p.parent.name}/{p.name}" for p in data_dir.glob("*/*.csv") if p.parent.name != "reference-results"
    )


def run(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: EngineConfig | None = None,
    windows_path: str | Path | None = None,
    workers: int | None = None,
    detector: str = DETECTOR,
    finetune_every_s: float | None = None,
    finetune_min_new: int = 0,
    on_done: Callable[[dict], None] | None = None,
    files: Iterable[str] | None = None,
) -> list[dict]:
    """Run every file of a NAB-format folder (in parallel, largest first); per-file summaries."""
    data_dir = Path(data_dir)
    keys = list(files) if files is not None else find_files(data_dir)
    if not keys:
        raise ValueError(f"{data_dir}: no <category>/<file>.csv files found")
    if windows_path is None and (data_dir / "combined_windows.json").exists():
        windows_path = data_dir / "combined_windows.json"
    keys.sort(key=lambda k: -(data_dir / k).stat().st_size)
    cfg_json = (cfg or EngineConfig()).model_dump(mode="json")
    args = (
        str(out_dir),
        cfg_json,
        str(windows_path) if windows_path else None,
        detector,
        finetune_every_s,
        finetune_min_new,
    )
    workers = workers or max(1, os.cpu_count() or 1)
    done: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, str(data_dir), k, *args) for k in keys]
        for fut in as_completed(futures):
            summary = fut.result()
            done.append(summary)
            if on_done:
                on_done(summary)
    return sorted(done, key=lambda d: d["key"])
