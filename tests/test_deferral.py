"""Bounded work per batch: a stream's samples beyond ``max_rounds`` wait for the next batches, in order,
and give the same results as if applied at once; the service carries them and checkpoints below them."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from daemon.ingest.queue import IngestQueue
from daemon.outputs.events import EventPublisher
from daemon.outputs.metrics import Metrics
from daemon.service import batches as batches_mod
from daemon.service.batches import Batches
from daemon.service.finetuner import Finetuner
from daemon.service.tuning import Tuning
from daemon.settings import Settings
from lstm_stream import rounds
from lstm_stream.engine import DEFERRED, Engine


def _mixed_batch(n_live: int, array: int, t: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One sample from each of ``n_live`` streams and an ``array``-sample run of stream ``arr``."""
    rng = np.random.default_rng(int(t))
    names = [f"s{i}" for i in range(n_live)] + ["arr"] * array
    ts = np.concatenate([np.full(n_live, t), t - 1 + np.arange(array) / array])
    return names, ts, np.concatenate([rng.normal(size=n_live), np.sin(np.arange(array) / 5.0)])


def _in_calls(engine: Engine, names: list[str], ts: np.ndarray, values: np.ndarray, **bound) -> tuple:
    """Pass the batch, then what each call deferred, until everything is applied; returns the next
    forecasts in input order, the number of calls and the most of stream ``arr`` one call applied."""
    got = np.full(len(names), np.nan)
    todo = np.arange(len(names))
    calls, most = 0, 0
    while len(todo):
        r = engine.process([names[i] for i in todo], ts[todo], values[todo], **bound)
        applied = r.reject != DEFERRED
        most = max(most, int(np.count_nonzero(applied & (np.asarray(r.stream) == "arr"))))
        got[todo[applied]] = r.next_forecast[applied]
        todo = todo[~applied]
        calls += 1
    return got, calls, most


def test_deferred_samples_give_the_results_of_one_unbounded_call(small_cfg) -> None:
    names, ts, values = _mixed_batch(20, 50, 100.0)
    whole = Engine(small_cfg).process(names, ts, values)
    bounded = Engine(small_cfg)
    got, calls, most = _in_calls(bounded, names, ts, values, max_rounds=8)
    assert calls == 7 and most == 8  # 50 samples at 8 a call
    np.testing.assert_allclose(got, whole.next_forecast, rtol=1e-6)
    assert bounded.counters["rejected"] == 0 and bounded.counters["processed"] == len(names)


def test_a_round_budget_defers_later_rounds_and_keeps_the_results(small_cfg, monkeypatch) -> None:
    """When the time for rounds after the first is up at once, each call steps every stream once (the
    array's next sample with the live ones) and the rest waits; the results are those of one unbounded
    call."""
    ticks = iter(range(10**6))  # a clock a second further on at every look: every bound passes at once
    monkeypatch.setattr(rounds.RoundBudget, "clock", staticmethod(lambda: float(next(ticks))))
    names, ts, values = _mixed_batch(20, 12, 100.0)
    whole = Engine(small_cfg).process(names, ts, values)
    got, calls, most = _in_calls(Engine(small_cfg), names, ts, values, round_budget_s=0.0)
    assert calls == 12 and most == 1
    np.testing.assert_allclose(got, whole.next_forecast, rtol=1e-6)
    roomy = Engine(small_cfg).process(names, ts, values, round_budget_s=60.0)  # 60 ticks: enough
    assert not (roomy.reject == DEFERRED).any()


def test_narrow_later_rounds_get_the_budget_however_slow_the_first_round_was(monkeypatch) -> None:
    """A slow first round (a big batch on a busy machine) must not buy one stream's array a long run of
    narrow rounds: they get ``seconds`` a call."""
    now = [0.0]
    monkeypatch.setattr(rounds.RoundBudget, "clock", staticmethod(lambda: now[0]))
    budget = rounds.RoundBudget(None, 0.002)  # the call starts at 0
    now[0] = 0.100  # bookkeeping and a first round of 1,000 streams took 100 ms
    budget.ran(0, 1000)
    for r in range(1, 100):  # each narrow round: one sample, 0.9 ms
        if not budget.allows(r, 1):
            break
        now[0] += 0.0009
        budget.ran(r, 1)
    assert r == 4  # three narrow rounds ran (2.7 ms), the fourth was refused
    assert budget.allows(0, 1)
    capped = rounds.RoundBudget(3, None)
    assert capped.allows(2, 1000) and not capped.allows(3, 1000)


def test_wide_later_rounds_run_whatever_they_take(monkeypatch) -> None:
    """Batched payloads (every stream sent 20 samples): later rounds as wide as the first are as cheap
    per sample, so the time bound does not defer them (only ``max_rounds`` does)."""
    now = [0.0]
    monkeypatch.setattr(rounds.RoundBudget, "clock", staticmethod(lambda: now[0]))
    budget = rounds.RoundBudget(None, 0.0)  # no time at all for narrow rounds
    now[0] = 0.010  # 200 streams in 10 ms
    budget.ran(0, 200)
    for r in range(1, 20):
        assert budget.allows(r, 200), r
        now[0] += 0.015
        budget.ran(r, 200)
    assert not budget.allows(20, rounds.WIDE - 1)


def _batches(
    tmp_path: Path, cfg, stream_batch_max: int | bool, stream_batch_ms: float | bool = False
) -> tuple[Batches, list]:
    settings = Settings(
        state={"directory": tmp_path},
        ingest={
            "stream_batch_max": stream_batch_max,
            "stream_batch_ms": stream_batch_ms,
        },  # counts by default
        mqtt={"forecast_topic": "fc/{stream}"},
    )
    engine = Engine(cfg)
    metrics = Metrics(CollectorRegistry())
    sent: list = []
    publish = lambda topic, payload, qos, retain: sent.append((topic, json.loads(payload))) or True  # noqa: E731
    events = EventPublisher(publish, "anomalies", "fc/{stream}")
    tuning = Tuning(settings.finetune, Finetuner(tmp_path / "ft", "thread"), engine, metrics)
    batches = Batches(settings, engine, IngestQueue(10_000), metrics, events, tuning, lambda: 1000.0, _raise)
    return batches, sent


def _raise(exc: Exception) -> None:
    raise exc


def test_the_service_carries_deferred_samples_and_checkpoints_below_them(tmp_path: Path, small_cfg) -> None:
    names, ts, values = _mixed_batch(20, 100, 100.0)
    samples = list(zip(names, ts.tolist(), values.tolist(), strict=True))
    batches, sent = _batches(tmp_path, small_cfg, 16)
    batches.applied = 500  # the write-ahead log's next index at start
    batches.process(samples)
    assert batches.pending == 100 - 16
    assert batches.applied == 500 + 20 + 16  # the first carried sample's log index
    more = [("s0", 101.0, 1.0)]
    batches.process(more)  # carried first, then the new one: 16 more of the array
    assert batches.pending == 100 - 32
    while batches.pending:
        batches.process([])
    assert batches.applied == 500 + len(samples) + 1
    arr = [body["ts"] for topic, body in sent if topic == "fc/arr"]  # a forecast per applied sample
    assert len(arr) == 100 and arr == sorted(arr)
    assert batches.engine.counters["processed"] == len(samples) + 1

    unbounded, _ = _batches(tmp_path, small_cfg, False)
    unbounded.process(samples)
    assert unbounded.pending == 0 and unbounded.applied == len(samples)


def test_torch_half_imported_by_a_fine_tune_thread_waits_for_a_later_batch(
    tmp_path: Path, small_cfg, monkeypatch
) -> None:
    """A fine-tune thread importing torch leaves a module without ``set_num_threads`` in sys.modules
    for a while: a batch then must not fail (the engine loop crashed on it), and a later one sets it."""
    batches, _ = _batches(tmp_path, small_cfg, 16)
    half = types.ModuleType("torch")
    monkeypatch.setitem(sys.modules, "torch", half)
    batches.limit_torch_threads()
    calls: list[int] = []
    half.set_num_threads = calls.append  # type: ignore[attr-defined]
    batches.limit_torch_threads()
    batches.limit_torch_threads()
    assert calls == [small_cfg.torch_threads]


def _recording(batches: Batches) -> list[tuple[float, list[str]]]:
    """Wrap the engine's process: each call's monotonic time and streams, in call order."""
    calls: list[tuple[float, list[str]]] = []
    inner = batches.engine.process

    def process(streams, *args, **kwargs):
        calls.append((time.monotonic(), list(streams)))
        return inner(streams, *args, **kwargs)

    batches.engine.process = process  # type: ignore[method-assign]
    return calls


def test_a_long_carry_reaches_the_engine_a_head_at_a_time_and_in_order(
    tmp_path: Path, small_cfg, monkeypatch
) -> None:
    """Only the carry's head goes to the engine, no more of a stream than it can apply in a batch
    (``stream_batch_max``: its bookkeeping stays bounded); new samples of a stream still in the rest
    wait behind it; every sample is applied once, each stream in order."""
    monkeypatch.setattr(batches_mod, "CARRY_HEAD", 10)
    batches, sent = _batches(tmp_path, small_cfg, 4)
    calls = _recording(batches)
    names, ts, values = _mixed_batch(5, 60, 100.0)
    batches.process(list(zip(names, ts.tolist(), values.tolist(), strict=True)))
    assert batches.pending == 60 - 4
    batches.process([("arr", 100.5, 0.0), ("s1", 101.0, 1.0)])  # arr's new one waits; s1's goes now
    assert calls[-1][1].count("arr") == 4 and "s1" in calls[-1][1]
    assert batches.pending == 60 - 8 + 1
    while batches.pending:
        batches.process([])
    assert all(streams.count("arr") <= 4 and len(streams) <= 10 + 2 for _, streams in calls[1:])
    arr = [body["ts"] for topic, body in sent if topic == "fc/arr"]
    assert len(arr) == 61 and arr == sorted(arr)
    assert batches.applied == len(names) + 2
    assert batches.engine.counters["processed"] == len(names) + 2


def test_the_carry_head_is_a_prefix_of_each_stream_within_both_bounds(monkeypatch) -> None:
    """Each stream's first ``per_stream`` carried samples, the first ``CARRY_HEAD`` of those in log
    order: always a prefix of every stream's samples, so each stream stays in order."""
    monkeypatch.setattr(batches_mod, "CARRY_HEAD", 7)
    streams = np.array(["a", "b", "a", "c", "a", "b", "a", "a", "c", "b", "b", "d"], dtype=object)
    go = batches_mod._carry_head(streams, 2)
    assert streams[go].tolist() == ["a", "b", "a", "c", "b", "c", "d"][: go.sum()]
    assert go.sum() == 7
    for name in "abcd":  # taken: a prefix of the stream's samples
        mine = go[streams == name]
        assert not (np.diff(mine.astype(int)) > 0).any(), name
    assert batches_mod._carry_head(streams, None).sum() == 7  # no per-stream bound: CARRY_HEAD alone
    monkeypatch.setattr(batches_mod, "CARRY_HEAD", 100)
    assert batches_mod._carry_head(streams, None).all()
    assert batches_mod._carry_head(streams, 3).sum() == 3 + 3 + 2 + 1


def test_carried_samples_alone_get_one_batch_per_period(tmp_path: Path, small_cfg) -> None:
    """With nothing new queued, the engine thread works a carry off one batch per ``batch_ms``, not
    back to back (it would take a whole core from the receiver and the broker meanwhile)."""
    batches, _ = _batches(tmp_path, small_cfg, 4)
    batches.period = 0.05
    calls = _recording(batches)
    starts: list[float] = []
    inner = batches.engine.process

    def process(streams, *args, **kwargs):
        starts.append(batches._carry_next - batches.period)  # the monotonic time the batch was let start
        return inner(streams, *args, **kwargs)

    batches.engine.process = process  # type: ignore[method-assign]
    names, ts, values = _mixed_batch(5, 40, 100.0)
    batches.process(list(zip(names, ts.tolist(), values.tolist(), strict=True)))
    stop = threading.Event()
    for _ in range(3):
        batches.process_waiting(stop)
    assert len(calls) == 4 and batches.pending == 40 - 16
    # when each batch was let start (what the pacing decides), not when the wrapper ran: the thread
    # can be descheduled between the two under load, which made wall-clock gaps jitter by milliseconds
    gaps = np.diff(starts)
    assert (gaps >= batches.period).all(), gaps


def test_narrow_rounds_get_their_time_once_per_period_whichever_batch_comes(
    tmp_path: Path, small_cfg
) -> None:
    """Under load batches come faster than ``batch_ms``: only the first in a period may spend
    ``stream_batch_ms`` on an array's narrow rounds; the others step it once (in the first round)."""
    batches, _ = _batches(tmp_path, small_cfg, 16, stream_batch_ms=60_000.0)  # time never runs out
    batches.period = 60.0
    names, ts, values = _mixed_batch(5, 50, 100.0)
    batches.process(list(zip(names, ts.tolist(), values.tolist(), strict=True)))
    assert batches.pending == 50 - 16
    batches.process([("s1", 101.0, 1.0)])
    assert batches.pending == 50 - 16 - 1
    batches._carry_next = 0.0  # the period is over
    batches.process([])
    assert batches.pending == 50 - 32 - 1
