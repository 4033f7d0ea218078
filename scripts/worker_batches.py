"""Where a daemon's CPU goes per micro-batch and per message, under ``bench scale``'s load.

    PYTHONPATH=. python scripts/worker_batches.py --phase nats2 --messages 100000
    PYTHONPATH=. python scripts/worker_batches.py --phase mqtt --pyspy /tmp/mqtt.txt

Starts one of bench scale's phases (``mqtt``: Mosquitto + the MQTT daemon; ``nats1``/``nats2``: one or
two static NATS workers behind nats-server's MQTT listener), measures each daemon's idle CPU for
``--idle`` seconds and then the CPU one scrape of /metrics costs it (polled 20 times a second), then
publishes ``--messages`` as bench scale does (flat out, or ``--rate`` messages/s in all) and prints,
per daemon, from /proc (every process of it) and its /metrics: CPU us per message and per batch,
engine batches and samples per batch, the engine's wall time per batch
(``lstm_stream_processing_latency``, not CPU: it counts waits for the CPU and the GIL), the ingest
latency's p50 / p99; and the first daemon's CPU per message by thread (named when py-spy is on PATH
or ``$PYSPY``; threads that ended, e.g. HTTP requests', are missing). ``--pyspy FILE``: a py-spy
profile (``--format raw``) of the first daemon over the publishing. Extra daemon settings go through
the environment (``LSTM_STREAM_NATS__BATCH_MIN=0``).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.commands.bench.scale import MqttPhase, NatsPhase, ScaleOptions, _live  # noqa: E402
from daemon.commands.bench.scrape import histogram_quantile, latency_buckets, parse_samples  # noqa: E402

NAMES = [
    "lstm_stream_batch_size_count",
    "lstm_stream_batch_size_sum",
    "lstm_stream_processing_latency_seconds_sum",
    "lstm_stream_samples_processed_total",
]


def _scrape(worker) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/metrics", timeout=30) as r:
        text = r.read()
    out = dict.fromkeys(NAMES, 0.0)
    out["latency"] = latency_buckets(text)
    for (name, _), v in parse_samples(text, NAMES).items():
        out[name] += v
    return out


def _threads(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid`` (utime + stime, from /proc)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return out


def _names(exe: str | None, pid: int) -> dict[int, str]:
    """Thread id -> Python thread name (from ``py-spy dump``), where py-spy is available."""
    if not exe:
        return {}
    text = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    return {int(m[0]): m[1] for m in re.findall(r'Thread (?:0x)?(\d+) \([^)]*\): "([^"]+)"', text)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=["mqtt", "nats1", "nats2"], default="nats2")
    p.add_argument("--messages", type=int, default=60_000)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--pyspy", default="")
    p.add_argument("--rate", type=float, default=None, help="messages/s in all (default: as fast as they go)")
    a = p.parse_args()
    o = ScaleOptions(messages=a.messages, streams=a.streams)
    tmp = Path(tempfile.mkdtemp(prefix="worker-batches-"))
    ctx = mp.get_context("spawn")
    if a.phase == "mqtt":
        phase = MqttPhase(tmp / "p", o, ctx)
    else:
        phase = NatsPhase(tmp / "p", o, ctx, int(a.phase[-1]))
    spy = None
    try:
        phase.start()
        phase.ready()
        time.sleep(2.0)  # start-up done
        cpu0 = [w.cpu() for w in phase.workers]
        time.sleep(a.idle)
        idle = [(w.cpu() - c) / a.idle for w, c in zip(phase.workers, cpu0, strict=True)]
        cpu0 = [w.cpu() for w in phase.workers]
        polls, end = 0, time.monotonic() + a.idle
        while time.monotonic() < end:  # as bench scale polls while it publishes
            for w in phase.workers:
                w.processed()
            polls += 1
            time.sleep(0.05)
        polled = [(w.cpu() - c) / a.idle for w, c in zip(phase.workers, cpu0, strict=True)]
        scrape_ms = [(q - i) * a.idle / polls * 1e3 for q, i in zip(polled, idle, strict=True)]
        exe = os.environ.get("PYSPY") or shutil.which("py-spy")
        if a.pyspy and exe:
            cmd = [exe, "record", "--pid", str(phase.workers[0].proc.pid), "--subprocesses"]
            cmd += ["--nonblocking", "--format", "raw", "--output", a.pyspy, "--rate", "200"]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        pid = phase.workers[0].proc.pid
        names = _names(exe, pid)
        th0 = _threads(pid)
        m0 = [_scrape(w) for w in phase.workers]
        cpu0 = [w.cpu() for w in phase.workers]
        t0 = time.monotonic()
        if a.rate:
            phase.pubs.start = functools.partial(phase.pubs.start, rate=a.rate)
        out = _live(phase.workers, phase.pubs, o.messages, o.streams, o)
        wall = time.monotonic() - t0
        cpu = [w.cpu() - c for w, c in zip(phase.workers, cpu0, strict=True)]
        m1 = [_scrape(w) for w in phase.workers]
        th1 = _threads(pid)
        n0 = m1[0]["lstm_stream_samples_processed_total"] - m0[0]["lstm_stream_samples_processed_total"]
        per_thread = {}
        for tid, c in th1.items():
            name = names.get(tid, str(tid))
            per_thread[name] = round(per_thread.get(name, 0) + (c - th0.get(tid, 0.0)) / n0 * 1e6, 1)
        rows = []
        for c, i, x, y, sc in zip(cpu, idle, m0, m1, scrape_ms, strict=True):
            d = {k: y[k] - x[k] for k in NAMES}
            lat = [(le, c1 - c0) for (le, c1), (_, c0) in zip(y["latency"], x["latency"], strict=True)]
            n, b = d["lstm_stream_samples_processed_total"], d["lstm_stream_batch_size_count"]
            eng = d["lstm_stream_processing_latency_seconds_sum"]
            rows.append(
                {
                    "cpu_us_per_msg": round(c / n * 1e6, 1),
                    "idle_cpu_ms_per_s": round(i * 1e3, 1),
                    "cpu_ms_per_scrape": round(sc, 2),
                    "batches": int(b),
                    "msgs_per_batch": round(n / b, 1),
                    "engine_wall_us_per_batch": round(eng / b * 1e6),
                    "cpu_us_per_batch": round(c / b * 1e6),
                    "latency_ms_p50_p99": [round(histogram_quantile(q, lat) * 1e3) for q in (0.5, 0.99)],
                }
            )
        print(
            json.dumps(
                {
                    "phase": a.phase,
                    "msgs_per_s": out["msgs_per_s"],
                    "wall_s": round(wall, 2),
                    "lost": out["lost"],
                    "doubled": out["doubled"],
                    "workers": rows,
                    "first_worker_threads_us_per_msg": per_thread,
                },
                indent=1,
            )
        )
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        phase.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
