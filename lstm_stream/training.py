"""Learning: ``fit`` a model on series, ``finetune`` a copy on buffered history (champion/challenger).

Data are scaled exactly as the engine scales them (the online, causal per-stream scaler), split
chronologically (the most recent part of every series is validation), and cut into sequences that
start from zero state; the loss covers every step after a short burn-in (stateful LSTM) or the last
step of each window (window-only models). Adam, ReduceLROnPlateau, early stopping on validation loss,
gradient clipping; a progress callback sees every epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import EngineConfig, ModelConfig, TrainConfig
from .history import Triple, history_is_fresh  # noqa: F401 - history_is_fresh: also importable from here
from .models import Forecaster, loss_fn
from .scaling import SeriesScaler

DIVERGED_NATS = 20.0
DIVERGED_FACTOR = 100.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Sequences:
    """Training sequences: inputs, targets and the mask of steps that count in the loss."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def points(self) -> int:
        """Number of target values in the loss."""
        return int(self.mask.sum())


@dataclass
class EpochInfo:
    """What the progress callback receives after each epoch."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float


@dataclass
class FitReport:
    """Outcome of a training run."""

    epochs_run: int
    best_epoch: int
    train_loss: float
    val_loss: float
    history: list[EpochInfo] = field(default_factory=list)
    train_points: int = 0
    val_points: int = 0
    seconds: float = 0.0


@dataclass
class FinetuneResult:
    """A candidate model and how it compares with the live one on the most recent held-out data."""

    outcome: str  # "accepted" | "rejected" | "diverged" | "insufficient_data" | "failed"
    candidate: Forecaster | None
    candidate_loss: float = math.nan
    live_loss: float = math.nan
    report: FitReport | None = None
    error: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the candidate should replace the live model."""
        return self.outcome == "accepted"


Progress = Callable[[EpochInfo], None]


def _cut(
    z: np.ndarray,
    y: np.ndarray,
    excl: np.ndarray,
    start: int,
    length: int,
    counted_from: int,
    last_only: bool,
):
    """One sequence [start, start+length) and its loss mask (steps from ``counted_from`` on)."""
    sl = slice(start, start + length)
    pos = np.arange(start, start + length)
    mask = ~np.isnan(y[sl]) & ~excl[sl] & (pos >= counted_from)
    if last_only:
        mask[:-1] = False
    return z[sl], np.nan_to_num(y[sl]), mask


def make_sequences(
    triples: Sequence[Triple],
    seq_len: int,
    stride: int,
    burn_in: int,
    val_fraction: float,
    last_only: bool = False,
) -> tuple[Sequences, Sequences]:
    """Chronological split of every series, cut into sequences: (train, validation).

    Training sequences lie wholly in the older part and count every step after ``burn_in``.
    Validation sequences end in the most recent ``val_fraction`` and count only steps there, each
    step once (older steps are context, never targets).
    """
    tr: list[tuple] = []
    va: list[tuple] = []
    for z, y, excl in triples:
        n = len(z)
        if n < seq_len + 1:
            continue
        cut = int(n * (1.0 - val_fraction))
        for start in range(0, cut - seq_len + 1, stride):
            tr.append(_cut(z, y, excl, start, seq_len, start + burn_in, last_only))
        counted = 1 if last_only else max(1, seq_len - burn_in)
        end = n
        while end > cut and end - seq_len >= 0:
            first = max(cut, end - counted)
            va.append(_cut(z, y, excl, end - seq_len, seq_len, first, last_only))
            end -= counted
    return _stack(tr, seq_len), _stack(va, seq_len)


def _stack(parts: list[tuple], seq_len: int) -> Sequences:
    if not parts:
        empty = torch.zeros((0, seq_len))
        return Sequences(empty, empty.clone(), empty.bool())
    xs, ys, ms = zip(*parts, strict=True)
    return Sequences(
        torch.from_numpy(np.stack(xs).astype(np.float32)),
        torch.from_numpy(np.stack(ys).astype(np.float32)),
        torch.from_numpy(np.stack(ms)),
    )


def _windows_for(model: Forecaster, cfg: EngineConfig) -> tuple[int, int, int, bool]:
    """(seq_len, stride, burn_in, last_only) suited to the model's architecture."""
    if getattr(model, "stateful", False):
        return cfg.train.seq_len, cfg.train.stride, cfg.train.burn_in, False
    return cfg.look_back, max(1, cfg.train.stride // 4), 0, True


def _masked_loss(
    model: Forecaster, mcfg: ModelConfig, seqs: Sequences, idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    x, y, m = (seqs.x, seqs.y, seqs.mask) if idx is None else (seqs.x[idx], seqs.y[idx], seqs.mask[idx])
    mean, spread = model.forward_all(x)
    width = mean.shape[1]
    y, m = y[:, -width:], m[:, -width:]
    per = loss_fn(mcfg, mean, spread, y)
    count = int(m.sum())
    total = (per * m).sum()
    return total, count


def evaluate_loss(model: Forecaster, seqs: Sequences, batch: int = 1024) -> float:
    """Mean loss of ``model`` over the masked steps of ``seqs`` (NaN when there are none)."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(seqs), batch):
            t, c = _masked_loss(model, model.cfg, seqs, torch.arange(i, min(i + batch, len(seqs))))
            total += float(t)
            count += c
    return total / count if count else math.nan


def train(
    model: Forecaster,
    train_seqs: Sequences,
    val_seqs: Sequences,
    cfg: TrainConfig,
    progress: Progress | None = None,
) -> FitReport:
    """Train ``model`` in place; keeps the weights of the best validation epoch."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=cfg.lr_patience)
    report = FitReport(0, 0, math.nan, math.nan, train_points=train_seqs.points, val_points=val_seqs.points)
    best_val, best_state, stale = math.inf, None, 0
    started = time.perf_counter()
    initial = evaluate_loss(model, val_seqs) if len(val_seqs) else math.nan
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, train_seqs, cfg, opt)
        val_loss = evaluate_loss(model, val_seqs) if len(val_seqs) else train_loss
        _check_divergence(model.cfg.head, initial, val_loss, epoch)
        sched.step(val_loss)
        info = EpochInfo(
            epoch, cfg.epochs, train_loss, val_loss, opt.param_groups[0]["lr"], time.perf_counter() - t0
        )
        report.history.append(info)
        report.epochs_run = epoch
        if progress:
            progress(info)
        if best_state is None or val_loss < best_val - 1e-6 * abs(best_val):
            best_val, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            report.best_epoch, report.train_loss, report.val_loss = epoch, train_loss, val_loss
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - started
    return report


def _check_divergence(head: str, initial: float, loss: float, epoch: int) -> None:
    """Raise TrainingDiverged when the loss is non-finite or has blown up far past its start.

    Blown up: more than DIVERGED_NATS above the starting loss per point for the Gaussian NLL (a
    likelihood e^20 times worse), or DIVERGED_FACTOR times it for squared error.
    """
    if not math.isfinite(loss):
        raise TrainingDiverged(f"validation loss is {loss} at epoch {epoch}")
    if not math.isfinite(initial):
        return
    limit = initial + DIVERGED_NATS if head == "gaussian" else max(initial, 1e-12) * DIVERGED_FACTOR
    if loss > limit:
        raise TrainingDiverged(f"validation loss rose from {initial:.4g} to {loss:.4g} at epoch {epoch}")


def _train_epoch(model: Forecaster, seqs: Sequences, cfg: TrainConfig, opt: torch.optim.Optimizer) -> float:
    """One pass over shuffled training sequences; returns the epoch-mean loss per target point."""
    model.train()
    perm = torch.randperm(len(seqs))
    total, count = 0.0, 0
    for i in range(0, len(seqs), cfg.batch_size):
        loss_sum, n = _masked_loss(model, model.cfg, seqs, perm[i : i + cfg.batch_size])
        if n == 0:
            continue
        loss = loss_sum / n
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training loss is {float(loss.detach())}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        total += float(loss_sum.detach())
        count += n
    model.eval()
    return total / count if count else math.nan


def series_triples(series: Sequence[np.ndarray], cfg: EngineConfig) -> list[Triple]:
    """Raw series -> (inputs, targets, excluded) scaled exactly as the engine would scale them."""
    pairs = SeriesScaler(cfg.scaling).transform([np.asarray(s, dtype=np.float64) for s in series])
    return [(z, y, np.zeros(len(z), dtype=bool)) for z, y in pairs]


def fit(
    model: Forecaster,
    data: Sequence[np.ndarray] | np.ndarray | tuple[Sequences, Sequences],
    cfg: EngineConfig | None = None,
    progress: Progress | None = None,
) -> FitReport:
    """Fit ``model`` on raw series (one array, a list of arrays) or prepared (train, val) sequences."""
    cfg = cfg or EngineConfig()
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Sequences):
        train_seqs, val_seqs = data
    else:
        series = [data] if isinstance(data, np.ndarray) and data.ndim == 1 else list(data)
        seq_len, stride, burn_in, last_only = _windows_for(model, cfg)
        train_seqs, val_seqs = make_sequences(
            series_triples(series, cfg), seq_len, stride, burn_in, cfg.train.val_fraction, last_only
        )
    if not len(train_seqs):
        raise ValueError("not enough data to train: every series is shorter than a training sequence")
    return train(model, train_seqs, val_seqs, cfg.train, progress)


def finetune(
    live: Forecaster, history: Sequence[Triple], cfg: EngineConfig, progress: Progress | None = None
) -> FinetuneResult:
    """Train a copy of ``live`` on buffered history and compare both on the most recent held-out part.

    Points inside anomaly events are excluded from the loss. Never raises for a bad run: divergence
    and exceptions come back as outcomes, leaving ``live`` untouched.
    """
    import copy

    seq_len, stride, burn_in, last_only = _windows_for(live, cfg)
    train_seqs, val_seqs = make_sequences(
        history, seq_len, stride, burn_in, cfg.train.val_fraction, last_only
    )
    if not len(train_seqs) or not val_seqs.points:
        return FinetuneResult("insufficient_data", None)
    live_loss = evaluate_loss(live, val_seqs)
    candidate = copy.deepcopy(live)
    try:
        report = train(candidate, train_seqs, val_seqs, cfg.train, progress)
    except TrainingDiverged as exc:
        return FinetuneResult("diverged", None, live_loss=live_loss, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed run must never take the live model down
        return FinetuneResult("failed", None, live_loss=live_loss, error=f"{type(exc).__name__}: {exc}")
    cand_loss = evaluate_loss(candidate, val_seqs)
    better = math.isfinite(cand_loss) and cand_loss < live_loss - cfg.train.min_improvement * abs(live_loss)
    return FinetuneResult("accepted" if better else "rejected", candidate, cand_loss, live_loss, report)
