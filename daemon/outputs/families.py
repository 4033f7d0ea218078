"""The per-stream metric families (label ``stream``): names, types, HELP text and the engine column
each is read from. A leaf module without torch or prometheus_client, so the exposition process
imports it cheaply; :mod:`daemon.outputs.metrics` re-exports the names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VALUE = "lstm_stream_value"
FORECAST = "lstm_stream_forecast"
FORECAST_NEXT = "lstm_stream_forecast_next"
ANOMALY_SCORE = "lstm_stream_anomaly_score"
ANOMALY = "lstm_stream_anomaly"
ANOMALIES_TOTAL = "lstm_stream_anomalies_total"
LAST_SEEN = "lstm_stream_last_seen_timestamp_seconds"
# the forecast path at the configured steps (label ``horizon``, in samples; http.horizons)
FORECAST_AHEAD = "lstm_stream_forecast_ahead"
FORECAST_LOWER = "lstm_stream_forecast_ahead_lower"
FORECAST_UPPER = "lstm_stream_forecast_ahead_upper"

FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    # (name, type, help, StreamView attribute)
    (VALUE, "gauge", "Last accepted value of the stream.", "value"),
    (FORECAST, "gauge", "What was forecast for the last value (NaN before the second sample).", "forecast"),
    (FORECAST_NEXT, "gauge", "Forecast of the stream's next value.", "next_forecast"),
    (ANOMALY_SCORE, "gauge", "Last anomaly score of the stream, 0-1.", "score"),
    (ANOMALY, "gauge", "1 while the stream is inside an anomalous condition, else 0.", "in_anomaly"),
    (ANOMALIES_TOTAL, "counter", "Anomaly flags raised for the stream.", "anomalies"),
    (LAST_SEEN, "gauge", "When the stream was last seen, in Unix seconds.", "last_seen"),
)

# per configured step h (label ``horizon``): the StreamView attribute is an (n, H) array
HORIZON_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    (FORECAST_AHEAD, "gauge", "Forecast of the value the given number of samples ahead.", "path"),
    (FORECAST_LOWER, "gauge", "Lower bound of the central interval of that forecast.", "lower"),
    (FORECAST_UPPER, "gauge", "Upper bound of the central interval of that forecast.", "upper"),
)

PER_STREAM_MODES = ("all", "anomalous", "none")
ANOMALOUS_SCORE = 0.5  # mode "anomalous" also exports streams scoring at least this


def family_header(name: str, typ: str, help_text: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of one family."""
    return f"# HELP {name} {help_text}\n# TYPE {name} {typ}\n"


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class Series:
    """One per-stream column of samples: a family, or one step of a horizon family."""

    name: str
    typ: str
    help: str
    attr: str
    step: int | None = None  # the path's step (label ``horizon``), for horizon families

    def column(self, view: Any) -> Any:
        """This series' values in ``view`` (a StreamView); NaN where the view has no such step."""
        import numpy as np  # here: the exposition process imports this module, and no numpy

        a = getattr(view, self.attr)
        if self.step is None:
            return np.asarray(a)
        if a is None or np.shape(a)[1] < self.step:
            return np.full(len(view.names), np.nan)
        return np.asarray(a)[:, self.step - 1]

    def label(self, stream_label: str) -> str:
        """The label set of a line, from the stream's ``'{stream="..."} '``."""
        return stream_label if self.step is None else f'{stream_label[:-2]},horizon="{self.step}"}} '


def series(horizons: Sequence[int] = ()) -> tuple[Series, ...]:
    """Every per-stream series in exposition order: the families, then each horizon family at each
    step (a name's steps together, under one header)."""
    out = [Series(*family) for family in FAMILIES]
    for family in HORIZON_FAMILIES if horizons else ():
        out += [Series(*family, step=h) for h in horizons]
    return tuple(out)


def headers(all_series: Sequence[Series]) -> list[str]:
    """Per series, the ``# HELP``/``# TYPE`` lines it starts with ('' for a later step of a name)."""
    out, prev = [], None
    for s in all_series:
        out.append("" if s.name == prev else family_header(s.name, s.typ, s.help))
        prev = s.name
    return out
