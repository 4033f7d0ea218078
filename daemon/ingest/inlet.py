"""The receive hot path: each MQTT message parsed into samples and queued, or counted as a reject.

Split from the connection (:class:`~daemon.ingest.link.MqttLink`) because it is a different job: the
link keeps the session up, the inlet handles what arrives, once per message on paho's network thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from daemon.ingest.payload import BAD_NAME as _BAD_NAME
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import INTERNAL, IngestQueue, LinkStats
from daemon.ratelog import RateLimitedLogger

log = logging.getLogger(__name__)

BAD_NAME = _BAD_NAME.reason
SHOWN_CHARS = 120  # of a rejected topic in a log line (topics may be 64 KiB)
TOPIC_CACHE = 65_536  # topics remembered decoded (bytes -> str): a known one costs a dict lookup


def _shown(topic: str) -> str:
    """``topic`` as a log line may hold it: shortened, control characters escaped."""
    text = topic if len(topic) <= SHOWN_CHARS else topic[:SHOWN_CHARS] + "..."
    return text if text.isprintable() else ascii(text)


class Inlet:
    """``on_message`` for one link: parse, enqueue, count; a status-topic message goes to its callback.

    Nothing here may raise into paho's loop: an exception is counted as the ``internal`` reject.
    """

    def __init__(
        self,
        parser: PayloadParser,
        queue: IngestQueue,
        stats: LinkStats,
        rate_log: RateLimitedLogger,
        *,
        status_topic: str | None = None,
        on_status: Callable[[bytes], None] | None = None,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self.stats = stats
        self.parser = parser
        self._rlog = rate_log
        self._parse = parser.parse
        self._put_many = queue.put_many
        self._status_topic = status_topic if on_status is not None else None
        self._on_status = on_status
        self._on_enqueued = on_enqueued
        self._topics: dict[bytes, str] = {}
        self._cache_bytes = parser.max_topic_bytes

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """paho's callback (messages its own path handles): as :meth:`on_publish`."""
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a topic that is not UTF-8 names no stream
            topic = None
        self._take(topic, msg.payload)

    def on_publish(self, topic: bytes, payload: bytes) -> None:
        """Hot path, once per message from the client's own PUBLISH reader: the topic decoded once
        per distinct topic (a bounded cache), then as :meth:`on_message`."""
        name = self._topics.get(topic)
        if name is None:
            try:
                name = topic.decode("utf-8")
            except UnicodeDecodeError:
                self._take(None, payload)
                return
            if len(topic) <= self._cache_bytes:  # a topic too long to be a stream is not kept
                if len(self._topics) >= TOPIC_CACHE:  # a flood of new topics: start over, not grow
                    self._topics.clear()
                self._topics[topic] = name
        self._take(name, payload)

    def _take(self, topic: str | None, payload: bytes) -> None:
        """Count, parse, enqueue or count the reject reason (``topic`` None: not UTF-8)."""
        if self._status_topic is not None and topic == self._status_topic:
            self._status(payload)
            return
        stats = self.stats
        stats.received += 1
        if topic is None:
            stats.rejected[BAD_NAME] += 1
            self._rlog.log(BAD_NAME, "rejected payload on a topic that is not UTF-8: %s", BAD_NAME)
            return
        try:
            result = self._parse(topic, payload, time.time())
            if type(result) is list:
                if self._put_many(result):
                    self._rlog.log("queue_full", "ingest queue full: samples dropped (engine behind)")
                if self._on_enqueued is not None:
                    self._on_enqueued()
                return
            reason = result.reason
            stats.rejected[reason] = stats.rejected.get(reason, 0) + 1
            self._rlog.log(reason, "rejected payload on %s: %s", _shown(topic), reason)
        except Exception as exc:  # never raise into paho's loop
            stats.rejected[INTERNAL] += 1
            self._rlog.log(INTERNAL, "error handling a message: %r", exc, level=logging.ERROR)

    def _status(self, payload: bytes) -> None:
        """Hand a message on ``status_topic`` to ``on_status`` (it only sets a flag)."""
        try:
            self._on_status(payload)
        except Exception:  # never raise into paho's loop
            log.exception("error handling a message on %s", self._status_topic)
