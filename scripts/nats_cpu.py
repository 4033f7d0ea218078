"""CPU per message of a daemon fed from NATS JetStream next to one fed from Mosquitto (same run).

    PYTHONPATH=. python scripts/nats_cpu.py --messages 40000 --streams 1000 --rounds 2

For each path a fresh daemon (fine-tuning off, ``http.per_stream = "none"``) is started and idle;
then ``--messages`` plain-number payloads over ``--streams`` topics are published (to JetStream with
``js.publish``, or to Mosquitto at QoS 1 with paho) and the daemon's CPU (utime + stime, its receiver
process included) is read from /proc until its processed counter reaches the count. ``--backlog``:
publish while the daemon is stopped and measure from its next READY=1 (both paths then read full
batches; the MQTT daemon's persistent session keeps the messages at the broker). Prints one JSON
object: CPU microseconds per message per path (median of the rounds) and the ratio NATS / MQTT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.commands.bench.common import cpu_seconds  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.daemon_proc import Daemon  # noqa: E402
from tests.nats_server import NatsServer  # noqa: E402

PROCESSED = "lstm_stream_samples_processed_total"


def _topics(n: int, streams: int) -> list[str]:
    return [f"sensors/line{i % 10}/t{i % streams}" for i in range(n)]


def _publish_nats(server: NatsServer, topics: list[str]) -> None:
    async def pub(js):
        futures = []
        for i, t in enumerate(topics):
            subject = "part.0." + t.replace("/", ".")  # no server mapping needed: one partition
            futures.append(js.publish(subject, f"{i % 50}.5".encode()))
            if len(futures) >= 500:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)

    server.run(pub)


def _publish_mqtt(broker: Broker, topics: list[str]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cpu-pub")
    c.max_inflight_messages_set(1000)
    c.connect(broker.host, broker.port)
    c.loop_start()
    infos = [c.publish(t, f"{i % 50}.5", qos=1) for i, t in enumerate(topics)]
    for info in infos:
        info.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def _measure(d: Daemon, publish, n: int, backlog: bool) -> float:
    """CPU microseconds per message of the daemon (and its children) while it takes ``n`` messages:
    published while it runs, or (``backlog``) published while it is stopped and read at its next
    start (from READY=1 on: the broker's session queue, or JetStream)."""
    if backlog:
        d.stop()
        publish()
        d.start(wait_ready=False)
        d.notify.wait_for("READY=1")
        cpu0 = cpu_seconds(d.proc.pid)
    else:
        cpu0 = cpu_seconds(d.proc.pid)
        publish()
    d.wait_metric(PROCESSED, lambda v: v >= n, timeout=600)
    return (cpu_seconds(d.proc.pid) - cpu0) / n * 1e6


def run_round(tmp: Path, n: int, streams: int, backlog: bool) -> dict[str, float]:
    topics = _topics(n, streams)
    base = {"http": {"per_stream": "none"}, "engine": {"max_streams": max(1000, streams)}}
    out: dict[str, float] = {}
    server = NatsServer(tmp / "n", partitions=1).start()
    try:
        server.publish([])  # the stream
        fake = SimpleNamespace(host=server.host, port=server.mqtt_port, proc=server.proc)
        cfg = {
            **base,
            "ingest": {"source": "nats"},
            "nats": {"servers": [server.url], "partition_count": 1},
            "mqtt": {"protocol": "3.1.1"},
        }
        d = Daemon(tmp / "n", fake, cfg, name="nats").start()
        try:
            out["nats"] = _measure(d, lambda: _publish_nats(server, topics), n, backlog)
        finally:
            d.close()
    finally:
        server.stop()
    for name, wal in (("mqtt_wal", True), ("mqtt_no_wal", False)):
        broker = Broker(tmp / name).start()
        try:
            d = Daemon(tmp / name, broker, {**base, "state": {"wal": wal}}, name=name).start()
            try:
                out[name] = _measure(d, lambda b=broker: _publish_mqtt(b, topics), n, backlog)
            finally:
                d.close()
        finally:
            broker.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backlog", action="store_true", help="publish while the daemon is down, then start it")
    args = ap.parse_args()
    rounds = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for sub in ("n", "mqtt_wal", "mqtt_no_wal"):
                (Path(tmp) / sub).mkdir()
            started = time.monotonic()
            rounds.append(run_round(Path(tmp), args.messages, args.streams, args.backlog))
            print(f"round {r}: {rounds[-1]} ({time.monotonic() - started:.0f}s)", file=sys.stderr)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    ratio = [x["nats"] / x["mqtt_wal"] for x in rounds]
    ratio_no_wal = [x["nats"] / x["mqtt_no_wal"] for x in rounds]
    print(
        json.dumps(
            {
                "messages": args.messages,
                "streams": args.streams,
                "rounds": args.rounds,
                "backlog": args.backlog,
                "nats_cpu_us_per_msg": round(med["nats"], 1),
                "mqtt_wal_cpu_us_per_msg": round(med["mqtt_wal"], 1),
                "mqtt_no_wal_cpu_us_per_msg": round(med["mqtt_no_wal"], 1),
                "ratio_nats_to_mqtt_wal_per_round": [round(x, 2) for x in ratio],
                "ratio_nats_to_mqtt_no_wal_per_round": [round(x, 2) for x in ratio_no_wal],
            }
        )
    )


if __name__ == "__main__":
    main()
