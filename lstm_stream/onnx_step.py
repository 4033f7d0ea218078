"""The stacked LSTM's serving step as an ONNX graph built from its weights, run by onnxruntime.

The engine steps every stream of a round through one LSTM step. onnxruntime runs that step in 0.3x
torch's time for a few streams and 0.67x for 10k (``scripts/bench_step.py``: its kernels have less
per-call overhead than torch's dispatcher), with the same outputs within 1e-6. The graph is written
node by node from the weights (ONNX ``LSTM`` per layer, then the head), in milliseconds, so a model
swapped in after fine-tuning is served the same way without tracing an export. Inputs and outputs are
those of :func:`lstm_stream.export.export_step_onnx`: ``value (n,)``, ``h``/``c (layers, n, hidden)``
-> ``mean``, ``spread``, ``h_out``, ``c_out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import EngineConfig
from .models import MIN_SPREAD, StackedLSTM

OPSET = 17
# torch orders an LSTM's gate blocks input, forget, cell, output; ONNX input, output, forget, cell
TORCH_TO_ONNX_GATES = (0, 3, 1, 2)


def available() -> bool:
    """Whether onnx and onnxruntime can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def servable(model: Any) -> bool:
    """Whether :func:`step_graph` can serve ``model``: a plain float stacked LSTM without residuals."""
    if type(model) is not StackedLSTM or (model.residual and model.cfg.layers > 1):
        return False
    return all(type(layer) is torch.nn.LSTM for layer in model.layers)


def _gates(w: np.ndarray) -> np.ndarray:
    """Reorder the four gate blocks of a torch LSTM weight or bias (first axis) to ONNX's order."""
    blocks = np.split(w, 4, axis=0)
    return np.concatenate([blocks[i] for i in TORCH_TO_ONNX_GATES], axis=0)


def step_graph(model: StackedLSTM) -> bytes:
    """The serialized ONNX step graph of ``model`` (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.cfg
    hidden, layers = cfg.hidden, cfg.layers
    f32 = TensorProto.FLOAT
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    split = const("split_sizes", np.ones(layers, dtype=np.int64))
    nodes.append(helper.make_node("Split", ["h", split], [f"h{i}" for i in range(layers)], axis=0))
    nodes.append(helper.make_node("Split", ["c", split], [f"c{i}" for i in range(layers)], axis=0))
    axes0 = const("axes0", np.array([0], dtype=np.int64))
    axes1 = const("axes1", np.array([1], dtype=np.int64))
    # (n,) -> (seq 1, n, input 1)
    nodes.append(helper.make_node("Unsqueeze", ["value", const("axes02", np.array([0, 2], np.int64))], ["x"]))
    inp = "x"  # (seq 1, n, input)
    for i, layer in enumerate(model.layers):
        w = _gates(layer.weight_ih_l0.detach().numpy())[None]
        r = _gates(layer.weight_hh_l0.detach().numpy())[None]
        b_ih = _gates(layer.bias_ih_l0.detach().numpy())
        b_hh = _gates(layer.bias_hh_l0.detach().numpy())
        b = np.concatenate([b_ih, b_hh])[None]
        outs = [f"y{i}", f"h_out{i}", f"c_out{i}"]
        args = [inp, const(f"W{i}", w), const(f"R{i}", r), const(f"B{i}", b), "", f"h{i}", f"c{i}"]
        nodes.append(helper.make_node("LSTM", args, outs, hidden_size=hidden))
        nodes.append(helper.make_node("Squeeze", [f"y{i}", axes1], [f"x{i + 1}"]))  # (1, n, hidden)
        inp = f"x{i + 1}"
    nodes.append(helper.make_node("Concat", [f"h_out{i}" for i in range(layers)], ["h_out"], axis=0))
    nodes.append(helper.make_node("Concat", [f"c_out{i}" for i in range(layers)], ["c_out"], axis=0))
    nodes.append(helper.make_node("Squeeze", [f"h_out{layers - 1}", axes0], ["top"]))  # (n, hidden)
    lin = model.head.linear
    head_w = const("head_w", lin.weight.detach().numpy().T.copy())
    head_b = const("head_b", lin.bias.detach().numpy())
    nodes.append(helper.make_node("Gemm", ["top", head_w, head_b], ["out"]))
    cols = ["m_col", "s_col"] if model.head.gaussian else ["m_col"]
    nodes.append(helper.make_node("Split", ["out"], cols, axis=1))  # equal parts, one per output
    nodes.append(helper.make_node("Squeeze", ["m_col", axes1], ["mean0"]))  # (n,)
    if model.head.predict_delta:
        nodes.append(helper.make_node("Add", ["mean0", "value"], ["mean"]))
    else:
        nodes.append(helper.make_node("Identity", ["mean0"], ["mean"]))
    if model.head.gaussian:
        nodes.append(helper.make_node("Squeeze", ["s_col", axes1], ["s0"]))
        nodes.append(helper.make_node("Softplus", ["s0"], ["s1"]))
        nodes.append(
            helper.make_node("Add", ["s1", const("min_spread", np.array(MIN_SPREAD, np.float32))], ["spread"])
        )
    else:  # a point head: spread 1, shaped like the mean
        nodes.append(helper.make_node("Mul", ["mean", const("zero", np.array(0, np.float32))], ["z0"]))
        nodes.append(helper.make_node("Add", ["z0", const("one", np.array(1, np.float32))], ["spread"]))
    n, state = "n", [layers, "n", hidden]
    graph = helper.make_graph(
        nodes,
        "lstm_stream_step",
        [
            helper.make_tensor_value_info("value", f32, [n]),
            helper.make_tensor_value_info("h", f32, state),
            helper.make_tensor_value_info("c", f32, state),
        ],
        [
            helper.make_tensor_value_info("mean", f32, [n]),
            helper.make_tensor_value_info("spread", f32, [n]),
            helper.make_tensor_value_info("h_out", f32, state),
            helper.make_tensor_value_info("c_out", f32, state),
        ],
        inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_model.ir_version = 8
    return onnx_model.SerializeToString()


def session(source: str | Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session on a file or serialized model (``threads`` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


class OnnxStep:
    """``step(z, h, c)`` on numpy arrays through onnxruntime: what :meth:`Engine._forecast` calls."""

    def __init__(self, model: StackedLSTM, threads: int = 1) -> None:
        self.session = session(step_graph(model), threads)

    def step(
        self, z: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One step: scaled inputs ``(n,)`` and states ``(layers, n, hidden)`` (float32)."""
        mean, spread, h2, c2 = self.session.run(None, {"value": z, "h": h, "c": c})
        return mean, spread, h2, c2


def stepper(model: Any, config: EngineConfig, stateful: bool) -> OnnxStep | None:
    """The onnxruntime step that serves ``model`` under ``config.runtime``, or None: torch serves it
    (``runtime = "torch"``, window mode, a model this graph cannot express, or no onnxruntime)."""
    if config.runtime == "torch" or not stateful or not servable(model):
        return None
    if config.runtime == "auto" and not available():
        return None
    return OnnxStep(model, config.torch_threads)
