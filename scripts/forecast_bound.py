"""What strong forecasters reach on a file's second half when fitted on its first (a dev tool, not a test).

    python scripts/forecast_bound.py --data /work/shared/data/nab-dev FILE_STEM ... [--lstm]

Per CSV: the first half fits each forecaster, the second half scores it; one-step MASE = MAE / MAE of
persistence on the same rows (issue 17 item 2: what online learning can hope for). Forecasters:

- ``ewma``: the EWMA with its weight chosen on the first half (least MAE);
- ``median_k``: the median of the last k values, k chosen on the first half (MAE's own centre);
- ``ridge``: ridge regression of the next change on the last ``LAGS`` changes, the value's distance
  from its means over 4..256 samples and, with a period P (detected on the first half), the changes
  and levels one period ago; ``ridge_l1`` the same fitted for absolute error (IRLS);
- ``gbm``: scikit-learn's HistGradientBoostingRegressor (absolute-error loss) on those features;
- ``lstm`` (``--lstm``): a small LSTM (32 units, 48-sample windows) trained offline on the first half;
- ``rls_l1``: the online version of ``ridge_l1``: recursive least squares with forgetting (memory
  ``MEMORY``) and Huber weights from the file's start, scoring each value before learning it.
Features are in units of the first half's mean absolute change.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from lstm_stream.csvdata import load_csv
from lstm_stream.evaluation import detect_period

LAGS = 8
MEANS = (4, 16, 64, 256)
MEMORY = 1000
MEDIANS = (3, 9, 33)


def features(y: np.ndarray, period: int, u: float, medians: bool = False) -> np.ndarray:
    """Row t: what is known after y[t] (to forecast y[t+1] - y[t]), in units ``u``; ``medians``: also
    the medians of the last ``MEDIANS`` values, less y[t]."""
    n = len(y)
    d = np.diff(y, prepend=y[0])
    cols = [np.roll(d, k) for k in range(LAGS)]
    c = np.cumsum(np.insert(y, 0, 0.0))
    for w in MEANS:
        idx = np.arange(n)
        lo = np.maximum(idx + 1 - w, 0)
        cols.append((c[idx + 1] - c[lo]) / (idx + 1 - lo) - y)
    if medians:
        from numpy.lib.stride_tricks import sliding_window_view

        for k in MEDIANS:
            pad = np.concatenate([np.full(k - 1, y[0]), y])
            cols.append(np.median(sliding_window_view(pad, k), axis=1) - y)
    if period > 1:
        for k in (-1, 0, 1):  # the changes around one period ago: d[t+1-P+k]
            cols.append(np.roll(d, period - 1 - k))
        cols.append(np.roll(y, period - 1) - y)  # the level one period before the next value
    f = np.stack(cols, axis=1) / u
    f[: max(LAGS, period + 2)] = 0.0
    return np.clip(f, -50, 50)


def ridge(f: np.ndarray, t: np.ndarray, lam: float = 1.0, l1: bool = False) -> np.ndarray:
    """Ridge weights (with a bias column); ``l1``: iteratively reweighted for absolute error."""
    x = np.column_stack([f, np.ones(len(f))])
    w = np.ones(len(f))
    for _ in range(20 if l1 else 1):
        xtx = (x * w[:, None]).T @ x + lam * np.eye(x.shape[1])
        beta = np.linalg.solve(xtx, (x * w[:, None]).T @ t)
        w = 1.0 / np.maximum(np.abs(t - x @ beta), 0.05)
    return beta


def rls_online(f: np.ndarray, t: np.ndarray, huber: float = 1.5) -> np.ndarray:
    """Prequential forecasts of ``t`` from ``f``: exponentially weighted LS (memory MEMORY, ridge 1),
    Huber weights at ``huber`` running residuals; row i is forecast before it is learnt."""
    n, dim = f.shape
    x = np.column_stack([f, np.ones(n)])
    lam = 1.0 - 1.0 / MEMORY
    xx, xy = np.zeros((dim + 1, dim + 1)), np.zeros(dim + 1)
    beta, res, out = np.zeros(dim + 1), np.nan, np.zeros(n)
    for i in range(n):
        out[i] = x[i] @ beta
        r = abs(t[i] - out[i])
        wt = 1.0 if not np.isfinite(res) or r <= huber * res else huber * res / r
        res = r if not np.isfinite(res) else res + 0.01 * (r - res)
        xx = lam * xx + wt * np.outer(x[i], x[i])
        xy = lam * xy + wt * x[i] * t[i]
        if i % 8 == 7:
            beta = np.linalg.solve(xx + np.eye(dim + 1), xy)
    return out


def lstm_forecast(y: np.ndarray, half: int, u: float, seconds: float = 60.0) -> np.ndarray:
    """One-step changes for rows half-1..n-2 from a small LSTM trained on the first half's windows."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lb = 48
    d = np.diff(y, prepend=y[0]) / u
    lvl = (y - np.median(y[:half])) / (np.median(np.abs(y[:half] - np.median(y[:half]))) + 1e-9)
    inp = np.clip(np.stack([d, lvl], axis=1), -20, 20).astype(np.float32)
    tgt = np.clip(np.append(d[1:], 0.0), -20, 20).astype(np.float32)
    idx = np.arange(lb, half - 1)
    xs = torch.tensor(np.stack([inp[i - lb + 1 : i + 1] for i in range(lb - 1, len(y))]))
    ys = torch.tensor(tgt[lb - 1 :])
    net = torch.nn.LSTM(2, 32, batch_first=True)
    head = torch.nn.Linear(32, 1)
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=3e-3)
    train = idx - (lb - 1)
    start = time.monotonic()
    for _ in range(30):
        perm = np.random.default_rng(_).permutation(train)
        for b in range(0, len(perm), 128):
            j = torch.tensor(perm[b : b + 128])
            out = head(net(xs[j])[0][:, -1])[:, 0]
            loss = (out - ys[j]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if time.monotonic() - start > seconds:
            break
    with torch.no_grad():
        pred = head(net(xs)[0][:, -1])[:, 0].numpy()
    full = np.zeros(len(y))
    full[lb - 1 :] = pred
    return full * u


def evaluate(path: str, with_lstm: bool) -> dict:
    """MASE of each forecaster on the second half of ``path``."""
    y = load_csv(path, duplicates="keep", unsorted="keep").values[:, 0].astype(float)
    n, half = len(y), len(y) // 2
    period = detect_period(y[:half], max_period=min(1000, half // 3))
    u = float(np.mean(np.abs(np.diff(y[:half])))) or 1.0
    rows = np.arange(half - 1, n - 1)  # forecasts of y[half..n-1], made after y[half-1..n-2]
    truth = y[rows + 1]
    base = np.mean(np.abs(truth - y[rows]))
    out = {"file": os.path.basename(path), "rows": n, "period": period}

    def mase(fc: np.ndarray) -> float:
        return float(np.mean(np.abs(truth - fc)) / base)

    best = (np.inf, 0.3)
    for a in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        lvl = np.empty(n)
        lvl[0] = y[0]
        for i in range(1, n):
            lvl[i] = lvl[i - 1] + a * (y[i] - lvl[i - 1])
        err = np.mean(np.abs(y[1:half] - lvl[: half - 1]))
        if err < best[0]:
            best, ewma = (err, a), lvl
    out["ewma"] = mase(ewma[rows])
    out["ewma_alpha"] = best[1]
    bk = (np.inf, 1)
    for k in (1, 3, 5, 9, 15, 25):
        med = np.array([np.median(y[max(0, i - k + 1) : i + 1]) for i in range(n)])
        err = np.mean(np.abs(y[1:half] - med[: half - 1]))
        if err < bk[0]:
            bk, meds = (err, k), med
    out["median_k"] = mase(meds[rows])
    out["k"] = bk[1]
    f = features(y, period, u)
    t = np.append(np.diff(y), 0.0) / u
    fit = np.arange(max(LAGS, period + 2), half - 1)
    for name, l1 in (("ridge", False), ("ridge_l1", True)):
        beta = ridge(f[fit], t[fit], l1=l1)
        out[name] = mase(y[rows] + u * (np.column_stack([f[rows], np.ones(len(rows))]) @ beta))
    from sklearn.ensemble import HistGradientBoostingRegressor

    gbm = HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=200, learning_rate=0.05, random_state=0
    )
    gbm.fit(f[fit], t[fit])
    out["gbm"] = mase(y[rows] + u * gbm.predict(f[rows]))
    out["rls_l1"] = mase(y[rows] + u * rls_online(f, t)[rows])
    fm = features(y, period, u, medians=True)
    out["rls_med"] = mase(y[rows] + u * rls_online(fm, t)[rows])
    gbm.fit(fm[fit], t[fit])
    out["gbm_med"] = mase(y[rows] + u * gbm.predict(fm[rows]))
    if with_lstm:
        out["lstm"] = mase(y[rows] + lstm_forecast(y, half, u)[rows])
    return out


def main() -> None:
    """Print one row per file and the median of each column."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--lstm", action="store_true")
    p.add_argument("stems", nargs="+")
    args = p.parse_args()
    keys = ("ewma", "median_k", "ridge", "ridge_l1", "gbm", "gbm_med", "rls_l1", "rls_med") + (
        ("lstm",) if args.lstm else ()
    )
    print(f"{'file':38}{'rows':>6}{'P':>5}" + "".join(f"{k:>9}" for k in keys))
    got = []
    for stem in args.stems:
        (path,) = glob.glob(os.path.join(args.data, "*", stem + ".csv"))
        r = evaluate(path, args.lstm)
        got.append(r)
        print(
            f"{r['file']:38}{r['rows']:>6}{r['period']:>5}" + "".join(f"{r[k]:9.3f}" for k in keys),
            flush=True,
        )
    print(f"{'median':38}{'':>11}" + "".join(f"{np.median([r[k] for r in got]):9.3f}" for k in keys))


if __name__ == "__main__":
    main()
