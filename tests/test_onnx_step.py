"""The onnxruntime serving step (lstm_stream/onnx_step.py) computes what torch's step does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstm_stream.config import EngineConfig, ModelConfig
from lstm_stream.engine import Engine
from lstm_stream.models import build_model
from lstm_stream.onnx_step import STEP_CHUNK, OnnxStep, servable, step_graph
from lstm_stream.weights import Weights

pytest.importorskip("onnxruntime")

# float32 kernels differ in summation order (and per instruction set): agree to this, not bit for bit
ATOL = 1e-5


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(hidden=16, layers=2),
        ModelConfig(hidden=8, layers=1, head="mse"),
        ModelConfig(hidden=12, layers=3, predict_delta=False),
    ],
    ids=["gaussian-2", "mse-1", "no-delta-3"],
)
@pytest.mark.parametrize("n", [1, 5, 300, STEP_CHUNK + 300])
def test_step_matches_torch(cfg: ModelConfig, n: int) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert servable(model)
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    h, c = (0.5 * rng.normal(size=(2, cfg.layers, n, cfg.hidden))).astype(np.float32)
    with torch.inference_mode():
        mean, spread, (h2, c2) = model.step(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    got = OnnxStep(model).step(x, h, c)
    for a, b in zip(got, (mean, spread, h2, c2), strict=True):
        assert a.shape == tuple(b.shape) and a.dtype == np.float32
        np.testing.assert_allclose(a, b.numpy(), atol=ATOL)


def test_models_the_graph_cannot_express_stay_on_torch() -> None:
    assert not servable(build_model(ModelConfig(hidden=8, layers=4, residual=True)))
    assert not servable(build_model(ModelConfig(arch="bilstm", hidden=8)))


def test_engine_serves_alike_on_either_runtime() -> None:
    torch.manual_seed(0)
    mcfg = ModelConfig(hidden=16, layers=2)
    model = build_model(mcfg)
    rng = np.random.default_rng(0)
    t = np.arange(400.0)
    values = np.sin(t / 7)[:, None] + 0.1 * rng.normal(size=(400, 3))
    out = {}
    for runtime in ("onnxruntime", "torch"):
        e = Engine(EngineConfig(model=mcfg, runtime=runtime, max_streams=8), model)
        assert (e._runner.stepper is None) == (runtime == "torch")
        steps = zip(t, values, strict=True)
        rows = [e.process(["a", "b", "c"], [ti] * 3, v).next_forecast for ti, v in steps]
        out[runtime] = np.array(rows)
    np.testing.assert_allclose(out["onnxruntime"], out["torch"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [ModelConfig(hidden=16, layers=2), ModelConfig(hidden=8, layers=1, head="mse")],
    ids=["gaussian-2", "mse-1"],
)
@pytest.mark.parametrize("n", [1, 300])
def test_replay_matches_torch(cfg: ModelConfig, n: int) -> None:
    """The window replay after a swap or a late sample: one onnxruntime call over (steps, slots)."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    win = np.random.default_rng(n).normal(size=(n, 32)).astype(np.float32)
    win[0, :10] = 0.0  # a short stream's window is zero-padded at the front
    with torch.inference_mode():
        out, (h, c) = model.run(torch.from_numpy(win))
        mean, spread = model.head(out[:, -1], torch.from_numpy(win[:, -1]))
    got = OnnxStep(Weights.of(model)).replay(win)
    for a, b in zip(got, (mean, spread, h, c), strict=True):
        assert a.shape == tuple(b.shape) and a.dtype == np.float32
        np.testing.assert_allclose(a, b.numpy(), atol=ATOL)


def test_swaps_and_late_samples_alike_on_either_runtime() -> None:
    """Replays (a swap, a late sample put in order) give the same outputs on onnxruntime and torch."""
    torch.manual_seed(0)
    mcfg = ModelConfig(hidden=16, layers=2)
    model = build_model(mcfg)
    swapped = Weights.of(model)
    swapped.arrays = {k: v + 0.05 * np.sign(v) for k, v in swapped.arrays.items()}
    t = np.arange(300.0)
    values = np.sin(t / 7)[:, None] + 0.1 * np.random.default_rng(1).normal(size=(300, 2))
    out = {}
    for runtime in ("onnxruntime", "torch"):
        e = Engine(EngineConfig(model=mcfg, runtime=runtime, max_streams=4), Weights.of(model))
        rows = []
        for i, (ti, v) in enumerate(zip(t, values, strict=True)):
            if i == 150:
                e.swap_model(swapped.copy())
            if i == 200:  # late by 0.25 s: put in order, the stream's state replayed
                rows.append(e.process(["a"], [ti - 1.25], [v[0]]).next_forecast.tolist() * 2)
            rows.append(e.process(["a", "b"], [ti] * 2, v).next_forecast.tolist())
        assert e.counters["reordered"] == 1 and e.model_version == 1
        out[runtime] = np.array(rows)
    np.testing.assert_allclose(out["onnxruntime"], out["torch"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sequence", [False, True], ids=["step", "sequence"])
def test_graph_is_valid_onnx_written_canonically(sequence: bool) -> None:
    """The graph is written without the onnx package (onnx_proto): onnx must read it, its checker
    accept it, and its serializer write back the very same bytes."""
    onnx = pytest.importorskip("onnx")
    model = build_model(ModelConfig(hidden=8, layers=2, head="mse"))
    data = step_graph(Weights.of(model), sequence=sequence)
    parsed = onnx.load_from_string(data)
    onnx.checker.check_model(parsed, full_check=True)
    assert parsed.SerializeToString() == data
    assert [i.name for i in parsed.graph.input][0] == ("values" if sequence else "value")


# a fresh process with the shipped model's step; the snippet after it prints how many MB of anonymous
# memory it grew by (``anon()`` before and after)
MEMORY_PRELUDE = """
import numpy as np
from lstm_stream.onnx_step import OnnxStep
from lstm_stream.pretrained import load_pretrained
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) // 1024
step = OnnxStep(load_pretrained().weights)
"""

REPLAY_MEMORY = """
windows = np.random.default_rng(0).standard_normal((4096, 32))
step.replay(windows[:8])  # the session exists
before = anon()
step.replay(windows)  # what a model swap does per 4096 streams
print(anon() - before)
"""


def _anon_growth_mb(snippet: str) -> str:
    """What ``snippet`` printed, run after :data:`MEMORY_PRELUDE` in a fresh interpreter."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PRELUDE + snippet], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_a_replay_gives_onnxruntimes_arena_back() -> None:
    """A model swap replays every stream's window, 4096 at a time: onnxruntime's arena kept the
    call's peak (about 220 MB) for good; the replay now shrinks it after the call."""
    kept = _anon_growth_mb(REPLAY_MEMORY)
    assert int(kept) < 40, f"{kept} MB kept after a replay of 4096 windows"


STEP_MEMORY = """
n, hidden = 10000, step.weights.cfg.hidden
z = np.random.default_rng(0).standard_normal(n).astype(np.float32)
h = np.zeros((step.weights.cfg.layers, n, hidden), dtype=np.float32)
c = h.copy()
step.step(z[:8], h[:, :8], c[:, :8])  # the session has run once
before = anon()
for _ in range(3):
    mean, spread, h, c = step.step(z, h, c)
print(anon() - before)
"""


def test_a_wide_step_runs_in_chunks_that_keep_onnxruntimes_arena_small() -> None:
    """A round of 10k streams: in one call onnxruntime's arena kept about 40 MB beyond the 20 MB of
    states in and out; in calls of ``STEP_CHUNK`` streams a few MB, with the same results."""
    kept = _anon_growth_mb(STEP_MEMORY)
    assert int(kept) < 35, f"{kept} MB kept after steps of 10,000 streams"


def test_a_chunked_step_is_the_one_call_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstm_stream import onnx_step
    from lstm_stream.pretrained import load_pretrained

    step = OnnxStep(load_pretrained().weights)
    rng = np.random.default_rng(1)
    n, cfg = 2 * STEP_CHUNK + 7, step.weights.cfg
    z = rng.standard_normal(n).astype(np.float32)
    h, c = (0.5 * rng.standard_normal((2, cfg.layers, n, cfg.hidden))).astype(np.float32)
    chunked = step.step(z, h, c)
    monkeypatch.setattr(onnx_step, "STEP_CHUNK", n)
    whole = step.step(z, h, c)
    for a, b in zip(chunked, whole, strict=True):
        np.testing.assert_array_equal(a, b)
