"""``lstm-stream bench scale`` at a small size: real Mosquitto, nats-server and worker processes."""

from __future__ import annotations

import pytest

from tests.broker import MOSQUITTO
from tests.nats_server import NATS_SERVER


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(MOSQUITTO is None or NATS_SERVER is None, reason="needs mosquitto and nats-server")
def test_bench_scale_smoke():
    from daemon.commands.bench.scale import ScaleOptions, run

    o = ScaleOptions(
        messages=2000, streams=50, partitions=4, publishers=1, lease_ttl_s=1.0, failover_messages=1000
    )
    o.settle_s = 3.0  # the phase ends at once when all arrive; this only bounds a wait for the lost
    r = run(o)
    for key in ("workers_1_msgs_per_s", "workers_2_msgs_per_s", "ratio", "failover_s", "mqtt_cpu_us_per_msg"):
        assert r[key] > 0, key
    assert r["lost"] == 0 and r["doubled"] == 0 and r["streams_on_two_workers"] == 0
    assert len(r["cpu_us_per_msg_per_worker"]["workers_2"]) == 2
    assert sum(r["phases"]["workers_2"]["processed_per_worker"]) == 2000
    assert r["phases"]["workers_1"]["stored"] == 4000  # MQTT into nats-server, all in JetStream (2 rounds)
    assert r["phases"]["failover"]["applied"] == 1000  # each sample once in the checkpoints
    assert r["phases"]["failover"]["survivor_caught_up_s"] >= 0  # the checkpoints held all of them
    paced = r["paced"]  # every path again at one rate (5,000 messages/s)
    assert paced["rate"] == 5000 and paced["lost"] == 0 and paced["doubled"] == 0
    assert sum(r["phases"]["workers_2"]["paced"]["processed_per_worker"]) == 2000
    assert paced["nats_worker_cpu_to_mqtt"] > 0 and len(paced["cpu_us_per_msg"]["workers_2"]) == 2
