"""Static ownership coordinated by leases (real nats-server): two workers given overlapping partitions
never both process one; the other logs one line naming the key and its holder, waits, and takes the
partition once the first stops. Also the dashboard's worker panels and the unowned-partitions alert,
against a real Prometheus scraping both."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from types import SimpleNamespace

import pytest

from tests.daemon_proc import Collector, Daemon
from tests.nats_server import nats_server  # noqa: F401  (fixture)
from tests.polling import wait_until
from tests.prom import prometheus  # noqa: F401  (fixture)
from tests.test_monitoring import ALERTS, _check, dashboard_queries, load_dashboard, nats_only

PROCESSED = "lstm_stream_samples_processed_total"
OWNED = "lstm_stream_nats_partitions_owned"
PARTITIONS = "lstm_stream_nats_partitions"
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
    wants = {"a": [0, 1], "b": [1, 2, 3]}
    for name in "ab":
        (tmp_path / name).mkdir()
    a = Daemon(
        tmp_path / "a",
        broker,
        {**config, "nats": {**nats, "worker_id": "a", "partitions": wants["a"]}},
        name="a",
    )
    b = Daemon(
        tmp_path / "b",
        broker,
        {**config, "nats": {**nats, "worker_id": "b", "partitions": wants["b"]}},
        name="b",
    )
    avail = Collector(broker, "lstm-stream/availability/#")  # per worker, through nats-server's MQTT
    try:
        nats_server.publish([])
        for d in (a, b):  # at once: either may win partition 1
            d.start(wait_ready=False)
        prom = prometheus([f"127.0.0.1:{d.http_port}" for d in (a, b)], rule_files=[str(ALERTS)])
        for d in (a, b):
            d.notify.wait_for("READY=1")
        wait_until(lambda: a.metric(OWNED) + b.metric(OWNED) == 4, "4 partitions consumed, 1 of them once")
        holder, waiter = (a, b) if a.metric(OWNED) == 2 else (b, a)
        nats_server.publish(_messages(0, 160))  # 40 per partition
        wait_until(lambda: a.metric(PROCESSED) + b.metric(PROCESSED) >= 160, "160 applied")
        assert a.metric(PROCESSED) + b.metric(PROCESSED) == 160  # partition 1 once
        assert holder.metric(PROCESSED) == (80 if holder is a else 120)
        assert not _streams(a) & _streams(b)
        waits = [line for line in waiter.log().splitlines() if "waiting for it" in line]
        assert (
            len(waits) == 1 and f"key p.1 of bucket lstm-stream-leases is held by {holder.name}" in waits[0]
        )

        # the dashboard's worker panels have data from both workers; the alert rules evaluate
        owned = f"{OWNED} * on (job, instance) group_left (worker) lstm_stream_worker_info"
        wait_until(lambda: _ready(prom), "Prometheus ready")
        prom.wait_query(owned, lambda r: sorted(x["metric"]["worker"] for x in r) == ["a", "b"], timeout=20)
        values = {"job": "lstm-stream", "instance": ".*", "__rate_interval": "1m"}
        queries = list(filter(nats_only, dashboard_queries(load_dashboard())))

        # a rate or increase has data once a target was scraped twice: under load that can take a while
        def failing() -> dict[str, str]:
            checks = {q["where"]: _check(prom, q, values, time.time() - 5, []) for q in queries}
            return {where: why for where, why in checks.items() if why}

        with contextlib.suppress(TimeoutError):  # the assertion below names the panels without data
            wait_until(lambda: not failing(), "every worker panel has data", timeout=30)
        assert not failing()

        state = lambda: {t.rsplit("/", 1)[1]: m for t, m, _ in avail.messages}  # noqa: E731 - last per worker
        wait_until(lambda: state() == {"a": b"online", "b": b"online"}, "both online, each on its own topic")
        assert holder.stop() == 0  # gives its leases back: the other takes partition 1
        wait_until(lambda: state()[holder.name] == b"offline", "the stopped worker offline")
        wait_until(lambda: waiter.metric(OWNED) == len(wants[waiter.name]), "the waiter consumes 1 too")
        assert "partition 1: lease taken, consuming" in waiter.log()
        # the holder's other partitions have no worker now: the alert is pending (fires after 2 minutes)
        unowned = 'ALERTS{alertname="LstmStreamPartitionsUnowned", alertstate="pending"}'
        left = str(4 - len(wants[waiter.name]))
        prom.wait_query(unowned, lambda r: len(r) == 1, timeout=20)  # an alert's ALERTS sample is 1
        gap = f"max by (job) (max_over_time({PARTITIONS}[1h])) - sum by (job) ({OWNED})"  # the rule's
        prom.wait_query(gap, lambda r: len(r) == 1 and r[0]["value"][1] == left, timeout=20)
        assert waiter.stop() == 0
    finally:
        avail.close()
        a.close()
        b.close()
