"""The stacked LSTM's serving step as an ONNX graph built from its weights, run by onnxruntime.

The engine steps every stream of a round through one LSTM step. onnxruntime runs that step in 0.3x
torch's time for a few streams and 0.67x for 10k (``scripts/bench_step.py``: its kernels have less
per-call overhead than torch's dispatcher), with the same outputs within 1e-6. The graph is written
node by node from the weights (ONNX ``LSTM`` per layer, then the head), in milliseconds, so a model
swapped in after fine-tuning is served the same way without tracing an export. Inputs and outputs are
those of :func:`lstm_stream.export.export_step_onnx`: ``value (n,)``, ``h``/``c (layers, n, hidden)``
-> ``mean``, ``spread``, ``h_out``, ``c_out``. The same graph over a whole sequence (``values (steps,
n)``) replays windows after a swap or a late sample. Everything is built from numpy
:class:`~lstm_stream.weights.Weights`: serving needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import onnx_proto as proto
from .config import EngineConfig
from .weights import MIN_SPREAD, Weights

OPSET = 17
IR_VERSION = 8
# torch orders an LSTM's gate blocks input, forget, cell, output; ONNX input, output, forget, cell
TORCH_TO_ONNX_GATES = (0, 3, 1, 2)
# the widest step onnxruntime runs in one call: its arena keeps what the widest call ever needed (after
# steps of 10k streams a process held 60 MB more, the 20 MB of states in and out included; in calls of
# 1,024 streams 21 MB, at the same CPU time per sample)
STEP_CHUNK = 1024


def available() -> bool:
    """Whether onnxruntime can be imported (the graph is written without the onnx package)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def servable(model: Any) -> bool:
    """Whether :func:`step_graph` can serve ``model`` (:class:`Weights` or a torch model): a plain
    float stacked LSTM without residuals."""
    if isinstance(model, Weights):
        return model.stacked
    import torch  # a torch model is here: torch is imported already

    from .models import StackedLSTM

    if type(model) is not StackedLSTM or (model.residual and model.cfg.layers > 1):
        return False
    return all(type(layer) is torch.nn.LSTM for layer in model.layers)


def as_weights(model: Any) -> Weights:
    """``model`` as :class:`Weights` (a torch model's parameters are copied)."""
    return model if isinstance(model, Weights) else Weights.of(model)


def _gates(w: np.ndarray) -> np.ndarray:
    """Reorder the four gate blocks of a torch LSTM weight or bias (first axis) to ONNX's order."""
    blocks = np.split(w, 4, axis=0)
    return np.concatenate([blocks[i] for i in TORCH_TO_ONNX_GATES], axis=0)


def step_graph(model: Weights | Any, sequence: bool = False) -> bytes:
    """The serialized ONNX step graph of ``model`` (see the module docstring); ``sequence``: over
    ``values (steps, n)`` instead of one ``value (n,)``, the forecast after the last step."""
    w = as_weights(model)
    cfg = w.cfg
    hidden, layers = cfg.hidden, cfg.layers
    inits: list[bytes] = []
    nodes: list[bytes] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(proto.tensor(name, value))
        return name

    split = const("split_sizes", np.ones(layers, dtype=np.int64))
    nodes.append(proto.node("Split", ["h", split], [f"h{i}" for i in range(layers)], axis=0))
    nodes.append(proto.node("Split", ["c", split], [f"c{i}" for i in range(layers)], axis=0))
    axes0 = const("axes0", np.array([0], dtype=np.int64))
    axes1 = const("axes1", np.array([1], dtype=np.int64))
    if sequence:  # (steps, n) -> (steps, n, input 1); the last step's value feeds a delta head
        nodes.append(proto.node("Unsqueeze", ["values", const("axes2", np.array([2], np.int64))], ["x"]))
        last = const("last", np.array([-1], np.int64))
        nodes.append(proto.node("Gather", ["values", last], ["last_row"], axis=0))  # (1, n)
        nodes.append(proto.node("Squeeze", ["last_row", axes0], ["value"]))
    else:  # (n,) -> (seq 1, n, input 1)
        axes02 = const("axes02", np.array([0, 2], np.int64))
        nodes.append(proto.node("Unsqueeze", ["value", axes02], ["x"]))
    inp = "x"  # (seq, n, input)
    for i in range(layers):
        w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=np.float32) for a in w.layer(i))
        b = np.concatenate([_gates(b_ih), _gates(b_hh)])[None]
        outs = [f"y{i}", f"h_out{i}", f"c_out{i}"]
        args = [
            inp,
            const(f"W{i}", _gates(w_ih)[None]),
            const(f"R{i}", _gates(w_hh)[None]),
            const(f"B{i}", b),
        ]
        args += ["", f"h{i}", f"c{i}"]
        nodes.append(proto.node("LSTM", args, outs, hidden_size=hidden))
        nodes.append(proto.node("Squeeze", [f"y{i}", axes1], [f"x{i + 1}"]))  # (seq, n, hidden)
        inp = f"x{i + 1}"
    nodes.append(proto.node("Concat", [f"h_out{i}" for i in range(layers)], ["h_out"], axis=0))
    nodes.append(proto.node("Concat", [f"c_out{i}" for i in range(layers)], ["c_out"], axis=0))
    nodes.append(proto.node("Squeeze", [f"h_out{layers - 1}", axes0], ["top"]))  # (n, hidden)
    gaussian = cfg.head == "gaussian"
    head_w = const("head_w", np.asarray(w.arrays["head.linear.weight"], np.float32).T.copy())
    head_b = const("head_b", np.asarray(w.arrays["head.linear.bias"], np.float32))
    nodes.append(proto.node("Gemm", ["top", head_w, head_b], ["out"]))
    cols = ["m_col", "s_col"] if gaussian else ["m_col"]
    nodes.append(proto.node("Split", ["out"], cols, axis=1))  # equal parts, one per output
    nodes.append(proto.node("Squeeze", ["m_col", axes1], ["mean0"]))  # (n,)
    if cfg.predict_delta:
        nodes.append(proto.node("Add", ["mean0", "value"], ["mean"]))
    else:
        nodes.append(proto.node("Identity", ["mean0"], ["mean"]))
    if gaussian:
        nodes.append(proto.node("Squeeze", ["s_col", axes1], ["s0"]))
        nodes.append(proto.node("Softplus", ["s0"], ["s1"]))
        nodes.append(
            proto.node("Add", ["s1", const("min_spread", np.array(MIN_SPREAD, np.float32))], ["spread"])
        )
    else:  # a point head: spread 1, shaped like the mean
        nodes.append(proto.node("Mul", ["mean", const("zero", np.array(0, np.float32))], ["z0"]))
        nodes.append(proto.node("Add", ["z0", const("one", np.array(1, np.float32))], ["spread"]))
    state = [layers, "n", hidden]
    first = ("values", ["steps", "n"]) if sequence else ("value", ["n"])
    inputs = [first, ("h", state), ("c", state)]
    outputs = [("mean", ["n"]), ("spread", ["n"]), ("h_out", state), ("c_out", state)]
    return proto.model(
        nodes,
        "lstm_stream_step",
        [proto.value_info(name, proto.FLOAT, dims) for name, dims in inputs],
        [proto.value_info(name, proto.FLOAT, dims) for name, dims in outputs],
        inits,
        OPSET,
        IR_VERSION,
    )


def session(source: str | Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session on a file or serialized model (``threads`` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _shrinking_run() -> Any:
    """Run options that give onnxruntime's arena back after the call. A replay of 4096 windows
    peaks at about 220 MB; the arena kept all of it (the engine grew by 222 MB at its first model
    swap at 10k streams; with these, 5 MB, at the same CPU time)."""
    import onnxruntime as ort

    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


class OnnxStep:
    """``step(z, h, c)`` on numpy arrays through onnxruntime: what :meth:`Engine._forecast` calls; and
    ``replay(windows)``, the same LSTM over whole windows from zero state."""

    def __init__(self, model: Weights | Any, threads: int = 1) -> None:
        self.weights = as_weights(model)
        self.threads = threads
        self.session = session(step_graph(self.weights), threads)
        self._sequence: Any = None  # the sequence graph's session, built at the first replay

    def step(
        self, z: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One step: scaled inputs ``(n,)`` and states ``(layers, n, hidden)`` (float32), in calls of
        at most ``STEP_CHUNK`` streams."""
        n = len(z)
        if n <= STEP_CHUNK:
            mean, spread, h2, c2 = self.session.run(None, {"value": z, "h": h, "c": c})
            return mean, spread, h2, c2
        mean, spread = np.empty((2, n), dtype=np.float32)
        h2, c2 = np.empty_like(h), np.empty_like(c)
        for lo in range(0, n, STEP_CHUNK):
            part = slice(lo, lo + STEP_CHUNK)
            h_part, c_part = np.ascontiguousarray(h[:, part]), np.ascontiguousarray(c[:, part])
            feed = {"value": z[part], "h": h_part, "c": c_part}
            mean[part], spread[part], h2[:, part], c2[:, part] = self.session.run(None, feed)
        return mean, spread, h2, c2

    def replay(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Windows ``(n, steps)`` run from zero state in one call: the forecast after each window's
        last step (mean, spread ``(n,)``) and the state then (h, c ``(layers, n, hidden)``)."""
        if self._sequence is None:
            self._sequence = session(step_graph(self.weights, sequence=True), self.threads)
        cfg = self.weights.cfg
        values = np.ascontiguousarray(windows.T, dtype=np.float32)
        zeros = np.zeros((cfg.layers, values.shape[1], cfg.hidden), dtype=np.float32)
        mean, spread, h, c = self._sequence.run(
            None, {"values": values, "h": zeros, "c": zeros}, _shrinking_run()
        )
        return mean, spread, h, c


def stepper(model: Any, config: EngineConfig, stateful: bool) -> OnnxStep | None:
    """The onnxruntime step that serves ``model`` under ``config.runtime``, or None: torch serves it
    (``runtime = "torch"``, window mode, a model this graph cannot express, or no onnxruntime)."""
    if config.runtime == "torch" or not stateful or not servable(model):
        return None
    if config.runtime == "auto" and not available():
        return None
    return OnnxStep(model, config.torch_threads)
