"""Forecaster networks: a stacked stateful LSTM, a bidirectional LSTM and an attention LSTM.

Every model maps a window of scaled values ``(batch, steps)`` to a one-step forecast: a mean and a
spread (Gaussian head, trained with NLL) or a point (MSE head, spread fixed at 1). Only the stacked
LSTM can also run one step at a time with carried ``(h, c)``; the other two need the whole window.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .weights import MIN_SPREAD

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, batch, hidden)


class Head(nn.Module):
    """Maps features to (mean, spread); the mean is a change from the last input when asked."""

    def __init__(self, features: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.gaussian = cfg.head == "gaussian"
        self.predict_delta = cfg.predict_delta
        self.linear = nn.Linear(features, 2 if self.gaussian else 1)

    def forward(self, feats: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.linear(feats)
        mean = out[..., 0]
        if self.predict_delta:
            mean = mean + last
        if self.gaussian:
            spread = F.softplus(out[..., 1]) + MIN_SPREAD
        else:
            spread = torch.ones_like(mean)
        return mean, spread


@contextmanager
def native_lstm() -> Iterator[None]:
    """Run LSTM calls on torch's native CPU kernel instead of oneDNN's. oneDNN builds a primitive
    for every new batch size (about 1 ms), and a serving step sees a different size nearly every
    call: for random sizes of 1-300 the native kernel took 0.41 ms a step against 1.04 ms
    (median; equal from about 4000 up). The flag is process-wide, hence restored at once."""
    mkldnn = torch.backends.mkldnn
    before = mkldnn.enabled
    mkldnn.enabled = False
    try:
        yield
    finally:
        mkldnn.enabled = before


class StackedLSTM(nn.Module):
    """Stacked LSTM forecaster that runs over a window or one step at a time with carried state.

    Layers are separate single-layer ``nn.LSTM`` modules so that dropout and (for deep stacks)
    residual connections sit between them; a window pass and a sequence of single steps from the
    same state give the same outputs.
    """

    stateful = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            nn.LSTM(1 if i == 0 else cfg.hidden, cfg.hidden, batch_first=True) for i in range(cfg.layers)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.residual = cfg.use_residual
        self.head = Head(cfg.hidden, cfg)

    def zero_state(self, batch: int) -> State:
        """All-zero (h, c) for ``batch`` streams."""
        shape = (self.cfg.layers, batch, self.cfg.hidden)
        return torch.zeros(shape), torch.zeros(shape)

    def run(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Top-layer outputs ``(batch, steps, hidden)`` for inputs ``(batch, steps)``, and the new state."""
        if state is None:
            state = self.zero_state(x.shape[0])
        h0, c0 = state
        out = x.unsqueeze(-1)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            inp = out if i == 0 else self.dropout(out)
            y, (h, c) = layer(inp, (h0[i : i + 1], c0[i : i + 1]))
            out = out + y if (self.residual and i > 0) else y
            hs.append(h)
            cs.append(c)
        return out, (torch.cat(hs), torch.cat(cs))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast after the last step of each window: (mean, spread), each ``(batch,)``."""
        out, _ = self.run(x, state)
        return self.head(out[:, -1], x[:, -1])

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecasts after every step of each sequence, ``(batch, steps)`` each: for training."""
        out, _ = self.run(x)
        return self.head(out, x)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One step for a batch of streams: inputs ``(batch,)`` -> mean, spread, new state."""
        with native_lstm():
            if self._can_fuse():
                out, new_state = self._fused_step(x, state)
            else:
                out, new_state = self.run(x.unsqueeze(1), state)
        mean, spread = self.head.forward(out[:, 0], x)
        return mean, spread, new_state

    def _can_fuse(self) -> bool:
        """Whether ``_fused_step`` equals ``run``: eval mode, no residuals, plain float ``nn.LSTM`` layers
        (a dynamically quantized model's layers are another class)."""
        if self.training or (self.residual and self.cfg.layers > 1):
            return False
        return all(type(layer) is nn.LSTM for layer in self.layers)

    def _fused_step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``run`` over one step as a single multi-layer LSTM call: the same kernel per layer and, with
        dropout off (eval) and no residuals, the same outputs bit for bit, without the per-layer module
        calls, state slicing and concatenation."""
        weights = [w for layer in self.layers for w in layer._flat_weights]
        out, h, c = torch.lstm(
            x.reshape(-1, 1, 1),
            state,
            weights,
            has_biases=True,
            num_layers=self.cfg.layers,
            dropout=0.0,
            train=False,
            bidirectional=False,
            batch_first=True,
        )
        return out, (h, c)


def _window_lstm(cfg: ModelConfig, bidirectional: bool = False) -> nn.LSTM:
    """A stacked ``nn.LSTM`` over a whole window (input size 1, batch first)."""
    return nn.LSTM(
        1,
        cfg.hidden,
        num_layers=cfg.layers,
        batch_first=True,
        bidirectional=bidirectional,
        dropout=cfg.dropout if cfg.layers > 1 else 0.0,
    )


class WindowModel(nn.Module):
    """Base of the models that need the whole window (no carried state between samples)."""

    stateful = False

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training view: only the last step is a causal forecast, so only it is returned."""
        mean, spread = self(x)
        return mean.unsqueeze(1), spread.unsqueeze(1)


class BiLSTM(WindowModel):
    """Bidirectional LSTM over a window; the head reads each direction's summary of the whole window
    (the forward pass's last output and the backward pass's first)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = _window_lstm(cfg, bidirectional=True)
        self.head = Head(2 * cfg.hidden, cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast after each window's last step."""
        out, _ = self.lstm(x.unsqueeze(-1))  # (batch, steps, 2 * hidden)
        h = self.cfg.hidden
        feats = torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)
        return self.head(feats, x[:, -1])


class AttentionLSTM(WindowModel):
    """LSTM over a window with additive attention over its outputs (Bahdanau-style).

    Scores ``v . tanh(W o_t)`` over the steps, softmax, context = weighted sum of outputs; the head
    reads the context joined with the last output. Shapes are checked, unlike the seed's version.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = _window_lstm(cfg)
        self.attn = nn.Linear(cfg.hidden, cfg.hidden)
        self.score = nn.Linear(cfg.hidden, 1, bias=False)
        self.head = Head(2 * cfg.hidden, cfg)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(batch, 2*hidden)`` and attention weights ``(batch, steps)`` for windows ``x``."""
        out, _ = self.lstm(x.unsqueeze(-1))  # (batch, steps, hidden)
        weights = torch.softmax(self.score(torch.tanh(self.attn(out))).squeeze(-1), dim=1)
        context = torch.bmm(weights.unsqueeze(1), out).squeeze(1)  # (batch, hidden)
        return torch.cat([context, out[:, -1]], dim=-1), weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast after each window's last step."""
        feats, _ = self.attention(x)
        return self.head(feats, x[:, -1])


Forecaster = StackedLSTM | BiLSTM | AttentionLSTM
ARCHS: dict[str, type[nn.Module]] = {"lstm": StackedLSTM, "bilstm": BiLSTM, "attention": AttentionLSTM}


def build_model(cfg: ModelConfig, seed: int | None = 0) -> Forecaster:
    """A fresh model of the configured architecture, deterministically initialised."""
    if seed is not None:
        torch.manual_seed(seed)
    model = ARCHS[cfg.arch](cfg)
    model.eval()
    return model  # type: ignore[return-value]


def gaussian_nll(mean: torch.Tensor, spread: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-element Gaussian negative log-likelihood (without the constant)."""
    return torch.log(spread) + 0.5 * ((target - mean) / spread) ** 2


def loss_fn(cfg: ModelConfig, mean: torch.Tensor, spread: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-element training loss of the configured head (NLL or squared error)."""
    if cfg.head == "gaussian":
        return gaussian_nll(mean, spread, target)
    return (target - mean) ** 2
