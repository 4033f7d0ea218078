"""The write-ahead log's format and reader: round trip, torn tail, bad checksum, replay order, the cut."""

from __future__ import annotations

import json
import math

import pytest

from lstm_stream import wal


def _samples(n: int, start: int = 0) -> list[tuple]:
    return [(f"s/{i % 3}", 1_700_000_000.0 + i / 7, float(i) / 3) for i in range(start, start + n)]


def _write(directory, batches: list[list[tuple]], next_index: int = 0) -> wal.SegmentWriter:
    w = wal.SegmentWriter(directory, next_index)
    for b in batches:
        w.append(b)
        w.sync()
    w.close()
    return w


def test_round_trip_is_exact_and_in_order(tmp_path):
    batches = [_samples(5), _samples(3, 5), [("odd", 1.0, math.nan), ("odd", 2.0, math.inf)]]
    w = _write(tmp_path, batches)
    assert (w.next_index, w.syncs) == (10, 3)
    r = wal.replay(tmp_path, 0)
    got = [s for rec in r.records for s in rec.samples]
    want = [s for b in batches for s in b]
    assert got[:8] == want[:8]  # floats round-trip bit for bit
    assert got[8][0] == "odd" and math.isnan(got[8][2]) and got[9][2] == math.inf
    assert [rec.first for rec in r.records] == [0, 5, 8]
    assert (r.next_index, r.problems) == (10, [])


def test_replay_skips_what_the_checkpoint_holds(tmp_path):
    _write(tmp_path, [_samples(5), _samples(5, 5)])
    r = wal.replay(tmp_path, 7)
    assert [s for rec in r.records for s in rec.samples] == _samples(3, 7)
    assert r.records[0].first == 7 and r.next_index == 10
    assert wal.replay(tmp_path, 10).records == []


@pytest.mark.parametrize("cut", [1, 5, 11, 20])
def test_torn_tail_is_dropped_and_the_next_run_continues(tmp_path, cut):
    _write(tmp_path, [_samples(4), _samples(4, 4)])
    (path,) = [p for _, p in wal.segments(tmp_path)]
    data = path.read_bytes()
    path.write_bytes(data[:-cut])  # the second record torn
    r = wal.replay(tmp_path, 0)
    assert [s for rec in r.records for s in rec.samples] == _samples(4)
    assert r.next_index == 4 and "torn" in r.problems[0]
    # the next run starts a segment at the first lost index; replay reads both in order
    _write(tmp_path, [_samples(2, 100)], next_index=r.next_index)
    r2 = wal.replay(tmp_path, 0)
    assert [s for rec in r2.records for s in rec.samples] == _samples(4) + _samples(2, 100)
    assert r2.next_index == 6


def test_bad_checksum_stops_the_segment(tmp_path):
    _write(tmp_path, [_samples(4), _samples(4, 4), _samples(4, 8)])
    (path,) = [p for _, p in wal.segments(tmp_path)]
    data = bytearray(path.read_bytes())
    second = len(wal.HEADER) + len(wal.encode_record(0, _samples(4)))
    data[second + 30] ^= 0xFF  # a flipped bit inside the second record's payload
    path.write_bytes(bytes(data))
    r = wal.replay(tmp_path, 0)
    assert r.samples == 4 and "checksum" in r.problems[0]


def test_other_format_version_is_refused(tmp_path):
    _write(tmp_path, [_samples(2)])
    (path,) = [p for _, p in wal.segments(tmp_path)]
    data = bytearray(path.read_bytes())
    data[len(wal.MAGIC)] = wal.VERSION + 1
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalError, match="version"):
        wal.replay(tmp_path, 0)


def test_overlapping_segments_give_each_index_once(tmp_path):
    """A batch rewritten in a new segment after a failed fsync: the first copy wins."""
    _write(tmp_path, [_samples(4)])
    _write(tmp_path, [_samples(4, 2), _samples(2, 6)], next_index=2)
    r = wal.replay(tmp_path, 0)
    got = [s for rec in r.records for s in rec.samples]
    assert got == _samples(4) + _samples(2, 4)[:0] + [*_samples(4, 2)[2:], *_samples(2, 6)]
    assert r.next_index == 8


def test_cut_keeps_segments_with_unapplied_samples_and_the_newest(tmp_path):
    w = wal.SegmentWriter(tmp_path, 0)
    for i in range(4):
        w.append(_samples(5, 5 * i))
        w.sync()
        w.rotate()
    w.close()
    assert [f for f, _ in wal.segments(tmp_path)] == [0, 5, 10, 15]
    wal.cut(tmp_path, 9)  # segment 5 still holds 9
    assert [f for f, _ in wal.segments(tmp_path)] == [5, 10, 15]
    wal.cut(tmp_path, 100)  # never the newest
    assert [f for f, _ in wal.segments(tmp_path)] == [15]
    assert wal.replay(tmp_path, 15).samples == 5


def test_failed_write_abandons_the_segment(tmp_path):
    w = wal.SegmentWriter(tmp_path, 0)
    w.append(_samples(3))
    w.sync()
    w.append(_samples(2, 3))  # appended, not synced, then the fsync "fails"
    w._abandon()
    assert w.next_index == 3  # the caller writes those again
    w.append(_samples(2, 3))
    w.sync()
    w.close()
    r = wal.replay(tmp_path, 0)
    assert [s for rec in r.records for s in rec.samples] == _samples(5)


def test_service_replay_applies_more_new_streams_than_the_admission_burst(tmp_path):
    """The service's replay at start: streams created after the checkpoint come back, however many,
    whatever the admission rate for live arrivals says."""
    from daemon.service.durability import Durability
    from lstm_stream.config import EngineConfig, ModelConfig
    from lstm_stream.engine import Engine

    samples = [(f"flood/{i}", 1_700_000_000.0, float(i)) for i in range(50)]
    _write(tmp_path, [samples[:20], samples[20:]])
    cfg = EngineConfig(model=ModelConfig(hidden=8, layers=1), look_back=4, history_len=0, max_streams=64)
    engine = Engine(cfg.model_copy(update={"new_streams_per_s": 1.0, "new_streams_burst": 5}))
    assert Durability(tmp_path).replay(engine, {}, now=1_700_000_001.0) == 50
    assert len(engine.streams) == 50 and engine.counters["processed"] == 50


def test_replay_chunks_join_records_in_log_order() -> None:
    """Records (one per message) are joined into chunks of at most the size, each sample once, in log
    order: a stream's many short records become wide engine rounds."""
    from daemon.service.durability import chunks

    records = [wal.Record(first=i * 5, samples=_samples(5, i * 5)) for i in range(7)]
    out = list(chunks(records, 12))
    assert [len(c) for c in out] == [12, 12, 11]
    assert [s for c in out for s in c] == _samples(35)
    assert [len(c) for c in chunks(records, 1)] == [1] * 35
    assert list(chunks([], 4)) == []


def test_service_replay_reports_its_progress_before_each_chunk(tmp_path, monkeypatch):
    """The service's replay tells ``progress`` how far it got before each chunk (what keeps systemd's
    start timeout extended), and applies as many samples joined as record by record."""
    from daemon.service import durability
    from lstm_stream.config import EngineConfig, ModelConfig
    from lstm_stream.engine import Engine

    _write(tmp_path, [_samples(10, k * 10) for k in range(10)])
    monkeypatch.setattr(durability, "REPLAY_CHUNK", 32)
    cfg = EngineConfig(model=ModelConfig(hidden=8, layers=1), look_back=4, history_len=0)
    engine = Engine(cfg)
    seen: list[tuple[int, int]] = []
    replayed = durability.Durability(tmp_path).replay(engine, {}, 1_700_000_100.0, lambda *a: seen.append(a))
    assert replayed == 100
    assert seen == [(0, 100), (32, 100), (64, 100), (96, 100)]
    assert engine.counters["processed"] == 100 and sorted(engine.streams) == ["s/0", "s/1", "s/2"]


def test_encoded_samples_read_back_exactly_whichever_encoder() -> None:
    """orjson (when installed) writes the records; NaN, infinities and a stream named ``null`` go
    through the stdlib encoder, so every sample reads back as it was."""
    samples = [("a/b", 1732700000.123456, 0.1), ("null", 5e-324, -1e308), ("ü", 1.0, float("nan"))]
    for batch in (samples[:1], samples[:2], samples):
        got = [tuple(s) for s in json.loads(wal.encode_samples(batch))]
        assert repr(got) == repr(batch)
