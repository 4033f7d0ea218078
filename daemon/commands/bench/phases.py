"""The bench's phases: throughput runs (live and drain, plain and batched) and the latency phase, with
the waits and profilers they share. :mod:`daemon.commands.bench.qos` runs them per QoS level."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.commands.bench.arrays import ArrayLoad
from daemon.commands.bench.broker import Broker
from daemon.commands.bench.common import (
    cpu_seconds,
    machine_busy_s,
    median,
    popen,
    proc_tree,
    rnd,
    stop_proc,
    topic_filter,
)
from daemon.commands.bench.memory import cpu_by_role
from daemon.commands.bench.options import BenchError, Options
from daemon.commands.bench.publishers import Publishers
from daemon.commands.bench.scrape import (
    Prometheus,
    Scraper,
    bucket_of,
    exposition_figures,
    find_prometheus,
    histogram_quantile,
    latency_buckets,
    parse_samples,
    top_bucket,
)
from daemon.commands.bench.subscribers import BareSubscriber, Daemon

PROCESSING_METRIC = "lstm_stream_processing_latency_seconds"  # engine time per micro-batch

BATCH_METRIC = "lstm_stream_batch_size"


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
    cpu0 = cpu_seconds(pid)
    cpu_pub0 = sum(cpu_seconds(p) for p in c.pubs.pids)
    cpu_broker0 = cpu_seconds(c.broker.proc.pid)
    target = base + total * samples_per_msg
    timeout = 60 + total * samples_per_msg / 500.0
    t_cont = math.nan
    if drain:
        frozen = proc_tree(pid)  # the daemon's receiver process too, or it would drain while "frozen"
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
    cpu = cpu_seconds(pid) - cpu0
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
        "publishers_cpu_s": round(sum(cpu_seconds(p) for p in c.pubs.pids) - cpu_pub0, 2),
        "broker_cpu_s": round(cpu_seconds(c.broker.proc.pid) - cpu_broker0, 2),
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
        popen(
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
            stop_proc(p, 5)
    c.profilers.clear()


def latency_phase(
    c: Ctx,
    b: Daemon,
    n: int,
    qos: int,
    rate: float,
    bare: BareSubscriber | None = None,
    prefix: str = "lat/s",
    array_samples: int = 0,
) -> dict:
    """Live samples at ``rate`` to ``n`` streams while /metrics is scraped every second: the ingest
    latency's p50/p99 over the phase. ``array_samples`` > 0 adds one stream sending an array of that
    many (historic) samples 1 s into the phase, or every ``--array-every`` s (:mod:`...bench.arrays`)."""
    c.check_time()
    o = c.opts
    total = max(1, int(rate * o.latency_seconds))
    prom: Prometheus | None = None
    scraper: Scraper | None = None
    arrays: ArrayLoad | None = None
    exe = find_prometheus() if o.prometheus else None
    if o.prometheus and exe is None:
        c.notes.append("prometheus is not installed: the bench scraped /metrics every second instead")
    try:
        if exe is not None:  # started first: it applies its targets only about 5 s after start
            prom = Prometheus(exe, c.workdir, f"127.0.0.1:{b.http_port}")
        warm_up(c, b.processed, prefix, n, qos)
        if prom is not None and not prom.wait_scraping():
            c.notes.append("Prometheus did not scrape within 30 s of starting")
        scraper = Scraper(b, 0.5 if prom is not None else 0.0)  # the answer time, beside Prometheus
        scraper.start()
        time.sleep(1.2)  # a scrape or two before the phase
        text0 = b.scrape()
        h0 = latency_buckets(text0)
        base = settle(b.processed, 0.3)
        cpu0 = cpu_by_role(b.pid)
        others0 = _others_cpu_s(c, prom)
        start_profiler(c, b.pid, f"latency-qos{qos}-{n}", o.latency_seconds)
        phase_start = time.time()
        if array_samples:
            topic = topic_filter(prefix)[:-1] + "array"
            arrays = ArrayLoad(c.broker, topic, array_samples, qos, o.array_every_s).start()
        c.pubs.start(prefix, n, total, qos, rate=rate)
        pub = c.pubs.results(o.latency_seconds * 3 + 60)
        if arrays is not None:
            arrays.stop()
        deadline = time.monotonic() + 30 + o.stall_s
        got = b.processed() - base - (arrays.sent_samples if arrays is not None else 0)
        while got < pub["published"] and time.monotonic() < deadline:
            time.sleep(0.5)
            got = b.processed() - base - (arrays.sent_samples if arrays is not None else 0)
        phase_s = time.time() - phase_start
        cpu1 = cpu_by_role(b.pid)
        others = {k: v - others0[k] for k, v in _others_cpu_s(c, prom).items()}
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
            "p99_bucket_ms": [rnd(1000 * x, 1) for x in (bucket_of(0.99, delta) or (math.nan, math.nan))],
        }
        if arrays is not None:
            out.update(array_samples=array_samples, arrays_sent=arrays.arrays)
        engine = [
            (le, c1 - c0)
            for (le, c1), (_, c0) in zip(
                latency_buckets(text1, PROCESSING_METRIC),
                latency_buckets(text0, PROCESSING_METRIC),
                strict=True,
            )
        ]
        out["engine_batch_p50_ms"] = rnd(1000 * histogram_quantile(0.5, engine), 2)
        out["engine_batch_p99_ms"] = rnd(1000 * histogram_quantile(0.99, engine), 2)
        out["engine_batch_max_bucket_ms"] = rnd(1000 * top_bucket(engine), 1)
        sums = [parse_samples(t, [BATCH_METRIC + "_sum", BATCH_METRIC + "_count"]) for t in (text0, text1)]
        d_sum = sums[1].get((BATCH_METRIC + "_sum", ""), 0.0) - sums[0].get((BATCH_METRIC + "_sum", ""), 0.0)
        d_cnt = sums[1].get((BATCH_METRIC + "_count", ""), 0.0) - sums[0].get(
            (BATCH_METRIC + "_count", ""), 0.0
        )
        out["engine_batches"] = d_cnt
        out.update(exposition_figures(text0, text1, phase_s))
        cpu = {role: round(cpu1[role] - cpu0.get(role, 0.0), 2) for role in cpu1}
        out["cpu_s_by_process"] = cpu
        out.update(_cpu_budget(cpu, others, phase_s))
        if "exposition" in cpu and out.get("scrape_requests"):
            out["exposition_process_cpu_ms_per_scrape"] = rnd(
                1000 * cpu["exposition"] / out["scrape_requests"], 1
            )
        out["mean_batch_size"] = rnd(d_sum / d_cnt, 1) if d_cnt else None
        window = f"{max(2, int(phase_s) + 1)}s"
        if prom is not None:
            out["scraper"] = "prometheus"
            out["scrapes"] = rnd(prom.scalar(f'count_over_time(up{{job="lstm-stream"}}[{window}])'), 0)
            out["scrape_failures"] = rnd(
                prom.scalar(
                    f'count_over_time(up{{job="lstm-stream"}}[{window}]) - '
                    f'sum_over_time(up{{job="lstm-stream"}}[{window}])'
                ),
                0,
            )
            out["scrape_max_s"] = rnd(prom.scalar(f"max_over_time(scrape_duration_seconds[{window}])"), 3)
            out["scrape_avg_s"] = rnd(prom.scalar(f"avg_over_time(scrape_duration_seconds[{window}])"), 3)
            out["scrape_series"] = rnd(prom.scalar("scrape_samples_scraped"), 0)
        answers = scraper.since(phase_start)
        if prom is None:
            out["scraper"] = "bench"
            out["scrapes"] = len(answers)
            out["scrape_max_s"] = rnd(max(answers, default=math.nan), 3)
            out["scrape_avg_s"] = rnd(median(answers), 3)
        out["answers"] = len(answers)  # the bench's own GETs of the whole body during the phase
        out["answer_p50_ms"] = rnd(1000 * median(answers), 1)
        out["answer_max_ms"] = rnd(1000 * max(answers, default=math.nan), 1)
        if bare is not None:
            out.update(bare_latency(c, bare, n, qos, rate, total))
        return out
    finally:
        if arrays is not None:
            arrays.stop()
        if scraper is not None:
            scraper.stop()
        if prom is not None:
            prom.stop()


def _others_cpu_s(c: Ctx, prom: Prometheus | None) -> dict[str, float]:
    """CPU seconds so far of the machine (all cores busy), the broker and Prometheus."""
    return {
        "machine": machine_busy_s(),
        "broker": cpu_seconds(c.broker.proc.pid) if c.broker.proc is not None else math.nan,
        "prometheus": cpu_seconds(prom.proc.pid) if prom is not None else math.nan,
    }


def _cpu_budget(daemon: dict[str, float], others: dict[str, float], seconds: float) -> dict:
    """Where the machine's cores went during a phase (in cores): the daemon's processes, the broker,
    Prometheus, and everything else (publishers, the bench, whatever else runs), against how many
    there are: latency grows without bound once the sum nears the count."""
    s = max(seconds, 1e-9)
    used = {
        "daemon": sum(daemon.values()) / s,
        "broker": others["broker"] / s,
        "prometheus": others["prometheus"] / s,
        "machine": others["machine"] / s,
    }
    used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine" and v == v)
    return {
        "cores_used": {k: rnd(v, 2) for k, v in used.items()},
        "cores": os.cpu_count(),
    }


def latency_prefix(i: int) -> str:
    """Topics of the ``i``-th latency daemon (each its own, so only one daemon works per phase)."""
    return "lat/s" if i == 0 else f"lat{i}/s"


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
        prefix + "p50_ms": rnd(1000 * histogram_quantile(0.5, h), 2),
        prefix + "p99_ms": rnd(1000 * histogram_quantile(0.99, h), 2),
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
    return median(times)
