"""The NAB runner: every row out, in order, quirks handled, files independent; and its CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_stream import nab


def _write(path: Path, stamps: list[str], values: list[float], crlf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    eol = "\r\n" if crlf else "\n"
    path.write_bytes(
        (
            eol.join(["timestamp,value", *[f"{t},{v}" for t, v in zip(stamps, values, strict=True)]]) + eol
        ).encode()
    )


def _stamps(n: int) -> list[str]:
    """n five-minute timestamps from 2014-04-01 00:00."""
    out = []
    for i in range(n):
        m = 5 * i
        out.append(f"2014-04-{1 + m // 1440:02d} {(m // 60) % 24:02d}:{m % 60:02d}:00")
    return out


def _folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    n = 400
    t = np.arange(n)
    a = (20 + 5 * np.sin(2 * np.pi * t / 50)).tolist()
    a[300] += 40
    stamps = _stamps(n)
    stamps[101] = stamps[100]  # a repeated timestamp
    stamps[201] = stamps[150]  # a step back in time
    _write(data / "catA" / "quirky.csv", stamps, a, crlf=True)
    _write(data / "catB" / "plain.csv", _stamps(n), (10 + np.cos(t / 7)).tolist())
    windows = {
        "catA/quirky.csv": [[f"{_stamps(n)[290]}.000000", f"{_stamps(n)[310]}.000000"]],
        "catB/plain.csv": [],
    }
    (data / "combined_windows.json").write_text(json.dumps(windows))
    return data


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_row_out_in_order_with_quirks(tmp_path) -> None:
    data = _folder(tmp_path)
    out = tmp_path / "out"
    summaries = nab.run(data, out, workers=2)
    assert [s["key"] for s in summaries] == ["catA/quirky.csv", "catB/plain.csv"]
    rows = _read(out / "catA" / "lstmstream_quirky.csv")
    src = _read(data / "catA" / "quirky.csv")
    assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in src]
    assert [float(r["value"]) for r in rows] == [float(r["value"]) for r in src]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 and not math.isnan(s) for s in scores)
    labels = [int(r["label"]) for r in rows]
    assert labels[290:311] == [1] * 21 and sum(labels) == 21
    assert max(scores[300:303]) > 0  # the spike is an alert


@pytest.mark.slow
def test_files_do_not_influence_each_other(tmp_path) -> None:
    data = _folder(tmp_path)
    both = tmp_path / "both"
    alone = tmp_path / "alone"
    nab.run(data, both, workers=1)
    nab.run(data, alone, workers=1, files=["catB/plain.csv"])
    assert _read(both / "catB" / "lstmstream_plain.csv") == _read(alone / "catB" / "lstmstream_plain.csv")


@pytest.mark.slow
def test_cli_run_and_score_json(tmp_path) -> None:
    data = _folder(tmp_path)
    out = tmp_path / "res"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "nab",
            "run",
            "--data",
            str(data),
            "--out",
            str(out),
            "--json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 800
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "nab",
            "score",
            "--results",
            str(out),
            "--windows",
            str(data / "combined_windows.json"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    for v in result.values():
        assert {"optimized", "threshold", "fixed"} <= v.keys()


def test_finetune_schedule_follows_the_data_clock() -> None:
    sched = nab.FinetuneSchedule(interval_s=3600, min_new=10)
    due = [sched.due(now=300.0 * i, new_samples=1) for i in range(60)]
    assert sum(due) >= 1 and not any(due[:12])
