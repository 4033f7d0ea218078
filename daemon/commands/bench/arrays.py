"""A side load for the latency phase: one stream that sends a long JSON array (once, or repeatedly).

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
    """A thread publishing a ``samples``-element array to ``topic`` after ``delay_s``, then again every
    ``every_s`` (0: just the one) until stopped."""

    def __init__(
        self, broker: Broker, topic: str, samples: int, qos: int, every_s: float = 0.0, delay_s: float = 1.0
    ) -> None:
        self.topic, self.samples, self.qos = topic, samples, qos
        self.every_s, self.delay_s = every_s, delay_s
        self.pub = RawPublisher("127.0.0.1", broker.port, f"lstm-bench-array-{id(self)}")
        self.sent_samples = 0
        self.arrays = 0
        self._t0 = time.time() - HISTORIC_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-array-load", daemon=True)

    def payload(self) -> bytes:
        """The next array: ``samples`` objects over a second of data time (``every_s`` when repeating,
        so the data's clock keeps pace with the wall clock), after the last one."""
        step = (self.every_s or 1.0) / self.samples
        first = self._t0 + self.sent_samples * step
        rows = [{"ts": first + i * step, "value": (i % 50) / 10.0} for i in range(self.samples)]
        return json.dumps(rows, separators=(",", ":")).encode()

    def _run(self) -> None:
        field = len(self.topic.encode()).to_bytes(2, "big") + self.topic.encode()
        time.sleep(self.delay_s)  # the first array is sent even if the phase ends sooner
        while True:
            self.pub.send([self.pub.packet(field, self.payload(), self.qos)])
            self.sent_samples += self.samples
            self.arrays += 1
            if self.qos:
                self.pub.read_acks()
            if not self.every_s or self._stop.wait(self.every_s):
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
