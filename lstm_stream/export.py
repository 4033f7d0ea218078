"""ONNX export of the forecaster, checked against onnxruntime, and measured int8 quantization.

Two ONNX graphs: the *window* model (a batch of scaled windows ``(batch, steps)`` -> ``mean``,
``spread``), for every architecture, and the *step* model of the stacked LSTM (``value (batch,)``,
``h``, ``c`` ``(layers, batch, hidden)`` -> ``mean``, ``spread``, ``h_out``, ``c_out``), which is what
the engine runs per sample in stateful mode. Inputs and outputs are in the engine's *scaled* units
(the per-stream online robust scaler lives outside the network); the graph's metadata says so and
carries the engine configuration. Every export is run through onnxruntime on random inputs in the
same call, and the maximum absolute difference from torch is returned.

Quantization is dynamic int8 of the LSTM and Linear weights, measured honestly: size before and
after, and test MAE before and after with the quantized model served by the real :class:`Engine`.
The weights are quantized to 7 bits (``reduce_range``): x86-64 CPUs without VNNI (AVX2 only, or
AVX-512 without VNNI) multiply uint8 activations by int8 weights with ``vpmaddubsw``, whose int16
pair sums saturate for 8-bit weights (2 x 255 x 127 > 32767) but never for 7-bit ones
(2 x 255 x 63 < 32767), so the same file gives the same forecasts on every x86-64 CPU. Measured on
the test's sine model under ``qemu-x86_64 -cpu Haswell``: test MAE +89 % with 8-bit weights,
within 2 % with 7-bit ones. The stored graph is written only if its test MAE grows by no more than
a bound (:class:`QuantizationRejected` otherwise).
Two implementations are measured: onnxruntime's ``quantize_dynamic`` on the exported graph (the
one that is stored: an ONNX file, loadable without pickle) and torch's
``torch.ao.quantization.quantize_dynamic`` (in memory only: its packed int8 weights serialise
only through pickle, which this project never loads, and the API is deprecated in torch 2.x).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import write_atomic
from .config import MAX_MAE_INCREASE, EngineConfig
from .engine import Engine
from .models import Forecaster
from .onnx_step import session

OPSET = 17
TOLERANCE = 1e-4  # max abs difference between torch and onnxruntime accepted by ``export``


@dataclass
class OnnxExport:
    """One exported graph: where, how big, and how far onnxruntime is from torch on random inputs."""

    path: Path
    kind: str  # "window" | "step"
    bytes: int
    max_abs_diff: float
    inputs: list[str]
    outputs: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "bytes": self.bytes,
            "max_abs_diff": self.max_abs_diff,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }


class _Window(nn.Module):
    def __init__(self, model: Forecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(window)


class _Step(nn.Module):
    def __init__(self, model: Forecaster) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, value: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, spread, (h2, c2) = self.model.step(value, (h, c))
        return mean, spread, h2, c2


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' and quantizers' deprecation warnings and root-logger chatter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _metadata(kind: str, cfg: EngineConfig) -> dict[str, str]:
    if kind == "window":
        io_doc = (
            "input window (batch, steps) float32: a stream's last look_back scaled values, oldest first; "
            "outputs mean, spread (batch,): the scaled forecast of the next value and its spread"
        )
    else:
        io_doc = (
            "inputs value (batch,) scaled sample, h and c (layers, batch, hidden) carried state (zeros "
            "for a new stream); outputs mean, spread (batch,) scaled forecast of the next value, "
            "h_out, c_out the state to carry"
        )
    return {
        "lstm_stream.kind": kind,
        "lstm_stream.io": io_doc,
        "lstm_stream.scaling": (
            "values are scaled per stream by the causal robust scaler (lstm_stream.scaling): "
            "z = clip((x - center) / scale, -clip, clip); forecast = center + scale * mean"
        ),
        "lstm_stream.engine_config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
    }


def _export(
    wrapper: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    dynamic: dict[str, dict[int, str]],
    meta: dict[str, str],
    opset: int,
) -> int:
    """torch -> ONNX (TorchScript exporter), metadata added, written atomically; returns bytes."""
    import onnx

    wrapper.eval()  # a fresh wrapper is in training mode: the exporter would keep the dropout
    with tempfile.TemporaryDirectory() as tmp, _quiet(), torch.no_grad():
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapper,
            args,
            str(raw),
            dynamo=False,
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
        proto = onnx.load(str(raw))
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_atomic(path, data)
    return len(data)


def export_window_onnx(
    model: Forecaster, path: str | Path, cfg: EngineConfig, opset: int = OPSET, seed: int = 0
) -> OnnxExport:
    """Export the window model (any architecture) and verify it against onnxruntime."""
    path = Path(path)
    model = copy.deepcopy(model).eval()
    names = (["window"], ["mean", "spread"])
    example = torch.zeros(2, cfg.look_back)
    dynamic = {"window": {0: "batch", 1: "steps"}, "mean": {0: "batch"}, "spread": {0: "batch"}}
    size = _export(_Window(model), (example,), path, names, dynamic, _metadata("window", cfg), opset)
    diff = verify_window(model, path, cfg.look_back, seed)
    return OnnxExport(path, "window", size, diff, *names)


def export_step_onnx(
    model: Forecaster, path: str | Path, cfg: EngineConfig, opset: int = OPSET, seed: int = 0
) -> OnnxExport:
    """Export the single-step stateful model (stacked LSTM only) and verify it against onnxruntime."""
    if not getattr(model, "stateful", False):
        raise ValueError(f"a {cfg.model.arch!r} model runs over whole windows: it has no single-step form")
    path = Path(path)
    model = copy.deepcopy(model).eval()
    names = (["value", "h", "c"], ["mean", "spread", "h_out", "c_out"])
    h, c = model.zero_state(2)
    dynamic = {
        "value": {0: "batch"},
        "h": {1: "batch"},
        "c": {1: "batch"},
        "mean": {0: "batch"},
        "spread": {0: "batch"},
        "h_out": {1: "batch"},
        "c_out": {1: "batch"},
    }
    size = _export(_Step(model), (torch.zeros(2), h, c), path, names, dynamic, _metadata("step", cfg), opset)
    diff = verify_step(model, path, seed)
    return OnnxExport(path, "step", size, diff, *names)


def _max_diff(a: Sequence[np.ndarray], b: Sequence[torch.Tensor]) -> float:
    return max(float(np.max(np.abs(x - y.detach().numpy()))) for x, y in zip(a, b, strict=True))


def verify_window(model: Forecaster, onnx_path: str | Path, look_back: int, seed: int = 0) -> float:
    """Max abs difference torch vs onnxruntime over random windows of two batch sizes and lengths."""
    sess = session(Path(onnx_path))
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch, steps in ((5, look_back), (1, look_back + 7)):
        x = torch.randn(batch, steps, generator=gen) * 2.0
        with torch.no_grad():
            ref = model(x)
        worst = max(worst, _max_diff(sess.run(None, {"window": x.numpy()}), ref))
    return worst


def verify_step(model: Forecaster, onnx_path: str | Path, seed: int = 0) -> float:
    """Max abs difference torch vs onnxruntime of a few chained steps from random states."""
    sess = session(Path(onnx_path))
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in (5, 1):
        h, c = (torch.randn(s.shape, generator=gen) * 0.5 for s in model.zero_state(batch))
        hn, cn = h.numpy(), c.numpy()
        for _ in range(4):
            x = torch.randn(batch, generator=gen) * 2.0
            with torch.no_grad():
                mean, spread, (h, c) = model.step(x, (h, c))
            out = sess.run(None, {"value": x.numpy(), "h": hn, "c": cn})
            worst = max(worst, _max_diff(out, (mean, spread, h, c)))
            hn, cn = out[2], out[3]  # carry onnxruntime's own state: errors must not accumulate
    return worst


class OnnxForecaster:
    """An ONNX graph served by the :class:`Engine` in place of the torch model.

    Has what the engine calls: ``eval()``, ``stateful``, ``model(windows)`` for a window graph and
    ``step(values, (h, c))`` for a step graph. Used to measure a quantized graph on real data.
    """

    def __init__(self, source: str | Path | bytes, threads: int = 1) -> None:
        self.session = session(source, threads)
        names = [i.name for i in self.session.get_inputs()]
        self.kind = "step" if names == ["value", "h", "c"] else "window"
        self.stateful = self.kind == "step"

    def eval(self) -> OnnxForecaster:
        """No-op (the engine calls it on any model)."""
        return self

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, spread = self.session.run(None, {"window": x.numpy().astype(np.float32, copy=False)})
        return torch.from_numpy(mean), torch.from_numpy(spread)

    def step(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step for a batch of streams, as ``StackedLSTM.step``."""
        feeds = {"value": x.numpy(), "h": state[0].numpy(), "c": state[1].numpy()}
        mean, spread, h, c = self.session.run(None, feeds)
        return torch.from_numpy(mean), torch.from_numpy(spread), (torch.from_numpy(h), torch.from_numpy(c))


# ------------------------------------------------------------------ serving series offline
@dataclass
class Served:
    """Per-sample engine outputs for one series, aligned with it."""

    forecast: np.ndarray
    spread: np.ndarray
    score: np.ndarray
    is_anomaly: np.ndarray
    # row i: the path made after series[i] (forecasts of rows i+1..i+H) and its interval; None when
    # the horizon is off
    path: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None


def engine_forecasts(
    cfg: EngineConfig,
    model: Forecaster | OnnxForecaster,
    series: Sequence[np.ndarray],
    chunk: int = 512,
    progress: Callable[[int], None] | None = None,
) -> list[Served]:
    """Serve whole series through a fresh :class:`Engine` exactly as the daemon would, sample by sample.

    Each series is one stream; row ``i`` gets timestamp ``i`` (rows are a sequence: repeated or
    backward timestamps in a file must not make the engine drop samples). ``forecast[i]`` is the
    forecast of ``series[i]`` made after ``series[i-1]`` (NaN for the first row). ``progress``
    receives the number of samples served after each chunk.
    """
    ecfg = cfg.model_copy(
        update={"history_len": 0, "max_streams": max(1, len(series)), "idle_expiry_s": None}
    )
    engine = Engine(ecfg, model)  # type: ignore[arg-type]
    names = [f"s{i}" for i in range(len(series))]
    h = ecfg.horizon or 0
    out = [
        Served(
            *np.full((3, len(s)), np.nan),
            np.zeros(len(s), bool),
            *(np.full((3, len(s), h), np.nan) if h else (None, None, None)),
        )
        for s in series
    ]
    longest = max((len(s) for s in series), default=0)
    for r0 in range(0, longest, chunk):
        streams: list[str] = []
        rows, which = [], []
        for k, s in enumerate(series):
            r = np.arange(r0, min(r0 + chunk, len(s)))
            streams += [names[k]] * len(r)
            rows.append(r)
            which.append(np.full(len(r), k))
        if not streams:
            continue
        row = np.concatenate(rows)
        ser = np.concatenate(which)
        values = np.concatenate(
            [np.asarray(s, dtype=np.float64)[r] for s, r in zip(series, rows, strict=True)]
        )
        res = engine.process(streams, row.astype(np.float64), values)
        bad = np.flatnonzero(res.reject != 0)
        if bad.size:
            raise ValueError(f"the engine rejected row {int(row[bad[0]])}: {res.reject_of(int(bad[0]))}")
        for k in range(len(series)):
            m = ser == k
            o, rr = out[k], row[m]
            o.forecast[rr] = res.forecast[m]
            o.spread[rr] = res.spread[m]
            o.score[rr] = res.score[m]
            o.is_anomaly[rr] = res.is_anomaly[m]
            if h:
                o.path[rr], o.lower[rr], o.upper[rr] = res.path[m], res.lower[m], res.upper[m]
        if progress is not None:
            progress(len(streams))
    return out


def test_mae(
    cfg: EngineConfig,
    model: Forecaster | OnnxForecaster,
    series: Sequence[np.ndarray],
    starts: Sequence[int],
    progress: Callable[[int], None] | None = None,
) -> float:
    """MAE of the engine's model forecasts over every series' test part ``[start:]``, pooled.

    The forecaster selection is off here: this measures the network (with its seasonal blend), which
    the selection would otherwise mask by serving persistence where the network is broken."""
    cfg = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"enabled": False})})
    served = engine_forecasts(cfg, model, series, progress=progress)
    errs = [
        np.abs(np.asarray(s)[a:] - f.forecast[a:]) for s, f, a in zip(series, served, starts, strict=True)
    ]
    err = np.concatenate(errs) if errs else np.zeros(0)
    err = err[np.isfinite(err)]
    return float(err.mean()) if err.size else float("nan")


# ------------------------------------------------------------------ quantization
# MAX_MAE_INCREASE (config.py): the default bound on the int8 graph's test MAE


class QuantizationRejected(RuntimeError):
    """The int8 graph forecasts worse than the bound allows; nothing was written."""


def quantize_onnx(src: str | Path, dst: str | Path) -> int:
    """onnxruntime dynamic int8 quantization (LSTM and MatMul weights, 7-bit so that no x86-64
    kernel saturates: see the module docstring) of ``src`` into ``dst``; returns its size."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(Path(src), out, weight_type=QuantType.QInt8, reduce_range=True)
        data = out.read_bytes()
    write_atomic(dst, data)
    return len(data)


def quantize_torch(model: Forecaster) -> nn.Module:
    """torch's dynamic int8 quantization of every nn.LSTM and nn.Linear (a copy; in memory)."""
    with _quiet():
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(model).eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    q.eval()
    return q


def torch_state_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``, measured in memory (nothing is written)."""
    buf = io.BytesIO()
    with _quiet():
        torch.save(model.state_dict(), buf)
    return buf.tell()


@dataclass
class QuantReport:
    """Size and test-MAE effect of int8 quantization, for the stored ONNX and for torch in memory."""

    path: Path
    kind: str  # the ONNX graph that was quantized: "step" (stateful LSTM) or "window"
    mae_float: float
    onnx_bytes_float: int
    onnx_bytes_int8: int
    onnx_mae_int8: float
    torch_bytes_float: int
    torch_bytes_int8: int
    torch_mae_int8: float
    test_points: int
    max_mae_increase: float = MAX_MAE_INCREASE
    notes: list[str] = field(default_factory=list)

    @property
    def onnx_rel_change(self) -> float:
        """Relative change of the stored int8 graph's test MAE against the float model's."""
        return self._rel(self.onnx_mae_int8, self.mae_float)

    @property
    def accepted(self) -> bool:
        """Whether the stored graph keeps its test MAE within the bound (NaN is never accepted)."""
        return bool(self.onnx_rel_change <= self.max_mae_increase)

    @staticmethod
    def _rel(after: float, before: float) -> float:
        return (after - before) / before if before else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``stored`` is the file written, ``torch_dynamic`` the in-memory variant."""
        return {
            "test_mae_float": self.mae_float,
            "test_points": self.test_points,
            "stored": {
                "path": str(self.path),
                "format": f"ONNX, onnxruntime dynamic int8, 7-bit weights ({self.kind} graph)",
                "bytes_before": self.onnx_bytes_float,
                "bytes_after": self.onnx_bytes_int8,
                "size_ratio": self.onnx_bytes_int8 / self.onnx_bytes_float,
                "test_mae": self.onnx_mae_int8,
                "mae_change": self.onnx_mae_int8 - self.mae_float,
                "mae_rel_change": self.onnx_rel_change,
                "max_mae_increase": self.max_mae_increase,
                "accepted": self.accepted,
            },
            "torch_dynamic": {
                "stored": False,
                "why": "packed int8 weights serialise only via pickle (torch.save), never loaded here",
                "bytes_before": self.torch_bytes_float,
                "bytes_after": self.torch_bytes_int8,
                "size_ratio": self.torch_bytes_int8 / self.torch_bytes_float,
                "test_mae": self.torch_mae_int8,
                "mae_change": self.torch_mae_int8 - self.mae_float,
                "mae_rel_change": self._rel(self.torch_mae_int8, self.mae_float),
            },
            "notes": self.notes,
        }


def quantize_and_measure(
    model: Forecaster,
    cfg: EngineConfig,
    out: str | Path,
    series: Sequence[np.ndarray],
    starts: Sequence[int],
    progress: Callable[[int], None] | None = None,
    max_mae_increase: float = MAX_MAE_INCREASE,
) -> QuantReport:
    """Quantize to int8 both ways and measure size and test MAE through the engine.

    The graph quantized is the one the engine runs for ``cfg``: the step graph for a stateful
    LSTM, the window graph otherwise. Writes only ``out`` (the int8 ONNX), and only when its test
    MAE grows by at most ``max_mae_increase`` (relative); otherwise raises
    :class:`QuantizationRejected` carrying the report. The series are served three times (float,
    onnxruntime int8, torch int8); ``progress`` sees every served chunk.
    """
    out = Path(out)
    stateful = cfg.mode == "stateful" and getattr(model, "stateful", False)
    kind = "step" if stateful else "window"
    mae_float = test_mae(cfg, model, series, starts, progress)
    with tempfile.TemporaryDirectory() as tmp:
        fp, q_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        exp = (export_step_onnx if stateful else export_window_onnx)(model, fp, cfg)
        if exp.max_abs_diff > TOLERANCE:
            raise RuntimeError(f"float ONNX differs from torch by {exp.max_abs_diff:.3g}")
        size_q = quantize_onnx(fp, q_path)
        onnx_mae = test_mae(cfg, OnnxForecaster(q_path), series, starts, progress)
        int8_graph = q_path.read_bytes()
    tq = quantize_torch(model)
    torch_mae = test_mae(cfg, tq, series, starts, progress)  # type: ignore[arg-type]
    points = sum(max(0, len(s) - a) for s, a in zip(series, starts, strict=True))
    report = QuantReport(
        out,
        kind,
        mae_float,
        exp.bytes,
        size_q,
        onnx_mae,
        torch_state_bytes(model),
        torch_state_bytes(tq),
        torch_mae,
        points,
        max_mae_increase,
    )
    if not report.accepted:
        raise QuantizationRejected(report)
    write_atomic(out, int8_graph)
    return report
