"""Lease ownership on a real nats-server: MQTT in through its listener, two workers, SIGKILL, comeback.

Also the engine side of moving a partition (``lstm_stream.handover``) without a server.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from lstm_stream import checkpoint, handover
from lstm_stream.config import EngineConfig, ModelConfig
from lstm_stream.engine import Engine
from tests.daemon_proc import Daemon
from tests.nats_server import nats_server  # noqa: F401  (fixture)
from tests.polling import wait_until

PROCESSED = "lstm_stream_samples_processed_total"
REJECTED = "lstm_stream_samples_rejected_total"
SCORE = "lstm_stream_anomaly_score"
VALUE = "lstm_stream_value"


def test_a_partition_moves_with_its_state():
    cfg = EngineConfig(model=ModelConfig(hidden=16, layers=2), look_back=8, history_len=64, max_streams=64)
    a = Engine(cfg)
    b = Engine(cfg, a.copy_model())
    names = [f"s{i}" for i in range(6)]
    for t in range(20):
        a.process(names, np.full(6, 1000.0 + t), np.sin(np.arange(6) + t))
    b.process(["other"], np.array([5.0]), np.array([1.0]))
    data = handover.encode_streams(*handover.export_streams(a, names[:3], {"position": 7}))
    adopted, info = handover.adopt_streams(b, data)
    assert adopted == names[:3] and info == {"position": 7}
    assert sorted(b.streams) == ["other", *names[:3]]
    ra = a.process(names[:3], np.full(3, 1020.0), np.array([0.1, 0.2, 0.3]))
    rb = b.process(names[:3], np.full(3, 1020.0), np.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(ra.forecast, rb.forecast)  # the same state: the same forecast
    np.testing.assert_array_equal(ra.score, rb.score)


def test_a_partition_checkpoint_of_an_older_engine_is_adopted():
    """Written before ``se_scale_naive`` came (it starts from ``se_mae_naive``) and while ``hist_excl``
    still existed (its steps become NaN targets): adopted, not refused (a worker refusing it would
    start the partition afresh, its streams' state lost in a rolling upgrade)."""
    cfg = EngineConfig(model=ModelConfig(hidden=16, layers=2), look_back=8, history_len=64, max_streams=64)
    a = Engine(cfg)
    names = [f"s{i}" for i in range(3)]
    for t in range(40):
        a.process(names, np.full(3, 1000.0 + t), np.sin(np.arange(3) + t / 4))
    tensors, meta = handover.export_streams(a, names, {"position": 7})
    assert "state.se_scale_naive" in tensors and "state.hist_excl" not in tensors
    del tensors["state.se_scale_naive"]
    excluded = np.zeros(tensors["state.hist_y"].shape, dtype=bool)
    excluded[1, 30] = True
    tensors["state.hist_excl"] = excluded
    b = Engine(cfg, a.copy_model())
    adopted, info = handover.adopt_streams(b, handover.encode_streams(tensors, meta))
    assert adopted == names and info == {"position": 7}
    slots = [b.table.ids[n] for n in names]
    np.testing.assert_array_equal(b.arrays["se_scale_naive"][slots], tensors["state.se_mae_naive"])
    targets = b.arrays["hist_y"][slots]
    assert np.isnan(targets[1, 30]) and not np.isnan(tensors["state.hist_y"][1, 30])


def _publish(server, first: int, count: int, streams: int = 24) -> Counter:
    """``count`` MQTT publishes (QoS 1) to nats-server's listener, the value of each its index (a
    stream's last value says how far it was applied); per-topic counts."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{first}", protocol=mqtt.MQTTv311)
    c.connect(server.host, server.mqtt_port)
    c.loop_start()
    sent: Counter = Counter()
    infos = []
    for i in range(first, first + count):
        topic = f"sensors/line{i % 3}/t{i % streams}"
        infos.append(c.publish(topic, str(i), qos=1))
        sent[topic] += 1
    for info in infos:
        info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    return sent


def _holders(server) -> dict[int, str]:
    async def read(js):
        from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError

        kv = await js.key_value("lstm-stream-leases")
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        out = {}
        for k in (k for k in keys if k.startswith("p.")):
            try:
                out[int(k[2:])] = (await kv.get(k)).value.decode()
            except (KeyNotFoundError, KeyDeletedError):  # given back or expired since listed
                pass
        return out

    return server.run(read)


def _partition_counts(server, partitions: int) -> Counter:
    """Per-stream sample counts in every partition checkpoint of the object store."""

    async def read(js):
        obj = await js.object_store("lstm-stream-checkpoints")
        from nats.js.errors import DigestMismatchError, ObjectNotFoundError

        out = []
        for k in range(partitions):
            for _ in range(20):  # a read racing a worker's write of the object never ends (nats-py): again
                try:
                    out.append((await asyncio.wait_for(obj.get(f"partition-{k}"), 2)).data)
                except ObjectNotFoundError:
                    pass
                except (asyncio.TimeoutError, DigestMismatchError):
                    continue
                break
            else:
                raise TimeoutError(f"partition-{k} could not be read")
        return out

    counts: Counter = Counter()
    for data in server.run(read):
        tensors, meta = checkpoint.decode(data)
        for name, n in zip(meta["names"], tensors["state.count"].tolist(), strict=True):
            counts[name] += n
    return counts


def _last_take(d: Daemon, since: float) -> float | None:
    """Wall-clock time of the worker's last logged take of a partition after ``since`` (None if its
    log has no timestamps, under journald): how long a failover took on the worker's side, without
    this test's polling, which a loaded machine slows."""
    taken = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in re.finditer(r"^(\S+ \S+) INFO \S+: partition \d+ taken", d.log(), re.MULTILINE)
    ]
    after = [t for t in taken if t >= since - 0.001]  # the log has milliseconds
    return max(after) if after else None


def _streams(d: Daemon) -> set[str]:
    return {dict(labels)["stream"] for (name, labels) in d.metrics() if name == SCORE}


def _applied_up_to(last: int, *workers: Daemon, streams: int = 24) -> bool:
    """Every stream's last value (over ``workers``) is its last index up to ``last``: all applied."""
    seen: dict[str, float] = {}
    for d in workers:
        seen |= {dict(k)["stream"]: v for (name, k), v in d.metrics().items() if name == VALUE}
    want = {f"sensors/line{i % 3}/t{i % streams}": float(i) for i in range(last - streams + 1, last + 1)}
    return all(seen.get(t) == v for t, v in want.items())


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_share_partitions_fail_over_and_rebalance(tmp_path, nats_server):  # noqa: F811
    broker = SimpleNamespace(host=nats_server.host, port=nats_server.mqtt_port, proc=nats_server.proc)
    nats = {"servers": [nats_server.url], "partition_count": 4, "ownership": "lease", "lease_ttl_s": 1}
    config = {
        "ingest": {"source": "nats"},
        "mqtt": {"protocol": "3.1.1"},  # events and availability through nats-server's MQTT listener
        "state": {"checkpoint_interval_s": 2},  # partition checkpoints to the object store
    }
    for name in "ab":
        (tmp_path / name).mkdir()
    a = Daemon(tmp_path / "a", broker, {**config, "nats": {**nats, "worker_id": "a"}}, name="a")
    b = Daemon(tmp_path / "b", broker, {**config, "nats": {**nats, "worker_id": "b"}}, name="b")
    try:
        nats_server.publish([])  # the stream exists before the sensors publish (else nothing keeps it)
        a.start(wait_ready=False)
        b.start(wait_ready=False)
        for d in (a, b):
            d.notify.wait_for("READY=1")
        split = lambda: sorted(Counter(_holders(nats_server).values()).values()) == [2, 2]  # noqa: E731
        wait_until(split, "2 + 2 partitions")
        sent = _publish(nats_server, 0, 240)
        wait_until(lambda: _applied_up_to(239, a, b), "240 applied")
        assert a.metric(PROCESSED) > 0 and b.metric(PROCESSED) > 0
        assert not _streams(a) & _streams(b) and len(_streams(a) | _streams(b)) == 24
        wait_until(lambda: sum(_partition_counts(nats_server, 4).values()) == 240, "checkpoints of all 240")

        sent += _publish(nats_server, 240, 240)
        wait_until(lambda: _applied_up_to(479, a, b), "480 applied")
        b.stop(signal.SIGKILL)  # what it applied since its last checkpoint is only in JetStream now
        killed, killed_wall = time.monotonic(), time.time()
        wait_until(lambda: _holders(nats_server) == dict.fromkeys(range(4), "a"), "a holds all")
        took = _last_take(a, killed_wall)
        took = took - killed_wall if took is not None else time.monotonic() - killed
        assert took < 1 * 2 + 2  # the TTL, a tick, and slack
        wait_until(lambda: _applied_up_to(479, a), "a has b's streams up to date")
        assert a.metric("lstm_stream_nats_partitions_owned") == 4
        assert a.metric(REJECTED, reason="duplicate") == 0  # a sample read twice would be one

        before = a.metric(PROCESSED)
        b.start()  # comes back: two partitions return to it, with their state
        wait_until(lambda: sorted(Counter(_holders(nats_server).values()).values()) == [2, 2], "rebalanced")
        sent += _publish(nats_server, 480, 120)
        wait_until(lambda: _applied_up_to(599, a, b), "600 applied")
        assert a.metric(PROCESSED) - before + b.metric(PROCESSED) == 120  # b went on from a's checkpoints
        for d in (a, b):
            assert d.metric(REJECTED, reason="duplicate") == 0
        assert not _streams(a) & _streams(b)
        assert a.stop() == 0 and b.stop() == 0  # each hands its partitions back with a checkpoint
    finally:
        a.close()
        b.close()
    assert _partition_counts(nats_server, 4) == sent  # every sample once, none lost or doubled
