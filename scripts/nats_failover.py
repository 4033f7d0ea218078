"""Failover time of lease ownership with a given TTL: two workers on a real nats-server, SIGKILL one,
seconds until the other holds every partition. ``--server-restart``: instead, one static worker
under a nats-server that restarts; seconds until it has applied what was published after the restart.

    PYTHONPATH=. python scripts/nats_failover.py [--ttl 15] [--server-restart]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon_proc import Daemon  # noqa: E402
from tests.nats_server import NatsServer  # noqa: E402
from tests.test_nats_leases import _holders  # noqa: E402
from tests.test_nats_source import _messages  # noqa: E402

PROCESSED = "lstm_stream_samples_processed_total"
REJECTED = "lstm_stream_samples_rejected_total"


def server_restart(tmp: Path) -> None:
    """One static worker; 300 samples, nats-server restarted, 300 more: applied once, and how fast."""
    server = NatsServer(tmp, partitions=4).start()
    fake = SimpleNamespace(host=server.host, port=server.mqtt_port, proc=server.proc)
    nats = {"servers": [server.url], "partition_count": 4}
    config = {"ingest": {"source": "nats"}, "mqtt": {"protocol": "3.1.1"}, "nats": nats}
    d = Daemon(tmp, fake, config, name="w").start()
    try:
        server.publish(_messages(0, 300))
        d.wait_metric(PROCESSED, lambda v: v >= 300)
        server.stop()
        time.sleep(2)
        server.start()
        restarted = time.monotonic()
        server.publish(_messages(300, 300))
        d.wait_metric(PROCESSED, lambda v: v >= 600, timeout=120)
        caught_up = time.monotonic() - restarted
        out = {
            "processed": d.metric(PROCESSED),
            "duplicates": d.metric(REJECTED, reason="duplicate"),
            "caught_up_s": round(caught_up, 1),
        }
        print(json.dumps(out))
    finally:
        d.close()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ttl", type=float, default=15.0, help="nats.lease_ttl_s")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--server-restart", action="store_true", help="time a nats-server restart instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.server_restart:
            server_restart(tmp)
            return
        server = NatsServer(tmp, partitions=args.partitions).start()
        workers: list[Daemon] = []
        try:
            server.publish([])  # the stream
            fake = SimpleNamespace(host=server.host, port=server.mqtt_port, proc=server.proc)
            for name in "ab":
                (tmp / name).mkdir()
                nats = {
                    "servers": [server.url],
                    "partition_count": args.partitions,
                    "ownership": "lease",
                    "lease_ttl_s": args.ttl,
                    "worker_id": name,
                }
                config = {"ingest": {"source": "nats"}, "mqtt": {"protocol": "3.1.1"}, "nats": nats}
                workers.append(Daemon(tmp / name, fake, config, name=name))
            for w in workers:
                w.start(wait_ready=False)
            for w in workers:
                w.notify.wait_for("READY=1")
            half = args.partitions // 2
            while sorted(Counter(_holders(server).values()).values()) != [half, args.partitions - half]:
                time.sleep(0.2)
            killed = time.monotonic()
            workers[1].stop(signal.SIGKILL)
            while _holders(server) != dict.fromkeys(range(args.partitions), "a"):
                time.sleep(0.1)
            print(f'{{"lease_ttl_s": {args.ttl}, "failover_s": {time.monotonic() - killed:.1f}}}')
        finally:
            for w in workers:
                w.close()
            server.stop()


if __name__ == "__main__":
    main()
