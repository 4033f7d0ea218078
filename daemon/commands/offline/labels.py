"""Anomaly labels for ``evaluate``: NAB windows/labels or timestamps, and the flags scored on them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.csvdata import CsvData, parse_datetime, parse_epoch

from .common import UserError


def _flag_report(
    is_anomaly: np.ndarray, truth: np.ndarray, windows: list[tuple[int, int]], a: int
) -> dict[str, Any]:
    """Point-wise and event-wise precision/recall/F1 of the flags on rows ``[a, n)``."""
    from lstm_stream.evaluation import event_metrics, flag_metrics

    flags = is_anomaly[a:]
    inside = [(max(s, a) - a, e - a) for s, e in windows if e >= a]
    return {
        "pointwise": flag_metrics(flags, truth[a:]),
        "events": event_metrics(flags, inside),
        "flags": int(flags.sum()),
        "windows_in_part": len(inside),
    }


def _flag_table(f: dict[str, Any]) -> str:
    def cell(v: float) -> str:
        return f"{v:>11.3f}" if isinstance(v, float) and math.isfinite(v) else f"{'n/a':>11}"

    p, e = f["pointwise"], f["events"]
    return "\n".join(
        [
            f"anomaly flags vs labels {f['labels']}: {f['flags']} flag(s), {f['windows_in_part']} label "
            "window(s) in this part",
            f"{'':<16}{'PRECISION':>11}{'RECALL':>11}{'F1':>11}",
            f"{'point-wise':<16}{cell(p['precision'])}{cell(p['recall'])}{cell(p['f1'])}"
            f"   tp {p['tp']}, fp {p['fp']}, fn {p['fn']}",
            f"{'event-wise':<16}{cell(e['precision'])}{cell(e['recall'])}{cell(e['f1'])}"
            f"   {e['detected']}/{e['windows']} windows detected, "
            f"{e['inside']}/{e['flags']} flags inside one",
        ]
    )


def _label_time(text: str) -> float:
    t = text.strip()
    try:
        return parse_epoch(float(t))
    except ValueError:
        return parse_datetime(t)


def load_labels(path: Path, data: CsvData) -> tuple[np.ndarray, list[tuple[int, int]], str]:
    """Labels as a per-row truth mask and row windows (inclusive).

    NAB ``combined_windows.json`` (key -> [[start, end], ...]), ``combined_labels.json`` (key ->
    [timestamp, ...]), a JSON list of either, or a text file with one timestamp (or ``start,end``)
    per line. A window covers the rows whose time lies in it; a point label marks the nearest row.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read labels: {exc}") from None
    entries: list[Any]
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in "[{":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(raw, dict):
            key = _label_key(raw, data)
            if key is None:
                raise UserError(
                    f"{path}: no entry for {data.key} (keys end with <folder>/<name>.csv, e.g. "
                    f"{next(iter(raw), '?')})"
                )
            entries, note = raw[key], f"entry {key}"
        elif isinstance(raw, list):
            entries, note = raw, "list"
        else:
            raise UserError(f"{path}: expected a JSON object or list of labels")
        lines = [0] * len(entries)
    else:
        entries, lines = [], []
        for i, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = [p for p in s.split(",") if p.strip()]
            entries.append(parts if len(parts) == 2 else s)
            lines.append(i)
        note = "timestamps"
    n = len(data)
    truth = np.zeros(n, dtype=bool)
    windows: list[tuple[int, int]] = []
    step = float(np.median(np.abs(np.diff(data.time)))) if n > 1 else 0.0
    for entry, line in zip(entries, lines, strict=True):
        where = f"{path}:{line}" if line else str(path)
        try:
            if isinstance(entry, list | tuple) and len(entry) == 2:
                t0, t1 = _label_time(str(entry[0])), _label_time(str(entry[1]))
                rows = np.flatnonzero((data.time >= t0) & (data.time <= t1))
                if not rows.size:
                    continue  # a window outside this file's time range
                windows.append((int(rows.min()), int(rows.max())))
                truth[rows.min() : rows.max() + 1] = True
            elif isinstance(entry, str | int | float):
                t = _label_time(str(entry))
                i = int(np.argmin(np.abs(data.time - t)))
                if abs(data.time[i] - t) > max(step, 1e-9) * 1.5:
                    raise UserError(f"{where}: label {entry!r} is not near any row of {data.path.name}")
                windows.append((i, i))
                truth[i] = True
            else:
                raise UserError(f"{where}: a label is a timestamp or [start, end], got {entry!r}")
        except ValueError:
            raise UserError(f"{where}: unparsable label timestamp in {entry!r}") from None
    windows.sort()
    return truth, windows, note


def _label_key(raw: dict[str, Any], data: CsvData) -> str | None:
    """The labels entry for this CSV: exact ``<folder>/<name>.csv``, else one ending with its name."""
    if data.key in raw:
        return data.key
    for key in raw:
        if key.endswith("/" + data.key) or key.endswith("/" + data.path.name) or key == data.path.name:
            return key
    return None
