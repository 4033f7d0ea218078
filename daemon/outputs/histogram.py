"""A histogram fed whole arrays: the ingest latency of every scored sample, one call per batch."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class BulkHistogram:
    """A label-less histogram that takes a whole array per call (one ``searchsorted``, exact counts).

    prometheus_client's ``Histogram.observe`` costs a lock and a bucket scan per value, too slow
    for thousands of latencies per micro-batch; this owns its counts and registers as a collector.
    Non-finite values are dropped; negative ones (a sensor clock ahead of ours) count as 0.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if bounds and math.isinf(bounds[-1]):
            bounds.pop()
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        """Add one value."""
        self.observe_many(np.array([value], dtype=np.float64))

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        """Add every value of ``values``."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = np.maximum(x[np.isfinite(x)], 0.0)
        if not len(x):
            return
        counts = np.bincount(np.searchsorted(self._bounds, x, side="left"), minlength=len(self._counts))
        total = float(x.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(le, float(c)) for le, c in zip(self._les, cumulative, strict=True)]
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)]
