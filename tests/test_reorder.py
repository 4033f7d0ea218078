"""Late samples within the reorder window are put in order (not rejected), without waiting for them."""

from __future__ import annotations

import numpy as np

from lstm_stream.engine import DUPLICATE, OK, OUT_OF_ORDER, TS_RING, Engine


def _series(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n, dtype=np.float64) * 0.1  # 10 Hz
    return t, 5.0 + np.sin(t)


def _history(e: Engine) -> tuple[np.ndarray, np.ndarray]:
    ((z, y, _excl),) = e.history()
    return z, y


def test_a_late_sample_lands_where_an_in_order_run_put_it(small_cfg) -> None:
    t, y = _series(400)
    in_order = Engine(small_cfg)
    in_order.process(["a"] * 400, t, y)
    late = Engine(small_cfg)
    order = np.r_[np.arange(390), 391, 392, 390, np.arange(393, 400)]  # sample 390 arrives 0.2 s late
    r = late.process(["a"] * 400, t[order], y[order])
    assert (r.reject == OK).all() and late.counters["reordered"] == 1
    assert not r.is_anomaly.any()
    a, b = late.arrays, in_order.arrays
    np.testing.assert_array_equal(np.sort(a["ts_ring"][0]), np.sort(b["ts_ring"][0]))
    np.testing.assert_allclose(late.windows(np.array([0])), in_order.windows(np.array([0])), atol=0.05)
    (z1, y1), (z2, y2) = _history(late), _history(in_order)
    np.testing.assert_allclose(z1, z2, atol=0.05)  # inputs in time order (scaled two steps apart)
    np.testing.assert_allclose(y1[:-1], y2[:-1], atol=0.05)  # targets: each input's successor
    assert a["count"][0] == b["count"][0] == 400
    np.testing.assert_allclose(a["fc_mean"][0], b["fc_mean"][0], atol=0.05)


def test_the_window_and_the_ring_bound_what_is_put_in_order(small_cfg) -> None:
    t, y = _series(40)
    e = Engine(small_cfg, reorder_window_s=0.5)
    e.process(["a"] * 40, t, y)
    newest = t[-1]
    r = e.process(["a"] * 3, [newest - 0.05, newest - 0.65, newest - 0.05], [1.0, 1.0, 1.0])
    # within 0.5 s: in order; 0.65 s late: out_of_order; the same one again: a duplicate
    assert [int(c) for c in r.reject] == [OK, OUT_OF_ORDER, DUPLICATE]
    e = Engine(small_cfg, reorder_window_s=10.0)
    e.process(["a"] * 40, t, y)
    r = e.process(["a", "a"], [t[-TS_RING] - 0.05, t[-TS_RING + 1] - 0.05], [1.0, 1.0])
    assert [int(c) for c in r.reject] == [OUT_OF_ORDER, OK]  # older than the last 8: cannot be placed
    e = Engine(small_cfg, reorder_window_s=None)
    e.process(["a"] * 40, t, y)
    assert e.process(["a"], [newest - 0.05], [1.0]).reject[0] == OUT_OF_ORDER


def test_a_late_sample_keeps_its_predecessors_step_out_of_training() -> None:
    """Put in order between P and N where P's step was left out of training (a NaN target: P was
    anomalous): P -> late stays out, late -> N is trained; elsewhere the targets are the next inputs."""
    from lstm_stream.late import insert, retarget

    hist_z = np.full((2, 8), np.nan, dtype=np.float16)
    hist_z[:, :6] = [0, 1, 2, 4, 5, 6]  # six samples; the late one (3) belongs between 2 and 4
    hist_y = np.full((2, 8), np.nan, dtype=np.float16)
    hist_y[:, :5] = hist_z[:, 1:6]  # each step's target is the next input; the newest's is not known
    hist_y[1, 2] = np.nan  # stream 1: the step from 2 (an anomalous input) was left out
    slots, count, back = np.array([0, 1]), np.array([6, 6]), np.array([3, 3])
    insert(hist_z, slots, count, back, np.array([3.0, 3.0]))
    insert(hist_y, slots, count, back, np.array([np.nan, np.nan]))
    retarget(hist_y, hist_z, slots, count, back)
    np.testing.assert_array_equal(hist_z[0, :7], [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(hist_y[0, :6], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(hist_y[1, [0, 1, 3, 4, 5]], [1, 2, 4, 5, 6])
    assert np.isnan(hist_y[1, 2])  # 2 -> 3 stays out
