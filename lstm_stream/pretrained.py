"""The default model shipped with the package: trained on synthetic series only (scripts/pretrain.py)."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import LoadedModel, load_model
from .config import EngineConfig
from .engine import Engine

PRETRAINED_PATH = Path(__file__).with_name("data") / "pretrained.safetensors"


def load_pretrained() -> LoadedModel:
    """The shipped synthetic-only model, with today's default configuration around it.

    Only the ``model`` and ``scaling`` sections come from the file (the weights depend on them);
    scoring and everything else follow the current defaults, so tuning them needs no retraining.
    """
    loaded = load_model(PRETRAINED_PATH)
    loaded.config = EngineConfig(model=loaded.config.model, scaling=loaded.config.scaling)
    return loaded


def pretrained_engine(config: EngineConfig | None = None) -> Engine:
    """An engine serving the shipped model; ``config`` may change anything but its ``model`` section."""
    loaded = load_pretrained()
    cfg = config or loaded.config
    if cfg.model != loaded.config.model:
        raise ValueError(
            f"the shipped model is {loaded.config.model!r}; engine.model differs, so give a model "
            "trained for it (lstm-stream train) instead of the pretrained one"
        )
    return Engine(cfg, loaded.weights)
