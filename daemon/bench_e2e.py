"""``lstm-stream bench e2e``: the daemon end to end through a real Mosquitto, next to a bare subscriber.

Prints one JSON object. Everything runs on 127.0.0.1 in a temporary folder:

- a private Mosquitto on a free port (``max_queued_messages`` large, ``max_inflight_messages 0``);
- per QoS, two daemons (``python -m daemon.cli run``), fresh state, fine-tuning off:
  ``A`` subscribes ``bench/#`` with ``http.per_stream = "none"`` and is used for throughput (the bench
  polls its ``/metrics`` several times a second to see the processed counter; with per-stream export
  on, every poll would render 10k streams and distort what is measured), ``B`` subscribes ``lat/#``
  with ``per_stream = "all"`` and is used for latency while Prometheus scrapes it every second;
- a bare paho subscriber process (same protocol and QoS, ``bare/#``) whose ``on_message`` only counts;
- ``K`` long-lived publisher processes (spawned), each owning every K-th topic, so each stream's
  messages leave one connection in order. Payloads are ``{"value": v, "ts": <time.time()>}``, so
  the daemon's ``lstm_stream_ingest_latency_seconds`` histogram measures publish -> scored. They
  write MQTT 3.1.1 PUBLISH packets themselves (:class:`RawPublisher`), 2-5 us of CPU a message
  (paho's ``publish()`` cost tens), so the load generator leaves the CPU to what is measured, as
  sensors on other machines would. Paced (the latency phase), they send at most every 1 ms.
- Nagle is off on every connection (the broker's ``set_tcp_nodelay true``, the clients' sockets),
  as recommended for the daemon (README).

Per QoS and stream count, ``rounds`` times (daemon and bare runs alternate, medians reported):
``N`` messages as fast as the publishers go; the rate is ``N / (done - first publish)``, where
``done`` is interpolated between two polls of the counter (the daemon's samples processed, the bare
subscriber's shared counter: the same method for both). ``lost`` = published - processed once the
counter stops moving. Then the latency phase on ``B`` at half the daemon's rate, with Prometheus
(or, without it, the bench) scraping ``/metrics`` every second: p50/p99 from the histogram's bucket
deltas, interpolated like ``histogram_quantile``. At the largest stream count, a batched phase sends
JSON arrays of ``batch_size`` samples per message. Idle subscribers receive nothing: each phase
publishes under its own prefix. Every phase has a timeout; all processes are stopped on exit,
Ctrl-C or an error (and by ``PR_SET_PDEATHSIG`` if the bench itself is killed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.mqtt_client import tcp_nodelay  # paho only: the child processes stay light

ROOT = Path(__file__).resolve().parents[1]
LATENCY_METRIC = "lstm_stream_ingest_latency_seconds"
PROCESSED_METRIC = "lstm_stream_samples_processed_total"
PROCESSING_METRIC = "lstm_stream_processing_latency_seconds"  # engine time per micro-batch
BATCH_METRIC = "lstm_stream_batch_size"
TARGET_RATIO = 0.85
TARGET_P99_MS = 50.0


# ------------------------------------------------------------------------------------------ options
@dataclass
class Options:
    streams: tuple[int, ...] = (1000, 10000)
    qos: tuple[int, ...] = (0, 1)
    messages: int = 200_000
    publishers: int = 2
    rounds: int = 3
    latency_seconds: float = 10.0
    batch_size: int = 20
    batch_messages: int | None = None  # default: messages // 10
    protocol: str = "5"
    finetune: str = "off"
    prometheus: bool = True
    drain: bool = True  # also measure both consumers draining a backlog (no publisher competing)
    poll_s: float = 0.2
    stall_s: float = 5.0
    timeout_s: float = 3600.0
    profile_dir: Path | None = None
    keep_dir: bool = False
    workdir: Path | None = None
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def batched_messages(self) -> int:
        return self.batch_messages if self.batch_messages is not None else max(1, self.messages // 10)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The e2e flags on the ``bench`` subcommand (``--streams`` is shared with ``bench engine``)."""
    g = p.add_argument_group("e2e")
    g.add_argument("--qos", default=None, help="e2e: comma-separated QoS levels (default 0,1)")
    g.add_argument("--messages", type=int, default=None, help="e2e: messages per run (default 200000)")
    g.add_argument("--publishers", type=int, default=None, help="e2e: publisher processes (default 2)")
    g.add_argument("--rounds", type=int, default=None, help="e2e: daemon/bare rounds per cell (default 3)")
    g.add_argument("--latency-seconds", type=float, default=None, help="e2e: latency phase (default 10)")
    g.add_argument("--batch-size", type=int, default=None, help="e2e: samples per batched message (20)")
    g.add_argument("--batch-messages", type=int, default=None, help="e2e: batched messages (messages/10)")
    g.add_argument("--protocol", choices=["5", "3.1.1"], default=None, help="e2e: MQTT version (5)")
    g.add_argument(
        "--finetune",
        choices=["off", "thread", "process"],
        default=None,
        help="e2e: the latency daemon fine-tunes back to back in this mode (default off)",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="e2e: about a minute (20k messages, 1 round, no drain runs, the bench scrapes)",
    )
    g.add_argument("--no-prometheus", action="store_true", help="e2e: the bench scrapes, not Prometheus")
    g.add_argument("--no-drain", action="store_true", help="e2e: skip the backlog-drain runs")
    g.add_argument("--profile-dir", help="e2e: py-spy the daemons into this folder (needs py-spy)")
    g.add_argument("--keep-dir", action="store_true", help="e2e: keep the temporary folder (logs)")
    g.add_argument("--timeout", type=float, default=None, help="e2e: overall limit in seconds (3600)")


def options_from_args(args: argparse.Namespace) -> Options:
    o = Options()
    if getattr(args, "quick", False):
        o = Options(
            messages=20_000,
            rounds=1,
            latency_seconds=3.0,
            stall_s=3.0,
            timeout_s=600.0,
            drain=False,
            prometheus=False,  # the bench scrapes every second itself (saves ~5 s per phase)
        )

    def pick(name: str, attr: str, conv: Callable[[Any], Any] = lambda v: v) -> None:
        v = getattr(args, name, None)
        if v is not None:
            setattr(o, attr, conv(v))

    pick("streams", "streams", lambda v: tuple(int(s) for s in str(v).split(",") if s.strip()))
    pick("qos", "qos", lambda v: tuple(int(s) for s in str(v).split(",") if s.strip()))
    pick("messages", "messages")
    pick("finetune", "finetune")
    pick("publishers", "publishers")
    pick("rounds", "rounds")
    pick("latency_seconds", "latency_seconds")
    pick("batch_size", "batch_size")
    pick("batch_messages", "batch_messages")
    pick("protocol", "protocol")
    pick("timeout", "timeout_s")
    pick("profile_dir", "profile_dir", Path)
    if getattr(args, "no_prometheus", False):
        o.prometheus = False
    if getattr(args, "no_drain", False):
        o.drain = False
    o.keep_dir = bool(getattr(args, "keep_dir", False))
    return o


def run_cli(args: argparse.Namespace) -> int:
    """``lstm-stream bench e2e``: print the JSON object; exit 0 (1 when the bench itself failed)."""
    opts = options_from_args(args)
    try:
        result = run(opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench e2e failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


class BenchError(RuntimeError):
    """A part of the setup did not come up or a phase overran its time limit."""


# ---------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _popen(cmd: Sequence[str], log_path: Path, **kw: Any) -> subprocess.Popen:
    """A child in its own session (Ctrl-C reaches only the bench, which stops it in order) that
    the kernel signals if the bench dies."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns the descriptor; ours closes below
    try:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec, **kw
        )
    finally:
        log.close()


def _stop_proc(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon's receiver and fine-tune processes count as the daemon)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (all threads), in seconds; NaN once it is gone."""
    total = 0.0
    for i, p in enumerate(_tree(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            if i == 0:
                return math.nan
    return total


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return round(total, 1) if total else math.nan


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        for k, v in table.items():
            if isinstance(v, bool):
                text = "true" if v else "false"
            elif isinstance(v, (int, float)):
                text = repr(v)
            elif isinstance(v, list):
                text = "[" + ", ".join(json.dumps(x) for x in v) + "]"
            else:
                text = json.dumps(str(v))
            lines.append(f"{k} = {text}")
        lines.append("")
    return "\n".join(lines)


def _filter(prefix: str) -> str:
    """The subscription covering topics ``<prefix><i>`` (``bench/s`` -> ``bench/#``)."""
    return prefix.rsplit("/", 1)[0] + "/#"


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def _med(runs: dict[str, list[dict]], kind: str, key: str) -> float:
    return _median([x[key] for x in runs[kind]])


def _r(x: float, nd: int = 1) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, nd)


# ------------------------------------------------------------------------------------ the broker
def find_mosquitto() -> str | None:
    for c in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if c and Path(c).exists():
            return c
    return None


class Broker:
    def __init__(self, workdir: Path) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = free_port()
        self.dir = workdir / "mosquitto"
        self.dir.mkdir()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # QoS 0 messages to a slow subscriber are dropped beyond max_queued_messages packets
            "max_queued_messages 10000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            # Nagle off towards subscribers: with it on, a subscriber that only reads (QoS 0) gets
            # its messages in bursts ~40-50 ms apart (the broker waits for delayed ACKs); the
            # setting we recommend for latency (README)
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            # as root, mosquitto would switch to its own user, which clears PR_SET_PDEATHSIG
            + ("user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = _popen([self.exe, "-c", str(self.conf)], self.dir / "mosquitto.log")
        wait_port(self.port, 15, self.proc)
        return self

    def stop(self) -> None:
        _stop_proc(self.proc, 10)


# ------------------------------------------------------------------------------------ the daemon
_SAMPLE = re.compile(rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)


def parse_samples(text: bytes, names: Sequence[str]) -> dict[tuple[str, str], float]:
    """{(name, labels text): value} for the metric ``names`` (exact names, e.g. ``x_bucket``)."""
    wanted = {n.encode() for n in names}
    out = {}
    for m in _SAMPLE.finditer(text):
        if m.group(1) in wanted:
            out[(m.group(1).decode(), (m.group(2) or b"").decode())] = float(m.group(3))
    return out


def latency_buckets(text: bytes, name: str = LATENCY_METRIC) -> list[tuple[float, float]]:
    """A histogram (default: ingest latency) as sorted (le, cumulative count), ``+Inf`` last."""
    out = []
    for (_, labels), v in parse_samples(text, [name + "_bucket"]).items():
        m = re.search(r'le="([^"]+)"', labels)
        if m:
            out.append((float(m.group(1)), v))
    return sorted(out)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative (le, count) buckets: linear inside a bucket,
    0 as the lower edge of the first, the last finite edge if the rank falls in ``+Inf``."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def _bucket_of(q: float, buckets: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev = 0.0
    for le, c in buckets:
        if c >= rank:
            return prev, le
        prev = le
    return None


def _top_bucket(buckets: Sequence[tuple[float, float]]) -> float:
    """Upper edge of the highest bucket holding an observation (``inf`` for the +Inf bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    return next(le for le, c in buckets if c >= buckets[-1][1])


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
    ) -> None:
        """``finetune``: "off", or the mode ("thread" / "process") to fine-tune in, back to back."""
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir()
        self.http_port = free_port()
        self.log_path = self.dir / "daemon.log"
        self.config = self.dir / "config.toml"
        self.config.write_text(
            _toml(
                {
                    "mqtt": {
                        "host": "127.0.0.1",
                        "port": broker.port,
                        "topics": [_filter(prefix)],
                        "qos": qos,
                        "protocol": protocol,
                        "client_id": f"lstm-stream-bench-{name}-{os.getpid()}-{time.time_ns() % 10**9}",
                        "clean_start": True,
                        "session_expiry_s": 0,
                    },
                    "http": {"bind": "127.0.0.1", "port": self.http_port, "per_stream": per_stream},
                    "state": {"directory": str(self.dir / "state"), "checkpoint_interval_s": 86400.0},
                    "finetune": (
                        {"enabled": False}
                        if finetune == "off"
                        else {"enabled": True, "mode": finetune, "interval_s": 1, "min_new_samples": 1000}
                    ),
                    "log": {"level": "INFO"},
                    "engine": {"max_streams": max_streams},
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = _popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(self.config)],
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
        _stop_proc(self.proc, 60)


# ------------------------------------------------------------------------------------ Prometheus
def find_prometheus() -> str | None:
    for c in (shutil.which("prometheus"), "/usr/bin/prometheus"):
        if c and Path(c).exists():
            return c
    return None


class Prometheus:
    def __init__(self, exe: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.dir = workdir / f"prometheus-{self.port}"
        self.dir.mkdir()
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: lstm-stream\n    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n"
        )
        self.proc = _popen(
            [
                exe,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.dir / "prometheus.log",
        )
        wait_port(self.port, 30, self.proc)

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]["result"]

    def wait_scraping(self, timeout: float = 30.0) -> bool:
        """Wait for the first scrape (Prometheus applies new targets about 5 s after start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if self.query("up"):
                    return True
            time.sleep(0.25)
        return False

    def scalar(self, expr: str) -> float:
        try:
            res = self.query(expr)
        except (OSError, ValueError, KeyError):
            return math.nan
        return float(res[0]["value"][1]) if res else math.nan

    def stop(self) -> None:
        _stop_proc(self.proc, 10)


class Scraper(threading.Thread):
    """Without Prometheus: GET /metrics every second (body discarded), recording durations."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(name="bench-scraper", daemon=True)
        self.daemon_ = daemon
        self.stop_event = threading.Event()
        self.durations: list[float] = []

    def run(self) -> None:
        while not self.stop_event.wait(max(0.0, 1.0 - (time.time() % 1.0))):
            t = time.perf_counter()
            with contextlib.suppress(OSError):
                self.daemon_.scrape(timeout=5)
            self.durations.append(time.perf_counter() - t)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


# ------------------------------------------------------------------------- child processes (spawn)
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
            c.subscribe(_filter(prefix), qos)

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


class BareSubscriber:
    def __init__(self, ctx: Any, broker: Broker, qos: int, protocol: str, prefix: str) -> None:
        from daemon.metrics import INGEST_LATENCY_BUCKETS  # the daemon's buckets: the same interpolation

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


# ------------------------------------------------------------------------------------ measuring
def wait_count(
    read: Callable[[], float], target: float, pubs: Publishers, poll_s: float, stall_s: float, timeout: float
) -> tuple[float, float, bool]:
    """Poll ``read`` until it reaches ``target`` or stops moving (after the publishers are done).

    Returns (count, time it reached the target (interpolated between the two polls around it) or
    last moved, timed_out).
    """

    def sample() -> tuple[float, float]:
        t0 = time.time()
        c = read()
        return (t0 + time.time()) / 2, c

    deadline = time.monotonic() + timeout
    prev_t, prev_c = sample()
    last_move = prev_t
    while True:
        time.sleep(poll_s)
        t, c = sample()
        if c >= target:
            frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return target, prev_t + frac * (t - prev_t), False
        if c > prev_c:
            last_move = t
        elif pubs.done() and t - last_move > stall_s:
            return c, last_move, False
        if time.monotonic() > deadline:
            return c, last_move, True
        prev_t, prev_c = t, c


def settle(read: Callable[[], float], quiet_s: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until the counter has not moved for ``quiet_s``; returns it."""
    deadline = time.monotonic() + timeout
    c = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        c2 = read()
        if c2 == c:
            return c
        c = c2
    return c


@dataclass
class Ctx:
    opts: Options
    workdir: Path
    broker: Broker
    pubs: Publishers
    mpctx: Any
    deadline: float
    notes: list[str]
    profilers: list[subprocess.Popen] = field(default_factory=list)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise BenchError(f"overall time limit of {self.opts.timeout_s:.0f}s reached")

    def log(self, msg: str) -> None:
        self.opts.log(f"[bench e2e] {msg}")


def throughput_run(
    c: Ctx,
    read: Callable[[], float],
    prefix: str,
    n: int,
    total: int,
    qos: int,
    pid: int,
    batch: int = 0,
    samples_per_msg: int = 1,
    drain: bool = False,
) -> dict:
    """One timed run of ``total`` messages; the counter must grow by ``total * samples_per_msg``.

    Live (default): publishers go as fast as they can while the subscriber ``pid`` consumes; the rate
    counts from the first publish. ``drain``: the subscriber is frozen (SIGSTOP) while everything is
    published, so the broker holds the backlog; the rate counts from SIGCONT, with no publisher
    competing for the CPU (the consumer's own ceiling).
    """
    c.check_time()
    base = settle(read)
    cpu0 = _cpu_seconds(pid)
    cpu_pub0 = sum(_cpu_seconds(p) for p in c.pubs.pids)
    cpu_broker0 = _cpu_seconds(c.broker.proc.pid)
    target = base + total * samples_per_msg
    timeout = 60 + total * samples_per_msg / 500.0
    t_cont = math.nan
    if drain:
        frozen = _tree(pid)  # the daemon's receiver process too, or it would drain while "frozen"
        for p in frozen:
            os.kill(p, signal.SIGSTOP)
        try:
            c.pubs.start(prefix, n, total, qos, batch=batch)
            c.pubs.results(timeout)
            time.sleep(0.5)  # the broker has taken everything in
        finally:
            t_cont = time.time()
            for p in frozen:
                os.kill(p, signal.SIGCONT)
    else:
        c.pubs.start(prefix, n, total, qos, batch=batch)
    count, t_done, timed_out = wait_count(read, target, c.pubs, c.opts.poll_s, c.opts.stall_s, timeout)
    pub = c.pubs.results(120)
    got = count - base
    expected = pub["published"] * samples_per_msg
    # once more after a pause: anything still trickling in is not lost
    if got < expected:
        got = settle(read, 1.0, 30) - base
    elapsed = t_done - (t_cont if drain else pub["first"])
    cpu = _cpu_seconds(pid) - cpu0
    out = {
        "published": pub["published"],
        "processed": got,
        "lost": max(0.0, expected - got),
        "publish_errors": pub["errors"],
        "seconds": round(elapsed, 3),
        "rate": got / elapsed if elapsed > 0 else math.nan,
        "publish_rate": pub["published"] / max(1e-9, pub["last"] - pub["first"]),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_msg": cpu / max(1.0, got / samples_per_msg) * 1e6,
        "cpu_cores": cpu / elapsed if elapsed > 0 else math.nan,
        "publishers_cpu_s": round(sum(_cpu_seconds(p) for p in c.pubs.pids) - cpu_pub0, 2),
        "broker_cpu_s": round(_cpu_seconds(c.broker.proc.pid) - cpu_broker0, 2),
        "timed_out": timed_out,
    }
    if timed_out:
        c.notes.append(f"a {prefix} run at qos {qos}, {n} streams timed out after {timeout:.0f}s")
    return out


def warm_up(c: Ctx, read: Callable[[], float], prefix: str, n: int, qos: int) -> None:
    """One message per topic, untimed: creates the streams (and the broker's topic nodes)."""
    base = settle(read)
    c.pubs.start(prefix, n, n, qos)
    wait_count(read, base + n, c.pubs, 0.2, 3.0, 60 + n / 200)
    c.pubs.results(60)
    settle(read)


def start_profiler(c: Ctx, pid: int, name: str, seconds: float) -> None:
    """py-spy record of ``pid`` (all threads, GIL and idle off) for ``seconds``, as raw stacks."""
    if c.opts.profile_dir is None:
        return
    exe = shutil.which("py-spy")
    if exe is None:
        c.notes.append("--profile-dir given but py-spy is not installed (pip install py-spy)")
        c.opts.profile_dir = None
        return
    c.opts.profile_dir.mkdir(parents=True, exist_ok=True)
    out = c.opts.profile_dir / f"{name}.txt"
    c.profilers.append(
        _popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--threads",
                "--format",
                "raw",
                "--rate",
                "200",
                "--duration",
                str(max(1, int(seconds))),
                "--output",
                str(out),
                "--nonblocking",
            ],
            c.opts.profile_dir / f"{name}.log",
        )
    )


def stop_profilers(c: Ctx) -> None:
    for p in c.profilers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            _stop_proc(p, 5)
    c.profilers.clear()


def latency_phase(
    c: Ctx, b: Daemon, n: int, qos: int, rate: float, bare: BareSubscriber | None = None
) -> dict:
    c.check_time()
    o = c.opts
    total = max(1, int(rate * o.latency_seconds))
    prom: Prometheus | None = None
    scraper: Scraper | None = None
    exe = find_prometheus() if o.prometheus else None
    if o.prometheus and exe is None:
        c.notes.append("prometheus is not installed: the bench scraped /metrics every second instead")
    try:
        if exe is not None:  # started first: it applies its targets only about 5 s after start
            prom = Prometheus(exe, c.workdir, f"127.0.0.1:{b.http_port}")
        warm_up(c, b.processed, "lat/s", n, qos)
        if prom is not None:
            if not prom.wait_scraping():
                c.notes.append("Prometheus did not scrape within 30 s of starting")
        else:
            scraper = Scraper(b)
            scraper.start()
        time.sleep(1.2)  # a scrape or two before the phase
        text0 = b.scrape()
        h0 = latency_buckets(text0)
        base = settle(b.processed, 0.3)
        start_profiler(c, b.pid, f"latency-qos{qos}-{n}", o.latency_seconds)
        phase_start = time.time()
        c.pubs.start("lat/s", n, total, qos, rate=rate)
        pub = c.pubs.results(o.latency_seconds * 3 + 60)
        deadline = time.monotonic() + 30 + o.stall_s
        got = b.processed() - base
        while got < pub["published"] and time.monotonic() < deadline:
            time.sleep(0.5)
            got = b.processed() - base
        phase_s = time.time() - phase_start
        text1 = b.scrape()
        h1 = latency_buckets(text1)
        stop_profilers(c)
        delta = [(le, c1 - c0) for (le, c1), (_, c0) in zip(h1, h0, strict=True)]
        observed = delta[-1][1] if delta else 0.0
        out: dict[str, Any] = {
            "rate_msgs_per_s": round(rate, 1),
            "achieved_msgs_per_s": round(pub["published"] / max(1e-9, pub["last"] - pub["first"]), 1),
            "messages": pub["published"],
            "lost": max(0.0, pub["published"] - got),
            "observed": observed,
            **latency_summary(delta),
            "p99_bucket_ms": [_r(1000 * x, 1) for x in (_bucket_of(0.99, delta) or (math.nan, math.nan))],
        }
        engine = [
            (le, c1 - c0)
            for (le, c1), (_, c0) in zip(
                latency_buckets(text1, PROCESSING_METRIC),
                latency_buckets(text0, PROCESSING_METRIC),
                strict=True,
            )
        ]
        out["engine_batch_p50_ms"] = _r(1000 * histogram_quantile(0.5, engine), 2)
        out["engine_batch_p99_ms"] = _r(1000 * histogram_quantile(0.99, engine), 2)
        out["engine_batch_max_bucket_ms"] = _r(1000 * _top_bucket(engine), 1)
        sums = [parse_samples(t, [BATCH_METRIC + "_sum", BATCH_METRIC + "_count"]) for t in (text0, text1)]
        d_sum = sums[1].get((BATCH_METRIC + "_sum", ""), 0.0) - sums[0].get((BATCH_METRIC + "_sum", ""), 0.0)
        d_cnt = sums[1].get((BATCH_METRIC + "_count", ""), 0.0) - sums[0].get(
            (BATCH_METRIC + "_count", ""), 0.0
        )
        out["engine_batches"] = d_cnt
        out["mean_batch_size"] = _r(d_sum / d_cnt, 1) if d_cnt else None
        window = f"{max(2, int(phase_s) + 1)}s"
        if prom is not None:
            out["scraper"] = "prometheus"
            out["scrapes"] = _r(prom.scalar(f'count_over_time(up{{job="lstm-stream"}}[{window}])'), 0)
            out["scrape_failures"] = _r(
                prom.scalar(
                    f'count_over_time(up{{job="lstm-stream"}}[{window}]) - '
                    f'sum_over_time(up{{job="lstm-stream"}}[{window}])'
                ),
                0,
            )
            out["scrape_max_s"] = _r(prom.scalar(f"max_over_time(scrape_duration_seconds[{window}])"), 3)
            out["scrape_avg_s"] = _r(prom.scalar(f"avg_over_time(scrape_duration_seconds[{window}])"), 3)
            out["scrape_series"] = _r(prom.scalar("scrape_samples_scraped"), 0)
        elif scraper is not None:
            d = scraper.durations[-max(1, int(phase_s)) :]
            out["scraper"] = "bench"
            out["scrapes"] = len(d)
            out["scrape_max_s"] = _r(max(d, default=math.nan), 3)
            out["scrape_avg_s"] = _r(_median(d), 3)
        if bare is not None:
            out.update(bare_latency(c, bare, n, qos, rate, total))
        return out
    finally:
        if scraper is not None:
            scraper.stop()
        if prom is not None:
            prom.stop()


def bare_latency(c: Ctx, bare: BareSubscriber, n: int, qos: int, rate: float, total: int) -> dict:
    """The floor: the same publishing (rate, count, topics) to the bare subscriber, which records
    publish-to-receive latency; what the publishers, the broker and the busy CPU add by themselves."""
    base = bare.count()
    bare.timed(True)
    try:
        c.pubs.start("bare/s", n, total, qos, rate=rate)
        pub = c.pubs.results(c.opts.latency_seconds * 3 + 60)
        deadline = time.monotonic() + 30
        while bare.count() - base < pub["published"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        bare.timed(False)
    return latency_summary(bare.latency_buckets(), "bare_")


def latency_summary(h: list[tuple[float, float]], prefix: str = "") -> dict:
    """p50, p99 and the share over 50 ms of a cumulative latency histogram (seconds), in ms."""
    out = {
        prefix + "p50_ms": _r(1000 * histogram_quantile(0.5, h), 2),
        prefix + "p99_ms": _r(1000 * histogram_quantile(0.99, h), 2),
    }
    observed = h[-1][1] if h else 0.0
    over = [cnt for le, cnt in h if le == 0.05]
    if over and observed:
        out[prefix + "share_over_50ms"] = round(1 - over[0] / observed, 5)
    return out


def scrape_cost(d: Daemon, tries: int = 2) -> float:
    """Median seconds of a GET /metrics (the daemon re-renders per-stream series once per view)."""
    times = []
    for _ in range(tries):
        time.sleep(0.6)  # a fresh view (VIEW_EVERY_S = 0.5) so the render is not a cache hit
        t = time.perf_counter()
        d.scrape()
        times.append(time.perf_counter() - t)
    return _median(times)


def run_qos(c: Ctx, qos: int) -> dict[str, dict]:
    o = c.opts
    max_streams = max(10000, max(o.streams))
    a = Daemon(
        c.workdir,
        f"A-qos{qos}",
        c.broker,
        prefix="bench/s",
        qos=qos,
        per_stream="none",
        max_streams=max_streams,
        protocol=o.protocol,
    )
    b = Daemon(
        c.workdir,
        f"B-qos{qos}",
        c.broker,
        prefix="lat/s",
        qos=qos,
        per_stream="all",
        max_streams=max_streams,
        protocol=o.protocol,
        finetune=o.finetune,
    )
    bare: BareSubscriber | None = None
    cells: dict[str, dict] = {}
    try:
        a.start()
        b.start()
        a.wait_healthy()
        b.wait_healthy()
        bare = BareSubscriber(c.mpctx, c.broker, qos, o.protocol, "bare/s")
        time.sleep(0.5)  # SUBACKs
        for n in sorted(o.streams):
            c.log(f"qos {qos}, {n} streams: warm-up")
            warm_up(c, a.processed, "bench/s", n, qos)
            warm_up(c, bare.count, "bare/s", n, qos)
            runs: dict[str, list[dict]] = {"daemon": [], "bare": [], "daemon_drain": [], "bare_drain": []}
            for r in range(o.rounds):
                if r == 0:
                    start_profiler(c, a.pid, f"throughput-qos{qos}-{n}", o.messages / 15000 + 2)
                runs["daemon"].append(throughput_run(c, a.processed, "bench/s", n, o.messages, qos, a.pid))
                stop_profilers(c)
                runs["bare"].append(throughput_run(c, bare.count, "bare/s", n, o.messages, qos, bare.pid))
                if o.drain:
                    runs["daemon_drain"].append(
                        throughput_run(c, a.processed, "bench/s", n, o.messages, qos, a.pid, drain=True)
                    )
                    runs["bare_drain"].append(
                        throughput_run(c, bare.count, "bare/s", n, o.messages, qos, bare.pid, drain=True)
                    )
                c.log(
                    f"qos {qos}, {n} streams, round {r + 1}: "
                    + ", ".join(
                        f"{k} {v[-1]['rate']:.0f}/s (lost {v[-1]['lost']:.0f})" for k, v in runs.items() if v
                    )
                )

            drate, brate = _med(runs, "daemon", "rate"), _med(runs, "bare", "rate")
            cell: dict[str, Any] = {
                "daemon_msgs_per_s": _r(drate),
                "bare_subscriber_msgs_per_s": _r(brate),
                "ratio": _r(drate / brate, 3) if brate else None,
                "lost": sum(x["lost"] for x in runs["daemon"] + runs["daemon_drain"]),
                "bare_lost": sum(x["lost"] for x in runs["bare"] + runs["bare_drain"]),
                "rss_mb": _rss_mb(a.pid),
                "daemon_cpu_us_per_msg": _r(_med(runs, "daemon", "cpu_us_per_msg")),
                "bare_cpu_us_per_msg": _r(_med(runs, "bare", "cpu_us_per_msg")),
                "daemon_cpu_cores": _r(_med(runs, "daemon", "cpu_cores"), 2),
                "bare_cpu_cores": _r(_med(runs, "bare", "cpu_cores"), 2),
                "daemon_rounds_msgs_per_s": [_r(x["rate"]) for x in runs["daemon"]],
                "bare_rounds_msgs_per_s": [_r(x["rate"]) for x in runs["bare"]],
                "publish_msgs_per_s": _r(_median([x["publish_rate"] for x in runs["daemon"] + runs["bare"]])),
                "publishers_cpu_s_per_run": _r(_med(runs, "daemon", "publishers_cpu_s"), 2),
                "broker_cpu_s_per_run": _r(_med(runs, "daemon", "broker_cpu_s"), 2),
            }
            if o.drain:
                ddr, bdr = _med(runs, "daemon_drain", "rate"), _med(runs, "bare_drain", "rate")
                cell["drain"] = {
                    "daemon_msgs_per_s": _r(ddr),
                    "bare_subscriber_msgs_per_s": _r(bdr),
                    "ratio": _r(ddr / bdr, 3) if bdr else None,
                    "lost": sum(x["lost"] for x in runs["daemon_drain"]),
                    "bare_lost": sum(x["lost"] for x in runs["bare_drain"]),
                    "daemon_cpu_us_per_msg": _r(_med(runs, "daemon_drain", "cpu_us_per_msg")),
                    "bare_cpu_us_per_msg": _r(_med(runs, "bare_drain", "cpu_us_per_msg")),
                    "daemon_cpu_cores": _r(_med(runs, "daemon_drain", "cpu_cores"), 2),
                    "bare_cpu_cores": _r(_med(runs, "bare_drain", "cpu_cores"), 2),
                    "broker_cpu_s_per_daemon_drain": _r(_med(runs, "daemon_drain", "broker_cpu_s"), 2),
                    "daemon_rounds_msgs_per_s": [_r(x["rate"]) for x in runs["daemon_drain"]],
                    "bare_rounds_msgs_per_s": [_r(x["rate"]) for x in runs["bare_drain"]],
                }
            after = a.counters()
            cell["daemon_counters"] = {k: v for k, v in after.items() if v}
            if n == max(o.streams) and o.batch_size > 1:
                c.log(f"qos {qos}, {n} streams: batched, {o.batch_size} samples per message")
                before = a.counters()
                batched = throughput_run(
                    c,
                    a.processed,
                    "bench/s",
                    n,
                    o.batched_messages,
                    qos,
                    a.pid,
                    batch=o.batch_size,
                    samples_per_msg=o.batch_size,
                )
                cell["batched_samples_per_s"] = _r(batched["rate"])
                cell["batched_msgs_per_s"] = _r(batched["rate"] / o.batch_size)
                cell["batched_lost_samples"] = batched["lost"]
                time.sleep(0.6)  # the daemon copies the queue's drop count into /metrics every 0.5 s
                dropped = a.counters().get("queue_dropped", 0.0) - before.get("queue_dropped", 0.0)
                cell["batched_queue_dropped_samples"] = dropped
                if batched["lost"]:
                    c.notes.append(
                        f"qos {qos}, {n} streams, batched: {batched['lost']:.0f} of "
                        f"{batched['published'] * o.batch_size} samples lost, {dropped:.0f} of them "
                        "counted in lstm_stream_queue_dropped_total (ingest queue full, engine behind"
                        + ("; at QoS 1 these messages had been acknowledged to the broker)" if qos else ")")
                    )
                cell["rss_mb_after_batched"] = _rss_mb(a.pid)
            c.log(f"qos {qos}, {n} streams: latency phase at {drate / 2:.0f} msgs/s")
            ft_before = b.finetune_runs()
            lat = latency_phase(c, b, n, qos, drate / 2 if drate == drate else 1000.0, bare)
            lat["finetune"] = o.finetune
            lat["finetune_runs_during_phase"] = b.finetune_runs() - ft_before
            cell["p50_latency_ms"] = lat["p50_ms"]
            cell["p99_latency_ms"] = lat["p99_ms"]
            cell["bare_p99_latency_ms"] = lat.get("bare_p99_ms")  # the same publishing, bare subscriber
            cell["latency_phase"] = lat
            cell["latency_daemon_rss_mb"] = _rss_mb(b.pid)
            tries = 1 if o.rounds == 1 else 3
            cell["scrape_s_per_stream_all"] = _r(scrape_cost(b, tries), 4)
            cell["scrape_s_per_stream_none"] = _r(scrape_cost(a, tries), 4)
            cells[str(n)] = cell
        return cells
    finally:
        stop_profilers(c)
        if bare is not None:
            bare.close()
        for d in (a, b):  # both at once: each writes a checkpoint on SIGTERM
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
        for d in (a, b):
            d.stop()


def _targets_notes(result: dict, opts: Options) -> list[str]:
    notes = []
    top = str(max(opts.streams))
    for q, cells in result["by_qos"].items():
        cell = cells.get(top)
        if not cell:
            continue
        ratio, p99 = cell.get("ratio"), cell.get("p99_latency_ms")
        if ratio is not None:
            verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
            notes.append(f"qos {q}, {top} streams: daemon/bare = {ratio:.2f} ({verdict} >= {TARGET_RATIO})")
        lost = cell.get("lost", 0) + cell.get("latency_phase", {}).get("lost", 0)
        verdict = "meets" if not lost else "MISSES"
        notes.append(f"qos {q}, {top} streams: lost {lost:.0f} ({verdict} nothing lost)")
        if p99 is not None:
            bucket = cell["latency_phase"].get("p99_bucket_ms")
            verdict = "meets" if p99 < TARGET_P99_MS and bucket[1] <= TARGET_P99_MS else "MISSES"
            notes.append(
                f"qos {q}, {top} streams: p99 {p99:.1f} ms, bucket {bucket} ms "
                f"({verdict} < {TARGET_P99_MS:g} ms)"
            )
        drain = cell.get("drain")
        if drain and drain.get("ratio") is not None:
            verdict = "meets" if drain["ratio"] >= TARGET_RATIO else "MISSES"
            notes.append(
                f"qos {q}, {top} streams: draining a backlog (no publisher competing), daemon/bare = "
                f"{drain['ratio']:.2f} ({verdict} >= {TARGET_RATIO})"
            )
    if result.get("lost_total"):
        notes.append(
            f"lost over all phases: {result['lost_total']:.0f} (MISSES nothing lost; see the notes below)"
        )
    return notes


def run(opts: Options) -> dict:
    """Run every phase; returns the result object (see the module docstring)."""
    if not opts.streams or not opts.qos or opts.messages < 1 or opts.publishers < 1:
        raise BenchError("need stream counts, QoS levels, messages >= 1 and publishers >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="lstm-bench-e2e-", dir=opts.workdir))
    old_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    broker: Broker | None = None
    pubs: Publishers | None = None
    ok = False
    started = time.monotonic()
    try:
        broker = Broker(tmp).start()
        mpctx = mp.get_context("spawn")
        pubs = Publishers(mpctx, opts.publishers, broker)
        c = Ctx(opts, tmp, broker, pubs, mpctx, time.monotonic() + opts.timeout_s, [])
        by_qos: dict[str, dict] = {}
        for qos in opts.qos:
            by_qos[str(qos)] = run_qos(c, qos)
        result = _assemble(by_qos, opts, c.notes, time.monotonic() - started, tmp)
        ok = True
        return result
    finally:
        if pubs is not None:
            pubs.close()
        if broker is not None:
            broker.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old_term)
        if opts.keep_dir or not ok:
            opts.log(f"[bench e2e] logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _assemble(by_qos: dict, opts: Options, notes: list[str], seconds: float, tmp: Path) -> dict:
    top_q = "1" if "1" in by_qos else str(max(opts.qos))
    top_n = str(max(opts.streams))
    cell = by_qos[top_q][top_n]
    keys = (
        "daemon_msgs_per_s",
        "bare_subscriber_msgs_per_s",
        "ratio",
        "lost",
        "p50_latency_ms",
        "p99_latency_ms",
        "rss_mb",
        "batched_samples_per_s",
    )
    result: dict[str, Any] = {"by_qos": by_qos}
    result.update({k: cell.get(k) for k in keys})
    result["lost_total"] = sum(
        cl.get("lost", 0) + cl.get("latency_phase", {}).get("lost", 0) + cl.get("batched_lost_samples", 0)
        for cells in by_qos.values()
        for cl in cells.values()
    )
    result["top_level_from"] = {"qos": int(top_q), "streams": int(top_n)}
    result["config"] = {
        "streams": list(opts.streams),
        "qos": list(opts.qos),
        "messages": opts.messages,
        "publishers": opts.publishers,
        "rounds": opts.rounds,
        "latency_seconds": opts.latency_seconds,
        "batch_size": opts.batch_size,
        "batched_messages": opts.batched_messages,
        "protocol": opts.protocol,
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
    }
    if opts.profile_dir is not None:
        result["config"]["profile_dir"] = str(opts.profile_dir)
    result["notes"] = [
        *_targets_notes(result, opts),
        "rates are medians over rounds; a rate is messages / (interpolated time the counter reached the "
        "total - first publish); the daemon's counter is lstm_stream_samples_processed_total, polled "
        f"every {opts.poll_s}s over /metrics; the bare subscriber's counter is shared memory polled alike",
        'throughput runs use a daemon with http.per_stream = "none" (its /metrics costs about '
        'scrape_s_per_stream_none); with "all", each poll would render every stream '
        "(scrape_s_per_stream_all) and distort the rate; the latency phase uses a second daemon with "
        '"all", scraped every second by Prometheus (or by the bench without it)',
        "each run is preceded by an untimed warm-up (one message per topic), so stream creation is "
        "not in the rates; each stream's messages come from one publisher connection, in order",
        "latency = publish time.time() in the payload -> the daemon's clock after Engine.process, from "
        "the delta of lstm_stream_ingest_latency_seconds over the phase, interpolated inside buckets "
        "(histogram_quantile): with buckets 10, 25, 50, 100 ms a p99 in (25, 50] is only known to "
        "lie in that bucket (see p99_bucket_ms and share_over_50ms)",
        "publishers and Prometheus run on the same 2 cores as the daemon and the broker; compare "
        "ratios from the same run, absolute rates wander. The publishers write MQTT packets "
        "themselves (2-5 us of CPU a message when not paced, publishers_cpu_s_per_run), so the "
        "live runs measure the consumers, not the load generator; drain.* (subscriber frozen with "
        "SIGSTOP while the broker takes the backlog, timed from SIGCONT) compares the two consumers "
        "with no publisher competing; *_cpu_us_per_msg is the CPU each spends per message, the "
        "figure least disturbed by other load. Nagle is off everywhere (broker set_tcp_nodelay); "
        "with it on, subscribers get messages in bursts ~40 ms apart",
        *notes,
    ]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.bench_e2e`` (same flags as ``lstm-stream bench e2e``)."""
    p = argparse.ArgumentParser(prog="python -m daemon.bench_e2e")
    p.add_argument("--streams", default=None)
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
