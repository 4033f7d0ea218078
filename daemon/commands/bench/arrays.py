"""A side load for the latency phase: one stream that sends a long JSON array every second.

Issue 13 asks what one 1,000-sample array costs the live streams' p99. The array's samples carry
timestamps an hour in the past (continuing from one array to the next, so none is out of order), so
the daemon scores them but leaves them out of the ingest-latency histogram (it ignores samples more
than 300 s old as historic data): the phase's p99 is the live streams' alone, and comparing it with
the plain latency phase just before, on the same daemon at the same rate, gives what the arrays add.
"""

from __future__ import annotations

import json
import threading
import time

from daemon.commands.bench.broker import Broker
from daemon.commands.bench.publishers import RawPublisher

HISTORIC_S = 3600.0  # the arrays' data is this old: beyond the daemon's latency window


class ArrayLoad:
    """A thread publishing ``samples``-element arrays to ``topic`` every ``period_s`` until stopped."""

    def __init__(self, broker: Broker, topic: str, samples: int, qos: int, period_s: float = 1.0) -> None:
        self.topic, self.samples, self.qos, self.period_s = topic, samples, qos, period_s
        self.pub = RawPublisher("127.0.0.1", broker.port, f"lstm-bench-array-{id(self)}")
        self.sent_samples = 0
        self.arrays = 0
        self._t0 = time.time() - HISTORIC_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-array-load", daemon=True)

    def payload(self) -> bytes:
        """The next array: ``samples`` objects spread over ``period_s`` of data time, after the last one."""
        step = self.period_s / self.samples  # the data's clock keeps pace with the wall clock
        first = self._t0 + self.sent_samples * step
        rows = [{"ts": first + i * step, "value": (i % 50) / 10.0} for i in range(self.samples)]
        return json.dumps(rows, separators=(",", ":")).encode()

    def _run(self) -> None:
        field = len(self.topic.encode()).to_bytes(2, "big") + self.topic.encode()
        while True:  # the first array at once, then one every period
            self.pub.send([self.pub.packet(field, self.payload(), self.qos)])
            self.sent_samples += self.samples
            self.arrays += 1
            if self.qos:
                self.pub.read_acks()
            if self._stop.wait(self.period_s):
                return

    def start(self) -> ArrayLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending (idempotent); ``sent_samples`` is final afterwards."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self.pub.close()
