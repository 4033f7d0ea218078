"""Resident memory of a daemon with default settings once it tracks N streams, per process.

    python scripts/bench_memory.py [--streams 10000] [--samples 3] [--root CHECKOUT]
    python scripts/bench_memory.py --samples 80 --finetune   # and over one fine-tune run

Starts a private Mosquitto and ``python -m daemon run`` of ``--root`` (default: this checkout) with the
default configuration (fine-tuning on, mode "process"; runtime auto) apart from the broker, port, state
folder and no admission rate (so N streams arrive at once), publishes ``--samples`` values to each of N
topics (QoS 1), waits until all are processed and ``--settle`` seconds more, scrapes ``/metrics``
``--scrapes`` times, and prints the RSS (and PSS) of each of the daemon's processes idle and loaded,
the engine's own account of its arrays, and whether torch is mapped into the engine process. Running
it with ``--root`` on two checkouts in one session gives a before/after on the same machine (e.g.
``git archive <base> | tar -x -C /tmp/before``). With ``--finetune`` (fine-tuning due 2 s after one more
round of samples) it then samples the tree until a run ends: the peak by process, the fine-tuning
process included (it exists only while a run lasts), and the figures after (a swap replays windows).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--samples", type=int, default=3, help="values published to each stream")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose daemon is measured")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the last sample")
    ap.add_argument("--scrapes", type=int, default=10, help="full /metrics scrapes before the loaded figures")
    ap.add_argument(
        "--finetune",
        action="store_true",
        help="then wait for one fine-tune run (due 2 s after all samples are in; give --samples 80: it "
        "trains on streams with 65 or more) and report the peak over its run and the figures after",
    )
    ap.add_argument("--timeout", type=float, default=120.0)
    return ap.parse_args()


class _Daemon:
    """Just what ``memory_figures`` reads: the pid and a scrape."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def scrape(self, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=timeout) as r:
            return r.read()


def _processed(d: _Daemon) -> float:
    from daemon.commands.bench.scrape import parse_samples

    s = parse_samples(d.scrape(), ["lstm_stream_samples_processed_total"])
    return float(sum(s.values()))


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            if cond():
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _subscribed(d: _Daemon, pub, proc: subprocess.Popen, log: Path) -> float:  # noqa: ANN001
    """Publish a probe every half second until the daemon processes one (it has subscribed);
    returns the samples processed by then."""
    field = b"\x00\x06mem/s0"  # one of the streams, with older timestamps
    for i in range(240):
        pub.send([pub.packet(field, json.dumps({"value": 0.0, "ts": 1e9 + i}).encode(), 1)])
        pub.read_acks()
        try:
            done = _processed(d)
        except (urllib.error.URLError, OSError):
            done = 0.0
        if done >= 1:
            return done
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited before subscribing:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise SystemExit("the daemon never processed a probe")


def _maps_torch(pid: int) -> bool:
    """Whether libtorch is mapped into the process (imported torch, even if freed since)."""
    with open(f"/proc/{pid}/maps") as f:
        return any("libtorch" in line for line in f)


def _publish_round(pub, fields: list[bytes], value: float, ts: float) -> None:  # noqa: ANN001
    """One sample to every topic (``fields``: MQTT topic fields), QoS 1, acknowledged."""
    payload = json.dumps({"value": value, "ts": ts}).encode()
    for a in range(0, len(fields), 1000):
        pub.send([pub.packet(f, payload, 1) for f in fields[a : a + 1000]])
        pub.read_acks()


def _finetune_phase(d: _Daemon, args: argparse.Namespace, proc: subprocess.Popen, log: Path) -> dict:
    """Sample the tree's RSS until a fine-tune run ends: its peak (the fine-tuning process included),
    the outcome, and the figures once it settled (after a swap: every window replayed)."""
    from daemon.commands.bench.memory import memory_figures, rss_by_role
    from daemon.commands.bench.scrape import parse_samples

    peak: dict[str, float] = {}
    deadline = time.monotonic() + args.timeout + 600
    for i in itertools.count():
        now = rss_by_role(d.pid)
        if sum(now.values()) > sum(peak.values()):
            peak = now
        if i % 5 == 0:  # a scrape a second: parsing 100k series is not free
            runs = parse_samples(d.scrape(), ["lstm_stream_finetune_runs_total"])
            if sum(runs.values()) >= 1:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no fine-tune run finished:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    time.sleep(args.settle)
    for _ in range(args.scrapes):
        d.scrape()
    version = parse_samples(d.scrape(), ["lstm_stream_model_version"])
    return {
        "peak_total_rss_mb": round(sum(peak.values()), 1),
        "peak_rss_mb_by_process": peak,
        "runs": {labels: v for (_, labels), v in runs.items() if v},
        "model_version": max(version.values(), default=None),
        "after": memory_figures(d),
    }


def main() -> int:
    args = _args()
    from daemon.commands.bench.broker import Broker
    from daemon.commands.bench.common import popen, stop_proc, toml_text
    from daemon.commands.bench.memory import memory_figures
    from daemon.commands.bench.publishers import RawPublisher
    from daemon.ports import free_port

    with tempfile.TemporaryDirectory(prefix="lstm-mem-") as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        http_port = free_port()
        cfg = work / "config.toml"
        ft_after = args.streams * (args.samples + 1)
        cfg.write_text(
            toml_text(
                {
                    "mqtt": {"host": "127.0.0.1", "port": broker.port, "topics": ["mem/#"], "qos": 1},
                    "http": {"bind": "127.0.0.1", "port": http_port},
                    "state": {"directory": str(work / "state")},
                    "engine": {"new_streams_per_s": False},
                    # due once one more round arrives, after the loaded figures (the probes that
                    # found the daemon subscribed count too, but are fewer than a round)
                    **(
                        {"finetune": {"interval_s": 2.0, "min_new_samples": ft_after}}
                        if args.finetune
                        else {}
                    ),
                }
            )
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(args.root)}
        env.pop("NOTIFY_SOCKET", None)
        cmd = [sys.executable, "-m", "daemon", "run", "--config", str(cfg)]
        proc = popen(cmd, work / "d.log", env=env, cwd=work)  # not this cwd: -m would import its daemon/
        d = _Daemon(proc, http_port)
        try:
            _wait(lambda: d.scrape(2) is not None, 180, "the daemon", proc, work / "d.log")
            idle = memory_figures(d)
            pub = RawPublisher("127.0.0.1", broker.port, f"mem-pub-{os.getpid()}")
            base = _subscribed(d, pub, proc, work / "d.log")
            topics = [f"mem/s{i}".encode() for i in range(args.streams)]
            fields = [len(t).to_bytes(2, "big") + t for t in topics]
            t0 = time.time() - args.samples
            for k in range(args.samples):
                _publish_round(pub, fields, 1.0 + k, t0 + k)
            want = args.streams * args.samples
            _wait(
                lambda: _processed(d) >= base + want,
                args.timeout,
                f"{want} samples processed",
                proc,
                work / "d.log",
            )
            time.sleep(args.settle)
            for _ in range(args.scrapes):  # as Prometheus would: the exposition process renders each time
                d.scrape()
            out = {
                "root": str(args.root),
                "streams": args.streams,
                "samples": want,
                "idle": idle,
                "loaded": memory_figures(d),
                "engine_maps_torch": _maps_torch(d.pid),
            }
            if args.finetune:
                _publish_round(pub, fields, 0.0, t0 + args.samples)  # the run is due now
                out["finetune"] = _finetune_phase(d, args, proc, work / "d.log")
            pub.close()
        finally:
            stop_proc(proc, 60)
            broker.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
