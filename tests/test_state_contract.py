"""The per-stream state contract (as river's checks): every engine must honour these."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_stream import checkpoint
from lstm_stream.config import EngineConfig
from lstm_stream.engine import DUPLICATE, NEW_STREAM_RATE, OUT_OF_ORDER, OVER_CAPACITY, Engine

FIELDS = ("forecast", "spread", "residual", "score", "next_forecast", "next_spread")


def _stream_data(n_streams: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(steps, dtype=float)
    return {
        f"s{i}": np.sin(t / (5 + i) + i) * (i + 1) + 0.1 * rng.standard_normal(steps)
        for i in range(n_streams)
    }


def _interleaved(data: dict[str, np.ndarray]):
    steps = len(next(iter(data.values())))
    names, ts, vals = [], [], []
    for t in range(steps):
        for name, v in data.items():
            names.append(name)
            ts.append(float(t))
            vals.append(v[t])
    return names, np.array(ts), np.array(vals)


def _assert_same(a, b, tol=1e-5):
    for f in FIELDS:
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=tol, atol=tol, err_msg=f)
    np.testing.assert_array_equal(a.is_anomaly, b.is_anomaly)
    np.testing.assert_array_equal(a.reject, b.reject)


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_batch_equals_one_by_one(small_cfg: EngineConfig, mode: str) -> None:
    cfg = small_cfg.model_copy(update={"mode": mode})
    names, ts, vals = _interleaved(_stream_data(5, 60))
    batched = Engine(cfg).process(names, ts, vals)
    single = Engine(cfg)
    parts = [single.process(names[i : i + 1], ts[i : i + 1], vals[i : i + 1]) for i in range(len(names))]
    for f in FIELDS:
        got = np.concatenate([getattr(p, f) for p in parts])
        np.testing.assert_allclose(getattr(batched, f), got, rtol=1e-5, atol=1e-5, err_msg=f)


def test_several_samples_of_one_stream_in_a_batch_apply_in_order(small_cfg: EngineConfig) -> None:
    data = _stream_data(3, 40)
    names, ts, vals = _interleaved(data)
    # a random interleaving of the streams that keeps each stream's own order
    queues = {n: [i for i, m in enumerate(names) if m == n] for n in data}
    rng = np.random.default_rng(1)
    shuffled = []
    while any(queues.values()):
        name = rng.choice([n for n, q in queues.items() if q])
        shuffled.append(queues[name].pop(0))
    shuffled = np.array(shuffled)
    a = Engine(small_cfg).process([names[i] for i in shuffled], ts[shuffled], vals[shuffled])
    b = Engine(small_cfg).process(names, ts, vals)
    for name in data:
        ia = [k for k, i in enumerate(shuffled) if names[i] == name]
        ib = [k for k, n in enumerate(names) if n == name]
        np.testing.assert_allclose(a.next_forecast[ia], b.next_forecast[ib], rtol=1e-5, atol=1e-5)


def test_streams_are_independent(small_cfg: EngineConfig) -> None:
    data = _stream_data(4, 50)
    names, ts, vals = _interleaved(data)
    together = Engine(small_cfg).process(names, ts, vals)
    alone = Engine(small_cfg)
    r = alone.process(["s2"] * 50, np.arange(50.0), data["s2"])
    mask = np.array(names) == "s2"
    np.testing.assert_allclose(together.next_forecast[mask], r.next_forecast, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(together.score[mask], r.score, rtol=1e-5, atol=1e-5)


def test_snapshot_restore_is_exact(small_cfg: EngineConfig) -> None:
    names, ts, vals = _interleaved(_stream_data(6, 80))
    cut = len(names) // 2
    whole = Engine(small_cfg)
    whole.process(names[:cut], ts[:cut], vals[:cut])
    restored = checkpoint.restore(checkpoint.snapshot(whole))
    a = whole.process(names[cut:], ts[cut:], vals[cut:])
    b = restored.process(names[cut:], ts[cut:], vals[cut:])
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    np.testing.assert_array_equal(a.is_anomaly, b.is_anomaly)


def test_new_stream_gets_a_slot_on_first_sight(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg)
    assert "x" not in e.table
    r = e.process(["x", "x"], [1.0, 2.0], [2.0, 3.0])
    assert e.streams == ["x"] and r.created == ["x"]
    assert e.process(["x", "y"], [3.0, 3.0], [1.0, 1.0]).created == ["y"]


def test_lru_eviction_frees_the_slot(small_cfg: EngineConfig) -> None:
    cfg = small_cfg.model_copy(update={"max_streams": 3, "evict_idle_s": None})  # any stream may go
    e = Engine(cfg)
    e.process(["a", "b", "c"], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    e.process(["a", "c"], [2.0, 2.0], [1.0, 3.0])  # b is now the least recently seen
    slot_b = e.table.ids["b"]
    r = e.process(["d"], [3.0], [4.0])
    assert r.evicted == ["b"]
    assert sorted(e.streams) == ["a", "c", "d"]
    assert e.table.ids["d"] == slot_b  # the freed slot is reused
    assert e.arrays["count"][slot_b] == 1  # and starts from nothing
    r = e.process(["b"], [4.0], [2.0])  # b comes back as a new stream
    assert r.forecast[0] != r.forecast[0]  # NaN: no forecast for a first sample


def test_over_capacity_in_one_batch_is_rejected_not_lost_silently(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg.model_copy(update={"max_streams": 2}))
    r = e.process(["a", "b", "c"], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert list(r.reject) == [0, 0, OVER_CAPACITY]


def test_idle_streams_expire(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg.model_copy(update={"idle_expiry_s": 100.0}))
    e.process(["a", "b"], [0.0, 0.0], [1.0, 1.0], now=1000.0)
    e.process(["a"], [1.0], [1.0], now=1090.0)
    assert e.expire(1150.0) == ["b"]
    assert e.streams == ["a"]


def test_growth_is_amortised(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg.model_copy(update={"max_streams": 5000, "new_streams_per_s": None}))
    grows = 0
    cap = e.table.arrays.capacity
    for i in range(0, 5000, 50):
        e.process([f"s{j}" for j in range(i, i + 50)], np.zeros(50), np.ones(50))
        if e.table.arrays.capacity != cap:
            grows += 1
            cap = e.table.arrays.capacity
    assert len(e.streams) == 5000
    assert grows <= 8  # doubling: log2(5000/64) reallocations, not one per stream
    assert cap == 5000  # never more slots than max_streams (doubling would have reached 8192)


def test_duplicates_and_late_samples_are_rejected_without_state_change(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg, reorder_window_s=None)  # late samples within a window: tests/test_reorder.py
    e.process(["a"] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 2.0, 1.0])
    before = checkpoint.snapshot(e)
    r = e.process(["a", "a", "a"], [5.0, 3.0, 4.5], [9.0, 9.0, 9.0])
    assert [r.reject_of(i) for i in range(3)] == ["duplicate", "duplicate", "out_of_order"]
    assert r.reject[0] == DUPLICATE and r.reject[2] == OUT_OF_ORDER
    after = checkpoint.snapshot(e)
    # the state tensors are identical (metadata holds a creation time, so compare arrays)
    ta, _ = checkpoint.decode(before)
    tb, _ = checkpoint.decode(after)
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


# --- admission: a full table or a flood of new names never pushes live streams out -------------------


def test_full_table_evicts_only_streams_idle_past_the_bound(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg.model_copy(update={"max_streams": 3, "evict_idle_s": 100.0}))
    e.process(["a", "b", "c"], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], now=1000.0)
    e.process(["a", "c"], [2.0, 2.0], [1.0, 3.0], now=1050.0)
    r = e.process(["d"], [3.0], [4.0], now=1090.0)  # b idle 90 s < 100 s: nobody may go
    assert list(r.reject) == [OVER_CAPACITY] and r.refused == ["d"] and not r.evicted
    assert sorted(e.streams) == ["a", "b", "c"]
    r = e.process(["d"], [4.0], [4.0], now=1101.0)  # b idle 101 s: it goes, d takes its slot
    assert r.evicted == ["b"] and r.created == ["d"] and list(r.reject) == [0]


def test_new_streams_are_admitted_at_a_bounded_rate(small_cfg: EngineConfig) -> None:
    cfg = small_cfg.model_copy(update={"max_streams": 64, "new_streams_per_s": 2.0, "new_streams_burst": 3})
    e = Engine(cfg)
    r = e.process(["a", "b", "c", "d", "d"], [1.0] * 5, [1.0] * 5, now=100.0)
    assert r.created == ["a", "b", "c"] and r.refused == ["d"]
    assert list(r.reject) == [0, 0, 0, NEW_STREAM_RATE, NEW_STREAM_RATE]
    assert e.process(["e"], [2.0], [1.0], now=100.2).refused == ["e"]  # 0.4 tokens
    r = e.process(["a", "e", "f", "g"], [3.0] * 4, [1.0] * 4, now=101.2)  # 2.4 tokens
    assert r.created == ["e", "f"] and r.refused == ["g"] and r.reject[0] == 0  # known streams go on
    e.process(["h"], [4.0], [1.0], now=1e6)  # the bucket refills to the burst, no further
    assert e.process(["i", "j", "k", "l"], [5.0] * 4, [1.0] * 4, now=1e6).created == ["i", "j"]


def test_a_flood_of_new_names_leaves_live_streams_warm(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg.model_copy(update={"max_streams": 32, "evict_idle_s": 60.0}))
    live = [f"live{i}" for i in range(8)]
    for k in range(30):
        now = 1000.0 + k
        flood = [f"junk{k}_{i}" for i in range(100)]
        e.process(live + flood, [now] * 108, np.ones(108), now=now)
    counts = e.arrays["count"][e.table.lookup(live)]
    assert list(counts) == [30] * 8  # never evicted, never reset
    assert len(e.streams) == 32


def test_a_replay_admits_every_logged_stream_and_spends_no_budget(small_cfg: EngineConfig) -> None:
    """A write-ahead log replays samples taken in once already, all at one ``now``: the admission rate
    must not refuse them (they were acknowledged), nor use up what live arrivals may create."""
    cfg = small_cfg.model_copy(update={"new_streams_per_s": 1.0, "new_streams_burst": 2})
    e = Engine(cfg)
    names = [f"s{i}" for i in range(10)]
    r = e.process(names, np.full(10, 1.0), np.ones(10), now=100.0, limit_admission=False)
    assert r.accepted.all() and len(e.streams) == 10
    live = e.process(["new1", "new2", "new3"], np.full(3, 2.0), np.ones(3), now=100.0)
    assert [live.reject_of(i) for i in range(3)] == ["", "", "new_stream_rate"]  # the burst is intact


def test_finite_extremes_give_no_numpy_warnings(small_cfg: EngineConfig) -> None:
    """Every caller (daemon batches, log replay, NAB, evaluate) gets the engine's own guard."""
    import warnings

    e = Engine(small_cfg.model_copy(update={"horizon": 12}))
    values = [1.0, 1e308, -1.7e308, 1e308, 2.0] * 60 + [0.0, 1e300, -1.7976931348623157e308, 5.0] * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, v in enumerate(values):
            r = e.process(["x"], [float(i)], [v])
            assert r.accepted.all()
            assert r.lower.shape == r.upper.shape == (1, 12)  # the forecast topic's interval
            e.view()  # what metrics export (the forecast path too), outside process()


def test_a_stream_in_a_grown_table_starts_as_a_fresh_one(small_cfg: EngineConfig) -> None:
    """Slots a growth adds are zero (not resident until used): a stream taking one gets the initial
    values, and forecasts and scores exactly as it would alone."""
    cfg = small_cfg.model_copy(update={"new_streams_per_s": None, "max_streams": 1000})
    grown = Engine(cfg)
    start = grown.table.arrays.capacity
    grown.process([f"x{i}" for i in range(start + 5)], np.zeros(start + 5), np.ones(start + 5))
    assert grown.table.arrays.capacity > start
    y = _stream_data(1, 300)["s0"]
    t = np.arange(1.0, 301.0)
    a = grown.process(["late"] * 300, t, y)
    assert grown.table.ids["late"] >= start
    b = Engine(cfg).process(["late"] * 300, t, y)
    _assert_same(a, b, tol=0.0)


def test_a_checkpoint_lacking_a_column_restores_its_initial_values(small_cfg: EngineConfig) -> None:
    e = Engine(small_cfg.model_copy(update={"new_streams_per_s": None, "max_streams": 1000}))
    e.process([f"s{i}" for i in range(200)], np.zeros(200), np.arange(200.0))
    tensors, meta = checkpoint.snapshot_parts(e)
    del tensors["state.rng_min"]  # as a file from before a column existed
    restored = checkpoint.restore_decoded(tensors, meta, "test")
    slots = restored.table.active_slots()
    assert np.isposinf(restored.arrays["rng_min"][slots]).all()
