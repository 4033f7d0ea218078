"""The model behind the engine: numpy weights run by onnxruntime, or a torch model where they cannot be.

With the default settings (a stacked LSTM, stateful mode, onnxruntime installed) the engine serves
from :class:`~lstm_stream.weights.Weights` through :class:`~lstm_stream.onnx_step.OnnxStep`, both the
per-sample step and the window replay after a swap or a late sample, and torch is never imported.
Window mode, models the ONNX graph cannot express and ``runtime = "torch"`` run a torch model, which
this imports (and builds from the weights) only then.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from . import onnx_step
from .config import EngineConfig
from .weights import Weights

if TYPE_CHECKING:
    from .models import Forecaster


def _torch(config: EngineConfig) -> Any:
    """torch, imported now, set to the engine's thread count."""
    import torch

    torch.set_num_threads(config.torch_threads)
    return torch


class ModelRunner:
    """Runs one model's forecasts for the engine: ``step`` (stateful), ``window`` and ``replay``."""

    def __init__(self, model: Forecaster | Weights | None, config: EngineConfig) -> None:
        self.config = config
        self._model: Forecaster | None = None  # the torch model, once built or when given
        self._torch: Any = None  # torch, once the model is
        self._weights: Weights | None = None
        if isinstance(model, Weights):
            self._weights = model.check()
        elif model is None:
            from .models import build_model

            self._torch = _torch(config)
            self._model = build_model(config.model)
        else:
            self._torch = _torch(config)
            self._model = model
        if self._model is not None:
            self._model.eval()
        arch_stateful = self._weights.cfg.arch == "lstm" if self._weights else self._model.stateful
        self.stateful = config.mode == "stateful" and arch_stateful
        self.stepper = onnx_step.stepper(self._weights or self._model, config, self.stateful)
        if self.stepper is None:
            _ = self.model  # torch serves: build it now rather than in the first batch

    @property
    def model(self) -> Forecaster:
        """The torch model (built from the weights on first use: imports torch)."""
        if self._model is None:
            self._torch = _torch(self.config)
            self._model = self._weights.to_model()
        return self._model

    @property
    def weights(self) -> Weights:
        """The served parameters; read from the torch model each time when there is one (it may
        have been changed in place)."""
        return Weights.of(self._model) if self._model is not None else self._weights

    def copy_model(self) -> Forecaster:
        """A deep copy of the torch model."""
        return copy.deepcopy(self.model)

    def step(
        self, z: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One stateful step: mean, spread ``(n,)`` and the new h, c ``(layers, n, hidden)``."""
        if self.stepper is not None:
            return self.stepper.step(z, h, c)
        model, torch = self.model, self._torch  # the model first: building it imports torch
        with torch.inference_mode():
            mean, spread, (h2, c2) = model.step(
                torch.from_numpy(z), (torch.from_numpy(h), torch.from_numpy(c))
            )
        return mean.numpy(), spread.numpy(), h2.numpy(), c2.numpy()

    def window(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window mode: the forecast after each window ``(n, steps)``, zero state."""
        model, torch = self.model, self._torch  # the model first: building it imports torch
        with torch.inference_mode():
            mean, spread = model(torch.from_numpy(windows))
        return mean.numpy(), spread.numpy()

    def replay(
        self, windows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Windows ``(n, steps)`` from zero state: the forecast after the last step and, stateful,
        the state then (``(layers, n, hidden)``; None in window mode)."""
        if not self.stateful:
            return (*self.window(windows), None, None)
        if self.stepper is not None:
            return self.stepper.replay(windows)
        model, torch = self.model, self._torch  # the model first: building it imports torch
        with torch.inference_mode():
            win = torch.from_numpy(windows)
            out, (h, c) = model.run(win)
            mean, spread = model.head(out[:, -1], win[:, -1])
        return mean.numpy(), spread.numpy(), h.numpy(), c.numpy()
