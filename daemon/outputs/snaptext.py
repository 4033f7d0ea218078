"""Per-stream exposition text from a shared-memory snapshot, formatted in C loops.

``float.__repr__`` costs about 1 us a value here, so 70k series took 70-200 ms in Python. orjson
writes a whole column as shortest round-trip decimals (ryu) in about 0.1 us a value; the
lines are then joined with ``map``/``join`` over label strings cached per stream, so no Python code
runs per series. A family whose column did not change since the last snapshot keeps its text.
Values print as Go's ParseFloat reads them (``1e22``, ``0.00001``, ``NaN``, ``+Inf``).
No numpy here: the exposition process does without it (14 MB).
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Sequence
from typing import Any

from daemon.outputs.families import (
    ANOMALOUS_SCORE,
    FAMILIES,
    PER_STREAM_MODES,
    escape_label_value,
    headers,
    series,
)
from daemon.outputs.snapshot import INT, Snapshot

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; the slower formatter still gives the same values
    orjson = None

_ATTRS = [attr for _, _, _, attr in FAMILIES]


def _special(v: float) -> str:
    return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")


def fast_values(a: Any, integer: bool = False) -> list[str]:
    """Sample values (a sequence of floats, or anything with ``tolist()``) as text: shortest
    round-trip decimals, integers as such, NaN / +Inf / -Inf."""
    values = a.tolist() if hasattr(a, "tolist") else list(a)
    if not values:
        return []
    if integer:
        try:
            values = list(map(int, values))
        except (ValueError, OverflowError):  # NaN or infinite where counts belong: print them as such
            values = [int(v) if math.isfinite(v) else _special(v) for v in values]
            return list(map(str, values))
    if orjson is None:
        text = ",".join(map(repr, values))
    else:
        text = orjson.dumps(values)[1:-1].decode("ascii")
    out = text.split(",")
    if not integer and "n" in text:  # NaN or an infinity: null from orjson, nan or inf from repr
        out = [t if math.isfinite(v) else _special(v) for t, v in zip(out, values, strict=True)]
    return out


class SnapshotText:
    """Renders snapshots as text format 0.0.4 (the series :class:`StreamExporter` writes)."""

    def __init__(self, mode: str = "all", horizons: tuple[int, ...] = ()) -> None:
        if mode not in PER_STREAM_MODES:
            raise ValueError(f"per-stream mode {mode!r} is not one of {PER_STREAM_MODES}")
        self.mode = mode
        self.series = series(horizons)  # as the SnapshotWriter wrote them
        self._headers = headers(self.series)
        self._names: list[str] | None = None
        self._closed: list[str] = []  # per row: '{stream="..."} ' (families without a step)
        self._open: list[str] = []  # per row: '{stream="..."' (a step's label and the value follow)
        self._labels: dict[str, str] = {}  # stream name -> escaped label set, across name changes
        self._bits: list[bytes] = [b""] * len(self.series)  # per series: the column it was made from
        self._text: list[bytes] = [b""] * len(self.series)  # per series: header and lines, UTF-8
        self._shown: list[bytes] = []  # the families of the last snapshot (joined per request)
        self._seq = -1
        self._lock = threading.Lock()
        self.families_rendered = 0  # families formatted so far (those unchanged are reused)

    def render(self, snap: Snapshot | None) -> bytes:
        """The per-stream text of ``snap`` (cached per snapshot; empty for none or mode ``none``)."""
        return b"".join(self.render_chunks(snap))

    def render_chunks(self, snap: Snapshot | None) -> list[bytes]:
        """:meth:`render`'s text as one chunk per family, as cached: a request writes them one by one
        instead of joining a copy of the whole (8 MB at 10k streams) per request."""
        if snap is None or self.mode == "none":
            return []
        with self._lock:
            if snap.seq != self._seq:
                self._shown = self._render(snap)
                self._seq = snap.seq
            return list(self._shown)

    def _render(self, snap: Snapshot) -> list[bytes]:
        if snap.names is not self._names:
            self._relabel(snap.names)
        rows = self._rows(snap)
        if not snap.names or (rows is not None and not len(rows)):
            return []
        return [self._family(k, snap, rows) for k in range(min(len(self.series), len(snap.cols)))]

    def _family(self, k: int, snap: Snapshot, rows: list[int] | None) -> bytes:
        """Family ``k``'s sample lines; reused when its column (and the rows shown) are unchanged."""
        col = snap.cols[k]
        one = self.series[k]
        labels = self._closed if one.step is None else self._open
        bits = col.tobytes()
        if rows is not None:
            col = list(map(col.tolist().__getitem__, rows))
            labels = list(map(labels.__getitem__, rows))
            bits += repr(rows).encode()
        if bits != self._bits[k]:
            values = fast_values(col, snap.kinds[k] == INT)
            if one.step is not None:  # ',horizon="h"} ' (the label set '} ' gets) before each value, in C
                values = map(one.label("} ").__add__, values)
            # name + labels + value per line, the name as part of the separator: no string per series kept
            lines = ("\n" + one.name).join(map(operator.add, labels, values))
            self._text[k] = (self._headers[k] + one.name + lines + "\n").encode("utf-8", "replace")
            self._bits[k] = bits
            self.families_rendered += 1
        return self._text[k]

    def _relabel(self, names: list[str]) -> None:
        """New stream names: the per-row line prefixes of every family."""
        cache = self._labels
        labels = [cache.get(n) or '{stream="' + escape_label_value(n) + '"} ' for n in names]
        self._labels = dict(zip(names, labels, strict=True))  # the departed are forgotten
        self._closed = labels
        self._open = [label[:-2] for label in labels] if any(s.step for s in self.series) else []
        self._bits = [b""] * len(self.series)
        self._names = names

    def _rows(self, snap: Snapshot) -> list[int] | None:
        """Rows shown: all (None), or those anomalous now, flagged before, or scoring >= 0.5."""
        if self.mode == "all":
            return None
        col: dict[str, Sequence[float]] = {attr: snap.cols[k] for k, attr in enumerate(_ATTRS)}
        keep = zip(col["in_anomaly"], col["anomalies"], col["score"], strict=True)
        return [
            i
            for i, (now, flags, score) in enumerate(keep)
            if now != 0 or flags > 0 or score >= ANOMALOUS_SCORE
        ]
