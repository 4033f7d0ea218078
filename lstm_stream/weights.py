"""A model's parameters as numpy arrays: what the engine serves from without importing torch.

``Weights`` holds the arrays under the torch ``state_dict`` names with the :class:`ModelConfig` they
belong to. Checkpoints read and write them as they are (safetensors.numpy), the onnxruntime step is
built from them (:mod:`lstm_stream.onnx_step`), and a fine-tuned candidate comes back as them, so the
serving process never needs torch for the stacked LSTM. :meth:`Weights.to_model` gives the torch
``Forecaster`` (training, export, window mode) and :meth:`Weights.of` reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ModelConfig

if TYPE_CHECKING:
    from .models import Forecaster

MIN_SPREAD = 1e-3  # the Gaussian head's floor on the spread (softplus + this)


@dataclass
class Weights:
    """Parameters ``{state_dict name: float array}`` of a model of configuration ``cfg``."""

    cfg: ModelConfig
    arrays: dict[str, np.ndarray]

    @classmethod
    def of(cls, model: Any) -> Weights:
        """Copies of a torch model's parameters (the model's ``cfg`` is its configuration)."""
        arrays = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        return cls(model.cfg, arrays)

    def copy(self) -> Weights:
        """An independent copy (what a fine-tune trains from)."""
        return Weights(self.cfg, {k: v.copy() for k, v in self.arrays.items()})

    def to_model(self) -> Forecaster:
        """The torch model with these parameters, in eval mode (imports torch)."""
        import torch

        from .models import build_model

        model = build_model(self.cfg, seed=None)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.arrays.items()})
        model.eval()
        return model

    @property
    def stacked(self) -> bool:
        """Whether these are a stacked LSTM without residual joins (what the ONNX graph expresses)."""
        return self.cfg.arch == "lstm" and not (self.cfg.use_residual and self.cfg.layers > 1)

    def check(self) -> Weights:
        """Raise ValueError unless the arrays are exactly a stacked LSTM's of ``cfg`` (names and shapes),
        as ``load_state_dict`` would; returns self. Other architectures are checked by torch."""
        if self.cfg.arch != "lstm":
            return self
        want = lstm_shapes(self.cfg)
        got = {k: tuple(v.shape) for k, v in self.arrays.items()}
        if got != want:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise ValueError(
                f"weights do not fit {self.cfg!r}: missing {missing}, unexpected {extra}, shape {wrong}"
            )
        return self

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Layer ``i``'s input weights, recurrent weights, input bias and recurrent bias (torch order)."""
        a, p = self.arrays, f"layers.{i}."
        return a[p + "weight_ih_l0"], a[p + "weight_hh_l0"], a[p + "bias_ih_l0"], a[p + "bias_hh_l0"]


def lstm_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a stacked LSTM of configuration ``cfg`` (StackedLSTM's)."""
    h = cfg.hidden
    out: dict[str, tuple[int, ...]] = {}
    for i in range(cfg.layers):
        p = f"layers.{i}."
        out |= {p + "weight_ih_l0": (4 * h, 1 if i == 0 else h), p + "weight_hh_l0": (4 * h, h)}
        out |= {p + "bias_ih_l0": (4 * h,), p + "bias_hh_l0": (4 * h,)}
    heads = 2 if cfg.head == "gaussian" else 1
    return out | {"head.linear.weight": (heads, h), "head.linear.bias": (heads,)}
