"""The ``evaluate --plot`` figure: truth vs forecast, flags and label windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.csvdata import CsvData


def plot_evaluation(
    path: Path,
    data: CsvData,
    served: Any,
    a: int,
    windows: list[tuple[int, int]],
    results: dict[str, dict[str, float]],
    title: str,
    cfg: Any,
) -> None:
    """Truth vs one-step forecast (with a +-2 spread band), the forecast made H steps earlier with its
    interval (where the engine makes paths), flagged anomalies and label windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    y = data.series(0)[a:]
    fc = served.forecast[a:]
    sp = served.spread[a:]
    flags = served.is_anomaly[a:]
    dated = bool(data.time.min() > 1e8)  # epoch numbers before 1973 are counters, not dates
    if dated:
        x = (data.time[a:] * 1e6).astype("datetime64[us]")
    else:
        x = data.time[a:]
    fig, ax = plt.subplots(figsize=(14, 5), dpi=110)
    labelled = False
    for s, e in windows:
        if e < a:
            continue
        lo, hi = x[max(s, a) - a], x[e - a]
        ax.axvspan(
            lo,
            hi,
            color="tab:orange",
            alpha=0.18,
            lw=0,
            label=None if labelled else "labelled anomaly window",
        )
        labelled = True
    band = np.isfinite(sp)
    ax.fill_between(
        x,
        fc - 2 * sp,
        fc + 2 * sp,
        where=band,
        color="tab:blue",
        alpha=0.15,
        lw=0,
        label="forecast ± 2 spread",
    )
    if getattr(served, "path", None) is not None:
        _draw_ahead(ax, x, served, a, cfg)
    ax.plot(x, y, color="0.15", lw=0.9, label="truth")
    mm = results["model"]
    pm = results["persistence"]
    ax.plot(
        x,
        fc,
        color="tab:blue",
        lw=0.9,
        alpha=0.85,
        label=f"one-step forecast (MAE {mm['mae']:.3g}, MASE {mm['mase']:.3f}; "
        f"persistence MAE {pm['mae']:.3g})",
    )
    if not flags.any():  # say so in the legend: no flag is a result too
        ax.scatter([], [], s=46, facecolors="none", edgecolors="red", label="flagged anomaly (none)")
    else:
        ax.scatter(
            x[flags],
            y[flags],
            s=46,
            facecolors="none",
            edgecolors="red",
            linewidths=1.4,
            zorder=5,
            label=f"flagged anomaly ({int(flags.sum())})",
        )
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.margins(x=0)  # the data, and the last path past it
    if dated:
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("time (UTC)")
    else:
        ax.set_xlabel(f"time ({data.time_col})")
    ax.set_ylabel(data.columns[0])
    ax.set_title(f"{title} — {cfg.model.arch} ({cfg.mode}): truth vs one-step-ahead forecast", fontsize=12)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _draw_ahead(ax: Any, x: np.ndarray, served: Any, a: int, cfg: Any) -> None:
    """The last step of the paths, aligned with what it forecast, and its central interval."""
    from lstm_stream.evaluation import at_horizon

    h = served.path.shape[1]
    ahead, lo, hi = (at_horizon(m, h)[a:] for m in (served.path, served.lower, served.upper))
    known = np.isfinite(lo) & np.isfinite(hi)
    ax.fill_between(
        x,
        lo,
        hi,
        where=known,
        color="tab:green",
        alpha=0.13,
        lw=0,
        label=f"{cfg.interval:.0%} interval, {h} steps ahead",
    )
    ax.plot(x, ahead, color="tab:green", lw=0.8, ls="--", alpha=0.9, label=f"forecast made {h} steps earlier")
    _draw_last_path(ax, x, served, cfg)


def _draw_last_path(ax: Any, x: np.ndarray, served: Any, cfg: Any) -> None:
    """The path made after the last row (steps 1..H past the data) with its interval: what a user
    sees on the forecast topic now."""
    last = np.flatnonzero(np.isfinite(served.path[:, 0]))
    if not len(last) or len(x) < 2:
        return
    i, h = last[-1], served.path.shape[1]
    if i < len(served.path) - len(x):
        return  # not in the plotted rows
    step = np.median(np.diff(x[-min(len(x), 50) :]))
    k = i - (len(served.path) - len(x))  # row i's position in the plotted rows
    future = x[k] + step * np.arange(1, h + 1)
    ax.fill_between(future, served.lower[i], served.upper[i], color="tab:purple", alpha=0.2, lw=0)
    ax.plot(future, served.path[i], color="tab:purple", lw=1.4, label=f"path from the last row, {h} steps")
