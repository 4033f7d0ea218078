"""Chaos runs against the real daemon and a real Mosquitto: SIGKILLs and broker restarts under QoS 1 load,
then an account, from the restored state, of whether every acknowledged sample was applied once.

Samples carry strictly increasing timestamps per stream, and the engine applies a sample only when
its timestamp is newer than the stream's last one, so the applied samples of a stream are distinct
members of what was published: a stream's ``count`` in the final checkpoint equals the number
published exactly when every one was applied once; fewer is a loss. ``acked`` counts the samples the
broker acknowledged to the publisher (all of them by the end: the publisher keeps a session and
resends across broker restarts).

``python -m tests.chaos --kills 10 --broker-restarts 10`` runs the longer version and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.broker import Broker
from tests.daemon_proc import Daemon

T0 = 1_700_000_000.0


@dataclass
class Figures:
    """What a chaos run measured."""

    published: int = 0
    acked: int = 0
    applied: int = 0
    lost: int = 0
    doubled: int = 0
    kills: int = 0
    broker_restarts: int = 0
    recovery_s: list[float] = field(default_factory=list)  # SIGKILL -> /healthz 200, per kill
    streams_short: dict[str, int] = field(default_factory=dict)


class Load:
    """QoS 1 publisher of ``streams`` streams at ``rate`` messages/s with a persistent session."""

    def __init__(self, broker: Broker, streams: int, rate: float) -> None:
        self.streams, self.rate = streams, rate
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"chaos-pub-{os.getpid()}", clean_session=False
        )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.2, 1)
        self.connects = 0
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.infos: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        self.sent = [0] * streams
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_connect(self, *args) -> None:
        self.connects += 1

    def _in_order(self, seen_connects: int, acked_upto: int) -> tuple[int, int]:
        """After a reconnect, wait until everything published before it is acknowledged.

        paho writes a new PUBLISH as soon as its socket is up, before it resends what the broker
        did not acknowledge: a sensor's newer sample would reach the broker before older ones, and
        the engine refuses a sample older than its stream's newest (``out_of_order``). A sensor
        that publishes in order is what is measured here."""
        while not self.client.is_connected() and not self.stop.is_set():
            time.sleep(0.01)
        if self.connects == seen_connects:
            return seen_connects, acked_upto
        for _, info in self.infos[acked_upto:]:
            while not info._published and not self.stop.is_set():
                time.sleep(0.01)
        return self.connects, len(self.infos)

    def _run(self) -> None:
        period, k, started = 1.0 / self.rate, 0, time.monotonic()
        seen_connects, acked_upto = 1, 0
        while not self.stop.is_set():
            seen_connects, acked_upto = self._in_order(seen_connects, acked_upto)
            s = k % self.streams
            i = self.sent[s]
            payload = json.dumps({"value": 20.0 + (i % 50) / 5.0, "ts": T0 + i * 0.01})
            self.infos.append((s, self.client.publish(f"sensors/c{s}/v", payload, qos=1)))
            self.sent[s] += 1
            k += 1
            delay = started + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def finish(self, timeout: float = 120.0) -> tuple[int, list[int]]:
        """Stop publishing, wait for the acknowledgements; (total acked, acked per stream)."""
        self.stop.set()
        self.thread.join()
        deadline = time.monotonic() + timeout
        per = [0] * self.streams
        for s, info in self.infos:
            # a publish made while the broker was down reports NO_CONN but stays queued in paho and
            # goes out after the reconnect: wait for its PUBACK (is_published() would raise)
            while not info._published and time.monotonic() < deadline:
                time.sleep(0.05)
            per[s] += info._published
        self.client.loop_stop()
        self.client.disconnect()
        return sum(per), per


def daemon_config(checkpoint_s: float) -> dict:
    """The daemon under test: the log on, short checkpoints, quick reconnects."""
    return {
        "engine": {"scoring": {"warmup": 50}},
        "ingest": {"batch_ms": 10},
        "mqtt": {"reconnect_min_s": 1, "reconnect_max_s": 2},
        "state": {"checkpoint_interval_s": checkpoint_s, "wal": True},
    }


def wait_healthy(d: Daemon, timeout: float = 60.0) -> float:
    """Seconds until /healthz says 200."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if d.get("/healthz")[0] == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"not healthy after {timeout}s\n{d.log()[-3000:]}")


def restart_after_kill(d: Daemon) -> float:
    """SIGKILL the daemon's process group, start it again; seconds from the kill to healthy."""
    t0 = time.monotonic()
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    d.proc = None
    d.log_file.close()
    d.start(wait_ready=False)
    wait_healthy(d, timeout=60)
    return time.monotonic() - t0


def wait_quiet(d: Daemon, quiet_s: float = 3.0, timeout: float = 120.0) -> None:
    """Wait until the daemon has processed nothing new for ``quiet_s`` and its queue is empty."""
    deadline = time.monotonic() + timeout
    last, since = -1.0, time.monotonic()
    names = ("lstm_stream_samples_processed_total", "lstm_stream_samples_rejected_total")
    while time.monotonic() < deadline:
        m = d.metrics()
        v = sum(value for (name, _), value in m.items() if name in names)  # every reason label
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= quiet_s and m.get(("lstm_stream_queue_depth", ())) == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"still processing after {timeout}s")


def applied_counts(state: Path) -> dict[str, int]:
    """Samples applied per stream, from the newest checkpoint."""
    from lstm_stream.checkpoint import CheckpointStore

    engine, path, errors = CheckpointStore(state).load_latest()
    assert engine is not None, errors
    counts = engine.arrays["count"]
    return {name: int(counts[i]) for i, name in enumerate(engine.table.names) if name is not None}


def run(
    workdir: Path,
    *,
    kills: int,
    broker_restarts: int,
    duration_s: float,
    streams: int = 20,
    rate: float = 200.0,
    checkpoint_s: float = 5.0,
    seed: int = 1,
) -> Figures:
    """One chaos run; returns its figures (the caller asserts on them)."""
    rng = random.Random(seed)
    broker = Broker(workdir).start()
    d = Daemon(workdir, broker, daemon_config(checkpoint_s), name="chaos", session=True)
    fig = Figures()
    try:
        d.start()
        load = Load(broker, streams, rate)
        load.thread.start()
        events = ["kill"] * kills + ["broker"] * broker_restarts
        rng.shuffle(events)
        moments = sorted(rng.uniform(0.05, 0.95) * duration_s for _ in events)
        t_start = time.monotonic()
        for event, at in zip(events, moments, strict=True):
            time.sleep(max(0.0, t_start + at - time.monotonic()))
            if event == "kill":
                fig.recovery_s.append(round(restart_after_kill(d), 2))
                fig.kills += 1
            else:
                broker.stop()
                time.sleep(rng.uniform(0.2, 1.5))
                broker.start()
                fig.broker_restarts += 1
        time.sleep(max(0.0, t_start + duration_s - time.monotonic()))
        fig.acked, acked_per = load.finish()
        fig.published = sum(load.sent)
        wait_healthy(d)
        wait_quiet(d)
        rc = d.stop()
        assert rc == 0, f"exit status {rc}\n{d.log()[-3000:]}"
        counts = applied_counts(d.state)
        for s in range(streams):
            name = f"sensors/c{s}/v"
            got = counts.get(name, 0)
            fig.applied += got
            fig.lost += max(0, acked_per[s] - got)
            fig.doubled += max(0, got - load.sent[s])
            if got != acked_per[s]:
                fig.streams_short[name] = acked_per[s] - got
        return fig
    finally:
        d.close()
        broker.stop()


def recovery(workdir: Path, streams: int = 10_000, rounds: int = 5, checkpoint_s: float = 30.0) -> dict:
    """SIGKILL -> healthy at ``streams`` streams: ``rounds`` samples per stream, a checkpoint, two more
    rounds (in the log only), the kill, the restart; then the account of what was applied."""
    broker = Broker(workdir).start()
    config = daemon_config(checkpoint_s)
    config["engine"]["max_streams"] = streams
    d = Daemon(workdir, broker, config, name="recovery", session=True)
    try:
        d.start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="recovery-pub")
        pub.max_queued_messages_set(0)
        pub.max_inflight_messages_set(1000)
        pub.connect(broker.host, broker.port)
        pub.loop_start()

        def send(r: int) -> None:
            infos = [
                pub.publish(f"sensors/r{s}/v", json.dumps({"value": float(r), "ts": T0 + r}), qos=1)
                for s in range(streams)
            ]
            for info in infos:
                info.wait_for_publish(120)

        for r in range(rounds):
            send(r)
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= rounds * streams, timeout=300)
        while not list(d.state.glob("checkpoint-*.safetensors")):  # a checkpoint holds them
            time.sleep(0.1)
        send(rounds)  # only in the log (the next checkpoint is checkpoint_s away)
        send(rounds + 1)
        total = (rounds + 2) * streams
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= total, timeout=300)
        seconds = restart_after_kill(d)
        log_lines = [ln for ln in d.log().splitlines() if "replayed" in ln or "restored" in ln]
        wait_quiet(d)
        assert d.stop() == 0
        counts = applied_counts(d.state)
        pub.loop_stop()
        pub.disconnect()
        return {
            "streams": streams,
            "kill_to_healthy_s": round(seconds, 2),
            "applied": sum(counts.values()),
            "expected": total,
            "log": log_lines[-2:],
        }
    finally:
        d.close()
        broker.stop()


def main() -> None:
    """The longer run, from the command line; prints the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--broker-restarts", type=int, default=10)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--checkpoint-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="keep the logs and state here (default: a temporary folder)")
    ap.add_argument(
        "--recovery-streams", type=int, help="instead: time SIGKILL -> healthy at this many streams"
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.workdir:
            a.workdir.mkdir(parents=True, exist_ok=True)
            tmp = a.workdir
        if a.recovery_streams:
            print(json.dumps(recovery(Path(tmp), a.recovery_streams)))
            return
        fig = run(
            Path(tmp),
            kills=a.kills,
            broker_restarts=a.broker_restarts,
            duration_s=a.duration,
            streams=a.streams,
            rate=a.rate,
            checkpoint_s=a.checkpoint_s,
            seed=a.seed,
        )
    print(json.dumps(asdict(fig)))


if __name__ == "__main__":
    main()
