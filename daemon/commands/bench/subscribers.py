"""What is measured: the daemon (``python -m daemon run``) and a bare paho subscriber that only counts."""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from daemon.commands.bench.broker import Broker
from daemon.commands.bench.common import popen, stop_proc, toml_text, topic_filter
from daemon.commands.bench.options import BenchError
from daemon.commands.bench.publishers import Publishers
from daemon.commands.bench.scrape import parse_samples
from daemon.ingest.mqtt_client import tcp_nodelay  # paho only: the child processes stay light
from daemon.ports import free_port

ROOT = Path(__file__).resolve().parents[3]  # the checkout: the daemons import this daemon/

PROCESSED_METRIC = "lstm_stream_samples_processed_total"


class Daemon:
    """One ``lstm-stream run`` child with its own config, state folder and HTTP port."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        broker: Broker,
        *,
        prefix: str,
        qos: int,
        per_stream: str,
        max_streams: int,
        protocol: str,
        finetune: str = "off",
        wal: bool = True,
        exposition: str = "process",
    ) -> None:
        """``finetune``: "off", or the mode ("thread" / "process") to fine-tune in, back to back;
        ``wal``: the write-ahead log (``state.wal``); ``exposition``: ``http.exposition``."""
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir()
        self.http_port = free_port()
        self.log_path = self.dir / "daemon.log"
        self.config = self.dir / "config.toml"
        self.config.write_text(
            toml_text(
                {
                    "mqtt": {
                        "host": "127.0.0.1",
                        "port": broker.port,
                        "topics": [topic_filter(prefix)],
                        "qos": qos,
                        "protocol": protocol,
                        "client_id": f"lstm-stream-bench-{name}-{os.getpid()}-{time.time_ns() % 10**9}",
                        "clean_start": True,
                        "session_expiry_s": 0,
                    },
                    "http": {
                        "bind": "127.0.0.1",
                        "port": self.http_port,
                        "per_stream": per_stream,
                        "exposition": exposition,
                    },
                    "state": {
                        "directory": str(self.dir / "state"),
                        "checkpoint_interval_s": 86400.0,
                        "wal": wal,
                    },
                    "finetune": (
                        {"enabled": False}
                        if finetune == "off"
                        else {"enabled": True, "mode": finetune, "interval_s": 1, "min_new_samples": 1000}
                    ),
                    "log": {"level": "INFO"},
                    # the warm-up creates every stream at once: no admission rate
                    "engine": {"max_streams": max_streams, "new_streams_per_s": False},
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config)],
            self.log_path,
            env=env,
            cwd=self.dir,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"daemon {self.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise BenchError(f"daemon {self.name} not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def scrape(self, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=timeout) as r:
            return r.read()

    def finetune_runs(self) -> float:
        """Fine-tune runs finished so far, any outcome."""
        s = parse_samples(self.scrape(), ["lstm_stream_finetune_runs_total"])
        return float(sum(s.values()))

    def counters(self) -> dict[str, float]:
        """The totals the bench reads, from one scrape."""
        text = self.scrape()
        s = parse_samples(
            text,
            [
                PROCESSED_METRIC,
                "lstm_stream_samples_rejected_total",
                "lstm_stream_queue_dropped_total",
                "lstm_stream_messages_received_total",
                "lstm_stream_messages_rejected_total",
                "lstm_stream_events_published_total",
                "lstm_stream_wal_written_bytes_total",
                "lstm_stream_wal_syncs_total",
            ],
        )
        out: dict[str, float] = {}
        for (name, _), v in s.items():
            key = name.removeprefix("lstm_stream_").removesuffix("_total")
            out[key] = out.get(key, 0.0) + v
        return out

    def processed(self) -> float:
        return self.counters().get("samples_processed", 0.0)

    def stop(self) -> None:
        stop_proc(self.proc, 60)


_TS = re.compile(rb'"ts":\s*([0-9.eE+-]+)')


def _bare_main(
    conn: Any,
    host: str,
    port: int,
    qos: int,
    protocol: str,
    prefix: str,
    counter: Any,
    hist: Any,
    edges: tuple[float, ...],
) -> None:
    """The ceiling: a paho subscriber (network thread, like the daemon's) that only counts. On the
    command ``"latency"`` it also histograms publish-to-receive latency (the payload's ``ts``) into
    ``hist`` (cumulative counts per bucket ``edges``, then +Inf) until ``"count"``."""
    with contextlib.suppress(KeyboardInterrupt, EOFError, BrokenPipeError):
        import bisect

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        v5 = protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"lstm-bench-bare-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        subscribed = threading.Event()

        def on_message(c, u, msg):
            counter.value += 1

        def on_message_timed(c, u, msg):
            counter.value += 1
            m = _TS.search(msg.payload)
            if m:
                lat = time.time() - float(m.group(1))
                for i in range(bisect.bisect_left(edges, lat), len(edges) + 1):
                    hist[i] += 1

        def on_connect(c, u, flags, rc, props):
            c.subscribe(topic_filter(prefix), qos)

        client.on_message = on_message
        client.on_connect = on_connect
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_socket_open = lambda c, u, sock: tcp_nodelay(sock)  # as the daemon's client
        client.connect(host, port, 60)
        client.loop_start()
        if not subscribed.wait(15):
            conn.send({"error": "bare subscriber could not subscribe"})
            return
        conn.send({"ready": True, "pid": os.getpid()})
        while True:
            if not conn.poll(1.0):
                continue
            cmd = conn.recv()
            if cmd == "latency":
                client.on_message = on_message_timed
            elif cmd == "count":
                client.on_message = on_message
            else:
                break
            conn.send("ok")
        client.disconnect()
        client.loop_stop()


class BareSubscriber:
    def __init__(self, ctx: Any, broker: Broker, qos: int, protocol: str, prefix: str) -> None:
        from daemon.outputs.metrics import (
            INGEST_LATENCY_BUCKETS,  # the daemon's buckets: the same interpolation
        )

        self.counter = ctx.RawValue("q", 0)
        self.edges = INGEST_LATENCY_BUCKETS
        self.hist = ctx.RawArray("d", len(self.edges) + 1)
        self.conn, child = ctx.Pipe()
        args = (child, "127.0.0.1", broker.port, qos, protocol, prefix, self.counter, self.hist, self.edges)
        self.proc = ctx.Process(
            target=_bare_main,
            args=args,
            name="bare",
            daemon=True,
        )
        self.proc.start()
        child.close()
        msg = Publishers._recv(self.conn, 60)
        self.pid = msg["pid"]

    def count(self) -> float:
        return float(self.counter.value)

    def timed(self, on: bool) -> None:
        """Switch latency recording on (histogram reset) or off."""
        if on:
            for i in range(len(self.hist)):
                self.hist[i] = 0.0
        self.conn.send("latency" if on else "count")
        Publishers._recv(self.conn, 30)

    def latency_buckets(self) -> list[tuple[float, float]]:
        """The recorded histogram as (le, cumulative count), +Inf last, like ``latency_buckets``."""
        return list(zip((*self.edges, math.inf), list(self.hist), strict=True))

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("quit")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
