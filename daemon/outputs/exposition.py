"""The per-stream families (label ``stream``), rendered straight from a view's arrays.

:class:`StreamExporter` writes text format 0.0.4 from a :class:`~lstm_stream.engine.StreamView`.
10k streams as prometheus_client children would hold the GIL for over half a second per scrape;
this renders them in tens of milliseconds, once per view however many scrapes come.
"""

from __future__ import annotations

import operator
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from daemon.outputs.families import (
    ANOMALOUS_SCORE,
    PER_STREAM_MODES,
    escape_label_value,
    headers,
    series,
)

if TYPE_CHECKING:
    from lstm_stream.engine import StreamView

__all__ = ["ANOMALOUS_SCORE", "PER_STREAM_MODES", "StreamExporter", "escape_label_value", "format_values"]


RENDER_CHUNK = 512  # streams formatted per GIL hold while rendering /metrics (about 0.5 ms)
# pause between chunks: a render of 10k streams then takes at most a third of the GIL, spread over
# ~0.2 s, instead of half of it in a burst that stalls the batches running meanwhile
RENDER_PAUSE_S = 0.001


def format_values(a: np.ndarray) -> list[str]:
    """Sample values as text: shortest round-trip floats, integers as such, NaN / +Inf / -Inf."""
    if a.dtype.kind == "b":
        return list(map(str, a.view(np.uint8).tolist()))
    if a.dtype.kind in "iu":
        return list(map(str, a.tolist()))
    values = a.astype(np.float64, copy=False).tolist()
    out = list(map(repr, values))
    bad = ~np.isfinite(a)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            v = values[i]
            out[i] = "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")
    return out


class StreamExporter:
    """Renders the per-stream families of the latest :class:`StreamView` as text format 0.0.4.

    ``update`` (engine thread) only stores the view; ``render`` (HTTP threads) formats it once and
    reuses the bytes until the next view. Modes: ``all`` streams, only ``anomalous`` ones (in an
    anomaly, flagged before, or scoring >= 0.5), or ``none``. A stream missing from the view (evicted
    or expired) is simply not rendered, so its series end with the next scrape.
    """

    def __init__(self, mode: str = "all", horizons: tuple[int, ...] = ()) -> None:
        if mode not in PER_STREAM_MODES:
            raise ValueError(f"per-stream mode {mode!r} is not one of {PER_STREAM_MODES}")
        self.mode = mode
        self.horizons = tuple(horizons)  # steps of the path exported (none beyond the engine's horizon)
        self._view: StreamView | None = None
        self._labels: dict[str, str] = {}  # stream name -> '{stream="..."} '
        self._cache: tuple[StreamView | None, str, bytes] = (None, "", b"")
        self._lock = threading.Lock()
        self.last_render_seconds = 0.0

    @property
    def cached_labels(self) -> int:
        """Label strings held in the per-name cache (bounded by about twice the streams shown)."""
        return len(self._labels)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached exposition text (the label cache adds about as much again)."""
        return len(self._cache[2])

    def update(self, view: StreamView) -> None:
        """Make ``view`` the one to export (cheap: keeps the reference; the view must not change)."""
        self._view = view

    def render(self) -> bytes:
        """The exposition text of the current view, UTF-8 (empty before the first view)."""
        view = self._view
        with self._lock:  # concurrent scrapes of one view render it once
            cached_view, cached_mode, data = self._cache
            if view is cached_view and self.mode == cached_mode:
                return data
            t0 = time.perf_counter()
            data = self.render_view(view).encode("utf-8", "replace") if view is not None else b""
            self.last_render_seconds = time.perf_counter() - t0
            self._cache = (view, self.mode, data)
            return data

    def _select(self, view: StreamView) -> tuple[list[str], np.ndarray | None]:
        if self.mode == "none" or not view.names:
            return [], None
        if self.mode == "all":
            return view.names, None
        with np.errstate(invalid="ignore"):
            keep = (
                np.asarray(view.in_anomaly, dtype=bool)
                | (np.asarray(view.anomalies) > 0)
                | (np.asarray(view.score) >= ANOMALOUS_SCORE)
            )
        idx = np.flatnonzero(keep)
        names = view.names
        return [names[i] for i in idx.tolist()], idx

    def _label_strings(self, names: list[str]) -> list[str]:
        cache = self._labels
        get = cache.get
        labels = [get(n) or self._new_label(n) for n in names]
        if len(cache) > 2 * len(names) + 1024:  # streams come and go: forget the departed
            self._labels = dict(zip(names, labels, strict=True))
        return labels

    def _new_label(self, name: str) -> str:
        label = self._labels[name] = '{stream="' + escape_label_value(name) + '"} '
        return label

    def render_view(self, view: StreamView) -> str:
        """The per-stream families of ``view`` as text (no caching)."""
        names, idx = self._select(view)
        if not names:
            return ""
        labels = self._label_strings(names)
        parts: list[str] = []
        steps = [h for h in self.horizons if view.path is not None and 1 <= h <= view.path.shape[1]]
        all_series = series(steps)
        for header, one in zip(headers(all_series), all_series, strict=True):
            a = one.column(view)
            parts.append(header)
            tagged = labels if one.step is None else list(map(one.label, labels))
            _render_family(parts, one.name, tagged, a if idx is None else a[idx])
        return "".join(parts)


def _render_family(parts: list[str], name: str, labels: list[str], values: np.ndarray) -> None:
    """Append one family's samples (``name`` + label string + value per stream), in chunks."""
    sep = "\n" + name
    add = operator.add
    for lo in range(0, len(labels), RENDER_CHUNK):
        hi = lo + RENDER_CHUNK
        parts.append(name + sep.join(map(add, labels[lo:hi], format_values(values[lo:hi]))) + "\n")
        time.sleep(RENDER_PAUSE_S)  # each map/join above is one C call holding the GIL
