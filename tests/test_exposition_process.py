"""The exposition process: per-stream series rendered from a shared-memory snapshot in a child process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon.outputs import metrics as m
from daemon.outputs.expo_process import PROCESS_NAME, ExpositionProcess
from daemon.outputs.exposition import StreamExporter
from daemon.outputs.metrics import Metrics
from daemon.outputs.snapshot import SnapshotReader, SnapshotWriter
from daemon.outputs.snaptext import SnapshotText, fast_values
from lstm_stream.engine import StreamView
from tests.daemon_proc import Daemon
from tests.test_metrics import AWKWARD, assert_matches, fetch, make_view, parse_streams

COLUMNS = ("value", "forecast", "next_forecast", "score", "in_anomaly", "anomalies", "last_seen", "samples")


def rows_of(view: StreamView) -> dict[str, tuple]:
    return {n: tuple(np.asarray(getattr(view, c))[i] for c in COLUMNS) for i, n in enumerate(view.names)}


def view_of(rows: dict[str, tuple]) -> StreamView:
    cols = list(zip(*rows.values(), strict=True)) if rows else [()] * len(COLUMNS)
    dtypes = (float, float, float, float, bool, np.int64, float, np.int64)
    arrays = {c: np.array(v, dtype=d) for c, v, d in zip(COLUMNS, cols, dtypes, strict=True)}
    return StreamView(names=list(rows), **arrays)


def changed(view: StreamView, share: float, seed: int) -> StreamView:
    """``view`` with the values, forecasts, scores and times of a ``share`` of its streams changed."""
    fresh = make_view(view.names, seed)
    hit = np.random.default_rng(seed).random(len(view.names)) < share
    out = {c: np.array(getattr(view, c)) for c in COLUMNS}
    for c in ("value", "forecast", "next_forecast", "score", "last_seen", "in_anomaly", "anomalies"):
        out[c][hit] = np.asarray(getattr(fresh, c))[hit]
    return StreamView(names=list(view.names), **out)


def headers(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def test_snapshot_text_matches_the_exporter_as_streams_change_come_and_go() -> None:
    names = AWKWARD + [f"plant/line{i % 7}/sensor{i}" for i in range(300)]
    v0 = make_view(names)
    v0.value[1:4] = [1e300, -0.0, 5e-324]
    v0.next_forecast[5:8] = [np.inf, -np.inf, 1e22]
    v1 = changed(v0, 0.3, 1)
    rows = rows_of(v1)
    for gone in (names[3], names[50], names[51]):
        del rows[gone]
    rows = dict(reversed(list(rows.items())))  # streams move to other rows
    rows.update(rows_of(make_view(["new/one", "new\ntwo"], 2)))
    v2 = view_of(rows)
    views = [v0, v1, v2, changed(v2, 0.0, 3), changed(v2, 0.5, 4), view_of({}), v0]
    for mode in ("all", "anomalous"):
        writer = SnapshotWriter(size=4096)  # grows as the names come
        reader = SnapshotReader(writer.fd)
        text = SnapshotText(mode)
        for k, view in enumerate(views):
            writer.update(view)
            got = text.render(reader.read()).decode()
            want = StreamExporter(mode).render_view(view)
            assert headers(got) == headers(want), (mode, k)
            shown = set(parse_streams(want).get(m.VALUE, {}))
            assert_matches(parse_streams(got), view, [i for i, n in enumerate(view.names) if n in shown])
        # an unchanged snapshot (v2 again) formats nothing again: fewer families than 7 per view
        assert text.families_rendered < 7 * (len(views) - 1)
        reader.close()
        writer.close()


def test_fast_values_round_trip_exactly() -> None:
    a = np.array([np.nan, np.inf, -np.inf, 0.1, -2.0, 1e22, 123456789.125, 5e-324, 1e-5, -0.0])
    text = fast_values(a)
    assert text[:3] == ["NaN", "+Inf", "-Inf"]
    assert [float(t) for t in text[3:]] == a[3:].tolist()
    assert str(float(text[-1])) == "-0.0"
    assert fast_values(np.array([1.0, 0.0, 7.0]), integer=True) == ["1", "0", "7"]
    assert fast_values(np.array([])) == []
    r = np.random.default_rng(0)
    x = r.standard_cauchy(5000) * 10.0 ** r.integers(-30, 30, 5000)
    assert [float(t) for t in fast_values(x)] == x.tolist()
    # as the exposition process reads them: memoryviews of the snapshot, no numpy
    assert fast_values(memoryview(a.tobytes()).cast("d")) == text
    assert fast_values(memoryview(np.array([3.0, np.nan]).tobytes()).cast("d"), integer=True) == ["3", "NaN"]


@pytest.fixture
def expo():
    reg = CollectorRegistry()
    met = Metrics(reg, version="0.1.0", model_arch="lstm", hidden=64, layers=2)
    writer = SnapshotWriter()
    state = {"ok": True, "detail": ""}
    ep = ExpositionProcess(
        lambda: generate_latest(reg),
        writer,
        lambda: (state["ok"], state["detail"]),
        observe=met.observe_exposition,
    ).start()
    try:
        yield ep, writer, met, state
    finally:
        ep.stop()
        writer.close()


def test_scrapes_of_the_child_follow_the_engine_batch_by_batch(expo) -> None:
    from lstm_stream.config import EngineConfig, ModelConfig
    from lstm_stream.engine import Engine

    ep, writer, met, state = expo
    url = f"http://127.0.0.1:{ep.port}"
    engine = Engine(EngineConfig(model=ModelConfig(hidden=8, layers=1), look_back=4, history_len=0))
    streams = ["room/t", 'odd "name"', "line\nbreak", "ünï/温度"]
    for step in range(4):
        picked = streams[: 2 + step % 3]  # streams join over the batches
        engine.process(
            picked, np.full(len(picked), 1.0 + step), np.arange(len(picked)) + 20.0 * step, now=100.0 + step
        )
        met.observe_batch(len(picked), 0.001)
        view = engine.view()
        writer.update(view)
        status, ctype, text = fetch(url + "/metrics")
        assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
        assert_matches(parse_streams(text), view, list(range(len(view.names))))
        assert f"{m.BATCH_SIZE}_count {step + 1}.0" in text  # the aggregates come from the parent, live
    assert fetch(url + "/healthz")[:1] == (200,)
    state.update(ok=False, detail="engine loop stalled (12s)")
    assert fetch(url + "/healthz")[0::2] == (503, "engine loop stalled (12s)\n")
    state.update(ok=True)
    text = generate_latest(met.registry).decode()
    assert f'{m.EXPOSITION_REQUESTS}{{work="scrape"}} 4.0' in text


def test_a_dead_child_is_seen_and_replaced_on_the_same_port(expo) -> None:
    ep, writer, _, _ = expo
    writer.update(make_view(["a/b"]))
    url = f"http://127.0.0.1:{ep.port}"
    assert 'stream="a/b"' in fetch(url + "/metrics")[2]
    first = ep.process.pid
    os.kill(first, signal.SIGKILL)
    ep.process.join(30)
    assert not ep.alive()
    assert ep.check() and ep.restarts == 1 and "exit code -9" in ep.error
    assert ep.process.pid != first
    assert 'stream="a/b"' in fetch(url + "/metrics")[2]
    assert not ep.check()  # alive: nothing to do


def _exposition_child(pid: int) -> int:
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if Path(f"/proc/{child}/comm").read_bytes().strip() == PROCESS_NAME:
                return int(child)
    raise AssertionError("no exposition child")


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # a zombie (its parent is gone or has not reaped it): it did exit
            return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
@pytest.mark.slow
def test_the_daemons_exposition_child_is_restarted_and_dies_with_the_daemon(tmp_path, broker) -> None:
    d = Daemon(tmp_path, broker, {"ingest": {"batch_ms": 10}}).start()
    try:
        child = _exposition_child(d.proc.pid)
        os.kill(child, signal.SIGKILL)
        d.wait_metric(m.EXPOSITION_RESTARTS, lambda v: v == 1, timeout=30)
        assert "exposition process ended" in d.log()
        d._wait_healthy(30)
        child = _exposition_child(d.proc.pid)
        d.proc.kill()  # no chance to clean up: the child must see the pipe close
        d.proc.wait(30)
        assert _wait_gone(child), "the exposition process outlived the daemon"
    finally:
        d.close()


def _samples(text: str) -> dict[str, float]:
    """Every sample line of an exposition as {name+labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_snapshot_text_exports_the_forecast_path_steps_as_the_exporter_does(small_cfg) -> None:
    from lstm_stream.engine import Engine

    engine = Engine(small_cfg.model_copy(update={"horizon": 12}))
    t = np.arange(40.0)
    engine.process(["a"] * 40 + ["b"] * 40, np.r_[t, t], np.r_[np.sin(t), np.cos(t)])
    view = engine.view()
    writer = SnapshotWriter(horizons=(1, 12))
    reader = SnapshotReader(writer.fd)
    writer.update(view)
    got = SnapshotText("all", (1, 12)).render(reader.read()).decode()
    want = StreamExporter("all", (1, 12)).render_view(view)
    assert headers(got) == headers(want)
    assert got.count("# TYPE lstm_stream_forecast_ahead gauge") == 1  # one header for both steps
    samples = _samples(got)
    assert samples == pytest.approx(_samples(want), nan_ok=True)
    assert samples['lstm_stream_forecast_ahead{stream="a",horizon="12"}'] == pytest.approx(view.path[0, 11])
    assert samples['lstm_stream_forecast_ahead_upper{stream="b",horizon="1"}'] == pytest.approx(
        view.upper[1, 0]
    )
    reader.close()
    writer.close()


def test_snapshot_text_keeps_the_text_and_a_label_per_stream_not_a_string_per_series() -> None:
    """What the exposition process holds between scrapes at N streams and 10 series each: the
    rendered text and about one label set per stream (a prefix string per series was 2.5 x more)."""
    import tracemalloc

    from daemon.outputs.families import series
    from daemon.outputs.snapshot import Snapshot

    n, horizons = 4000, (1, 12)
    names = [f"plant/line{i % 7}/sensor-{i:05d}/temperature" for i in range(n)]
    cols = np.random.default_rng(0).standard_normal((len(series(horizons)), n))
    snap = Snapshot(1, names, cols, bytes(len(cols)), 0.0)
    text = SnapshotText("all", horizons)
    tracemalloc.start()
    try:
        size = len(text.render(snap))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert size > 50 * len(series(horizons)) * n  # every series rendered
    assert held < 1.4 * size, (held, size)
