"""paho's client with buffered socket reads: the receive path's per-message system calls, batched.

paho reads each packet with at least three ``recv`` calls (the command byte, the length bytes one at
a time, then the rest) and runs its whole loop (``select``, write check, keepalive) once per packet
at QoS 0. At thousands of small messages a second that is most of a receiver's CPU beyond the
message handling itself. :class:`Client` reads the socket in chunks of ``READ_SIZE`` and lets paho
take its small reads from the chunk, and its ``loop_read`` keeps handling packets while whole ones
are buffered, so ``select`` and the loop's bookkeeping run once per chunk.

With ``on_publish_raw`` set, whole QoS 0/1 PUBLISH packets in the buffer skip paho altogether: they
are cut out of the buffer here and handed over as ``(topic bytes, payload, qos, mid)``, without
paho's per-packet dict updates, ``MQTTMessage``, logging call and callback dispatch (about two
thirds of a receiver's CPU a message, more on MQTT 5). Anything else (QoS 2, MQTT 5 properties such
as a topic alias, a packet cut by the chunk's end, other packet types) goes through paho as before.

Everything else is paho's: the wrapper only stands between paho and its socket, and a paho that no
longer creates sockets through ``_create_socket`` simply gets no buffering (the tests check that
this one does).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

READ_SIZE = 65536  # bytes per recv: about a thousand small messages
MAX_PACKETS = 1000  # packets per loop_read: a flood still leaves room for writes (PUBACKs) and pings
# after a small read, wait this long before the next one so that messages arriving one by one are
# read a few at a time: each wake-up (select, paho's loop pass, a GIL hand-off) costs about as much
# as handling a message; the sample waits at most this much longer
COALESCE_S = 0.002
SMALL_READ = READ_SIZE // 4
_PUBACK = struct.Struct("!BBH")  # PUBACK: type, remaining length 2, packet id


def tcp_nodelay(sock: Any) -> None:
    """Send small packets at once (Nagle off). With Nagle on, a PUBACK or an event waits for the
    broker's delayed ACK, up to ~40 ms. (Broker to us is the broker's setting: ``set_tcp_nodelay
    true`` in mosquitto.conf.)"""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # a socket that is not TCP
        pass


class BufferedSocket:
    """A socket whose ``recv`` is served from a buffer filled by one large ``recv`` at a time.

    Reads behave as on the socket (short reads, ``BlockingIOError`` or ``ssl.SSLWantReadError``
    when nothing is there, ``b""`` at end of stream); every other attribute is the socket's.
    ``pending()`` counts the buffered bytes (plus TLS's own), which paho's loop checks before
    ``select``.
    """

    __slots__ = ("sock", "_buf", "_pos", "last_read")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._pos = 0
        self.last_read = 0  # bytes the last recv of the socket returned

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes: from the buffer, else from one ``recv(READ_SIZE)`` of the socket."""
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            data = self.sock.recv(max(n, READ_SIZE))
            self.last_read = len(data)
            if len(data) <= n:  # all of it wanted, or end of stream
                return data
            self._buf = buf = data
            pos = 0
        end = min(pos + n, len(buf))
        self._pos = end
        return buf[pos:end]

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed out."""
        return len(self._buf) - self._pos

    def pending(self) -> int:
        """Bytes readable without waiting: ours plus the TLS layer's decrypted ones."""
        inner = getattr(self.sock, "pending", None)
        return self.buffered() + (inner() if inner is not None else 0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


RawHandler = Callable[[bytes, bytes, int, int], None]  # (topic, payload, qos, mid); must not raise


class Client(paho.Client):
    """``paho.Client`` with Nagle off, reading through a :class:`BufferedSocket` (TCP and TLS;
    websockets as paho makes them); ``on_publish_raw`` takes whole PUBLISH packets off the buffer."""

    coalesce_s = COALESCE_S
    on_publish_raw: RawHandler | None = None

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if not isinstance(sock, socket.socket):  # websockets: as paho made it
            return sock
        tcp_nodelay(sock)
        return BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's ``loop_read``, repeated while buffered data remains (at most ``MAX_PACKETS``
        times): one ``select`` and one pass of the loop's bookkeeping per chunk, not per packet.
        After a small read it first waits ``COALESCE_S`` for more to arrive."""
        sock = self._sock
        if not isinstance(sock, BufferedSocket):
            return super().loop_read(max_packets)
        if self.coalesce_s and not sock.buffered() and sock.last_read < SMALL_READ:
            time.sleep(self.coalesce_s)
        rc = super().loop_read(max_packets)
        raw = self.on_publish_raw
        for _ in range(MAX_PACKETS):
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is not sock:
                break
            if raw is not None and sock.buffered() and self._in_packet["command"] == 0:
                self._take_publishes(sock, raw)
            if not sock.buffered():
                break
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: list[int]) -> None:
        """Manual QoS 1 acknowledgements, all in one write: paho's ``ack`` queues one packet per
        message and wakes its network thread (a system call) for each."""
        if mids:
            packet = b"".join(map(_PUBACK.pack, repeat(0x40, len(mids)), repeat(2, len(mids)), mids))
            self._packet_queue(0x40, packet, 0, 1)

    def _take_publishes(self, sock: BufferedSocket, handler: RawHandler) -> None:
        """Hand every whole QoS 0/1 PUBLISH at the front of the buffer to ``handler``; stop at the
        first packet paho must see (other types, QoS 2, MQTT 5 properties, malformed or incomplete)."""
        buf, pos = sock._buf, sock._pos
        end = len(buf)
        v5 = self._protocol == paho.MQTTv5
        auto_ack = not self._manual_ack
        taken = pos
        try:
            while pos + 4 <= end:
                cmd = buf[pos]
                qos = (cmd >> 1) & 3
                if cmd & 0xF0 != 0x30 or qos > 1:
                    break
                i, length, shift = pos + 1, 0, 0
                while i < end and shift <= 21:  # remaining length: at most 4 bytes
                    b = buf[i]
                    i += 1
                    length |= (b & 127) << shift
                    shift += 7
                    if b < 128:
                        break
                else:
                    break  # cut by the chunk's end, or malformed: paho reads it
                stop = i + length
                if stop > end or length < 2:
                    break
                head = i + 2 + ((buf[i] << 8) | buf[i + 1])  # end of the topic
                if head == i + 2:  # no topic (an MQTT 5 alias): paho's job
                    break
                topic = buf[i + 2 : head]
                mid = 0
                if qos:
                    mid = (buf[head] << 8) | buf[head + 1] if head + 2 <= stop else -1
                    head += 2
                if v5:
                    if head >= stop or buf[head] != 0:  # properties (or malformed): paho's job
                        break
                    head += 1
                if head > stop or mid < 0:
                    break
                pos = taken = stop
                handler(topic, buf[head:stop], qos, mid)
                if qos and auto_ack:
                    self._send_puback(mid)
        finally:
            if taken != sock._pos:
                sock._pos = taken
                with self._msgtime_mutex:
                    self._last_bytes_received = paho.time_func()
