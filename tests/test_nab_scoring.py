"""NAB scoring: the reference detectors' scores on the 40-file development set, hand-made cases, a
literal port of NAB's loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lstm_stream.nab_scoring import (
    PROFILES,
    FileScores,
    load_results,
    load_windows,
    map_windows,
    n_windows,
    normalised,
    optimise,
    probation_length,
    score_at,
    score_by_category,
    score_corpus,
    score_curve,
)
from tests.conftest import NAB

# NAB's own scorer (run.py --optimize --score --normalize) on the 40 files of nab-dev, from the reference
# detectors' per-row scores in nab-dev/reference-results: standard, low FP, low FN (issue 11)
REFERENCE = {
    "ARTime": (73.22, 63.38, 78.85),
    "numenta": (68.58, 61.72, 72.88),
}
needs_data = pytest.mark.skipif(
    not (NAB / "combined_windows.json").is_file(), reason=f"NAB development set not found at {NAB}"
)


@pytest.fixture(scope="module", params=sorted(REFERENCE))
def reference(request: pytest.FixtureRequest) -> tuple[str, list[FileScores]]:
    if not (NAB / "combined_windows.json").is_file():
        pytest.skip(f"NAB development set not found at {NAB}")
    windows = load_windows(NAB / "combined_windows.json")
    return request.param, load_results(NAB / "reference-results" / request.param, windows)


@needs_data
def test_reproduces_the_reference_scores_on_the_development_set(
    reference: tuple[str, list[FileScores]],
) -> None:
    detector, files = reference
    assert len(files) == 40 and n_windows(files) == 81
    result = score_corpus(files, fixed_threshold=0.5)
    for profile, expected in zip(PROFILES, REFERENCE[detector], strict=True):
        assert result[profile]["optimized"] == pytest.approx(expected, abs=0.1), profile
        t = result[profile]["threshold"]
        assert normalised(files, score_at(files, t, profile), profile) == pytest.approx(
            result[profile]["optimized"], abs=1e-9
        )
        assert result[profile]["fixed"] <= result[profile]["optimized"] + 1e-9


@needs_data
def test_by_category(reference: tuple[str, list[FileScores]]) -> None:
    _, files = reference
    per_cat = score_by_category(files, {"standard": 0.5})
    assert per_cat["artificialNoAnomaly"] == {"standard": None}
    assert all(v["standard"] is not None for c, v in per_cat.items() if c != "artificialNoAnomaly")
    raw = score_by_category(files, {"standard": 0.5}, raw=True)
    assert sum(v["standard"] for v in raw.values()) == pytest.approx(score_at(files, 0.5))


# ---- hand-made cases: 100 rows, one window on rows 40..49 (width 10), no probation -------------


def one_file(
    hits: list[int], windows: list[tuple[int, int]] | None = None, probation: int = 0, n: int = 100
) -> FileScores:
    scores = np.zeros(n)
    scores[hits] = 1.0
    wins = [(40, 49)] if windows is None else windows
    return FileScores("cat/f.csv", [str(i) for i in range(n)], scores, wins, probation)


def s(files: FileScores | list[FileScores], profile: str = "standard") -> float:
    return score_at(files if isinstance(files, list) else [files], 0.5, profile)


def test_first_row_of_window_earns_exactly_tp() -> None:
    assert s(one_file([40])) == pytest.approx(1.0, abs=1e-12)
    last = (2 / (1 + math.exp(-0.5)) - 1) / (2 / (1 + math.exp(-5)) - 1)  # s(-1/10) / s(-1)
    assert s(one_file([49])) == pytest.approx(last)  # about 0.25 here, ~0 in a wide window
    assert 0.0 < s(one_file([99], windows=[(0, 99)], n=100)) < 0.03


def test_only_earliest_detection_in_window_counts() -> None:
    assert s(one_file([42, 45, 49])) == s(one_file([42]))
    assert s(one_file([42])) > s(one_file([45])) > 0


def test_missed_window_costs_fn() -> None:
    assert s(one_file([])) == -1.0
    assert s(one_file([]), "reward_low_FN_rate") == -2.0


def test_false_positive_cost_grows_with_distance_after_window() -> None:
    fp = PROFILES["standard"][1]
    just_after = s(one_file([50])) + 1.0  # remove the missed window's -fn
    far = s(one_file([49 + 3 * 9 + 1])) + 1.0  # y = 28/9 > 3 widths
    assert -0.3 * fp < just_after < 0
    assert far == pytest.approx(-fp)
    assert s(one_file([10])) + 1.0 == pytest.approx(-fp)  # before the first window
    assert s(one_file([10], windows=[])) == pytest.approx(-fp)  # file without windows
    assert s(one_file([10]), "reward_low_FP_rate") + 1.0 == pytest.approx(-2 * fp)


def test_probation_rows_are_ignored() -> None:
    assert s(one_file([5], probation=20)) == -1.0
    inside = one_file([40], windows=[(10, 49)], probation=20)  # window partly in probation
    assert 0 < s(inside) < 1  # first scored row is not the window's first row
    early = one_file([5], windows=[(2, 8), (40, 49)], probation=20)  # window wholly in probation
    assert n_windows([early]) == 1 and s(early) == -1.0
    assert probation_length(4032) == 604 and probation_length(22695) == 750


def test_normalisation_perfect_is_100_and_null_is_0() -> None:
    perfect = [one_file([40]), one_file([10, 60], windows=[(10, 19), (60, 79)])]
    null = [one_file([]), one_file([], windows=[(10, 19), (60, 79)])]
    assert optimise(perfect)[1] == pytest.approx(100.0)
    assert normalised(null, s(null)) == pytest.approx(0.0)
    assert optimise(null) == (1.1, pytest.approx(0.0))  # never firing beats firing everywhere


# ---- loading ----------------------------------------------------------------------------------


def test_map_windows_repeated_timestamps_and_fraction_suffix() -> None:
    ts = [f"2014-01-01 00:{m}:00" for m in ("00", "05", "05", "10")]
    assert map_windows(ts, [(ts[1] + ".000000", ts[3] + ".000000")]) == [(1, 3)]
    assert map_windows(ts, [(ts[0], ts[1])]) == [(0, 1)]  # end = first row with it, as NAB
    with pytest.raises(ValueError, match="not in the file"):
        map_windows(ts, [(ts[0], "2014-01-02 00:00:00")])


def test_load_results_crlf_prefix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    rows = [f"2014-01-01 00:0{i}:00,{i},{0.9 if i == 7 else 0.1},0" for i in range(10)]
    text = "\r\n".join(["timestamp,value,anomaly_score,label", *rows]) + "\r\n"
    (tmp_path / "cat" / "det_a.csv").write_bytes(text.encode())
    windows = {"cat/a.csv": [("2014-01-01 00:06:00.000000", "2014-01-01 00:08:00.000000")]}
    (f,) = load_results(tmp_path, windows)
    assert f.windows == [(6, 8)] and f.probation == 1 and f.scores[7] == 0.9
    with pytest.raises(FileNotFoundError, match="cat/b.csv"):
        load_results(tmp_path, {**windows, "cat/b.csv": []}, detector="det")


# ---- the O(R log R) sweep against a literal port of NAB's sweeper loop ------------------------


def nab_port(files: list[FileScores], profile: str) -> dict[float, float]:
    """NAB's calcSweepScore + calcScoreByThreshold, row by row: threshold -> raw S."""
    tp, fp, fn = PROFILES[profile]

    def sig(y: float) -> float:
        return -1.0 if y > 3 else 2 / (1 + math.exp(5 * y)) - 1

    points = []
    for f in files:
        wins, cur, prev = list(f.windows), None, None
        for i, score in enumerate(f.scores):
            if wins and i == wins[0][0]:
                cur = wins.pop(0)
            if cur is not None:
                name = (f.key, cur)
                sweep = sig(-(cur[1] - i + 1) / (cur[1] - cur[0] + 1)) * tp / sig(-1)
            else:
                name = None
                sweep = -fp if prev is None else fp * sig(abs(prev[1] - i) / (prev[1] - prev[0]))
            if i >= f.probation:
                points.append((float(score), name, sweep))
            if cur is not None and i == cur[1]:
                prev, cur = cur, None
    points.sort(key=lambda p: -p[0])
    parts = {p[1]: -fn for p in points if p[1] is not None}
    parts["fp"] = 0.0
    out, threshold = {}, 1.1
    for score, name, sweep in points:
        if score != threshold:
            out[threshold] = sum(parts.values())
            threshold = score
        if name is None:
            parts["fp"] += sweep
        else:
            parts[name] = max(parts[name], sweep)
    out[threshold] = sum(parts.values())
    return out


@pytest.mark.parametrize("seed", range(5))
def test_sweep_matches_nab_loop_and_fixed_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    files = []
    for k in range(4):
        n = int(rng.integers(60, 300))
        n_win = int(rng.integers(0, 4))
        edges = np.sort(rng.choice(np.arange(5, n), size=2 * n_win, replace=False))
        wins = [(int(a), int(b)) for a, b in edges.reshape(-1, 2)]
        scores = np.round(rng.random(n) ** 3, 2)  # few distinct values: many ties
        files.append(
            FileScores(f"c{k % 2}/f{k}.csv", [str(i) for i in range(n)], scores, wins, probation_length(n))
        )
    for profile in PROFILES:
        expected = nab_port(files, profile)
        thresholds, raw = score_curve(files, profile)
        for t, value in zip(thresholds, raw, strict=True):
            assert value == pytest.approx(expected[t], abs=1e-9)
            assert score_at(files, t, profile) == pytest.approx(value, abs=1e-9)
        assert raw.max() == pytest.approx(max(expected.values()), abs=1e-9)
        best_t, best = optimise(files, profile)
        assert best == pytest.approx(normalised(files, max(expected.values()), profile))
