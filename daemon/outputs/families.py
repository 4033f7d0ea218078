"""The per-stream metric families (label ``stream``): names, types, HELP text and the engine column
each is read from. A leaf module without torch or prometheus_client, so the exposition process
imports it cheaply; :mod:`daemon.outputs.metrics` re-exports the names."""

from __future__ import annotations

VALUE = "lstm_stream_value"
FORECAST = "lstm_stream_forecast"
FORECAST_NEXT = "lstm_stream_forecast_next"
ANOMALY_SCORE = "lstm_stream_anomaly_score"
ANOMALY = "lstm_stream_anomaly"
ANOMALIES_TOTAL = "lstm_stream_anomalies_total"
LAST_SEEN = "lstm_stream_last_seen_timestamp_seconds"

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

PER_STREAM_MODES = ("all", "anomalous", "none")
ANOMALOUS_SCORE = 0.5  # mode "anomalous" also exports streams scoring at least this


def family_header(name: str, typ: str, help_text: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of one family."""
    return f"# HELP {name} {help_text}\n# TYPE {name} {typ}\n"


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
