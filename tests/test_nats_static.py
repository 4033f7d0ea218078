"""Static ownership coordinated by leases (real nats-server): two workers given overlapping partitions
never both process one; the second logs one line naming the key and its holder, waits, and takes the
partition once the first stops."""

from __future__ import annotations

import json
import time
import urllib.request
from types import SimpleNamespace

import pytest

from tests.daemon_proc import Daemon
from tests.nats_server import nats_server  # noqa: F401  (fixture)
from tests.prom import prometheus  # noqa: F401  (fixture)
from tests.test_monitoring import ALERTS, _check, dashboard_queries, load_dashboard, nats_only
from tests.test_nats_outputs import _wait

PROCESSED = "lstm_stream_samples_processed_total"
OWNED = "lstm_stream_nats_partitions_owned"
SCORE = "lstm_stream_anomaly_score"


def _messages(first: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` samples over 8 streams, stream t<s> in partition s % 4."""
    return [
        (f"part.{i % 4}.sensors.line.t{i % 8}", json.dumps({"value": i % 5}).encode())
        for i in range(first, first + count)
    ]


def _streams(d: Daemon) -> set[str]:
    return {dict(labels)["stream"] for (name, labels) in d.metrics() if name == SCORE}


def _ready(prom) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{prom.port}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:  # URLError and HTTPError (503 while starting) included
        return False


@pytest.mark.slow
@pytest.mark.integration
def test_overlapping_static_partitions_are_processed_by_one_worker(tmp_path, nats_server, prometheus):  # noqa: F811
    broker = SimpleNamespace(host=nats_server.host, port=nats_server.mqtt_port, proc=nats_server.proc)
    nats = {"servers": [nats_server.url], "partition_count": 4, "lease_ttl_s": 1}
    config = {"ingest": {"source": "nats"}, "mqtt": {"protocol": "3.1.1"}}
    for name in "ab":
        (tmp_path / name).mkdir()
    a = Daemon(
        tmp_path / "a", broker, {**config, "nats": {**nats, "worker_id": "a", "partitions": [0, 1]}}, name="a"
    )
    b = Daemon(
        tmp_path / "b",
        broker,
        {**config, "nats": {**nats, "worker_id": "b", "partitions": [1, 2, 3]}},
        name="b",
    )
    try:
        nats_server.publish([])
        a.start(wait_ready=False)
        a.notify.wait_for("READY=1")
        _wait(lambda: a.metric(OWNED) == 2, "a consumes 0 and 1")
        b.start(wait_ready=False)
        b.notify.wait_for("READY=1")
        _wait(lambda: b.metric(OWNED) == 2, "b consumes 2 and 3")
        nats_server.publish(_messages(0, 160))
        _wait(lambda: a.metric(PROCESSED) + b.metric(PROCESSED) >= 160, "160 applied")
        assert a.metric(PROCESSED) == 80 and b.metric(PROCESSED) == 80  # partition 1 once, by a
        assert not _streams(a) & _streams(b)
        waits = [line for line in b.log().splitlines() if "waiting for it" in line]
        assert len(waits) == 1 and "key p.1 of bucket lstm-stream-leases is held by a" in waits[0]

        # the dashboard's worker panels have data from both workers; the alert rules evaluate
        prom = prometheus([f"127.0.0.1:{d.http_port}" for d in (a, b)], rule_files=[str(ALERTS)])
        owned = f"{OWNED} * on (job, instance) group_left (worker) lstm_stream_worker_info"
        _wait(lambda: _ready(prom), "Prometheus ready")
        prom.wait_query(owned, lambda r: sorted(x["metric"]["worker"] for x in r) == ["a", "b"], timeout=20)
        values = {"job": "lstm-stream", "instance": ".*", "__rate_interval": "1m"}
        for q in filter(nats_only, dashboard_queries(load_dashboard())):
            assert not _check(prom, q, values, time.time() - 5, []), q["where"]

        assert a.stop() == 0  # gives its leases back: b takes partition 1
        _wait(lambda: b.metric(OWNED) == 3, "b consumes 1 too")
        assert "partition 1: lease taken, consuming" in b.log()
        # partition 0 has no worker now: the alert is pending (it fires after 2 minutes)
        unowned = 'ALERTS{alertname="LstmStreamPartitionsUnowned", alertstate="pending"}'
        prom.wait_query(unowned, lambda r: len(r) == 1 and r[0]["value"][1] == "1", timeout=20)
        assert b.stop() == 0
    finally:
        a.close()
        b.close()
