"""Numenta Anomaly Benchmark (NAB v1.1) scoring, re-implemented with numpy only.

Follows NAB's ``sweeper.py``: per-row sweep scores (scaled sigmoid of the distance to a window),
the earliest detection per window counts, every detection outside a window costs, the first
min(floor(0.15 N), 750) rows of a file are ignored, and one threshold per profile is chosen for the
whole corpus as the best of all distinct score values (NAB's ``optimizer.py`` does the same sweep).
Here the sweep is an O(R log R) sort over "events" instead of NAB's per-threshold dictionary sums.

Normalisation uses the windows that have at least one scored row (all of them in NAB's data):
perfect = windows * tp, null = -windows * fn.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

#: (tp, fp, fn) weights of NAB's three application profiles.
PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}

_NO_DETECTION = 1.1  # NAB's starting threshold: above every score, so nothing is detected


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's s(y) = 2 / (1 + e^(5y)) - 1, and -1 beyond three window widths."""
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, s)


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are never scored: min(floor(0.15 N), 750), as NAB."""
    return int(min(math.floor(0.15 * n_rows), 0.15 * 5000))


def _norm_ts(ts: str) -> str:
    """Canonical timestamp text, so "2014-04-10 07:15:00.000000" matches "2014-04-10 07:15:00"."""
    try:
        return datetime.fromisoformat(ts.strip()).isoformat(sep=" ")
    except ValueError:
        return ts.strip()


def map_windows(
    timestamps: Iterable[str], windows: Iterable[tuple[str, str]], key: str = ""
) -> list[tuple[int, int]]:
    """Inclusive (start, end) timestamp windows -> row index pairs, as NAB maps them.

    A start maps to the first row carrying it; an end to the first row carrying it at or after the
    start (NAB's ``timestamps.index``); only the row position matters afterwards.
    """
    ts = [_norm_ts(t) for t in timestamps]
    first: dict[str, int] = {}
    for i, t in enumerate(ts):
        first.setdefault(t, i)
    out: list[tuple[int, int]] = []
    for start, end in windows:
        s, e = _norm_ts(start), _norm_ts(end)
        if s not in first or e not in first:
            raise ValueError(f"{key}: window [{start}, {end}] has a timestamp not in the file")
        left = first[s]
        right = first[e] if first[e] >= left else ts.index(e, left)
        if out and left <= out[-1][1]:
            raise ValueError(f"{key}: windows overlap or are out of order at [{start}, {end}]")
        out.append((left, right))
    return out


@dataclass
class FileScores:
    """One detector's per-row anomaly scores for one NAB file, with its windows as row indices."""

    key: str  # "<category>/<file>.csv"
    timestamps: list[str]
    scores: np.ndarray
    windows: list[tuple[int, int]]
    probation: int

    @property
    def category(self) -> str:
        """The NAB category folder, e.g. "realKnownCause"."""
        return self.key.split("/", 1)[0]

    def sweep(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row: window index (-1 outside) and sweep score before the tp/fp weights.

        Inside a window: s(y)/s(-1) with y = -(right - i + 1)/w; outside: s(y) with
        y = (i - previous right)/(previous width - 1), or -1 before the first window. NaN in
        probation rows, which are not scored.
        """
        n = len(self.scores)
        idx = np.arange(n)
        win = np.full(n, -1)
        u = np.full(n, -1.0)
        max_tp = float(scaled_sigmoid(-1.0))
        prev_right = np.full(n, -1)
        prev_den = np.full(n, 0.0)
        for k, (left, right) in enumerate(self.windows):
            width = right - left + 1
            rows = idx[left : right + 1]
            win[left : right + 1] = k
            u[left : right + 1] = scaled_sigmoid(-(right - rows + 1) / width) / max_tp
            prev_right[right + 1 :] = right
            prev_den[right + 1 :] = width - 1
        after = (win < 0) & (prev_right >= 0)
        with np.errstate(divide="ignore"):  # a one-row window: every later row costs the full fp
            y = np.abs(idx[after] - prev_right[after]) / prev_den[after]
        u[after] = scaled_sigmoid(y)
        u[: self.probation] = np.nan
        return win, u


def load_windows(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Read NAB's combined_windows.json: key "<category>/<file>.csv" -> [(start, end), ...]."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    return {key: [(str(s), str(e)) for s, e in wins] for key, wins in raw.items()}


def _detect_prefix(results_dir: Path, keys: Iterable[str]) -> str:
    """Find the "<detector>" of "<detector>_<file>.csv" names in a NAB results folder."""
    found: set[str] = set()
    for key in keys:
        cat, name = key.split("/", 1)
        folder = results_dir / cat
        if folder.is_dir():
            found.update(p.name[: -len(name) - 1] for p in folder.glob(f"*_{name}"))
    if len(found) != 1:
        raise ValueError(f"cannot tell the detector name in {results_dir}: candidates {found}")
    return found.pop()


def load_results(
    results_dir: str | Path,
    windows: Mapping[str, list[tuple[str, str]]],
    detector: str | None = None,
) -> list[FileScores]:
    """Read RESULTS_DIR/<category>/<detector>_<file>.csv (timestamp, ..., anomaly_score) per key."""
    results_dir = Path(results_dir)
    detector = detector or _detect_prefix(results_dir, windows)
    files = []
    for key in sorted(windows):
        cat, name = key.split("/", 1)
        path = results_dir / cat / f"{detector}_{name}"
        if not path.is_file():
            raise FileNotFoundError(f"missing results file for {key}: {path}")
        with open(path, newline="", encoding="utf-8") as fh:  # csv handles CRLF
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader)]
            if "timestamp" not in header or "anomaly_score" not in header:
                raise ValueError(f"{path}: needs columns timestamp and anomaly_score, has {header}")
            t_col, s_col = header.index("timestamp"), header.index("anomaly_score")
            rows = [r for r in reader if r]
        stamps = [r[t_col] for r in rows]
        scores = np.array([float(r[s_col]) for r in rows])
        if np.isnan(scores).any():
            raise ValueError(f"{path}: NaN anomaly scores")
        files.append(
            FileScores(
                key,
                stamps,
                scores,
                map_windows(stamps, windows[key], key),
                probation_length(len(rows)),
            )
        )
    return files


def _file_score(f: FileScores, threshold: float, profile: str) -> float:
    """Raw NAB score of one file at one threshold (detection = score >= threshold)."""
    tp, fp, fn = PROFILES[profile]
    win, u = f.sweep()
    scored = ~np.isnan(u)
    hit = scored & (f.scores >= threshold)
    total = fp * float(u[hit & (win < 0)].sum())
    for k in np.unique(win[scored & (win >= 0)]):
        rows = np.flatnonzero(hit & (win == k))
        total += tp * float(u[rows[0]]) if rows.size else -fn
    return total


def n_windows(files: Iterable[FileScores]) -> int:
    """Windows that can be scored (at least one row after probation)."""
    return sum(sum(1 for _, right in f.windows if right >= f.probation) for f in files)


def score_at(files: Iterable[FileScores], threshold: float, profile: str = "standard") -> float:
    """Raw NAB score S summed over files at a fixed threshold."""
    return sum(_file_score(f, threshold, profile) for f in files)


def normalised(files: Iterable[FileScores], raw: float, profile: str = "standard") -> float:
    """100 (S - S_null) / (S_perfect - S_null) over these files' windows; NaN if there are none."""
    tp, _, fn = PROFILES[profile]
    n = n_windows(files)
    if n == 0:
        return float("nan")
    return 100.0 * (raw + n * fn) / (n * tp + n * fn)


def _events(files: Iterable[FileScores]) -> tuple[np.ndarray, np.ndarray]:
    """Score changes per threshold: (values, deltas[:, (tp part, windows found, fp part)]).

    S(t) = tp*A + fn*(B - windows) + fp*C with (A, B, C) the sum of deltas whose value >= t.
    Outside a window each scored row adds its own cost. In a window, only rows that set a new
    running maximum can become the earliest detection; lowering t past such a row's score moves the
    earliest detection to it, changing the reward by its u minus the u of the next such row.
    """
    vals, deltas = [], []
    for f in files:
        win, u = f.sweep()
        scored = ~np.isnan(u)
        fp_rows = scored & (win < 0)
        vals.append(f.scores[fp_rows])
        zeros = np.zeros(int(fp_rows.sum()))
        deltas.append(np.column_stack([zeros, zeros, u[fp_rows]]))
        for k in np.unique(win[scored & (win >= 0)]):
            rows = np.flatnonzero(scored & (win == k))
            sc = f.scores[rows]
            run_max = np.maximum.accumulate(sc)
            rec = rows[np.r_[True, sc[1:] > run_max[:-1]]]
            gain = u[rec] - np.r_[u[rec[1:]], 0.0]  # the highest record also turns -fn into reward
            found = np.zeros(rec.size)
            found[-1] = 1.0
            vals.append(f.scores[rec])
            deltas.append(np.column_stack([gain, found, np.zeros(rec.size)]))
    if not vals:
        return np.zeros(0), np.zeros((0, 3))
    return np.concatenate(vals), np.concatenate(deltas)


def score_curve(files: list[FileScores], profile: str = "standard") -> tuple[np.ndarray, np.ndarray]:
    """Raw S at NAB's candidate thresholds (1.1 then every score where S changes), descending."""
    tp, fp, fn = PROFILES[profile]
    vals, deltas = _events(files)
    order = np.argsort(-vals, kind="stable")
    vals, cum = vals[order], np.cumsum(deltas[order], axis=0)
    last = np.r_[vals[1:] != vals[:-1], True]  # end of each group of equal scores
    a, b, c = cum[last].T
    n = n_windows(files)
    s = tp * a + fn * (b - n) + fp * c
    return np.r_[_NO_DETECTION, vals[last]], np.r_[-fn * n, s]


def optimise(files: list[FileScores], profile: str = "standard") -> tuple[float, float]:
    """Best corpus threshold (the highest among equal maxima, as NAB) and its normalised score."""
    thresholds, s = score_curve(files, profile)
    best = int(np.argmax(s))  # first maximum = highest threshold
    return float(thresholds[best]), normalised(files, float(s[best]), profile)


def score_corpus(
    files: list[FileScores], fixed_threshold: float | None = None
) -> dict[str, dict[str, float | None]]:
    """Per profile: optimised normalised score, its threshold, and the normalised fixed-t score."""
    out: dict[str, dict[str, float | None]] = {}
    for profile in PROFILES:
        t, best = optimise(files, profile)
        fixed = None
        if fixed_threshold is not None:
            fixed = normalised(files, score_at(files, fixed_threshold, profile), profile)
        out[profile] = {"optimized": best, "threshold": t, "fixed": fixed}
    return out


def score_by_category(
    files: list[FileScores], thresholds: Mapping[str, float], raw: bool = False
) -> dict[str, dict[str, float | None]]:
    """Per category and profile: normalised score on that category's own windows at the given
    thresholds; None for a category without windows (e.g. artificialNoAnomaly), whose only
    information is its false-positive cost: pass raw=True to get raw S (<= 0) for every category."""
    groups: dict[str, list[FileScores]] = defaultdict(list)
    for f in files:
        groups[f.category].append(f)
    out: dict[str, dict[str, float | None]] = {}
    for cat, group in sorted(groups.items()):
        out[cat] = {}
        for profile, t in thresholds.items():
            s = score_at(group, t, profile)
            out[cat][profile] = s if raw else (normalised(group, s, profile) if n_windows(group) else None)
    return out
