"""A partition the server stops answering, seen from outside (real nats-server, real daemon): its wait in
/metrics grows, the reader gives it a new consumer, and once it has waited ``STUCK_S`` the worker's
/healthz says so (503, naming the partitions); healthy again once the server answers. The stall is
made by deleting the JetStream stream under the worker; made again, the stream's sequences restart at
1, below the positions the worker holds, and its messages must still be read (not skipped as seen)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from daemon.ingest.nats_pull import STUCK_S
from tests.daemon_proc import Daemon
from tests.nats_server import nats_server  # noqa: F401  (fixture)
from tests.polling import wait_until

WAIT = "lstm_stream_nats_partition_wait_seconds"
RENEWALS = "lstm_stream_nats_stale_renewals_total"
PROCESSED = "lstm_stream_samples_processed_total"


def _one_per_partition() -> list[tuple[str, bytes]]:
    return [(f"part.{k}.sensors.line.t{k}", json.dumps({"value": k}).encode()) for k in range(4)]


def _delete_stream(js) -> None:
    return js.delete_stream("SENSORS")


@pytest.mark.slow
@pytest.mark.integration
def test_a_partition_without_answers_shows_in_metrics_and_makes_the_worker_unhealthy(tmp_path, nats_server):  # noqa: F811
    broker = SimpleNamespace(host=nats_server.host, port=nats_server.mqtt_port, proc=nats_server.proc)
    config = {
        "ingest": {"source": "nats"},
        "mqtt": {"protocol": "3.1.1"},
        "nats": {"servers": [nats_server.url], "partition_count": 4, "partitions": [0, 1, 2, 3]},
    }
    d = Daemon(tmp_path, broker, config)
    try:
        nats_server.publish([])
        d.start()
        nats_server.publish(_one_per_partition())
        d.wait_metric(PROCESSED, lambda v: v == 4, timeout=30)
        waits = {int(dict(k)["partition"]): v for (name, k), v in d.metrics().items() if name == WAIT}
        assert sorted(waits) == [0, 1, 2, 3] and max(waits.values()) < 10, waits
        assert d.get("/healthz")[0] == 200

        # the stream goes away under the worker: no consumer can be made, every partition waits
        nats_server.run(_delete_stream)
        d.wait_metric(WAIT, lambda v: v > 10, timeout=30, partition="2")
        status, body = d.get("/healthz")
        assert status == 200, body  # waiting, not yet stuck
        wait_until(lambda: d.get("/healthz")[0] == 503, "unhealthy once stuck", timeout=STUCK_S + 30)
        body = d.get("/healthz")[1]
        assert "NATS partitions 0, 1, 2, 3 waiting on the server for" in body, body
        assert "disconnected" not in body

        # the stream is made again: consumers are made, requests answered, healthy again, and the new
        # stream's messages (sequences 1-4, at or below the old positions) are applied
        nats_server.publish([])
        wait_until(lambda: d.get("/healthz")[0] == 200, "healthy once the stream is back", timeout=30)
        d.wait_metric(WAIT, lambda v: v < 10, timeout=30, partition="2")
        assert d.metric(RENEWALS) >= 0  # exported (NaN if not); it counts silent consumers, not missing ones
        nats_server.publish(_one_per_partition())
        d.wait_metric(PROCESSED, lambda v: v == 8, timeout=30)
        assert "the stream was made again; reading it from its start" in d.log()
        assert d.stop() == 0
    finally:
        d.close()
