"""Buffered history for fine-tuning, torch-free: what the service needs to decide on a run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import TrainConfig

# inputs z, targets y (NaN: unknown yet, or left out of training), excluded (also left out)
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def history_is_fresh(new_samples: int, history: Sequence[Triple], cfg: TrainConfig) -> bool:
    """Whether a fine-tune on ``history`` is worth starting: the samples that arrived since the last
    run fill at least the held-out share (``val_fraction``) of the buffered history, so the part a run
    is validated on is data no earlier run trained on (and, on a single stream, a run comes every
    ``val_fraction x history_len`` samples, keeping the model close to the stream's recent data)."""
    points = sum(len(z) for z, _, _ in history)
    return points > 0 and new_samples >= cfg.val_fraction * points
