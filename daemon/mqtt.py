"""The MQTT side of the daemon: payloads in (paho network thread -> :class:`IngestQueue`), JSON out.

:class:`MqttLink` owns one paho client with a persistent session (fixed client id, clean start
off, session expiry), resubscribes after every reconnect, keeps a retained availability topic
(``online`` after connect, ``offline`` by last will or on :meth:`MqttLink.close`), and never lets
an exception escape a paho callback. ``on_message`` runs on the network thread for every
message, so it does O(1) work: parse, enqueue, count. The engine thread drains the queue.

Acknowledgements: paho acks a QoS 1 message after ``on_message`` returns, when its samples are
already in the queue; a full queue makes ``on_message`` wait for room (bounded by
``ingest.block_s``), so the ack waits too. A crash between that ack and processing loses at most what
is queued; messages the broker redelivers (no ack yet, or a resumed session) may repeat samples,
which the engine drops as duplicates per (stream, timestamp) against its checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.mqtt_client import Client
from daemon.payload import REASONS, PayloadParser, RateLimitedLogger, Sample
from daemon.settings import MqttSettings

log = logging.getLogger(__name__)

INTERNAL = "internal"  # reject reason: an exception in the receive path (a bug, never a payload)
REJECT_REASONS = (*REASONS, INTERNAL)
ONLINE, OFFLINE = b"online", b"offline"
MAX_OUTGOING = 10_000  # QoS > 0 publishes paho may hold unacknowledged; beyond: a publish failure
CLOSE_TIMEOUT_S = 5.0


class IngestQueue:
    """Bounded FIFO of samples from the MQTT network thread (producer) to the engine (consumer).

    One producer and one consumer: ``deque.extend``/``popleft`` are atomic under the GIL, and the
    consumer only shrinks the queue while the producer only grows it, so the length checks need
    no lock. When full, the producer waits up to ``block_s`` for the engine to make room
    (backpressure: paho reads and acknowledges nothing meanwhile, so QoS 1 messages stay with the
    broker); only what still does not fit is dropped and counted in :attr:`dropped`. After
    :meth:`close` the producer never waits and nothing is dropped (the final drain takes it all).
    """

    __slots__ = ("_closed", "_event", "_q", "_space", "block_s", "blocked_s", "dropped", "maxsize", "since")

    def __init__(self, maxsize: int, block_s: float = 0.0) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.block_s = block_s
        self.dropped = 0  # samples refused because the queue was full (total); producer writes
        self.blocked_s = 0.0  # seconds the producer waited for room (total); producer writes
        self._q: deque[Sample] = deque()
        self._event = threading.Event()  # set by the producer: something to drain
        self._space = threading.Event()  # set by the consumer: room was made
        self._space.set()
        self._closed = False
        self.since = 0.0  # time.monotonic() when a sample last went into an empty queue

    def __len__(self) -> int:
        return len(self._q)

    def put_many(self, samples: list[Sample]) -> int:
        """Append ``samples`` in order, waiting for room when full; return how many were dropped."""
        if self._closed or len(samples) <= self.maxsize - len(self._q):  # the common case
            self._append(samples)
            return 0
        return self._put_waiting(samples)

    def _put_waiting(self, samples: list[Sample]) -> int:
        """Put what fits, wait for room (at most ``block_s`` in all), repeat; drop what is left."""
        q = self._q
        started = time.monotonic()
        deadline = started + self.block_s
        done, n = 0, len(samples)
        while done < n:
            free = n - done if self._closed else min(n - done, self.maxsize - len(q))
            if free > 0:
                self._append(samples[done : done + free])
                done += free
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._space.clear()
            if len(q) < self.maxsize:  # clear-then-check, as in wait()
                continue
            self._wake()
            self._space.wait(min(left, 0.1))
        self.blocked_s += time.monotonic() - started
        self.dropped += n - done
        return n - done

    def _append(self, samples: list[Sample]) -> None:
        """Extend the queue (noting when an empty one got its oldest sample) and wake the consumer."""
        q = self._q
        if not q:
            self.since = time.monotonic()
        q.extend(samples)
        self._wake()

    def _wake(self) -> None:
        # An attribute read in the common case; set() (a lock) only when the consumer cleared it.
        if not self._event.is_set():
            self._event.set()

    def due(self, max_items: int, age_s: float) -> bool:
        """A batch should go now: ``max_items`` are queued, or the oldest has waited ``age_s``."""
        n = len(self._q)
        return n >= max_items or (n > 0 and time.monotonic() - self.since >= age_s)

    def drain(self, max_items: int) -> list[Sample]:
        """Pop up to ``max_items`` samples, oldest first, and wake a producer waiting for room."""
        q = self._q
        popleft = q.popleft
        out = [popleft() for _ in range(min(max_items, len(q)))]
        if out and not self._space.is_set():
            self._space.set()
        return out

    def close(self) -> None:
        """Stop bounding the queue: release a waiting producer and accept everything from now on."""
        self._closed = True
        self._space.set()

    def wait(self, timeout: float) -> bool:
        """Block until something is queued or ``timeout`` seconds pass; True if not empty.

        Clear-then-check: a producer that appends after the check sees the flag cleared and sets it.
        """
        if self._q:
            return True
        self._event.clear()
        if self._q:
            return True
        self._event.wait(timeout)
        return bool(self._q)


@dataclass(slots=True)
class LinkStats:
    """Counters the metrics code reads as plain attributes (each has one writer thread).

    ``rejected`` holds every reason from the start, so readers may copy it while the network
    thread counts (its size never changes). Queue overflow is ``IngestQueue.dropped``.
    """

    received: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    publish_failures: int = 0


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


class MqttLink:
    """One paho client: persistent session in, availability, anomaly events and forecasts out.

    Nothing here raises once constructed: a broker that is down at start, goes away, or refuses
    the connection is retried by paho with backoff while :meth:`is_connected` is False.
    """

    def __init__(
        self,
        settings: MqttSettings,
        parser: PayloadParser,
        queue: IngestQueue,
        *,
        stats: LinkStats | None = None,
        rate_log: RateLimitedLogger | None = None,
        status_topic: str | None = None,
        on_status: Callable[[bytes], None] | None = None,
        on_enqueued: Callable[[], None] | None = None,
        availability: bool = True,
    ) -> None:
        """``status_topic`` (e.g. Home Assistant's ``homeassistant/status``) is subscribed too and
        its messages go to ``on_status(payload)`` on the network thread instead of the parser.
        ``on_enqueued()`` runs on the network thread after each message's samples are queued.
        ``availability``: keep the retained availability topic (will, ``online``, ``offline``); off
        for a second, receive-only connection of the same daemon."""
        self.settings = settings
        self.queue = queue
        self.stats = stats if stats is not None else LinkStats()
        self._rlog = rate_log if rate_log is not None else RateLimitedLogger(log)
        self._parse = parser.parse
        self._put_many = queue.put_many
        self._v5 = settings.protocol == "5"
        self._connected = threading.Event()
        self._connect_error: str | None = None  # last refusal logged; reset on success
        self._closed = False
        self._status_topic = status_topic if on_status is not None else None
        self._on_status = on_status
        self._on_enqueued = on_enqueued
        self._availability = availability
        self.client = self._make_client()

    # --- setup ------------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        """The paho client with session, credentials, TLS, will and callbacks configured."""
        s = self.settings
        protocol = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            # MQTT 5 takes clean start at connect time (and refuses clean_session here).
            clean_session=None if self._v5 else s.clean_start,
            protocol=protocol,
        )
        client.max_queued_messages_set(MAX_OUTGOING)
        self._apply_credentials(client)
        if s.tls.enabled:
            self._apply_tls(client)
        if self._availability:
            client.will_set(s.availability_topic, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _apply_credentials(self, client: paho.Client) -> None:
        """Username and a freshly read password (called again before reconnects: rotation)."""
        if self.settings.username is None:
            return
        try:
            password = self.settings.password()
        except (OSError, UnicodeDecodeError) as exc:
            self._rlog.log("password", "cannot read the MQTT password file: %s", exc)
            return  # keep the previous one
        client.username_pw_set(self.settings.username, password)

    def _apply_tls(self, client: paho.Client) -> None:
        """Verified TLS; ``insecure`` skips both the certificate and the hostname check."""
        tls = self.settings.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
        )
        if tls.insecure:
            client.tls_insecure_set(True)

    def _connect_properties(self) -> Properties | None:
        if not self._v5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        return props

    def _subscriptions(self) -> list[tuple[str, Any]]:
        """(filter, qos) pairs; on MQTT 5 retained messages only for a new subscription, so a
        resumed session does not replay retained values as fresh samples at every reconnect."""
        s = self.settings
        extra = [self._status_topic] if self._status_topic else []
        if not self._v5:
            return [(f, s.qos) for f in [*s.topics, *extra]]
        opts = SubscribeOptions(qos=s.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        # the status topic: retained or not, its current value is wanted at every connect
        return [(f, opts) for f in s.topics] + [(f, SubscribeOptions(qos=1)) for f in extra]

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start paho's network thread; never raises for a down
        broker (paho retries with backoff between ``reconnect_min_s`` and ``reconnect_max_s``)."""
        s = self.settings
        self.client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        self.client.connect_async(
            s.host,
            s.port,
            s.keepalive,
            clean_start=s.clean_start,  # MQTT 5 only; 3.1.1 used clean_session above
            properties=self._connect_properties(),
        )
        self.client.loop_start()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Publish retained ``offline``, wait for it (up to ``timeout``), disconnect, stop the loop.

        A clean disconnect suppresses the will, hence the explicit ``offline``. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self.stats.connected and self._availability:
            info = self.client.publish(self.settings.availability_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (ValueError, RuntimeError) as exc:
                log.warning("could not publish offline before disconnecting: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self._mark_disconnected()
        self._rlog.flush()

    def is_connected(self) -> bool:
        """True between a successful CONNACK (subscriptions sent) and the next disconnect."""
        return self.stats.connected

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds pass (for start-up readiness)."""
        return self._connected.wait(timeout)

    def _mark_disconnected(self) -> bool:
        """Set the state to disconnected; True if it was connected."""
        was = self.stats.connected
        self.stats.connected = False
        self._connected.clear()
        return was

    # --- paho callbacks (network thread; none may raise) ------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """Subscribe (every time: the broker may have lost the session), announce ``online``."""
        try:
            if reason.is_failure:
                self._connect_refused(str(reason))
                return
            self._connect_error = None
            subscriptions = self._subscriptions()
            if subscriptions:
                rc, _ = client.subscribe(subscriptions)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    log.warning("subscribe failed: %s", paho.error_string(rc))
            if self._availability:
                client.publish(self.settings.availability_topic, ONLINE, qos=1, retain=True)
            stats = self.stats
            stats.connects += 1
            stats.connected = True
            self._connected.set()
            log.info(
                "connected to %s:%d as %s (session present: %s)",
                self.settings.host,
                self.settings.port,
                self.settings.client_id,
                flags.session_present,
            )
        except Exception:  # a callback must not raise into paho's loop
            log.exception("error in on_connect")

    def _connect_refused(self, why: str) -> None:
        """Log a refused connection once per distinct reason; paho keeps retrying."""
        if why != self._connect_error:
            self._connect_error = why
            log.error("broker %s:%d refused the connection: %s", self.settings.host, self.settings.port, why)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        """TCP/TLS connect failed (broker down, DNS, certificate): rate-limited log, retry."""
        try:
            self._rlog.log(
                "connect_failed",
                "cannot reach broker %s:%d, retrying",
                self.settings.host,
                self.settings.port,
            )
            self._apply_credentials(client)
        except Exception:  # see _on_connect
            log.exception("error in on_connect_fail")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """Mark disconnected (also called after a refused CONNACK); reread the password."""
        try:
            if self._mark_disconnected():
                self.stats.disconnects += 1
                if not self._closed:
                    self._rlog.log("disconnected", "disconnected from broker: %s; reconnecting", reason)
            if not self._closed:
                self._apply_credentials(client)
        except Exception:  # see _on_connect
            log.exception("error in on_disconnect")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        """Log filters the broker refused (e.g. by ACL); the others still work."""
        try:
            for topic_filter, rc in zip(self.settings.topics, reason_codes, strict=False):
                if rc.is_failure:
                    self._rlog.log(
                        "subscribe:" + topic_filter, "subscription %r refused: %s", topic_filter, rc
                    )
        except Exception:  # see _on_connect
            log.exception("error in on_subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """Hot path, once per message: count, parse, enqueue or count the reject reason."""
        if self._status_topic is not None and self._route_status(msg):
            return
        stats = self.stats
        stats.received += 1
        try:
            result = self._parse(msg.topic, msg.payload, time.time())
            if type(result) is list:
                if self._put_many(result):
                    self._rlog.log("queue_full", "ingest queue full: samples dropped (engine behind)")
                if self._on_enqueued is not None:
                    self._on_enqueued()
                return
            reason = result.reason
            stats.rejected[reason] = stats.rejected.get(reason, 0) + 1
            self._rlog.log(reason, "rejected payload on %s: %s", msg.topic, reason)
        except Exception as exc:  # never raise into paho's loop
            stats.rejected[INTERNAL] += 1
            self._rlog.log(INTERNAL, "error handling a message: %r", exc, level=logging.ERROR)

    def _route_status(self, msg: paho.MQTTMessage) -> bool:
        """Hand a message on ``status_topic`` to ``on_status`` (it only sets a flag); True if it was one."""
        try:
            if msg.topic != self._status_topic:
                return False
        except UnicodeDecodeError:  # not the status topic; the sample path counts it
            return False
        try:
            self._on_status(msg.payload)
        except Exception:  # never raise into paho's loop
            log.exception("error handling a message on %s", self._status_topic)
        return True

    # --- publishing (any thread) ------------------------------------------------------------

    def publish_json(self, topic: str, obj: Any, qos: int = 1, retain: bool = False) -> bool:
        """Publish ``obj`` as compact JSON; False (counted in ``publish_failures``) when
        disconnected, paho's outgoing queue is full, or the topic/object is invalid."""
        if not self.stats.connected:
            self.stats.publish_failures += 1
            return False
        try:
            payload = dumps(obj)
        except (ValueError, TypeError) as exc:  # not JSON serializable
            self.stats.publish_failures += 1
            self._rlog.log("publish_invalid", "cannot publish to %r: %s", topic, exc)
            return False
        return self.publish(topic, payload, qos=qos, retain=retain)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Publish a raw payload (b"" with ``retain`` clears a retained topic); False (counted in
        ``publish_failures``) when disconnected, paho's outgoing queue is full, or the topic is invalid."""
        if not self.stats.connected:
            self.stats.publish_failures += 1
            return False
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as exc:  # bad topic or payload type
            self.stats.publish_failures += 1
            self._rlog.log("publish_invalid", "cannot publish to %r: %s", topic, exc)
            return False
        # NO_CONN at QoS > 0 still leaves the message queued in paho for the reconnect.
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        ):
            return True
        self.stats.publish_failures += 1
        self._rlog.log("publish_failed", "publish to %s failed: %s", topic, paho.error_string(info.rc))
        return False

    def publish_event(self, event: dict[str, Any]) -> bool:
        """An anomaly event on ``anomaly_topic`` at QoS 1."""
        return self.publish_json(self.settings.anomaly_topic, event, qos=1)

    def publish_forecast(self, stream: str, ts: float, forecast: Any) -> bool:
        """``{"ts", "forecast"}`` on ``forecast_topic`` (QoS 0) if configured; False otherwise."""
        template = self.settings.forecast_topic
        if template is None:
            return False
        return self.publish_json(template.format(stream=stream), {"ts": ts, "forecast": forecast}, qos=0)
