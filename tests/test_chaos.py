"""Chaos: SIGKILLs of the daemon's process group and broker restarts under QoS 1 load lose nothing
acknowledged and apply nothing twice (accounted from the restored state, see ``tests/chaos.py``)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests import chaos
from tests.broker import Broker
from tests.daemon_proc import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_sigkills_of_the_process_group_lose_nothing_acknowledged(tmp_path) -> None:
    fig = chaos.run(tmp_path, kills=5, broker_restarts=0, duration_s=40, checkpoint_s=3, seed=7)
    assert fig.kills == 5
    assert fig.acked == fig.published > 5000
    assert (fig.lost, fig.doubled) == (0, 0), fig
    assert max(fig.recovery_s) < 30, fig.recovery_s  # CI's shared cores; the 10 s target is measured apart


def test_broker_restarts_lose_nothing_acknowledged(tmp_path) -> None:
    fig = chaos.run(tmp_path, kills=2, broker_restarts=3, duration_s=30, checkpoint_s=3, seed=11)
    assert (fig.kills, fig.broker_restarts) == (2, 3)
    assert fig.acked == fig.published
    assert (fig.lost, fig.doubled) == (0, 0), fig


def test_sigterm_with_a_full_queue_exits_fast_and_loses_nothing(tmp_path) -> None:
    """Array payloads fill the queue behind a slowed engine; SIGTERM to the group exits in < 10 s and
    what was acknowledged but not applied is in the log, applied at the next start."""
    broker = Broker(tmp_path).start()
    config = {**chaos.daemon_config(3600), "ingest": {"batch_ms": 10, "queue_size": 20_000, "batch_max": 256}}
    d = Daemon(tmp_path, broker, config, name="term", session=True).start()
    try:
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="term-pub")
        pub.max_queued_messages_set(0)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        n_msgs, per_msg = 400, 100
        infos = []
        for m in range(n_msgs):
            arr = [{"ts": chaos.T0 + (m * per_msg + j) * 0.01, "value": float(j)} for j in range(per_msg)]
            infos.append(pub.publish(f"sensors/a{m % 4}/v", json.dumps(arr), qos=1))
        for info in infos:
            info.wait_for_publish(30)
        time.sleep(1.0)  # let the queue fill
        t0 = time.monotonic()
        os.killpg(d.proc.pid, signal.SIGTERM)
        rc = d.proc.wait(30)
        took = time.monotonic() - t0
        d.proc = None
        d.log_file.close()
        assert rc == 0 and took < 10, (rc, took, d.log()[-2000:])
        d.start()
        chaos.wait_quiet(d)
        assert d.stop() == 0
        counts = chaos.applied_counts(d.state)
        assert sum(counts.values()) == n_msgs * per_msg, counts
        pub.loop_stop()
        pub.disconnect()
    finally:
        d.close()
        broker.stop()
