"""daemon.ingest.mqtt_client: buffered reads give paho the same bytes, and a real broker's bursts (plain
TCP and TLS, QoS 0 and 1, MQTT 5 and 3.1.1) arrive whole and in order through it."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import paho.mqtt.client as paho
import paho.mqtt.publish as publish
import pytest

from daemon.ingest.mqtt_client import READ_SIZE, BufferedSocket, Client
from daemon.settings import PayloadSettings, TlsSettings
from tests.broker import Broker
from tests.test_mqtt import make_link, settings_for, values, wait_for  # noqa: F401 (fixture)


class CountingSocket:
    """A socket stand-in that counts ``recv`` calls and the sizes asked for."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.asked: list[int] = []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        return self.sock.recv(n)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_small_reads_come_from_one_large_recv_in_order(pair) -> None:
    writer, reader = pair
    counting = CountingSocket(reader)
    buf = BufferedSocket(counting)  # type: ignore[arg-type]
    writer.sendall(b"0123456789")
    assert buf.recv(1) == b"0"
    assert counting.asked == [READ_SIZE]
    assert buf.buffered() == 9 and buf.pending() == 9
    assert buf.recv(3) == b"123"
    assert buf.recv(100) == b"456789"  # a short read: what is there
    assert buf.buffered() == 0 and len(counting.asked) == 1
    with pytest.raises(BlockingIOError):  # nothing there: as the socket itself says it
        buf.recv(1)
    writer.sendall(b"ab")
    assert buf.recv(5) == b"ab"  # the whole read wanted: handed over without buffering
    assert buf.buffered() == 0
    writer.close()
    assert buf.recv(1) == b""  # end of stream


def test_every_other_attribute_is_the_sockets(pair) -> None:
    _, reader = pair
    buf = BufferedSocket(reader)
    assert buf.fileno() == reader.fileno()
    assert buf.getblocking() is False
    assert buf.pending() == 0


def test_the_daemons_client_reads_through_the_buffer(broker, make_link) -> None:  # noqa: F811
    """Guards a paho upgrade: if paho stops creating sockets via ``_create_socket``, this fails
    (and so would Nagle's algorithm being off)."""
    link = make_link(settings_for(broker))
    link.start()
    wait_for(link.is_connected, what="connect")
    sock = link.client.socket()
    assert isinstance(sock, BufferedSocket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # Nagle off


@pytest.mark.parametrize(("qos", "protocol"), [(0, "5"), (1, "5"), (0, "3.1.1"), (1, "3.1.1")])
def test_a_burst_arrives_whole_and_in_order(broker, make_link, qos, protocol) -> None:  # noqa: F811
    link = make_link(settings_for(broker, qos=qos, protocol=protocol), queue_size=100_000)
    link.start()
    wait_for(link.is_connected, what="connect")
    n = 5000  # several READ_SIZE chunks, so packets straddle chunk boundaries
    msgs = [{"topic": f"sensors/s{i % 7}", "payload": f'{{"value": {i}}}', "qos": qos} for i in range(n)]
    publish.multiple(msgs, hostname=broker.host, port=broker.port, protocol=paho.MQTTv311)
    got: list[tuple[str, float]] = []

    def all_in() -> bool:
        got.extend(values(link))
        return len(got) >= n

    wait_for(all_in, timeout=30, what=f"{n} messages")
    assert got == [(m["topic"], float(i)) for i, m in enumerate(msgs)]
    assert link.stats.received == n


@pytest.fixture
def tls_broker(tmp_path: Path):
    """Mosquitto with a TLS listener and a self-signed certificate for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    # as root, mosquitto drops to its own user, which cannot read pytest's private folders
    user = "user root\n" if os.geteuid() == 0 else ""
    b = Broker(tmp_path, extra=f"certfile {cert}\nkeyfile {key}\n{user}").start()
    b.cert = cert
    yield b
    b.stop()


@pytest.mark.slow
def test_a_burst_over_tls_arrives_whole_and_in_order(tls_broker, make_link) -> None:  # noqa: F811
    tls = TlsSettings(enabled=True, ca_file=tls_broker.cert)
    link = make_link(settings_for(tls_broker, qos=0, tls=tls), PayloadSettings(), queue_size=100_000)
    link.start()
    wait_for(link.is_connected, what="TLS connect")
    assert isinstance(link.client.socket(), BufferedSocket)
    n = 3000
    msgs = [{"topic": "sensors/tls", "payload": str(i), "qos": 0} for i in range(n)]
    publish.multiple(
        msgs, hostname=tls_broker.host, port=tls_broker.port, tls={"ca_certs": str(tls_broker.cert)}
    )
    got: list[tuple[str, float]] = []

    def all_in() -> bool:
        got.extend(values(link))
        return len(got) >= n

    wait_for(all_in, timeout=30, what=f"{n} messages over TLS")
    assert [v for _, v in got] == [float(i) for i in range(n)]


def _publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, props: bytes | None = None) -> bytes:
    """One PUBLISH packet; ``props`` (MQTT 5) is the property block after its length byte."""
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if props is not None:
        body += bytes([len(props)]) + props
    body += payload
    return bytes([0x30 | qos << 1, len(body)]) + body  # bodies under 128 bytes here


@pytest.mark.parametrize("v5", [False, True])
def test_publishes_skip_paho_but_keep_their_order_with_what_paho_reads(pair, v5) -> None:
    """Whole QoS 0/1 PUBLISH packets go to ``on_publish_raw``; a packet paho must see (MQTT 5
    properties, a PINGRESP) and one cut by the end of what was sent go through paho, in order."""
    writer, reader = pair
    proto = paho.MQTTv5 if v5 else paho.MQTTv311
    client = Client(paho.CallbackAPIVersion.VERSION2, protocol=proto, manual_ack=True)
    client.coalesce_s = 0.0
    client._sock = BufferedSocket(reader)
    got: list[tuple] = []
    client.on_publish_raw = lambda topic, payload, qos, mid: got.append(("raw", topic, payload, qos, mid))
    client.on_message = lambda c, u, msg: got.append(
        ("paho", msg.topic.encode(), msg.payload, msg.qos, msg.mid)
    )
    empty = b"" if v5 else None
    packets = [
        _publish(b"a/1", b"1", props=empty),
        _publish(b"a/2", b"2", qos=1, mid=7, props=empty),
        b"\xd0\x00",  # PINGRESP
        _publish(b"a/3", b"3", props=empty),
    ]
    if v5:
        packets.append(_publish(b"a/4", b"4", props=b"\x01\x01"))  # payload format indicator
    packets.append(_publish(b"a/5", b"5", props=empty))
    last = _publish(b"a/6", b"6", qos=1, mid=8, props=empty)
    writer.sendall(b"".join(packets) + last[:4])
    client.loop_read()
    writer.sendall(last[4:])
    client.loop_read()
    # the packet that starts a read of the socket is paho's (it did the read), the rest of the chunk not
    want = [("paho", b"a/1", b"1", 0, 0), ("raw", b"a/2", b"2", 1, 7), ("raw", b"a/3", b"3", 0, 0)]
    if v5:
        want.append(("paho", b"a/4", b"4", 0, 0))
    want += [("raw", b"a/5", b"5", 0, 0), ("paho", b"a/6", b"6", 1, 8)]
    assert got == want


def test_manual_acks_go_out_in_one_write(pair) -> None:
    writer, reader = pair
    client = Client(paho.CallbackAPIVersion.VERSION2, manual_ack=True)
    client._sock = BufferedSocket(writer)
    client.ack_many([1, 258, 65535])
    assert reader.recv(100) == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"


def test_the_topic_cache_keeps_only_topics_that_can_name_a_stream() -> None:
    """Decoded topics are remembered (bounded), but never one over ``payload.max_topic_bytes``."""
    from daemon.ingest.inlet import Inlet
    from daemon.ingest.payload import PayloadParser
    from daemon.ingest.queue import IngestQueue, LinkStats
    from daemon.ratelog import RateLimitedLogger

    stats, queue = LinkStats(), IngestQueue(10)
    inlet = Inlet(
        PayloadParser(PayloadSettings(max_topic_bytes=16)),
        queue,
        stats,
        RateLimitedLogger(logging.getLogger("t")),
    )
    inlet.on_publish(b"a/b", b"1")
    inlet.on_publish(b"x" * 17, b"1")
    inlet.on_publish(b"\xff", b"1")
    assert list(inlet._topics) == [b"a/b"]
    assert stats.received == 3 and stats.rejected["topic_too_long"] == 1 and stats.rejected["bad_name"] == 1
    assert queue.drain(10)[0][0] == "a/b"
