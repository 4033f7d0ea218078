"""The NATS JetStream source: subject mapping, positions, exact resume after SIGKILL (real nats-server)."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from daemon.ingest.nats_positions import KEY, Positions, ack_fields, subject_of, topic_of
from daemon.settings import ConfigError, load_settings
from lstm_stream.checkpoint import CheckpointStore
from tests.daemon_proc import Daemon
from tests.nats_server import nats_server  # noqa: F401  (fixture)
from tests.polling import wait_until

PROCESSED = "lstm_stream_samples_processed_total"


def test_subjects_name_the_streams_mqtt_topics_would():
    assert topic_of("part.3.sensors.line1.temp7") == "sensors/line1/temp7"
    assert subject_of("sensors/line1/temp7", "part", 3) == "part.3.sensors.line1.temp7"
    assert topic_of(subject_of("a/b-c/d_e", "p", 0)) == "a/b-c/d_e"


def test_ack_fields_read_both_reply_forms():
    assert ack_fields("$JS.ACK.SENSORS.dHTc.1.16.1.1796074547179613386.2") == (16, 1796074547.179613386)
    seq, ts = ack_fields("$JS.ACK.dom.acchash.SENSORS.dHTc.1.17.2.1796074547000000000.0.xyz")
    assert (seq, ts) == (17, 1796074547.0)


def test_positions_advance_only_with_applied_samples():
    p = Positions({"2": 5})
    assert p.start_after(2) == 5 and p.start_after(0) is None
    p.note(3, 0, 10)  # samples 1..3
    p.note(0, 1, 11)  # a rejected payload, after them
    p.note(2, 0, 12)  # samples 4..5
    assert p.applied(2) == {"2": 5}
    assert p.applied(3) == {"0": 10, "1": 11, "2": 5}
    assert p.applied(5) == {"0": 12, "1": 11, "2": 5}


def test_static_ownership_settings():
    s = load_settings(None, {"nats.partition_count": 8, "nats.workers": 3, "nats.worker": 1})
    assert s.nats.static_partitions() == [1, 4, 7]
    assert load_settings(None, {"nats.partitions": [5, 2, 5]}).nats.static_partitions() == [2, 5]
    with pytest.raises(ConfigError, match="nats: partitions"):
        load_settings(None, {"nats.partitions": [16]})
    assert load_settings(None, {}).ingest.source == "mqtt"


def _messages(start: int, count: int, partitions: int = 4, streams: int = 12) -> list[tuple[str, bytes]]:
    """``count`` plain-number payloads (no timestamp: the JetStream time is the sample's) spread over
    ``streams`` topics, each on a fixed partition."""
    out = []
    for i in range(start, start + count):
        s = i % streams
        out.append((subject_of(f"sensors/line{s % 3}/t{s}", "part", s % partitions), f"{i % 50}.5".encode()))
    return out


def _newest_positions(d: Daemon) -> dict[str, int]:
    store = CheckpointStore(d.state)
    paths = store.paths()
    return store.info_of(paths[-1]).get(KEY, {}) if paths else {}


def _newest_processed(d: Daemon) -> int:
    engine, _, _ = CheckpointStore(d.state).load_latest()
    return engine.counters["processed"]


def _daemon(tmp_path, server, name: str = "w", checkpoint_interval_s: float = 3600) -> Daemon:
    broker = SimpleNamespace(host=server.host, port=server.mqtt_port, proc=server.proc)
    config = {
        "ingest": {"source": "nats"},
        # static partitions are held through leases: a restart after SIGKILL waits for the old to expire
        "nats": {"servers": [server.url], "partition_count": server.partitions, "lease_ttl_s": 2},
        "mqtt": {"protocol": "3.1.1"},  # events and availability through nats-server's MQTT listener
        "state": {"checkpoint_interval_s": checkpoint_interval_s},
    }
    return Daemon(tmp_path, broker, config, name=name)


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_then_resume_applies_every_sample_exactly_once(tmp_path, nats_server):  # noqa: F811
    d = _daemon(tmp_path, nats_server, checkpoint_interval_s=1)
    try:
        seqs = nats_server.publish(_messages(0, 300))
        d.start()
        d.wait_metric(PROCESSED, lambda v: v >= 300)
        # a checkpoint covers them
        wait_until(lambda: max(_newest_positions(d).values(), default=0) == max(seqs), "a checkpoint")
        nats_server.stop()  # the server's consumers go with it: the worker subscribes again after
        nats_server.start()  # the last message it handled (JetStream's data is on disk)
        seqs += nats_server.publish(_messages(300, 300))
        d.wait_metric(PROCESSED, lambda v: v >= 600)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL  # the last 300 were applied after that checkpoint

        left = 700 - _newest_processed(d)  # what the newest checkpoint lacks, and 100 new ones
        d.start()
        seqs += nats_server.publish(_messages(600, 100))
        d.wait_metric(PROCESSED, lambda v: v >= left)
        assert d.stop() == 0
    finally:
        d.close()
    store = CheckpointStore(d.state)
    engine, _, errors = store.load_latest()
    assert not errors
    assert engine.counters["processed"] == 700
    assert engine.counters["rejected"] == 0  # a sample read twice would be a duplicate here
    assert int(engine.arrays["count"][list(engine.table.ids.values())].sum()) == 700
    assert max(store.loaded_info[KEY].values()) == max(seqs)
