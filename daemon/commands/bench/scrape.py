"""Reading the daemon's /metrics: samples, histogram quantiles as PromQL computes them, and who
scrapes during the latency phase (a private Prometheus, or the bench itself)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.commands.bench.common import popen, stop_proc, wait_port
from daemon.ports import free_port

if TYPE_CHECKING:
    from daemon.commands.bench.subscribers import Daemon

LATENCY_METRIC = "lstm_stream_ingest_latency_seconds"

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


def bucket_of(q: float, buckets: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev = 0.0
    for le, c in buckets:
        if c >= rank:
            return prev, le
        prev = le
    return None


def top_bucket(buckets: Sequence[tuple[float, float]]) -> float:
    """Upper edge of the highest bucket holding an observation (``inf`` for the +Inf bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    return next(le for le, c in buckets if c >= buckets[-1][1])


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
        self.proc = popen(
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
        stop_proc(self.proc, 10)


class Scraper(threading.Thread):
    """GET /metrics every second at ``offset`` s past the second (body read and discarded), recording
    how long each whole answer took: beside Prometheus (offset 0.5), whose scrape_duration_seconds
    also counts its own parsing and storing of the samples, this is the daemon's answer time alone."""

    def __init__(self, daemon: Daemon, offset: float = 0.0) -> None:
        super().__init__(name="bench-scraper", daemon=True)
        self.daemon_ = daemon
        self.offset = offset
        self.stop_event = threading.Event()
        self.durations: list[float] = []
        self.started: list[float] = []  # time.time() of each GET

    def run(self) -> None:
        while not self.stop_event.wait(max(0.0, 1.0 - ((time.time() - self.offset) % 1.0))):
            self.started.append(time.time())
            t = time.perf_counter()
            with contextlib.suppress(OSError):
                self.daemon_.scrape(timeout=5)
            self.durations.append(time.perf_counter() - t)

    def since(self, t0: float) -> list[float]:
        """Durations of the GETs started at or after ``t0`` (one may still be running: not strict)."""
        return [d for s, d in zip(self.started, self.durations, strict=False) if s >= t0]

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


EXPOSITION_CPU = "lstm_stream_exposition_engine_cpu_seconds_total"
EXPOSITION_REQUESTS = "lstm_stream_exposition_requests_total"


def exposition_figures(text0: bytes, text1: bytes, seconds: float) -> dict:
    """What /metrics cost the engine's process between two scrapes: CPU ms per scrape and per
    snapshot publication, how many of each, and the share of one core over ``seconds``."""
    names = [EXPOSITION_CPU, EXPOSITION_REQUESTS]
    before, after = parse_samples(text0, names), parse_samples(text1, names)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    out: dict[str, float | None] = {}
    total = 0.0
    for work in ("scrape", "publish", "health"):
        label = f'{{work="{work}"}}'
        cpu, count = (
            delta.get((EXPOSITION_CPU, label), math.nan),
            delta.get((EXPOSITION_REQUESTS, label), 0.0),
        )
        total += cpu if cpu == cpu else 0.0
        if work != "health":
            out[f"engine_cpu_ms_per_{work}"] = round(1000 * cpu / count, 3) if count else None
            out[f"{work}_requests"] = count  # every GET /metrics: Prometheus's and the bench's
    out["engine_exposition_cpu_share"] = round(total / seconds, 4) if seconds > 0 else None
    return out
