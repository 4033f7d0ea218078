"""Events, forecasts and availability on NATS (``nats.outputs = "nats"``), over the source's connection.

Subjects are today's MQTT topic names with ``/`` turned into ``.``, the mapping nats-server's MQTT
listener applies: ``lstm-stream/anomalies`` -> ``lstm-stream.anomalies``, forecast
``lstm-stream/forecast/sensors/a/b`` -> ``lstm-stream.forecast.sensors.a.b`` (an MQTT client of the same
server still sees them under the topic names). Publishes from the engine thread are queued and sent by
one task on the connection's event loop, so a batch's events cost one hop between threads.

Availability: NATS has no last will, so each worker keeps the key ``<worker_id>`` = ``online`` in the
key-value bucket ``nats.availability_bucket``, whose entries expire ``nats.lease_ttl_s`` after their
last write, rewritten every third of that; a clean stop writes ``offline``. A worker that died (or is
paused, or cut off) has no key once the TTL passed: absent or ``offline`` means unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"  # the same payloads as the MQTT availability topic


def subject_of_topic(topic: str) -> str:
    """The NATS subject of an MQTT topic name (``a/b/c`` -> ``a.b.c``), as nats-server's MQTT listener
    maps it."""
    return topic.replace("/", ".")


class NatsOutlet:
    """``publish(topic, payload, qos, retain) -> bool`` onto NATS subjects, from any thread.

    ``client()`` returns the connected nats-py client (or None while there is none); ``loop`` is the
    event loop that client runs on. QoS and retain have no NATS equivalent and are ignored: events on
    a plain subject reach the subscribers connected at the time (a JetStream stream on the events'
    subjects keeps them, if wanted)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Callable[[], Any]) -> None:
        self.loop = loop
        self.client = client
        self._pending: deque[tuple[str, bytes]] = deque()
        self._scheduled = False
        self.sent = 0
        self.failed = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Queue one message for the loop; False when there is no connection to send it on."""
        nc = self.client()
        if nc is None or not nc.is_connected:
            self.failed += 1
            return False
        self._pending.append((subject_of_topic(topic), payload))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._start_flush)
        return True

    def _start_flush(self) -> None:
        self.loop.create_task(self._flush())

    async def _flush(self) -> None:
        """Send everything queued (one task at a time; a publish queued meanwhile schedules the next)."""
        self._scheduled = False
        nc, pending = self.client(), self._pending
        while pending:
            subject, payload = pending.popleft()
            try:
                await nc.publish(subject, payload)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - disconnected meanwhile: counted, not raised
                self.failed += 1
                log.debug("publish to %s failed: %r", subject, exc)

    async def drained(self, timeout: float = 5.0) -> None:
        """Wait until everything queued went to the server (before the connection closes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._pending or self._scheduled) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        nc = self.client()
        if nc is not None and nc.is_connected:
            await nc.flush(timeout)


class Availability:
    """This worker's ``online`` key in the availability bucket, renewed until :meth:`offline`."""

    def __init__(self, js: Any, bucket: str, ttl_s: float, holder: str) -> None:
        self.js = js
        self.bucket = bucket
        self.ttl_s = ttl_s
        self.holder = holder
        self.kv: Any = None

    async def run(self) -> None:
        """Open (or create) the bucket, then write ``online`` every third of the TTL, forever."""
        from nats.js.errors import BucketNotFoundError, NotFoundError

        try:
            self.kv = await self.js.key_value(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            self.kv = await self.js.create_key_value(bucket=self.bucket, ttl=self.ttl_s, history=1)
        while True:
            try:
                await self.kv.put(self.holder, ONLINE)
            except Exception as exc:  # noqa: BLE001 - a server hiccup: the next beat tries again
                log.warning("availability: %r", exc)
            await asyncio.sleep(self.ttl_s / 3)

    async def offline(self) -> None:
        """Say this worker stopped (a clean stop: the others need not wait for the TTL)."""
        if self.kv is not None:
            await self.kv.put(self.holder, OFFLINE)
