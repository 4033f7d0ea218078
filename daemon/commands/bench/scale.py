"""``lstm-stream bench scale``: NATS workers next to the MQTT path, through a real nats-server.

Prints one JSON object. Everything runs on 127.0.0.1 in a temporary folder, with real processes:

- **MQTT path** (the baseline, same run): a private Mosquitto and one daemon (``state.wal`` on, the
  default); ``messages`` live publishes over ``streams`` topics (flat out, or ``rate`` messages/s in
  all with ``--scale-rate``: every phase then gets the same load, where flat out the MQTT path, fed
  faster, runs fuller batches).
- **1 worker, 2 workers**: a nats-server per phase (JetStream, its MQTT listener, the mapping of
  ``scale/s<i>`` onto ``partitions`` partitions); workers with static ownership (worker i of n, held
  through leases); the same publishers write MQTT 3.1.1 QoS 1 to nats-server's MQTT listener, which
  maps them into the JetStream stream the workers consume.
- **Paced**: flat out, the MQTT, 1-worker and 2-worker phases each run a second round of ``messages``
  at ``paced_rate`` (``--paced-rate``, 5,000/s): CPU per message falls with the load (fuller batches),
  and flat out the paths run at different loads, so ``paced`` compares them at one (``stored``
  then counts both rounds).
- **Failover**: two lease workers (``nats.lease_ttl_s`` = ``--lease-ttl``, partition checkpoints every
  2 s), half of ``failover_messages`` published, SIGKILL of one, ``failover_s`` = seconds until the
  other consumes every partition, the second half published, the survivor stopped cleanly once its
  partition checkpoints hold everything published or ``timeout_s`` passed (``survivor_caught_up_s``:
  from the start of the second half's publishing until they did, to the checkpoints' 2 s); ``lost``
  and ``doubled`` compare each stream's sample count in the partition checkpoints with what was
  published.

Every phase's daemons are started and up before the first is measured. Rates are ``messages /
(done - first publish)``, ``done`` the first poll of /metrics at which the workers' processed counters
reached it: every 50 ms once the publishers are done, every 0.5 s while they publish (a scrape costs a
daemon 1-4 ms of CPU: 20 a second added 5-10 us to a NATS worker's figure per message); publishers,
nats-server and workers share the machine. CPU is utime + stime of each daemon and its child
processes over the phase, per message it processed; ``samples_per_batch``: per engine micro-batch.
``streams_on_two_workers``: streams tracked by both workers (their stream counts add up to
more than the streams published).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from daemon.commands.bench.broker import Broker
from daemon.commands.bench.natsd import PREFIX, NatsServer, Worker
from daemon.commands.bench.options import BenchError
from daemon.commands.bench.publishers import Publishers

POLL_PUBLISHING_S = 0.5  # /metrics polls while the publishers run (every 50 ms once they are done)


@dataclass
class ScaleOptions:
    messages: int = 60_000
    streams: int = 1000
    partitions: int = 8
    publishers: int = 2
    lease_ttl_s: float = 15.0
    failover_messages: int = 20_000
    rate: float | None = None  # messages/s in all, every phase (None: as fast as the publishers go)
    # flat out, each path then runs a second round at this many messages/s (None: not): CPU per message
    # depends on the load (a fuller batch spreads its fixed cost), so paths compare at an equal one
    paced_rate: float | None = 5000.0
    timeout_s: float = 900.0
    settle_s: float = 2.0  # no counter moved this long after the publishers finished: the rest is lost
    keep_dir: bool = False
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The scale flags on the ``bench`` subcommand (``--publishers`` and ``--keep-dir`` are shared)."""
    g = p.add_argument_group("scale")
    g.add_argument("--scale-messages", type=int, default=60_000, help="scale: messages per phase")
    g.add_argument("--scale-streams", type=int, default=1000, help="scale: streams (topics)")
    g.add_argument("--partitions", type=int, default=8, help="scale: partitions of the mapping")
    g.add_argument("--lease-ttl", type=float, default=15.0, help="scale: nats.lease_ttl_s of the failover")
    g.add_argument("--failover-messages", type=int, default=20_000, help="scale: messages around the kill")
    g.add_argument(
        "--scale-rate",
        type=float,
        default=None,
        help="scale: publish at this many messages/s in all (every phase the same load; default: flat out)",
    )
    g.add_argument(
        "--paced-rate",
        type=float,
        default=5000.0,
        help="scale: flat out, a second round of each phase at this many messages/s, the CPU per message of "
        "the paths compared at an equal load (0: no second round)",
    )


def run_cli(args: argparse.Namespace) -> int:
    """``lstm-stream bench scale``: print the JSON object; exit 0 (1 when the bench itself failed)."""
    o = ScaleOptions(
        messages=args.scale_messages,
        streams=args.scale_streams,
        partitions=args.partitions,
        publishers=getattr(args, "publishers", None) or 2,
        lease_ttl_s=args.lease_ttl,
        failover_messages=args.failover_messages,
        rate=getattr(args, "scale_rate", None),
        paced_rate=getattr(args, "paced_rate", 5000.0) or None,
        keep_dir=bool(getattr(args, "keep_dir", False)),
    )
    try:
        result = run(o)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench scale failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def run(o: ScaleOptions) -> dict[str, Any]:
    """Every phase; the result object (see the module docstring). The phases' servers and daemons
    all start at once (their start-up overlaps); each phase is then measured alone, in turn."""
    if o.messages < o.streams or o.failover_messages < 2 * o.streams or o.partitions < 2:
        raise BenchError("need messages >= streams, failover messages >= 2 x streams, partitions >= 2")
    tmp = Path(tempfile.mkdtemp(prefix="lstm-bench-scale-"))
    ok = False
    started = time.monotonic()
    ctx = mp.get_context("spawn")
    phases = [
        MqttPhase(tmp / "mqtt", o, ctx),
        NatsPhase(tmp / "w1", o, ctx, 1),
        NatsPhase(tmp / "w2", o, ctx, 2),
    ]
    phases.append(FailoverPhase(tmp / "failover", o, ctx))
    try:
        for phase in phases:
            phase.start()
        for phase in phases:  # every daemon started up (none loads the machine while one is measured)
            phase.ready()
        mqtt, one, two, fo = (phase.measure() for phase in phases)
        nats_cpu = [x or 0.0 for phase in (one, two) for x in phase["cpu_us_per_msg"]]
        paced = _paced(mqtt, one, two, o)
        result = {
            "messages": o.messages,
            "streams": o.streams,
            "partitions": o.partitions,
            "workers_1_msgs_per_s": one["msgs_per_s"],
            "workers_2_msgs_per_s": two["msgs_per_s"],
            "ratio": _ratio(two["msgs_per_s"], one["msgs_per_s"]),
            "lost": one["lost"] + two["lost"] + fo["lost"] + (paced["lost"] if paced else 0),
            "doubled": one["doubled"] + two["doubled"] + fo["doubled"] + (paced["doubled"] if paced else 0),
            "streams_on_two_workers": two["overlap"] + fo["overlap"],
            "failover_s": fo["failover_s"],
            "lease_ttl_s": o.lease_ttl_s,
            "rate": o.rate,
            "cpu_us_per_msg_per_worker": {
                "workers_1": one["cpu_us_per_msg"],
                "workers_2": two["cpu_us_per_msg"],
            },
            "mqtt_msgs_per_s": mqtt["msgs_per_s"],
            "mqtt_cpu_us_per_msg": mqtt["cpu_us_per_msg"][0],
            "nats_worker_cpu_to_mqtt": _ratio(max(nats_cpu), mqtt["cpu_us_per_msg"][0]),
            "paced": paced,
            "phases": {"mqtt": mqtt, "workers_1": one, "workers_2": two, "failover": fo},
            "seconds": round(time.monotonic() - started, 1),
        }
        ok = True
        return result
    finally:
        for phase in phases:
            phase.close()
        if o.keep_dir or not ok:
            o.log(f"[bench scale] logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _paced(mqtt: dict, one: dict, two: dict, o: ScaleOptions) -> dict[str, Any] | None:
    """The second rounds at ``paced_rate``: each path's CPU per message at the same load, and the NATS
    workers' (the higher of all) to the MQTT path's. None when not run (``--scale-rate`` set, or 0)."""
    if "paced" not in mqtt:
        return None
    rounds = {"mqtt": mqtt["paced"], "workers_1": one["paced"], "workers_2": two["paced"]}
    nats_cpu = [x or 0.0 for name in ("workers_1", "workers_2") for x in rounds[name]["cpu_us_per_msg"]]
    return {
        "rate": o.paced_rate,
        "cpu_us_per_msg": {name: r["cpu_us_per_msg"] for name, r in rounds.items()},
        "msgs_per_s": {name: r["msgs_per_s"] for name, r in rounds.items()},
        "samples_per_batch": {name: r["samples_per_batch"] for name, r in rounds.items()},
        "lost": one["paced"]["lost"] + two["paced"]["lost"],  # the NATS rounds', as the top-level count
        "doubled": one["paced"]["doubled"] + two["paced"]["doubled"],
        "nats_worker_cpu_to_mqtt": _ratio(max(nats_cpu), rounds["mqtt"]["cpu_us_per_msg"][0]),
    }


def _live_and_paced(workers: list[Worker], pubs: Publishers, o: ScaleOptions) -> dict[str, Any]:
    """:func:`_live` as configured; flat out, then also at ``paced_rate`` (under ``"paced"``)."""
    out = _live(workers, pubs, o.messages, o.streams, o)
    if o.rate is None and o.paced_rate:
        out["paced"] = _live(workers, pubs, o.messages, o.streams, replace(o, rate=o.paced_rate))
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to 3 places, or None when either is unknown (a phase that lost messages has no rate)."""
    return round(a / b, 3) if a and b else None


def _engine(o: ScaleOptions) -> dict[str, Any]:
    # every stream starts at once: no admission rate
    return {"new_streams_per_s": False, "max_streams": max(1000, 2 * o.streams)}


class Phase:
    """A phase's broker or server, daemons and publishers: started early, measured alone, closed."""

    def __init__(self, tmp: Path, o: ScaleOptions, ctx: Any) -> None:
        self.tmp, self.o, self.ctx = tmp, o, ctx
        self.server: Any = None  # Broker or NatsServer
        self.workers: list[Worker] = []
        self.pubs: Publishers | None = None

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> None:
        """Wait until the phase's daemons are up (connected, their partitions held)."""
        raise NotImplementedError

    def measure(self) -> dict[str, Any]:
        """Measure, then close (the next phase runs without this one's processes)."""
        try:
            return self._measure()
        finally:
            self.close()

    def _measure(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        if self.pubs is not None:
            self.pubs.close()
            self.pubs = None
        for w in self.workers:  # all at once: each drains and writes its checkpoints
            w.terminate()
        for w in self.workers:
            w.stop()
        if self.server is not None:
            self.server.stop()
            self.server = None


class MqttPhase(Phase):
    """The MQTT path: Mosquitto and one daemon (write-ahead log on, the default)."""

    def start(self) -> None:
        self.tmp.mkdir()
        self.server = Broker(self.tmp).start()
        mqtt = {
            "host": "127.0.0.1",
            "port": self.server.port,
            "topics": ["scale/#"],
            "client_id": "scale-mqtt",
        }
        self.workers = [Worker(self.tmp, "mqtt", {"mqtt": mqtt, "engine": _engine(self.o)}).start()]
        self.pubs = Publishers(self.ctx, self.o.publishers, self.server)

    def ready(self) -> None:
        self.workers[0].wait_for("MQTT connection", lambda m: m["mqtt_connected"] == 1, 180)

    def _measure(self) -> dict[str, Any]:
        return _live_and_paced(self.workers, self.pubs, self.o)


class NatsPhase(Phase):
    """``n`` static workers (worker i of n) on their own nats-server, fed through its MQTT listener."""

    def __init__(self, tmp: Path, o: ScaleOptions, ctx: Any, n: int) -> None:
        super().__init__(tmp, o, ctx)
        self.n = n

    def _nats(self) -> dict[str, Any]:
        return {"workers": self.n, "lease_ttl_s": self.o.lease_ttl_s}

    def start(self) -> None:
        o = self.o
        self.server = NatsServer(self.tmp / "nats", o.partitions).start()
        names = ["a", "b"] if self.n == 2 else [f"w{i}" for i in range(self.n)]
        for i, name in enumerate(names):
            nats = {"servers": [self.server.url], "partition_count": o.partitions, "worker_id": name}
            nats.update(self._nats())
            if "workers" in nats:
                nats["worker"] = i
            mqtt = {
                "host": "127.0.0.1",
                "port": self.server.mqtt_port,
                "protocol": "3.1.1",
                "client_id": name,
            }
            sections = {"ingest": {"source": "nats"}, "nats": nats, "mqtt": mqtt, "engine": _engine(o)}
            if nats.get("ownership") == "lease":
                sections["state"] = {"checkpoint_interval_s": 2.0}
            self.workers.append(Worker(self.tmp, name, sections).start())
        self.pubs = Publishers(self.ctx, o.publishers, SimpleNamespace(port=self.server.mqtt_port))

    def ready(self) -> None:
        o, n = self.o, self.n
        for w in self.workers:
            w.wait_for("partitions", lambda m: m["nats_partitions_owned"] == o.partitions // n, 180)

    def _measure(self) -> dict[str, Any]:
        o, n = self.o, self.n
        out = _live_and_paced(self.workers, self.pubs, o)
        streams = [w.metrics()["streams"] for w in self.workers]
        out["overlap"] = int(max(0, sum(streams) - o.streams)) if n > 1 else 0
        out["stored"] = self.server.stored()  # what nats-server's MQTT listener put in JetStream
        return out


def _live(workers: list[Worker], pubs: Publishers, n: int, streams: int, o: ScaleOptions) -> dict[str, Any]:
    """Publish ``n`` messages over ``streams`` topics while ``workers`` run; rate, CPU, lost, doubled."""
    first = [w.metrics() for w in workers]
    base = [m["samples_processed_total"] for m in first]
    cpu0 = [w.cpu() for w in workers]
    pubs.start(PREFIX, streams, n, qos=1, rate=o.rate)
    timeout = o.timeout_s
    deadline = time.monotonic() + timeout
    done_at = None
    last, moved = -1.0, time.monotonic()
    polled = 0.0
    while time.monotonic() < deadline:
        if not pubs.done() and time.monotonic() - polled < POLL_PUBLISHING_S:
            time.sleep(0.05)
            continue
        polled = time.monotonic()
        got = [w.processed() - b for w, b in zip(workers, base, strict=True)]
        now = time.time()
        if sum(got) >= n and done_at is None:
            done_at = now
        if sum(got) != last:
            last, moved = sum(got), time.monotonic()
        if pubs.done() and (done_at is not None or time.monotonic() - moved > o.settle_s):
            break
        time.sleep(0.05)
    else:
        raise BenchError(f"phase not done after {timeout:.0f}s ({last:.0f} of {n} processed)")
    cpu = [w.cpu() - c for w, c in zip(workers, cpu0, strict=True)]
    batches = [
        w.metrics()["batch_size_count"] - m["batch_size_count"] for w, m in zip(workers, first, strict=True)
    ]
    res = pubs.results(30)
    total = sum(got)
    return {
        "msgs_per_s": round(n / (done_at - res["first"]), 1) if done_at else None,
        "processed_per_worker": [int(g) for g in got],
        "cpu_us_per_msg": [round(c / g * 1e6, 1) if g else None for c, g in zip(cpu, got, strict=True)],
        "samples_per_batch": [round(g / b) if b else None for g, b in zip(got, batches, strict=True)],
        "published": res["published"],
        "unacked": res["unacked"],
        "lost": int(max(0, n - total)),
        "doubled": int(max(0, total - n)),
    }


class FailoverPhase(NatsPhase):
    """Two lease workers; SIGKILL one mid-stream; the survivor's take-over time; lost and doubled."""

    def __init__(self, tmp: Path, o: ScaleOptions, ctx: Any) -> None:
        super().__init__(tmp, o, ctx, 2)

    def _nats(self) -> dict[str, Any]:
        return {"ownership": "lease", "lease_ttl_s": self.o.lease_ttl_s}

    def ready(self) -> None:
        half, bound = self.o.partitions // 2, 60 + 4 * self.o.lease_ttl_s
        for w in self.workers:
            w.wait_for("its half of the partitions", lambda m: m["nats_partitions_owned"] == half, bound)

    def _measure(self) -> dict[str, Any]:
        o = self.o
        a, b = self.workers
        bound = 60 + 4 * o.lease_ttl_s
        first = o.failover_messages // 2
        sent = _sent(first, o.streams, o.publishers) + _sent(
            o.failover_messages - first, o.streams, o.publishers
        )
        part1 = _live(self.workers, self.pubs, first, o.streams, o)
        overlap = int(max(0, a.metrics()["streams"] + b.metrics()["streams"] - o.streams))
        b.kill()  # what it applied since its last partition checkpoint is only in JetStream now
        killed = time.monotonic()
        a.wait_for("every partition", lambda m: m["nats_partitions_owned"] == o.partitions, bound)
        failover_s = time.monotonic() - killed
        second_half = time.monotonic()
        part2 = _live([a], self.pubs, o.failover_messages - first, o.streams, o)
        a.settle(o.settle_s, o.timeout_s)  # the replay of b's partitions done too
        caught_up = self._caught_up(sent, o.timeout_s)
        caught_up_s = None if caught_up is None else round(caught_up - second_half, 2)
        replayed = int(a.processed() - part1["processed_per_worker"][0] - (o.failover_messages - first))
        rc = a.stop()  # hands every partition back with its final checkpoint
        if rc != 0:
            raise BenchError(f"worker a exited with {rc} at its clean stop:\n{a.log_tail()}")
        got = self.server.partition_counts()
        return {
            "failover_s": round(failover_s, 2),
            "overlap": overlap,
            "lost": sum(max(0, sent[s] - got.get(s, 0)) for s in sent),
            "doubled": sum(max(0, got[s] - sent.get(s, 0)) for s in got),
            "applied": sum(got.values()),
            "published": part1["published"] + part2["published"],
            "replayed_by_survivor": replayed,
            "survivor_caught_up_s": caught_up_s,
        }

    def _caught_up(self, sent: Counter, timeout: float) -> float | None:
        """When the partition checkpoints in the object store (written every 2 s) first held every
        published sample, or None if not within ``timeout``: a survivor that pauses longer than
        ``settle_s`` is slow (this time shows it), not lossy; ``lost`` counts what it never applied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.server.partition_counts()
            if all(got.get(k, 0) >= n for k, n in sent.items()):
                return time.monotonic()
            time.sleep(0.5)
        return None


def _sent(total: int, streams: int, k: int) -> Counter:
    """Messages per stream that :meth:`Publishers.start` sends: publisher j cycles over topics j, j+k, ..."""
    out: Counter = Counter()
    for j in range(min(k, streams)):
        share = total // k + (1 if j < total % k else 0)
        topics = list(range(j, streams, k))
        for t, i in enumerate(topics):
            out[f"{PREFIX}{i}"] += share // len(topics) + (1 if t < share % len(topics) else 0)
    return out
