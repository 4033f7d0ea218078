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


def _daemon(tmp_path, server, name: str = "w") -> Daemon:
    broker = SimpleNamespace(host=server.host, port=server.mqtt_port, proc=server.proc)
    config = {
        "ingest": {"source": "nats"},
        "nats": {"servers": [server.url], "partition_count": server.partitions},
        "mqtt": {"protocol": "3.1.1"},  # events and availability through nats-server's MQTT listener
    }
    return Daemon(tmp_path, broker, config, name=name)


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_then_resume_applies_every_sample_exactly_once(tmp_path, nats_server):  # noqa: F811
    d = _daemon(tmp_path, nats_server)
    try:
        nats_server.publish(_messages(0, 300))
        d.start()
        d.wait_metric(PROCESSED, lambda v: v >= 300)
        assert d.stop() == 0  # the final checkpoint holds each partition's position
        first = CheckpointStore(d.state).info_of(CheckpointStore(d.state).paths()[-1])
        assert sum(1 for _ in first[KEY]) == 4

        d.start()  # resumes after the positions: none of the 300 again
        seqs = nats_server.publish(_messages(300, 300))
        d.wait_metric(PROCESSED, lambda v: v >= 300)
        assert d.metric(PROCESSED) == 300
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL  # these 300 were applied, never checkpointed

        d.start()  # replays exactly the 300 after the checkpoint, then takes new ones
        seqs += nats_server.publish(_messages(600, 100))
        d.wait_metric(PROCESSED, lambda v: v >= 400)
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
