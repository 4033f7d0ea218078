"""Anomaly events and forecasts out as compact JSON, through a publish function the service hands in.

The MQTT connection lives in ingest; outputs never import it. :class:`EventPublisher` only needs
``publish(topic, payload, qos, retain) -> bool`` (the link's :meth:`~daemon.ingest.link.MqttLink.publish`),
which counts and logs what could not be sent.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.ratelog import RateLimitedLogger
from lstm_stream.selection import NAMES

if TYPE_CHECKING:
    from lstm_stream.engine import Results

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], bool]  # (topic, payload, qos, retain) -> sent
Fence = Callable[[], "Callable[[str], bool] | None"]  # per batch: which streams may publish (None: all)
SCHEMA = 1  # the "schema" field of every anomaly event


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars and arrays (``.item()``/``.tolist()``)."""
    for attr in ("tolist", "item"):
        method = getattr(obj, attr, None)
        if callable(method):
            return _finite(method())
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """Compact JSON; non-finite floats become null so every consumer can parse it."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_plain)
    except ValueError:
        text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, default=_plain)
    return text.encode()


class EventPublisher:
    """Publishes anomaly events (``anomaly_topic``, QoS 1) and forecasts (``forecast_topic``, QoS 0).

    ``forecast_topic`` is a template with ``{stream}``; None publishes no forecasts. ``fence``, called
    once per batch, says which streams this worker may still publish for (a NATS worker publishes
    nothing for a partition whose lease it may have lost: :mod:`daemon.service.fence`).
    """

    def __init__(
        self,
        publish: Publish,
        anomaly_topic: str,
        forecast_topic: str | None = None,
        *,
        rate_log: RateLimitedLogger | None = None,
        fence: Fence | None = None,
    ) -> None:
        self._publish = publish
        self.fence = fence
        self.fenced = 0  # events and forecasts withheld by the fence
        self.anomaly_topic = anomaly_topic
        self.forecast_topic = forecast_topic
        self._rlog = rate_log if rate_log is not None else RateLimitedLogger(log)

    def publish_json(self, topic: str, obj: Any, qos: int = 1, retain: bool = False) -> bool:
        """Publish ``obj`` as compact JSON; False when it is not serializable or ``publish`` failed
        (disconnected, paho's outgoing queue full, an invalid topic)."""
        try:
            payload = dumps(obj)
        except (ValueError, TypeError) as exc:  # not JSON serializable
            self._rlog.log("publish_invalid", "cannot publish to %r: %s", topic, exc)
            return False
        return self._publish(topic, payload, qos, retain)

    def publish_event(self, event: dict[str, Any]) -> bool:
        """An anomaly event on ``anomaly_topic`` at QoS 1."""
        return self.publish_json(self.anomaly_topic, event, qos=1)

    def publish_forecast(
        self, stream: str, ts: float, forecast: Any, forecaster: str | None = None, **path: Any
    ) -> bool:
        """``{"ts", "forecast", "forecaster"}`` on ``forecast_topic`` (QoS 0) if configured; False
        otherwise. ``forecaster`` names what made the forecast (``lstm_stream.selection.NAMES``);
        ``path`` adds the multi-step fields (``path``, ``lower``, ``upper``, ``step_s``)."""
        template = self.forecast_topic
        if template is None:
            return False
        body: dict[str, Any] = {"ts": ts, "forecast": forecast}
        if forecaster is not None:
            body["forecaster"] = forecaster
        body.update(path)
        return self.publish_json(template.format(stream=stream), body, qos=0)

    def publish_anomalies(self, r: Results, model_version: int) -> tuple[int, int]:
        """One event per flagged sample of a batch's results; returns (published, failed)."""
        ok = failed = 0
        for i in self._rows(r, r.is_anomaly):
            event = {
                "stream": r.stream[i],
                "ts": float(r.ts[i]),
                "value": float(r.value[i]),
                "forecast": float(r.forecast[i]),
                "forecaster": r.served_of(i),  # what made the forecast the residual is scored from
                "spread": float(r.spread[i]),
                "score": round(float(r.score[i]), 6),
                "reason": r.reason_of(i),
                "model_version": model_version,
                "schema": SCHEMA,
            }
            if self.publish_event(event):
                ok += 1
            else:
                failed += 1
        return ok, failed

    def publish_forecasts(self, r: Results, step_s: np.ndarray | None = None) -> None:
        """The next-value forecast of every accepted sample of a batch's results, with its forecaster;
        where the engine makes paths, the path of the next H values, its interval and ``step_s`` (the
        stream's usual sampling interval, aligned with ``r``: how far apart the path's steps are)."""
        multi = r.path.shape[0] == len(r) > 0
        lower, upper = (r.lower, r.upper) if multi else (None, None)
        for i in self._rows(r, r.accepted):
            forecaster = NAMES[int(r.next_served[i])]
            extra: dict[str, Any] = {}
            if multi:
                extra = {"path": r.path[i], "lower": lower[i], "upper": upper[i]}
                if step_s is not None:
                    extra["step_s"] = float(step_s[i])
            self.publish_forecast(r.stream[i], float(r.ts[i]), float(r.next_forecast[i]), forecaster, **extra)

    def _rows(self, r: Results, mask: np.ndarray) -> list[int]:
        """Indices of ``mask`` whose streams the fence lets this worker publish for."""
        rows = np.nonzero(mask)[0].tolist()
        allowed = self.fence() if self.fence is not None and rows else None
        if allowed is None:
            return rows
        kept = [i for i in rows if allowed(r.stream[i])]
        if len(kept) < len(rows):
            self.fenced += len(rows) - len(kept)
            self._rlog.log(
                "fenced",
                "withheld %d events: partition lease not held (%d so far)",
                len(rows) - len(kept),
                self.fenced,
            )
        return kept
