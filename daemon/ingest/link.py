"""The daemon's MQTT connection: session, subscriptions, availability and raw publishes.

:class:`MqttLink` owns one paho client with a persistent session (fixed client id, clean start
off, session expiry), resubscribes after every reconnect, keeps a retained availability topic
(``online`` after connect, ``offline`` by last will or on :meth:`MqttLink.close`), and never lets
an exception escape a paho callback. Each message goes to its :class:`~daemon.ingest.inlet.Inlet`
on the network thread (parse, enqueue, count: O(1) work); the engine thread drains the queue.
Publishing is raw bytes (:meth:`MqttLink.publish`); what the payloads say is the outputs' business.

Acknowledgements: with the write-ahead log (``state.wal``, the receiver process) they are manual:
``on_delivered`` notes each message and the receiver acks it once its samples are fsynced in the log.
Without it, paho acks a QoS 1 message after ``on_message`` returns, when its samples are
already in the queue; a full queue makes ``on_message`` wait for room (bounded by
``ingest.block_s``), so the ack waits too. A crash between that ack and processing loses at most what
is queued; messages the broker redelivers (no ack yet, or a resumed session) may repeat samples,
which the engine drops as duplicates per (stream, timestamp) against its checkpoint.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.ingest.inlet import Inlet
from daemon.ingest.mqtt_client import Client
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.plain import PlainMqtt
from daemon.ratelog import RateLimitedLogger

if TYPE_CHECKING:  # the receiver child gets a daemon.plain.PlainMqtt: no pydantic in that process
    from daemon.settings import MqttSettings

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"
MAX_OUTGOING = 10_000  # QoS > 0 publishes paho may hold unacknowledged; beyond: a publish failure
# MQTT 5 Maximum Packet Size beyond the payload and topic limits: fixed header, lengths, packet id and
# properties of a PUBLISH. A larger packet the broker drops instead of sending (never buffered here).
PACKET_OVERHEAD = 4096
MQTT_MAX_PACKET = 268_435_455  # the protocol's largest (a four-byte remaining length)
CLOSE_TIMEOUT_S = 5.0


class MqttLink:
    """One paho client: persistent session in (messages to its :class:`Inlet`), availability, raw publishes.

    Nothing here raises once constructed: a broker that is down at start, goes away, or refuses
    the connection is retried by paho with backoff while :meth:`is_connected` is False.
    """

    def __init__(
        self,
        settings: MqttSettings | PlainMqtt,
        parser: PayloadParser,
        queue: IngestQueue,
        *,
        stats: LinkStats | None = None,
        rate_log: RateLimitedLogger | None = None,
        status_topic: str | None = None,
        on_status: Callable[[bytes], None] | None = None,
        on_enqueued: Callable[[], None] | None = None,
        availability: bool = True,
        on_delivered: Callable[[int, int], None] | None = None,
    ) -> None:
        """``status_topic`` (e.g. Home Assistant's ``homeassistant/status``) is subscribed too and
        its messages go to ``on_status(payload)`` on the network thread instead of the parser.
        ``on_enqueued()`` runs on the network thread after each message's samples are queued.
        ``availability``: keep the retained availability topic (will, ``online``, ``offline``); off
        for a second, receive-only connection of the same daemon. ``on_delivered(mid, qos)``: manual
        acknowledgements; it runs after each message's samples are queued and the owner acks
        ``mid`` with ``client.ack`` once they are durable (the write-ahead log)."""
        self.settings = settings
        self.queue = queue
        self.stats = stats if stats is not None else LinkStats()
        self._rlog = rate_log if rate_log is not None else RateLimitedLogger(log)
        self.inlet = Inlet(
            parser,
            queue,
            self.stats,
            self._rlog,
            status_topic=status_topic,
            on_status=on_status,
            on_enqueued=on_enqueued,
        )
        self._v5 = settings.protocol == "5"
        self._connected = threading.Event()
        self._suback_mid: int | None = None  # the connect's SUBSCRIBE, until its SUBACK
        self._connect_error: str | None = None  # last refusal logged; reset on success
        self._closed = False
        self._status_topic = status_topic if on_status is not None else None
        self._availability = availability
        self._on_delivered = on_delivered
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
            manual_ack=self._on_delivered is not None,
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
        client.on_message = self.inlet.on_message if self._on_delivered is None else self._on_message_acked
        client.on_publish_raw = self._on_publish_raw if self._on_delivered is not None else self._on_publish
        return client

    def _on_message_acked(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """With manual acks: the inlet queues the samples, then the owner notes the message to ack."""
        self.inlet.on_message(client, userdata, msg)
        self._delivered(msg.mid, msg.qos)

    def _on_publish(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        """The client's own PUBLISH reader (most messages): straight to the inlet."""
        self.inlet.on_publish(topic, payload)

    def _on_publish_raw(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        """The client's own PUBLISH reader with manual acks: as :meth:`_on_message_acked`."""
        self.inlet.on_publish(topic, payload)
        if qos:
            self._delivered(mid, qos)

    def _delivered(self, mid: int, qos: int) -> None:
        try:
            self._on_delivered(mid, qos)
        except Exception:  # see _on_connect
            log.exception("error noting a message to acknowledge")

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
        props.MaximumPacketSize = self.max_packet_size()
        return props

    def max_packet_size(self) -> int:
        """The MQTT 5 Maximum Packet Size this client announces: ``payload.max_bytes`` plus the topic
        limit and headers, so an oversized body stays at the broker (3.1.1 has no such property:
        there the parser drops it, by size, before any parsing)."""
        parser = self.inlet.parser
        return min(MQTT_MAX_PACKET, parser.max_bytes + parser.max_topic_bytes + PACKET_OVERHEAD)

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
        """True from the SUBACK of the connect's subscriptions (the CONNACK without any) to the next
        disconnect."""
        return self.stats.connected

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds pass (for start-up readiness)."""
        return self._connected.wait(timeout)

    def _mark_connected(self) -> None:
        """Connected, and the subscriptions (if any) acknowledged: what is published from now on
        reaches this client."""
        self.stats.connected = True
        self._connected.set()

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
            self._suback_mid = None
            if subscriptions:
                rc, mid = client.subscribe(subscriptions)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    log.warning("subscribe failed: %s", paho.error_string(rc))
                else:
                    self._suback_mid = mid  # connected once the broker has the subscriptions
            if self._availability:
                client.publish(self.settings.availability_topic, ONLINE, qos=1, retain=True)
            self.stats.connects += 1
            if self._suback_mid is None:
                self._mark_connected()
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
        """Log filters the broker refused (e.g. by ACL); the others still work. The SUBACK of the
        connect's subscriptions makes the link connected."""
        try:
            if mid == self._suback_mid:
                self._suback_mid = None
                self._mark_connected()
            for topic_filter, rc in zip(self.settings.topics, reason_codes, strict=False):
                if rc.is_failure:
                    self._rlog.log(
                        "subscribe:" + topic_filter, "subscription %r refused: %s", topic_filter, rc
                    )
        except Exception:  # see _on_connect
            log.exception("error in on_subscribe")

    # --- publishing (any thread) ------------------------------------------------------------

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
