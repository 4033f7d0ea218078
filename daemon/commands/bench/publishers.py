"""The load: long-lived publisher processes (spawned) writing MQTT 3.1.1 PUBLISH packets themselves,
each owning every K-th topic, so each stream's messages leave one connection in order."""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import time
from typing import Any

from daemon.commands.bench.broker import Broker
from daemon.commands.bench.options import BenchError
from daemon.ingest.mqtt_client import tcp_nodelay  # paho only: the child processes stay light


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (128 if n else 0))
        if not n:
            return bytes(out)


class RawPublisher:
    """A minimal MQTT 3.1.1 publisher for load: CONNECT once, then PUBLISH packets written straight
    to the socket, several per ``send``. paho's ``publish()`` costs tens of microseconds of Python a
    message, so at the rates measured here paho publishers took about a third of this 2-core
    machine, which real sensors (on other machines) do not; this one costs 2-5 us. QoS 1
    PUBACKs are read and counted. Keepalive is off, so an idle connection needs no pings."""

    MAX_UNACKED = 20_000  # QoS 1 packets in flight before waiting for acks (ids wrap at 65535)

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=15)
        tcp_nodelay(self.sock)
        cid = client_id.encode()
        var = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid  # clean session
        self.sock.sendall(b"\x10" + _remaining_length(len(var)) + var)
        ack = self._read_exactly(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"broker refused the publisher: CONNACK {ack!r}")
        self.sock.settimeout(None)  # blocking sends; acks are read with MSG_DONTWAIT
        self.acked = 0
        self._pending = b""
        self._next_id = 0

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the publisher's connection")
            data += chunk
        return data

    def packet(self, topic_field: bytes, payload: bytes, qos: int) -> bytes:
        """One PUBLISH; ``topic_field`` is the length-prefixed topic."""
        if qos:
            self._next_id = self._next_id % 65535 + 1
            body = topic_field + self._next_id.to_bytes(2, "big") + payload
            return b"\x32" + _remaining_length(len(body)) + body
        body = topic_field + payload
        return b"\x30" + _remaining_length(len(body)) + body

    def send(self, packets: list[bytes]) -> None:
        self.sock.sendall(b"".join(packets))

    def read_acks(self, wait_s: float = 0.0) -> None:
        """Count the PUBACKs that have arrived (waiting up to ``wait_s`` for the first)."""
        if wait_s and not select.select([self.sock], [], [], wait_s)[0]:
            return
        try:
            data = self._pending + self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        whole = len(data) - len(data) % 4  # the broker sends this publisher only 4-byte PUBACKs
        self.acked += whole // 4
        self._pending = data[whole:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


def _publisher_main(conn: Any, host: str, port: int, index: int) -> None:
    """A publisher process (see :class:`RawPublisher`); commands come over ``conn``."""
    with contextlib.suppress(KeyboardInterrupt, EOFError, BrokenPipeError):
        try:
            pub = RawPublisher(host, port, f"lstm-bench-pub-{os.getpid()}-{index}")
        except OSError as exc:
            conn.send({"error": f"publisher could not connect: {exc}"})
            return
        conn.send({"ready": True, "pid": os.getpid()})
        kcount: dict[str, list[int]] = {}
        while True:
            cmd = conn.recv()
            if cmd["op"] == "quit":
                break
            conn.send(_publish_run(pub, cmd, kcount))
        pub.close()


def _publish_run(pub: RawPublisher, cmd: dict, kcount: dict) -> dict:
    prefix, n, step, first = cmd["prefix"], cmd["n"], cmd["step"], cmd["first"]
    count, qos, rate, batch = cmd["count"], cmd["qos"], cmd["rate"], cmd["batch"]
    topics = [f"{prefix}{i}".encode() for i in range(first, n, step)]
    res = {"ok": 0, "errors": 0, "first": math.nan, "last": math.nan, "acked_at": math.nan}
    if not topics or count <= 0:
        return res
    fields = [len(t).to_bytes(2, "big") + t for t in topics]
    key = f"{prefix}:{first}:{n}:{step}"
    ks = kcount.setdefault(key, [0] * len(topics))
    phases = [(i % 97) * 0.0647 for i in range(first, n, step)]
    bases = [20.0 + (i % 13) for i in range(first, n, step)]
    nt = len(topics)
    last_us = [0] * nt  # batched: the newest timestamp sent per stream, in microseconds
    packet = pub.packet
    now = time.time
    sin = math.sin
    acked0 = pub.acked
    while now() < cmd["start_at"]:
        time.sleep(0.001)
    t_start = now()
    res["first"] = t_start
    m = 0
    while m < count:
        due = count if rate is None else min(count, int((now() - t_start) * rate) + 1)
        due = min(due, m + 64)  # a send at least every 64 messages: timestamps stay fresh
        parts = []
        while m < due:
            j = m % nt
            k = ks[j]
            ks[j] = k + 1
            if batch:
                # whole microseconds 1 apart ending now, and always after this stream's previous
                # message: its next one can be built sooner than one batch's span, and the daemon
                # rejects (rightly) a sample older than its stream's last or equal to a recent one
                us0 = max(int(now() * 1e6) - batch + 1, last_us[j] + 1)
                last_us[j] = us0 + batch - 1
                items = []
                for b in range(batch):
                    kk = k * batch + b
                    v = bases[j] + 5.0 * sin(kk * 0.125 + phases[j])
                    sec, us = divmod(us0 + b, 1_000_000)
                    items.append(f'{{"ts":{sec}.{us:06d},"value":{v:.4f}}}')
                payload = "[" + ",".join(items) + "]"
            else:
                v = bases[j] + 5.0 * sin(k * 0.125 + phases[j])
                payload = f'{{"value":{v:.4f},"ts":{now():.6f}}}'
            parts.append(packet(fields[j], payload.encode(), qos))
            m += 1
        if parts:
            pub.send(parts)
        if qos:
            pub.read_acks()
            while m - (pub.acked - acked0) > pub.MAX_UNACKED:
                pub.read_acks(0.05)
        if m < count and rate is not None:
            wait = t_start + m / rate - now()
            if wait > 0:  # ahead: sleep at least 1 ms, so a send carries the messages due meanwhile
                time.sleep(min(max(wait, 0.001), 0.002))  # (one send a message cost ~25 us of CPU each)
    res["last"] = now()
    # QoS 1: until every PUBACK is in (QoS 0: written is all there is)
    deadline = time.monotonic() + cmd.get("drain_s", 120.0)
    while qos and pub.acked - acked0 < m and time.monotonic() < deadline:
        pub.read_acks(0.05)
    res.update(ok=m, errors=0, acked=(pub.acked - acked0) if qos else m, acked_at=now())
    return res


class Publishers:
    """``k`` publisher processes; topic ``i`` belongs to publisher ``i % k``."""

    def __init__(self, ctx: Any, k: int, broker: Broker) -> None:
        self.k = k
        self.conns = []
        self.procs = []
        for j in range(k):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_publisher_main, args=(child, "127.0.0.1", broker.port, j), name=f"pub{j}", daemon=True
            )
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self.pids = [self._recv(c, 60)["pid"] for c in self.conns]

    @staticmethod
    def _recv(conn: Any, timeout: float) -> dict:
        if not conn.poll(timeout):
            raise BenchError("a publisher process did not answer in time")
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            raise BenchError("a child process died (see the messages above)") from None
        if "error" in msg:
            raise BenchError(msg["error"])
        return msg

    def start(
        self, prefix: str, n: int, total: int, qos: int, rate: float | None = None, batch: int = 0
    ) -> None:
        """Start publishing ``total`` messages over ``n`` topics (returns at once; see :meth:`results`)."""
        start_at = time.time() + 0.2
        for j, conn in enumerate(self.conns):
            share = total // self.k + (1 if j < total % self.k else 0)
            if j >= n:
                share = 0
            conn.send(
                {
                    "op": "run",
                    "prefix": prefix,
                    "n": n,
                    "step": self.k,
                    "first": j,
                    "count": share,
                    "qos": qos,
                    "rate": None if rate is None else rate / min(self.k, n),
                    "batch": batch,
                    "start_at": start_at,
                }
            )
        self._pending = [True] * self.k
        self._results: list[dict | None] = [None] * self.k

    def done(self) -> bool:
        for j, conn in enumerate(self.conns):
            if self._results[j] is None and conn.poll(0):
                self._results[j] = conn.recv()
        return all(r is not None for r in self._results)

    def results(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() > deadline:
                raise BenchError("publishers did not finish in time")
            time.sleep(0.05)
        rs = [r for r in self._results if r is not None]
        firsts = [r["first"] for r in rs if r["ok"]]
        return {
            "published": sum(r["ok"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "unacked": sum(r["ok"] - r.get("acked", r["ok"]) for r in rs),
            "first": min(firsts) if firsts else math.nan,
            "last": max((r["last"] for r in rs if r["ok"]), default=math.nan),
        }

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send({"op": "quit"})
        for p in self.procs:
            p.join(3)
            if p.is_alive():
                p.terminate()
                p.join(3)
            if p.is_alive():
                p.kill()
